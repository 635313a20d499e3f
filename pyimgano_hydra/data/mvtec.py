"""MVTec AD layout: ``<cat>/train/good``, ``<cat>/test/<defect>``, ``<cat>/ground_truth/<defect>/<stem>_mask.png``."""
from __future__ import annotations

from pathlib import Path

from pyimgano_hydra.data.base import ImageDataset, find_mask, visible_folders
from pyimgano_hydra.data.images import list_images
from pyimgano_hydra.data.sample import ANOMALOUS, NORMAL, CategorySplit, Sample

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)


class MVTecDataset(ImageDataset):
    """MVTec AD (and any dataset written in its layout)."""

    layout = "mvtec"
    known_categories = MVTEC_CATEGORIES
    expected_layout = ("<root>/<category>/train/good/*.png, <root>/<category>/test/<defect>/*.png, "
                       "<root>/<category>/ground_truth/<defect>/<stem>_mask.png")

    def discover(self) -> list[str]:
        root = self.root_path
        return sorted(p.name for p in root.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and ((p / "train").is_dir() or (p / "test").is_dir()))

    def collect(self, category: str) -> CategorySplit:
        base = self.root_path / category
        train = [Sample(str(p), NORMAL, None, category, "good", "train")
                 for p in list_images(base / "train" / "good")]
        test: list[Sample] = []
        test_dir = base / "test"
        defects = visible_folders(test_dir)
        for defect in defects:
            for p in list_images(test_dir / defect):
                if defect == "good":
                    test.append(Sample(str(p), NORMAL, None, category, "good", "test"))
                else:
                    mask = find_mask(base / "ground_truth" / defect, p.stem)
                    test.append(Sample(str(p), ANOMALOUS, str(mask) if mask else None,
                                       category, defect, "test"))
        return CategorySplit(category, train, test)

    def mask_hint(self, sample: Sample) -> str:
        stem = Path(sample.path).stem
        return str(self.root_path / sample.category / "ground_truth" / sample.defect_type
                   / f"{stem}_mask.png")
