"""Attacker pass O2: lab side (sweeps on joblib/optuna, config sources) - lost or misrecorded runs and
code execution from handed-over files."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY, pythonpath, run_cli


def _env():
    env = dict(os.environ, PYTHONPATH=pythonpath(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _states(sweep):
    return {os.path.basename(os.path.dirname(p)): json.loads(open(p).read())["status"]
            for p in glob.glob(f"{sweep}/*/status.json")}


def _sweep(sweep, sweeper, jobs="0.2,0.3"):
    extra = (["hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
              "hydra.sweeper.max_failure_rate=0.5", 'hydra.sweeper.params={model.coreset_ratio:"choice(0.2,0.3)"}']
             if sweeper == "optuna" else [f"model.coreset_ratio={jobs}"])
    return subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", "--multirun", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "dataset.category=weave", "dataset.limit_train=40",
                             "dataset.limit_test=40", "cache.enabled=false", *extra,
                             f"hydra.sweep.dir={sweep}"], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _signal_first_job_worker(proc, sweep, signum):
    try:
        deadline = time.time() + 90
        while len(glob.glob(f"{sweep}/*/status.json")) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        # The first job still fitting (under load a job can end before the second worker starts).
        running = [p for p in sorted(glob.glob(f"{sweep}/*/status.json"))
                   if json.loads(open(p).read())["status"] == "running"]
        assert running, "no job running to signal"
        first = running[0]
        os.kill(json.loads(open(first).read())["pid"], signum)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2)
    return os.path.basename(os.path.dirname(first)), err


@pytest.mark.parametrize("sweeper", ["compose_once", "optuna"])
def test_a_joblib_worker_killed_mid_fit_leaves_no_job_running_and_keeps_the_board(tmp_path, sweeper):
    """``--multirun hydra/launcher=joblib hydra.launcher.n_jobs=2`` over two jobs; one loky worker is
    killed (SIGKILL: the OOM killer, a ``kill -9`` by an admin) while both fit. Observed: rc 1, stderr
    "error: Detailed tracebacks of the workers should have been printed to stderr in the executor
    process if faulthandler was not disabled." (names no job, says nothing was killed); loky tears down
    the OTHER worker too and its job's status.json stays "running"; the sweep's status.json says
    "failed (...) (the sweep; see leaderboard.json)" but no leaderboard.json is written
    (``ComposeOnceSweeper.sweep`` only calls on_multirun_end when reading results fails, not when
    ``launcher.launch`` itself raises TerminatedWorkerError). Expected: the other job marked
    interrupted (as a signal to the launching process does), the board written, the line naming the
    killed worker / job."""
    sweep = tmp_path / "sweep"
    killed, err = _signal_first_job_worker(_sweep(sweep, sweeper), sweep, signal.SIGKILL)
    states = _states(sweep)
    others = {k: v for k, v in states.items() if k != killed}
    assert len(states) == 2, ( states, err[-500:])
    assert "running" not in others.values(), (states, err[-300:])
    assert (sweep / "leaderboard.json").exists(), (json.loads((sweep / "status.json").read_text()), err[-300:])
    assert "Traceback" not in err and "faulthandler" not in err, err[-500:]


def test_sigterm_to_one_joblib_worker_loses_no_other_job(tmp_path):
    """A three-job joblib sweep (n_jobs=2); ``kill <pid>`` (SIGTERM, the signal the app handles) sent to
    the pid job 0's status.json names, as a user stopping that one job does. Observed: job 0 is marked
    "interrupted (SIGTERM)", but what its worker sends back cannot be unpickled in the launching
    process (``interrupt.Interrupted`` pickles its args as ("SIGTERM",) and ``__init__`` does
    ``signal.Signals("SIGTERM")`` -> ValueError on unpickling): rc 1,
    "error: joblib.externals.loky.process_executor.BrokenProcessPool: A result has failed
    to un-serialize. ..."; loky kills the other worker and job 1's status.json stays "running"; job 2
    never runs and has no record; the sweep's status.json says "see leaderboard.json" but none is
    written. Expected: job 0 recorded interrupted, the other jobs run (or are marked interrupted), the
    board written, no job left "running"."""
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "compose_once", jobs="0.2,0.3,0.4")
    stopped, err = _signal_first_job_worker(proc, sweep, signal.SIGTERM)
    states = _states(sweep)
    assert states.get(stopped) == "interrupted", (states, err[-300:])
    assert "running" not in states.values(), (states, err[-300:])
    assert (sweep / "leaderboard.json").exists(), err[-300:]
    assert "BrokenProcessPool" not in err and "un-serialize" not in err, err[-300:]


def test_the_api_started_inside_a_received_run_dir_imports_nothing_from_it(tmp_path):
    """A notebook or ``python -c`` opened inside a received run dir (sys.path[0] is the working dir)
    calling ``pyimgano_hydra.api.compose_config([...])``: ``compose_with_choices`` ->
    ``hydra_guard.guard_hydra(scan=True)`` -> ``Plugins.instance()`` imports every
    ``hydra_plugins.*`` module on sys.path, so the run dir's ``hydra_plugins/evil_o2.py`` runs
    (marker written, rc 0). ``python -m pyimgano_hydra`` drops a run dir from sys.path
    (``_no_imports_from_a_run_dir``); the API entry point does not. Expected: no marker (the API drops
    run-dir entries from sys.path before scanning Hydra's plugins, or refuses in one line).
    Borderline: under ``python -c`` any module shadowing one not yet imported (a run dir's yaml.py) runs
    at ``import pyimgano_hydra`` anyway (plain Python semantics, as WORKBENCH says for ``python -m``);
    the plugin scan is the part the product itself triggers."""
    run_dir = tmp_path / "received"
    (run_dir / "hydra_plugins").mkdir(parents=True)
    (run_dir / "status.json").write_text('{"status": "completed"}')
    marker = tmp_path / "MARKER"
    (run_dir / "hydra_plugins" / "evil_o2.py").write_text(f"import os\nos.system('touch {marker}')\n")
    proc = subprocess.run([sys.executable, "-c", "from pyimgano_hydra import api; "
                           "api.compose_config(['dataset.category=weave'])"], cwd=run_dir, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])


def test_continuing_a_handed_over_optuna_study_with_cmaes_never_unpickles_its_storage(tmp_path):
    """A colleague hands over ``optuna.db`` ("continue my study"); the user resumes it as WORKBENCH
    and optuna_patchcore.yaml suggest (``hydra.sweeper.storage=sqlite:///.../optuna.db``, same
    study_name) with Hydra's CMA-ES sampler (``hydra/sweeper/sampler=cmaes``, two continuous params).
    The DB's one completed trial carries a system attr ``cma:optimizer`` = hex of a pickle; optuna's
    ``CmaEsSampler._restore_optimizer`` does ``pickle.loads(bytes.fromhex(...))`` on it. Observed: the
    marker is written, then rc 1 "error: hydra.sweeper.storage=...: study 'patchcore' cannot be
    continued ('int' object has no attribute 'dim')" - the code already ran. Expected: no marker (a
    continued study's trials are checked for pickled sampler state - ``cma:optimizer*`` /
    ``sepcma:optimizer*`` system attrs - and refused in one line naming the storage, or the CMA-ES
    sampler refused with a storage that holds trials this process did not write)."""
    import pickle

    optuna = pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, UniformDistribution

    marker = tmp_path / "MARKER"

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    db = tmp_path / "handed" / "optuna.db"
    db.parent.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="patchcore", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"model.coreset_ratio": 0.2, "model.num_neighbors": 1, "model.smoothing_sigma": 4.0},
        distributions={"model.coreset_ratio": UniformDistribution(0.01, 0.3),
                       "model.num_neighbors": CategoricalDistribution([1, 3, 9]),
                       "model.smoothing_sigma": UniformDistribution(0.0, 8.0)},
        value=0.9, system_attrs={"cma:optimizer": pickle.dumps(Touch()).hex(), "cma:n_restarts": 0}))
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                    f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_trials=2",
                    'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)",'
                    'model.smoothing_sigma:"interval(0.0,8.0)"}', *TINY[:3],
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert not marker.exists(), (proc.returncode, proc.stderr[-300:])


def test_sigterm_to_an_idle_joblib_worker_loses_no_running_job(tmp_path):
    """A two-job joblib sweep (``dataset.limit_train=12,80``: job 0 ends first); once job 0 is
    completed, SIGTERM goes to the loky worker that ran it and now waits idle (not the one running
    job 1). Observed: rc 1, "error: Detailed tracebacks of the workers should have been printed ..."
    plus resource_tracker "leaked semaphore" warning lines on stderr; loky kills the worker running
    job 1, whose status.json stays "running"; the sweep's status.json says "failed (Detailed
    tracebacks ...)". Expected: the idle worker's end loses no job (job 1 completes, or is marked
    interrupted), one line on stderr."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", "--multirun", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "dataset.category=weave", "dataset.limit_train=12,80",
                             "dataset.limit_test=40", "cache.enabled=false", "model.coreset_ratio=0.2",
                             f"hydra.sweep.dir={sweep}"], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 90
        while _states(sweep).get("0_12") != "completed" and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        busy = json.loads((sweep / "1_80" / "status.json").read_text())["pid"]
        workers = subprocess.run(["pgrep", "-f", "loky.backend.popen_loky_posix"], capture_output=True,
                                 text=True).stdout.split()
        idle = [int(p) for p in workers if int(p) != busy and os.getpgid(int(p)) == proc.pid]
        assert idle, workers
        os.kill(idle[0], signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2)
    states = _states(sweep)
    assert states.get("0_12") == "completed" and states.get("1_80") != "running", (states, err[-300:])
    assert err.strip().count("\n") == 0, err[-500:]
