"""Sweeps: job-dir names, the leaderboard a user reads after ``--multirun``, launchers, failures."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pyimgano_hydra.runs.status import COMPLETED, FAILED, RUNNING, write_status
from pyimgano_hydra.runs.writers import write_json_atomic
from pyimgano_hydra.sweep.leaderboard import NOT_STARTED, collect, write_leaderboard
from pyimgano_hydra.sweep.naming import job_name, varying_keys, write_sweep_file

from conftest import REPO, run_cli

# Small, fast jobs on the embedded synthetic dataset (real detectors, real CLI).
DATA = ["dataset.limit_train=10", "dataset.limit_test=10"]


# ---- naming ------------------------------------------------------------------------------
def test_job_name_keeps_only_varying_values_file_safe():
    overrides = ["model=padim", "tiling=tile128", "dataset.limit_train=12", "dataset.root=/data/my set"]
    assert job_name(3, overrides, ["model", "tiling"]) == "3_padim_tile128"
    assert job_name(0, overrides, ["dataset.root"]) == "0_data-my-set"
    assert job_name(7, overrides, []) == "7"


def test_job_names_stay_short_and_distinct():
    a = job_name(1, ["dataset.root=" + "x" * 300 + "a"], None)
    b = job_name(1, ["dataset.root=" + "x" * 300 + "b"], None)
    assert a != b and len(a) <= 96
    assert job_name(2, ["model.coreset_ratio=0.16915591613892417"], None) == "2_0.1692"


def test_varying_keys_from_sweep_overrides_and_sweeper_params():
    cfg = OmegaConf.create({"hydra": {"overrides": {"task": ["model=patchcore,padim", "seed=1",
                                                             "tiling=none,tile128"]},
                                      "sweeper": {"params": {"model.coreset_ratio": "interval(0.01, 0.3)"}}}})
    assert varying_keys(cfg) == ["model", "tiling", "model.coreset_ratio"]


# ---- leaderboard from run dirs ---------------------------------------------------------
def _fake_job(root: Path, name: str, status: str, auroc: float | None = None, error: str | None = None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml([f"model={name.split('_')[1]}", "seed=0"]))
    write_status(job / "status.json", status, error=error)
    if auroc is not None:
        write_json_atomic(job / "report.json", {
            "status": COMPLETED,
            "aggregate": {"image_auroc": {"mean": auroc, "std": 0.0, "n": 1}},
            "categories": {"weave": {"metrics": {"image_auroc": auroc}}},
            "timings": {"fit_s": 1.0, "predict_s": 2.0, "total_s": 3.5},
        })
    return job


def test_only_completed_run_dirs_are_results(tmp_path):
    write_sweep_file(tmp_path, OmegaConf.create({"hydra": {"overrides": {"task": ["model=a,b,c,d", "seed=0"]}}}),
                     extra={"planned": [["model=a"], ["model=b"], ["model=c"], ["model=d"]]})
    _fake_job(tmp_path, "0_a", COMPLETED, 0.8)
    _fake_job(tmp_path, "1_b", COMPLETED, 0.9)
    # a report.json with metrics but status.json still 'running' (a job killed mid-write)
    _fake_job(tmp_path, "2_c", RUNNING, 0.99)
    board = write_leaderboard(tmp_path, "image_auroc", chart=False)
    rows = {r["job"]: r for r in board["jobs"]}
    assert [r["job"] for r in board["jobs"][:2]] == [1, 0]  # ranked by the metric
    assert rows[1]["rank"] == 1 and rows[0]["rank"] == 2
    assert rows[2]["status"] == RUNNING and rows[2]["aggregate"] == {} and rows[2]["rank"] is None
    assert rows[3]["status"] == NOT_STARTED and rows[3]["varying"] == {"model": "d"}
    assert rows[1]["varying"] == {"model": "b"} and rows[1]["timings"]["test_s"] == 2.0
    assert board["best"] == "1_b"


def test_failed_job_row_carries_its_error_line(tmp_path):
    _fake_job(tmp_path, "0_a", FAILED, error="model.coreset_ratio: must be in (0, 1]")
    _fake_job(tmp_path, "1_b", COMPLETED, 0.7)
    write_leaderboard(tmp_path, "image_auroc", chart=False)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    failed = [r for r in rows if r["status"] == FAILED]
    assert len(failed) == 1 and failed[0]["error"] == "model.coreset_ratio: must be in (0, 1]"
    assert failed[0]["image_auroc"] == ""
    md = (tmp_path / "leaderboard.md").read_text()
    assert "model.coreset_ratio: must be in (0, 1]" in md


def test_leaderboard_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_text(tmp_path):
    """A handed-over dataset's category folder named ``=HYPERLINK(...)`` and a failed job's error
    starting with ``@``: in leaderboard.csv they start with an apostrophe (shown as text, never
    evaluated); numbers, negative ones included, stay numbers."""
    job = _fake_job(tmp_path, "0_a", COMPLETED, 0.8)
    report = json.loads((job / "report.json").read_text())
    report["categories"] = {'=HYPERLINK("http://x","y")': {"metrics": {"image_auroc": 0.8, "pixel_aupro": -0.0}}}
    write_json_atomic(job / "report.json", report)
    _fake_job(tmp_path, "1_b", FAILED, error="@SUM(1+1)*cmd|' /C calc'!A0")
    write_leaderboard(tmp_path, "image_auroc", chart=False)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    cells = header + [cell for row in rows for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "@")], cells
    assert """'=HYPERLINK("http://x","y")/image_auroc""" in header
    assert "'@SUM(1+1)*cmd|' /C calc'!A0" in [cell for row in rows for cell in row]
    assert "0.8" in rows[0]


