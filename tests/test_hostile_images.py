"""Hostile image files and names: refused in one line naming the file, or recorded losslessly."""
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli, traced_peak
from pyimgano_hydra.data.images import load_image
from pyimgano_hydra.errors import DataError
from pyimgano_hydra.runs.writers import read_json, read_jsonl

TESTS = Path(__file__).resolve().parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
ODD = b"odd_\xff\xfe.png"  # not valid UTF-8; Linux allows any bytes but / and NUL


def _png_header_only(path: Path, width: int, height: int, bit_depth: int = 16) -> None:
    """A PNG whose header claims ``width`` x ``height`` gray pixels (tiny file, no real data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/normal (6), test/normal (3), test/scratch (3): 64x64 noise."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train/normal", 6), ("test/normal", 3), ("test/scratch", 3)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    return root


def _run(root: Path, out: Path, *extra: str):
    return run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={root}", "dataset.resize=64",
                    *extra, f"hydra.run.dir={out}"], env=ENV)


def _one_error_line(proc, name: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0], proc.stderr


def test_huge_image_header_is_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    _png_header_only(big, 13000, 13000)
    with pytest.raises(DataError, match="big.png.*max_image_megabytes"):
        load_image(big, 64)


def test_huge_image_in_train_split_fails_the_run_in_one_line(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    _png_header_only(root / "train" / "normal" / "bomb.png", 13000, 13000)
    _one_error_line(_run(root, tmp_path / "run"), "bomb.png")


def test_decode_limit_is_one_config_key(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)  # 64x64x3 = 0.012 MB each
    _one_error_line(_run(root, tmp_path / "run", "dataset.max_image_megabytes=0.01"), "0.png")


@pytest.mark.parametrize("name,array,mode", [
    ("nan.tif", np.full((64, 64), np.nan, np.float32), "F"),
    ("inf.tif", np.full((64, 64), np.inf, np.float32), "F"),
    ("negative.tif", np.full((64, 64), -5, np.int32), "I"),
    ("negative_float.tif", np.full((64, 64), -0.5, np.float32), "F"),
    ("int32_max.tif", np.full((64, 64), 2**31 - 1, np.int32), "I"),
])
def test_unmappable_pixel_data_is_refused_not_loaded_black(name, array, mode, tmp_path):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    with pytest.raises(DataError, match=name):
        load_image(path, 64)


def test_nan_tiff_in_test_split_fails_the_run_in_one_line(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    Image.fromarray(np.full((64, 64), np.nan, np.float32), mode="F").save(root / "test" / "scratch" / "nan.tif")
    _one_error_line(_run(root, tmp_path / "run"), "nan.tif")


def test_undecodable_name_in_test_split_completes_and_is_recorded(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    os.rename(root / "test" / "scratch" / "0.png", os.path.join(os.fsencode(root / "test" / "scratch"), ODD))
    out = tmp_path / "run"
    proc = _run(root, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (per_image,) = out.glob("categories/*/per_image.jsonl")
    assert ODD in {os.path.basename(os.fsencode(r["path"])) for r in read_jsonl(per_image)}


def test_undecodable_name_of_a_skipped_file_is_logged_without_error(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    with open(os.path.join(os.fsencode(root / "train" / "normal"), ODD), "wb") as handle:
        handle.write(b"not an image")
    out = tmp_path / "run"
    proc = _run(root, out, "dataset.on_bad_image=skip")
    assert proc.returncode == 0 and "Logging error" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    skipped = read_json(out / "report.json")["skipped_images"]
    assert [os.path.basename(os.fsencode(s["path"])) for s in skipped] == [ODD]


def test_undecodable_name_in_infer_input_folder_is_scored(folder, tmp_path):
    run_dir = tmp_path / "run"
    assert _run(folder, run_dir).returncode == 0
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "test" / "scratch", inputs)
    os.rename(inputs / "0.png", os.path.join(os.fsencode(inputs), ODD))
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={inputs}", "trust_targets=true", "save_maps=true",
                    f"hydra.run.dir={out}"], module="pyimgano_hydra.infer", env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {os.path.basename(os.fsencode(r["path"])) for r in read_jsonl(out / "predictions.jsonl")}
    assert names == {ODD, b"1.png", b"2.png"}


def _corrupt(kind: str) -> bytes:
    """Files on which Pillow raises what is not an OSError (a fourth pass: each one failed the
    whole inference, every prediction lost, with a raw error naming no file)."""
    import io

    arr = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    if kind == "exif":  # ImageWidth typed ASCII beside an orientation: exif_transpose's re-pack -> struct.error
        exif = Image.Exif()
        exif[0x010F], exif[0x0112] = "cam", 6
        Image.fromarray(arr).save(buffer, "JPEG", exif=exif.tobytes().replace(b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02"))
        return buffer.getvalue()
    Image.fromarray(arr).save(buffer, "TIFF")  # StripOffsets typed FLOAT -> TypeError in a seek
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        if struct.unpack_from("<H", data, ifd + 2 + 12 * k)[0] == 0x0111:
            struct.pack_into("<H", data, ifd + 4 + 12 * k, 11)
    return bytes(data)


@pytest.mark.parametrize("kind", ["exif", "tiff"])
def test_a_corrupt_file_pillow_chokes_on_is_a_data_error_naming_it(tmp_path, kind):
    path = tmp_path / f"bad.{kind}"
    path.write_bytes(_corrupt(kind))
    with pytest.raises(DataError, match=rf"^{path}: cannot decode image \((error|TypeError): "):
        load_image(path, 64)


@pytest.mark.parametrize("payload", [b"truncated", "exif", "tiff"])
def test_one_unreadable_image_in_infer_input_is_an_error_record_not_a_failed_run(folder, tmp_path, payload):
    run_dir = tmp_path / "run"
    assert _run(folder, run_dir).returncode == 0
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "test" / "scratch", inputs)
    (inputs / "1.png").write_bytes(payload if isinstance(payload, bytes) else _corrupt(payload))
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={inputs}", "trust_targets=true", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1.png" in warnings[0], proc.stderr
    records = {Path(r["path"]).name: r for r in read_jsonl(out / "predictions.jsonl")}
    assert "1.png" in records["1.png"]["error"] and "score" not in records["1.png"]
    assert {"score", "pred_label"} <= set(records["0.png"]) and {"score", "pred_label"} <= set(records["2.png"])
    assert read_json(out / "summary.json")["n_unreadable"] == 1


@pytest.mark.parametrize("name,payload", [
    # EPS makes Pillow run Ghostscript on the file: a PostScript program disguised as a PNG
    ("eps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
    ("ico.png", "ICO"), ("tga.png", "TGA"),
])
def test_a_file_content_cannot_pick_an_unlisted_decoder(tmp_path, name, payload):
    path = tmp_path / name
    if isinstance(payload, str):
        Image.new("RGB", (32, 32)).save(path, format=payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(DataError, match=f"{name}: cannot decode image .cannot identify image file"):
        load_image(path, 64)


@pytest.mark.parametrize("mode,fmt", [("LA", "TIFF"), ("LAB", "TIFF"), ("CMYK", "JPEG"), ("P", "GIF")])
def test_odd_modes_and_a_gif_named_png_load_as_rgb(tmp_path, mode, fmt):
    path = tmp_path / "odd.png"
    Image.new(mode, (32, 32)).save(path, format=fmt)
    assert load_image(path, 64).shape == (64, 64, 3)


def test_undecodable_defect_type_folder_completes_with_its_plots(folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    os.rename(root / "test" / "scratch", os.path.join(os.fsencode(root / "test"), b"scr\xffatch"))
    out = tmp_path / "run"
    proc = _run(root, out)  # failed drawing the per-defect-type bar label
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(out / "status.json")["status"] == "completed"
    assert list(out.glob("categories/*/plots/defect_types.png"))


def test_undecodable_category_folder_completes(folder, tmp_path):
    root = tmp_path / "data"
    category = os.path.join(os.fsencode(root), b"c\xffat")
    os.makedirs(category)
    for split in ("train", "test"):
        shutil.copytree(folder / split, Path(os.fsdecode(category)) / split)
    out = tmp_path / "run"
    proc = _run(root, out, "dataset.category=all")  # failed seeding the split, then writing report.html
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(out / "status.json")["status"] == "completed"
    assert os.fsencode(next(iter(read_json(out / "report.json")["categories"]))) == b"c\xffat"
    assert b"c\xffat" in (out / "report.html").read_bytes()


def test_category_names_equal_after_sanitising_keep_their_own_results(folder, tmp_path):
    """A third attacker's pass: ``a b`` and ``a_b`` shared categories/a_b; the second category
    overwrote the first one's inspector, per-image records and report."""
    root = tmp_path / "data"
    for category in ("a b", "a_b"):
        shutil.copytree(folder, root / category)
    out = tmp_path / "run"
    proc = _run(root, out, "dataset.category=all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    categories = read_json(out / "report.json")["categories"]
    inspectors = {name: entry["inspector"] for name, entry in categories.items()}
    assert len(set(inspectors.values())) == 2, inspectors
    from pyimgano_hydra.api import load_inspector

    for name in ("a b", "a_b"):
        assert load_inspector(out, name, trust_targets=True).category == name


def test_categories_that_would_still_share_a_folder_are_refused():
    from pyimgano_hydra.runs.layout import RunDir, category_dir_name

    crafted = category_dir_name("a b")  # a folder literally named like the other's
    with pytest.raises(DataError, match=f"categories 'a b' and '{crafted}' would share the folder"):
        RunDir(Path("run")).check_categories(["a b", crafted])
    RunDir(Path("run")).check_categories(["a b", "a_b", "\ud800"])  # a lone surrogate from a JSON file too
    assert len(category_dir_name("c" * 250 + " ")) == 109 and category_dir_name("c" * 100) == "c" * 100


@pytest.mark.parametrize("mode,dtype,value", [("I;16", np.uint16, 40000), ("F", np.float32, 0.25), ("I", np.int32, 300)])
def test_decoding_a_deep_image_stays_near_what_the_limit_counts(tmp_path, mode, dtype, value):
    """A third pass: an 11000x11000 16-bit PNG of 235 KB, under max_image_megabytes (242 of 256
    MB), took 3.1 GB through float64 copies; the arrays made now stay under 4x the counted bytes."""
    path = tmp_path / "deep.tif"
    image = Image.fromarray(np.full((1500, 1500), value, dtype))
    assert image.mode == mode
    image.save(path)
    counted = 1500 * 1500 * (2 if mode == "I;16" else 4)
    out, peak = traced_peak(lambda: load_image(path, 64))
    expected = {"I;16": round(40000 / 257), "F": round(0.25 * 255), "I": round(300 / 257)}[mode]
    assert out.shape == (64, 64, 3) and (out == expected).all()
    assert peak < 4 * counted, f"{peak / 1e6:.0f} MB of arrays for {counted / 1e6:.0f} MB counted"


def test_a_250_byte_image_name_is_scored_with_its_map(folder, tmp_path):
    """A third pass: the map file '000000_<250 x>.npy' got a longer temp name than the file
    system allows; the whole inference failed with a raw 'OSError: File name too long'."""
    run_dir = tmp_path / "run"
    assert _run(folder, run_dir).returncode == 0
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "test" / "scratch", inputs)
    long_name = "x" * 250 + ".png"
    os.rename(inputs / "0.png", inputs / long_name)
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={inputs}", "trust_targets=true", "save_maps=true",
                    f"hydra.run.dir={out}"], module="pyimgano_hydra.infer", env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {Path(r["path"]).name: r for r in read_jsonl(out / "predictions.jsonl")}
    assert (out / records[long_name]["anomaly_map"]["path"]).is_file()


