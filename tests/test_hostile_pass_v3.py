"""Attacker pass V3 (line side): a run dir handed over from the lab and infer input folders;
new variants after V1 (image CPU bombs other than JPEG scans, zip/tensor tricks, report.json)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, _cli_env, copy_run, run_score_onnx, small_png


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


# -- pass V3 (second round) ------------------------------------------------------------------
# this process's peak RSS in KiB (ru_maxrss would keep the forking pytest's peak across exec)
PEAK_KB = "int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')).split()[1])"


def _load_image_measured(path: Path, resize: int) -> tuple[list[str], float, int]:
    """``load_image`` in a fresh process: the DataError lines it printed, its CPU seconds and the
    process's peak RSS in MB."""
    code = ("import time\n"
            "from pyimgano_hydra.data.images import load_image\n"
            "from pyimgano_hydra.errors import DataError\n"
            "start = time.process_time()\n"
            f"try: load_image({str(path)!r}, resize={resize})\n"
            "except DataError as exc: print(exc)\n"
            "print(time.process_time() - start, PEAK_KB)\n").replace("PEAK_KB", PEAK_KB)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *lines, last = proc.stdout.splitlines()
    cpu_s, peak_kb = last.split()
    return lines, float(cpu_s), int(peak_kb) >> 10


def _raw_tiff_of_one_byte_strips(path: Path, strips: int) -> Path:
    """An uncompressed 8-bit TIFF, 1 pixel wide and ``strips`` rows, one row a strip, every
    StripOffsets entry (SHORT: 2 bytes) pointing at the same byte; StripByteCounts of count 1."""
    offsets = struct.pack(f"<{strips}H", *([8] * strips))
    ifd_at = 9 + len(offsets) + (9 + len(offsets)) % 2
    entries = sorted([(256, 3, 1, 1), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                      (273, 3, strips, 9), (277, 3, 1, 1), (278, 3, 1, 1), (279, 3, 1, 1)])
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += (struct.pack("<HHIHH", tag, typ, count, value, 0) if count == 1 and typ == 3
                else struct.pack("<HHII", tag, typ, count, value))
    body = b"II*\x00" + struct.pack("<I", ifd_at) + b"\x80" + offsets
    path.write_bytes(body + b"\0" * (ifd_at - len(body)) + ifd + struct.pack("<I", 0))
    return path


def test_a_few_mb_tiff_of_millions_of_raw_strips_never_stalls_or_balloons_the_decoder(tmp_path):
    """A 3 MB uncompressed TIFF of 1x1,500,000 pixels (1.5 MB decoded, far under every limit) cut
    into 1,500,000 one-byte strips: Pillow builds one Python tile tuple a strip and decodes them
    one Python loop turn each: ~12 s and ~530 MB for load_image here; 8 MB (4,000,000 strips)
    took 31 s / 1.3 GB, and through infer 39 s / 1.9 GB peak for one image. It should be refused
    (or decoded) in a few seconds and without hundreds of MB, like the RLE BMP."""
    path = _raw_tiff_of_one_byte_strips(tmp_path / "strips.tif", 1_500_000)
    lines, cpu_s, peak_mb = _load_image_measured(path, 128)
    assert cpu_s < 3, f"decoding a 3 MB TIFF took {cpu_s:.1f} s of CPU"
    assert peak_mb < 300, f"decoding a 3 MB TIFF peaked at {peak_mb} MB"
    assert len(lines) == 1 and "strips" in lines[0], lines


def test_a_tiff_of_millions_of_raw_strips_is_one_line_in_score_onnx_and_an_ordinary_one_scores(exported, tmp_path):
    """examples/score_onnx.py on the line PC refuses the same file in one line naming it; an
    ordinary TIFF still scores."""
    from PIL import Image

    bomb = _raw_tiff_of_one_byte_strips(tmp_path / "strips.tif", 1_500_000)
    ordinary = tmp_path / "ordinary.tif"
    Image.open(small_png(exported)).convert("RGB").save(ordinary)
    proc = run_score_onnx(exported, bomb, ordinary)
    assert proc.returncode == 2 and "strips.tif" in proc.stderr and "strips or tiles" in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "ordinary.tif" in proc.stdout


