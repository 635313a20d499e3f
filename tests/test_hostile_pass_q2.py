"""Attacker's pass q2 (lab side): each test fails on the current code and passes once fixed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, _cli_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONSOLE_SCRIPT = Path(sys.executable).parent / "pyimgano-hydra"


def _received_dataset_folder(tmp_path: Path, module: str, marker: Path) -> Path:
    """A dataset folder received from a colleague (train/normal, test/normal) that also ships a
    package named like a module a child Python imports first."""
    folder = tmp_path / "part_a"
    for sub in ("train/normal", "test/normal"):
        (folder / sub).mkdir(parents=True)
    (folder / module).mkdir()
    (folder / module / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


def _console_script(args, cwd) -> subprocess.CompletedProcess:
    if not CONSOLE_SCRIPT.exists():
        pytest.skip("pyimgano-hydra console script not installed")
    return subprocess.run([str(CONSOLE_SCRIPT), *args], cwd=cwd, env=_cli_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("launcher, module", [(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "joblib"),
                                              (["hydra/launcher=submitit_local"], "submitit")],
                         ids=["joblib", "submitit_local"])
def test_a_sweep_started_inside_a_received_dataset_folder_imports_nothing_from_it(tmp_path, launcher, module):
    """The installed ``pyimgano-hydra`` (what the docs recommend over ``python -m``: it never has the
    working dir on ``sys.path``) started inside a received dataset folder with
    ``hydra/launcher=joblib``: loky starts its workers with ``python -c ...``, which puts the working
    dir first on their ``sys.path``, so the folder's ``joblib/__init__.py`` runs in each worker
    (marker written, then a traceback: "No module named 'joblib.externals'"). With
    ``hydra/launcher=submitit_local`` the job is ``python -m submitit.local._local``: the folder's
    ``submitit/__init__.py`` runs. ``PYTHONSAFEPATH`` is only set by
    ``pyimgano_hydra._no_imports_from_a_run_dir`` when the working dir is a run or sweep dir."""
    marker = tmp_path / "MARKER"
    folder = _received_dataset_folder(tmp_path, module, marker)
    proc = _console_script(["--multirun", *TINY, *launcher, "model.num_neighbors=1,3",
                            f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=folder)
    assert not marker.exists(), f"a dataset folder's {module}/ ran in the sweep's workers (rc {proc.returncode}, " \
                                f"stderr {proc.stderr[-300:]!r})"
    assert "Traceback" not in proc.stderr, proc.stderr[-600:]


def test_decode_workers_of_a_run_started_inside_a_received_dataset_folder_import_nothing_from_it(tmp_path):
    """The same with a plain training run and ``loader.num_workers=2``: the decode workers'
    forkserver is started with ``python -c``, imports ``multiprocessing`` from the working dir (the
    received folder's ``multiprocessing/__init__.py`` ran), and the run fails with a traceback."""
    marker = tmp_path / "MARKER"
    folder = _received_dataset_folder(tmp_path, "multiprocessing", marker)
    proc = _console_script([*TINY, "loader.num_workers=2", f"hydra.run.dir={tmp_path / 'run'}"], cwd=folder)
    assert not marker.exists(), f"a dataset folder's multiprocessing/ ran in the decode workers (rc " \
                                f"{proc.returncode}, stderr {proc.stderr[-300:]!r})"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-600:]


def _optuna_db(db: Path) -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="maximize")


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _watched(args, limit_bytes: int = 1536 * 2**20, limit_s: float = 60.0):
    """Run the app; kill it past ``limit_bytes`` RSS or ``limit_s`` seconds. (rc, stderr, why killed)."""
    import time

    from conftest import start_cli

    proc = start_cli(args)
    deadline, peak, why = time.monotonic() + limit_s, 0, ""
    try:
        while proc.poll() is None:
            peak = max(peak, _rss_bytes(proc.pid))
            if peak > limit_bytes:
                why = f"RSS {peak / 2**30:.1f} GB"
                break
            if time.monotonic() > deadline:
                why = f"still running after {limit_s:.0f} s (RSS {peak / 2**30:.1f} GB)"
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    return proc.returncode, err, why


ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
VIEWS = {
    "trials": ("DROP TABLE trials",
               "CREATE VIEW trials AS " + ENDLESS + "SELECT x AS trial_id, x - 1 AS number, 1 AS study_id, "
               "'FAIL' AS state, '2026-01-01 00:00:00.000000' AS datetime_start, "
               "'2026-01-01 00:00:01.000000' AS datetime_complete FROM c"),
    "studies": ("ALTER TABLE studies RENAME TO studies_old",
                "CREATE VIEW studies AS " + ENDLESS + "SELECT x AS study_id, CASE WHEN x = 1 THEN 'patchcore' "
                "ELSE 'other' || x END AS study_name FROM c"),
}


