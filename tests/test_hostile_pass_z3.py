"""Attacker pass Z3 (#16): code execution and writes outside the run dir, end to end through the
user-facing commands (env_set values, Optuna study sidecar files, received sweep folders)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import TINY, run_cli


def _done_run(tmp_path: Path) -> Path:
    done = tmp_path / "done"
    done.mkdir()
    (done / "status.json").write_text(json.dumps({"status": "completed"}))
    return done


# ---- holes ------------------------------------------------------------------------------------------

def test_a_presets_env_set_value_spelled_by_interpolation_never_points_git_trace_into_a_run(tmp_path):
    """HOLE (lost-run). ``_check_env_set`` checks each ``hydra.job.env_set`` value as written
    (``resolve=False``): ``GIT_TRACE=/abs/done/status.json`` is refused, but the same path spelled
    ``${hydra:runtime.cwd}/done/status.json`` (any interpolation) passes. Hydra sets the resolved
    value inside the job; the job then runs ``git -C <checkout> rev-parse HEAD`` (``runs.environment.git_sha``,
    whenever the package runs from a git checkout, e.g. ``pip install -e``), and git appends its trace
    line to the completed run's status.json (rc 0): that run is no longer JSON. Reproducer, from a
    folder holding the completed run ``done/``:
    ``python -m pyimgano_hydra hydra.run.dir=new '+hydra.job.env_set.GIT_TRACE=${hydra:runtime.cwd}/done/status.json'``.
    Expected: refused in one line naming hydra.job.env_set.GIT_TRACE (the value checked as resolved),
    the completed run's status.json unchanged."""
    done = _done_run(tmp_path)
    before = (done / "status.json").read_bytes()
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}",
                    "+hydra.job.env_set.GIT_TRACE=${hydra:runtime.cwd}/done/status.json"], cwd=tmp_path, timeout=300)
    assert (done / "status.json").read_bytes() == before, (done / "status.json").read_text()[:300]
    assert proc.returncode != 0 and "hydra.job.env_set.GIT_TRACE" in proc.stderr, proc.stderr[-500:]


# ---- attacks that held ----------------------------------------------------------------------

def _hot_journal(clean: Path, bad: Path, out: Path) -> None:
    """``out`` = ``clean``'s bytes beside a hot rollback journal holding every page of ``bad``: the
    first read-write open rolls the journal back, so the database then is ``bad``."""
    import struct

    old, new = bad.read_bytes(), clean.read_bytes()
    page = struct.unpack(">H", old[16:18])[0]
    out.write_bytes(new)
    pages, init = len(old) // page, 0x12345678
    journal = (bytes.fromhex("d9d505f920a163d7") + struct.pack(">IIIII", 0xFFFFFFFF, init, pages, 512, page)).ljust(512, b"\0")
    for number in range(pages):
        data, checksum, i = old[number * page:(number + 1) * page], init, page - 200
        while i > 0:
            checksum, i = (checksum + data[i]) & 0xFFFFFFFF, i - 200
        journal += struct.pack(">I", number + 1) + data + struct.pack(">I", checksum)
    Path(f"{out}-journal").write_bytes(journal)


@pytest.mark.parametrize("sidecar", ["journal", "wal"])
def test_held_a_study_whose_sidecar_file_adds_a_trigger_is_refused(tmp_path, sidecar):
    """A handed optuna.db that is exactly as this Optuna makes it, plus a sidecar file SQLite replays on
    the first open: a hot ``-journal`` whose rollback restores a trigger (on a new trial it writes a
    pickled CMA-ES optimizer into the study, after every check; not shown to reach ``pickle.loads`` here:
    Optuna 2.10 caches finished trials), or a ``-wal`` whose frames add it.
    ``--multirun hydra/sweeper=optuna_patchcore hydra/sweeper/sampler=cmaes ...storage=sqlite:///optuna.db``:
    the read-only check cannot roll a hot journal back (refused, "not a readable SQLite database") and
    reads through the WAL (refused, "holds a trigger"); no marker, no job."""
    optuna = pytest.importorskip("optuna")
    import pickle
    import shutil
    import sqlite3
    import warnings

    from optuna.distributions import CategoricalDistribution, UniformDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clean, bad, db, marker = tmp_path / "clean.db", tmp_path / "bad.db", tmp_path / "optuna.db", tmp_path / "MARKER"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{clean}", direction="maximize")
        study.add_trial(optuna.trial.create_trial(
            params={"model.coreset_ratio": 0.1, "model.num_neighbors": 3, "model.smoothing_sigma": 2.0},
            distributions={"model.coreset_ratio": UniformDistribution(0.01, 0.3),
                           "model.num_neighbors": CategoricalDistribution([1, 3, 9]),
                           "model.smoothing_sigma": UniformDistribution(0, 8)}, value=0.5))
    del study

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    trigger = ("CREATE TRIGGER tr AFTER INSERT ON trials BEGIN INSERT INTO trial_system_attributes "
               f"(trial_id, key, value_json) VALUES (1, 'cma:optimizer', '{json.dumps(pickle.dumps(Touch()).hex())}'); END")
    if sidecar == "journal":
        shutil.copy(clean, bad)
        con = sqlite3.connect(bad)
        con.execute(trigger)
        con.commit()
        con.close()
        _hot_journal(clean, bad, db)
    else:
        work = tmp_path / "work.db"
        shutil.copy(clean, work)
        con = sqlite3.connect(work)
        con.execute("PRAGMA journal_mode=wal")
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute(trigger)
        con.commit()
        shutil.copy(work, db)
        shutil.copy(f"{work}-wal", f"{db}-wal")
        con.close()
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                    "hydra.sweeper.n_trials=1", "hydra.sweeper.storage=sqlite:///optuna.db",
                    f"hydra.sweep.dir={tmp_path / 'sw'}", *TINY, "model.smoothing_sigma=interval(0,8)"],
                   cwd=tmp_path, timeout=120)
    assert not marker.exists(), proc.stderr[-500:]
    assert proc.returncode != 0 and proc.stderr.startswith("error: hydra.sweeper.storage=") \
        and proc.stderr.strip().count("\n") == 0, proc.stderr[-500:]


@pytest.mark.parametrize("setting, named", [
    ("+hydra.job.env_set.HOME=/tmp", "may decide what code child processes load"),  # a user site's .pth files
    ("+hydra.job.env_set.OPENSSL_CONF=/tmp/x.cnf", "may decide what code child processes load"),  # a provider .so
    ("+hydra.job.env_set.PYIMGANO_CACHE=${hydra:no_such_key}", "cannot be resolved before the job starts"),
])
def test_an_env_set_that_could_load_code_or_resolve_elsewhere_is_refused_before_any_work(tmp_path, setting, named):
    proc = run_cli([setting, f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "hydra.job.env_set" in last and named in last, last
    assert not (tmp_path / "run" / "report.json").exists()
