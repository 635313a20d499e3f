"""MVTec AD 2: ``train/good``, ``validation/good``, ``test_public/{good,bad}``,
``test_public/ground_truth/bad/<stem>_mask.png``; ``test_private`` and
``test_private_mixed`` hold unlabelled images (label -1, no masks: predict, no metrics).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pyimgano_hydra.data.base import find_mask
from pyimgano_hydra.data.images import IMAGE_EXTENSIONS, list_images
from pyimgano_hydra.data.mvtec_loco import MVTecLocoDataset
from pyimgano_hydra.data.sample import ANOMALOUS, NORMAL, UNKNOWN, CategorySplit, Sample
from pyimgano_hydra.errors import ConfigError, DataError
from pyimgano_hydra.files import walk

AD2_CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs",
                  "walnuts")
TEST_SPLITS = ("test_public", "test_private", "test_private_mixed")


class MVTecAD2Dataset(MVTecLocoDataset):
    """MVTec AD 2 as downloaded; ``test_split`` picks the public or a private test set."""

    layout = "mvtec_ad2"
    known_categories = AD2_CATEGORIES
    expected_layout = ("<root>/<category>/train/good/*.png, <root>/<category>/validation/good/*.png, "
                       "<root>/<category>/test_public/{good,bad}/*.png, "
                       "<root>/<category>/test_public/ground_truth/bad/<stem>_mask.png, "
                       "<root>/<category>/test_private[_mixed]/*.png")

    def __init__(self, root: str, category: Any = "all", resize: int | None = 256,
                 input_mode: str = "rgb", limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, on_bad_image: str = "error",
                 validation: str = "ignore", test_split: str = "test_public", **extra: Any) -> None:
        super().__init__(root, category, resize, input_mode, limit_train, limit_test, seed,
                         on_bad_image, validation, **extra)
        if test_split not in TEST_SPLITS:
            raise ConfigError(f"dataset.test_split: must be one of {', '.join(TEST_SPLITS)}")
        self.test_split = test_split

    def discover(self) -> list[str]:
        return sorted(p.name for p in self.root_path.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "train").is_dir())

    def collect(self, category: str) -> CategorySplit:
        base = self.root_path / category
        test: list[Sample] = []
        if self.test_split == "test_public":
            public = base / "test_public"
            test += [Sample(str(p), NORMAL, None, category, "good", "test")
                     for p in list_images(public / "good")]
            for p in list_images(public / "bad"):
                mask = find_mask(public / "ground_truth" / "bad", p.stem, "_mask", ".png")
                test.append(Sample(str(p), ANOMALOUS, str(mask) if mask else None, category,
                                   "bad", "test"))
        else:
            private = base / self.test_split
            files, unlisted = [], []
            for root, dirs, names in walk(private, onerror=unlisted.append) if private.is_dir() else []:
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # .ipynb_checkpoints' copies are no images
                # walk's names are no folders: each image name is kept, so that loading it names a bad one
                # (is_file() raised ENAMETOOLONG past PATH_MAX, failing the category despite on_bad_image=skip)
                files += [Path(root) / n for n in names
                          if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not n.startswith(".")]
            files.sort()
            for exc in unlisted:  # a folder past PATH_MAX: named (or skipped and listed), never dropped silently
                folder = str(exc.filename)
                self._skip_or_raise(Sample(folder, UNKNOWN, None, category, "unknown", "test"),
                                    DataError(f"{folder}: its images cannot be listed ({exc.strerror or exc}); "
                                              "move them to a shorter path"), category)
            test += [Sample(str(p), UNKNOWN, None, category, "unknown", "test") for p in files]
        return CategorySplit(category, self._train(category), test)

    def mask_hint(self, sample: Sample) -> str:
        return str(self.root_path / sample.category / "test_public" / "ground_truth" / "bad"
                   / f"{Path(sample.path).stem}_mask.png")