@pytest.mark.parametrize("table", sorted(VIEWS))
def test_a_handed_over_optuna_db_whose_table_is_an_endless_view_never_eats_the_machine(tmp_path, table):
    """A ~110 KB optuna.db handed over with study ``patchcore`` whose ``trials`` (or ``studies``)
    table was replaced by a view over a recursive CTE (endless rows; SQLite views are part of the
    file). Continuing the study (``sweep/optuna.continue_study`` -> ``stored_trials`` ->
    ``optuna.load_study().trials``) reads trials for ever: measured 20 GB RSS after 3 minutes
    (SIGTERM at 60 s not honoured) until the kernel's OOM killer ended it; with ``studies`` a view,
    looking the study up by name never ends (killed after 45 s). A forged storage must be refused
    (tables that are views, or more rows than a bound) in one line naming ``hydra.sweeper.storage``."""
    import sqlite3

    db = tmp_path / "optuna.db"
    _optuna_db(db)
    with sqlite3.connect(db) as con:
        for statement in VIEWS[table]:
            con.execute(statement)
    assert db.stat().st_size < 1_000_000
    rc, err, why = _watched(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                             f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert not why, f"a {db.stat().st_size}-byte optuna.db: {why}"
    assert rc != 0 and "hydra.sweeper.storage" in err and "Traceback" not in err, err[-600:]


@pytest.mark.parametrize("key, value_json", [("deep", "[" * 100_000 + "]" * 100_000),
                                             ("model.num_neighbors", "3")],
                         ids=["deeply-nested-user-attr", "user-attr-named-like-a-param"])
def test_a_handed_over_optuna_dbs_trial_user_attr_is_one_line_naming_the_storage(tmp_path, key, value_json):
    """A handed-over optuna.db with one WAITING (enqueued) trial carrying a forged user attribute:
    nested 100,000 deep, the sweep ends with "error: RecursionError: maximum recursion depth exceeded
    while decoding a JSON array from a unicode string"; named like a swept param, hydra-optuna-sweeper
    raises "error: ValueError: Overlapping fixed parameters and search space parameters found!..."
    Neither names the database (``sweep/optuna._raised_by_storage`` only wraps errors raised inside
    optuna/sqlalchemy frames; json's decoder and hydra-optuna-sweeper's ``_configure_trials`` are not)."""
    import sqlite3

    from conftest import run_cli

    db = tmp_path / "optuna.db"
    _optuna_db(db)
    import optuna

    optuna.load_study(study_name="patchcore", storage=f"sqlite:///{db}").enqueue_trial({})
    with sqlite3.connect(db) as con:
        trial_id = con.execute("SELECT trial_id FROM trials WHERE state = 'WAITING'").fetchone()[0]
        con.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
                    (trial_id, key, value_json))
    proc = run_cli(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-600:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hydra.sweeper.storage" in errors[0], proc.stderr[-600:]


def test_a_handed_over_optuna_dbs_completed_trials_outside_the_search_space_are_never_reported_best(tmp_path):
    """A handed-over optuna.db (study ``patchcore``) holding 12 COMPLETE trials whose
    ``model.coreset_ratio`` is 50..61 (stored with ``UniformDistribution(0, 100)``: Optuna only
    checks the distribution's class against ``interval(0.01, 0.3)``) and value 1.0. The sweep
    continues the study with rc 0 (numpy RuntimeWarnings from TPE on stderr) and writes
    ``optimization_results.yaml`` with ``best_params: model.coreset_ratio: 50.0``: a value outside
    ``hydra.sweeper.params`` (and outside what ``model.coreset_ratio`` accepts) reported as the
    sweep's result. ``sweep/optuna.stored_params_in`` checks only the trials the study hands out,
    never the stored history that TPE and ``best_trial`` read."""
    import warnings

    import optuna
    import yaml
    from optuna.distributions import CategoricalDistribution, UniformDistribution

    from conftest import run_cli

    db = tmp_path / "optuna.db"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="maximize")
        dists = {"model.coreset_ratio": UniformDistribution(0.0, 100.0),
                 "model.num_neighbors": CategoricalDistribution((1, 3, 9)),
                 "model.smoothing_sigma": CategoricalDistribution((0, 2, 4, 8))}
        for i in range(12):
            study.add_trial(optuna.trial.create_trial(
                params={"model.coreset_ratio": 50.0 + i, "model.num_neighbors": 1, "model.smoothing_sigma": 0},
                distributions=dists, value=1.0))
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", *[a for a in TINY if not a.startswith("model.")], "hydra/sweeper=optuna_patchcore",
                    "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage=sqlite:///{db}",
                    f"hydra.sweep.dir={sweep}"], timeout=300)
    if proc.returncode != 0:  # refused: one line naming the storage
        assert "hydra.sweeper.storage" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-600:]
        return
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"]
    assert 0.01 <= best["model.coreset_ratio"] <= 0.3, f"rc 0, optimization_results.yaml best_params: {best}"
