import numpy as np
import pytest

from pyimgano_hydra.metrics.image import image_metrics
from pyimgano_hydra.metrics.pixel import aupro, pixel_auroc
from pyimgano_hydra.recipes.calibration import calibrate_threshold, calibration_quantile


def test_image_metrics_perfect_and_threshold():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    m = image_metrics(labels, scores, threshold=0.5)
    assert m["image_auroc"] == 1.0 and m["image_ap"] == 1.0
    assert m["image_f1"] == 1.0 and m["image_f1_max"] == 1.0
    m = image_metrics(labels, scores, threshold=0.85)  # misses one anomaly
    assert m["image_f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert m["image_tpr"] == 0.5 and m["image_fpr"] == 0.0


def test_image_metrics_ignores_unlabelled_and_handles_one_class():
    m = image_metrics(np.array([0, -1, 0]), np.array([0.1, 5.0, 0.2]), threshold=0.15)
    assert m["n_normal"] == 2 and np.isnan(m["image_auroc"])
    assert m["image_fpr"] == 0.5


def _blob_masks():
    masks = np.zeros((4, 32, 32), bool)
    masks[1, 4:10, 4:10] = True
    masks[2, 20:30, 2:8] = True
    masks[2, 2:5, 25:30] = True
    return masks


def test_aupro_and_pixel_auroc_perfect_map():
    masks = _blob_masks()
    maps = masks.astype(np.float32) + 0.01 * np.random.default_rng(0).random(masks.shape, dtype=np.float32)
    assert pixel_auroc(masks, maps) == pytest.approx(1.0)
    assert aupro(masks, maps) == pytest.approx(1.0, abs=1e-3)


def test_aupro_random_map_is_low_and_region_weighted():
    masks = _blob_masks()
    rng = np.random.default_rng(1)
    random_maps = rng.random(masks.shape, dtype=np.float32)
    # Random scores: PRO ~ FPR, so the normalised area up to 0.3 is ~0.15.
    assert 0.05 < aupro(masks, random_maps) < 0.25
    # A map that finds only the big region scores below one that finds both regions equally.
    only_big = np.zeros_like(random_maps)
    only_big[masks & (np.arange(32)[None, :, None] >= 20)] = 1.0
    assert aupro(masks, only_big) < aupro(masks, masks.astype(np.float32))


def test_calibration_quantile_precedence():
    assert calibration_quantile(None, None) == (0.995, "default")
    assert calibration_quantile(0.1, None)[0] == pytest.approx(0.9)
    assert calibration_quantile(0.1, 0.5) == (0.5, "recipe.calibration_quantile")
    t = calibrate_threshold(np.arange(101, dtype=float), 0.9, "x", "y")
    assert t["value"] == pytest.approx(90.0) and t["provenance"]["n_scores"] == 101


def test_streaming_pixel_metrics_match_in_memory_ones():
    from pyimgano_hydra.metrics.pixel import StreamingPixelMetrics

    rng = np.random.default_rng(3)
    masks = np.zeros((6, 40, 40), bool)
    masks[1, 5:12, 5:15] = True
    masks[3, 20:35, 22:26] = True
    masks[3, 1:3, 1:3] = True
    maps = rng.normal(size=masks.shape).astype(np.float32) + 1.5 * masks
    stream = StreamingPixelMetrics(lo=float(maps.min()), hi=float(maps.max()), bins=1 << 16)
    for start in range(0, 6, 4):  # two batches
        stream.update(masks[start:start + 4], maps[start:start + 4])
    assert stream.pixel_auroc() == pytest.approx(pixel_auroc(masks, maps), abs=1e-4)
    assert stream.aupro() == pytest.approx(aupro(masks, maps, bins=1 << 16), abs=2e-3)
