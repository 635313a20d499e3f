"""The extractor chain and its JSON-able record."""
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from pyimgano_hydra.defects.extract import extract_defects
from pyimgano_hydra.errors import ConfigError, DataError
from pyimgano_hydra.schemas.defects import DefectsSchema


def _ring_and_speck():
    """A 5x5 ring (hole in the middle) and a 1-px speck, on a 16x16 map."""
    amap = np.zeros((16, 16), np.float32)
    amap[2:7, 2:7] = 0.8
    amap[4, 4] = 0.1  # hole: below threshold
    amap[12, 12] = 0.95  # speck: highest score of all
    return amap


def test_chain_fills_the_hole_and_drops_the_speck():
    settings = DefectsSchema(enabled=True, fill_holes=True, min_area=4)
    result = extract_defects(_ring_and_speck(), 0.5, settings)
    assert result.mask.dtype == np.uint8 and set(np.unique(result.mask)) == {0, 255}
    assert result.mask[4, 4] == 255 and result.mask[12, 12] == 0
    assert result.n_regions == 1
    (r,) = result.regions
    assert r["bbox_xyxy"] == [2, 2, 6, 6] and r["area"] == 25
    assert r["score_max"] == pytest.approx(0.8)
    assert r["score_mean"] == pytest.approx((24 * 0.8 + 0.1) / 25)  # the filled hole counts


def test_without_postprocess_the_speck_leads_and_the_hole_stays():
    settings = DefectsSchema(enabled=True, fill_holes=False, min_area=0)
    result = extract_defects(_ring_and_speck(), 0.5, settings)
    assert result.mask[4, 4] == 0
    assert [r["area"] for r in result.regions] == [1, 24]


def test_record_is_json_able_with_coordinate_space_and_provenance():
    amap = np.zeros((4, 8), np.float32)
    amap[1:3, 2:4] = 1.0
    result = extract_defects(amap, 0.5, {"enabled": True, "max_regions": 5}, original_size=(40, 100))
    record = result.to_record(mask_path="masks/img.png", provenance={"source": "explicit"})
    back = json.loads(json.dumps(record))
    assert back["coordinate_space"] == {"type": "anomaly_map", "shape": [4, 8], "original_size": [40, 100],
                                        "scale_xy": [12.5, 10.0]}
    assert back["mask"] == "masks/img.png" and back["mask_area"] == 4
    assert back["pixel_threshold"] == 0.5
    assert back["pixel_threshold_provenance"] == {"source": "explicit"}
    assert back["regions"][0]["bbox_xyxy"] == [2, 1, 3, 2]
    assert back["roi"]["xyxy_norm"] is None and back["roi"]["max"] == 1.0


def test_settings_accept_dictconfig_and_reject_unknown_keys():
    amap = np.zeros((4, 4), np.float32)
    cfg = OmegaConf.create({"enabled": True, "min_area": 0})
    assert extract_defects(amap, 0.5, cfg).regions == []
    with pytest.raises(ConfigError, match=r"^defects\.min_aera: unknown key"):
        extract_defects(amap, 0.5, {"min_aera": 3})


@pytest.mark.parametrize("bad", [float("nan"), -0.1, "abc", None, True, float("inf")])
def test_bad_thresholds_name_the_key(bad):
    with pytest.raises(ConfigError, match=r"^defects\.pixel_threshold: "):
        extract_defects(np.zeros((4, 4), np.float32), bad, DefectsSchema())


def test_map_with_nan_is_a_data_error():
    amap = np.zeros((4, 4), np.float32)
    amap[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        extract_defects(amap, 0.5, DefectsSchema())


def test_bad_original_size_is_a_data_error():
    with pytest.raises(DataError, match="original_size"):
        extract_defects(np.zeros((4, 4), np.float32), 0.5, DefectsSchema(), original_size=(0, 10))
