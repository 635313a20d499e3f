"""What every dataset layout shares: category resolution, limits, checks and loading.

A layout subclasses :class:`ImageDataset` and implements ``discover()`` (category names on
disk) and ``collect(category)`` (the full, unlimited :class:`CategorySplit`). Everything
else — ``categories()``, ``split()`` with ``limit_train``/``limit_test``, bad-input checks,
``on_bad_image``, ``load_images()``/``load_masks()`` — lives here.
"""
from __future__ import annotations

import functools
import logging
import os
import zlib
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from pyimgano_hydra.data.images import (DEFAULT_MAX_IMAGE_MEGABYTES, list_images, load_image, load_mask,
                                        mask_size, read_size, without_skip_advice)
from pyimgano_hydra.data.loader import stack_images
from pyimgano_hydra.data.sample import ANOMALOUS, CategorySplit, Sample
from pyimgano_hydra.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _as_category_list(category: Any) -> list[str] | str:
    """"all" stays "all"; a name, "a,b" or a list becomes a list of names."""
    if category is None:
        return "all"
    if isinstance(category, (int, float)):  # `category=01` reaches us as an int
        category = str(category)
    if isinstance(category, str):
        names = [c.strip() for c in category.split(",") if c.strip()]
        if names == ["all"] or not names:
            return "all"
        return names
    names = [str(c) for c in category]
    return "all" if names == ["all"] or not names else names


