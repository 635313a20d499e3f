"""Tiling wrapper: exact stitching, border tiles, score reduction, batching, hand-off,
config presets, and a small defect on a 2048² image found with tiling but lost by resizing."""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.base import clone
from hydra import compose, initialize_config_dir

from pyimgano_hydra.adapt.tiling import TiledDetector, maybe_tile, tile_grid
from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.models.base import BaseDetector, DetectorOutput
from pyimgano_hydra.schemas import register_configs, validate

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


class PixelFunction(BaseDetector):
    """Map = a fixed function of each pixel's value; score = the map's maximum."""

    produces_maps = True

    def fit(self, images):
        self.n_fit_ = len(images)
        self.fit_shapes_ = images.shape
        return self

    def score_maps(self, images):
        x = images.astype(np.float32).mean(-1) / 255.0
        maps = (x * x + 0.25 * np.sin(6.0 * x)).astype(np.float32)
        return DetectorOutput(scores=maps.reshape(len(maps), -1).max(1), maps=maps)

    def state_dict(self):
        return {"n_fit": self.n_fit_}

    def load_state_dict(self, state):
        self.n_fit_ = state["n_fit"]
        return self


class TileMean(BaseDetector):
    """Score only: the tile's mean pixel value. Records the batch sizes it was given."""

    produces_maps = False

    def __init__(self):
        self.batches = []

    def fit(self, images):
        return self

    def score_maps(self, images):
        self.batches.append(len(images))
        return DetectorOutput(scores=images.reshape(len(images), -1).mean(1).astype(float))


class LocalStats(BaseDetector):
    """A small feature-based detector (stand-in for PatchCore, which is not in main yet):
    per-pixel local mean and std in a sliding window, Mahalanobis distance to the normal
    train pixels. Sees texture at whatever resolution it is given."""

    produces_maps = True

    def __init__(self, window: int = 8):
        self.window = window

    def _features(self, images):
        k = (self.window, self.window)
        out = np.empty(images.shape[:3] + (2,), dtype=np.float32)
        for i, img in enumerate(images):
            x = img.astype(np.float32).mean(-1)
            mean = cv2.blur(x, k, borderType=cv2.BORDER_REFLECT)
            sq = cv2.blur(x * x, k, borderType=cv2.BORDER_REFLECT)
            out[i, ..., 0], out[i, ..., 1] = mean, np.sqrt(np.maximum(sq - mean * mean, 0))
        return out

    def fit(self, images):
        f = self._features(images).reshape(-1, 2).astype(np.float64)
        self.mean_, self.precision_ = f.mean(0), np.linalg.inv(np.cov(f, rowvar=False))
        return self

    def score_maps(self, images):
        f = self._features(images)
        d0, d1 = f[..., 0] - self.mean_[0], f[..., 1] - self.mean_[1]
        (a, b), (_, c) = self.precision_.astype(np.float32)
        maps = np.sqrt(np.maximum(a * d0 * d0 + 2 * b * d0 * d1 + c * d1 * d1, 0))
        return DetectorOutput(scores=maps.reshape(len(maps), -1).max(1).astype(float), maps=maps)

    def state_dict(self):
        return {"mean": self.mean_, "precision": self.precision_}

    def load_state_dict(self, state):
        self.mean_, self.precision_ = np.asarray(state["mean"]), np.asarray(state["precision"])
        return self


