"""Pass V2 (lab side, second round): hostile dataset folders, masks, sweeps and output dirs of the
training app; variants not in the earlier passes (tests/test_hostile_pass_v2.py is the first round)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _with_exif_orientation(png: bytes, orientation: int) -> bytes:
    """``png`` with an eXIf chunk (EXIF Orientation tag) inserted right after IHDR."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = exif.tobytes()
    if raw.startswith(b"Exif\x00\x00"):
        raw = raw[6:]
    return png[:33] + _png_chunk(b"eXIf", raw) + png[33:]


def test_a_16_bit_colour_mask_with_an_exif_orientation_is_turned_like_its_8_bit_twin(tmp_path):
    """A mask PNG carrying an EXIF orientation (6: turned 90 degrees) is turned by Pillow (8-bit
    masks, and every image) and ``mask_size`` reports the turned size; a 16-bit colour PNG mask
    is decoded by OpenCV with IMREAD_UNCHANGED, which ignores the orientation. Its size check
    passes (the header says the turned size), then ``load_mask`` returns the un-turned array and
    cv2.resize stretches it onto the image: the ground truth silently lands on the wrong pixels
    and the run's pixel metrics are computed against it."""
    import cv2
    from PIL import Image

    from pyimgano_hydra.data.images import load_mask, mask_size

    mask = np.zeros((40, 80), np.uint8)
    mask[:10, :20] = 255  # a defect in the top-left corner of the stored (un-turned) pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.stack([mask] * 3, -1)).save(tmp_path / "m8.png", exif=exif.tobytes())
    ok, buf = cv2.imencode(".png", np.stack([mask] * 3, -1).astype(np.uint16) * 257)
    assert ok
    (tmp_path / "m16.png").write_bytes(_with_exif_orientation(buf.tobytes(), 6))

    eight, sixteen = tmp_path / "m8.png", tmp_path / "m16.png"
    assert mask_size(eight) == mask_size(sixteen) == (80, 40)
    want = load_mask(eight)
    got = load_mask(sixteen)
    assert got.shape == want.shape == (80, 40), (got.shape, want.shape)
    assert np.array_equal(got, want)
    # as the run reads it: resized to the image's (turned) size
    assert np.array_equal(load_mask(sixteen, (80, 40)), load_mask(eight, (80, 40)))


def test_a_dataset_of_many_images_without_their_masks_is_listed_in_linear_time(tmp_path):
    """``find_mask`` lists the whole mask folder again for every image whose exact mask name is
    absent (BTAD, MVTec, the folder layout's masks beside images...). A BTAD product whose
    ``test/ko`` and ``ground_truth/ko`` hold 4,000 empty files each (0 bytes of data) kept the
    app busy 181 s before its one-line error (150 s in ``collect`` alone): the work is
    quadratic, so 10,000 files take ~20 minutes. 1,000 of each must be listed in seconds."""
    root = tmp_path / "btad"
    for sub in ("01/train/ok", "01/test/ko", "01/ground_truth/ko"):
        (root / sub).mkdir(parents=True)
    for i in range(1000):
        (root / "01/test/ko" / f"{i:05d}.png").touch()
        (root / "01/ground_truth/ko" / f"m{i:05d}.png").touch()
    code = textwrap.dedent(f"""
        import time
        from pyimgano_hydra.data.btad import BTADDataset
        d = BTADDataset(root={str(root)!r}, category="01", resize=64)
        t = time.monotonic()
        split = d.collect("01")
        print(len(split.test), round(time.monotonic() - t, 2))
    """)
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"collect of 1,000 unmasked images still running after {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, proc.stderr[-1500:]
    n, seconds = proc.stdout.split()
    assert n == "1000"
    assert float(seconds) < 3, f"collect took {seconds} s for 1,000 images"


def test_a_mask_whose_header_declares_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    """``mask_size`` (the cheap header check every anomalous sample's mask goes through) calls
    ``read_size`` without ``max_megabytes``; for a PNG, Pillow's ``getexif()`` then decodes the
    whole file. A 657 KB RGBA mask declaring 13000x13000 pixels took 0.7 GB and 2 s before any
    check (dataset.max_image_megabytes is 256 MB): one such mask per image of a test split costs
    that much each. The check must be refused (or answered) from the header, in bounded memory."""
    w = h = 13000
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    row = b"\x00" * (w * 4 + 1)
    co = zlib.compressobj(9)
    data = b"".join(co.compress(row) for _ in range(h)) + co.flush()
    path = tmp_path / "000_mask.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))
    code = textwrap.dedent(f"""
        from pyimgano_hydra.data.images import mask_size
        from pyimgano_hydra.errors import DataError
        def peak_kb():  # VmHWM: ru_maxrss keeps the forking pytest's peak across exec
            return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
        before = peak_kb()
        try:
            mask_size({str(path)!r})
        except DataError:
            pass
        print((peak_kb() - before) // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-1500:]
    grown_mb = int(proc.stdout.split()[-1])
    assert grown_mb < 300, f"mask_size grew memory by {grown_mb} MB for a 657 KB mask"
