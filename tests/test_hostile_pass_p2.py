"""Attacker's pass p2 (lab side): each test fails on the current code and passes once fixed."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import TINY, run_cli, start_cli, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_leaked_submitit_executor_variable_never_leaves_a_sigterm_run_running(tmp_path):
    """``SUBMITIT_EXECUTOR`` inherited by a plain run (a shell or notebook started inside a submitit
    job, an exported variable) makes the app leave SIGTERM to submitit (``interrupt._handling`` trusts
    ``sweep/cluster.under_submitit``, an env check): nobody handles it, the process dies by the signal
    and status.json stays ``running`` for ever."""
    run_dir = tmp_path / "run"
    proc = start_cli([*TINY, f"hydra.run.dir={run_dir}"], env={"SUBMITIT_EXECUTOR": "slurm"})

    def started() -> bool:
        assert wait_for(run_dir / "status.json", 120)
        time.sleep(1.0)
        return True

    err = _sigterm_once(proc, started, timeout=60)
    status = json.loads((run_dir / "status.json").read_text())["status"]
    assert status != "running", f"rc {proc.returncode}, stderr {err[-300:]!r}: status.json left running"
    assert proc.returncode != 0


def _sigterm_once(proc, ready, timeout: float) -> str:
    """SIGTERM to ``proc`` once ``ready()`` returns; its stderr (killed if still running)."""
    try:
        ready()
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _save_weights(path: Path, seed: int) -> None:
    import torch

    from pyimgano_hydra.features.backbones import BACKBONES

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BACKBONES["efficientnet_lite0"]().build()
    torch.save(net.state_dict(), path)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())["categories"]["weave"]["metrics"]


def test_weights_replaced_by_a_file_of_the_same_size_and_mtime_never_reuse_the_old_features(tmp_path):
    """The feature cache keys a ``model.weights_path`` backbone by (path, size, mtime_ns) only
    (``features/backbones._file_identity`` -> ``features/cache.backbone_key``'s record under
    ``backbones/``): a received checkpoint of the same architecture (same size) unpacked with its
    timestamp (tar, rsync -a, cp -p) over the old one is never loaded for features; the run scores
    with the OLD weights' cached features, rc 0, while its run dir ships the NEW weights."""
    weights, cache = tmp_path / "backbone.pt", tmp_path / "features"
    _save_weights(weights, 0)
    before = os.stat(weights)

    def run(name: str, *extra: str) -> dict:
        run_dir = tmp_path / name
        proc = run_cli([*TINY, f"model.weights_path={weights}", f"cache.dir={cache}",
                        f"hydra.run.dir={run_dir}", *extra], timeout=300)
        assert proc.returncode == 0, proc.stderr[-1000:]
        return _metrics(run_dir)

    run("old")
    _save_weights(weights, 1)  # another fine-tune of the same backbone: same tensors, same size
    assert os.stat(weights).st_size == before.st_size
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    cached = run("new_cached")
    fresh = run("new_fresh", "cache.enabled=false")
    assert cached == fresh, "features of the replaced weights file were served from the cache"


