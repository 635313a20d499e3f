"""Per-image defects export shared by the recipe and inference: extract, save mask, record."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from pyimgano_hydra.defects.evaluate import DefectsEvaluator
from pyimgano_hydra.defects.extract import extract_defects
from pyimgano_hydra.defects.io import save_mask
from pyimgano_hydra.defects.pixel_threshold import PixelThreshold
from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.schemas.defects import defects_settings

MAP_CAPABLE = "patchcore, padim, autoencoder"


def require_maps(detector: Any) -> None:
    """Defects need anomaly maps: refuse a map-less detector before any work."""
    if not getattr(detector, "produces_maps", False):
        raise ConfigError(f"defects.enabled: {type(detector).__name__} produces no anomaly maps; "
                          f"use a map-capable model ({MAP_CAPABLE}) or defects=none")


class DefectsExporter:
    """Extracts each map's defects, writes its mask, returns the record's ``defects`` block,
    and accumulates pixel / region figures when ground truth is given."""

    def __init__(self, settings: Any, threshold: PixelThreshold, mask_dir: Path, relative_to: Path):
        self.settings = defects_settings(settings)
        self.threshold = threshold
        self.mask_dir = Path(mask_dir)
        self.relative_to = Path(relative_to)
        self.evaluator = DefectsEvaluator()
        self._evaluated = False

    def __call__(self, stem: str, anomaly_map: np.ndarray, original_size: Optional[tuple[int, int]] = None,
                 gt_mask: Optional[np.ndarray] = None, label: Optional[int] = None) -> dict:
        result = extract_defects(anomaly_map, self.threshold.value, self.settings, original_size)
        mask_path = None
        if self.settings.save_masks:
            saved = save_mask(result.mask, self.mask_dir / stem, self.settings.mask_format)
            mask_path = str(saved.relative_to(self.relative_to))
        if gt_mask is not None and (label is None or label >= 0):
            self.evaluator.update(result.mask, gt_mask, label)
            self._evaluated = True
        return result.to_record(mask_path, self.threshold.provenance)

    def figures(self) -> Optional[dict]:
        """Pixel precision/recall/F1 and region figures at the threshold (None without ground truth)."""
        return self.evaluator.result() if self._evaluated else None
