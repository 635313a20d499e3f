"""Attacker pass V3 (line side): a run dir handed over from the lab and infer input folders;
new variants after V1 (image CPU bombs other than JPEG scans, zip/tensor tricks, report.json)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, _cli_env, copy_run, small_png


def _bmp_rle8(width: int, height: int, body: bytes) -> bytes:
    palette = b"\x00\x00\x00\x00" * 256
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + dib + palette + body


def test_a_1_kb_rle_bmp_never_stalls_the_decoder(tmp_path):
    """A 1 KB RLE8 BMP, 170,000,000x1 pixels (under the 256 MB limit and Pillow's bomb limit): one
    pixel then an end-of-line escape, which Pillow's pure-Python RLE decoder pads one byte per
    loop turn (170 million turns: ~20 s in decode, ~40 s and 1.5 GB through infer, for one file).
    It should be refused (or decoded) in a second or two, like the 10,000-scan JPEG."""
    path = tmp_path / "a.bmp"
    path.write_bytes(_bmp_rle8(170_000_000, 1, b"\x01\x07\x00\x00\x00\x01"))
    code = ("from pyimgano_hydra.data.images import load_image\n"
            "from pyimgano_hydra.errors import DataError\n"
            f"try: load_image({str(path)!r}, resize=128)\n"
            "except DataError as exc: print(exc)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_cli_env(), capture_output=True,
                              text=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("a 1 KB RLE BMP kept the decoder busy for more than 8 s")
    assert proc.returncode == 0, proc.stderr[-2000:]


def _two_central_directories(src, dst, inflated: int) -> None:
    """``src`` (a torch zip) rewritten so that torch (miniz) and Python's zipfile read two different
    central directories: the end record's offset points miniz at directory B, where data.pkl is
    DEFLATED and followed by ``inflated`` zero bytes (ignored after the pickle's STOP); zipfile
    (3.11) ignores that offset and reads the same-sized directory A just before the end record,
    where every entry is STORED and small. ``_stored_entries_only`` checks A; torch inflates B."""
    import io
    import zipfile

    source = zipfile.ZipFile(src)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            entry = zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0))
            if info.filename.endswith("/data.pkl"):
                entry.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(entry, "w", force_zip64=True) as out:
                    out.write(data)
                    for _ in range(inflated // (64 << 20)):
                        out.write(b"\0" * (64 << 20))
            else:
                archive.writestr(entry, data)
    raw = buffer.getvalue()
    end = raw.rfind(b"PK\x05\x06")
    fields = struct.unpack("<IHHHHIIH", raw[end:end + 22])
    size_cd, offset_cd = fields[5], fields[6]
    local, central = raw[:offset_cd], raw[offset_cd:offset_cd + size_cd]
    decoy, at = bytearray(central), 0
    while at < len(decoy):
        method, = struct.unpack("<H", decoy[at + 10:at + 12])
        packed, _, name_len, extra_len, comment_len = struct.unpack("<IIHHH", decoy[at + 20:at + 34])
        if method:
            decoy[at + 10:at + 12] = struct.pack("<H", 0)
            decoy[at + 24:at + 28] = struct.pack("<I", packed)  # "stored", as large as its bytes
        at += 46 + name_len + extra_len + comment_len
    Path(dst).write_bytes(local + central + bytes(decoy) + struct.pack("<IHHHHIIH", *fields[:7], 0))


def test_an_inspector_zip_with_a_second_central_directory_never_inflates_a_bomb(trained, tmp_path):
    """A 0.7 MB inspector.pt whose two central directories disagree: Python's zipfile (the
    compressed-entry check) sees only stored entries, torch inflates a deflated data.pkl of 512 MB
    (1 GB: 1.4 MB file, 2.6 GB peak memory, and infer scored as if nothing were wrong). The
    trust model says a compressed zip entry is refused; this one must be too (rc != 0, one line
    naming inspector.pt), before torch reads it."""
    run_dir = copy_run(trained, tmp_path)
    inspector = run_dir / "categories" / "weave" / "inspector.pt"
    _two_central_directories(trained / "categories" / "weave" / "inspector.pt", inspector, 512 << 20)
    code = ("import resource, subprocess, sys\n"
            f"p = subprocess.run([sys.executable, '-m', 'pyimgano_hydra.infer', 'run_dir={run_dir}', "
            f"'input={small_png(trained)}', 'hydra.run.dir={tmp_path / 'out'}'], capture_output=True, text=True)\n"
            "sys.stderr.write(p.stderr); print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_cli_env(), capture_output=True, text=True, timeout=120)
    rc, peak_kb = map(int, proc.stdout.split())
    assert peak_kb < 1_500_000, f"infer peaked at {peak_kb >> 10} MB reading a 0.7 MB inspector.pt"
    assert rc != 0 and "inspector.pt" in proc.stderr.strip().splitlines()[-1], proc.stderr[-1500:]


# -- attacks that held ---------------------------------------------------------------------
def test_held_a_report_json_with_60000_long_category_names_is_one_bounded_line(trained, tmp_path):
    """60,000 categories of 900-character names (and one of 20,000 'é') in a 53 MB report.json:
    infer without category= refuses in one line listing 20 names cut to 80 characters."""
    run_dir = copy_run(trained, tmp_path)
    report = json.loads((run_dir / "report.json").read_text())
    categories = {"weave": report["categories"]["weave"], "é" * 20000: {"inspector": None}}
    categories.update({f"c{i}" + "x" * 900: {"inspector": None} for i in range(1, 60000)})
    report["categories"] = categories
    (run_dir / "report.json").write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                           f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path,
                          env=_cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "60001 categories" in last and len(last) < 3000, last[:300]
