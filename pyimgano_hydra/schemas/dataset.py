"""Schemas of the ``dataset`` group."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from pyimgano_hydra.data.images import DEFAULT_MAX_IMAGE_MEGABYTES
from pyimgano_hydra.errors import check

MAX_SIDE = 8192  # pixels per side of a resized image (a 65536^2 image is 51 GB of floats)


@dataclass
class DatasetSchema:
    """Fields every dataset layout shares."""

    _target_: str = "???"
    root: str = "???"
    category: Any = "all"  # a name, "all", or a list of names
    resize: Optional[int] = 256  # square side in pixels; null keeps the original size
    input_mode: str = "rgb"  # rgb | gray
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    seed: int = 0
    on_bad_image: str = "error"  # error | skip (skipped files are listed in dataset.skipped)
    max_image_megabytes: float = DEFAULT_MAX_IMAGE_MEGABYTES  # refuse files that decode to more (header check)

    def __post_init__(self) -> None:
        check(self.on_bad_image in ("error", "skip"), "dataset.on_bad_image", "must be error or skip")
        check(self.max_image_megabytes > 0, "dataset.max_image_megabytes", "must be > 0")
        check(self.resize is None or 16 <= self.resize <= MAX_SIDE, "dataset.resize", f"must be in 16..{MAX_SIDE} or null")
        check(self.input_mode in ("rgb", "gray"), "dataset.input_mode", "must be rgb or gray")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            check(value is None or value >= 1, f"dataset.{key}", "must be >= 1 or null")


MAX_SYNTHETIC = 10000  # generated images per split (a typo of 10**30 generated until killed)


@dataclass
class SyntheticDatasetSchema(DatasetSchema):
    resize: Optional[int] = 128  # the generated images are image_size px: no resampling by default
    image_size: int = 128
    n_train: int = 40
    n_test_good: int = 12
    n_test_defect: int = 4  # per defect type

    def __post_init__(self) -> None:
        super().__post_init__()
        check(64 <= self.image_size <= MAX_SIDE, "dataset.image_size", f"must be in 64..{MAX_SIDE}")
        check(1 <= self.n_train <= MAX_SYNTHETIC, "dataset.n_train", f"must be in 1..{MAX_SYNTHETIC}")
        for key in ("n_test_good", "n_test_defect"):
            check(0 <= getattr(self, key) <= MAX_SYNTHETIC, f"dataset.{key}", f"must be in 0..{MAX_SYNTHETIC}")


@dataclass
class FolderDatasetSchema(DatasetSchema):
    """Custom folders (explicit dirs) or the simple train/normal, test/{normal,anomaly} layout."""

    name: str = "custom"  # category name of an explicit-dirs / root-level simple dataset
    normal_dir: Optional[str] = None  # null = simple layout under root
    abnormal_dirs: Any = None  # [dir, ...] or {defect_name: dir}
    normal_test_dir: Optional[str] = None  # null = split normal_dir by seed
    test_ratio: float = 0.2  # share of normal_dir moved to test when normal_test_dir is null
    mask_dir: Optional[str] = None  # searched as mask_dir/<defect>/ then mask_dir/
    masks_beside_images: bool = False  # <stem><mask_suffix><mask_ext> beside each image is its mask
    mask_suffix: str = "_mask"  # mask name = <stem><mask_suffix><mask_ext>
    mask_ext: Optional[str] = ".png"  # null = any image extension
    extensions: List[str] = field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"])

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.test_ratio < 1, "dataset.test_ratio", "must be in [0, 1)")
        check(len(self.extensions) > 0, "dataset.extensions", "must list at least one extension")


@dataclass
class VisaDatasetSchema(DatasetSchema):
    split_csv: str = "split_csv/1cls.csv"  # relative to root


@dataclass
class MVTecLocoDatasetSchema(DatasetSchema):
    validation: str = "ignore"  # ignore | train (add validation/good to the train split)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.validation in ("ignore", "train"), "dataset.validation", "must be ignore or train")


@dataclass
class MVTecAD2DatasetSchema(MVTecLocoDatasetSchema):
    # test_public has labels and masks; the private splits are predicted without metrics
    test_split: str = "test_public"  # test_public | test_private | test_private_mixed

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.test_split in ("test_public", "test_private", "test_private_mixed"),
              "dataset.test_split", "must be test_public, test_private or test_private_mixed")


SCHEMAS = {
    "base": DatasetSchema,
    "synthetic": SyntheticDatasetSchema,
    "mvtec": DatasetSchema,
    "folder": FolderDatasetSchema,
    "mtd": FolderDatasetSchema,
    "visa": VisaDatasetSchema,
    "btad": DatasetSchema,
    "mvtec_loco": MVTecLocoDatasetSchema,
    "mvtec_ad2": MVTecAD2DatasetSchema,
}
