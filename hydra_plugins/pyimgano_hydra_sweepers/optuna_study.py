"""``hydra/sweeper=optuna_*`` presets: Optuna with a study-wide failure budget and resume.

The behaviour lives in ``pyimgano_hydra.sweep.optuna``; this module only binds it to
hydra-optuna-sweeper, when that is installed. Hydra imports every plugin module at start-up:
optuna itself is imported only when the sweeper is built.
"""
from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the [optuna] extra is not installed: no plugin
    OptunaSweeper = None  # type: ignore[assignment,misc]

if OptunaSweeper is not None:

    class OptunaStudySweeper(OptunaSweeper):
        """Hydra's Optuna sweeper; failures count against the whole study; stored studies continue."""

        def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: Any, n_trials: int,
                     n_jobs: int, max_failure_rate: float, search_space: Any, custom_search_space: Any,
                     params: Any) -> None:
            from pyimgano_hydra.sweep.optuna import study_sweeper

            self.sweeper = study_sweeper(sampler, direction, storage, study_name, n_trials, n_jobs,
                                         max_failure_rate, search_space, custom_search_space, params)
