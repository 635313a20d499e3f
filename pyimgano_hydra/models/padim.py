"""PaDiM (Defard et al., 2020): a Gaussian per feature-map position, Mahalanobis maps.

Fit: backbone maps of ``layers`` → all their channels (``d: null``, the default: chosen on
the bench suite, and no seed luck) or a seeded random subset of ``d`` of them (the paper's
reduction) → upsampled to the finest layer, or average-pooled to ``grid_size`` ×
``grid_size`` positions → per position the mean and the covariance ``Σ + eps·I``,
accumulated batch by batch in float32 (shifted by the first batch's mean, so no
cancellation) and inverted once, in place. Peak memory is about two ``positions × d²``
float32 arrays (d = channels kept); fit refuses up front when that exceeds ``max_memory_gb``.

Predict: per position the Mahalanobis distance; the map is upsampled to the input size
and Gaussian-smoothed (``smoothing_sigma`` pixels); the image score is the mean of its top
``topk_ratio`` pixels (``image_score: topk``, chosen on the bench suite) or the map's max (``image_score: max``).
``global_weight > 0`` fuses in the image-level Gaussian of
:mod:`pyimgano_hydra.models.image_level` (image scores only; maps unchanged).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pyimgano_hydra.errors import ConfigError, check
from pyimgano_hydra.features import iter_features
from pyimgano_hydra.models.base import BackboneMixin, BaseDetector, DetectorOutput
from pyimgano_hydra.models.image_level import ImageGaussian, channel_stats, fuse, topk_mean
from pyimgano_hydra.models.kernels import upsample_and_smooth


def padim_embedding(feats: dict[str, torch.Tensor], chosen: dict[str, torch.Tensor],
                    grid_size: int | None) -> torch.Tensor:
    """Layer maps → (B, d, h, w): the ``chosen`` channels of each layer, upsampled to the finest
    layer (or average-pooled to ``grid_size`` × ``grid_size``) and concatenated."""
    size = max((f.shape[-2:] for f in feats.values()), key=lambda s: s[0] * s[1])
    if grid_size:
        size = (grid_size, grid_size)
    parts = []
    for layer, f in feats.items():
        if not len(chosen[layer]):  # a random subset (model.d) may keep none of a layer's channels
            continue
        f = f.float().index_select(1, chosen[layer])
        if f.shape[-2:] != size:
            if grid_size and f.shape[-2] >= size[0]:
                f = F.adaptive_avg_pool2d(f, size)
            else:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        parts.append(f)
    return torch.cat(parts, dim=1)


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    """(B, P) distance of embeddings (B, P, d) to the per-position Gaussians (P, d), (P, d, d)."""
    delta = x - mean
    return torch.einsum("bpi,pij,bpj->bp", delta, inv_cov, delta).clamp_min(0).sqrt()


class PaDiM(BackboneMixin, BaseDetector):
    """PaDiM anomaly detector with anomaly maps; see the module docstring for the knobs."""

    produces_maps = True
    fitted_attribute = "inv_cov_"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[str] = ("blocks.1", "blocks.2", "blocks.3"),
        pretrained: bool = True,
        weights_path: str | None = None,
        device: str = "auto",
        batch_size: int = 16,
        d: int | None = None,
        grid_size: int | None = None,
        eps: float = 0.01,
        smoothing_sigma: float = 4.0,
        max_memory_gb: float = 4.0,
        image_norm: str = "none",
        image_score: str = "topk",
        topk_ratio: float = 0.01,
        global_weight: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.pretrained = pretrained
        self.weights_path = weights_path
        self.device = device
        self.batch_size = batch_size
        self.d = d
        self.grid_size = grid_size
        self.eps = eps
        self.smoothing_sigma = smoothing_sigma
        self.max_memory_gb = max_memory_gb
        self.image_norm = image_norm
        self.image_score = image_score
        self.topk_ratio = topk_ratio
        self.global_weight = global_weight
        self.seed = seed

    def _choose_channels(self) -> dict[str, torch.Tensor]:
        """Per-layer indices of the channels kept: all of them, or a seeded random subset of ``d``."""
        channels = self._backbone().channels()
        if self.d is None:
            return {layer: torch.arange(count) for layer, count in channels.items()}
        total = sum(channels.values())
        check(1 <= self.d <= total, "model.d", f"must be in [1, {total}] (channels of {list(channels)}) or null")
        gen = torch.Generator().manual_seed(self.seed)
        picked = torch.randperm(total, generator=gen)[: self.d].sort().values
        chosen, offset = {}, 0
        for layer, count in channels.items():
            mask = (picked >= offset) & (picked < offset + count)
            chosen[layer] = picked[mask] - offset
            offset += count
        return chosen

    def _embed(self, images: np.ndarray, desc: str):
        """Yield ((B, P, d) float32 embeddings, P = grid positions; image stats or None)."""
        backbone = self._backbone()
        device = backbone.device
        chosen = {k: v.to(device) for k, v in self.channels_.items()}
        for feats in iter_features(backbone, images, self.batch_size, desc):
            stats = channel_stats(feats) if self.global_weight > 0 else None
            x = padim_embedding(feats, chosen, self.grid_size)  # (B, d, h, w)
            self.grid_ = tuple(x.shape[-2:])
            yield x.flatten(2).transpose(1, 2).contiguous(), stats  # (B, P, d)

    def _check_memory(self, positions: int, d: int) -> None:
        need = 2 * positions * d**2 * 4 / 2**30
        if need > self.max_memory_gb:
            key = "model.grid_size" if self.grid_size else "model.d"
            raise ConfigError(
                f"{key}: a Gaussian on {positions} positions × {d}² channels needs {need:.1f} GB "
                f"(> model.max_memory_gb={self.max_memory_gb}); set model.d (a random subset, e.g. 100) "
                f"or model.grid_size"
            )

    def _positions(self, images: np.ndarray) -> int:
        """Grid positions of the Gaussians, known before any feature is extracted (grid_size=1000
        took 18.9 GB, and resize 2048 about 2 GB, to reach the check on the first batch)."""
        if self.grid_size:
            return self.grid_size**2
        reduction = min(self._backbone().reductions().values())
        height, width = images.shape[1:3]
        return math.ceil(height / reduction) * math.ceil(width / reduction)

    def fit(self, images: np.ndarray) -> "PaDiM":
        self._check_params()
        self.channels_ = self._choose_channels()
        self._check_memory(self._positions(images), sum(len(c) for c in self.channels_.values()))
        count = 0
        shift = total = outer = None
        pooled = []
        with torch.inference_mode():
            for x, stats in self._embed(images, "fit features"):
                pooled.append(stats)
                if shift is None:
                    self._check_memory(x.shape[1], x.shape[2])
                    shift = x.mean(0)  # (P, d)
                    total = torch.zeros_like(shift)
                    outer = torch.zeros(x.shape[1], x.shape[2], x.shape[2], device=x.device)
                xc = (x - shift).transpose(0, 1)  # (P, B, d)
                total += xc.sum(1)
                outer.baddbmm_(xc.transpose(1, 2), xc)  # in place: no (P, d, d) temporary
                count += x.shape[0]
            check(count >= 2, "images", "PaDiM needs at least 2 training images")
            mean_c = total / count
            cov = outer.div_(count - 1)
            for start in range(0, cov.shape[0], 256):  # finish and invert in place, by chunks
                m = mean_c[start : start + 256]
                chunk = cov[start : start + 256]
                chunk -= m[:, :, None] * m[:, None, :] * (count / (count - 1))
                chunk.diagonal(dim1=1, dim2=2).add_(self.eps)
                cov[start : start + 256] = torch.linalg.inv(chunk)
        self.mean_ = (shift + mean_c).cpu().numpy()
        self.inv_cov_ = cov.cpu().numpy()
        self.image_gaussian_ = ImageGaussian().fit(np.concatenate(pooled)) if self.global_weight > 0 else None
        return self

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        self._check_fitted()
        height, width = images.shape[1:3]
        device = self._backbone().device
        mean = torch.from_numpy(self.mean_).to(device)
        inv_cov = torch.from_numpy(self.inv_cov_).to(device)
        maps, scores = [], []
        for x, stats in self._embed(images, "features"):
            dist = mahalanobis(x, mean, inv_cov)
            batch = upsample_and_smooth(dist.view(-1, 1, *self.grid_), (height, width), self.smoothing_sigma)
            maps.append(batch)
            if self.image_score == "topk":
                image = topk_mean(batch, self.topk_ratio)
            else:
                image = batch.reshape(len(batch), -1).max(axis=1).astype(np.float64)
            if self.image_gaussian_ is not None:
                image = fuse(image, self.image_gaussian_.distance(stats), self.global_weight)
            scores.append(image)
        return DetectorOutput(scores=np.concatenate(scores).astype(np.float64), maps=np.concatenate(maps))

    def state_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "channels": {k: v.cpu().numpy() for k, v in self.channels_.items()},
            "mean": self.mean_,
            "inv_cov": self.inv_cov_,
            "grid": list(self.grid_),
        } | (self.image_gaussian_.state_dict() if self.image_gaussian_ is not None else {})

    def load_state_dict(self, state: dict[str, Any]) -> "PaDiM":
        self.backbone_ = None
        self.channels_ = {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in state["channels"].items()}
        self.mean_ = np.asarray(state["mean"], dtype=np.float32)
        self.inv_cov_ = np.asarray(state["inv_cov"], dtype=np.float32)
        (p, d), inv = self.mean_.shape, self.inv_cov_
        if not p * d or inv.shape != (p, d, d) or not (np.isfinite(self.mean_).all() and np.isfinite(inv).all()):
            raise ValueError(f"mean (P, d) and inv_cov (P, d, d) must be finite and agree, got {self.mean_.shape} "
                             f"and {inv.shape}")
        self.grid_ = tuple(state["grid"])
        self.image_gaussian_ = ImageGaussian.from_state(state)
        return self
