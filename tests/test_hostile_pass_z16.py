"""Attacker pass Z16 (#16): code execution from data the user did not write -- pickles reached
through Optuna study stores, launcher folders, caches and weights, without ``trust_targets=true``."""
from __future__ import annotations

import os
import pickle
import threading
import time

import pytest

from conftest import TINY, run_cli


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # pickle.dumps only records this; unpickling runs it
        return (os.system, (f"touch {self.path}",))


def test_a_shared_study_never_unpickles_a_cmaes_state_a_colleague_adds_mid_sweep(tmp_path):
    """HOLE (code-exec). Optuna's storage exists to share a study between workers (a colleague's
    machine, a second terminal, a shared SQLite file or SQL server, as WORKBENCH's "a later run with
    the same study_name continues it" invites). ``continue_study`` looks for a pickled CMA-ES state
    (``cma:optimizer``) only once, when the sweep starts; Optuna's ``CmaEsSampler._restore_optimizer``
    reads the study again at every ``ask`` and ``pickle.loads`` the newest completed trial's state.
    Here the study is new and clean when the sweep starts; while job 0 runs, another writer of the
    same study (the colleague) adds one completed trial carrying a pickled ``cma:optimizer``. Observed:
    trial 1's ask unpickles it (marker written), then one line "study 'patchcore' cannot be continued
    ('int' object has no attribute 'dim')" -- the code already ran; the ``stored_params_in`` check
    comes only after ``ask``. Expected: no marker (the CMA-ES state is refused whenever Optuna would read it, e.g. a
    sampler that never unpickles, or the check done before each ask)."""
    optuna = pytest.importorskip("optuna")
    from optuna.distributions import UniformDistribution

    marker = tmp_path / "MARKER"
    db = tmp_path / "shared" / "optuna.db"
    db.parent.mkdir()
    sweep = tmp_path / "sweep"
    storage = f"sqlite:///{db}"
    done, wrote = threading.Event(), threading.Event()

    def colleague() -> None:  # another worker of the shared study, writing while job 0 runs
        deadline = time.time() + 240
        while not any(sweep.glob("0_*")) and time.time() < deadline and not done.is_set():
            time.sleep(0.05)
        if done.is_set() or time.time() >= deadline:
            return
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="patchcore", storage=storage)
        study.add_trial(optuna.trial.create_trial(
            params={"model.coreset_ratio": 0.2, "model.smoothing_sigma": 4.0},
            distributions={"model.coreset_ratio": UniformDistribution(0.01, 0.3),
                           "model.smoothing_sigma": UniformDistribution(0.0, 8.0)},
            value=0.99, system_attrs={"cma:optimizer": pickle.dumps(_Touch(marker)).hex(), "cma:n_restarts": 0}))
        wrote.set()

    writer = threading.Thread(target=colleague, daemon=True)
    writer.start()
    try:
        proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra/sweeper/sampler=cmaes",
                        f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2",
                        'hydra.sweeper.params={model.coreset_ratio:"interval(0.01,0.3)",'
                        'model.smoothing_sigma:"interval(0.0,8.0)"}', *TINY[:3], "dataset.resize=32",
                        f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}"],
                       env={"OMP_NUM_THREADS": "1"}, timeout=300)
    finally:
        done.set()
        writer.join(10)
    refused = proc.returncode != 0 and "CMA-ES" in proc.stderr.strip().splitlines()[-1]  # before any job, since Z16
    assert wrote.is_set() or refused, proc.stderr[-500:]  # else the colleague wrote while job 0 ran
    assert not marker.exists(), "a CMA-ES state added to the shared study ran: " + proc.stderr[-400:]
