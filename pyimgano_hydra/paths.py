"""Where the packaged configs live, from a source checkout or an installed wheel."""
from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The ``conf/`` directory: inside the installed package, else the checkout's top level."""
    for candidate in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"conf/config.yaml not found next to {_PACKAGE_DIR}; reinstall pyimgano_hydra")
