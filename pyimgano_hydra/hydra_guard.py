"""Checks inside Hydra's own config loading, where no callback reaches: every config file is
checked as it is read (``config_sources.check_config_file``: never from a run dir, however the
path was spelled), a file of the user's may not set ``hydra.hydra_logging`` (Hydra opens those
handlers before any check), and each sweep job's config keeps the Hydra settings checked for the
whole sweep (Hydra writes a job's record and log before any callback of the job runs).

Installed by every entry point before Hydra starts, and on import in a launcher's worker process
(``pyimgano_hydra/__init__.py``), which composes its jobs' configs itself."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyimgano_hydra.errors import UserError, console_line

# Hydra settings a sweep job may not change: checked once on the sweep's config, used per job
SAME_FOR_EVERY_JOB = ("output_subdir", "job_logging", "hydra_logging", "sweep", "run", "callbacks", "launcher",
                      "sweeper", "searchpath", "job.name", "job.chdir", "job.env_set", "job.env_copy")
_TRUSTED_PACKAGES = ("hydra.", "hydra_plugins.", "pyimgano_hydra.")  # installed code's own configs


def guard_hydra(scan: bool = True) -> None:
    """Patch the config sources and loaders Hydra has (``scan``: register them all first); once."""
    from hydra.core.config_loader import ConfigLoader
    from hydra.plugins.config_source import ConfigSource

    if scan:
        from hydra.core.plugins import Plugins

        Plugins.instance()  # registers the config sources
    for source in _subclasses(ConfigSource):
        if source.scheme() in _READ_FILE and not getattr(source.load_config, "guarded", False):
            source.load_config = _checked_read(source.load_config, _READ_FILE[source.scheme()])
        if source.scheme() == "pkg":
            for name in ("available", "is_group", "is_config", "list", "load_config"):
                method = vars(source).get(name)
                if method is not None and not getattr(method, "package_checked", False):
                    setattr(source, name, _package_checked(method))
    for loader in _subclasses(ConfigLoader):  # not ours (ComposedOnce): it hands out what Hydra's loader composed
        if "load_sweep_config" in vars(loader) and not loader.__module__.startswith("pyimgano_hydra") \
                and not getattr(loader.load_sweep_config, "guarded", False):
            loader.load_sweep_config = _checked_job(loader.load_sweep_config)
        if "load_configuration" in vars(loader) and not loader.__module__.startswith("pyimgano_hydra") \
                and not getattr(loader.load_configuration, "guarded", False):
            loader.load_configuration = _checked_composed(loader.load_configuration)


def _checked_composed(load):
    def load_configuration(self, *args, **kwargs):
        config = load(self, *args, **kwargs)
        check_hydra_logging(config)
        return config

    load_configuration.guarded = True
    return load_configuration


def check_hydra_logging(config: Any) -> None:
    """``UserError`` unless the composed ``hydra.hydra_logging`` is one of Hydra's own options, as
    shipped: Hydra opens its handlers right after composing, before any check, and a file of the
    user's reaches it by more routes than a key (a ``# @package hydra.hydra_logging`` header, a
    ``group@hydra.hydra_logging`` default or override)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(config, DictConfig) or OmegaConf.select(config, "hydra.hydra_logging", default=None) is None:
        return
    if OmegaConf.to_container(config.hydra.hydra_logging, resolve=False) not in _hydra_logging_options():
        raise UserError("hydra.hydra_logging: is not one of Hydra's own options (default, disabled, none, "
                        "hydra_debug) as shipped: a config file or override changed it, and Hydra opens its "
                        "handlers before any check (they could write into a run); set file handlers under "
                        "hydra.job_logging")


def _hydra_logging_options() -> list:
    """Hydra's own ``hydra/hydra_logging`` option files, parsed (read once)."""
    if not _HYDRA_LOGGING:
        from importlib import resources

        import yaml

        folder = resources.files("hydra.conf").joinpath("hydra", "hydra_logging")
        _HYDRA_LOGGING.extend(yaml.safe_load(entry.read_text(encoding="utf-8")) for entry in folder.iterdir()
                              if entry.name.endswith(".yaml"))
    return _HYDRA_LOGGING


_HYDRA_LOGGING: list = []


def _package_checked(method):
    def checked(self, *args, **kwargs):
        check_package_source(self.path)
        return method(self, *args, **kwargs)

    checked.package_checked = True
    checked.guarded = getattr(method, "guarded", False)
    return checked


def check_package_source(package: str) -> None:
    """``UserError`` when a ``pkg://`` config source's package (or a package on its dotted way) lies in
    a run dir: Hydra imports it to list its configs, running its ``__init__.py`` (a preset's search
    path into a received run dir ran its code). Found without importing anything."""
    import sys
    from importlib.machinery import PathFinder

    from pyimgano_hydra.runs.claim import holds_a_run, inside_a_run

    names = str(package).split(".")
    if not names[0] or str(package).startswith(_TRUSTED_PACKAGES) or names[0] in sys.modules:
        return  # installed code's own, or imported already (by the user's own program)
    spec = PathFinder.find_spec(names[0])
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for part in [None, *names[1:]]:
        folders = [os.path.join(f, part) for f in folders] if part else folders
        for folder in folders:
            outer = folder if holds_a_run(Path(folder)) else inside_a_run(Path(folder))
            if outer is not None:
                raise UserError(f"hydra.searchpath: pkg://{console_line(package)[:200]}: its package lies in the "
                                f"run dir {outer}; configs (and code) never come from a run dir")


