"""Attacker pass Z18 (#16): code execution from data others can write while or before the user
runs -- a shared Optuna study read at every trial, without ``trust_targets=true``."""
from __future__ import annotations

import os
import pickle

import pytest

from conftest import TINY, run_cli


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # pickle.dumps only records this; unpickling runs it
        return (os.system, (f"touch {self.path}",))


def _shared_study_with_a_cmaes_state(optuna, db, marker) -> None:
    """A study as a colleague (another worker of the shared SQLite file) leaves it: one completed
    trial inside the search space, carrying a pickled ``cma:optimizer`` system attribute."""
    from optuna.distributions import UniformDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"model.coreset_ratio": 0.2, "model.smoothing_sigma": 4.0},
        distributions={"model.coreset_ratio": UniformDistribution(0.01, 0.3),
                       "model.smoothing_sigma": UniformDistribution(0.0, 8.0)},
        value=0.5, system_attrs={"cma:optimizer": pickle.dumps(_Touch(marker)).hex(), "cma:n_restarts": 0}))


def test_hydras_own_optuna_sweeper_never_unpickles_a_cmaes_state_from_a_shared_study(tmp_path):
    """HOLE (code-exec). Z16 refuses CMA-ES with a storage, but only inside our preset's sweeper
    (``hydra/sweeper=optuna_patchcore`` -> ``continue_study``). hydra-optuna-sweeper's own preset,
    ``hydra/sweeper=optuna`` (installed with the [optuna] extra, the usual Hydra spelling), runs the
    same ``hydra/sweeper/sampler=cmaes`` + ``hydra.sweeper.storage=sqlite:///<shared>/optuna.db``
    with no check: Optuna's ``CmaEsSampler._restore_optimizer`` ``pickle.loads`` the newest completed
    trial's ``cma:optimizer`` at the first ask. Observed: marker written, then the one line
    "error: AttributeError: 'int' object has no attribute 'dim'". Expected: refused before any ask
    in one line naming hydra.sweeper.storage (as with optuna_patchcore), nothing unpickled."""
    optuna = pytest.importorskip("optuna")
    marker = tmp_path / "MARKER"
    db = tmp_path / "shared" / "optuna.db"
    db.parent.mkdir()
    _shared_study_with_a_cmaes_state(optuna, db, marker)
    proc = run_cli(["--multirun", "hydra/sweeper=optuna", "hydra/sweeper/sampler=cmaes",
                    "hydra.sweeper.study_name=patchcore", "hydra.sweeper.direction=maximize",
                    f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_trials=1",
                    "model.coreset_ratio=interval(0.01,0.3)", "model.smoothing_sigma=interval(0.0,8.0)",
                    *TINY[:3], "dataset.resize=32", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f"cache.dir={tmp_path / 'cache'}"], env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert not marker.exists(), "a CMA-ES state stored in the shared study ran: " + proc.stderr[-400:]
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr.strip().splitlines()[-1], proc.stderr[-400:]


def test_a_sweep_dir_preseeded_with_submitit_job_pickles_is_refused(tmp_path):
    """HELD. Someone who can write the (shared) output folder before the sweep pre-seeds
    ``<sweep>/.submitit/<pid>/<pid>_submitted.pkl`` and ``_0_result.pkl`` for the next pids:
    submitit's local worker loads the first, the launcher the second. The sweep refuses a non-empty
    hydra.sweep.dir before any job starts; nothing is unpickled."""
    marker = tmp_path / "MARKER"
    sweep = tmp_path / "sweep"
    payload = pickle.dumps(_Touch(marker))
    for pid in range(os.getpid(), os.getpid() + 200):
        folder = sweep / ".submitit" / str(pid)
        folder.mkdir(parents=True)
        (folder / f"{pid}_submitted.pkl").write_bytes(payload)
        (folder / f"{pid}_0_result.pkl").write_bytes(payload)
    proc = run_cli(["--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=3", *TINY[:3],
                    "dataset.resize=32", f"hydra.sweep.dir={sweep}", f"cache.dir={tmp_path / 'cache'}"],
                   env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode != 0 and "hydra.sweep.dir" in proc.stderr.strip().splitlines()[-1], proc.stderr[-400:]
    assert not marker.exists()
