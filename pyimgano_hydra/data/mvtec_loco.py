"""MVTec LOCO AD: ``train/good``, ``validation/good``, ``test/{good,logical_anomalies,structural_anomalies}``.

Ground truth is a folder per image, ``ground_truth/<type>/<stem>/000.png, 001.png, …``;
the mask of an image is the union of its folder. ``defect_type`` keeps
``logical_anomalies`` / ``structural_anomalies`` so results can be reported apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pyimgano_hydra.data.base import ImageDataset, visible_folders
from pyimgano_hydra.data.images import list_images
from pyimgano_hydra.data.sample import ANOMALOUS, NORMAL, CategorySplit, Sample
from pyimgano_hydra.errors import ConfigError

LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")


class MVTecLocoDataset(ImageDataset):
    """MVTec LOCO AD as downloaded."""

    layout = "mvtec_loco"
    known_categories = LOCO_CATEGORIES
    expected_layout = ("<root>/<category>/train/good/*.png, <root>/<category>/validation/good/*.png, "
                       "<root>/<category>/test/{good,logical_anomalies,structural_anomalies}/*.png, "
                       "<root>/<category>/ground_truth/<type>/<stem>/000.png")

    def __init__(self, root: str, category: Any = "all", resize: int | None = 256,
                 input_mode: str = "rgb", limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, on_bad_image: str = "error",
                 validation: str = "ignore", **extra: Any) -> None:
        super().__init__(root, category, resize, input_mode, limit_train, limit_test, seed,
                         on_bad_image, **extra)
        if validation not in ("ignore", "train"):
            raise ConfigError("dataset.validation: must be ignore or train")
        self.validation = validation

    def discover(self) -> list[str]:
        return sorted(p.name for p in self.root_path.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and ((p / "train").is_dir() or (p / "test").is_dir()))

    def _train(self, category: str) -> list[Sample]:
        base = self.root_path / category
        train = [Sample(str(p), NORMAL, None, category, "good", "train")
                 for p in list_images(base / "train" / "good")]
        if self.validation == "train":
            train += [Sample(str(p), NORMAL, None, category, "good", "validation")
                      for p in list_images(base / "validation" / "good")]
        return train

    def collect(self, category: str) -> CategorySplit:
        base = self.root_path / category
        test_dir = base / "test"
        test: list[Sample] = []
        kinds = visible_folders(test_dir)
        for kind in kinds:
            for p in list_images(test_dir / kind):
                if kind == "good":
                    test.append(Sample(str(p), NORMAL, None, category, "good", "test"))
                    continue
                gt = base / "ground_truth" / kind / p.stem
                mask = str(gt) if gt.is_dir() and list_images(gt) else None
                test.append(Sample(str(p), ANOMALOUS, mask, category, kind, "test"))
        return CategorySplit(category, self._train(category), test)

    def mask_hint(self, sample: Sample) -> str:
        return str(self.root_path / sample.category / "ground_truth" / sample.defect_type
                   / Path(sample.path).stem / "000.png")
