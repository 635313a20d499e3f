"""Attacker pass J: new variants of run-dir files and names that run code or lose a run."""
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO, TINY, pickle_that_touches, run_cli


def test_matplotlibrc_in_a_received_run_dir_does_not_lose_a_training_run(trained, tmp_path):
    """The app started inside a received run dir (output elsewhere) reads the run dir's ``matplotlibrc``
    (matplotlib reads ``./matplotlibrc`` on import): ``text.usetex: True`` makes the plots call LaTeX,
    and the new run ends ``failed`` ("latex could not be found") after fitting and testing.
    Expected: a file in the run dir is never read; the new run completes."""
    received = shutil.copytree(trained, tmp_path / "received")
    (received / "matplotlibrc").write_text("text.usetex: True\n")
    out = tmp_path / "new"
    proc = _run_without(["MPLBACKEND"], [*TINY, f"hydra.run.dir={out}"], received)
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "completed" and proc.returncode == 0, (status, proc.stderr[-400:])


def _run_without(drop, args, cwd, module="pyimgano_hydra", timeout=300):
    import subprocess
    import sys

    env = dict(os.environ)
    for key in drop:
        env.pop(key, None)
    env["PYTHONPATH"] = str(REPO)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _entries(run_dir: Path) -> set:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")}


def test_mlflow_callback_from_inside_a_completed_run_writes_into_it(trained, tmp_path):
    """The app started inside a received (completed) run dir with ``+callbacks=mlflow`` and
    ``hydra.run.dir`` elsewhere: the callback's default file store is ``outputs/mlruns`` under the
    working dir, so MLflow creates ``<completed run>/outputs/mlruns/...`` (and copies the new run there).
    Expected: a run writes only into its own dir: nothing added to the completed run (refused, or
    the store put elsewhere)."""
    received = shutil.copytree(trained, tmp_path / "received")
    before = _entries(received)
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}", "+callbacks=mlflow"], cwd=received, timeout=300)
    assert _entries(received) == before, (sorted(_entries(received) - before)[:4], proc.stderr[-300:])


def _train_and_swap(tmp_path, relative: str):
    """Start a TINY training run; the moment ``<run>/<relative>`` appears, move it aside and put a
    symlink to an outside folder in its place. Returns (run dir, outside folder, output)."""
    import subprocess
    import sys
    import time

    out, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", *TINY, f"hydra.run.dir={out}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target, start = out / relative, time.monotonic()
    while not target.exists() and proc.poll() is None and time.monotonic() - start < 120:
        time.sleep(0.0005)
    assert target.exists(), "the folder never appeared"
    os.rename(target, target.with_name(target.name + ".moved"))
    os.symlink(outside, target)
    output, _ = proc.communicate(timeout=300)
    return out, outside, output


def test_a_category_folder_made_a_link_during_the_fit_is_never_recorded_completed(tmp_path):
    """While a run fits, ``categories/weave`` (not ``categories``) is moved aside and replaced by a
    symlink to an outside folder: the run recorded ``completed`` (exit 0) and infer then refused it
    ("'categories/weave/inspector.pt' leads outside the run dir (a symlink?)"). Now the run checks its
    folders before each write phase: it stops, recorded ``failed`` in one line naming the link.
    Open: files the recipe wrote through the link before that check still land outside (writes go by
    path, not through a pinned directory descriptor)."""
    out, outside, output = _train_and_swap(tmp_path, "categories/weave")
    status = json.loads((out / "status.json").read_text())["status"]
    assert status == "failed", (status, output[-300:])
    # the swap lands before a check (named) or inside a write whose temp file it moved away (that file named)
    named = "categories/weave was replaced by a link" in output or "categories/weave/" in output
    assert named and "Traceback" not in output, output[-300:]