def _subclasses(cls: type) -> list[type]:
    found, pending = [], list(cls.__subclasses__())
    while pending:
        found.append(pending.pop())
        pending += found[-1].__subclasses__()
    return found


def _file_source_path(source: Any, name: str) -> str | None:
    return os.path.join(source.path, name)


def _package_source_path(source: Any, name: str) -> str | None:
    from importlib import resources

    found = resources.files(source.path).joinpath(name)
    return os.fspath(found) if isinstance(found, os.PathLike) else None  # a zipped package holds no run


_READ_FILE = {"file": _file_source_path, "pkg": _package_source_path}  # where a source reads a config


def _checked_read(load, where):
    import yaml

    from pyimgano_hydra.config_sources import check_config_file

    def load_config(self, config_path: str):
        path = where(self, self._normalize_file_name(config_path))
        try:
            if path is not None:
                check_config_file(path)
                _check_yaml_size(path)
            result = load(self, config_path)
        except yaml.YAMLError as exc:  # Hydra parses the text: its error names no file
            mark = getattr(exc, "problem_mark", None)
            line = f", line {mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())[:200]
            raise UserError(f"{console_line(path or config_path)}{line}: not valid YAML ({problem}); fix the file "
                            "(tags such as !!python/... are never read)") from None
        if path is not None and not _installed(self, path) and (
                config_path.startswith("hydra/hydra_logging") or _has_key(result.config, "hydra_logging")):
            raise UserError(f"{console_line(path)}: sets hydra.hydra_logging, whose handlers Hydra opens before any "
                            "check (they could write into a run); set file handlers under hydra.job_logging")
        return result

    load_config.guarded = True
    return load_config


MAX_CONFIG_BYTES = 16 << 20
MAX_CONFIG_NODES = 1_000_000  # values once YAML aliases are expanded (OmegaConf copies each)


def _check_yaml_size(path: str) -> None:
    """``UserError`` for a config file over 16 MB, or whose YAML aliases expand past a million values:
    480 bytes of nested aliases took GBs in OmegaConf and ignored SIGTERM. Counted on the parsed node
    graph, where an alias is the node it names (nothing is expanded)."""
    import yaml

    if not os.path.isfile(path):
        return  # Hydra reports a missing file itself
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise UserError(f"{console_line(path)}: a config file over {MAX_CONFIG_BYTES >> 20} MB; refused")
    with open(path, encoding="utf-8", errors="replace") as handle:
        try:
            root = yaml.compose(handle, Loader=yaml.SafeLoader)
        except RecursionError:
            raise UserError(f"{console_line(path)}: nested too deep to read; refused") from None
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        key = id(node)
        if key not in sizes:
            sizes[key] = 0  # a node that holds itself (an alias inside its anchor) counts once
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
            sizes[key] = min(1 + sum(size(child) for child in children), MAX_CONFIG_NODES + 1)
        return sizes[key]

    try:
        total = size(root) if root is not None else 0
    except RecursionError:
        raise UserError(f"{console_line(path)}: nested too deep to read; refused") from None
    if total > MAX_CONFIG_NODES:
        raise UserError(f"{console_line(path)}: its YAML aliases expand past {MAX_CONFIG_NODES:,} values; "
                        "refused (write the values out, or use fewer nested aliases)")


def _installed(source: Any, path: str) -> bool:
    """A config shipped by installed code (Hydra's, a plugin's, ours), not a file of the user's."""
    from pyimgano_hydra.paths import conf_dir

    if source.scheme() == "pkg":
        return str(source.path).startswith(_TRUSTED_PACKAGES)
    return os.path.realpath(path).startswith(os.path.realpath(conf_dir()) + os.sep)


def _has_key(node: Any, key: str) -> bool:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        return key in node or any(_has_key(value, key) for value in node.values())
    if isinstance(node, list):
        return any(_has_key(value, key) for value in node)
    return False


def _checked_job(load):
    def load_sweep_config(self, master_config, sweep_overrides):
        guard_hydra(scan=False)  # config sources a worker process loaded since
        config = load(self, master_config, sweep_overrides)
        check_job_config(master_config, config, sweep_overrides)
        return config

    load_sweep_config.guarded = True
    return load_sweep_config


def check_job_config(master: Any, job: Any, overrides: Any = ()) -> None:
    """``UserError`` when a sweep job's config changes a Hydra setting of ``SAME_FOR_EVERY_JOB``
    (a swept preset that moves the job log or ``.hydra/`` into a completed run)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(master, DictConfig) or OmegaConf.select(master, "hydra", default=None) is None:
        return
    before = OmegaConf.to_container(master.hydra, resolve=False)
    after = OmegaConf.to_container(job.hydra, resolve=False)
    for key in SAME_FOR_EVERY_JOB:
        changed = _difference(_at(before, key), _at(after, key), f"hydra.{key}")
        if changed:
            raise UserError(f"{changed}: job {console_line(' '.join(map(str, overrides)))} changes it; a sweep's "
                            "Hydra settings are the same for every job (set them for the whole sweep)")


def _difference(before: Any, after: Any, key: str) -> str | None:
    """The dotted key of the first difference between two config trees, or None."""
    if before == after:
        return None
    if isinstance(before, dict) and isinstance(after, dict):
        for name in [*before, *(k for k in after if k not in before)]:
            found = _difference(before.get(name), after.get(name), f"{key}.{name}")
            if found:
                return found
    return key


def _at(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
