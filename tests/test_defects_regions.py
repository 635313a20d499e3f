"""Regions from connected components: exact boxes, scores, ordering, max_regions."""
import numpy as np
import pytest

from pyimgano_hydra.defects.regions import find_regions


def test_one_region_bbox_area_centroid_scores_exactly():
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 255  # rows 2-4, cols 3-6
    amap = np.zeros((8, 10), np.float32)
    amap[2:5, 3:7] = 0.5
    amap[3, 5] = 0.75  # the peak
    amap[0, 0] = 5.0  # outside the region: must not count
    regions, total = find_regions(mask, amap)
    assert total == 1
    (r,) = regions
    assert r["bbox_xyxy"] == [3, 2, 6, 4]  # inclusive x1, y1, x2, y2
    assert r["area"] == 12
    assert r["centroid"] == [4.5, 3.0]
    assert r["score_max"] == pytest.approx(0.75)
    assert r["score_mean"] == pytest.approx((11 * 0.5 + 0.75) / 12)
    assert r["id"] == 1


def _blob_map():
    """Four blobs: (score_max, area) = A (0.9, 4), B (0.9, 9), C (0.95, 1), D (0.9, 4)."""
    mask = np.zeros((20, 20), np.uint8)
    amap = np.full((20, 20), 0.1, np.float32)
    blobs = {"A": (slice(1, 3), slice(1, 3), 0.9), "B": (slice(1, 4), slice(10, 13), 0.9),
             "C": (slice(10, 11), slice(1, 2), 0.95), "D": (slice(15, 17), slice(15, 17), 0.9)}
    for rows, cols, peak in blobs.values():
        mask[rows, cols] = 255
        amap[rows, cols] = 0.6
        amap[rows.start, cols.start] = peak
    return mask, amap


def test_regions_sorted_by_score_max_then_area_then_id():
    mask, amap = _blob_map()
    regions, total = find_regions(mask, amap)
    assert total == 4
    corners = [tuple(r["bbox_xyxy"][:2]) for r in regions]  # (x1, y1)
    # C (highest max), then B (tie on max, larger area), then A and D (tie on both: lower id first)
    assert corners == [(1, 10), (10, 1), (1, 1), (15, 15)]
    assert regions[2]["id"] < regions[3]["id"]
    assert sorted(r["id"] for r in regions) == [1, 2, 3, 4]


def test_max_regions_keeps_the_top_ones_and_reports_the_total():
    mask, amap = _blob_map()
    regions, total = find_regions(mask, amap, max_regions=2)
    assert total == 4
    assert [tuple(r["bbox_xyxy"][:2]) for r in regions] == [(1, 10), (10, 1)]


def test_many_regions_take_the_vectorised_path_with_the_same_figures():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[::2, ::2] = 255  # 1024 isolated pixels (> the per-bbox loop limit)
    amap = rng.random((64, 64)).astype(np.float32)
    regions, total = find_regions(mask, amap)
    assert total == 1024 and len(regions) == 1024
    for r in regions[:5] + regions[-5:]:
        x, y = r["bbox_xyxy"][:2]
        assert r["area"] == 1 and r["score_max"] == r["score_mean"] == pytest.approx(float(amap[y, x]))
    maxes = [r["score_max"] for r in regions]
    assert maxes == sorted(maxes, reverse=True)


def test_empty_mask_has_no_regions():
    assert find_regions(np.zeros((5, 5), np.uint8), np.ones((5, 5), np.float32)) == ([], 0)
