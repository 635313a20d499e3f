"""Optuna sweeps: failed trials count against a study-wide budget; a stored study continues."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pyimgano_hydra.sweep.optuna import failure_budget

from conftest import run_cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                                reason="hydra-optuna-sweeper not installed (pip install 'pyimgano_hydra[optuna]')")
# ECOD on a few images: fast trials; the preset's PatchCore search space is replaced.
ECOD = ["hydra/sweeper=optuna_patchcore", "hydra.sweeper.params=null", "model=ecod", "dataset.category=weave",
        "dataset.limit_train=10", "dataset.limit_test=10"]


def _rows(cwd: Path) -> list[dict]:
    (root,) = sorted((cwd / "outputs" / "multirun").iterdir())
    return sorted(json.loads((root / "leaderboard.json").read_text())["jobs"], key=lambda r: r["job"])


def test_failure_budget_is_a_share_of_the_whole_study():
    assert failure_budget(0.25, 20) == 5 and failure_budget(0.5, 4) == 2
    assert failure_budget(0.0, 10) == 0 and failure_budget(1.0, 3) == 3


def test_a_failed_trial_does_not_end_the_study_until_the_budget_is_spent(tmp_path):
    # calibration_quantile=2 fails validation: about half the trials fail
    proc = run_cli(["--multirun", *ECOD, "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failure_rate=0.5",
                    "recipe.calibration_quantile=choice(0.9, 2)", "recipe.calibration_holdout=interval(0.2, 0.5)"],
                   cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    rows = _rows(tmp_path)
    failed = [r["job"] for r in rows if r["status"] == "failed"]
    assert failed and failed[0] < len(rows) - 1, "a failure before the last trial must not stop the study"
    if len(failed) > 2:  # budget: 0.5 x 4 trials
        assert proc.returncode != 0 and "max_failure_rate=0.5: 3 of 4 trials failed" in proc.stderr
        assert rows[-1]["status"] == "failed" and len(failed) == 3
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(rows) == 4


def test_a_stored_study_continues_instead_of_repeating_its_first_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["--multirun", *ECOD, "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=resume", "recipe.calibration_holdout=interval(0.2, 0.5)"]
    for attempt in ("first", "second"):
        (tmp_path / attempt).mkdir()
        proc = run_cli(args, cwd=tmp_path / attempt, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
    import optuna

    trials = optuna.load_study(study_name="resume", storage=storage).trials
    assert len(trials) == 2
    assert trials[0].params["recipe.calibration_holdout"] != trials[1].params["recipe.calibration_holdout"]
