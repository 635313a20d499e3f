"""Schemas of the ``dataset`` group."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pyimgano_hydra.errors import check


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

    def __post_init__(self) -> None:
        check(self.on_bad_image in ("error", "skip"), "dataset.on_bad_image", "must be error or skip")
        check(self.resize is None or self.resize >= 16, "dataset.resize", "must be >= 16 or null")
        check(self.input_mode in ("rgb", "gray"), "dataset.input_mode", "must be rgb or gray")
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            check(value is None or value >= 1, f"dataset.{key}", "must be >= 1 or null")


@dataclass
class SyntheticDatasetSchema(DatasetSchema):
    image_size: int = 256
    n_train: int = 40
    n_test_good: int = 12
    n_test_defect: int = 4  # per defect type

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.image_size >= 64, "dataset.image_size", "must be >= 64")


SCHEMAS = {"base": DatasetSchema, "synthetic": SyntheticDatasetSchema}
