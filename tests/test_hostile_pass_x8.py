"""Pass X8 (lost or misrecorded runs): valid files refused by the new decode checks, a failed
category=all run's completed categories and skips, a run killed before its status was written."""
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli
from test_hostile_pass_x6 import _folder_dataset, _mvtec  # the same tiny layouts

TESTS = Path(__file__).resolve().parent
ZSCORE = [f"hydra.searchpath=[file://{TESTS / 'conf'}]", "model=zscore"]
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


# ---- holes ------------------------------------------------------------------------------------------
def test_a_valid_large_image_stored_sparse_on_disk_loads(tmp_path):
    """A 4800x4800 uncompressed RGB BMP (65 MB; decodes to 69 MB, under max_image_megabytes=256) of a
    mostly black industrial frame, copied with ``cp --sparse=always`` / ``rsync -S`` / ``tar -S`` (or
    kept on a ZFS dataset with compression, whose st_blocks count compressed blocks): the zero runs
    take no blocks, so st_blocks*512 < st_size/2. ``files.refuse_sparse`` refuses it ("a sparse file
    (65 MB long, 1 MB on disk)"), though every byte reads back as written: a valid image refused, the
    run lost (on_bad_image=error) or the image dropped (skip). Holes read as zeros are valid data;
    only a file whose decoder would walk far past its real content should be refused."""
    from pyimgano_hydra.data.images import load_image

    frame = np.zeros((4800, 4800, 3), np.uint8)
    frame[2000:2100, 2000:2100] = 200  # the part on the belt
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "BMP")
    data = buffer.getvalue()
    path = tmp_path / "line_scan.bmp"
    with open(path, "wb") as handle:  # what cp --sparse=always writes
        for at in range(0, len(data), 1 << 16):
            block = data[at:at + (1 << 16)]
            if block.count(0) == len(block):
                handle.seek(len(block), 1)
            else:
                handle.write(block)
        handle.truncate(len(data))
    assert path.read_bytes() == data  # the same file, byte for byte
    if os.stat(path).st_blocks * 512 >= len(data) // 2:
        pytest.skip("this filesystem does not keep holes")
    image = load_image(path, resize=48)
    assert image.max() > 0


def test_infer_uses_a_completed_category_of_a_category_all_run_that_failed_in_another(tmp_path):
    """category=all over a, b (broken: empty train split), c: since X6 a and c run and are recorded
    (categories/a/report.json, inspector.pt, report.json's categories lists a and c, failed_categories
    names b, status failed). But nothing can use them: ``infer run_dir=<run> category=a`` is refused
    ("the run is failed, not completed; only completed runs can be used for inference") and a rerun
    into the dir once b is fixed is refused too ("already holds a run (failed)"): a and c must be
    trained again from scratch. One broken category still loses the others' results for use. Infer of
    a category the failed run completed (listed in its report.json) must work."""
    root = tmp_path / "data"
    for category, n_train in (("a", 4), ("b", 0), ("c", 4)):
        _mvtec(root, category, n_train)
    out = tmp_path / "run"
    proc = run_cli([*ZSCORE, "dataset=mvtec", f"dataset.root={root}", "dataset.resize=32",
                    f"hydra.run.dir={out}"], env=ENV, timeout=300)
    assert proc.returncode != 0
    report = json.loads((out / "report.json").read_text())
    assert "a" in report["categories"] and "b" in report["failed_categories"], report
    proc = run_cli([f"run_dir={out}", "category=a", f"input={root / 'a' / 'test' / 'good'}", "trust_targets=true",
                    f"hydra.run.dir={tmp_path / 'infer'}"], module="pyimgano_hydra.infer", env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    scored = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert scored["category"] == "a" and scored["n_images"] == 2, scored
    proc = run_cli([f"run_dir={out}", "category=b", f"input={root / 'a' / 'test' / 'good'}", "trust_targets=true",
                    f"hydra.run.dir={tmp_path / 'infer_b'}"], module="pyimgano_hydra.infer", env=ENV, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "category=b: failed in this run's training" in proc.stderr.strip().splitlines()[-1], proc.stderr[-400:]


def test_a_run_that_failed_as_a_whole_is_still_refused_by_infer(tmp_path):
    """Only a category=all run's completed categories are served: a failed run whose report.json has no
    failed_categories (it failed as a whole), or whose report.json lists a category both as completed and
    failed, is refused in one line."""
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.layout import SCHEMA_VERSION
    from pyimgano_hydra.runs.load import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"status": "failed"}))
    report = {"schema_version": SCHEMA_VERSION, "status": "failed", "categories": {"a": {"inspector": None}}}
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(UserError, match="the run is failed, not completed"):
        load_run(run)
    (run / "report.json").write_text(json.dumps({**report, "failed_categories": {"a": "boom"}}))
    with pytest.raises(UserError, match="listed as both completed and failed"):
        load_run(run)
    (run / "report.json").write_text(json.dumps({**report, "failed_categories": {"b": "boom"}}))
    loaded = load_run(run)
    assert list(loaded.inspectors) == ["a"] and loaded.failed == ["b"]


