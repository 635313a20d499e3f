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


@pytest.mark.parametrize("array", [np.array([{"a": 1}, None], dtype=object), np.array(3, np.uint8),
                                   np.zeros((1, 2, 3, 4), np.uint8), np.zeros((0, 4), np.uint8),
                                   np.zeros((2, 2), [("a", "u1"), ("b", "f4")])],
                         ids=["object", "0-D", "4-D", "empty", "structured"])
def test_a_npy_mask_of_the_wrong_kind_is_one_line_naming_the_file(tmp_path, array):
    """A hostile pass: object, 0-D and 4-D .npy masks raised raw numpy errors naming no file."""
    path = tmp_path / "bad_mask.npy"
    np.save(path, array, allow_pickle=True)
    for read in (load_mask, mask_io_size):
        with pytest.raises(DataError, match=r"bad_mask\.npy: refused: a \.npy mask of shape") as caught:
            read(path)
        assert "\n" not in str(caught.value)


def mask_io_size(path):
    from pyimgano_hydra.data.images import mask_size

    return mask_size(path)


@pytest.mark.parametrize("damage", ["truncated", "not npy", "huge header"])
def test_a_damaged_npy_mask_is_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "bad_mask.npy"
    np.save(path, _mask())
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:-10])
    elif damage == "not npy":
        path.write_bytes(b"PK\x03\x04 not a numpy file")
    else:  # declares 10^12 bytes: refused before numpy allocates them
        path.write_bytes(_header({"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)}) + b"\0" * 54)
    expected = "refused: its header declares" if damage != "not npy" else "not a readable .npy mask"
    with pytest.raises(DataError, match=rf"bad_mask\.npy: {expected}") as caught:
        load_mask(path)
    assert "\n" not in str(caught.value)


def _header(fields: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, fields)
    return buffer.getvalue()
