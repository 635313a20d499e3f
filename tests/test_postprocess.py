"""Map postprocess (smoothing, normalisation fitted on normal maps only, stored state),
its config presets, and overlays."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pyimgano_hydra.adapt.postprocess import MapPostprocessor
from pyimgano_hydra.smoothing import gaussian_blur
from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.schemas import register_configs, validate
from pyimgano_hydra.viz.overlays import GT_COLOR, THRESHOLD_COLOR, heatmap_overlay, select_overlays, write_overlays

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _normal_maps(n=6, size=48, seed=0):
    return np.random.default_rng(seed).normal(1.0, 0.1, (n, size, size)).astype(np.float32)


def _defect_map(size=48, seed=1):
    amap = _normal_maps(1, size, seed)
    amap[0, 20:28, 20:28] += 5.0
    return amap


# ---- normalisation fitted on normal maps --------------------------------------------------
def test_minmax_scales_train_maps_to_unit_range_and_defects_above_it():
    train = _normal_maps()
    post = MapPostprocessor(sigma=1.0, normalize="minmax").fit(train)
    scaled = post.transform(train)
    assert scaled.min() == pytest.approx(0.0, abs=1e-5)
    assert scaled.max() == pytest.approx(1.0, abs=1e-5)
    assert post.transform(_defect_map()).max() > 2.0  # not squeezed back into [0, 1]


def test_test_maps_never_change_the_scaling():
    train, test = _normal_maps(), np.concatenate([_normal_maps(3, seed=5), _defect_map()])
    post = MapPostprocessor(sigma=2.0, normalize="percentile").fit(train)
    before = post.state_dict()
    together = post.transform(test)
    one_by_one = np.concatenate([post.transform(test[i:i + 1]) for i in range(len(test))])
    np.testing.assert_array_equal(together, one_by_one)
    assert post.state_dict() == before
    refit = MapPostprocessor(sigma=2.0, normalize="percentile").fit(np.concatenate([train, test]))
    assert refit.state_dict()["high"] != before["high"]  # the numbers do depend on fit data


def test_percentile_ignores_a_few_hot_train_pixels():
    train = _normal_maps()
    train[0, 0, 0] = 1000.0
    minmax = MapPostprocessor(sigma=0, normalize="minmax").fit(train)
    robust = MapPostprocessor(sigma=0, normalize="percentile", percentile=99.0,
                              percentile_low=1.0).fit(train)
    assert minmax.state_dict()["high"] == pytest.approx(1000.0)
    assert robust.state_dict()["high"] < 2.0
    assert robust.transform(_defect_map()).max() > 5.0


def test_smoothing_spreads_a_spike_and_keeps_its_mass():
    spike = np.zeros((1, 41, 41), dtype=np.float32)
    spike[0, 20, 20] = 1.0
    smoothed = gaussian_blur(spike, sigma=3.0)
    assert smoothed.max() < 0.05 and smoothed.sum() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_array_equal(gaussian_blur(spike, 0.0), spike)


def test_disabled_postprocess_is_identity():
    maps = _defect_map()
    post = MapPostprocessor(enabled=False, sigma=4.0).fit(_normal_maps())
    np.testing.assert_array_equal(post.transform(maps), maps)


def test_state_round_trips_through_json():
    post = MapPostprocessor(sigma=1.5, normalize="percentile").fit(_normal_maps())
    state = json.loads(json.dumps(post.state_dict()))
    loaded = MapPostprocessor().load_state_dict(state)
    assert loaded.sigma == 1.5 and loaded.normalize == "percentile"
    np.testing.assert_array_equal(loaded.transform(_defect_map()), post.transform(_defect_map()))


def test_transform_before_fit_is_a_user_error():
    with pytest.raises(UserError, match="fit"):
        MapPostprocessor().transform(_normal_maps())


# ---- config ------------------------------------------------------------------------------
def _compose(option, overrides=()):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(f"postprocess/{option}", overrides=list(overrides))


@pytest.mark.parametrize("option", ["default", "none", "percentile", "inspect"])
def test_presets_compose_and_build(option):
    cfg = _compose(option)
    validate(cfg)
    post = MapPostprocessor.from_config(cfg.postprocess).fit(_normal_maps())
    assert post.enabled == cfg.postprocess.enabled
    assert post.state_dict()["normalize"] == cfg.postprocess.normalize


@pytest.mark.parametrize("override, key", [("postprocess.sigma=-1", "postprocess.sigma"),
                                           ("postprocess.normalize=zscore", "postprocess.normalize"),
                                           ("postprocess.percentile=101", "postprocess.percentile"),
                                           ("postprocess.overlays_top_n=-2",
                                            "postprocess.overlays_top_n")])
def test_bad_postprocess_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(_compose("default", [override]))


# ---- overlays ----------------------------------------------------------------------------
def test_overlay_is_hot_on_the_defect_and_outlines_the_ground_truth():
    image = np.full((48, 48, 1), 100, dtype=np.uint8)
    amap = _defect_map()[0]
    mask = np.zeros((48, 48), dtype=bool)
    mask[20:28, 20:28] = True
    out = heatmap_overlay(image, amap, mask)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    inside, corner = out[24, 24].astype(int), out[2, 2].astype(int)
    assert inside[0] > inside[2] and corner[2] > corner[0]  # red on the defect, blue elsewhere
    assert (out == GT_COLOR).all(-1).sum() >= 8 * 4 - 4  # contour drawn around the mask


def test_select_overlays_takes_top_scores_then_highest_normals():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    labels = np.array([0, 1, 0, 1, 0])
    assert select_overlays(scores, labels, top_n=2, normal_n=2) == [
        ("top", 1), ("top", 3), ("normal", 2), ("normal", 4)]


def test_write_overlays_writes_pngs(tmp_path):
    images = np.zeros((3, 48, 48, 3), dtype=np.uint8)
    maps = np.concatenate([_normal_maps(2), _defect_map()])
    maps[1] += 0.5  # b is the normal image closest to a false alarm
    paths = write_overlays(tmp_path / "overlays", images, maps, maps.max((1, 2)),
                           np.array([0, 0, 1]), ["a", "b", "c"], top_n=1, normal_n=1)
    assert [p.name for p in paths] == ["top01_c.png", "normal01_b.png"]
    top = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    assert top.shape[0] == 48 and top.shape[1] > 48  # the image, then its colour bar
    bar = top[:, 48 + 4 + 2].astype(int)  # a column inside the JET bar: red at the top, blue below
    assert bar[2][0] > bar[2][2] and bar[-3][2] > bar[-3][0]


def test_overlay_draws_the_pixel_threshold_contour():
    image = np.full((48, 48, 1), 100, dtype=np.uint8)
    amap = _defect_map()[0]
    plain = heatmap_overlay(image, amap)
    marked = heatmap_overlay(image, amap, pixel_threshold=float(amap.max()) * 0.5)
    white = lambda out: (out == THRESHOLD_COLOR).all(-1).sum()  # noqa: E731
    assert white(marked) >= 12 and white(plain) == 0


def test_blur_matches_scipy_mirror_gaussian_with_radius_four_sigma():
    from scipy.ndimage import gaussian_filter

    maps = np.random.default_rng(0).random((2, 70, 90)).astype(np.float32)
    expected = np.stack([gaussian_filter(m, 4.0, mode="mirror", truncate=4.0) for m in maps])
    np.testing.assert_allclose(gaussian_blur(maps, 4.0), expected, atol=1e-5)