def test_a_run_killed_before_its_status_was_written_can_be_rerun_in_its_dir(tmp_path):
    """A run SIGKILLed (OOM killer, a node lost, a scancel without grace) after the claim and Hydra's
    .hydra/ but before app.run wrote status.json (observed by killing when .hydra/ appears: the dir
    holds .claim.json, .hydra/, pyimgano_hydra.log). The requeued/rerun job with the same command is
    refused forever ("already holds a run or sweep (it has .claim.json)"), and a sweep's leaderboard
    shows that job as running (no status.json). The state is made here from a finished run by removing
    what app.run writes after the claim. An unfinished run of this config whose claimer is gone must
    be taken over like an interrupted one (or at least the dir recorded as not running)."""
    root = _folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = [*ZSCORE, "dataset=folder", f"dataset.root={root}", "dataset.resize=32", f"hydra.run.dir={out}"]
    proc = run_cli(args, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    for entry in out.iterdir():  # back to the moment before status.json: claim, .hydra/, log
        if entry.name not in (".claim.json", ".hydra", "pyimgano_hydra.log"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    claim = json.loads((out / ".claim.json").read_text())
    claim["pid"] = 2 ** 22 + 12345  # no such process
    (out / ".claim.json").write_text(json.dumps(claim))
    proc = run_cli(args, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("change", ["another config", "a live owner"])
def test_a_claim_without_status_is_taken_over_only_from_a_dead_owner_of_the_same_config(tmp_path, change):
    """The claim-only dir of another config, or one whose claimer still runs (it is about to write its
    status), is refused and left as it was: no status.json is made for it."""
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.claim import claim_dir

    out = tmp_path / "run"
    assert claim_dir(out, "hash-a")
    claim = json.loads((out / ".claim.json").read_text())
    assert claim["config_hash"] == "hash-a" and claim["pid"] == os.getpid()
    if change == "another config":
        claim["pid"] = 2 ** 22 + 12345  # gone
    (out / ".claim.json").write_text(json.dumps(claim))
    with pytest.raises(UserError, match="already holds a run or sweep"):
        claim_dir(out, "hash-b" if change == "another config" else "hash-a")
    assert not (out / "status.json").exists()
    if change == "another config":
        assert not claim_dir(out, "hash-a")  # the same config takes it over
        assert json.loads((out / "status.json").read_text())["status"] == "interrupted"


def test_a_failed_category_all_run_still_records_the_images_its_completed_categories_skipped(tmp_path):
    """category=all over a (one junk test image), b (broken: empty train split), c with
    dataset.on_bad_image=skip: a completes without its junk image (categories/a/report.json counts 3
    test images of 4), the run ends failed. Its report.json keeps a's entry under ``categories`` but
    has no ``skipped_images`` (a completed run's report lists it): a's metrics were computed without
    a file and no record says which (only the log). The failed run's report.json must list the images
    its completed categories skipped."""
    root = tmp_path / "data"
    for category, n_train in (("a", 4), ("b", 0), ("c", 4)):
        _mvtec(root, category, n_train)
    junk = root / "a" / "test" / "good" / "001.png"
    junk.write_bytes(b"junk")
    out = tmp_path / "run"
    proc = run_cli([*ZSCORE, "dataset=mvtec", f"dataset.root={root}", "dataset.resize=32",
                    "dataset.on_bad_image=skip", f"hydra.run.dir={out}"], env=ENV, timeout=300)
    assert proc.returncode != 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "a" in report["categories"], report
    assert json.loads((out / "categories" / "a" / "report.json").read_text())["counts"]["test"] == 3
    assert str(junk) in [s["path"] for s in report.get("skipped_images") or []], sorted(report)


def test_a_run_dir_given_as_a_link_to_an_empty_folder_runs_or_is_refused_before_the_claim(tmp_path):
    """``hydra.run.dir=runs/r42`` where runs/r42 -> /scratch/empty (a link a user made to put a run on
    a big disk): the claim accepts it (a link to an existing empty dir; the claim keeps a link as given)
    and writes .claim.json, .hydra/, the log through it; then the app fails at once: rc 2, status.json
    and report.json "failed" with "<link> was moved or replaced by a link while the run ran" though
    nothing moved. The run is lost and its record says something that did not happen. Expected: the
    run completes through the link, or the claim refuses it in one line naming hydra.run.dir before
    writing anything there."""
    root = _folder_dataset(tmp_path / "data")
    target = tmp_path / "scratch" / "empty"
    target.mkdir(parents=True)
    link = tmp_path / "r42"
    link.symlink_to(target)
    proc = run_cli([*ZSCORE, "dataset=folder", f"dataset.root={root}", "dataset.resize=32",
                    f"hydra.run.dir={link}"], env=ENV, timeout=300)
    last = proc.stderr.strip().splitlines()[-1:]
    if proc.returncode == 0:
        assert json.loads((target / "status.json").read_text())["status"] == "completed"
    else:
        assert "hydra.run.dir" in last[0] and "while the run ran" not in last[0], last
        assert not (target / "status.json").exists() and not (target / ".claim.json").exists(), last


# ---- attacks that held ------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _adam7_png_16(gray: np.ndarray, idat_size: int) -> bytes:
    raw = b""
    for x0, y0, dx, dy in _ADAM7:
        sub = gray[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.astype(">u2").tobytes() for row in sub)
    data = zlib.compress(raw)
    head = struct.pack(">IIBBBBB", gray.shape[1], gray.shape[0], 16, 0, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + _chunk(b"IDAT", b"")
            + b"".join(_chunk(b"IDAT", data[i:i + idat_size]) for i in range(0, len(data), idat_size))
            + _chunk(b"IEND", b""))


def test_held_valid_files_of_unusual_encoders_load_as_pillow_reads_them(tmp_path):
    """Valid files the new completeness checks could refuse: Adam7 16-bit gray PNGs of odd sizes in
    1-byte IDATs after an empty one, OpenCV PNG/JPEG/TIFF with odd options, Pillow progressive CMYK
    and grayscale JPEGs, restart markers, 4:1:1."""
    import cv2

    from pyimgano_hydra.data.images import load_image

    rng = np.random.default_rng(3)
    for h, w in ((1, 1), (3, 2), (9, 5)):
        gray = rng.integers(0, 65536, (h, w))
        path = tmp_path / f"adam7_{h}x{w}.png"
        path.write_bytes(_adam7_png_16(gray, 1))
        assert load_image(path, input_mode="gray")[:, :, 0].tolist() == \
            ((gray + 128) // 257).astype(np.uint8).tolist()
    yy, xx = np.mgrid[0:67, 0:53]
    rgb = np.stack([(xx * 4) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)
    cv_files = {"rst_prog.jpg": [cv2.IMWRITE_JPEG_RST_INTERVAL, 3, cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
                "opt.jpg": [cv2.IMWRITE_JPEG_OPTIMIZE, 1],
                "s411.jpg": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411],
                "rle.png": [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE],
                "sixteen.tif": [], "none.tif": [cv2.IMWRITE_TIFF_COMPRESSION, 1]}
    for name, params in cv_files.items():
        arr = rgb.astype(np.uint16) * 257 if name == "sixteen.tif" else rgb
        assert cv2.imwrite(str(tmp_path / name), arr, params)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk_prog.jpg", progressive=True)
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray_prog.jpg", progressive=True, optimize=True)
    Image.fromarray(rgb).save(tmp_path / "rows.jpg", restart_marker_rows=1, progressive=True)
    Image.fromarray(rgb).save(tmp_path / "strips.tif", compression="tiff_lzw", strip_size=53 * 3)
    Image.fromarray(rgb).save(tmp_path / "packbits.tif", compression="packbits")
    for name in [*cv_files, "cmyk_prog.jpg", "gray_prog.jpg", "rows.jpg", "strips.tif", "packbits.tif"]:
        image = load_image(tmp_path / name)
        assert image.shape == (67, 53, 3), name
        assert abs(float(image.mean()) - float(rgb[:, :, 0].mean() if "gray" in name else rgb.mean())) < 6, name


def test_held_a_mask_turned_to_junk_mid_run_is_skipped_and_counted_once(tmp_path):
    """on_bad_image=skip, ground_truth/scratch/1_mask.png replaced by junk after the listing: the run
    completes, its image is listed under skipped_images (naming the mask), and counts.test equals
    per_image.jsonl's lines and n_normal + n_anomalous."""
    root = _folder_dataset(tmp_path / "data")
    mask = root / "ground_truth" / "scratch" / "1_mask.png"
    code = tmp_path / "code"
    code.mkdir()
    (code / "x8fakes.py").write_text(
        "import os\nfrom pathlib import Path\nfrom fakes import PixelZScore\n\n"
        "class Junking(PixelZScore):\n    def fit(self, images):\n"
        "        Path(os.environ['X8_JUNK']).write_bytes(b'junk')\n        return super().fit(images)\n")
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "junking.yaml").write_text("_target_: x8fakes.Junking\neps: 1.0\n")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), str(code)]), "X8_JUNK": str(mask)}
    out = tmp_path / "run"
    proc = run_cli([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=junking", "dataset=folder",
                    f"dataset.root={root}", "dataset.resize=32", "dataset.on_bad_image=skip",
                    f"hydra.run.dir={out}"], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    report = json.loads((out / "report.json").read_text())
    assert [Path(s["path"]).name for s in report["skipped_images"]] == ["1.png"]
    assert "1_mask.png" in report["skipped_images"][0]["reason"]
    category = json.loads((out / "categories" / "custom" / "report.json").read_text())
    lines = (out / "categories" / "custom" / "per_image.jsonl").read_text().splitlines()
    assert category["counts"]["test"] == len(lines) == 5
    assert category["metrics"]["n_normal"] + category["metrics"]["n_anomalous"] == 5


def test_held_a_sweep_board_shows_a_failed_category_all_job_as_failed_without_metrics(tmp_path):
    """--multirun dataset.category=all,a where all's category b is broken: the board ranks job a,
    shows job all as failed with b's error line and no metric (never a's partial mean)."""
    root = tmp_path / "data"
    for category, n_train in (("a", 4), ("b", 0), ("c", 4)):
        _mvtec(root, category, n_train)
    sweep = tmp_path / "sweep"
    run_cli([*ZSCORE, "dataset=mvtec", f"dataset.root={root}", "dataset.resize=32", "dataset.category=all,a",
             f"hydra.sweep.dir={sweep}", "--multirun"], env=ENV, timeout=300)
    board = json.loads((sweep / "leaderboard.json").read_text())
    rows = {row["overrides"][-1]: row for row in board["jobs"]}
    assert rows["dataset.category=a"]["status"] == "completed"
    failed = rows["dataset.category=all"]
    assert failed["status"] == "failed" and "b/train" in failed["error"], failed
    assert failed["rank"] is None and not failed["aggregate"] and not failed["categories"], failed
    assert "| failed | – |" in (sweep / "leaderboard.md").read_text()
