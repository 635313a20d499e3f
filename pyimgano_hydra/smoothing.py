"""One Gaussian blur for anomaly maps (detectors and postprocess): OpenCV per map on the
CPU, and a torch version for maps already on a GPU that gives the same values (to 1e-5)."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def kernel_size(sigma: float) -> int:
    """Odd kernel width: radius 4σ (at least 1)."""
    return 2 * max(1, int(4.0 * sigma + 0.5)) + 1


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each (H, W) map of (N, H, W) by ``sigma`` pixels; radius 4σ, mirrored border
    (as scipy.ndimage); float32. ``sigma <= 0`` returns the maps unchanged."""
    maps = np.asarray(maps, dtype=np.float32)
    if sigma <= 0:
        return maps
    size = kernel_size(sigma)
    out = np.empty_like(maps)
    for i, m in enumerate(maps):
        out[i] = cv2.GaussianBlur(m, (size, size), float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return out


def gaussian_blur_torch(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``gaussian_blur`` for a (N, H, W) tensor on its own device: OpenCV's float32 kernel,
    separable, reflect-101 border. Maps narrower than the kernel radius go through OpenCV."""
    maps = maps.float()
    if sigma <= 0:
        return maps
    size = kernel_size(sigma)
    radius = size // 2
    if radius >= maps.shape[-1] or radius >= maps.shape[-2]:  # torch's reflect needs pad < size
        return torch.from_numpy(gaussian_blur(maps.cpu().numpy(), sigma)).to(maps.device)
    kernel = torch.from_numpy(cv2.getGaussianKernel(size, float(sigma), cv2.CV_32F)[:, 0].copy()).to(maps.device)
    x = F.pad(maps[:, None], (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, size))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, kernel.view(1, 1, size, 1))[:, 0]
