"""A PNG or JPEG whose image data ends early is refused naming it; every complete kind still loads."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyimgano_hydra.data.images import load_image
from pyimgano_hydra.errors import DataError

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _noise(shape=(37, 53, 3)) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, shape, dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _interlaced_png(arr: np.ndarray, passes: int = 7, idat_size: int = 1 << 30) -> bytes:
    """An Adam7 RGB PNG of ``arr`` (Pillow writes none) holding its first ``passes`` passes,
    its zlib stream split into IDAT chunks of ``idat_size`` bytes."""
    height, width = arr.shape[:2]
    raw = b"".join(b"\0" + row.tobytes() for x0, y0, dx, dy in ADAM7[:passes]
                   if x0 < width and y0 < height for row in arr[y0::dy, x0::dx])
    stream = zlib.compress(raw)
    idats = b"".join(_chunk(b"IDAT", stream[i:i + idat_size]) for i in range(0, len(stream), idat_size))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1))
            + idats + _chunk(b"IEND", b""))


def _saved(arr: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    (img.convert(mode) if mode else img).save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_an_interlaced_png_in_small_chunks_loads_pixel_exact(tmp_path: Path):
    arr = _noise()
    path = tmp_path / "adam7.png"
    path.write_bytes(_interlaced_png(arr, idat_size=97))
    np.testing.assert_array_equal(load_image(path), arr)


def test_an_interlaced_png_missing_its_last_pass_is_refused_naming_it(tmp_path: Path):
    path = tmp_path / "six_passes.png"
    path.write_bytes(_interlaced_png(_noise(), passes=6))
    with pytest.raises(DataError, match="six_passes.png: refused: its image data ends before its last row"):
        load_image(path)


@pytest.mark.parametrize("fmt, mode, kwargs", [
    ("PNG", "1", {}), ("PNG", "P", {}), ("PNG", "L", {}), ("PNG", "LA", {}), ("PNG", "RGBA", {}),
    ("PNG", "RGB", {"compress_level": 0}),
    ("JPEG", "L", {}), ("JPEG", "CMYK", {}), ("JPEG", "RGB", {"progressive": True}),
    ("JPEG", "RGB", {"subsampling": 0, "quality": 95}),
])
def test_a_complete_file_of_each_kind_loads_as_pillow_decodes_it(tmp_path: Path, fmt, mode, kwargs):
    arr = _noise((64, 48, 3))
    path = tmp_path / f"whole.{fmt.lower()}"
    path.write_bytes(_saved(arr, fmt, mode, **kwargs))
    loaded = load_image(path)
    with Image.open(path) as img:
        assert loaded.shape == (img.height, img.width, 3)
    assert loaded.std() > 20  # noise, not a flat fill


def test_a_complete_16_bit_png_loads_with_its_contrast(tmp_path: Path):
    Image.fromarray(_noise((40, 30)).astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png").std() > 20


def test_a_jpeg_cut_at_a_restart_marker_and_closed_is_refused_but_its_whole_file_loads(tmp_path: Path):
    data = _saved(_noise((128, 128, 3)), "JPEG", quality=90, restart_marker_rows=1)
    cut = data.rfind(b"\xff\xd4")  # a restart marker in the bottom half
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[:cut] + b"\xff\xd9")
    assert load_image(tmp_path / "whole.jpg").shape == (128, 128, 3)
    with pytest.raises(DataError, match="cut.jpg: refused: its image data ends"):
        load_image(tmp_path / "cut.jpg")


def test_score_onnx_names_a_cut_png_and_jpeg_and_scores_the_whole_ones(exported, tmp_path: Path):
    """The line's standalone scorer: a cut file gets no verdict (named on stderr, exit 2), the rest score."""
    from conftest import run_score_onnx

    arr = _noise((64, 64, 3))
    jpeg = _saved(arr, "JPEG", quality=90)
    files = {"whole.png": _interlaced_png(arr), "six_passes.png": _interlaced_png(arr, passes=6),
             "whole.jpg": jpeg, "cut.jpg": jpeg[:len(jpeg) // 2] + b"\xff\xd9"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    proc = run_score_onnx(exported, *(tmp_path / name for name in files))
    assert proc.returncode == 2, proc.stderr
    scored = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [Path(json.loads(line)["image"]).name for line in scored] == ["whole.png", "whole.jpg"]
    assert "six_passes.png" in proc.stderr and "cut.jpg" in proc.stderr
