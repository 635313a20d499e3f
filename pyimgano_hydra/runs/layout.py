"""Run-directory layout: every path a run writes, in one place."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2  # 2: one inspector.pt per category replaces infer_config.json + model.pt


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (category names, image stems)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "item"


def category_dir_name(name: str) -> str:
    """The folder of category ``name``: the name itself when file-name safe and at most 100
    characters, else its safe form (cut to 100) and a hash of the exact name (``a b`` and
    ``a_b`` never share a folder; a 250-byte name never makes a name too long). ``.`` and ``..``
    are no folder names (dataset.name=.. wrote the category into the run root)."""
    safe = safe_name(name)
    if safe == str(name) and len(safe) <= 100 and safe.strip("."):
        return safe
    return f"{safe[:100]}-{hashlib.sha256(str(name).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


SWEEP_PIN_ENV = "PYIMGANO_SWEEP_DIR_PIN"  # "<dev>:<inode>:<path>" of the claimed sweep dir, for every job


def pin_sweep_dir(path: Path) -> None:
    """Remember the claimed sweep dir's identity for its jobs (this process and the workers it
    starts, which inherit the environment)."""
    import os

    info = os.stat(path, follow_symlinks=False)
    os.environ[SWEEP_PIN_ENV] = f"{info.st_dev}:{info.st_ino}:{os.path.abspath(path)}"


def sweep_dir_swapped(path: Path) -> str | None:
    """Why ``path`` is no longer the sweep dir this sweep claimed (renamed and replaced by a link:
    the next job ran inside a completed run), or None (same dir, or no pin for it)."""
    import os

    dev, _, rest = os.environ.get(SWEEP_PIN_ENV, "").partition(":")
    ino, _, pinned = rest.partition(":")
    if not pinned or pinned != os.path.abspath(path):
        return None
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return f"{path} is gone"
    if f"{info.st_dev}:{info.st_ino}" != f"{dev}:{ino}":
        return f"{path} was moved or replaced by a link while the sweep ran"
    return None


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    def category(self, name: str) -> "CategoryDir":
        return CategoryDir(self.root / "categories" / category_dir_name(name))

    def identity(self) -> tuple | None:
        """(device, inode) of the run dir itself, not through a link; None when it is a link or gone."""
        import os
        import stat

        try:
            info = os.lstat(self.root)
        except OSError:
            return None
        return None if stat.S_ISLNK(info.st_mode) else (info.st_dev, info.st_ino)

    def swapped(self, pinned: tuple | None) -> str | None:
        """What changed since ``pinned`` (``identity()`` at the start): the run dir moved or replaced
        by a link, or its ``categories/``, a category folder or ``.hydra/`` made a link; None when the
        run still writes where it began."""
        if pinned is None or self.identity() != pinned:
            return f"{self.root} was moved or replaced by a link while the run ran"
        folders = [self.root / "categories", self.root / ".hydra"]
        if folders[0].is_dir() and not folders[0].is_symlink():
            folders += sorted(folders[0].iterdir())
        linked = next((folder for folder in folders if folder.is_symlink()), None)
        return f"{linked} was replaced by a link while the run ran" if linked else None

    def check_categories(self, names: list[str]) -> None:
        """Refuse categories that would share a folder (one would overwrite the other's results)."""
        from pyimgano_hydra.errors import DataError

        seen: dict[str, str] = {}
        for name in names:
            folder = category_dir_name(name)
            if folder in seen:
                raise DataError(f"categories {seen[folder]!r} and {name!r} would share the folder "
                                f"categories/{folder}; rename one")
            seen[folder] = name


@dataclass(frozen=True)
class CategoryDir:
    root: Path

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def per_image(self) -> Path:
        return self.root / "per_image.jsonl"

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def inspector(self) -> Path:
        return self.root / "inspector.pt"

    @property
    def artifacts(self) -> Path:
        """Deployable exports of this category's inspector (``python -m pyimgano_hydra.export``)."""
        return self.root / "artifacts"

    @property
    def onnx_model(self) -> Path:
        return self.artifacts / "model.onnx"
