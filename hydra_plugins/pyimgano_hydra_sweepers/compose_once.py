"""``hydra/sweeper=compose_once`` (the default): Hydra's basic sweep, each job's config composed
once. The logic lives in ``pyimgano_hydra.sweep.compose``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf


class ComposeOnceSweeper(Sweeper):
    """Runs the product of the sweep overrides in batches; an in-process launcher gets the
    configs the batch check composed. A failed job ends the sweep after its batch (as Hydra's
    basic sweeper does), but the end-of-sweep callbacks still run (the final leaderboard)."""

    def __init__(self, max_batch_size: int | None = None, params: dict | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: Any, config: DictConfig) -> None:
        from pyimgano_hydra.sweep.compose import BASIC_LAUNCHER, KEEP_AT_MOST, ComposedOnce

        # every job's config comes through ComposedOnce, which checks the sweep dir first; only
        # an in-process launcher reuses the configs the batch check composed
        in_process = OmegaConf.select(config, "hydra.launcher._target_", default=None) == BASIC_LAUNCHER
        hydra_context = HydraContext(config_loader=ComposedOnce(hydra_context.config_loader,
                                                                KEEP_AT_MOST if in_process else 0),
                                     callbacks=hydra_context.callbacks)
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        loader = self.hydra_context.config_loader
        for overrides in batch:
            loader.check(self.config, overrides)

    def sweep(self, arguments: list[str]) -> Any:
        from pyimgano_hydra.sweep.compose import batches, job_overrides

        jobs = job_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments),
                             self.hydra_context.config_loader)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        from pyimgano_hydra.interrupt import workers_may_die

        returns, first = [], 0
        for batch in batches(jobs, self.max_batch_size):
            self.validate_batch_is_legal(batch)
            try:
                with workers_may_die():
                    results = self.launcher.launch(batch, initial_job_idx=first)
                for result in results:
                    _ = result.return_value  # a failed job raises here, after its batch, as in Hydra's
            except KeyboardInterrupt:  # the exit handler records the stopped jobs, then writes the board
                raise
            except BaseException:
                self.hydra_context.callbacks.on_multirun_end(config=self.config)  # Hydra skips it then
                raise
            first += len(batch)
            returns.append(results)
        return returns
