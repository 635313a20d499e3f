"""Where the packaged configs live: ``pyimgano_hydra/conf`` (the top-level ``conf`` of a
checkout is a link to it), found by Hydra as ``pkg://pyimgano_hydra.conf``."""
from __future__ import annotations

from pathlib import Path

CONFIG_MODULE = "pyimgano_hydra.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # the apps' one config search path


def conf_dir() -> Path:
    """The package's ``conf/`` directory on disk (for listing option files)."""
    return Path(__file__).resolve().parent / "conf"
