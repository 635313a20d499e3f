"""Region of interest: a normalised rectangle ``[x1, y1, x2, y2]`` over the anomaly map.

The ROI gates the defects output only (mask and regions); image scores never change with it.
``None`` means the whole map.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np

from pyimgano_hydra.errors import ConfigError

RoiNorm = Optional[tuple[float, float, float, float]]
ROI_KEY = "defects.roi_xyxy_norm"


def clamp_roi(roi_xyxy_norm: Optional[Sequence[float]], key: str = ROI_KEY) -> RoiNorm:
    """Clamp each coordinate to [0, 1] and re-order so x1 < x2, y1 < y2; None stays None.

    Raises ConfigError naming ``key`` for a malformed ROI or one that is empty after clamping.
    """
    if roi_xyxy_norm is None:
        return None
    values = list(roi_xyxy_norm) if not isinstance(roi_xyxy_norm, (str, bytes)) else []
    ok = len(values) == 4 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
    )
    if not ok or not all(math.isfinite(float(v)) for v in values):
        raise ConfigError(f"{key}: must be null or [x1, y1, x2, y2] of 4 finite numbers in [0, 1]")
    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in values)
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    if x2 <= x1 or y2 <= y1:
        raise ConfigError(f"{key}: ROI {values} is empty after clamping to [0, 1]; give x1 != x2 and y1 != y2")
    return (x1, y1, x2, y2)


def roi_box(roi: RoiNorm, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` with exclusive ends: every pixel the ROI touches.

    ``roi`` must come from :func:`clamp_roi`. Columns span ``floor(x1*W) .. ceil(x2*W)``, so a
    non-empty ROI always covers at least one pixel.
    """
    h, w = int(shape[0]), int(shape[1])
    if roi is None:
        return (0, 0, w, h)
    x1, y1, x2, y2 = roi
    x0, x1p = math.floor(x1 * w), math.ceil(x2 * w)
    y0, y1p = math.floor(y1 * h), math.ceil(y2 * h)
    x0, y0 = min(x0, w - 1), min(y0, h - 1)
    return (x0, y0, max(x1p, x0 + 1), max(y1p, y0 + 1))


def roi_mask(roi: RoiNorm, shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask of ``shape``: 255 inside the ROI, 0 outside."""
    x0, y0, x1, y1 = roi_box(roi, shape)
    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def apply_roi(mask: np.ndarray, roi: RoiNorm) -> np.ndarray:
    """Zero ``mask`` outside the ROI, in place; returns it."""
    if roi is None:
        return mask
    x0, y0, x1, y1 = roi_box(roi, mask.shape)
    mask[:y0] = 0
    mask[y1:] = 0
    mask[:, :x0] = 0
    mask[:, x1:] = 0
    return mask


def roi_stats(anomaly_map: np.ndarray, roi: RoiNorm) -> dict:
    """Max and mean of the map inside the ROI, with the ROI and its inclusive pixel box."""
    x0, y0, x1, y1 = roi_box(roi, anomaly_map.shape)
    crop = anomaly_map[y0:y1, x0:x1]
    return {
        "xyxy_norm": None if roi is None else [float(v) for v in roi],
        "box_xyxy": [x0, y0, x1 - 1, y1 - 1],
        "max": float(crop.max()),
        "mean": float(cv2.mean(crop)[0]),  # accumulates in double
    }
