"""One Gaussian blur for anomaly maps (detectors and postprocess): OpenCV, per map."""
from __future__ import annotations

import cv2
import numpy as np


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each (H, W) map of (N, H, W) by ``sigma`` pixels; radius 4σ, mirrored border
    (as scipy.ndimage); float32. ``sigma <= 0`` returns the maps unchanged."""
    maps = np.asarray(maps, dtype=np.float32)
    if sigma <= 0:
        return maps
    size = 2 * max(1, int(4.0 * sigma + 0.5)) + 1
    out = np.empty_like(maps)
    for i, m in enumerate(maps):
        out[i] = cv2.GaussianBlur(m, (size, size), float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return out
