"""Mask files: PNG / NPY round trips with 0/255 values, atomic writes."""
import os

import numpy as np
import pytest

from pyimgano_hydra.data.images import load_mask
from pyimgano_hydra.defects import io as mask_io
from pyimgano_hydra.errors import ConfigError, DataError


def _mask():
    mask = np.zeros((6, 9), np.uint8)
    mask[1:4, 2:7] = 255
    return mask


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_round_trip_keeps_shape_and_0_255(tmp_path, fmt):
    path = mask_io.save_mask(_mask(), tmp_path / "masks" / "img_001", fmt)
    assert path == tmp_path / "masks" / f"img_001.{fmt}" and path.is_file()
    back = load_mask(path)
    assert back.dtype == bool
    np.testing.assert_array_equal(back, _mask() > 0)
    assert os.listdir(path.parent) == [path.name]  # no temp files left


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = mask_io.save_mask(_mask(), tmp_path / "m", "png")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(mask_io.os, "replace", boom)
    with pytest.raises(OSError):
        mask_io.save_mask(np.zeros((6, 9), np.uint8), tmp_path / "m", "png")
    np.testing.assert_array_equal(load_mask(path), _mask() > 0)
    assert os.listdir(tmp_path) == ["m.png"]


def test_bad_format_and_bad_mask(tmp_path):
    with pytest.raises(ConfigError, match=r"^defects\.mask_format"):
        mask_io.save_mask(_mask(), tmp_path / "m", "jpg")
    with pytest.raises(DataError, match="uint8"):
        mask_io.save_mask(_mask().astype(bool), tmp_path / "m", "png")
    with pytest.raises(DataError, match="not found"):
        load_mask(tmp_path / "missing.png")


def test_only_one_load_mask():
    assert not hasattr(mask_io, "load_mask")
