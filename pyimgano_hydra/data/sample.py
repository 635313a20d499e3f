"""The one record every dataset layout yields."""
from __future__ import annotations

from dataclasses import asdict, dataclass

NORMAL, ANOMALOUS, UNKNOWN = 0, 1, -1


@dataclass(frozen=True)
class Sample:
    """One image on disk. ``label``: 0 normal, 1 anomalous, -1 unknown (unlabelled split)."""

    path: str
    label: int
    mask_path: str | None
    category: str
    defect_type: str  # "good" for normal images
    split: str = "test"  # train | validation | test

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CategorySplit:
    """Train (normal only) and test samples of one category."""

    category: str
    train: list[Sample]
    test: list[Sample]
