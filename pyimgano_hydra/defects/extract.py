"""One extractor: ROI ▶ binarise ▶ open/close ▶ fill holes ▶ min_area ▶ regions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from pyimgano_hydra.defects.mask import as_map, binarize
from pyimgano_hydra.defects.morphology import components_mask, drop_small, fill_holes, label_components, open_close
from pyimgano_hydra.defects.regions import regions_from_components
from pyimgano_hydra.defects.roi import apply_roi, clamp_roi, roi_stats
from pyimgano_hydra.errors import DataError
from pyimgano_hydra.schemas.defects import check_threshold_value, defects_settings


@dataclass
class DefectsResult:
    """The uint8 {0, 255} mask plus JSON-able regions, ROI stats and coordinate space."""

    mask: np.ndarray
    regions: list[dict]
    n_regions: int  # components in the mask before the max_regions cut
    roi: dict  # {"xyxy_norm", "box_xyxy" (inclusive), "max", "mean"} of the map inside the ROI
    coordinate_space: dict  # {"type": "anomaly_map", "shape": [H, W], "original_size", "scale_xy"}
    pixel_threshold: float

    def to_record(self, mask_path: Optional[str] = None, provenance: Optional[dict] = None) -> dict:
        """The per-image ``defects`` block (JSON-able; the mask itself goes to ``mask_path``)."""
        return {
            "mask": mask_path,
            "mask_area": int(np.count_nonzero(self.mask)),
            "pixel_threshold": self.pixel_threshold,
            "pixel_threshold_provenance": dict(provenance) if provenance is not None else None,
            "roi": dict(self.roi),
            "coordinate_space": dict(self.coordinate_space),
            "n_regions": self.n_regions,
            "regions": [dict(r) for r in self.regions],
        }


def coordinate_space(shape: tuple[int, int], original_size: Optional[Sequence[int]] = None) -> dict:
    """Map coordinates and the (x, y) scale back to the original image (height, width).

    A map pixel (x, y) covers original pixels ``x * sx .. (x + 1) * sx`` (same for y).
    """
    h, w = int(shape[0]), int(shape[1])
    if original_size is None:
        return {"type": "anomaly_map", "shape": [h, w], "original_size": None, "scale_xy": [1.0, 1.0]}
    if len(original_size) != 2 or min(int(v) for v in original_size) < 1:
        raise DataError(f"original_size: expected (height, width) >= 1, got {original_size!r}")
    oh, ow = int(original_size[0]), int(original_size[1])
    return {"type": "anomaly_map", "shape": [h, w], "original_size": [oh, ow], "scale_xy": [ow / w, oh / h]}


def extract_defects(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    settings: Any,
    original_size: Optional[Sequence[int]] = None,
) -> DefectsResult:
    """Mask and regions of one anomaly map (H, W); the map itself is never modified.

    ``settings``: defects settings (DefectsSchema, DictConfig or mapping). ``original_size``:
    the source image (height, width), recorded as a scale in the coordinate space.
    ``settings.enabled`` is not consulted: the caller decides whether to extract.
    """
    s = defects_settings(settings)
    threshold = check_threshold_value(pixel_threshold)
    amap = as_map(anomaly_map)
    roi = clamp_roi(s.roi_xyxy_norm)
    mask = apply_roi(binarize(amap, threshold), roi)
    regions, n_regions = [], 0
    if cv2.countNonZero(mask):  # normal images usually stop here
        if s.open_ksize or s.close_ksize:
            mask = open_close(mask, s.open_ksize, s.close_ksize)  # stays inside the rectangular ROI
        if s.fill_holes:
            mask = fill_holes(mask)
        components = label_components(mask)  # labelled once: min_area removal and regions share it
        if s.min_area > 1:
            kept_before = components.n_kept
            components = drop_small(components, s.min_area)
            if components.n_kept < kept_before:
                mask = components_mask(components, mask)
        regions, n_regions = regions_from_components(components, mask, amap, s.max_regions)
    return DefectsResult(
        mask=mask,
        regions=regions,
        n_regions=n_regions,
        roi=roi_stats(amap, roi),
        coordinate_space=coordinate_space(amap.shape, original_size),
        pixel_threshold=threshold,
    )
