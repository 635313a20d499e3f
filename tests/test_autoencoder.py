"""Convolutional autoencoder: trains on normals, maps locate a defect, loss log, hand-off."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pyimgano_hydra.api import compose_config
from pyimgano_hydra.errors import ConfigError, DataError
from pyimgano_hydra.instantiate import build
from pyimgano_hydra.models.autoencoder import ConvAutoencoder
from pyimgano_hydra.schemas import validate

TINY = ["model=autoencoder", "model.device=cpu", "model.image_size=32", "model.depth=3",
        "model.base_channels=8", "model.latent_channels=8", "model.batch_size=4",
        "model.epochs=3", "model.lr=0.003", "model.pretrained=false"]
SIZE = 48
BOX = (slice(14, 26), slice(20, 32))  # the defect square in defect images

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _images(n: int, seed: int, defect: bool = False, channels: int = 3) -> np.ndarray:
    """Smooth horizontal gradient + light noise; defects are a dark square at BOX."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(80, 180, SIZE)[None, :, None]
    x = np.clip(ramp + rng.normal(0, 4, (n, SIZE, SIZE, channels)), 0, 255).astype(np.uint8)
    if defect:
        x[:, BOX[0], BOX[1]] = 5
    return x


def _model(*overrides: str) -> ConvAutoencoder:
    cfg = compose_config([*TINY, *overrides])
    validate(cfg)
    return build(cfg.model, "model")


@pytest.fixture(scope="module")
def data():
    test = np.concatenate([_images(3, seed=1), _images(3, seed=2, defect=True)])
    return _images(12, seed=0), test, np.array([0] * 3 + [1] * 3)


@pytest.fixture(scope="module")
def fitted(data):
    return _model().fit(data[0])


def test_maps_and_scores_rank_and_locate_the_defect(fitted, data):
    _, test, labels = data
    assert isinstance(fitted, ConvAutoencoder) and fitted.produces_maps is True
    out = fitted.score_maps(test)
    assert out.maps.shape == (len(test), SIZE, SIZE) and out.maps.dtype == np.float32
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()
    for heat in out.maps[labels == 1]:
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert BOX[0].start - 3 <= row < BOX[0].stop + 3 and BOX[1].start - 3 <= col < BOX[1].stop + 3


def test_loss_is_logged_per_epoch_and_decreases(fitted):
    history = fitted.history_
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) for row in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_training_is_deterministic_for_a_seed_on_cpu(fitted, data):
    again = _model().fit(data[0])
    np.testing.assert_array_equal(again.score_maps(data[1]).scores, fitted.score_maps(data[1]).scores)
    other = _model("model.seed=1").fit(data[0])
    assert not np.array_equal(other.score_maps(data[1]).scores, fitted.score_maps(data[1]).scores)


def test_scores_do_not_depend_on_batching(fitted, data):
    test = data[1]
    one_by_one = np.concatenate([fitted.score_maps(test[i:i + 1]).scores for i in range(len(test))])
    np.testing.assert_allclose(one_by_one, fitted.score_maps(test).scores, rtol=1e-5, atol=1e-7)


def test_state_saved_with_tensors_only_reproduces_scores(fitted, data, tmp_path):
    torch.save(fitted.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    fresh = _model().load_state_dict(state)
    before, after = fitted.score_maps(data[1]), fresh.score_maps(data[1])
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(after.maps, before.maps, rtol=1e-6, atol=1e-9)
    assert fresh.history_ == fitted.history_


def test_perceptual_loss_trains_on_gray_images():
    train = _images(4, seed=0, channels=1)
    model = _model("model.perceptual_weight=0.5", "model.epochs=1").fit(train)
    assert np.isfinite(model.history_[0]["loss"])
    out = model.score_maps(_images(2, seed=3, channels=1))
    assert out.maps.shape == (2, SIZE, SIZE)
    with pytest.raises(DataError, match="1-channel"):
        model.score_maps(_images(1, seed=3, channels=3))


@pytest.mark.parametrize("override,key", [
    ("model.image_size=36", "model.image_size"),
    ("model.lr=0", "model.lr"),
    ("model.epochs=0", "model.epochs"),
    ("model.smoothing_sigma=-1", "model.smoothing_sigma"),
    ("model.perceptual_weight=-0.1", "model.perceptual_weight"),
])
def test_out_of_range_values_name_the_key(override, key):
    cfg = compose_config([*TINY, override])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)
