"""Attacker pass Z5 (#16): lost / misrecorded runs in --multirun sweeps (joblib workers dying), infer
over a folder, Optuna study databases, image decoders."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import TINY, _cli_env, run_cli, told_study

# A loky worker SIGKILLs itself (an OOM kill) at its job's first status.json write, when the job's dir
# ends with Z5_KILL_AT: Hydra made the job dir (.hydra/) but the app never recorded it.
_KILL_WORKER = r'''
import os, sys, signal
_want = os.environ.get("Z5_KILL_AT", "")
def _hook(event, args):
    if _want and event == "os.rename" and len(args) >= 2 and str(args[1]).endswith("/status.json") \
            and "loky" in " ".join(sys.orig_argv):
        folder = os.path.dirname(str(args[1]))
        try:
            folder = os.readlink(folder)
        except OSError:
            pass
        if (folder + "/status.json").endswith(_want):
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(_hook)
'''


def test_a_joblib_job_whose_worker_dies_before_it_starts_is_on_the_leaderboard_with_its_real_error(tmp_path):
    """HOLE (misrecorded). ``--multirun hydra/launcher=joblib hydra.launcher.n_jobs=2`` over two jobs;
    job 1's loky worker is killed (an OOM kill) after Hydra made ``1_0.3/.hydra`` but before the app
    wrote its status.json. ``workers_may_die`` records the running job 0 failed, then the sweeper's
    ``on_multirun_end`` writes the leaderboard, and only afterwards the exit handler
    (``mark_unstarted_runs``) writes job 1's status.json ``failed ... before the job started``. So
    leaderboard.json/.md keep for job 1 the error of reading a then-missing status.json:
    ``1_0.3/status.json: not a regular file (a link, FIFO or folder?); not a run-dir file`` -- it
    blames a link/FIFO that never existed and disagrees with the job's own status.json.
    Expected: the leaderboard row of job 1 carries the worker's death (as job 0's does), not a
    file-type error."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_KILL_WORKER)
    sweep = tmp_path / "sw"
    env = _cli_env({"Z5_KILL_AT": "/sw/1_0.3/status.json"})
    env["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + str(site)
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", "--multirun", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "dataset=synthetic",
                           "dataset.resize=32", *TINY, "model.coreset_ratio=0.2,0.3"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0 and "worker process ended" in proc.stderr, proc.stderr[-800:]
    job = json.loads((sweep / "1_0.3" / "status.json").read_text())
    assert job["status"] == "failed", job
    rows = {row["job"]: row for row in json.loads((sweep / "leaderboard.json").read_text())["jobs"]}
    assert rows[1]["status"] == "failed", rows[1]
    assert "not a regular file" not in (rows[1]["error"] or ""), rows[1]
    assert "worker" in (rows[1]["error"] or ""), rows[1]


def _sweep_continuing(db, tmp_path):
    return run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sw'}",
                    "dataset=synthetic", "dataset.resize=32", *TINY], cwd=tmp_path, timeout=120)


def test_an_optuna_study_whose_trial_value_is_text_is_refused_not_reported_as_the_best(tmp_path):
    """HOLE (wrong-result). A study made by this Optuna (one told trial, value 0.5) whose
    ``trial_values.value`` was then set to the TEXT ``'abc'`` (SQLite keeps any type in a REAL
    column). The storage check passes it, the sweep runs both trials (image_auroc 1.0 each) and
    ends rc 0 with ``Best parameters: {}`` / ``Best value: abc``; optimization_results.yaml records
    ``best_params: {}`` and ``best_value: abc`` -- the study's result is the planted row, not a
    trial of this sweep (a BLOB value gives ``Best value: b'\\x00\\xff'`` alike). Expected: refused
    before the sweep, one line naming hydra.sweeper.storage, no sweep dir."""
    import sqlite3

    db = told_study(tmp_path / "d.db")
    con = sqlite3.connect(db)
    con.execute("UPDATE trial_values SET value = 'abc'")
    con.commit()
    con.close()
    proc = _sweep_continuing(db, tmp_path)
    results = tmp_path / "sw" / "optimization_results.yaml"
    assert "best_value: abc" not in (results.read_text() if results.exists() else ""), results.read_text()
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]
    assert "hydra.sweeper.storage" in proc.stderr


# ---- held -------------------------------------------------------------------------------------------

_SWAP_INPUT = r'''
import os, sys
_t = os.environ.get("Z5_SWAP", ""); _done = []
def _hook(event, args):
    if _t and not _done and event == "open" and args and str(args[0]) == _t:
        _done.append(1)
        os.unlink(_t)
        os.mkfifo(_t)
sys.addaudithook(_hook)
'''


def test_held_infer_over_a_folder_whose_file_turns_into_a_fifo_mid_run_keeps_the_other_predictions(tmp_path):
    """HELD. infer over a folder of 6 PNGs; the 4th is replaced by a FIFO just as infer opens it (after
    the listing). rc 0, status completed, predictions.jsonl keeps all 6 rows (the FIFO's with its
    error), no hang on the FIFO."""
    from PIL import Image
    import numpy as np

    run = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={run}", "dataset=synthetic", "dataset.resize=32", *TINY], cwd=tmp_path,
                   timeout=180)
    assert proc.returncode == 0, proc.stderr[-500:]
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"a{i}.png")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SWAP_INPUT)
    env = _cli_env({"Z5_SWAP": str(folder / "a3.png")})
    env["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + str(site)
    out = tmp_path / "inf"
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run}", f"input={folder}",
                           f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 6, rows


def test_held_an_optuna_study_with_planted_sqlite_stat1_rows_is_refused(tmp_path):
    """HELD. A study DB with ANALYZE rows rewritten (huge row counts, ``unordered noskipscan``, a
    garbage row): refused before the sweep, one line naming hydra.sweeper.storage and sqlite_stat1."""
    import sqlite3

    db = told_study(tmp_path / "d.db")
    con = sqlite3.connect(db)
    con.execute("ANALYZE")
    con.execute("DELETE FROM sqlite_stat1")
    for tbl, idx in con.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'").fetchall():
        con.execute("INSERT INTO sqlite_stat1 VALUES (?, ?, ?)",
                    (tbl, idx, "18446744073709551615 1 1 1 1 unordered noskipscan sz=999999999"))
    con.execute("INSERT INTO sqlite_stat1 VALUES ('trials', NULL, 'garbage x y')")
    con.commit()
    con.close()
    proc = _sweep_continuing(db, tmp_path)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]
    assert "hydra.sweeper.storage" in proc.stderr and "sqlite_stat1" in proc.stderr
    assert not (tmp_path / "sw").exists()