def _jpeg_of_empty_app_markers(path: Path, markers: int) -> Path:
    """A valid 8x8 JPEG with ``markers`` empty APP0 segments (4 bytes each) after its SOI."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 90, 90)).save(buffer, "JPEG")
    good = buffer.getvalue()
    path.write_bytes(good[:2] + b"\xff\xe0\x00\x02" * markers + good[2:])
    return path


def test_a_jpeg_of_millions_of_empty_app_markers_is_refused_before_pillow_lists_them(tmp_path):
    """10 MB of 4-byte APP0 segments: Pillow's header parser kept one Python entry each (3 s,
    381 MB, for a file that decodes to 192 bytes). Refused in one line naming it, in bounded time
    and memory; a JPEG with EXIF, a large ICC profile and progressive scans still loads."""
    import numpy as np
    from PIL import Image

    bomb = _jpeg_of_empty_app_markers(tmp_path / "apps.jpg", 2_500_000)
    lines, cpu_s, peak_mb = _load_image_measured(bomb, 32)
    assert lines == [f"{bomb}: refused: a JPEG of more than 1,000 header segments (a camera's file has about 20); "
                     "re-encode it"], lines
    assert cpu_s < 1 and peak_mb < 300, (cpu_s, peak_mb)
    camera = tmp_path / "camera.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)).save(
        camera, exif=exif, icc_profile=bytes(range(256)) * 1000, progressive=True)
    from pyimgano_hydra.data.images import load_image

    assert load_image(camera, return_size=True)[1] == (80, 60)


def test_a_jpeg_of_millions_of_empty_app_markers_is_one_line_inrun_score_onnx(exported, tmp_path):
    bomb = _jpeg_of_empty_app_markers(tmp_path / "apps.jpg", 2_500_000)
    proc = run_score_onnx(exported, bomb, small_png(exported))
    assert proc.returncode == 2 and "apps.jpg" in proc.stderr and "header segments" in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 1


@pytest.mark.parametrize("next_frame", ["garbage", "other_size"])
def test_an_image_overwritten_after_it_was_scored_never_fails_the_whole_inference(trained, tmp_path, next_frame):
    """With defects on, each record re-opens its image by name after scoring (``read_size`` for
    the defects' original size). A line camera overwriting one file of the input folder in that
    window (seen for real: ``not an image`` written ~4 s after the start of a 24-image infer)
    failed the whole run in one line, every other image's results lost (status failed, no
    predictions.jsonl). Replayed deterministically: the file is overwritten as its batch is
    scored. The run should complete, that image scored or recorded unreadable. ``other_size``: a
    valid 300x20 frame instead: the record's defects claim original_size [20, 300] for the 48x48
    image that was scored (its regions mapped to the wrong frame: a silent wrong result)."""
    from PIL import Image

    folder = tmp_path / "line"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 48), (100 + 20 * i, 90, 80)).save(folder / f"img{i}.png")
    out = tmp_path / "out"
    code = ("import sys\n"
            "from pyimgano_hydra import inspector, infer\n"
            "scored = inspector.Inspector.score_batch\n"
            "def score_batch(self, images):\n"
            "    batch = scored(self, images)\n"
            + (f"    open({str(folder / 'img0.png')!r}, 'wb').write(b'not an image')  # the camera's next frame\n"
               if next_frame == "garbage" else
               f"    from PIL import Image; Image.new('RGB', (300, 20)).save({str(folder / 'img0.png')!r})\n") +
            "    return batch\n"
            "inspector.Inspector.score_batch = score_batch\n"
            f"sys.argv = ['infer', 'run_dir={trained}', 'input={folder}', 'hydra.run.dir={out}',\n"
            "            'defects.enabled=true', 'defects.pixel_threshold=0.5']\n"
            "infer.main()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_cli_env(), capture_output=True,
                          text=True, timeout=120)
    status = json.loads((out / "status.json").read_text())["status"]
    assert proc.returncode == 0 and status == "completed", (status, proc.stderr[-800:])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all("score" in r for r in records[1:])
    if next_frame == "other_size":
        assert records[0]["defects"]["coordinate_space"]["original_size"] == [48, 48], records[0]["defects"]


def test_a_nested_tensor_in_the_inspector_is_refused_in_one_line_naming_it(trained, tmp_path):
    """A nested tensor (layout strided, ``is_nested``) loads under ``weights_only`` and passes the
    dense-tensor check (its layout is torch.strided): infer then fails inside PatchCore with
    torch's 'Internal error: NestedTensorImpl doesn't support sizes. Please file an issue.' after
    two lines of torch's prototype UserWarning on stderr. Cosmetic: it should be refused like a
    sparse or quantized tensor, in one line naming inspector.pt, with no warning lines."""
    import torch

    run_dir = copy_run(trained, tmp_path)
    inspector = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(inspector, weights_only=True)
    bank = state["detector"]["state"]["memory_bank"]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state["detector"]["state"]["memory_bank"] = torch.nested.nested_tensor([bank[:2], bank[2:]])
    torch.save(state, inspector)
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                           f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path,
                          env=_cli_env(), capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "inspector.pt" in lines[-1], proc.stderr[-1500:]
    assert "Warning" not in proc.stderr and "Please file an issue" not in proc.stderr, proc.stderr[-1500:]


def test_held_the_console_script_in_a_run_dir_planted_with_every_stdlib_module_name_imports_none(trained, tmp_path):
    """Every name of sys.stdlib_module_names (and the main third-party ones) planted as a .py in a
    received run dir: ``pyimgano-hydra-infer run_dir=.`` started inside it imports none of them.
    (``python -m`` there runs contextlib, warnings, collections, keyword, operator, reprlib,
    functools, types and importlib from it, through runpy before any of our code: documented.)"""
    import os

    received = copy_run(trained, tmp_path, "received")
    markers = tmp_path / "markers"
    markers.mkdir()
    names = set(sys.stdlib_module_names) | {"numpy", "torch", "PIL", "cv2", "hydra", "omegaconf", "yaml",
                                            "onnxruntime", "onnx", "sklearn", "scipy", "pyod", "timm",
                                            "matplotlib", "joblib", "numba", "tqdm", "typing_extensions",
                                            "packaging", "filelock", "fsspec", "jinja2", "sympy", "networkx",
                                            "antlr4", "setuptools", "_distutils_hack", "sitecustomize",
                                            "usercustomize"}
    for name in names:
        (received / f"{name}.py").write_text(f"open({str(markers / name)!r}, 'w').close()\n")
    exe = Path(sys.executable).parent / "pyimgano-hydra-infer"
    if not exe.exists():
        pytest.skip("pyimgano-hydra-infer is not installed")
    proc = subprocess.run([str(exe), "run_dir=.", f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"],
                          cwd=received, env=_cli_env(), capture_output=True, text=True, timeout=180)
    assert not os.listdir(markers), sorted(os.listdir(markers))
    assert proc.returncode == 0, proc.stderr[-800:]
