"""Optuna studies that survive failed trials and continue across invocations.

Hydra's Optuna sweeper (1.3) checks ``max_failure_rate`` per batch: with ``n_jobs=1`` one
failed trial is a 100 % batch and ends the study, and a NaN objective crashes it. Here the
rate is study-wide: the study stops only when more than ``max_failure_rate × n_trials``
trials failed (a failed job, or a completed one without the leaderboard metric); a failed
trial is told to Optuna as FAIL and the search goes on. A study loaded from ``storage`` that
already holds trials gets a freshly seeded sampler, so it continues instead of proposing
its first trial again.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


class FailureBudgetExceeded(RuntimeError):
    """More trials failed than the study's ``max_failure_rate`` allows."""


def failure_budget(max_failure_rate: float, n_trials: int) -> int:
    """How many trials of the study may fail before it stops."""
    return int(math.floor(max_failure_rate * n_trials + 1e-9))


def _objective_ok(ret: Any) -> bool:
    if getattr(ret.status, "name", "") != "COMPLETED":
        return False
    try:
        value = ret._return_value
        values = value if isinstance(value, (list, tuple)) else [value]
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


class BudgetLauncher:
    """Wraps the sweep's launcher: counts failed trials over the whole study.

    A failed trial comes back as a completed job with no value, which Optuna's sweeper tells
    the study as FAIL; past the budget the first failure's error is raised.
    """

    def __init__(self, launcher: Any, sweeper: Any, max_failure_rate: float) -> None:
        self.launcher = launcher
        self.sweeper = sweeper
        self.max_failure_rate = max_failure_rate
        self.failed: list[str] = []
        self.first_error: BaseException | None = None
        self.job_dirs: Any = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        from pyimgano_hydra.sweep.job_dirs import JobDirs

        if self.job_dirs is None and getattr(self.sweeper, "config", None) is not None:
            self.job_dirs = JobDirs(self.sweeper.config)
        if self.job_dirs is not None:  # sampled values in hydra.sweep.subdir: no two trials share a dir
            self.job_dirs.check(initial_job_idx, job_overrides)
        from pyimgano_hydra.interrupt import workers_may_die

        try:
            with workers_may_die():
                returns = list(self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx))
        except KeyboardInterrupt:  # the exit handler records the stopped jobs, then writes the board
            raise
        except BaseException:
            self.sweeper.hydra_context.callbacks.on_multirun_end(config=self.sweeper.config)  # the board so far
            raise
        out = []
        for ret in returns:
            if _objective_ok(ret):
                out.append(ret)
                continue
            value = ret._return_value
            if isinstance(value, BaseException) and self.first_error is None:
                self.first_error = value
            reason = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else f"objective {value!r}"
            self.failed.append(" ".join(ret.overrides or []))
            log.warning("trial failed (%s), %d failed so far; the study goes on within max_failure_rate=%s",
                        reason.splitlines()[0] if reason else "", len(self.failed), self.max_failure_rate)
            out.append(dataclasses.replace(ret, status=type(ret.status).COMPLETED, _return_value=None))
        budget = failure_budget(self.max_failure_rate, int(self.sweeper.n_trials))
        if len(self.failed) > budget:
            message = (f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: {len(self.failed)} of "
                       f"{self.sweeper.n_trials} trials failed (at most {budget} may); see the leaderboard's errors")
            raise FailureBudgetExceeded(message) from self.first_error
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)


def stored_trials(storage: Any, study_name: str | None) -> int:
    """Trials already stored for ``study_name`` (0 when there is no storage or no such study)."""
    if not storage or not study_name:
        return 0
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def continue_study(sampler: Any, storage: Any, study_name: str | None) -> int:
    """Reseed ``sampler`` when the study already has trials; return how many it has. CMA-ES with a
    storage is refused: Optuna's CMA-ES sampler unpickles the state stored with the study's newest trial
    at every trial it picks (a handed-over database, or a colleague writing the shared study mid-sweep,
    ran code)."""
    if storage and "CmaEs" in type(sampler).__name__:
        from pyimgano_hydra.errors import UserError
        from pyimgano_hydra.runs.claim import CMAES_WITH_STORAGE  # the pre-flight twin, for a sweep without it

        pickled = _pickled_sampler_state(storage, study_name)
        held = f"study {study_name!r} stores a pickled CMA-ES state ({pickled}); " if pickled else ""
        raise UserError(f"hydra.sweeper.storage={storage}: {held}{CMAES_WITH_STORAGE}")
    existing = stored_trials(storage, study_name)
    if existing and hasattr(sampler, "reseed_rng"):
        sampler.reseed_rng()
        log.info("continuing study %s: %d trials stored; sampler reseeded", study_name, existing)
    return existing


def _pickled_sampler_state(storage: Any, study_name: str | None) -> str | None:
    """The first trial system attribute holding a pickled CMA-ES optimizer, or None."""
    if not storage or not study_name:
        return None
    import optuna

    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).trials
    except KeyError:
        return None
    return next((key for trial in trials for key in trial.system_attrs
                 if key.split(":")[0].endswith("cma") and "optimizer" in key), None)


