"""PaDiM: the detector contract, determinism, a defect ranked first, hand-off, memory guard."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from hydra.utils import instantiate

from pyimgano_hydra.api import compose_config
from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.models.padim import PaDiM
from pyimgano_hydra.schemas import validate
from _texture import check_image_score_option, textures

FAST = dict(backbone="efficientnet_lite0", layers=["blocks.1", "blocks.2"], device="cpu", batch_size=8, d=32)


@pytest.fixture(scope="module")
def data():
    return textures(12, seed=0), textures(4, seed=1), textures(4, seed=2, defect=True)


@pytest.fixture(scope="module")
def fitted(data):
    return PaDiM(**FAST).fit(data[0])


def test_fit_returns_self_and_predict_gives_scores_and_float32_maps(data):
    model = PaDiM(**FAST)
    assert model.fit(data[0]) is model
    out = model.score_maps(data[1])
    assert PaDiM.produces_maps
    assert out.scores.shape == (4,) and np.isfinite(out.scores).all()
    assert out.maps.shape == (4, 64, 64) and out.maps.dtype == np.float32


def test_obvious_defect_ranks_above_every_normal_image(fitted, data):
    assert fitted.score_maps(data[2]).scores.min() > fitted.score_maps(data[1]).scores.max()


def test_gaussian_matches_numpy_mean_and_regularised_covariance(data):
    model = PaDiM(**FAST, eps=0.5).fit(data[0])
    # the same embeddings, straight from the model, through numpy
    x = np.concatenate([e.numpy() for e, _ in model._embed(data[0], "check")])  # (N, P, d)
    p = 5
    cov = np.cov(x[:, p, :].astype(np.float64), rowvar=False) + 0.5 * np.eye(model.d)
    np.testing.assert_allclose(model.mean_[p], x[:, p].mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.inv_cov_[p], np.linalg.inv(cov), rtol=1e-3, atol=1e-3)


def test_same_seed_same_channels_and_scores(fitted, data):
    again = PaDiM(**FAST).fit(data[0])
    for layer in fitted.channels_:
        assert again.channels_[layer].tolist() == fitted.channels_[layer].tolist()
    np.testing.assert_array_equal(again.score_maps(data[2]).scores, fitted.score_maps(data[2]).scores)
    other = PaDiM(**(FAST | {"seed": 1})).fit(data[0])
    assert any(other.channels_[k].tolist() != fitted.channels_[k].tolist() for k in fitted.channels_)


def test_state_dict_round_trip_gives_identical_scores_and_maps(fitted, data):
    restored = clone(fitted).load_state_dict(fitted.state_dict())
    a, b = fitted.score_maps(data[2]), restored.score_maps(data[2])
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)


def test_grid_size_bounds_the_gaussians(data):
    model = PaDiM(**(FAST | {"grid_size": 4})).fit(data[0])
    assert model.inv_cov_.shape == (16, 32, 32)
    assert model.score_maps(data[1]).maps.shape == (4, 64, 64)


def test_too_much_memory_is_refused_before_work_naming_the_key(data):
    with pytest.raises(ConfigError, match="model.d.*max_memory_gb"):
        PaDiM(**(FAST | {"max_memory_gb": 1e-6})).fit(data[0])
    with pytest.raises(ConfigError, match="model.d"):
        PaDiM(**(FAST | {"d": 10_000})).fit(data[0])


def test_default_keeps_every_channel_so_the_seed_does_not_matter(data):
    params = FAST | {"d": None}
    a, b = PaDiM(**(params | {"seed": 0})).fit(data[0]), PaDiM(**(params | {"seed": 1})).fit(data[0])
    total = sum(a._backbone().channels().values())
    assert a.mean_.shape[-1] == total and a.inv_cov_.shape[-2:] == (total, total)
    np.testing.assert_array_equal(a.score_maps(data[1]).scores, b.score_maps(data[1]).scores)
    subset = PaDiM(**(params | {"d": 16})).fit(data[0])
    assert subset.mean_.shape[-1] == 16


def test_config_instantiates_and_bad_values_name_the_key():
    cfg = compose_config(["model=padim", "model.d=20", "model.device=cpu"])
    validate(cfg)
    model = instantiate(cfg.model)
    assert isinstance(model, PaDiM) and model.d == 20
    with pytest.raises(ConfigError, match="model.eps"):
        validate(compose_config(["model=padim", "model.eps=0"]))


@pytest.mark.parametrize("params", [dict(image_score="max"), dict(global_weight=1.0), dict(image_score="max", global_weight=1.0)])
def test_image_score_options_keep_maps_rank_the_defect_and_round_trip(fitted, data, params):
    check_image_score_option(fitted, PaDiM(**FAST, **params).fit(data[0]), data)


def test_mtd_preset_composes_with_the_image_level_options():
    cfg = compose_config(["model=padim_mtd"])
    validate(cfg)
    model = instantiate(cfg.model)
    assert (model.image_score, model.image_norm, model.global_weight) == ("topk", "standardize", 1.0)
    with pytest.raises(ConfigError, match="model.image_score"):
        validate(compose_config(["model=padim", "model.image_score=mean"]))
