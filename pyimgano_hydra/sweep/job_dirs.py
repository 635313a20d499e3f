"""Each job of a sweep gets its own run dir: ``hydra.sweep.subdir`` checked before any job runs.

Hydra writes a job's ``.hydra/`` before any callback of the job runs, so two jobs resolving to
one dir (or one inside another) let the later job rewrite a finished run's record. The checks
resolve the subdir as each job would (``JobDirs``; Optuna's trials before each batch).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pyimgano_hydra.errors import console_line, refuse


def check_subdir(config: DictConfig) -> None:
    """Each job of a sweep gets its own dir inside the (claimed) sweep dir: ``hydra.sweep.subdir``
    must name the job (``hydra.job.num`` or ``.id``), be relative and never climb with ``..``.
    Hydra writes a job's ``.hydra/`` before any callback of the job runs, so a constant subdir
    let a second job rewrite the first one's finished record."""
    from omegaconf import OmegaConf

    subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))
    # ${hydra.runtime.cwd}/..., ${oc.env:X}, ${tag} with tag=a,../../x: absolute or climbing once resolved;
    # the same for jobs 0 and 1 (the text "hydra.job.num", ${oc.select:hydra.job.num_x,same}): shared
    pairs = [(probe_subdir(config, key, value, 0), probe_subdir(config, key, value, 1))
             for key, value in swept_values(config)]
    resolved = [r for pair in pairs for r in pair]
    if not any(key in subdir for key in ("hydra.job.num", "hydra.job.id")) or Path(subdir).is_absolute() \
            or ".." in Path(subdir).parts or any(Path(r).is_absolute() or ".." in Path(r).parts for r in resolved) \
            or any(first and first == second for first, second in pairs):
        refuse(f"hydra.sweep.subdir={subdir}: must be a relative path naming the job (${{hydra.job.num}}), "
                "so that no two jobs share a run dir")
    if subdir != DEFAULT_SUBDIR:  # <num>_...: unique by construction
        jobs = _product_jobs(config)
        if len(jobs) > MAX_PROBED_JOBS and not NUMBERED_FIRST.fullmatch(subdir):
            # job 2000 was never probed: ${tag}${hydra.job.num}, tag=a200,a, seed=range(0,2000): jobs 0 and 2000 in a2000
            refuse(f"hydra.sweep.subdir={subdir}: a sweep of more than {MAX_PROBED_JOBS} jobs must start its "
                    "subdir with ${hydra.job.num} then a separator (or keep the default), so that no two jobs "
                    "share a run dir")
        JobDirs(config).check(0, jobs[:MAX_PROBED_JOBS])


MAX_PROBED_JOBS = 2000
# ${hydra.job.num}, alone or then a literal non-digit: each job's first folder is its own number
NUMBERED_FIRST = re.compile(r"\$\{hydra\.job\.num\}(?:[^0-9$\\].*)?", re.S)
DEFAULT_SUBDIR = "${pyimgano_job_dir:${hydra.job.num},${hydra.sweep.dir},${hydra.overrides.task}}"  # <num>_...
SWEEPERS_OF_THE_PRODUCT = ("hydra_plugins.pyimgano_hydra_sweepers.compose_once.ComposeOnceSweeper",
                           "hydra._internal.core_plugins.basic_sweeper.BasicSweeper")


def _product_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's overrides of a sweeper that runs the product of the values ([] for others)."""
    from omegaconf import OmegaConf

    from pyimgano_hydra.sweep.compose import job_overrides

    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) not in SWEEPERS_OF_THE_PRODUCT:
        return []
    try:
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        params = OmegaConf.to_container(params) if params is not None else {}
        task = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        return job_overrides([f"{k}={v}" for k, v in params.items()] + task)[:MAX_PROBED_JOBS + 1]
    except Exception:  # Hydra refuses the overrides itself
        return []


