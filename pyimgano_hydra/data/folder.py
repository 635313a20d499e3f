"""Custom folders: your own normal / abnormal dirs, or the simple ``train/normal`` layout.

Two ways to point at images (paths relative to ``root`` unless absolute):

* explicit dirs — ``normal_dir``, ``abnormal_dirs`` (a list, or ``{defect_name: dir}``),
  optional ``normal_test_dir``; without it the normal images are split train/test by
  ``seed`` (``test_ratio`` to test). Masks: ``mask_dir`` (searched as
  ``mask_dir/<defect>/`` then ``mask_dir/``) and/or ``masks_beside_images``, matched by
  ``<stem><mask_suffix><mask_ext>``.
* the simple layout (``normal_dir: null``): ``train/normal``, ``test/normal``,
  ``test/<anomaly type>``, ``ground_truth/<anomaly type>/<stem>_mask.png`` — either at
  ``root`` (one category named ``name``) or under ``root/<category>/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pyimgano_hydra.data.base import ImageDataset, find_mask, visible_folders
from pyimgano_hydra.data.images import IMAGE_EXTENSIONS, list_images
from pyimgano_hydra.data.sample import ANOMALOUS, NORMAL, CategorySplit, Sample
from pyimgano_hydra.errors import ConfigError, DataError

NORMAL_TEST_DIRS = ("normal", "good")  # test/good too: MVTec's spelling, never a defect type named "good"
SIMPLE_LAYOUT = ("<root>/train/normal/*, <root>/test/normal/*, <root>/test/anomaly/*, "
                 "<root>/ground_truth/anomaly/<stem>_mask.png (optional), or the same under "
                 "<root>/<category>/; or set dataset.normal_dir and dataset.abnormal_dirs")


def _normalise_exts(extensions: Sequence[str] | None) -> tuple[str, ...]:
    exts = extensions or IMAGE_EXTENSIONS
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)


class FolderDataset(ImageDataset):
    """Your own image folders (one category, named ``name``) or the simple layout."""

    layout = "folder"
    expected_layout = SIMPLE_LAYOUT

    def __init__(self, root: str, category: Any = "all", resize: int | None = 256,
                 input_mode: str = "rgb", limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, on_bad_image: str = "error",
                 name: str = "custom", normal_dir: str | None = None,
                 abnormal_dirs: Sequence[str] | Mapping[str, str] | None = None,
                 normal_test_dir: str | None = None, mask_dir: str | None = None,
                 masks_beside_images: bool = False, mask_suffix: str = "_mask",
                 mask_ext: str | None = ".png", extensions: Sequence[str] | None = None,
                 test_ratio: float = 0.2, **extra: Any) -> None:
        super().__init__(root, category, resize, input_mode, limit_train, limit_test, seed,
                         on_bad_image, **extra)
        if not 0 <= test_ratio < 1:
            raise ConfigError("dataset.test_ratio: must be in [0, 1)")
        self.name = str(name)
        self.normal_dir = normal_dir
        if isinstance(abnormal_dirs, str):
            abnormal_dirs = [abnormal_dirs]
        if isinstance(abnormal_dirs, Mapping):
            self.abnormal_dirs = {str(k): str(v) for k, v in abnormal_dirs.items()}
        else:
            named: dict[str, str] = {}
            for folder in map(str, abnormal_dirs or []):  # a defect type is named by its folder's name
                if (name := Path(folder).name) in named:
                    raise ConfigError(f"dataset.abnormal_dirs: {named[name]} and {folder} are both named {name!r}; "
                                      f"give a mapping of names to folders, e.g. {{{name}_1: {named[name]}, "
                                      f"{name}_2: {folder}}}")
                named[name] = folder
            self.abnormal_dirs = named
        for defect, folder in self.abnormal_dirs.items():  # no file name holds a NUL: the mask lookup raised
            if "\x00" in defect or "\x00" in folder:
                raise ConfigError(f"dataset.abnormal_dirs: {defect[:80]!r}: {folder[:200]!r} holds a NUL byte; "
                                  "name the defect and its folder without one")
        self.normal_test_dir = normal_test_dir
        self.mask_dir = mask_dir
        self.masks_beside_images = bool(masks_beside_images)
        self.mask_suffix = mask_suffix or ""
        if self.masks_beside_images and not self.mask_suffix and not mask_ext:  # a.png beside a.jpg: which is the mask?
            raise ConfigError("dataset.mask_suffix: set it (e.g. _mask) or dataset.mask_ext with "
                              "dataset.masks_beside_images=true")
        self.mask_ext = (mask_ext if not mask_ext or mask_ext.startswith(".") else "." + mask_ext)
        self.extensions = _normalise_exts(extensions)
        self.test_ratio = float(test_ratio)

    # ---- which mode ----------------------------------------------------------------------
    @property
    def explicit(self) -> bool:
        return self.normal_dir is not None

    def _check_root(self) -> None:
        """``root`` must exist only when some folder is given relative to it."""
        given = [self.normal_dir, self.normal_test_dir, self.mask_dir, *self.abnormal_dirs.values()]
        if self.explicit and all(Path(d).expanduser().is_absolute() for d in given if d is not None):
            return
        super()._check_root()

    def _dir(self, rel: str, key: str) -> Path:
        path = self.root_path / Path(rel).expanduser()
        if not path.is_dir():
            raise DataError(f"dataset.{key} {path} does not exist; expected a folder of images "
                            f"({', '.join(self.extensions)})")
        return path

    def discover(self) -> list[str]:
        root = self.root_path
        if self.explicit or (root / "train").is_dir():
            return [self.name]
        return sorted(p.name for p in root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "train").is_dir())

    def _category_root(self, category: str) -> Path:
        root = self.root_path
        return root if category == self.name and (root / "train").is_dir() else root / category

    def train_dir_hint(self, category: str) -> str:
        if self.explicit:
            return str(self.root_path / self.normal_dir)
        return str(self._category_root(category) / "train" / "normal")

    def collect(self, category: str) -> CategorySplit:
        return self._collect_explicit(category) if self.explicit else self._collect_simple(category)

    def _images(self, folder: Path) -> list[Path]:
        """The images of ``folder``; with ``masks_beside_images``, ``<stem><mask_suffix><mask_ext>``
        beside another image ``<stem>.*`` is that image's mask, never an image of its own."""
        found = list_images(folder, self.extensions)
        if not self.masks_beside_images:
            return found
        ext, cut = (self.mask_ext or "").lower(), len(self.mask_suffix)
        others = {}  # stem -> the files listed under it
        for p in found:
            others.setdefault(p.stem, []).append(p)

        def is_mask(p: Path) -> bool:
            if ext and p.suffix.lower() != ext:
                return False
            if self.mask_suffix:
                return p.stem.endswith(self.mask_suffix) and p.stem[:-cut] in others
            return len(others[p.stem]) > 1  # a.png beside a.jpg, mask_ext .png

        return [p for p in found if not is_mask(p)]

    # ---- explicit dirs -------------------------------------------------------------------
    def _mask_for(self, image: Path, defect: str) -> Path | None:
        candidates = []
        if self.mask_dir is not None:
            base = self._dir(self.mask_dir, "mask_dir")
            candidates += [base / defect, base]
        if self.masks_beside_images:
            candidates.append(image.parent)
        for folder in candidates:
            found = find_mask(folder, image.stem, self.mask_suffix, self.mask_ext, exclude=image)
            if found is not None:
                return found
        return None

    def _collect_explicit(self, category: str) -> CategorySplit:
        normals = self._images(self._dir(self.normal_dir, "normal_dir"))
        if self.normal_test_dir is not None:
            train_paths = normals
            test_normals = self._images(self._dir(self.normal_test_dir, "normal_test_dir"))
        else:
            order = np.random.default_rng(self.seed).permutation(len(normals))
            n_test = int(round(self.test_ratio * len(normals)))
            test_idx = set(order[:n_test].tolist())
            train_paths = [p for i, p in enumerate(normals) if i not in test_idx]
            test_normals = [p for i, p in enumerate(normals) if i in test_idx]
        train = [Sample(str(p), NORMAL, None, category, "good", "train") for p in train_paths]
        test = [Sample(str(p), NORMAL, None, category, "good", "test") for p in test_normals]
        if not self.abnormal_dirs:
            raise ConfigError("dataset.abnormal_dirs: give at least one folder of defect images")
        listed: dict[str, str] = {}  # real path -> the key listing it: one role per image

        def claim(p: Path, key: str) -> None:  # never fitted on and scored, nor scored both ways
            if (where := listed.setdefault(os.path.realpath(p), key)) != key:  # realpath: no error on a link loop
                raise ConfigError(f"{key}: {p} is listed by {where} too; give each image one folder")

        for p in train_paths:
            claim(p, "dataset.normal_dir")
        for p in test_normals:
            claim(p, "dataset.normal_test_dir")
        for defect, rel in self.abnormal_dirs.items():
            for p in self._images(self._dir(rel, f"abnormal_dirs.{defect}")):
                claim(p, f"dataset.abnormal_dirs.{defect}")
                mask = self._mask_for(p, defect)
                test.append(Sample(str(p), ANOMALOUS, str(mask) if mask else None, category,
                                   defect, "test"))
        return CategorySplit(category, train, test)

    # ---- simple layout -------------------------------------------------------------------
    def _collect_simple(self, category: str) -> CategorySplit:
        base = self._category_root(category)
        train = [Sample(str(p), NORMAL, None, category, "good", "train")
                 for p in self._images(base / "train" / "normal")]
        test: list[Sample] = []
        test_dir = base / "test"
        kinds = visible_folders(test_dir)
        for kind in kinds:
            for p in self._images(test_dir / kind):
                if kind.lower() in NORMAL_TEST_DIRS:  # test/Good: prepared on a case-insensitive disk
                    test.append(Sample(str(p), NORMAL, None, category, "good", "test"))
                    continue
                gt = base / "ground_truth" / kind
                mask = find_mask(gt, p.stem, "_mask", ".png") if gt.is_dir() else None
                if mask is None and self.masks_beside_images:
                    mask = find_mask(p.parent, p.stem, self.mask_suffix, self.mask_ext, exclude=p)
                test.append(Sample(str(p), ANOMALOUS, str(mask) if mask else None, category,
                                   kind, "test"))
        return CategorySplit(category, train, test)

    def mask_required(self, sample: Sample) -> bool:
        if self.explicit:
            return self.mask_dir is not None or self.masks_beside_images
        # simple layout: masks are expected for a type once its ground_truth folder exists
        return self.masks_beside_images or (
            self._category_root(sample.category) / "ground_truth" / sample.defect_type).is_dir()

    def mask_hint(self, sample: Sample) -> str:
        if not self.explicit:
            hint = str(self._category_root(sample.category) / "ground_truth" / sample.defect_type
                       / f"{Path(sample.path).stem}_mask.png")
            if self.masks_beside_images:
                hint += f" or {Path(sample.path).stem}{self.mask_suffix}{self.mask_ext or '.*'} beside the image"
            return hint
        where = []
        if self.mask_dir is not None:
            where.append(str(self.root_path / self.mask_dir / sample.defect_type))
        if self.masks_beside_images:
            where.append(str(Path(sample.path).parent))
        return (f"{Path(sample.path).stem}{self.mask_suffix}{self.mask_ext or '.*'} in "
                + " or ".join(where))
