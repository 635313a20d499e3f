"""BTAD (beanTech): ``01|02|03/train/ok``, ``test/{ok,ko}``, ``ground_truth/ko/<stem>.<ext>``.

Image and mask extensions may differ (``.bmp`` images with ``.png`` masks); masks are
paired by stem alone.
"""
from __future__ import annotations

from pathlib import Path

from pyimgano_hydra.data.base import ImageDataset, find_mask
from pyimgano_hydra.data.images import list_images
from pyimgano_hydra.data.sample import ANOMALOUS, NORMAL, CategorySplit, Sample

BTAD_CATEGORIES = ("01", "02", "03")


class BTADDataset(ImageDataset):
    """BTAD as downloaded (products 01, 02, 03)."""

    layout = "btad"
    known_categories = BTAD_CATEGORIES
    expected_layout = ("<root>/<01|02|03>/train/ok/*, <root>/<product>/test/{ok,ko}/*, "
                       "<root>/<product>/ground_truth/ko/<stem>.<png|bmp>")

    def normalize_category(self, name: str) -> str:
        # `dataset.category=1` arrives as an int: product folders are zero-padded
        return name.zfill(2) if name.isdigit() else name

    def discover(self) -> list[str]:
        return sorted(p.name for p in self.root_path.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and ((p / "train").is_dir() or (p / "test").is_dir()))

    def collect(self, category: str) -> CategorySplit:
        base = self.root_path / category
        train = [Sample(str(p), NORMAL, None, category, "good", "train")
                 for p in list_images(base / "train" / "ok")]
        test = [Sample(str(p), NORMAL, None, category, "good", "test")
                for p in list_images(base / "test" / "ok")]
        gt = base / "ground_truth" / "ko"
        for p in list_images(base / "test" / "ko"):
            mask = find_mask(gt, p.stem, "", ".png")
            test.append(Sample(str(p), ANOMALOUS, str(mask) if mask else None, category, "ko",
                               "test"))
        return CategorySplit(category, train, test)

    def train_dir_hint(self, category: str) -> str:
        return str(self.root_path / category / "train" / "ok")

    def mask_hint(self, sample: Sample) -> str:
        return str(self.root_path / sample.category / "ground_truth" / "ko"
                   / f"{Path(sample.path).stem}.png")
