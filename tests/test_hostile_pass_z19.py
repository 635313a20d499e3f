"""Attacker pass Z19 (#16): code execution from a shared Optuna study, without ``trust_targets=true``:
a trial the study hands out carries params (names and values) nobody typed."""
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


def _shared_study_with_a_waiting_trial(optuna, folder, marker) -> str:
    """What a colleague writing the shared study folder leaves: a pickle beside the database and one
    WAITING trial (the next one ``study.ask`` hands out) holding a param outside the search space,
    ``+model.z19`` = ``{_target_: joblib.load, _args_: [<the pickle>]}`` (a Categorical of that one
    string: Optuna stores it as plain JSON, nothing pickled in the database)."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    (folder / "p.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    value = "{_target_:joblib.load,_args_:['" + str(folder / "p.pkl") + "']}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.create_study(study_name="patchcore", storage=storage, direction="maximize")
    study.add_trial(create_trial(state=TrialState.WAITING, params={"+model.z19": value},
                                 distributions={"+model.z19": CategoricalDistribution([value])}))
    return storage


def _sweep(tmp_path, storage, *sweeper):
    return run_cli(["--multirun", *sweeper, "hydra.sweeper.study_name=patchcore", "hydra.sweeper.direction=maximize",
                    f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=1",
                    *TINY[:3], "model.coreset_ratio=0.2", "dataset.resize=32", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f"cache.dir={tmp_path / 'cache'}"], env={"OMP_NUM_THREADS": "1"}, timeout=300)


def test_hydras_own_optuna_sweeper_never_turns_a_stored_trials_foreign_param_into_a_job_override(tmp_path):
    """HOLE (code-exec). hydra-optuna-sweeper builds each job's overrides from ``trial.params``: every
    param the trial holds, not only those of ``hydra.sweeper.params``. A WAITING trial that another
    writer of the shared study (``hydra.sweeper.storage=sqlite:///<shared>/optuna.db``) added is what
    ``study.ask`` hands out first; its param ``+model.z19={_target_:joblib.load,_args_:[<shared>/p.pkl]}``
    becomes job 0's override, and ``build(model)`` instantiates the nested node (Hydra's target
    blocklist stops ``os.system`` but not ``joblib.load``), which unpickles the colleague's file.
    Observed: marker written, then "PatchCore.__init__() got an unexpected keyword argument 'z19'".
    ``stored_params_in`` (Pass Z-earlier) refuses such a trial only under our preset
    (``hydra/sweeper=optuna_patchcore``, see the HELD test below), not under Hydra's own
    ``hydra/sweeper=optuna``, as the CMA-ES check was before Z18. Expected: refused before any job in one
    line naming hydra.sweeper.storage, no job dir, nothing unpickled."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("joblib")
    marker = tmp_path / "MARKER"
    shared = tmp_path / "shared"
    shared.mkdir()
    storage = _shared_study_with_a_waiting_trial(optuna, shared, marker)
    proc = _sweep(tmp_path, storage, "hydra/sweeper=optuna", "model.smoothing_sigma=interval(0.0,8.0)")
    assert not marker.exists(), "a stored trial's param ran as a job override: " + proc.stderr[-400:]
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr.strip().splitlines()[-1], proc.stderr[-400:]
    assert not any((tmp_path / "sweep").glob("0*")), "a job ran with the stored trial's overrides"


def test_our_optuna_preset_refuses_a_stored_trials_foreign_param(tmp_path):
    """HELD. The same shared study under ``hydra/sweeper=optuna_patchcore``: ``stored_params_in``
    refuses the WAITING trial's ``+model.z19`` (outside hydra.sweeper.params) before any job."""
    optuna = pytest.importorskip("optuna")
    marker = tmp_path / "MARKER"
    shared = tmp_path / "shared"
    shared.mkdir()
    storage = _shared_study_with_a_waiting_trial(optuna, shared, marker)
    proc = _sweep(tmp_path, storage, "hydra/sweeper=optuna_patchcore",
                  "hydra.sweeper.params={model.smoothing_sigma:'interval(0.0,8.0)'}")
    assert not marker.exists(), proc.stderr[-400:]
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr.strip().splitlines()[-1], proc.stderr[-400:]
