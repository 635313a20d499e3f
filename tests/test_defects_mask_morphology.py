"""Binarisation and binary postprocess on hand-made masks."""
import numpy as np
import pytest

from pyimgano_hydra.defects.mask import as_map, binarize
from pyimgano_hydra.defects.morphology import fill_holes, open_close, remove_small_components
from pyimgano_hydra.errors import DataError


def test_binarize_gives_uint8_0_255_strictly_above_threshold():
    amap = np.array([[0.1, 0.5, 0.50001], [0.9, 0.0, 0.49]], np.float32)
    mask = binarize(amap, 0.5)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 0, 255], [255, 0, 0]])


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4)), np.zeros((0, 5)), np.array([[0.0, np.nan]]), np.array([[np.inf]])])
def test_bad_maps_raise_data_error(bad):
    with pytest.raises(DataError, match="anomaly map"):
        as_map(bad)


def test_open_removes_specks_close_bridges_gaps_and_zero_skips():
    mask = np.zeros((12, 12), np.uint8)
    mask[2:7, 2:7] = 255  # 5x5 block
    mask[10, 10] = 255  # speck
    opened = open_close(mask, open_ksize=3)
    assert opened[10, 10] == 0 and (opened[2:7, 2:7] == 255).all()
    np.testing.assert_array_equal(open_close(mask, 0, 0), mask)

    gap = np.zeros((5, 9), np.uint8)
    gap[1:4, 1:4] = 255
    gap[1:4, 5:8] = 255  # one-column gap at x = 4
    closed = open_close(gap, close_ksize=3)
    assert (closed[1:4, 4] == 255).all()
    assert (closed[1:4, 1:8] == 255).all() and closed.sum() == 255 * 21  # nothing grows outward


def test_fill_holes_fills_enclosed_background_only():
    mask = np.zeros((9, 12), np.uint8)
    mask[1:6, 1:6] = 255
    mask[3, 3] = 0  # enclosed hole
    mask[1:6, 7:11] = 255
    mask[3, 8:11] = 0  # notch open to the right edge of its blob, reachable from outside
    filled = fill_holes(mask)
    assert filled[3, 3] == 255
    assert (filled[3, 8:11] == 0).all()
    assert set(np.unique(filled)) <= {0, 255}
    np.testing.assert_array_equal(fill_holes(np.zeros((4, 4), np.uint8)), 0)


def test_fill_holes_treats_a_blob_on_the_map_edge_correctly():
    mask = np.zeros((6, 6), np.uint8)
    mask[0:3, 0:3] = 255
    mask[1, 1] = 0  # enclosed, although the blob touches the border
    assert fill_holes(mask)[1, 1] == 255


def test_min_area_removes_tiny_components_8_connected():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:4, 1:4] = 255  # 9 px
    mask[7, 7] = mask[8, 8] = 255  # 2 px, diagonal neighbours = one component
    mask[0, 9] = 255  # 1 px
    out = remove_small_components(mask, min_area=3)
    assert (out[1:4, 1:4] == 255).all()
    assert out[7, 7] == out[8, 8] == out[0, 9] == 0
    kept = remove_small_components(mask, min_area=2)
    assert kept[7, 7] == kept[8, 8] == 255 and kept[0, 9] == 0
    np.testing.assert_array_equal(remove_small_components(mask, 0), mask)


def test_close_keeps_blobs_on_the_map_edge_as_they_are():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:3, 0:3] = 255  # touches top and left edges
    mask[5:8, 6:8] = 255  # touches bottom and right edges
    np.testing.assert_array_equal(open_close(mask, 0, 3), mask)
    np.testing.assert_array_equal(open_close(mask, 0, 5), mask)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_open_shrinks_and_close_grows_for_odd_and_even_kernels(k):
    mask = (np.random.default_rng(k).random((30, 30)) > 0.6).astype(np.uint8) * 255
    closed, opened = open_close(mask, 0, k), open_close(mask, k, 0)
    assert ((mask > 0) <= (closed > 0)).all()  # closing only adds pixels
    assert ((opened > 0) <= (mask > 0)).all()  # opening only removes pixels
    np.testing.assert_array_equal(open_close(closed, 0, k), closed)  # both are idempotent
    np.testing.assert_array_equal(open_close(opened, k, 0), opened)
