"""ROI: clamping, masks, stats, and gating of the defects output only."""
import numpy as np
import pytest

from pyimgano_hydra.defects.extract import extract_defects
from pyimgano_hydra.defects.roi import clamp_roi, roi_box, roi_mask, roi_stats
from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.schemas.defects import DefectsSchema


def test_clamp_roi_clamps_to_unit_square_and_reorders():
    assert clamp_roi([1.2, 0.8, 0.3, -0.1]) == (0.3, 0.0, 1.0, 0.8)
    assert clamp_roi(None) is None


@pytest.mark.parametrize("roi", [[1.5, 0.0, 2.0, 1.0], [0.5, 0.2, 0.5, 0.9], [0.0, -1.0, 1.0, -0.5]])
def test_roi_empty_after_clamping_names_the_key(roi):
    with pytest.raises(ConfigError, match=r"^defects\.roi_xyxy_norm: .*empty"):
        clamp_roi(roi)


@pytest.mark.parametrize("roi", [[0.0, 0.0, 1.0], ["a", 0, 1, 1], [0, 0, float("nan"), 1], "0,0,1,1"])
def test_malformed_roi_names_the_key(roi):
    with pytest.raises(ConfigError, match=r"^defects\.roi_xyxy_norm: "):
        clamp_roi(roi)


def test_roi_mask_is_uint8_0_255_over_touched_pixels():
    mask = roi_mask((0.25, 0.5, 0.75, 1.0), (4, 8))
    assert mask.dtype == np.uint8 and mask.shape == (4, 8)
    expected = np.zeros((4, 8), np.uint8)
    expected[2:4, 2:6] = 255
    np.testing.assert_array_equal(mask, expected)
    # a sliver thinner than a pixel still covers one pixel
    assert roi_box((0.51, 0.0, 0.52, 1.0), (4, 8)) == (4, 0, 5, 4)


def test_roi_stats_are_max_and_mean_inside_the_roi():
    amap = np.arange(16, dtype=np.float32).reshape(4, 4)
    stats = roi_stats(amap, (0.0, 0.0, 0.5, 0.5))  # rows 0-1, cols 0-1: 0, 1, 4, 5
    assert stats["max"] == 5.0 and stats["mean"] == pytest.approx(2.5)
    assert stats["box_xyxy"] == [0, 0, 1, 1]
    whole = roi_stats(amap, None)
    assert whole["max"] == 15.0 and whole["xyxy_norm"] is None


def test_roi_gates_regions_but_never_changes_the_map():
    amap = np.zeros((10, 10), np.float32)
    amap[1:3, 1:3] = 0.9  # top-left blob, outside the ROI
    amap[6:9, 6:9] = 0.8  # bottom-right blob, inside
    before = amap.copy()
    settings = DefectsSchema(enabled=True, roi_xyxy_norm=[0.5, 0.5, 1.0, 1.0])
    gated = extract_defects(amap, 0.5, settings)
    np.testing.assert_array_equal(amap, before)
    assert [r["bbox_xyxy"] for r in gated.regions] == [[6, 6, 8, 8]]
    assert not gated.mask[:5].any() and not gated.mask[:, :5].any()
    assert gated.roi["max"] == pytest.approx(0.8)  # ROI stats see only the ROI
    ungated = extract_defects(amap, 0.5, DefectsSchema(enabled=True))
    assert len(ungated.regions) == 2 and ungated.roi["max"] == pytest.approx(0.9)
    # the region inside the ROI is identical either way
    assert gated.regions[0] == next(r for r in ungated.regions if r["bbox_xyxy"] == [6, 6, 8, 8]) | {"id": 1}
