"""Attacker pass Z20 (#16): a shared Optuna study (``hydra.sweeper.storage``) written by someone else,
under pyimgano_hydra's study sweeper (``hydra/sweeper=optuna_patchcore``), without ``trust_targets=true``."""
from __future__ import annotations

import os
import pickle
import threading
import time
import warnings

import pytest

from conftest import TINY, run_cli


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # pickle.dumps only records this; unpickling runs it
        return (os.system, (f"touch {self.path}",))


def _shared_study(optuna, folder, marker) -> tuple[str, str]:
    """A shared study folder: a pickle beside the database, and the override value that loads it."""
    (folder / "p.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    value = "{_target_:joblib.load,_args_:['" + str(folder / "p.pkl") + "']}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    optuna.create_study(study_name="patchcore", storage=storage, direction="maximize")
    return storage, value


def _sweep(tmp_path, storage):
    return run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.study_name=patchcore",
                    "hydra.sweeper.direction=maximize", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=1",
                    "hydra.sweeper.params={model.smoothing_sigma:'interval(0.0,8.0)'}", *TINY[:3],
                    "model.coreset_ratio=0.2", "dataset.resize=32", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f"cache.dir={tmp_path / 'cache'}"], env={"OMP_NUM_THREADS": "1"}, timeout=300)


def test_a_trial_written_into_the_shared_study_mid_sweep_never_becomes_the_sweeps_best(tmp_path):
    """HOLE (wrong-result; code-exec one step away). ``StudySweeperImpl._configure_trials`` checks the
    stored trials once, at the first batch (``stored_params_in``), and each trial asked; but at the end
    hydra-optuna-sweeper writes ``study.best_trial.params`` -- read fresh from the database -- to
    ``<sweep>/optimization_results.yaml``. A colleague writing the shared study while job 0 runs adds a
    COMPLETE trial (value 99.0) with the foreign param ``+model.z20={_target_:joblib.load,_args_:[<pickle>]}``:
    observed rc 0, ``optimization_results.yaml`` says ``best_params: {+model.z20: '{_target_:joblib.load,
    ...}'}``, ``best_value: 99.0`` (no job of the sweep ran it; the leaderboard disagrees). docs/SWEEPS.md
    says that file "holds the best parameters": re-running them as overrides loads the pickle. The
    refusal message itself promises a stored trial never becomes "the sweep's best". Expected: the
    recorded best is a trial the sweep checked (params inside hydra.sweeper.params), or the sweep
    stops in one line naming hydra.sweeper.storage."""
    optuna = pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    marker = tmp_path / "MARKER"
    shared = tmp_path / "shared"
    shared.mkdir()
    storage, value = _shared_study(optuna, shared, marker)
    injected = threading.Event()

    def colleague() -> None:  # writes the shared study while job 0 runs
        deadline = time.monotonic() + 240
        while not any((tmp_path / "sweep").glob("0*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.load_study(study_name="patchcore", storage=storage).add_trial(
                create_trial(value=99.0, params={"+model.z20": value},
                             distributions={"+model.z20": CategoricalDistribution([value])}))
        injected.set()

    thread = threading.Thread(target=colleague, daemon=True)
    thread.start()
    proc = _sweep(tmp_path, storage)
    thread.join(5)
    assert injected.is_set(), "the colleague's trial was not written during the sweep"
    assert not marker.exists(), proc.stderr[-400:]
    results = tmp_path / "sweep" / "optimization_results.yaml"
    if proc.returncode != 0:
        assert "hydra.sweeper.storage" in proc.stderr.strip().splitlines()[-1], proc.stderr[-400:]
        return
    text = results.read_text()
    assert "+model.z20" not in text and "joblib" not in text and "99.0" not in text, \
        "a trial nobody in this sweep ran was recorded as its best:\n" + text


def test_held_an_enqueued_trials_fixed_params_never_reach_a_job(tmp_path):
    """HELD. A WAITING trial enqueued by another writer of the shared study (``enqueue_trial``: fixed
    params in its system attrs, no params yet, so ``stored_params_in`` sees nothing) with
    ``model.smoothing_sigma=1e9`` (out of range) and ``+model.z20={_target_:joblib.load,...}`` (foreign):
    Optuna 2.10 uses a fixed param only when it is inside the distribution and only for names the sweeper
    suggests, so job 0 gets a sampled sigma in [0, 8) and no ``+model.z20``."""
    optuna = pytest.importorskip("optuna")
    marker = tmp_path / "MARKER"
    shared = tmp_path / "shared"
    shared.mkdir()
    storage, value = _shared_study(optuna, shared, marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.load_study(study_name="patchcore", storage=storage).enqueue_trial(
            {"model.smoothing_sigma": 1e9, "+model.z20": value})
    proc = _sweep(tmp_path, storage)
    assert not marker.exists(), proc.stderr[-400:]
    overrides = "".join(path.read_text() for path in (tmp_path / "sweep").rglob(".hydra/overrides.yaml"))
    assert "model.z20" not in overrides and "1000000000" not in overrides, overrides
    assert "model.smoothing_sigma=" in overrides, proc.stderr[-400:]
