"""Pass Y7: a received run dir and a folder of line images on the line side; variants not in the
earlier passes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import copy_run, run_cli, small_png
from pyimgano_hydra.data.images import load_image
from pyimgano_hydra.errors import DataError


def test_float_tiff_above_255_is_refused_not_loaded_saturated_white(tmp_path):
    """HOLE (wrong-result): a float TIFF whose values span 300..60000 (a 16-bit camera frame saved as
    float, as HALCON/ImageJ 'real' exports do) is neither scaled (only a max <= 1 is x255, only an
    int file's max > 255 is /257) nor refused (only > 65535 is): it is clipped to 255, every pixel
    white, and scored silently. DATASETS.md says float TIFFs hold [0, 1] or [0, 255], and the refusal
    for > 65535 already tells the user to 'write float in [0, 1] or [0, 255]'. Expected: refused
    naming the file (or mapped by a documented rule that keeps its contrast)."""
    path = tmp_path / "frame.tif"
    Image.fromarray(np.linspace(300, 60000, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(path)
    try:
        arr = load_image(path)
    except DataError as exc:
        assert path.name in str(exc)
        return
    assert arr.min() != arr.max(), f"{path.name} loaded as one flat value {arr.min()} (contrast lost)"


def _pattern() -> np.ndarray:
    yy, xx = np.mgrid[0:128, 0:128]
    return np.stack([(xx * 2) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.uint8)


def _silently_wrong(path, original: np.ndarray) -> bool:
    try:
        loaded = load_image(path)
    except DataError as exc:
        assert path.name in str(exc)
        return False
    return not np.array_equal(loaded, original)


def test_a_png_with_a_corrupt_byte_in_its_image_data_is_refused_not_scored_as_garbage(tmp_path):
    """HOLE (wrong-result): one byte of a PNG's IDAT changed (bit rot, a bad copy to the line PC): its
    chunk CRC-32 and zlib's Adler-32 no longer match, but neither Pillow nor the completeness check
    (headers.png_data_complete, which stops inflating at the last row) verifies them, so for about
    one byte in five the file decodes to every row, rows below the byte garbage, and is scored
    without a word (52 of 237 positions in this 128x128 file). Expected: refused naming the file,
    as a PNG whose data ends early is."""
    import io
    import struct

    original = _pattern()
    buffer = io.BytesIO()
    Image.fromarray(original).save(buffer, "PNG")
    data = buffer.getvalue()
    length, kind = struct.unpack(">I4s", data[33:41])
    assert kind == b"IDAT"
    path = tmp_path / "part.png"
    silent = []
    for k in range(4, length - 4):
        bad = bytearray(data)
        bad[41 + k] ^= 0xFF
        path.write_bytes(bytes(bad))
        if _silently_wrong(path, original):
            silent.append(k)
    assert not silent, f"{len(silent)} single-byte corruptions of IDAT loaded as a different image, e.g. at {silent[:5]}"


def test_a_deflate_tiff_whose_strip_is_corrupt_is_refused_not_loaded_flat(tmp_path):
    """HOLE (wrong-result): a deflate-compressed TIFF (one strip, as Pillow/libtiff write a small
    frame) whose strip's second half is zeros (a copy cut short, then padded): libtiff prints
    'ZIPDecode: Decoding error at scanline N' on stderr, Pillow returns the image anyway, every row
    below it one flat value, and it is scored silently. A multi-strip file is refused ('decoder
    error -2'). Expected: refused naming the file."""
    import io

    original = _pattern()
    buffer = io.BytesIO()
    Image.fromarray(original).save(buffer, "TIFF", compression="tiff_adobe_deflate")
    data = bytearray(buffer.getvalue())
    with Image.open(io.BytesIO(bytes(data))) as img:
        offsets, counts = img.tag_v2[273], img.tag_v2[279]
    assert len(offsets) == 1
    start, end = offsets[0], offsets[0] + counts[0]
    middle = start + (end - start) // 2
    data[middle:end] = bytes(end - middle)
    path = tmp_path / "frame.tif"
    path.write_bytes(bytes(data))
    assert not _silently_wrong(path, original), "a corrupt deflate strip loaded as a (partly flat) image"


def test_a_category_report_threshold_too_large_for_a_float_is_refused_naming_the_file(trained, tmp_path):
    """HOLE (cosmetic: refused, but naming nothing): a received run whose
    ``categories/<cat>/report.json`` records ``threshold.value`` as a 401-digit JSON integer (valid
    JSON, an int to Python): infer ends 'error: job [...]: OverflowError: int too large to convert
    to float' (exit 1), naming neither the file nor the key; status.json of the inference says only
    'int too large to convert to float'. Expected: one line naming report.json (and
    threshold.value), as a NaN there or a 5000-digit number is."""
    import re

    run_dir = copy_run(trained, tmp_path)
    report = run_dir / "categories" / "weave" / "report.json"
    text, n = re.subn(r'("threshold": \{\s*"value": )[^,}\s]+', lambda m: m.group(1) + "1" + "0" * 400,
                      report.read_text(), count=1)
    assert n == 1
    report.write_text(text)
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"],
                   module="pyimgano_hydra.infer", timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "report.json" in last and "OverflowError" not in last, proc.stderr[-800:]


def test_an_inspector_defects_pixel_threshold_too_large_for_a_float_is_refused_naming_the_file(trained, tmp_path):
    """HOLE (cosmetic: refused, but naming nothing): an ``inspector.pt`` whose stored
    ``defects.pixel_threshold`` is the int 10**400 (a Python int pickles in a weights_only file):
    ``check_threshold_value`` takes it as a number and ``float()`` overflows: 'error: job [...]:
    OverflowError: int too large to convert to float' (exit 1), no file, no key. The same value in
    ``pixel_threshold.value`` or ``postprocess.low`` is refused naming the file and key.
    Expected: the same one line here."""
    import torch

    run_dir = copy_run(trained, tmp_path)
    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    state["defects"]["pixel_threshold"] = 10 ** 400
    torch.save(state, path)
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"],
                   module="pyimgano_hydra.infer", timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "inspector.pt" in last and "OverflowError" not in last, proc.stderr[-800:]


def test_held_a_png_of_a_million_empty_chunks_before_its_data_is_refused_at_once(tmp_path):
    """HELD: a 12 MB PNG holding 1,000,000 empty unknown ancillary chunks before IDAT (Pillow walks
    each in Python) is refused naming the file in well under a second."""
    import io
    import struct
    import time
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    junk = struct.pack(">I", 0) + b"abCd" + struct.pack(">I", zlib.crc32(b"abCd") & 0xFFFFFFFF)
    path = tmp_path / "chunks.png"
    path.write_bytes(data[:33] + junk * 1_000_000 + data[33:])
    started = time.monotonic()
    with pytest.raises(DataError, match="chunks.png"):
        load_image(path)
    assert time.monotonic() - started < 5


def test_held_infer_outputs_follow_a_group_writable_umask(trained, tmp_path):
    """HELD: under umask 002 (a line's shared results folder) every file infer writes
    (predictions, summary, status, maps, masks, its log and Hydra record) is 0664, folders 0775."""
    import os
    import stat
    import subprocess
    import sys

    from conftest import _cli_env

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained}",
                           f"input={small_png(trained)}", f"hydra.run.dir={out}", "save_maps=true",
                           "defects=default", "defects.pixel_threshold=0.5"],
                          env=_cli_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o002))
    assert proc.returncode == 0, proc.stderr[-800:]
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    wrong = {k: oct(m) for k, m in modes.items() if m != (0o775 if (out / k).is_dir() else 0o664)}
    assert not wrong and any(k.startswith("masks/") for k in modes), wrong
