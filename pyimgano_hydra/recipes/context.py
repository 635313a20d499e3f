"""What a recipe receives for one category and what it gives back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pyimgano_hydra.runs.layout import CategoryDir


@dataclass
class RecipeContext:
    """Everything one category needs: data, a detector factory, group settings, output paths."""

    dataset: Any
    category: str
    make_detector: Callable[[], Any]
    out: CategoryDir
    preprocessing: dict = field(default_factory=dict)  # resize, input_mode: how images are decoded
    postprocess: dict = field(default_factory=dict)
    defects: dict = field(default_factory=dict)
    seed: int = 0


@dataclass
class CategoryResult:
    """Plain-data outcome of one category (the category's report.json)."""

    category: str
    metrics: dict
    threshold: dict
    timings: dict
    counts: dict
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "metrics": self.metrics,
            "threshold": self.threshold,
            "timings": self.timings,
            "counts": self.counts,
            "notes": self.notes,
            **self.extra,
        }