@pytest.fixture(scope="module")
def completed_sweep(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("sweep") / "sweep"
    proc = run_cli(["--multirun", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sweep


def test_the_app_inside_a_received_sweep_dir_without_its_claim_imports_nothing_from_it(completed_sweep, tmp_path):
    """A sweep dir copied with ``cp -r sweep/* dest`` loses its dot file ``.claim.json`` but keeps
    ``sweep.json``, ``multirun.yaml``, the board and the job run dirs. The claim check knows such a
    dir holds a sweep ("already holds a run or sweep (it has multirun.yaml)"), but
    ``pyimgano_hydra._inside_a_run_dir`` (RUN_RECORD_FILES) does not: ``python -m pyimgano_hydra``
    started inside it keeps the working dir on sys.path and Hydra's plugin scan imports the
    ``hydra_plugins/`` shipped there."""
    import shutil

    received = tmp_path / "received_sweep"
    received.mkdir()
    for entry in completed_sweep.iterdir():
        if not entry.name.startswith("."):
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, received / entry.name)
    marker = tmp_path / "MARKER"
    plugin = received / "hydra_plugins" / "evil"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    proc = run_cli(["--help"], cwd=received, timeout=120)
    assert not marker.exists(), "a hydra_plugins/ module shipped in a received sweep dir was imported"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-500:]


def test_a_sigterm_during_an_optuna_trial_never_leaves_the_trial_running_in_the_study(tmp_path):
    """SIGTERM while trial 1 of an Optuna sweep with ``hydra.sweeper.storage`` runs: the job's
    status.json and the sweep say ``interrupted`` (rc 143), but the study in optuna.db keeps trial 1
    ``RUNNING`` for ever (``sweep/optuna.BudgetLauncher.launch`` re-raises without telling the study):
    every later continuation of the study (and optuna-dashboard) shows a trial still running."""
    import sqlite3

    sweep, db = tmp_path / "sweep", tmp_path / "optuna.db"
    proc = start_cli(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=3",
                      f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={sweep}"])

    def trial_started() -> bool:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any((d / "status.json").exists() for d in sweep.glob("1_*")):
            time.sleep(0.01)
        return True

    err = _sigterm_once(proc, trial_started, timeout=90)
    assert proc.returncode == 143, err[-500:]
    with sqlite3.connect(db) as con:
        states = con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    assert all(state != "RUNNING" for _, state in states), f"study trials after the sweep ended: {states}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from conftest import trained_run

    return trained_run(tmp_path_factory)


def test_the_api_composing_after_a_notebook_changed_into_a_received_run_dir_imports_nothing_from_it(trained, tmp_path):
    """A notebook (IPython keeps '' = the working dir on sys.path) imports ``pyimgano_hydra.api``
    elsewhere, then ``%cd``s into a received run dir to look at it and composes a config: Hydra's
    plugin scan runs at the first compose and imports the run dir's ``hydra_plugins/`` through ''.
    ``pyimgano_hydra._no_imports_from_a_run_dir`` only looks at the working dir at import time;
    ``api.compose_with_choices`` never checks it."""
    import subprocess
    import sys

    from conftest import _cli_env, copy_run

    run_dir = copy_run(trained, tmp_path)
    marker = tmp_path / "MARKER"
    plugin = run_dir / "hydra_plugins" / "evil"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    code = ("import os, sys\nsys.path.insert(0, '')\nimport pyimgano_hydra.api as api\n"
            f"os.chdir({str(run_dir)!r})\n"
            "try:\n    api.compose_config(['dataset.category=weave'])\nexcept Exception as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_cli_env(), capture_output=True,
                          text=True, timeout=180)
    assert not marker.exists(), f"a run dir's hydra_plugins/ was imported by api.compose_config ({proc.stdout[-200:]})"


def _forge_waiting_trial(db: Path, params: dict) -> None:
    """A handed-over optuna.db: study ``patchcore`` with one WAITING (enqueued) trial that already
    holds ``params`` in its ``trial_params`` rows (one-choice categorical distributions)."""
    import sqlite3
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="maximize")
        study.enqueue_trial({})
    with sqlite3.connect(db) as con:
        trial_id = con.execute("SELECT trial_id FROM trials WHERE state = 'WAITING'").fetchone()[0]
        for name, value in params.items():
            dist = json.dumps({"name": "CategoricalDistribution", "attributes": {"choices": [value]}})
            con.execute("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                        "VALUES (?, ?, ?, ?)", (trial_id, name, 0.0, dist))


def test_a_handed_over_optuna_db_never_adds_overrides_or_a_target_to_a_sweep_job(tmp_path):
    """hydra-optuna-sweeper turns ``trial.params`` of each asked trial into the job's overrides
    (``f"{name}={val}"``); Optuna hands a stored WAITING trial out first, with every param its
    ``trial_params`` rows hold. A handed-over optuna.db thus adds any override to the sweep's first
    job: ``model._target_=builtins.print`` reached ``instantiate`` (print was called: "'backbone' is an
    invalid keyword argument for print()"), ``+model.extra={_target_: ..., _args_: [...]}`` reaches
    Hydra's recursive instantiate (only Hydra's target blocklist stood between it and a
    ``SourceFileLoader``), and a plain one (``dataset.resize=64``) silently changes what the trial
    measured. ``sweep/optuna.study_sweeper`` / ``continue_study`` never check stored trials' params
    against ``hydra.sweeper.params``."""
    sweep, db = tmp_path / "sweep", tmp_path / "optuna.db"
    _forge_waiting_trial(db, {"model._target_": "builtins.print", "dataset.resize": 64})
    proc = run_cli(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={sweep}"], timeout=300)
    assert "print()" not in proc.stderr, proc.stderr[-600:]
    assert proc.returncode != 0 and "outside hydra.sweeper.params" in proc.stderr, proc.stderr[-600:]
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr, proc.stderr[-600:]
    for overrides in sweep.glob("*/.hydra/overrides.yaml"):
        text = overrides.read_text()
        assert "_target_" not in text and "dataset.resize" not in text, f"{overrides}: {text}"
