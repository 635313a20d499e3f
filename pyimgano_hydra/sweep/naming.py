"""Names of multirun job dirs: ``<job number>_<values of the overrides that vary>``.

The sweep's varying keys are decided once, in the launching process, from the multirun
command line (sweep overrides such as ``model=patchcore,padim``) and the sweeper's
``params`` (Optuna, or BasicSweeper ``hydra.sweeper.params``); they are written to
``<sweep dir>/sweep.json`` before any job starts. Each job then resolves
``hydra.sweep.subdir`` through the ``pyimgano_job_dir`` resolver, which keeps only those
keys' values from the job's own overrides, file-safe, key names stripped
(``3_padim_tile128``). Without ``sweep.json`` every override value is used.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from pyimgano_hydra.errors import UserError
from pyimgano_hydra.runs.writers import write_json_atomic

SWEEP_FILE = "sweep.json"
MAX_VALUE_CHARS = 32
MAX_NAME_CHARS = 96


def file_safe(value: str) -> str:
    """``value`` with anything but letters, digits, ``.``, ``+`` and ``-`` turned into ``-``."""
    text = re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-.")
    return text or "x"


def _short(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    return f"{text[:limit - 7]}~{digest}"


def split_override(override: str) -> tuple[str, str]:
    """``('model', 'padim')`` from ``model=padim`` (also ``+key=v``, ``~key``, ``key@pkg=v``)."""
    key, sep, value = str(override).partition("=")
    key = key.lstrip("+~")
    return key, (value if sep else "")


def short_value(value: str) -> str:
    """Long floats (Optuna's picks) to 4 significant digits, then :func:`file_safe`."""
    try:
        number = float(value)
    except ValueError:
        return file_safe(value)
    if "." in value and len(value) > 7:
        value = f"{number:.4g}"
    return file_safe(value)


def job_name(num: Any, overrides: Iterable[str], varying: Sequence[str] | None) -> str:
    """``<num>_<v1>_<v2>``: the values of the varying keys (all keys when ``varying`` is None)."""
    keep = None if varying is None else set(varying)
    values = [short_value(value) for key, value in map(split_override, overrides)
              if keep is None or key in keep]
    values = [_short(v, MAX_VALUE_CHARS) for v in values]
    name = "_".join([str(num), *values])
    return _short(name, MAX_NAME_CHARS)


def varying_keys(config: DictConfig) -> list[str]:
    """Keys a multirun sweeps over: sweep overrides on the command line + ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    task = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    parser = OverridesParser.create()
    for override in parser.parse_overrides(task):
        if override.is_sweep_override():
            keys.append(split_override(override.input_line or "")[0])
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if isinstance(params, DictConfig):
        keys.extend(str(k) for k in params.keys())
    return list(dict.fromkeys(keys))


def write_sweep_file(sweep_dir: str | Path, config: DictConfig, extra: dict | None = None) -> dict:
    """Record what the sweep varies (``sweep.json`` at the sweep root); returns the record."""
    record: dict[str, Any] = {
        "varying": varying_keys(config),
        "overrides": list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []),
        "sweeper": OmegaConf.select(config, "hydra.sweeper._target_", default=None),
        "launcher": OmegaConf.select(config, "hydra.launcher._target_", default=None),
        "launcher_pid": os.getpid(),
        **(extra or {}),
    }
    write_json_atomic(Path(sweep_dir) / SWEEP_FILE, record)
    return record


MAX_PLANNED_JOBS = 100_000  # rows of a board's plan; a longer one is no sweep this app started


def read_sweep_file(sweep_dir: str | Path) -> dict | None:
    """``sweep.json`` with ``varying`` (key strings or None) and ``planned`` (lists of override
    strings) checked; None when missing, not a regular JSON file or of another shape."""
    from pyimgano_hydra.runs.trust import read_json_file

    try:
        record = read_json_file(Path(sweep_dir) / SWEEP_FILE, follow=False)
    except UserError:
        return None
    strings = lambda items: isinstance(items, list) and all(isinstance(i, str) for i in items)  # noqa: E731
    if not isinstance(record, dict) or not (record.get("varying") is None or strings(record["varying"])):
        return None
    planned = record.get("planned")
    if planned is not None and not (isinstance(planned, list) and len(planned) <= MAX_PLANNED_JOBS
                                    and all(strings(job) for job in planned)):
        return None
    return record


def job_dir_resolver(num: Any, sweep_dir: Any, overrides: Any) -> str:
    """``${pyimgano_job_dir:...}``: the job's folder name (registered by ``pyimgano_hydra.resolvers``);
    Hydra resolves it right before it makes the job's dir, so a swapped sweep dir stops the sweep there."""
    from pyimgano_hydra.runs.layout import sweep_dir_swapped

    swapped = sweep_dir_swapped(Path(str(sweep_dir)))
    if swapped:
        raise UserError(f"hydra.sweep.dir: {swapped}; a sweep never writes through it: start it again")
    record = read_sweep_file(str(sweep_dir))
    items = list(overrides) if isinstance(overrides, (ListConfig, list, tuple)) else []
    name = job_name(num, [str(o) for o in items], record.get("varying") if record else None)
    if os.path.islink(os.path.join(str(sweep_dir), name)):  # Hydra would write the job's record through it
        raise UserError(f"hydra.sweep.dir: the job dir {name} was made a link while the sweep ran; a sweep never "
                        "writes through it: start it again")
    return name

