"""Pass V2 (lab side): numeric config keys, hostile dataset folders, output dirs and sweeps of the
training app, variants not in the earlier passes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, run_cli


def _padim_tiny():
    return [a for a in TINY if not a.startswith("model.")] + ["model=padim"]


def test_a_huge_global_weight_is_one_line_naming_the_key(tmp_path):
    """model.global_weight=1e308 passes the schema (only >= 0 is checked), the whole fit runs, then
    log(distance) x 1e308 overflows: numpy RuntimeWarnings and a ValueError that names no key
    ('Input contains infinity ...') fail the run after its work is done."""
    run_dir = tmp_path / "run"
    proc = run_cli([*_padim_tiny(), "model.global_weight=1e308", f"hydra.run.dir={run_dir}"], timeout=300)
    assert proc.returncode != 0
    assert "RuntimeWarning" not in proc.stderr, proc.stderr[-1500:]
    assert "model.global_weight" in proc.stderr, proc.stderr[-1500:]


def _folder_dataset(root: Path, n_train: int = 8, n_good: int = 4, n_bad: int = 4, side: int = 64) -> Path:
    """train/normal, test/normal, test/scratch of small noisy PNGs (the scratch a bright square)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub, n in (("train/normal", n_train), ("test/normal", n_good), ("test/scratch", n_bad)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = (rng.random((side, side, 3)) * 60 + 100).astype(np.uint8)
            if "scratch" in sub:
                arr[20:30, 20:30] = 255
            Image.fromarray(arr).save(root / sub / f"{i:03d}.png")
    return root


def _folder_args(root: Path, run_dir: Path) -> list:
    return ["dataset=folder", f"dataset.root={root}", "dataset.resize=64", "model=padim",
            f"hydra.run.dir={run_dir}"]


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_a_mask_drawn_in_its_alpha_channel_is_never_read_as_empty(tmp_path, mode):
    """Masks whose defect is only in the alpha channel (colour 0 everywhere, alpha 255 on the
    defect: what an annotation tool's transparent layer exports) load as all-normal: alpha is
    dropped. The run completes with pixel metrics silently missing (no note either), where an
    L mask of the same region gives px_AUROC 0.99."""
    import numpy as np
    from PIL import Image

    root = _folder_dataset(tmp_path / "custom")
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(4):
        arr = np.zeros((64, 64, len(mode)), np.uint8)
        arr[20:30, 20:30, -1] = 255
        Image.fromarray(arr, mode).save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    run_dir = tmp_path / "run"
    proc = run_cli(_folder_args(root, run_dir), timeout=300)
    if proc.returncode != 0:  # refused: in one line naming a mask file
        assert "_mask.png" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    aggregate = json.loads((run_dir / "report.json").read_text())["aggregate"]
    assert "pixel_auroc" in aggregate, "alpha-channel masks were read as empty: no pixel metrics, no note"


def test_a_test_good_folder_of_the_simple_folder_layout_is_never_scored_as_defects(tmp_path):
    """The simple folder layout names its normal test images test/normal; a received dataset in
    MVTec's spelling (test/good beside test/normal) has its good images counted as a defect type
    'good': 8 anomalous instead of 4, AUROC computed against wrong labels, no note. Either they
    count as normal or the run says, in one line naming test/good, that the folder is taken as a
    defect type."""
    import shutil

    root = _folder_dataset(tmp_path / "custom")
    shutil.copytree(root / "test" / "normal", root / "test" / "good")
    run_dir = tmp_path / "run"
    proc = run_cli(_folder_args(root, run_dir), timeout=300)
    if proc.returncode != 0:
        assert "good" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    if "test/good" in proc.stdout + proc.stderr:  # a note naming it is enough
        return
    aggregate = json.loads((run_dir / "report.json").read_text())["aggregate"]
    assert aggregate["n_anomalous"]["mean"] == 4, "test/good images scored as anomalies, silently"


def _peak_rss_gb_of(args, tmp_path, timeout=300):
    """Run the app in a child of a fresh python that reports the child's peak RSS (GB)."""
    import subprocess
    import sys

    from conftest import _cli_env

    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.run([sys.executable, '-m', 'pyimgano_hydra', *sys.argv[1:]], capture_output=True, text=True)\n"
             "sys.stderr.write(p.stderr)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)\n"
             "sys.exit(p.returncode)\n")
    proc = subprocess.run([sys.executable, "-c", probe, *args], env=_cli_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)
    return proc, float(proc.stdout.strip().splitlines()[-1])


def test_a_resize_past_the_backbone_limit_is_refused_before_the_images_are_loaded(tmp_path):
    """dataset.resize=8192 passes the schema (16..8192) and the backbone's 2048x2048 limit is checked
    only when features are extracted, after the whole train split was decoded and upscaled to
    8192x8192 (201 MB an image): eight 64x64 PNGs took 3.8 GB before the one-line refusal; the
    synthetic dataset's 40 train images would take 8 GB. The refusal needs only the config."""
    root = _folder_dataset(tmp_path / "custom")
    args = [a for a in _folder_args(root, tmp_path / "run") if not a.startswith("dataset.resize")]
    proc, peak_gb = _peak_rss_gb_of([*args, "dataset.resize=8192"], tmp_path)
    assert proc.returncode == 2 and "dataset.resize" in proc.stderr, proc.stderr[-1500:]
    assert peak_gb < 2.0, f"{peak_gb:.1f} GB before refusing dataset.resize=8192"


