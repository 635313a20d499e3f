"""Attacker pass X9: a check reads a path one way, the library that uses it another (code execution)."""
import pytest

from conftest import TINY, run_cli
from test_hostile_pass_x7 import _handed_optuna_db


def _cmaes_sweep(tmp_path, storage):
    return run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                    f"hydra.sweeper.storage='{storage}'", "hydra.sweeper.n_trials=2",
                    'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)",'
                    'model.smoothing_sigma:"interval(0.0,8.0)"}', *TINY[:3],
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)


@pytest.mark.parametrize("spelling", [
    # SQLite decodes %XX in a URI filename: the check looks for opt%75na.db, SQLite opens optuna.db
    "sqlite:///file:{dir}/opt%75na.db?uri=true",
    # SQLite drops a URI's #fragment: the check looks for "optuna.db#x"
    "sqlite:///file:{dir}/optuna.db#x?uri=true",
    # file://localhost/<abs>: the check looks for //localhost/<abs> (a path that does not exist)
    "sqlite:///file://localhost{dir}/optuna.db?uri=true",
    # Optuna's RDBStorage str.format()s the URL: the check looks for optuna{SCHEMA_VERSION}.db
    "sqlite:///{dir}/optuna{{SCHEMA_VERSION}}.db",
], ids=["percent-decoded", "fragment", "localhost-authority", "format-template"])
def test_handed_optuna_db_under_another_url_spelling_is_checked_too(tmp_path, spelling):
    """HOLE (code-exec). Pass X7's handed database (a SQLite trigger that plants ``cma:optimizer`` = a
    pickle once the sweep inserts a trial), named in ``hydra.sweeper.storage`` in a spelling where
    ``claim.sqlite_path`` yields a path that does not exist, so ``_check_sweep_files`` skips the
    database check (``os.path.lexists`` false), while SQLite/Optuna open the handed file itself:
    SQLite URI filenames are percent-decoded and lose their ``#fragment``, ``file://localhost/`` is
    the local host, and Optuna's ``RDBStorage`` runs ``url.format(SCHEMA_VERSION=...)`` (a handed
    config's ``optuna{SCHEMA_VERSION}.db`` opens ``optuna12.db``). Observed (all four): marker written,
    then rc 1 "study 'patchcore' cannot be continued ('int' object has no attribute 'dim')". Expected: no marker; rc != 0 with
    one line naming the storage (it holds a trigger), as for ``sqlite:///<dir>/optuna.db``."""
    marker = tmp_path / "MARKER"
    name = "optuna12.db" if "SCHEMA" in spelling else "optuna.db"
    db = _handed_optuna_db(tmp_path, marker, name=name)
    proc = _cmaes_sweep(tmp_path, spelling.format(dir=db.parent))
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])
    # refused for its trigger, or (since pass X9) for a spelling other than sqlite:///<path>
    assert proc.returncode != 0 and ("trigger" in proc.stderr or "name the study file plainly" in proc.stderr), \
        proc.stderr[-300:]


def test_handed_optuna_db_named_through_an_rdbstorage_node_is_checked_too(tmp_path):
    """HOLE (code-exec). ``hydra.sweeper.storage`` given as an Optuna storage object (``_target_:
    optuna.storages.RDBStorage``, url: the handed file), as one passes ``engine_kwargs``:
    ``_check_sweep_files`` skips any value that is not a str, Hydra instantiates the node into the
    sweeper's ``storage``. Observed: marker written. Expected: no marker; rc != 0 with one line naming the storage."""
    marker = tmp_path / "MARKER"
    db = _handed_optuna_db(tmp_path, marker)
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                    f"hydra.sweeper.storage={{_target_:optuna.storages.RDBStorage,url:'sqlite:///{db}'}}",
                    "hydra.sweeper.n_trials=2",
                    'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)",'
                    'model.smoothing_sigma:"interval(0.0,8.0)"}', *TINY[:3],
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr, proc.stderr[-300:]


def test_handed_optuna_db_whose_trigger_lies_only_in_its_wal_is_refused(tmp_path):
    """HELD. The handed ``optuna.db`` holds no trigger in its main file; the trigger lies in an
    uncheckpointed ``optuna.db-wal`` handed beside it (with a stale ``-shm`` from before the trigger).
    The read-only check reads through the WAL too, so the storage is refused in one line."""
    import shutil
    import sqlite3

    marker = tmp_path / "MARKER"
    src = _handed_optuna_db(tmp_path, marker)
    con = sqlite3.connect(src, isolation_level=None)
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name='planted'").fetchone()[0]
    con.execute("DROP TRIGGER planted")
    assert con.execute("PRAGMA journal_mode=wal").fetchone()[0] == "wal"
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    handed = tmp_path / "handed2"
    handed.mkdir()
    shutil.copy(f"{src}-shm", handed / "optuna.db-shm")
    con.execute(sql)
    shutil.copy(src, handed / "optuna.db")
    shutil.copy(f"{src}-wal", handed / "optuna.db-wal")
    con.close()
    with sqlite3.connect(f"file:{handed / 'optuna.db'}?immutable=1", uri=True) as main_only:
        assert not main_only.execute("SELECT 1 FROM sqlite_master WHERE type='trigger'").fetchall()
    proc = _cmaes_sweep(tmp_path, f"sqlite:///{handed / 'optuna.db'}")
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])
    # refused for its trigger, or (since pass X9) for a spelling other than sqlite:///<path>
    assert proc.returncode != 0 and ("trigger" in proc.stderr or "name the study file plainly" in proc.stderr), \
        proc.stderr[-300:]



def test_study_database_spelled_file_localhost_is_never_created_in_another_run(tmp_path):
    """HOLE (write into another run; same root cause as the URL spellings above).
    ``hydra.sweeper.storage=sqlite:///file://localhost<completed run>/optuna.db?uri=true``:
    ``refuse_foreign`` is handed ``sqlite_path``'s ``//localhost<run>/optuna.db`` (no run there),
    while SQLite creates ``<run>/optuna.db`` inside the completed run. Observed: rc 0 and
    ``optuna.db`` added to the run dir. Expected: rc != 0, one line naming the key, the run untouched
    (as for ``sqlite:///<run>/optuna.db``)."""
    run = tmp_path / "done_run"
    run.mkdir()
    (run / "report.json").write_text("{}")
    (run / "status.json").write_text('{"status": "completed"}')
    before = sorted(p.name for p in run.iterdir())
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore",
                    f"hydra.sweeper.storage='sqlite:///file://localhost{run}/optuna.db?uri=true'",
                    "hydra.sweeper.n_trials=1",
                    'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)"}', *TINY[:3],
                    "dataset.limit_train=4", "dataset.limit_test=4",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert sorted(p.name for p in run.iterdir()) == before, (proc.returncode, proc.stderr[-300:])
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr, proc.stderr[-300:]
