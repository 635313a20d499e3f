"""Cluster jobs: a requeued job finishes its own run dir; nothing else is ever overwritten."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyimgano_hydra import app
from pyimgano_hydra.api import compose_config
from pyimgano_hydra.errors import UserError
from pyimgano_hydra.runs.layout import RunDir
from pyimgano_hydra.runs.status import COMPLETED, INTERRUPTED, RUNNING, write_status
from pyimgano_hydra.runs.writers import read_json

from conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TWO_CATEGORIES = ["model=ecod", "dataset.category=all", "dataset.limit_train=10", "dataset.limit_test=10"]
HAS_SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed two-category run (washer, weave) and its config."""
    cfg = compose_config(TWO_CATEGORIES)
    out = tmp_path_factory.mktemp("runs") / "done"
    app.run(cfg, out)
    return cfg, out


def _unfinished_copy(finished, tmp_path: Path, state: str, **owner) -> tuple[RunDir, dict]:
    """The finished run as an attempt that stopped after ``washer`` (weave half-written)."""
    import shutil

    cfg, out = finished
    run_dir = RunDir(tmp_path / "job")
    shutil.copytree(out, run_dir.root)
    run_dir.report.unlink()
    run_dir.category("weave").report.unlink()
    write_status(run_dir.status, state, config_hash=app.config_hash(cfg), **owner)
    return run_dir, cfg


def test_an_interrupted_run_resumes_keeping_finished_categories(finished, tmp_path):
    run_dir, cfg = _unfinished_copy(finished, tmp_path, INTERRUPTED)
    washer = run_dir.category("washer").report
    before = (washer.read_bytes(), washer.stat().st_mtime_ns)
    report = app.run(cfg, run_dir.root)
    assert report["status"] == COMPLETED and report["resumed_categories"] == ["washer"]
    assert (washer.read_bytes(), washer.stat().st_mtime_ns) == before  # not redone
    assert read_json(run_dir.category("weave").report)["category"] == "weave"  # redone
    assert set(read_json(run_dir.report)["categories"]) == {"washer", "weave"}
    assert read_json(run_dir.status)["status"] == COMPLETED
    expected = read_json(finished[1] / "report.json")["aggregate"]["image_auroc"]["mean"]
    assert report["aggregate"]["image_auroc"]["mean"] == pytest.approx(expected)