def _descendants(pid: int) -> list:
    import subprocess

    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_joblib_sweep_never_starts_more_workers_than_it_has_jobs(tmp_path):
    """hydra.launcher.n_jobs is taken as given: a 2-job sweep with n_jobs=64 started 73 processes
    (4.5 GB resident in all) for two jobs; n_jobs=1000 would start a thousand. Either the workers are
    capped by the jobs (or the CPUs), or the value is refused in one line naming the key."""
    import time

    from conftest import start_cli

    root = _folder_dataset(tmp_path / "custom")
    args = [a for a in _folder_args(root, tmp_path / "unused") if not a.startswith("hydra.run.dir")]
    proc = start_cli(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=64", *args, "seed=1,2",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    most = 0
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        most = max(most, len(_descendants(proc.pid)))
        time.sleep(0.2)
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        assert "hydra.launcher.n_jobs" in err and "Traceback" not in err, err[-1500:]
        return
    assert most <= 8, f"{most} processes for a sweep of 2 jobs"


def test_a_misspelled_leaderboard_metric_is_named_before_an_optuna_study_spends_its_trials(tmp_path):
    """hydra.callbacks.leaderboard.metric=image_aurroc (a typo) is taken as given: a basic sweep runs
    every job and ends 'best: none'; an Optuna study records each completed job as a failed trial
    ('trial failed (objective nan)') until max_failure_rate stops it, with a FailureBudgetExceeded that
    never names the metric. The key should be refused, in one line naming it, before any job."""
    root = _folder_dataset(tmp_path / "custom")
    args = [a for a in _folder_args(root, tmp_path / "unused") if not a.startswith(("hydra.run.dir", "model="))]
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=2",
                    "hydra.callbacks.leaderboard.metric=image_aurroc", *args, "model=patchcore",
                    f"hydra.sweep.dir={sweep}"], timeout=300)
    assert proc.returncode != 0
    assert "hydra.callbacks.leaderboard.metric" in proc.stderr, proc.stderr[-1500:]
    assert not list(sweep.glob("0_*")), "a job ran before the unknown metric was named"


# ---- attacks that held (they pass now) ----------------------------------------------------------

def _tiff_with_jpeg_strip(path: Path, jpeg: bytes, side: int) -> Path:
    """A gray TIFF (compression 7, JPEG) whose one strip is ``jpeg``, a whole JPEG stream."""
    import struct

    entries = sorted([(256, 3, side), (257, 3, side), (258, 3, 8), (259, 3, 7), (262, 3, 1), (273, 4, 8),
                      (277, 3, 1), (278, 3, side), (279, 4, len(jpeg))])
    out = b"II*\x00" + struct.pack("<I", 8 + len(jpeg)) + jpeg + struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        out += struct.pack("<HHIHH", tag, typ, 1, value, 0) if typ == 3 else struct.pack("<HHII", tag, typ, 1, value)
    path.write_bytes(out + struct.pack("<I", 0))
    return path


def test_held_a_tiff_whose_jpeg_strip_repeats_a_scan_thousands_of_times_is_one_line(tmp_path):
    """The many-scans JPEG of pass V1 wrapped as a TIFF's JPEG strip (format TIFF, so the JPEG
    scan count never looks at it): libtiff stops at 100 scans itself; the run fails fast in one line."""
    import io
    import re
    import time

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((4000, 4000), 128, np.uint8)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = [m.start() for m in re.finditer(b"\xff\xda", data)][-1]
    scan = data[last:data.rfind(b"\xff\xd9")]
    root = _folder_dataset(tmp_path / "custom")
    bomb = _tiff_with_jpeg_strip(root / "train" / "normal" / "bomb.tif", data[:last] + scan * 10_000 + b"\xff\xd9",
                                 4000)
    started = time.monotonic()
    proc = run_cli(_folder_args(root, tmp_path / "run"), timeout=120)
    assert time.monotonic() - started < 60
    assert proc.returncode == 2 and str(bomb) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]


def test_held_a_category_spelled_as_a_path_is_refused(tmp_path):
    root = _folder_dataset(tmp_path / "multi" / "a")
    for i, category in enumerate(("..", "../multi/a", str(root), "[a,../multi/a]")):
        run_dir = tmp_path / f"run{i}"
        proc = run_cli(["dataset=folder", f"dataset.root={root.parent}", f"dataset.category={category}",
                        "dataset.resize=64", "model=padim", f"hydra.run.dir={run_dir}"], timeout=120)
        assert proc.returncode == 2 and "dataset.category" in proc.stderr, (category, proc.stderr[-800:])
        assert not (run_dir / "categories").exists()


def test_a_huge_padim_eps_never_completes_with_every_score_zero(tmp_path):
    """model.eps is checked only > 0: with eps=1e60 every Mahalanobis distance underflows float32,
    every score is 0, threshold 0, image AUROC 0.5 on a dataset the default eps separates perfectly,
    and the run is recorded completed with no note. Refuse the value naming model.eps (or keep scores)."""
    root = _folder_dataset(tmp_path / "custom")
    run_dir = tmp_path / "run"
    proc = run_cli([*_folder_args(root, run_dir), "model.eps=1e60"], timeout=300)
    if proc.returncode != 0:
        assert "model.eps" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    record = json.loads((run_dir / "report.json").read_text())
    assert record["aggregate"]["image_auroc"]["mean"] > 0.9, "every score 0, recorded as a completed run"