class JobDirs:
    """Each job's ``hydra.sweep.subdir`` as it would resolve (normalised; "" when only the job can
    resolve it), checked before the job is launched: no two jobs share a dir or nest. Hydra writes a
    job's ``.hydra/`` before any callback: ``${tag}${hydra.job.num}`` with tag=a1,b,a and 4 seeds made
    jobs 0 and 10 both ``a10`` (job 10 rewrote job 0's record); Optuna samples such values too."""

    def __init__(self, config: DictConfig) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        self.text = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))
        self.probe = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
        self.parser = OverridesParser.create()
        self.values: dict[str, tuple] = {}
        self.seen: dict[str, int] = {}  # job dir -> job number
        self.ancestors: dict[str, str] = {}  # each folder above a job dir -> that job dir

    def subdir(self, num: int, overrides: list[str]) -> str:
        """Job ``num``'s dir as Hydra resolves it: with this job's ``hydra.job.override_dirname``, and
        ``${hydra:...}`` read from this job's config (both read the sweep's: ``${hydra.job.override_dirname}
        ${hydra.job.num}`` with tag=x1,b,...,x gave jobs 0 and 10 one dir, unseen)."""
        from omegaconf import OmegaConf, open_dict

        hydra_config = HydraConfig.instance()
        saved = hydra_config.cfg
        try:
            for text in overrides:  # tag='' is the empty string, as the job gets it
                if text not in self.values:
                    override = self.parser.parse_override(text)
                    self.values[text] = (override.key_or_group, override.value(), override)
            with open_dict(self.probe):
                self.probe.hydra.job.num = num
                self.probe.hydra.job.id = str(num)
                self.probe.hydra.overrides.task = list(overrides)
                settings = OmegaConf.select(self.probe, "hydra.job.config.override_dirname", default=None) or {}
                exclude = list(settings.get("exclude_keys") or [])
                lines = sorted(o.input_line for o in (self.values[t][2] for t in overrides)
                               if not o.is_hydra_override() and o.key_or_group not in exclude)
                # as Hydra's config loader: sorted input lines, item_sep between, "=" -> kv_sep
                self.probe.hydra.job.override_dirname = str(settings.get("item_sep", ",")).join(lines).replace(
                    "=", str(settings.get("kv_sep", "=")))
                for key, value, _ in (self.values[text] for text in overrides):
                    OmegaConf.update(self.probe, key, value, force_add=True)
            hydra_config.cfg = self.probe  # ${hydra:job.override_dirname} as the job reads it
            return os.path.normpath(str(OmegaConf.select(self.probe, "hydra.sweep.subdir",
                                                         throw_on_resolution_failure=True)))
        except Exception:  # an interpolation only a job can resolve
            return ""
        finally:
            hydra_config.cfg = saved

    def check(self, first: int, jobs: list) -> None:
        """SystemExit(2) with one line when a job of ``jobs`` (numbered from ``first``) would share
        or nest in the dir of an earlier job (of this call or an earlier one)."""
        for num, overrides in enumerate(jobs, first):
            job_dir = self.subdir(num, list(overrides))
            if not job_dir:
                continue
            if self.seen.setdefault(job_dir, num) != num:
                refuse(f"hydra.sweep.subdir={self.text}: jobs {self.seen[job_dir]} and {num} would share the run "
                        f"dir {job_dir}; name each job with ${{hydra.job.num}} alone or with a separator")
            # tag=,0/ with ${tag}${hydra.job.num}: job 1 in 0/1, inside job 0's run (either order)
            outer = next((str(p) for p in Path(job_dir).parents if str(p) in self.seen), None)
            inner = outer and job_dir or self.ancestors.get(job_dir)
            if outer is not None or inner is not None:
                outer = outer or job_dir
                refuse(f"hydra.sweep.subdir={self.text}: job {self.seen[inner]}'s dir {inner} lies inside job "
                        f"{self.seen[outer]}'s; runs are never written into another run")
            for parent in Path(job_dir).parents:
                self.ancestors.setdefault(str(parent), job_dir)


def _listed_sweeps(config: DictConfig) -> list:
    """The command line's sweeps of listed values, parsed from ``hydra.overrides.task`` as typed (a
    range or interval sweep holds numbers only, and a sampler may draw from range(1,10**9): never
    listed); none when Hydra refuses the overrides itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        task = OmegaConf.to_container(config.hydra.overrides, resolve=False).get("task") or []
        return [override for override in OverridesParser.create().parse_overrides(task)
                if override.is_sweep_override() and not (override.is_range_sweep() or override.is_interval_sweep())]
    except Exception:  # Hydra refuses the overrides itself
        return []


def check_swept_interpolations(config: DictConfig) -> None:
    """A swept value whose ``${...}`` does not resolve is refused before the sweep dir is made:
    Hydra resolves it again in each job's dir name, where it failed with a traceback and left the
    board empty."""
    from hydra.core.override_parser.types import QuotedString
    from omegaconf import OmegaConf, open_dict

    probe = None
    for override in _listed_sweeps(config):
        try:
            values = list(override.sweep_iterator())
        except Exception:  # Hydra refuses it itself
            continue
        key = override.key_or_group
        for value in values:
            value = value.text if isinstance(value, QuotedString) else value  # quoted text keeps its ${...}
            if not (isinstance(value, str) and "${" in value):
                continue
            probe = probe or OmegaConf.create(OmegaConf.to_container(config, resolve=False))
            try:
                with open_dict(probe):
                    OmegaConf.update(probe, key, value, force_add=True)
                OmegaConf.select(probe, key, throw_on_resolution_failure=True)
            except Exception as exc:  # noqa: BLE001 - any resolver's error is this value's
                reason = " ".join(str(exc).split("\n")[0].split())[:200]
                refuse(f"{key}={console_line(value)}: does not resolve ({console_line(reason)}); fix the value, "
                       f"or write it as text: \\${{...}}")


def swept_values(config: DictConfig) -> list[tuple[str | None, str | None]]:
    """(key, value) of each value the command line sweeps over, and (None, None) for the base."""
    pairs: list[tuple[str | None, str | None]] = [(None, None)]
    for override in _listed_sweeps(config):
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # Hydra refuses it itself
            continue
        pairs.extend((override.key_or_group, str(value)) for value in values)
    return pairs


def probe_subdir(config: DictConfig, key: str | None = None, value: str | None = None, num: int = 0,
                  name: str = "hydra.sweep.subdir") -> str:
    """``name`` (``hydra.sweep.subdir``) resolved as job ``num`` would resolve it, with ``key=value`` when
    given ("" when it needs what only a job has): no interpolated value may make it absolute or climb out."""
    from omegaconf import OmegaConf, open_dict

    try:
        probe = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
        with open_dict(probe):
            probe.hydra.job.num = num
            probe.hydra.job.id = str(num)
            if key is not None:
                OmegaConf.update(probe, key, value, force_add=True)
        return str(OmegaConf.select(probe, name, throw_on_resolution_failure=True))
    except Exception:  # an interpolation only a job can resolve
        return ""