def test_a_250_byte_anomalous_image_name_with_masks_is_one_line(folder, tmp_path):
    """A third pass: looking up '<250 bytes>_mask.png' raised 'OSError: File name too long' and
    failed the run after reading the split; now it is the usual missing-mask line."""
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "ground_truth" / "scratch" / f"{i}_mask.png")
    long_stem = "y" * 250
    os.rename(root / "test" / "scratch" / "0.png", root / "test" / "scratch" / f"{long_stem}.png")
    proc = _run(root, tmp_path / "run")
    _one_error_line(proc, f"{long_stem}.png: anomalous image has no ground-truth mask")


def _progressive_jpeg_header_only(path: Path, width: int, height: int) -> None:
    """A 16x16 progressive JPEG whose SOF2 header claims ``width`` x ``height`` (about 1 KB)."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
        buffer, "JPEG", progressive=True, quality=90, subsampling=0)
    data = bytearray(buffer.getvalue())
    struct.pack_into(">HH", data, data.find(b"\xff\xc2") + 5, height, width)
    path.write_bytes(bytes(data))


def test_a_progressive_jpeg_is_counted_at_full_size_not_at_its_draft(tmp_path):
    """A fourth pass: a 1 KB progressive 13370x13370 JPEG passed the limit at its 1/8 draft
    (8 MB) and took 1.1 GB: libjpeg keeps every DCT coefficient of the full image."""
    bomb = tmp_path / "bomb.jpg"
    _progressive_jpeg_header_only(bomb, 13370, 13370)
    assert bomb.stat().st_size < 4096
    with pytest.raises(DataError, match=r"bomb.jpg: refused: 13370x13370 RGB holds 1073 MB, over "
                                        r"dataset.max_image_megabytes=256"):
        load_image(bomb, 64)
    rng = np.random.default_rng(1)
    for progressive in (False, True):  # ordinary camera-sized JPEGs still load
        ok = tmp_path / f"ok{progressive}.jpg"
        Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)).save(ok, progressive=progressive)
        assert load_image(ok, 64).shape == (64, 64, 3)


def test_one_odd_sized_image_in_infer_input_of_a_native_size_run_keeps_the_others(folder, tmp_path):
    """A fourth pass: with a run that keeps native sizes (dataset.resize=null), one image of
    another size in the batch failed the whole inference (raw 'all input arrays must have the
    same shape', every prediction lost)."""
    run_dir = tmp_path / "run"
    proc = _run(folder, run_dir, "dataset.resize=null")
    assert proc.returncode == 0, proc.stderr[-2000:]
    inputs = tmp_path / "inputs"
    shutil.copytree(folder / "test" / "scratch", inputs)
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(inputs / "1b_small.png")
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={inputs}", "trust_targets=true", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", env=ENV)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    records = {Path(r["path"]).name: r for r in read_jsonl(out / "predictions.jsonl")}
    assert set(records) == {"0.png", "1.png", "1b_small.png", "2.png"}
    assert all("score" in records[name] for name in ("0.png", "1.png", "2.png"))
    small = records["1b_small.png"]
    assert "score" in small or "1b_small.png" in small["error"]