def test_a_running_dir_whose_process_died_is_taken_over(finished, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    run_dir, cfg = _unfinished_copy(finished, tmp_path, RUNNING, host=socket.gethostname(), pid=dead.pid)
    assert app.run(cfg, run_dir.root)["resumed_categories"] == ["washer"]


def test_a_running_dir_owned_by_a_live_process_is_refused(finished, tmp_path):
    import socket

    run_dir, cfg = _unfinished_copy(finished, tmp_path, RUNNING, host=socket.gethostname(), pid=os.getpid())
    with pytest.raises(UserError, match="being written by another process"):
        app.run(cfg, run_dir.root)
    assert not run_dir.report.exists()


def test_another_config_or_a_finished_run_is_never_touched(finished, tmp_path):
    run_dir, _ = _unfinished_copy(finished, tmp_path, INTERRUPTED)
    other = compose_config([*TWO_CATEGORIES, "recipe.calibration_quantile=0.9"])
    with pytest.raises(UserError, match="another config"):
        app.run(other, run_dir.root)
    cfg, out = finished
    before = (out / "report.json").read_bytes()
    with pytest.raises(UserError, match=r"already holds a run \(completed\)"):
        app.run(cfg, out)
    assert (out / "report.json").read_bytes() == before


@pytest.mark.skipif(not HAS_SUBMITIT, reason="hydra-submitit-launcher not installed (pip install 'pyimgano_hydra[slurm]')")
def test_a_preempted_submitit_job_is_requeued_and_completes(tmp_path):
    """submitit's local executor, preempted (USR2) after the first category: the requeued
    attempt takes its job dir over, keeps that category and completes the run."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", "--multirun", "hydra/launcher=submitit_local",
                             "hydra.launcher.timeout_min=10", "model=patchcore", "dataset.category=all",
                             "dataset.limit_train=30", "dataset.limit_test=30", "recipe.calibration_quantile=0.99"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    washer = None
    deadline = time.monotonic() + 600
    while washer is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        found = list(tmp_path.glob("outputs/multirun/*/*/categories/washer/report.json"))
        washer = found[0] if found else None
    assert washer is not None, "the job never finished its first category"
    run_dir = RunDir(washer.parents[2])
    first_attempt = read_json(run_dir.status)
    assert first_attempt["status"] == RUNNING and first_attempt["job_id"]
    os.kill(first_attempt["pid"], signal.SIGUSR2)  # what SLURM sends before preempting
    before = washer.stat().st_mtime_ns
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    report = read_json(run_dir.report)
    assert report["status"] == COMPLETED and report["resumed_categories"][0] == "washer"
    assert set(report["categories"]) == {"washer", "weave"}
    assert washer.stat().st_mtime_ns == before
    status = read_json(run_dir.status)
    assert status["status"] == COMPLETED
    logs = "".join(p.read_text() for p in run_dir.root.parent.glob(".submitit/*/*_log.out"))
    assert "Requeued job" in logs
    board = json.loads((run_dir.root.parent / "leaderboard.json").read_text())
    assert [r["status"] for r in board["jobs"]] == [COMPLETED]


@pytest.mark.skipif(not HAS_SUBMITIT, reason="hydra-submitit-launcher not installed (pip install 'pyimgano_hydra[slurm]')")
@pytest.mark.parametrize("preset", ["slurm_cpu", "slurm_gpu"])
def test_slurm_presets_render_a_requeueable_sbatch_script(tmp_path, preset):
    """No cluster here: a stand-in ``sbatch`` keeps the script submitit renders, then refuses it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho "sbatch: error: no cluster" >&2\nexit 1\n')
    fake.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it before submitting
    (bin_dir / "srun").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    from conftest import run_cli

    proc = run_cli(["--multirun", f"hydra/launcher={preset}", "hydra.launcher.partition=gpu",
                    "model=ecod", "seed=1,2"], cwd=tmp_path, env=env)
    assert proc.returncode != 0
    script = (tmp_path / "job.sh").read_text()
    assert "#SBATCH --job-name=pyimgano_hydra" in script
    assert "#SBATCH --signal=USR2@120" in script  # submitit requeues on it; the job resumes
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --array=0-1%" in script
    assert "#SBATCH --cpus-per-task=8" in script and "export OMP_NUM_THREADS=8" in script
    assert ("#SBATCH --gpus-per-node=1" in script) == (preset == "slurm_gpu")
    assert "#SBATCH --time=" in script and "#SBATCH --mem=" in script


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason="hydra-ray-launcher not installed (pip install 'pyimgano_hydra[ray]')")
def test_ray_local_sweep_with_a_failed_job_fills_the_leaderboard(tmp_path):
    from conftest import run_cli

    proc = run_cli(["--multirun", "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2", "model=ecod",
                    "dataset.category=weave", "dataset.limit_train=10", "dataset.limit_test=10",
                    "recipe.calibration_quantile=0.9,2"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0  # one job failed
    (root,) = sorted((tmp_path / "outputs" / "multirun").iterdir())
    rows = {r["name"]: r for r in json.loads((root / "leaderboard.json").read_text())["jobs"]}
    assert rows["0_0.9"]["status"] == COMPLETED and rows["0_0.9"]["aggregate"]["image_auroc"]["mean"] is not None
    assert rows["1_2"]["status"] == "failed" and rows["1_2"]["error"].startswith("recipe.calibration_quantile")


def test_rerunning_an_interrupted_run_dir_from_the_cli_finishes_it(finished, tmp_path):
    from conftest import run_cli

    run_dir, _ = _unfinished_copy(finished, tmp_path, INTERRUPTED)
    proc = run_cli([*TWO_CATEGORIES, f"hydra.run.dir={run_dir.root}"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(run_dir.report)["resumed_categories"] == ["washer"]
    other = run_cli([*TWO_CATEGORIES, "seed=3", f"hydra.run.dir={run_dir.root}"], cwd=tmp_path)
    assert other.returncode != 0 and "already holds a run" in other.stderr  # now completed


@pytest.mark.parametrize("link", ["categories", "categories/weave"])
def test_a_resumed_run_never_deletes_through_a_symlink(finished, tmp_path, link):
    import shutil

    run_dir, cfg = _unfinished_copy(finished, tmp_path, INTERRUPTED)
    outside = tmp_path / "outside"
    shutil.move(run_dir.root / link, outside)
    (run_dir.root / link).symlink_to(outside, target_is_directory=True)
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    with pytest.raises(UserError, match="a symlink in an unfinished run dir") as caught:
        app.run(cfg, run_dir.root)
    assert "\n" not in str(caught.value) and str(run_dir.root / link) in str(caught.value)
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before