def _job_config(tmp_path: Path, job: str, sweeper: str = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"):
    return OmegaConf.create({"hydra": {"mode": "MULTIRUN", "sweep": {"dir": str(tmp_path)}, "sweeper": {"_target_": sweeper},
                                       "runtime": {"output_dir": str(tmp_path / job), "cwd": str(tmp_path)}}})


def test_a_job_that_died_before_writing_status_is_recorded_as_failed(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from pyimgano_hydra.sweep.callbacks import LeaderboardCallback

    (tmp_path / "0_a" / ".hydra").mkdir(parents=True)
    (tmp_path / "0_a" / ".hydra" / "overrides.yaml").write_text("- model=a\n")
    ret = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("cannot import detector\ntraceback..."))
    LeaderboardCallback(chart=False).on_job_end(_job_config(tmp_path, "0_a"), ret)
    (row,) = json.loads((tmp_path / "leaderboard.json").read_text())["jobs"]
    assert row["status"] == FAILED and row["error"] == "RuntimeError: cannot import detector"


def test_optuna_gets_the_metric_as_the_job_return_value(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from pyimgano_hydra.sweep.callbacks import LeaderboardCallback

    _fake_job(tmp_path, "0_a", COMPLETED, 0.75)
    report = json.loads((tmp_path / "0_a" / "report.json").read_text())
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=report)
    cfg = _job_config(tmp_path, "0_a", sweeper="hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    LeaderboardCallback(metric="image_auroc", chart=False).on_job_end(cfg, ret)
    assert ret.return_value == 0.75


def test_the_chart_is_redrawn_at_most_every_chart_every_s_and_always_at_the_end(tmp_path):
    from pyimgano_hydra.sweep.callbacks import LeaderboardCallback

    _fake_job(tmp_path, "0_a", COMPLETED, 0.75)
    board = LeaderboardCallback(chart_every_s=3600)
    board.write(tmp_path)
    chart = tmp_path / "leaderboard.png"
    assert chart.is_file()
    chart.unlink()
    _fake_job(tmp_path, "1_b", COMPLETED, 0.8)
    board.write(tmp_path)  # a job ending within the hour: tables, no chart
    assert not chart.is_file() and len(_board(tmp_path)["jobs"]) == 2
    board.write(tmp_path, final=True)  # the sweep's end
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the default sweeper ----------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["model=patchcore,padim", "tiling=none,tile128", "seed=3"],
    ["seed=1,2", "model=ecod", "seed=5,6,7"],  # a key given twice: first place, last values
    ["dataset.category=a,b", "hydra.sweeper.params={}", "+x=choice(1,2)"],
    ["seed=range(0,3)", "tag='a,b'"],
])
def test_default_sweeper_plans_the_jobs_hydras_basic_sweeper_runs(args):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pyimgano_hydra.sweep.compose import job_overrides

    (hydras,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    assert job_overrides(args) == hydras


class _CountingLoader:
    """Hydra's config loader's ``load_sweep_config``, counting the composes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.calls.append(list(sweep_overrides))
        return OmegaConf.create({"o": list(sweep_overrides)})


def test_a_job_config_composed_by_the_batch_check_is_handed_out_once():
    import pickle

    from hydra.core.config_loader import ConfigLoader

    from pyimgano_hydra.sweep.compose import ComposedOnce

    inner = _CountingLoader()
    loader = ComposedOnce(inner)  # type: ignore[arg-type]
    assert isinstance(loader, ConfigLoader)
    master = OmegaConf.create({})
    loader.check(master, ["model=a"])
    loader.check(master, ["model=b"])
    first = loader.load_sweep_config(master, ["model=a"])
    assert first.o == ["model=a"] and len(inner.calls) == 2  # the launcher's compose was the check's
    loader.load_sweep_config(master, ["model=a"])  # handed out once: a second ask composes again
    assert len(inner.calls) == 3
    capped = ComposedOnce(inner, keep_at_most=1)  # type: ignore[arg-type]
    capped.check(master, ["model=a"])
    capped.check(master, ["model=b"])
    capped.load_sweep_config(master, ["model=b"])  # past the cap: composed again
    assert inner.calls[-1] == ["model=b"] and len(inner.calls) == 6
    assert pickle.loads(pickle.dumps(loader)).loader.calls == inner.calls
    loader.check(master, ["model=c"])
    assert pickle.loads(pickle.dumps(loader))._kept == {}  # a pickling launcher ships no kept configs


@pytest.mark.parametrize("size", [0, -2])
def test_a_bad_max_batch_size_names_the_key(size):
    from hydra.errors import HydraException

    from pyimgano_hydra.sweep.compose import batches

    with pytest.raises(HydraException, match=r"^hydra.sweeper.max_batch_size: "):
        batches([["seed=1"], ["seed=2"]], size)
    assert batches([["seed=1"], ["seed=2"], ["seed=3"]], 2) == [[["seed=1"], ["seed=2"]], [["seed=3"]]]


def test_a_bad_value_in_a_sweep_fails_before_any_job_runs(tmp_path):
    proc = run_cli(["--multirun", "model=ecod,nosuch", *DATA, "dataset.category=weave"], cwd=tmp_path)
    assert proc.returncode != 0 and "model/nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr
    (root,) = _sweep_roots(tmp_path)
    assert not [p for p in root.iterdir() if p.is_dir()]  # no job dir: ecod did not run first


# ---- the real CLI ------------------------------------------------------------------------
def _sweep_roots(cwd: Path) -> list[Path]:
    return sorted((cwd / "outputs" / "multirun").iterdir())


def _board(root: Path) -> dict:
    return json.loads((root / "leaderboard.json").read_text())


def test_joblib_2x2_sweep_writes_four_run_dirs_and_a_leaderboard(tmp_path):
    proc = run_cli(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *DATA,
                    "model=patchcore,ecod", "dataset.category=weave,washer"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root,) = _sweep_roots(tmp_path)
    expected = {"0_patchcore_weave", "1_patchcore_washer", "2_ecod_weave", "3_ecod_washer"}
    assert {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} == expected
    for name in expected:
        assert json.loads((root / name / "status.json").read_text())["status"] == COMPLETED
        assert (root / name / "report.json").is_file()
    board = _board(root)
    assert {r["name"] for r in board["jobs"]} == expected
    assert all(r["status"] == COMPLETED for r in board["jobs"])
    values = [r["aggregate"]["image_auroc"]["mean"] for r in board["jobs"]]
    assert values == sorted(values, reverse=True)
    for row in board["jobs"]:
        category = row["varying"]["dataset.category"]
        assert set(row["categories"]) == {category} and row["categories"][category]["image_auroc"] is not None
        # pixel metrics where the detector makes anomaly maps (PatchCore), none for PyOD
        assert ("pixel_auroc" in row["aggregate"]) == (row["varying"]["model"] == "patchcore")
        assert row["timings"]["fit_s"] > 0 and row["timings"]["test_s"] > 0
    with open(root / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {"weave/image_auroc", "washer/pixel_aupro", "fit_s", "test_s"} <= set(rows[0])
    assert (root / "leaderboard.md").read_text().count("| completed |") == 4
    assert (root / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


HAS_SUBMITIT = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": pytest.param(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
                                   marks=pytest.mark.skipif(not HAS_SUBMITIT, reason="hydra-submitit-launcher not "
                                                            "installed (pip install 'pyimgano_hydra[slurm]')")),
}


@pytest.mark.parametrize("launcher", LAUNCHERS.values(), ids=LAUNCHERS.keys())
def test_a_failed_job_is_a_row_others_are_kept_and_the_exit_code_is_nonzero(tmp_path, launcher):
    proc = run_cli(["--multirun", *launcher, "model=ecod", *DATA, "dataset.category=weave",
                    "recipe.calibration_quantile=0.9,2"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    (root,) = _sweep_roots(tmp_path)
    rows = {r["job"]: r for r in _board(root)["jobs"]}
    assert rows[1]["status"] == FAILED and rows[1]["name"] == "1_2"
    assert rows[1]["error"].startswith("recipe.calibration_quantile")
    assert rows[0]["status"] == COMPLETED and rows[0]["aggregate"]["image_auroc"]["mean"] is not None
    assert "leaderboard (1 completed, 1 failed)" in proc.stdout + proc.stderr  # the end-of-sweep board
    kept = root / rows[0]["name"]
    for artifact in ("report.json", "config.json", "environment.json", "categories/weave/per_image.jsonl"):
        assert (kept / artifact).is_file(), artifact


def test_two_sweeps_started_together_get_separate_roots(tmp_path):
    args = ["--multirun", "model=ecod", *DATA, "dataset.category=weave", "recipe.calibration_quantile=2,3"]
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert all(p.wait(timeout=300) != 0 for p in procs)  # every job fails fast: nothing is loaded
    roots = _sweep_roots(tmp_path)
    assert len(roots) == 2
    for root in roots:
        assert sorted(r["name"] for r in _board(root)["jobs"]) == ["0_2", "1_3"]


@pytest.mark.skipif(not HAS_SUBMITIT, reason="hydra-submitit-launcher not installed (pip install 'pyimgano_hydra[slurm]')")
def test_submitit_local_launcher_runs_jobs_and_fills_the_leaderboard(tmp_path):
    proc = run_cli(["--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "model=ecod",
                    *DATA, "dataset.category=weave", "recipe.calibration_quantile=0.9,0.99"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root,) = _sweep_roots(tmp_path)
    board = _board(root)
    assert sorted(r["name"] for r in board["jobs"]) == ["0_0.9", "1_0.99"]
    assert all(r["status"] == COMPLETED for r in board["jobs"])


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="hydra-optuna-sweeper not installed (pip install 'pyimgano_hydra[optuna]')")
def test_optuna_preset_optimises_the_leaderboard_metric(tmp_path):
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=2", "model=patchcore",
                    *DATA, "dataset.category=washer", "hydra.callbacks.leaderboard.metric=pixel_aupro"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root,) = _sweep_roots(tmp_path)
    board = _board(root)
    assert board["metric"] == "pixel_aupro" and len(board["jobs"]) == 2
    best = OmegaConf.load(root / "optimization_results.yaml")
    assert best.best_value == pytest.approx(board["jobs"][0]["aggregate"]["pixel_aupro"]["mean"])
    assert set(board["varying"]) == {"model.coreset_ratio", "model.num_neighbors", "model.smoothing_sigma"}


def test_resolvers_are_registered_in_one_module():
    import pyimgano_hydra
    from pyimgano_hydra.resolvers import register_resolvers

    register_resolvers()
    register_resolvers()  # idempotent
    for name in ("pyimgano_job_dir", "pyimgano_pid", "pyimgano_groups"):
        assert OmegaConf.has_resolver(name)
    pkg = Path(pyimgano_hydra.__file__).parent
    registering = sorted(p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")
                         if "register_new_resolver(" in p.read_text(encoding="utf-8"))
    assert registering == ["resolvers.py"]


def test_no_private_hydra_imports():
    import re

    import pyimgano_hydra

    root = Path(pyimgano_hydra.__file__).parent.parent
    private = re.compile(r"^\s*(from|import)\s+hydra\._internal", re.M)
    offenders = [str(p.relative_to(root)) for d in ("pyimgano_hydra", "hydra_plugins")
                 for p in (root / d).rglob("*.py") if private.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
