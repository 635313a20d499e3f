"""16-bit PNG masks of every colour type read at their own depth, and are size-checked before decoding."""
import struct
import zlib

import numpy as np
import pytest

from pyimgano_hydra.data.images import load_mask
from pyimgano_hydra.errors import DataError

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour types: gray, RGB, gray + alpha, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16(path, height: int, width: int, colour_type: int, label_rows: slice = slice(0, 0)) -> None:
    """A 16-bit PNG written row by row (a big one stays small on disk): value 1 in ``label_rows``
    (colour channels only), alpha 65535."""
    channels = _CHANNELS[colour_type]
    row = np.zeros((width, channels), ">u2")
    if colour_type in (4, 6):
        row[:, -1] = 65535
    labelled = row.copy()
    labelled[:, : channels - (colour_type in (4, 6))] = 1
    packer = zlib.compressobj(6)
    body = []
    for y in range(height):
        line = labelled if label_rows.start <= y < label_rows.stop else row
        body.append(packer.compress(b"\x00" + line.tobytes()))
    body.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(body))
                     + _chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type", [0, 2, 4, 6], ids=["gray", "rgb", "gray_alpha", "rgba"])
def test_a_16_bit_label_mask_of_value_1_counts_its_pixels(tmp_path, colour_type):
    path = tmp_path / "m.png"
    _png16(path, 12, 10, colour_type, label_rows=slice(3, 5))
    mask = load_mask(path)
    assert mask.shape == (12, 10)
    assert int(mask.sum()) == 20 and mask[3:5].all(), f"{int(mask.sum())} defect pixels, 20 in the file"


def test_a_16_bit_colour_mask_is_refused_from_its_header_when_its_decoded_array_is_too_big(tmp_path):
    """9000x9000 RGB at 16 bits: 486 MB once decoded (Pillow's 8-bit view counts 243 MB, under the
    256 MB limit), refused before decoding with the file named."""
    path = tmp_path / "big_mask.png"
    _png16(path, 9000, 9000, 2)
    with pytest.raises(DataError, match=r"big_mask\.png: refused: .*486 MB"):
        load_mask(path)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "RGBA16"])
def test_a_defect_drawn_only_in_the_alpha_channel_counts(tmp_path, mode):
    """An annotation tool's transparent layer: colour 0 everywhere, the defect opaque; read as empty before."""
    import cv2
    from PIL import Image

    path = tmp_path / "m.png"
    if mode == "RGBA16":
        arr = np.zeros((12, 10, 4), np.uint16)
        arr[3:5, :, 3] = 65535
        cv2.imwrite(str(path), arr)
    else:
        arr = np.zeros((12, 10, len(mode)), np.uint8)
        arr[3:5, :, -1] = 255
        Image.fromarray(arr, mode).save(path)
    mask = load_mask(path)
    assert int(mask.sum()) == 20 and mask[3:5].all(), f"{int(mask.sum())} defect pixels, 20 drawn"
