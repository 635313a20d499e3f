"""Binarise an anomaly map at a pixel threshold into a uint8 mask of exactly {0, 255}."""
from __future__ import annotations

import numpy as np

from pyimgano_hydra.errors import DataError

FOREGROUND = 255  # defect pixels; background is 0


def as_map(anomaly_map: np.ndarray) -> np.ndarray:
    """The map as a finite 2-D float32 array (no copy when it already is one)."""
    arr = np.asarray(anomaly_map)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"anomaly map: expected a non-empty (H, W) array, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataError("anomaly map: contains NaN or inf; fix the detector output before extracting defects")
    return arr


def binarize(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """uint8 mask: 255 where ``map > pixel_threshold`` (strictly above), 0 elsewhere."""
    arr = np.asarray(anomaly_map)
    mask = np.greater(arr, np.float32(pixel_threshold) if arr.dtype == np.float32 else pixel_threshold)
    return mask.view(np.uint8) * np.uint8(FOREGROUND)