def _random_images(n, h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


# ---- stitching ---------------------------------------------------------------------------
@pytest.mark.parametrize("map_reduce", ["max", "mean", "hann"])
@pytest.mark.parametrize("stride", [64, 40], ids=["no_overlap", "overlap"])
@pytest.mark.parametrize("size", [(192, 256), (200, 231)], ids=["aligned", "border_tiles"])
def test_stitched_map_equals_untiled_map(map_reduce, stride, size):
    images = _random_images(2, *size)
    untiled = PixelFunction().fit(images).score_maps(images)
    tiled = TiledDetector(PixelFunction(), tile_size=64, stride=stride,
                          map_reduce=map_reduce).fit(images).score_maps(images)
    assert tiled.maps.shape == (2,) + size and tiled.maps.dtype == np.float32
    np.testing.assert_allclose(tiled.maps, untiled.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tiled.scores, untiled.scores, rtol=1e-6)


def test_image_smaller_than_tile_is_padded_and_cropped_back():
    images = _random_images(1, 40, 100)
    out = TiledDetector(PixelFunction(), tile_size=64).fit(images).score_maps(images)
    assert out.maps.shape == (1, 40, 100)
    np.testing.assert_allclose(out.maps, PixelFunction().score_maps(images).maps, rtol=1e-5,
                               atol=1e-6)


def test_border_tiles_shift_inward_and_cover_every_pixel():
    grid = tile_grid(200, 231, tile_size=64, stride=64)
    assert grid[:, 0].max() == 200 - 64 and grid[:, 1].max() == 231 - 64
    covered = np.zeros((200, 231), dtype=int)
    for y, x in grid:
        covered[y:y + 64, x:x + 64] += 1
    assert covered.min() >= 1


def test_fit_sees_full_resolution_tiles_of_normal_images():
    inner = PixelFunction()
    TiledDetector(inner, tile_size=64, stride=32).fit(_random_images(3, 128, 128))
    assert inner.fit_shapes_ == (3 * 9, 64, 64, 3)


def test_max_fit_tiles_caps_the_fit_set():
    inner = PixelFunction()
    TiledDetector(inner, tile_size=32, max_fit_tiles=5).fit(_random_images(2, 128, 128))
    assert inner.n_fit_ == 5


# ---- scores, map-less detectors, batching -------------------------------------------------
def _four_tile_image():
    img = np.zeros((1, 64, 64, 1), dtype=np.uint8)
    for value, (y, x) in zip((10, 20, 30, 40), [(0, 0), (0, 32), (32, 0), (32, 32)]):
        img[0, y:y + 32, x:x + 32] = value
    return img


@pytest.mark.parametrize("how, expected", [("max", 40.0), ("mean", 25.0), ("topk_mean", 35.0)])
def test_score_reduce(how, expected):
    img = _four_tile_image()
    det = TiledDetector(TileMean, tile_size=32, score_reduce=how, score_topk=2).fit(img)
    out = det.score_maps(img)
    assert out.maps is None
    assert out.scores[0] == pytest.approx(expected)


def test_produces_maps_mirrors_inner_detector():
    assert TiledDetector(PixelFunction).produces_maps is True
    assert TiledDetector(TileMean()).produces_maps is False
    assert TiledDetector(functools.partial(LocalStats, window=4)).produces_maps is True


def test_predict_is_batched_across_images_and_independent_of_batch_size():
    images = _random_images(3, 96, 96, c=1)
    inner = TileMean()
    small = TiledDetector(inner, tile_size=32, batch_size=4).fit(images).score_maps(images)
    assert max(inner.batches) <= 4 and sum(inner.batches) == 3 * 9
    large = TiledDetector(TileMean(), tile_size=32, batch_size=64).fit(images).score_maps(images)
    np.testing.assert_allclose(small.scores, large.scores)


def test_state_dict_round_trip_restores_predictions():
    images = _random_images(4, 128, 160, c=1, seed=1)
    fitted = TiledDetector(LocalStats, tile_size=64, stride=48, map_reduce="mean").fit(images)
    state = fitted.state_dict()
    loaded = clone(fitted).load_state_dict(state)  # a detector with the same params
    a, b = fitted.score_maps(images), loaded.score_maps(images)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)


def test_predict_before_fit_is_a_user_error():
    with pytest.raises(UserError, match="fit"):
        TiledDetector(PixelFunction).score_maps(_random_images(1, 64, 64))


# ---- config ------------------------------------------------------------------------------
def _compose(option, overrides=()):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(f"tiling/{option}", overrides=list(overrides))


