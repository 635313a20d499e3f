"""PatchCore: the detector contract, determinism, a defect ranked first, hand-off."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from hydra.utils import instantiate

from pyimgano_hydra.api import compose_config
from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.models.coreset import StreamingCoreset, greedy_coreset, greedy_coreset_parts
from pyimgano_hydra.models.patchcore import PatchCore
from pyimgano_hydra.schemas import validate
from _texture import check_image_score_option, textures

FAST = dict(backbone="efficientnet_lite0", layers=["blocks.2", "blocks.4"], device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def data():
    return textures(10, seed=0), textures(4, seed=1), textures(4, seed=2, defect=True)


@pytest.fixture(scope="module")
def fitted(data):
    return PatchCore(coreset_ratio=0.25, **FAST).fit(data[0])


def test_fit_returns_self_and_predict_gives_scores_and_float32_maps(data):
    model = PatchCore(coreset_ratio=0.25, **FAST)
    assert model.fit(data[0]) is model
    out = model.score_maps(data[1])
    assert PatchCore.produces_maps
    assert out.scores.shape == (4,) and np.isfinite(out.scores).all()
    assert out.maps.shape == (4, 64, 64) and out.maps.dtype == np.float32
    np.testing.assert_allclose(model.decision_function(data[1]), out.scores)


def test_obvious_defect_ranks_above_every_normal_image(fitted, data):
    normal, defect = fitted.score_maps(data[1]), fitted.score_maps(data[2])
    assert defect.scores.min() > normal.scores.max()
    # and the map peaks on the blob: its hottest pixel is dark in the image
    hottest = defect.maps.reshape(4, -1).argmax(1)
    assert (data[2][..., 0].reshape(4, -1)[np.arange(4), hottest] < 60).mean() >= 0.75


@pytest.mark.parametrize("score", ["max", "topk", "power_mean", "map_max"])
def test_every_image_score_ranks_the_defect_first(data, score):
    model = PatchCore(coreset_ratio=0.25, image_score=score, **FAST).fit(data[0])
    assert model.score_maps(data[2]).scores.min() > model.score_maps(data[1]).scores.max()


def test_same_seed_same_model_and_scores(fitted, data):
    again = PatchCore(coreset_ratio=0.25, **FAST).fit(data[0])
    np.testing.assert_array_equal(again.memory_bank_, fitted.memory_bank_)
    np.testing.assert_array_equal(again.score_maps(data[2]).scores, fitted.score_maps(data[2]).scores)


def test_coreset_size_is_ratio_times_patches(data):
    for ratio in (0.1, 0.5, 1.0):
        model = PatchCore(coreset_ratio=ratio, **FAST).fit(data[0])
        h, w = model.feature_shape_
        assert len(model.memory_bank_) == round(ratio * len(data[0]) * h * w)


def test_state_dict_round_trip_gives_identical_scores_and_maps(fitted, data):
    state = fitted.state_dict()
    assert isinstance(state["memory_bank"], np.ndarray)
    restored = clone(fitted).load_state_dict(state)
    a, b = fitted.score_maps(data[2]), restored.score_maps(data[2])
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)


def test_gray_images_work(data):
    gray = data[0][..., :1]
    model = PatchCore(coreset_ratio=0.25, **FAST).fit(gray)
    out = model.score_maps(data[2][..., :1])
    assert out.maps.shape == (4, 64, 64)
    assert out.scores.min() > model.score_maps(data[1][..., :1]).scores.max()


def test_predict_before_fit_is_a_clear_error(data):
    with pytest.raises(UserError, match="not fitted"):
        PatchCore(**FAST).score_maps(data[1])


def test_parts_at_once_pick_what_each_part_picks_alone():
    """The GPU's batched greedy (no host sync per pick) is the same greedy, part by part."""
    import torch

    x = torch.from_numpy(np.random.default_rng(3).normal(size=(5, 200, 8)).astype(np.float32))
    starts = torch.tensor([0, 17, 199, 4, 100])
    got = greedy_coreset_parts(x, 30, starts)
    for part, start, picked in zip(x, starts.tolist(), got):
        assert picked.tolist() == greedy_coreset(part, 30, start=start).tolist()


def test_streaming_coreset_keeps_the_same_bank_batched_or_part_by_part():
    """Blocks fill mid-batch here (merge_rows is small): the random starts are drawn in the
    same order either way, so a GPU fit keeps the rows a CPU fit keeps."""
    import torch

    rng = np.random.default_rng(4)
    banks = []
    for batch_parts in (False, True):
        coreset = StreamingCoreset(0.1, 4, seed=0, merge_rows=120, batch_parts=batch_parts)
        for _ in range(3):
            coreset.add(torch.from_numpy(rng.normal(size=(7 * 64, 12)).astype(np.float32)), part_size=64)
        banks.append(coreset.result())
        rng = np.random.default_rng(4)
    assert banks[0].shape == (round(0.1 * 3 * 7 * 64), 12)
    assert torch.equal(banks[0], banks[1])


def test_greedy_coreset_matches_brute_force_farthest_point():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    import torch

    picked = greedy_coreset(torch.from_numpy(x), 15, start=4).tolist()
    expected = [4]
    for _ in range(14):
        dist = np.linalg.norm(x[:, None] - x[expected][None], axis=2).min(1)
        expected.append(int(dist.argmax()))
    assert picked == expected


def test_config_instantiates_and_bad_values_name_the_key():
    cfg = compose_config(["model=patchcore", "model.coreset_ratio=0.2", "model.device=cpu"])
    validate(cfg)
    model = instantiate(cfg.model)
    assert isinstance(model, PatchCore) and model.coreset_ratio == 0.2
    for override, key in [("model.image_score=mean", "model.image_score"), ("model.neighbourhood=0", "model.neighbourhood")]:
        with pytest.raises(ConfigError, match=key):
            validate(compose_config(["model=patchcore", override]))


def test_global_term_changes_scores_not_maps_and_survives_round_trip(fitted, data):
    check_image_score_option(fitted, PatchCore(coreset_ratio=0.25, global_weight=1.0, **FAST).fit(data[0]), data)


def test_coreset_max_size_caps_the_bank(data):
    model = PatchCore(coreset_ratio=0.5, coreset_max_size=40, **FAST).fit(data[0])
    assert len(model.memory_bank_) == 40


@pytest.mark.parametrize("option", ["patchcore_mtd", "padim_mtd"])
def test_mtd_presets_fit_from_config_and_rank_the_defect_first(data, option):
    model = instantiate(compose_config([f"model={option}", "model.device=cpu"]).model).fit(data[0])
    normal, defect = model.score_maps(data[1]), model.score_maps(data[2])
    assert defect.scores.min() > normal.scores.max()
    assert defect.maps.shape == data[2].shape[:3] and defect.maps.dtype == np.float32


@pytest.mark.parametrize("option", [dict(image_score="topk"), dict(image_score="power_mean", power_mean_p=4.0)])
def test_image_score_other_than_default_keeps_maps_and_round_trips(fitted, data, option):
    check_image_score_option(fitted, PatchCore(coreset_ratio=0.25, **option, **FAST).fit(data[0]), data)


@pytest.mark.parametrize("value", ["0.5", "1e9"])
def test_power_mean_order_out_of_range_is_refused_by_key(value):
    with pytest.raises(ConfigError, match="model.power_mean_p"):
        validate(compose_config(["model=patchcore", f"model.power_mean_p={value}"]))
