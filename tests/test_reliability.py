"""Interrupted and failed runs are marked as such; same config and seed give the same scores."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from pyimgano_hydra.runs.writers import read_json, read_jsonl

TESTS = Path(__file__).resolve().parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"
FAST = ["dataset.category=weave", "dataset.limit_train=10", "dataset.limit_test=8"]
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


def test_sigterm_marks_run_interrupted_and_infer_refuses_it(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, **ENV)
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", SEARCH, "model=sleepy", *FAST,
                             f"hydra.run.dir={out}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "config.json").exists():
        time.sleep(0.2)
    assert (out / "config.json").exists(), "run never started"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    status = read_json(out / "status.json")
    assert status["status"] == "interrupted"
    assert not (out / "report.json").exists() or read_json(out / "report.json")["status"] != "completed"
    infer = run_cli([f"run_dir={out}", f"input={tmp_path}", f"hydra.run.dir={tmp_path / 'inf'}"],
                    module="pyimgano_hydra.infer", env=ENV)
    assert infer.returncode != 0 and "interrupted, not completed" in infer.stderr


def test_failed_run_records_the_error_line(tmp_path):
    out = tmp_path / "run"
    proc = run_cli([SEARCH, "model=broken", *FAST, f"hydra.run.dir={out}"], env=ENV)
    assert proc.returncode != 0
    status = read_json(out / "status.json")
    assert status["status"] == "failed" and status["error"] == "detector exploded"
    assert read_json(out / "report.json")["status"] == "failed"


def test_same_config_and_seed_give_identical_scores(tmp_path):
    scores = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = run_cli([*FAST, "model.coreset_ratio=0.2", f"hydra.run.dir={out}"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        scores.append([r["score"] for r in read_jsonl(out / "categories" / "weave" / "per_image.jsonl")])
        metrics = read_json(out / "report.json")["aggregate"]
    assert scores[0] == scores[1]


def test_failed_job_in_a_sweep_is_one_line_and_nonzero(tmp_path):
    proc = run_cli(["--multirun", SEARCH, "model=zscore,broken", *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}"], env=ENV)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "detector exploded" in errors[0]