@pytest.mark.parametrize("option", ["tile128", "tile256", "tile512"])
def test_presets_build_a_tiled_detector(option):
    cfg = _compose(option)
    validate(cfg)
    det = maybe_tile(PixelFunction, cfg.tiling)
    assert isinstance(det, TiledDetector)
    assert det.tile_size == int(option[4:]) and det.stride < det.tile_size


def test_tiling_none_returns_the_plain_detector():
    cfg = _compose("none")
    det = maybe_tile(PixelFunction, cfg.tiling)
    assert type(det) is PixelFunction


@pytest.mark.parametrize("override, key", [("tiling.stride=0", "tiling.stride"),
                                           ("tiling.tile_size=8", "tiling.tile_size"),
                                           ("tiling.map_reduce=median", "tiling.map_reduce"),
                                           ("tiling.score_reduce=sum", "tiling.score_reduce")])
def test_bad_tiling_values_name_the_key(override, key):
    cfg = _compose("tile256", [override])
    with pytest.raises(ConfigError, match=key):
        validate(cfg)


# ---- high resolution: a small defect ------------------------------------------------------
def _grain(rng, h, w, defect=None):
    """Grainy surface (σ=30 around 128); a defect is a patch where the grain is missing.
    Its mean equals the surface mean, so averaging (resizing) erases it."""
    img = 128 + 30 * rng.standard_normal((h, w), dtype=np.float32)
    if defect is not None:
        y, x, s = defect
        img[y:y + s, x:x + s] = 128 + 3 * rng.standard_normal((s, s), dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)[..., None]


def test_small_defect_found_with_tiling_and_missed_with_resizing():
    rng = np.random.default_rng(0)
    h, w, side = 2048, 2200, 10  # width not a multiple of the tile: border tiles shift
    defects = [(int(rng.integers(0, h - side)), int(rng.integers(0, w - side)), side)
               for _ in range(2)]
    train = np.stack([_grain(rng, h, w) for _ in range(2)])
    test = np.stack([_grain(rng, h, w) for _ in range(2)] + [_grain(rng, h, w, d) for d in defects])

    tiled = TiledDetector(LocalStats, tile_size=256, stride=256).fit(train).score_maps(test)
    assert tiled.scores[2:].min() > tiled.scores[:2].max()
    for amap, (y, x, s) in zip(tiled.maps[2:], defects):
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        assert abs(peak[0] - (y + s / 2)) <= s and abs(peak[1] - (x + s / 2)) <= s

    def resize(batch):
        return np.stack([cv2.resize(i, (256, 256), interpolation=cv2.INTER_AREA)[..., None]
                         for i in batch])

    plain = LocalStats().fit(resize(train)).score_maps(resize(test))
    assert plain.scores[2:].min() <= plain.scores[:2].max()  # not separated
    for amap, (y, x, s) in zip(plain.maps[2:], defects):
        full = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
        assert full[y:y + s, x:x + s].max() < np.percentile(full, 99)  # not localised


def test_multirun_over_tiling_options_gives_one_run_dir_each(tmp_path):
    import os
    from pathlib import Path

    from conftest import REPO, run_cli

    tests = Path(__file__).resolve().parent
    proc = run_cli(["--multirun", f"hydra.searchpath=[file://{tests / 'conf'}]", "model=zscore",
                    "dataset.category=weave", "dataset.limit_train=6", "dataset.limit_test=4", "dataset.resize=256",
                    "tiling=none,tile128,tile256", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   env={"PYTHONPATH": os.pathsep.join([str(REPO), str(tests)])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/report.json"))
    assert runs == ["0_none", "1_tile128", "2_tile256"]
    import json

    tilings = [json.loads((tmp_path / "sweep" / r / "report.json").read_text())["tiling"] for r in runs]
    assert [t.get("tile_size") for t in tilings[1:]] == [128, 256] and tilings[0]["enabled"] is False
