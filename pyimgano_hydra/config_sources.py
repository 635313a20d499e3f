"""Where configs may come from: never from a run dir, whose YAML Hydra would compose and whose
``_target_`` entries (callbacks first, before any check of a composed config) it would instantiate.
Checked on the command line before Hydra starts, on the API's overrides, and on the composed
config's sources."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Iterable

from pyimgano_hydra import _inside_a_run_dir
from pyimgano_hydra.errors import UserError, console_line
from pyimgano_hydra.files import walk
from pyimgano_hydra.paths import conf_dir

_PACKAGE_DIR = Path(__file__).resolve().parent
# Hydra's own flags that name a config folder or file (argparse also takes any unambiguous prefix)
_LONG_FLAGS = {"--config-path": "--config-path", "--config-dir": "--config-dir", "--config-name": "--config-name"}
_SHORT_FLAGS = {"-cp": "--config-path", "-cd": "--config-dir", "-cn": "--config-name"}
_UP_OR_ROOT = re.compile(r"(^|[/\\,\[\](){}\s'\"=:])(\.\.([/\\,\])}\s'\"]|$)|/)")
_ADVICE = "copy the configs you trust to a folder of your own"
MAX_WALKED = 20000  # entries of a config folder checked for run dirs and links into them


def source_folders(source: str, relative_to: Iterable[Path] = ()) -> list[str]:
    """The folders a config source (``file://x``, ``pkg://a.b``, or a bare path) may read, real
    paths; a package is looked up on ``sys.path`` by hand (finding it by import would run it)."""
    scheme, sep, path = source.partition("://")
    if not sep:
        scheme, path = "file", source
    if scheme == "pkg":
        parts = [p for p in path.replace("/", ".").split(".") if p]
        roots = [entry or os.getcwd() for entry in sys.path if isinstance(entry, str)]
        return [os.path.realpath(os.path.join(root, *parts)) for root in roots]
    if scheme != "file" or not path:
        return []
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return [os.path.realpath(path)]
    return [os.path.realpath(os.path.join(base, path)) for base in (Path.cwd(), *relative_to)]


def _run_in_tree(folder: str, limit: int = MAX_WALKED) -> str | None:
    """A run dir inside ``folder``, or a link in it leading into one (a preset linked to a run dir's
    YAML, a received run saved among the presets): Hydra composes what it finds there."""
    from pyimgano_hydra import RUN_RECORD_FILES, SWEEP_RECORD_FILES

    seen = 0
    for parent, dirs, files in walk(folder):
        seen += len(dirs) + len(files)
        if seen > limit:
            return None
        if any(name in files or name in dirs for name in RUN_RECORD_FILES + SWEEP_RECORD_FILES):
            return parent
        for name in dirs + files:
            path = os.path.join(parent, name)
            if os.path.islink(path) and _inside_a_run_dir(os.path.realpath(path)):
                return path
    return None


def check_source(key: str, source: str, relative_to: Iterable[Path] = ()) -> None:
    """``UserError`` naming ``key`` when ``source`` may read a folder in a run dir, holds one, or
    links into one."""
    for folder in source_folders(source, relative_to):
        if not os.path.exists(folder):
            continue
        found = folder if _inside_a_run_dir(folder) else _run_in_tree(folder) if os.path.isdir(folder) else None
        if found:
            raise UserError(f"{key}={console_line(source)}: reads a run dir ({console_line(found)}), whose YAML "
                            f"would be composed and instantiated; {_ADVICE}")


def _hydra_flags(argv: list[str]) -> Iterable[tuple[str, str]]:
    """(long flag, value) of Hydra's config flags in ``argv``: ``--config-dir x``, ``--config-d=x``,
    ``-cd x``, ``-cdx``."""
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            names = [name for name in _LONG_FLAGS if len(flag) > 2 and name.startswith(flag)]
            if len(names) == 1:
                yield names[0], value if eq else following
        elif arg.startswith("-"):
            for short, name in _SHORT_FLAGS.items():
                if arg.startswith(short):
                    rest = arg[len(short):]
                    yield name, rest[1:] if rest.startswith("=") else rest or following


def _groups() -> set[str]:
    """The config groups of the packaged configs (``model``, ``hydra/launcher``...)."""
    root = conf_dir()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__"}


def _search_path_entries(value: str) -> list[str]:
    return [token for token in re.split(r"[,\[\]\s'\"]+", value) if token]


def check_config_arguments(arguments: list[str]) -> None:
    """Refuse (``UserError``) a config folder, search path or group option that reads a run dir's
    YAML: ``--config-dir``/``--config-path`` in a run dir, a config name or group option with ``..``
    or an absolute path (``experiment=../../<run>/exp``), ``hydra.searchpath`` naming a run dir.
    Every config file read after this is checked too (``hydra_guard.guard_hydra``)."""
    from pyimgano_hydra.hydra_guard import guard_hydra

    guard_hydra()
    for flag, value in _hydra_flags(arguments):
        if flag == "--config-name":
            if _UP_OR_ROOT.search(value):
                raise UserError(f"{flag}={console_line(value)}: name a config of the config folder, without '..' "
                                f"or an absolute path; {_ADVICE}")
        elif value:
            check_source(flag, value, (_PACKAGE_DIR, _PACKAGE_DIR / "export"))
    groups = _groups()
    for arg in arguments:
        if arg.startswith("-"):
            continue
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq:
            continue
        if key.startswith("hydra.searchpath"):
            for entry in _search_path_entries(value):
                check_source(key, entry)
        group = key.split("@", 1)[0]
        if (group in groups or group.startswith("hydra/")) and _UP_OR_ROOT.search(value):
            raise UserError(f"{key}={console_line(value)}: name an option of the group {group} (no '..' or absolute "
                            f"path); for a preset of your own use --config-dir or hydra.searchpath")


def check_config_file(path: str) -> None:
    """``UserError`` when the config file at ``path`` (links and ``..`` followed, as Hydra reads it)
    lies in a run dir or a Hydra record (``.hydra/``)."""
    real = os.path.realpath(path)
    if ".hydra" in Path(real).parts or _inside_a_run_dir(os.path.dirname(real)):
        raise UserError(f"{console_line(path)}: reads a run dir ({console_line(real)}), whose YAML would be "
                        f"composed and instantiated; {_ADVICE}")


def check_composed_sources(sources: Iterable[dict]) -> None:
    """The composed config's ``hydra.runtime.config_sources`` (a search path set inside a config
    file too): none in a run dir."""
    for source in sources:
        scheme, path = str(source.get("schema", "")), str(source.get("path", ""))
        if scheme in ("file", "pkg") and path:
            check_source("--config-dir / hydra.searchpath", f"{scheme}://{path}")