class ImageDataset:
    """Base of every layout. Subclasses set ``layout``, ``known_categories``, ``expected_layout``."""

    layout: ClassVar[str] = "dataset"
    known_categories: ClassVar[tuple[str, ...]] = ()
    expected_layout: ClassVar[str] = ""
    masks_expected: ClassVar[bool] = True  # anomalous test images must have a mask

    def __init__(self, root: str, category: Any = "all", resize: int | None = 256,
                 input_mode: str = "rgb", limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, on_bad_image: str = "error",
                 max_image_megabytes: float = DEFAULT_MAX_IMAGE_MEGABYTES, **extra: Any) -> None:
        if on_bad_image not in ("error", "skip"):
            raise ConfigError("dataset.on_bad_image: must be error or skip")
        if input_mode not in ("rgb", "gray"):
            raise ConfigError("dataset.input_mode: must be rgb or gray")
        self.root = str(root)
        self.category = category
        self.resize = resize
        self.input_mode = input_mode
        self.limit_train = limit_train
        self.limit_test = limit_test
        self.seed = int(seed)
        self.on_bad_image = on_bad_image
        self.max_image_megabytes = float(max_image_megabytes)
        self.skipped: list[dict] = []  # {path, reason, category} of every file left out

    # ---- to implement per layout -------------------------------------------------------
    def discover(self) -> list[str]:
        """Category names present under ``root``."""
        raise NotImplementedError

    def collect(self, category: str) -> CategorySplit:
        """All train and test samples of ``category`` (no limits, no checks)."""
        raise NotImplementedError

    # ---- shared behaviour --------------------------------------------------------------
    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()

    def _check_root(self) -> None:
        if not self.root_path.is_dir():
            where = str(Path(self.root).expanduser().absolute())
            shown = self.root if where == self.root else f"{self.root} ({where})"
            raise DataError(f"dataset.root {shown} does not exist; expected the "
                            f"{self.layout} layout: {self.expected_layout}")

    def categories(self) -> list[str]:
        """Resolve ``category`` (a name, a list or "all") against what is on disk."""
        self._check_root()
        on_disk = self.discover()
        wanted = _as_category_list(self.category)
        if wanted == "all":
            missing = [c for c in self.known_categories if c not in on_disk]
            if missing and on_disk:
                log.warning("%s: %d known %s categories not found under %s: %s", self.layout,
                            len(missing), self.layout, self.root, ", ".join(missing))
            if not on_disk:
                raise DataError(f"dataset.root {self.root}: no {self.layout} category found; "
                                f"expected the layout: {self.expected_layout}")
            return list(on_disk)
        wanted = [self.normalize_category(c) for c in wanted]
        unknown = [c for c in wanted if c not in on_disk]
        if unknown:
            available = ", ".join(on_disk) if on_disk else "none"
            raise DataError(f"dataset.category {unknown[0]!r} not found under {self.root}; "
                            f"available: {available}")
        return list(dict.fromkeys(wanted))

    def normalize_category(self, name: str) -> str:
        """Map a user-given category name to its folder name (e.g. BTAD ``1`` -> ``01``)."""
        return name

    def split(self, category: str) -> CategorySplit:
        """Train/test samples of ``category`` after limits and input checks."""
        self._check_root()
        category = self.normalize_category(str(category))
        on_disk = self.discover()
        if category not in on_disk:
            raise DataError(f"dataset.category {category!r} not found under {self.root}; "
                            f"available: {', '.join(on_disk) if on_disk else 'none'}")
        full = self.collect(category)
        self._refuse_repeats(full, category)
        if not full.train:
            raise DataError(f"{self.train_dir_hint(category)}: empty train split (no normal "
                            f"training images); expected the {self.layout} layout: "
                            f"{self.expected_layout}")
        rng = np.random.default_rng([self.seed, zlib.crc32(category.encode("utf-8", "surrogateescape"))])
        train = _subset(full.train, self.limit_train, rng, stratify=False)
        test = _subset(full.test, self.limit_test, rng, stratify=True)
        train = self._checked(train, category)
        test = self._checked(test, category)
        if not train:
            raise DataError(f"{self.train_dir_hint(category)}: every train image was skipped "
                            f"as unreadable; see dataset.skipped")
        return CategorySplit(category=category, train=train, test=test)

    def _refuse_repeats(self, full: CategorySplit, category: str) -> None:
        """Each image listed once: one listed for train and test is scored on what the model was
        fitted on (a handed-over split CSV, a folder linked into another); twice, it counts twice."""
        seen: dict[object, str] = {}
        for sample in (*full.train, *full.test):
            real = os.path.realpath(sample.path)  # no error on a link loop
            try:
                info = os.stat(real)
                same = (info.st_dev, info.st_ino)  # a hard link is the same file under another name
            except OSError:  # loading it names it
                same = real
            if same in seen:
                raise DataError(f"{sample.path}: listed twice (as {seen[same]} and as {sample.split}, "
                                f"the same file by path, link or hard link; see {self.train_dir_hint(category)}); "
                                "list each image once")
            seen[same] = sample.split

    def train_dir_hint(self, category: str) -> str:
        """Path shown in the empty-train error."""
        return str(self.root_path / category / "train")

    def _skip_or_raise(self, sample: Sample, error: DataError, category: str) -> None:
        if self.on_bad_image == "error":
            raise error
        reason = without_skip_advice(str(error))  # skipping already
        self.skipped.append({"path": sample.path, "reason": reason, "category": category})
        log.warning("skipped %s", reason)

    def _checked(self, samples: Iterable[Sample], category: str) -> list[Sample]:
        """Cheap header checks always; a full decode when ``on_bad_image=skip``."""
        kept = []
        for s in samples:
            try:
                if s.label == ANOMALOUS and s.mask_path is None and self.mask_required(s):
                    raise DataError(f"{s.path}: anomalous image has no ground-truth mask; "
                                    f"expected {self.mask_hint(s)}")
                _mask_fits(s, self.max_image_megabytes)
                if self.on_bad_image == "skip":
                    load_image(s.path, 64, self.input_mode, self.max_image_megabytes)
                    if s.mask_path is not None:
                        load_mask(s.mask_path)
            except DataError as exc:
                self._skip_or_raise(s, exc, category)
                continue
            kept.append(s)
        return kept

    def mask_required(self, sample: Sample) -> bool:
        """Whether an anomalous ``sample`` must come with a mask (else a DataError)."""
        return self.masks_expected

    def mask_hint(self, sample: Sample) -> str:
        """Where the mask of ``sample`` should be (for error messages)."""
        return "a mask file next to the layout's ground truth"

    def load_images(self, samples: Sequence[Sample], return_sizes: bool = False):
        """uint8 (N, H, W, C) at ``resize``×``resize`` in ``input_mode`` (data/loader.py:
        ``loader.num_workers`` processes decode); ``return_sizes``: also each file's own (height, width)."""
        return stack_images([s.path for s in samples], self.resize, self.input_mode, self.max_image_megabytes,
                            return_sizes=return_sizes)

    def load_masks(self, samples: Sequence[Sample]) -> np.ndarray:
        """bool (N, H, W) matching ``load_images``; all-False where a sample has no mask."""
        if not samples:
            side = self.resize or 0
            return np.zeros((0, side, side), bool)
        sizes = [(self.resize, self.resize) if self.resize else read_size(s.path) for s in samples]
        out = np.zeros((len(samples),) + tuple(sizes[0]), bool)
        for i, s in enumerate(samples):
            if tuple(sizes[i]) != out.shape[1:]:
                raise DataError(f"{s.path}: image sizes differ within the split; "
                                f"set dataset.resize to a size")
            if s.mask_path is not None:
                _mask_fits(s, self.max_image_megabytes, "; the image changed since the dataset was listed")
                out[i] = load_mask(s.mask_path, sizes[i])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, category={self.category!r})"