@pytest.mark.parametrize("how", ["config_dir", "searchpath"])
def test_a_run_dirs_schema_yaml_shadows_a_structured_schema_and_runs_code(trained, tmp_path, how):
    """The user points Hydra at a received run dir (``--config-dir <run dir>`` or
    ``hydra.searchpath=[file://<run dir>]``) naming no config and no ``_target_`` from it. The run dir
    ships ``schema/run/app.yaml``: Hydra finds it before the structured ``schema/run/app`` (the
    ``schema`` provider is searched last), and RunSchema's ``dataset: Any`` lets it add
    ``dataset.evil: {_target_: numpy.load, file: <run dir>/evil.pkl, allow_pickle: true}``; building
    the dataset instantiates it recursively: the pickle runs (``touch``), the run completes.
    Expected: nothing from the run dir is instantiated or unpickled (refused, or not composed)."""
    received = shutil.copytree(trained, tmp_path / "received")
    marker = tmp_path / "PWNED"
    pickle_that_touches(received / "evil.pkl", marker)
    (received / "schema" / "run").mkdir(parents=True)
    (received / "schema" / "run" / "app.yaml").write_text(
        f"dataset:\n  evil:\n    _target_: numpy.load\n    file: {received / 'evil.pkl'}\n    allow_pickle: true\n")
    args = [*TINY, f"hydra.run.dir={tmp_path / 'new'}"]
    args = ["--config-dir", str(received), *args] if how == "config_dir" else \
        [*args, f"hydra.searchpath=[file://{received}]"]
    proc = run_cli(args, timeout=300)
    assert not marker.exists(), ("the run dir's pickle ran", proc.returncode, proc.stderr[-300:])


def test_hydra_record_folder_made_a_link_while_hydra_writes_it(tmp_path):
    """The moment a new run's ``.hydra/`` appears it is moved aside and replaced by a symlink to an
    outside folder: Hydra writes ``hydra.yaml`` and ``overrides.yaml`` (the overrides the docs say to
    re-run with) through it, outside the run dir, and the run still records ``completed``.
    Expected: nothing written outside the run dir, and a run whose ``.hydra`` became a link is not
    recorded ``completed``."""
    out, outside, output = _train_and_swap(tmp_path, ".hydra")
    status = json.loads((out / "status.json").read_text())["status"]
    written = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    assert written == [] or status != "completed", (written, status, output[-300:])


def test_optuna_sqlite_uri_filename_into_a_completed_run(trained, tmp_path):
    """``hydra.sweeper.storage="sqlite:///file:<completed run>/opt.db?uri=true"`` (SQLAlchemy's SQLite URI
    form): ``_check_sweep_files`` checks the path ``file:<completed run>/opt.db?uri=true``, which is
    relative (a folder named ``file:`` in the working dir) and in no run, so it passes; SQLite opens the
    URI and writes the study into the completed run (``opt.db`` added), exit 0.
    Expected: refused in one line naming hydra.sweeper.storage; nothing added to the completed run."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _entries(done)
    proc = run_cli(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f'hydra.sweeper.storage="sqlite:///file:{done}/opt.db?uri=true"'], cwd=tmp_path, timeout=300)
    assert _entries(done) == before, (sorted(_entries(done) - before)[:4], proc.stderr[-300:])
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr, proc.stderr[-300:]


@pytest.mark.parametrize("name", ["SIGQUIT", "SIGUSR1", "SIGALRM"])
def test_ctrl_backslash_leaves_status_running(tmp_path, name):
    """Ctrl-\\ (SIGQUIT) during a training run: the process dies (rc -3) and ``status.json`` stays
    ``running`` for a process that has ended (SIGUSR1 the same, rc -10; SIGALRM, rc -14).
    Expected: the run recorded ``interrupted`` (as for SIGTERM, SIGHUP and Ctrl-C)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    # no feature cache and the whole split: a run that lasts seconds (a cached TINY run ended before the signal)
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", *TINY, "dataset.limit_train=40",
                             "cache.enabled=false", f"hydra.run.dir={out}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.monotonic()
    while not (out / "status.json").exists() and time.monotonic() - start < 120:
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(getattr(signal, name))
    output, _ = proc.communicate(timeout=120)
    status = json.loads((out / "status.json").read_text())["status"]
    assert status == "interrupted", (proc.returncode, status, output[-300:])
    assert proc.returncode == 128 + getattr(signal, name) and f"interrupted: {name}" in output, output[-300:]
    assert "Traceback" not in output, output[-600:]
