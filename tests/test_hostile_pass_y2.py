"""Attacker pass Y2: lost or misrecorded runs (a consumer that goes away, a full disk, odd values)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY, _cli_env


def _infer_folder(trained, tmp_path, n_good=3):
    from PIL import Image

    folder = tmp_path / "line"
    folder.mkdir()
    for i in range(n_good):
        Image.new("RGB", (64, 64), (100 + i, 120, 120)).save(folder / f"good{i}.png")
    (folder / "bad0.png").write_bytes(b"")           # two unreadable files: each prints a warning
    (folder / "bad1.png").write_bytes(b"not an image")
    return folder


def _run_with_gone_reader(args, module, stderr_too, full_disk=False):
    """``python -m module args 2>&1 | head -0``: a reader of the console that has gone away
    (``full_disk``: ``>/dev/full 2>&1``, a console log on a full disk)."""
    if full_disk:
        write = os.open("/dev/full", os.O_WRONLY)
    else:
        read, write = os.pipe()
        os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_cli_env(),
                              stdout=write, stderr=write if stderr_too else subprocess.DEVNULL,
                              timeout=300)
    finally:
        os.close(write)
    return proc


@pytest.mark.parametrize("full_disk", [False, True], ids=["pipe-reader-gone", "dev-full"])
def test_infer_piped_into_head_never_loses_the_predictions_of_a_folder_with_unreadable_files(trained, tmp_path,
                                                                                              full_disk):
    """HOLE (lost-run). ``python -m pyimgano_hydra.infer run_dir=... input=<folder> 2>&1 | head -1``
    on a folder holding two unreadable files: the second per-file ``warning:`` line is printed to a
    stderr whose reader has gone (inspector.py ``print(..., file=sys.stderr)``; console.py only shields
    stdout), the BrokenPipeError fails the whole inference. Observed: rc 1, status.json ``failed``
    ("[Errno 32] Broken pipe"), no predictions.jsonl: every prediction of the good images lost.
    Expected (as with the app, and as infer does with a gone stdout): rc 0, status ``completed``,
    predictions.jsonl holding the 3 good images scored and the 2 bad ones with their error.
    The same with the console logged to a full disk (``>/dev/full 2>&1``): status ``failed``
    ("[Errno 28] No space left on device"), no predictions.jsonl."""
    folder = _infer_folder(trained, tmp_path)
    out = tmp_path / "out"
    proc = _run_with_gone_reader([f"run_dir={trained}", f"input={folder}", f"hydra.run.dir={out}"],
                                 "pyimgano_hydra.infer", stderr_too=True, full_disk=full_disk)
    status = json.loads((out / "status.json").read_text())
    assert proc.returncode == 0 and status["status"] == "completed", (proc.returncode, status)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 5, lines


def test_held_infer_piped_with_stdout_only_gone_keeps_its_predictions(trained, tmp_path):
    """HELD. The same folder, only stdout's reader gone (``| true``, stderr kept): completed, 5 predictions."""
    folder = _infer_folder(trained, tmp_path)
    out = tmp_path / "out"
    proc = _run_with_gone_reader([f"run_dir={trained}", f"input={folder}", f"hydra.run.dir={out}"],
                                 "pyimgano_hydra.infer", stderr_too=False)
    assert proc.returncode == 0
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5


def test_held_a_category_all_run_piped_into_head_completes_every_category(tmp_path):
    """HELD. ``python -m pyimgano_hydra dataset.category=all ... 2>&1 | head -0``: completed, both categories kept."""
    run = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("dataset.category")]
    proc = _run_with_gone_reader(["dataset.category=all", *args, f"hydra.run.dir={run}"], "pyimgano_hydra",
                                 stderr_too=True)
    assert proc.returncode == 0
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (run / "categories").iterdir()) == ["washer", "weave"]


def test_infer_with_its_stdout_on_a_full_disk_never_exits_failed_for_a_completed_inference(trained, tmp_path):
    """HOLE (misrecorded run). ``python -m pyimgano_hydra.infer run_dir=... input=<4 good images>
    >/dev/full`` (stdout logged to a full disk; stderr kept): the two summary lines printed after
    status.json says ``completed`` raise OSError ENOSPC (console.py's stdout proxy drops only a
    BrokenPipeError). Observed: rc 1 and "error: job [...]: OSError: [Errno 28] No space left on
    device" (naming no file), while status.json says ``completed`` and predictions.jsonl holds all
    4: a script that trusts the exit code throws the inference away. Expected: rc 0 (as the app
    does with the same stdout, and infer with a gone reader), status ``completed``, 4 predictions."""
    from PIL import Image

    folder = tmp_path / "line"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (100 + i, 120, 120)).save(folder / f"good{i}.png")
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained}",
                               f"input={folder}", f"hydra.run.dir={out}"], cwd=REPO, env=_cli_env(),
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    status = json.loads((out / "status.json").read_text())["status"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    assert proc.returncode == 0 and status == "completed", (proc.returncode, status, proc.stderr[-300:])


def test_held_a_run_with_its_stdout_on_a_full_disk_completes_with_rc_0(tmp_path):
    """HELD. ``python -m pyimgano_hydra ... >/dev/full``: rc 0, status ``completed`` (logging errors only)."""
    run = tmp_path / "run"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", *TINY, f"hydra.run.dir={run}"], cwd=REPO,
                              env=_cli_env(), stdout=full, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


def test_export_with_its_stdout_on_a_full_disk_never_exits_failed_for_a_written_export(trained, tmp_path):
    """HOLE (misrecorded, cosmetic-to-lost). ``python -m pyimgano_hydra.export run_dir=... >/dev/full``:
    model.onnx and export.json are written, then the summary line raises OSError ENOSPC. Observed:
    rc 1, "error: job ['run_dir=...']: OSError: [Errno 28] No space left on device" naming no file,
    for an export that is complete. Expected: rc 0 (what a gone stdout reader gives)."""
    from conftest import copy_run

    run_dir = copy_run(trained, tmp_path)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.export", f"run_dir={run_dir}"], cwd=REPO,
                              env=_cli_env(), stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert (run_dir / "categories" / "weave" / "artifacts" / "model.onnx").is_file()
    assert proc.returncode == 0, proc.stderr[-300:]


def test_a_disk_full_while_hydra_writes_its_dot_hydra_files_is_one_line_naming_the_file(tmp_path):
    """HOLE (cosmetic). A disk that fills while Hydra writes ``<run>/.hydra/hydra.yaml`` (simulated
    with RLIMIT_FSIZE = 4 KiB: config.yaml fits, hydra.yaml (~5 KB) does not). Observed: rc 1 and
    "error: OSError: [Errno 27] File too large", naming no file (status.json: "failed (OSError:
    [Errno 27] File too large) before it started"). Expected: the run recorded failed (it is) and
    one line naming the file that could not be written."""
    import resource

    run = tmp_path / "run"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", *TINY, f"hydra.run.dir={run}"], cwd=REPO,
                          env=_cli_env(), capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert proc.returncode != 0
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    last = proc.stderr.strip().splitlines()[-1]
    assert "hydra.yaml" in last, last