def test_an_unreadable_file_with_control_characters_in_its_name_warns_in_one_line(tmp_path, capsys):
    """A fourth pass: an input named 'a\\nb\\x1b[31m.png' split the warning over two lines and
    coloured the console; the record keeps the exact name."""
    from pyimgano_hydra.data.loader import stack_images
    from pyimgano_hydra.inspector import _decodable

    bad = tmp_path / "a\nb\x1b[31m.png"
    bad.write_bytes(b"truncated")
    unreadable: list = []
    assert _decodable([{"index": 0, "path": str(bad)}], lambda c: stack_images([i["path"] for i in c], 32, return_sizes=True),
                      unreadable) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and r"a\nb\x1b[31m.png" in err
    assert str(bad) in unreadable[0]["error"]


def test_a_recursive_input_glob_never_follows_symlinked_folders(tmp_path):
    """Pass D: input='<dir>/**/*.png' over a folder holding two links to itself walked 2^40 paths:
    the inference never ended (a folder input was fine: rglob does not follow links)."""
    import subprocess
    import sys

    images = tmp_path / "line"
    images.mkdir()
    for name in ("a.png", "b.png", ".hidden.png"):
        (images / name).write_bytes(b"x")
    (images / "loop").symlink_to(".")
    (images / "loop2").symlink_to(images)
    code = ("import sys; from pyimgano_hydra.infer import collect_inputs; "
            "print(sorted(p.name for p in collect_inputs(sys.argv[1])), sorted(p.name for p in collect_inputs(sys.argv[2])))")
    proc = subprocess.run([sys.executable, "-c", code, f"{images}/**/*.png", f"{images}/**"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['a.png',", "'b.png']", "['a.png',", "'b.png']"]


@pytest.mark.parametrize("shape", [(64, 64, 30_000_000), (20_000, 20_000)])
def test_a_npy_mask_declaring_more_than_an_image_may_take_is_refused_from_its_header(tmp_path, shape):
    """Pass E: a sparse mask.npy of shape (64, 64, 3e7) matched its 64x64 image's size and was
    loaded whole: MemoryError (114 GiB) ended the run, on_bad_image=skip or not."""
    from numpy.lib import format as npy_format

    from pyimgano_hydra.data.images import load_mask, mask_size

    path = tmp_path / "mask.npy"
    with open(path, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = handle.tell()
    os.truncate(path, offset + int(np.prod(shape, dtype=object)))
    for check in (mask_size, load_mask):
        with pytest.raises(DataError, match=r"mask\.npy: refused: "):
            check(path)
