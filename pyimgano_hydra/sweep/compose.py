"""The default sweeper's logic: Hydra's basic sweep (same jobs, order and batches), each job's
config composed once.

Hydra's basic sweeper composes every job's config to check the batch before launching it, and
its basic launcher then composes each one again to run it (≈0.3 s a job). Here the configs the
check composed are kept in :class:`ComposedOnce`, the config loader handed to an in-process
launcher, and each is handed out once; anything else goes to Hydra's own loader."""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

from pyimgano_hydra.errors import ConfigError

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
KEEP_AT_MOST = 64  # composed configs held at once (~0.3-0.5 MB each); the rest of a batch composes twice
# jobs a sweep of the product may list: three range(0,1000) keys in a 150-byte preset were listed as
# 10**9 jobs before any ran (3.8 GB in 20 s and growing)
MAX_SWEEP_JOBS = 100_000
_SAMPLE_INSTEAD = "sweep fewer values, or sample them (hydra/sweeper=optuna_patchcore)"


def sweep_size(override) -> int:
    """How many values a discrete sweep lists, a range counted without listing it."""
    from hydra.core.override_parser.types import RangeSweep

    value = override.value()
    if isinstance(value, RangeSweep) and value.step:
        return max(0, math.ceil((value.stop - value.start) / value.step))
    return len(list(itertools.islice(override.sweep_string_iterator(), MAX_SWEEP_JOBS + 1)))


def job_overrides(arguments: Sequence[str], config_loader: ConfigLoader | None = None) -> list[list[str]]:
    """Every job's overrides, in Hydra's basic-sweep order (job number = index): the product
    of each key's values; a key given twice keeps its first place and its last values."""
    per_key: dict[str, list[str]] = {}
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(list(arguments)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            per_key[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            if (size := sweep_size(override)) > MAX_SWEEP_JOBS:
                raise ConfigError(f"{key}: a sweep of {size:,} values, over the {MAX_SWEEP_JOBS:,} jobs a sweep "
                                  f"may run; {_SAMPLE_INSTEAD}")
            per_key[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"{key}: a {override.value_type.name} sweep needs a sweeper that samples "
                                 f"(e.g. hydra/sweeper=optuna_patchcore); list the values instead")
    if (total := math.prod(len(values) for values in per_key.values())) > MAX_SWEEP_JOBS:
        swept = {key: len(values) for key, values in per_key.items() if len(values) > 1}
        raise ConfigError(f"{', '.join(swept)}: a sweep of {total:,} jobs "
                          f"({' x '.join(map(str, swept.values()))} values), over the {MAX_SWEEP_JOBS:,} a sweep may "
                          f"run; {_SAMPLE_INSTEAD}")
    return [list(job) for job in itertools.product(*per_key.values())]


def batches(jobs: list[list[str]], max_batch_size: int | None) -> list[list[list[str]]]:
    """``jobs`` in launches of at most ``max_batch_size`` (None or -1: one launch)."""
    if max_batch_size is None or max_batch_size == -1:
        return [jobs]
    if max_batch_size <= 0:
        raise HydraException(f"hydra.sweeper.max_batch_size: {max_batch_size} must be positive, -1 or null")
    return [jobs[i:i + max_batch_size] for i in range(0, len(jobs), max_batch_size)]


def check_sweep_dir(config: DictConfig) -> None:
    """Refuse to start a job whose sweep dir was swapped for a link, or holds a link, since the
    sweep began: Hydra writes the job's record right after, whatever ``hydra.sweep.subdir`` is."""
    import os
    from pathlib import Path

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.layout import sweep_dir_swapped

    from omegaconf import OmegaConf

    if OmegaConf.select(config, "hydra.sweep.dir", default=None) is None:
        return
    sweep_dir = Path(str(config.hydra.sweep.dir))
    swapped = sweep_dir_swapped(sweep_dir)
    try:
        linked = None if swapped else next((e.name for e in os.scandir(sweep_dir) if e.is_symlink()), None)
    except OSError:
        linked = None
    if swapped or linked:
        why = swapped or f"{sweep_dir / linked} was made a link while the sweep ran"
        raise UserError(f"hydra.sweep.dir: {why}; a sweep never writes through it: start it again")


class ComposedOnce(ConfigLoader):
    """Hydra's config loader, with the sweep configs :meth:`check` composed kept for one reuse."""

    def __init__(self, loader: ConfigLoader, keep_at_most: int = KEEP_AT_MOST) -> None:
        self.loader = loader
        self.keep_at_most = keep_at_most
        self._kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def check(self, master_config: DictConfig, overrides: Sequence[str]) -> None:
        """Compose one job's config (a bad override raises here, before any job runs); keep it."""
        from pyimgano_hydra.hydra_guard import guard_hydra

        guard_hydra()  # the config handed out later is checked as it is composed here
        config = self.loader.load_sweep_config(master_config, list(overrides))
        if len(self._kept) < self.keep_at_most:
            self._kept[(id(master_config), tuple(overrides))] = config

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        from pyimgano_hydra.hydra_guard import guard_hydra

        guard_hydra()  # a launcher's worker process composes here first
        check_sweep_dir(master_config)
        kept = self._kept.pop((id(master_config), tuple(sweep_overrides)), None)
        return kept if kept is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)

    def __getstate__(self) -> dict:  # a launcher that pickles its context ships no kept configs
        return {**self.__dict__, "_kept": {}}
