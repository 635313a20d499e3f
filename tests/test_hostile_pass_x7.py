"""Attacker pass X7: code execution from handed-over files (child processes, pickles, stores)."""
import os
import pickle
import sqlite3

import pytest

from conftest import TINY, run_cli


def _handed_optuna_db(tmp_path, marker, name="optuna.db"):
    """A study 'patchcore' whose one trial is RUNNING and carries nothing pickled (the check before
    the sweep passes), plus a SQLite trigger stored in the file: when the sweep inserts its first
    trial, the trigger completes the old trial and gives it a ``cma:optimizer`` system attr."""
    optuna = pytest.importorskip("optuna")
    from optuna.distributions import UniformDistribution

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    db = tmp_path / "handed" / name
    db.parent.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="patchcore", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"model.coreset_ratio": 0.2, "model.smoothing_sigma": 4.0},
        distributions={"model.coreset_ratio": UniformDistribution(0.01, 0.3),
                       "model.smoothing_sigma": UniformDistribution(0.0, 8.0)},
        state=optuna.trial.TrialState.RUNNING))
    con = sqlite3.connect(db)
    con.executescript(f"""
    CREATE TRIGGER planted AFTER INSERT ON trials WHEN NEW.trial_id > 1 BEGIN
     UPDATE trials SET state='COMPLETE', datetime_complete=datetime('now') WHERE trial_id=1;
     INSERT INTO trial_values(trial_id, objective, value) VALUES (1, 0, 0.9);
     INSERT INTO trial_system_attributes(trial_id, key, value_json)
       VALUES (1, 'cma:optimizer', '"{pickle.dumps(Touch()).hex()}"');
     INSERT INTO trial_system_attributes(trial_id, key, value_json) VALUES (1, 'cma:n_restarts', '0');
    END;""")
    con.commit()
    con.close()
    return db


def test_handed_optuna_db_with_a_sqlite_trigger_is_refused(tmp_path):
    """HELD (refused in claim.py's _check_study_database). Variant of pass O2's CMA-ES check: the handed ``optuna.db`` holds no pickled state when
    ``continue_study`` looks, but a SQLite TRIGGER stored in the file (``AFTER INSERT ON trials``)
    adds ``cma:optimizer`` = hex of a pickle to an old trial (and marks it COMPLETE) as soon as the
    sweep asks its first trial; Optuna's ``CmaEsSampler._restore_optimizer`` then
    ``pickle.loads`` it inside ``study.ask()``. Observed: marker written, then rc 1 "study
    'patchcore' cannot be continued ('int' object has no attribute 'dim')". Expected: no marker
    (e.g. a storage holding triggers/views - ``sqlite_master`` type trigger - is refused in one line
    naming it, or CMA-ES never continues a handed-over storage)."""
    marker = tmp_path / "MARKER"
    db = _handed_optuna_db(tmp_path, marker)
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                    f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_trials=2",
                    'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)",'
                    'model.smoothing_sigma:"interval(0.0,8.0)"}', *TINY[:3],
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])


def test_handed_optuna_db_whose_name_holds_a_percent_sign_is_checked_too(tmp_path):
    """The same handed database (a SQLite trigger that plants ``cma:optimizer`` = a pickle once the
    sweep inserts a trial) under a file name holding ``%`` (``study_100%.db``, as it was handed
    over). ``claim._check_sweep_files`` cuts every path at its first ``%`` (submitit's ``%j``) also
    for ``hydra.sweeper.storage``: it looks for ``handed/study_100``, finds nothing and skips the
    database check (trigger, views, rows), while SQLAlchemy opens ``study_100%.db`` itself.
    Observed: marker written, then rc 1 "study 'patchcore' cannot be continued ('int' object has no
    attribute 'dim')". Expected: no marker; rc != 0 with one line naming the storage (it holds a
    trigger), as for ``optuna.db``."""
    marker = tmp_path / "MARKER"
    db = _handed_optuna_db(tmp_path, marker, name="study_100%.db")
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                    f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_trials=2",
                    'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)",'
                    'model.smoothing_sigma:"interval(0.0,8.0)"}', *TINY[:3],
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])
    # refused for its trigger, or (since pass X9) for a spelling other than sqlite:///<path>
    assert proc.returncode != 0 and ("trigger" in proc.stderr or "name the study file plainly" in proc.stderr), \
        proc.stderr[-300:]


def test_handed_optuna_db_with_a_hot_journal_hiding_a_trigger_is_refused(tmp_path):
    """HELD. ``optuna.db`` as handed over holds no trigger, but a hot ``optuna.db-journal`` beside
    it (a transaction that dropped the trigger, cut off after its pages reached the file) puts the
    trigger back when the first writer opens the file (SQLite rolls a hot journal back). The check
    opens the file read-only: SQLite refuses a hot journal there ("attempt to write a readonly
    database"), so the storage is refused in one line, never opened by Optuna."""
    import subprocess
    import sys

    marker = tmp_path / "MARKER"
    db = _handed_optuna_db(tmp_path, marker)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE junk(x)")
    con.commit()
    con.close()
    code = ("import sqlite3, os, sys\ncon = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "con.execute('PRAGMA cache_size=2')\ncon.execute('BEGIN IMMEDIATE')\ncon.execute('DROP TRIGGER planted')\n"
            "for i in range(300): con.execute('INSERT INTO junk VALUES (?)', ('x' * 2000,))\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    assert (db.parent / "optuna.db-journal").exists()
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                    f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_trials=2",
                    'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)",'
                    'model.smoothing_sigma:"interval(0.0,8.0)"}', *TINY[:3],
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr, proc.stderr[-300:]
