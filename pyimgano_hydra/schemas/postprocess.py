"""Schemas of the ``postprocess`` group (see docs/ADAPTATION.md)."""
from __future__ import annotations

from dataclasses import dataclass

from pyimgano_hydra.errors import check

NORMALIZES = ("none", "minmax", "percentile")
MAX_SIGMA = 1000.0  # pixels; the kernel is 8 sigma wide


@dataclass
class PostprocessSchema:
    """Anomaly-map smoothing and normalisation, fitted on maps of normal train images only;
    plus which maps and overlays the run writes."""

    enabled: bool = True
    sigma: float = 2.0  # Gaussian smoothing in full-resolution pixels; 0 = none
    normalize: str = "minmax"  # none | minmax | percentile
    percentile: float = 99.5  # percentile: train value mapped to 1
    percentile_low: float = 0.5  # percentile: train value mapped to 0
    clip: bool = False  # clip normalised maps to [0, 1] (loses ranking above 1)
    save_maps: bool = False  # write categories/<cat>/maps/*.npy
    overlays_top_n: int = 0  # overlays of the N most anomalous test images
    overlays_normal_n: int = 0  # overlays of a few normal test images

    def __post_init__(self) -> None:
        check(0 <= self.sigma <= MAX_SIGMA, "postprocess.sigma", f"must be in 0..{MAX_SIGMA} (0 = no smoothing)")
        check(self.normalize in NORMALIZES, "postprocess.normalize",
              f"must be one of {', '.join(NORMALIZES)}")
        check(0 <= self.percentile_low < self.percentile <= 100, "postprocess.percentile",
              "need 0 <= percentile_low < percentile <= 100")
        check(self.overlays_top_n >= 0, "postprocess.overlays_top_n", "must be >= 0")
        check(self.overlays_normal_n >= 0, "postprocess.overlays_normal_n", "must be >= 0")


SCHEMAS = {"postprocess": PostprocessSchema}