def _mask_fits(sample: Sample, max_megabytes: float | None, since: str = "") -> None:
    """The image's size (from its header) is its mask's: a DataError naming both otherwise (an image
    replaced mid-run by one of another size was scored against the old mask)."""
    size = read_size(sample.path, max_megabytes)
    if sample.mask_path is not None:
        m_size = mask_size(sample.mask_path)
        if m_size != size:
            raise DataError(f"{sample.mask_path}: mask is {m_size[1]}x{m_size[0]} "
                            f"but its image {sample.path} is {size[1]}x{size[0]}{since}")


def visible_folders(folder: Path) -> list[str]:
    """Names of the folders directly in ``folder`` (none when absent), sorted; hidden ones skipped
    (a ``.hydra`` or ``.ipynb_checkpoints`` under test/ is no defect type)."""
    if not folder.is_dir():
        return []
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def find_mask(folder: Path, stem: str, suffix: str = "_mask", ext: str | None = ".png",
              exclude: Path | None = None) -> Path | None:
    """``folder/<stem><suffix><ext>``; with ``ext=None`` (or when absent) any image extension."""
    if ext:
        exact = folder / f"{stem}{suffix}{ext}"
        try:
            if exact.is_file() and exact != exclude:
                return exact
        except (OSError, ValueError):  # a 250-byte image name: its mask's name is too long to exist; a NUL
            pass
    try:
        listed = folder.stat().st_mtime_ns  # a file added or removed since the folder was listed
    except OSError:
        return None
    return next((p for p in _images_by_stem(folder, listed).get(f"{stem}{suffix}", ()) if p != exclude), None)


@functools.lru_cache(maxsize=16)
def _images_by_stem(folder: Path, _listed_at: int) -> dict[str, tuple[Path, ...]]:
    """The images of ``folder`` by stem, listed once per folder state (a dataset of 4,000 images
    with unmatched mask names re-listed its mask folder for each: 181 s)."""
    by_stem: dict[str, list[Path]] = {}
    for path in list_images(folder):
        by_stem.setdefault(path.stem, []).append(path)
    return {stem: tuple(paths) for stem, paths in by_stem.items()}


def _subset(samples: list[Sample], limit: int | None, rng: np.random.Generator,
            stratify: bool) -> list[Sample]:
    """A seeded subset of at most ``limit`` samples, original order kept.

    With ``stratify`` normal and anomalous images are drawn in proportion, at least one of
    each when both exist and ``limit >= 2``.
    """
    if limit is None or len(samples) <= limit:
        return list(samples)
    if not stratify:
        chosen = rng.choice(len(samples), size=limit, replace=False)
        return [samples[i] for i in sorted(chosen)]
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.label, []).append(i)
    labels = sorted(groups)
    if len(labels) == 1:
        chosen = rng.choice(len(samples), size=limit, replace=False)
        return [samples[i] for i in sorted(chosen)]
    # proportional share per label, at least one each while the limit allows
    shares = {lab: len(groups[lab]) * limit / len(samples) for lab in labels}
    counts = {lab: min(len(groups[lab]), max(1, int(np.floor(shares[lab])))) for lab in labels}
    while sum(counts.values()) > limit:  # limit < number of labels
        biggest = max(labels, key=lambda lab: counts[lab])
        counts[biggest] -= 1
    while sum(counts.values()) < limit:
        room = [lab for lab in labels if counts[lab] < len(groups[lab])]
        best = max(room, key=lambda lab: shares[lab] - counts[lab])
        counts[best] += 1
    chosen = []
    for lab in labels:
        idx = groups[lab]
        chosen.extend(idx[j] for j in rng.choice(len(idx), size=counts[lab], replace=False))
    return [samples[i] for i in sorted(chosen)]

