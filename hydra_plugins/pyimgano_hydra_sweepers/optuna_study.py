"""``hydra/sweeper=optuna_*`` presets: Optuna with a study-wide failure budget and resume.

The behaviour lives in ``pyimgano_hydra.sweep.optuna``; this module only binds it to
hydra-optuna-sweeper, when that is installed.
"""
from __future__ import annotations

from typing import Any, List

try:
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the [optuna] extra is not installed: no plugin
    OptunaSweeper = None  # type: ignore[assignment,misc]

if OptunaSweeper is not None:
    from pyimgano_hydra.sweep.optuna import BudgetLauncher, continue_study

    class _StudyImpl(OptunaSweeperImpl):
        def __init__(self, *args: Any, max_failure_rate: float, **kwargs: Any) -> None:
            # the per-batch check of the base class never fires; BudgetLauncher counts study-wide
            super().__init__(*args, max_failure_rate=1.0, **kwargs)
            self.study_max_failure_rate = max_failure_rate

        def setup(self, **kwargs: Any) -> None:
            super().setup(**kwargs)
            self.launcher = BudgetLauncher(self.launcher, self, self.study_max_failure_rate)

        def sweep(self, arguments: List[str]) -> None:
            continue_study(self.sampler, self.storage, self.study_name)
            return super().sweep(arguments)

    class OptunaStudySweeper(OptunaSweeper):
        """Hydra's Optuna sweeper; failures count against the whole study; stored studies continue."""

        def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: Any, n_trials: int,
                     n_jobs: int, max_failure_rate: float, search_space: Any, custom_search_space: Any,
                     params: Any) -> None:
            if not 0.0 <= float(max_failure_rate) <= 1.0:
                raise ValueError(f"hydra.sweeper.max_failure_rate: {max_failure_rate} is not in [0, 1]")
            self.sweeper = _StudyImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                      max_failure_rate=float(max_failure_rate), search_space=search_space,
                                      custom_search_space=custom_search_space, params=params)