def stored_params_in(trial: Any, search_space: dict, storage: Any) -> None:
    """Refuse a trial handed out with params outside the search space (a forged or foreign
    optuna.db: hydra-optuna-sweeper turns every param of a trial into an override of its job)."""
    from pyimgano_hydra.errors import UserError, console_line

    for name, value in trial.params.items():
        distribution = search_space.get(name)
        inside = distribution is not None
        try:
            inside = inside and distribution._contains(distribution.to_internal_repr(value))
        except (TypeError, ValueError):
            inside = False
        if not inside:
            raise UserError(f"hydra.sweeper.storage={storage}: trial {trial.number} holds {console_line(name)[:80]}="
                            f"{console_line(str(value))[:80]}, outside hydra.sweeper.params (a trial handed out "
                            "becomes a job's overrides, a stored one the sweep's best): continue a study with its "
                            "own search space, or start a new study")


def fail_running(trials: list) -> None:
    """Tell the study that each of ``trials`` still RUNNING failed (the sweep stopped under it)."""
    import optuna

    for trial in trials:
        try:
            if trial.study._storage.get_trial(trial._trial_id).state == optuna.trial.TrialState.RUNNING:
                trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except Exception as exc:  # noqa: BLE001 - a broken database must not hide why the sweep stopped
            log.warning("could not mark trial %s failed in the study (%s)", trial.number, type(exc).__name__)


def _raised_by_storage(exc: BaseException) -> bool:
    """``exc`` comes from what a stored study feeds: Optuna or SQLAlchemy anywhere on its way (a
    100,000-deep JSON attribute failed in json's decoder), or hydra-optuna-sweeper raising it."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    deepest = frames[-1] if frames else ""
    return (any(name.split(".")[0] in ("optuna", "sqlalchemy") for name in (type(exc).__module__, *frames))
            or deepest.startswith("hydra_plugins.hydra_optuna_sweeper"))


def study_sweeper(sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int,
                  n_jobs: int, max_failure_rate: float, search_space: Any, custom_search_space: Any,
                  params: Any) -> Any:
    """hydra-optuna-sweeper's implementation with the study-wide budget and resume."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    from pyimgano_hydra.errors import ConfigError, UserError

    if not 0.0 <= float(max_failure_rate) <= 1.0:
        raise ConfigError(f"hydra.sweeper.max_failure_rate: {max_failure_rate} is not in [0, 1]")
    for key, count in (("n_trials", n_trials), ("n_jobs", n_jobs)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"hydra.sweeper.{key}: must be an integer >= 1, got {count!r}")
    directions = direction if isinstance(direction, (list, tuple)) or hasattr(direction, "_content") else [direction]
    for each in directions:
        if str(getattr(each, "name", each)).lower() not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction: must be maximize or minimize (or a list of them), "
                              f"got {each!r}")

    class StudySweeperImpl(OptunaSweeperImpl):
        def setup(self, **kwargs: Any) -> None:
            super().setup(**kwargs)
            self.launcher = BudgetLauncher(self.launcher, self, float(max_failure_rate))
            self.asked: list = []
            self.checked_study = False

        def _configure_trials(self, trials: list, search_space_distributions: dict, fixed_params: dict) -> Any:
            self.asked = list(trials)
            # what the database holds and hands out, before anything is suggested: every stored trial
            # (TPE learns from them, the best one is the sweep's result) and the ones asked now
            stored = trials[0].study.get_trials(deepcopy=False) if trials and not self.checked_study else []
            self.checked_study = True
            self.search_space = search_space_distributions
            for trial in [*stored, *trials]:
                stored_params_in(trial, search_space_distributions, self.storage)
            return super()._configure_trials(trials, search_space_distributions, fixed_params)

        def _check_stored_after(self) -> None:
            """The study as the sweep ends: a trial another writer of a shared study added meanwhile (never
            asked, so never checked) was written as the sweep's best; its results file is taken back."""
            search_space = getattr(self, "search_space", None)
            if not self.storage or search_space is None:
                return
            import optuna

            try:
                for trial in optuna.load_study(study_name=self.study_name, storage=self.storage).get_trials(
                        deepcopy=False):
                    stored_params_in(trial, search_space, self.storage)
            except UserError:
                Path(str(self.config.hydra.sweep.dir), "optimization_results.yaml").unlink(missing_ok=True)
                raise

        def _check_search_space(self, arguments: list[str]) -> None:
            """Each swept key's distribution as Optuna will build it; a bad one is a ConfigError
            naming its key (bounds reversed, a log interval from 0: Optuna's line named none)."""
            from hydra.core.override_parser.overrides_parser import OverridesParser
            from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

            swept = [*self._parse_sweeper_params_config(), *arguments]
            for override in OverridesParser.create().parse_overrides(swept):
                try:
                    create_optuna_distribution_from_override(override)
                except (ValueError, TypeError) as exc:
                    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise ConfigError(f"{override.input_line or override.get_key_element()}: not a search space "
                                      f"Optuna can sample ({line})") from None

        def sweep(self, arguments: list[str]) -> None:
            self._check_search_space(arguments)
            try:
                continue_study(self.sampler, self.storage, self.study_name)
                result = super().sweep(arguments)
                self._check_stored_after()
                return result
            except Exception as exc:  # noqa: BLE001 - only Optuna's and its database's are named here
                fail_running(self.asked)
                if not self.storage or isinstance(exc, UserError) or not _raised_by_storage(exc):
                    raise
                line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"hydra.sweeper.storage={self.storage}: study {self.study_name!r} cannot be "
                                f"continued ({line}); name a new storage or study_name") from exc
            except BaseException:  # interrupted: no trial of this sweep stays RUNNING in the study
                fail_running(self.asked)
                raise

    # max_failure_rate=1.0: the base class's per-batch check never fires; BudgetLauncher counts
    return StudySweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs, 1.0,
                            search_space, custom_search_space, params)
