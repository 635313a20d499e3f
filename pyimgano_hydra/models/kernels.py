"""Device kernels of the map detectors: nearest-bank search and map smoothing.

Each runs on the device of the tensors it gets (CPU or a GPU), so the CPU tests exercise
the code a GPU runs. Work is chunked so a distance block fits: on a GPU a quarter of the
memory free at call time, on the CPU ``CPU_CHUNK_ELEMENTS`` entries.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pyimgano_hydra.smoothing import gaussian_blur, gaussian_blur_torch

CPU_CHUNK_ELEMENTS = 1 << 24  # patches × bank entries per distance block (64 MB of float32)


def chunk_rows(bank_rows: int, device: torch.device) -> int:
    """Query rows per (rows × bank_rows) float32 distance block on ``device``."""
    budget = CPU_CHUNK_ELEMENTS
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = max(CPU_CHUNK_ELEMENTS, free // 4 // 4 // 3)  # 3 blocks alive: d2, min, temporaries
    return max(1, int(budget // max(bank_rows, 1)))


def nearest_bank_entries(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor,
                         rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 distance of each query row to its nearest bank row, and that row's index.

    ``bank`` (m, D) and ``bank_sq`` (m,) live on the compute device; ``queries`` (n, D) go
    there chunk by chunk. Returns CPU numpy arrays (n,) float32 and (n,) int64.
    """
    device = bank.device
    rows = rows or chunk_rows(len(bank), device)
    dist, idx = [], []
    for q in queries.split(rows):
        q = q.to(device, dtype=torch.float32, non_blocking=True)
        d2 = torch.addmm(bank_sq, q, bank.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
        best, arg = d2.min(1)
        dist.append(best.clamp_min_(0.0).sqrt_())
        idx.append(arg)
    return torch.cat(dist).cpu().numpy(), torch.cat(idx).cpu().numpy()


def upsample_and_smooth(grid: torch.Tensor, size: tuple[int, int], sigma: float) -> np.ndarray:
    """(B, 1, h, w) patch scores → (B, H, W) float32 maps: bilinear upsampling, then the
    Gaussian blur, on ``grid``'s device (OpenCV on the CPU, the matching torch blur on a GPU)."""
    up = F.interpolate(grid.float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    if up.device.type == "cpu":
        return gaussian_blur(up.numpy(), sigma)
    return gaussian_blur_torch(up, sigma).cpu().numpy()
