"""The exported graph: uint8 images (N, C, H, W) → image scores (N,) and maps (N, H, W).

One ``nn.Module`` per detector, built from a fitted PatchCore or PaDiM with the same
functions the detector runs (:func:`~pyimgano_hydra.models.patchcore.aggregate_patches`,
:func:`~pyimgano_hydra.models.padim.padim_embedding`, ...): normalisation, the truncated
backbone, patch aggregation, the distance to the fitted statistics (stored as buffers, so
they become ONNX initializers), bilinear upsampling, the Gaussian blur and the image score
(with ``global_weight > 0`` fused with the image-level Gaussian's distance, in float64).
Each ``image_score`` mode is one small function in ``PATCH_SCORES`` / ``MAP_SCORES``.
The map postprocess, tiling and thresholds stay outside (``export.json``).
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.features.backbones import STANDARD_MEAN, STANDARD_STD, Backbone
from pyimgano_hydra.smoothing import kernel_size


class Normalise(nn.Module):
    """uint8 (N, C, H, W), C in {1, 3} → the backbone's normalised float input (its ``preprocess``)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.standardize = backbone.image_norm == "standardize"
        self.register_buffer("mean", backbone.mean.detach().clone().cpu())
        self.register_buffer("std", backbone.std.detach().clone().cpu())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if self.standardize:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
            x = ((x - mean) / std * STANDARD_STD + STANDARD_MEAN).clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class Blur(nn.Module):
    """OpenCV's Gaussian blur (:func:`pyimgano_hydra.smoothing.gaussian_blur`) as separable
    convolutions with a reflect-101 border; identity for ``sigma <= 0``."""

    def __init__(self, sigma: float, size: tuple[int, int]) -> None:
        super().__init__()
        self.radius = kernel_size(sigma) // 2 if sigma > 0 else 0
        if self.radius and self.radius >= min(size):
            raise ConfigError(f"model.smoothing_sigma: {sigma} needs maps wider than {self.radius} pixels, "
                              f"the export input is {size[0]}x{size[1]}")
        width = 2 * self.radius + 1
        kernel = cv2.getGaussianKernel(width, float(sigma), cv2.CV_32F)[:, 0].copy() if self.radius else np.ones(1, np.float32)
        self.register_buffer("kernel", torch.from_numpy(kernel))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W)
        if not self.radius:
            return maps
        r, k = self.radius, self.kernel
        x = F.conv2d(F.pad(maps, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


# -- image scores: one small function per mode ----------------------------------------------
def topk_mean(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """(N,) mean of the largest ``ratio`` share (at least one) of each row of (N, ...)."""
    flat = values.flatten(1)
    k = max(1, math.ceil(ratio * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def power_mean(values: torch.Tensor, p: float) -> torch.Tensor:
    """(N,) power mean of order ``p`` of each row, in float64, the max factored out (no overflow)."""
    flat = values.flatten(1).double().clamp_min(0.0)
    peak = flat.max(dim=1, keepdim=True).values
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    return scale[:, 0] * ((flat / scale) ** p).mean(dim=1) ** (1.0 / p)


def map_max(maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).max(dim=1).values


class Scored:
    """What an image-score function may read: patch scores (N, P), their embeddings (N, P, D),
    nearest bank rows (N, P) and the detector's smoothed maps (N, H, W)."""

    def __init__(self, patch, emb, nearest, maps):
        self.patch, self.emb, self.nearest, self.maps = patch, emb, nearest, maps


def _reweighted_max(graph: "PatchCoreGraph", s: Scored) -> torch.Tensor:
    """PatchCore's ``max``: the max patch score × (1 − softmax weight of its bank entry m*
    among m*'s ``num_neighbors`` nearest bank entries, precomputed at export)."""
    top = s.patch.argmax(dim=1, keepdim=True)  # (N, 1)
    score = s.patch.gather(1, top)[:, 0]
    if graph.support is None:
        return score
    query = s.emb.gather(1, top.unsqueeze(-1).expand(-1, -1, s.emb.shape[-1]))  # (N, 1, D)
    nearest = s.nearest.gather(1, top)[:, 0]  # (N,)
    support = graph.support.index_select(0, nearest)  # (N, k)
    neighbours = graph.bank.index_select(0, support.reshape(-1)).reshape(support.shape[0], support.shape[1], -1)
    dists = (neighbours - query).pow(2).sum(-1).sqrt()
    return (1.0 - torch.softmax(dists, dim=1)[:, 0]) * score


PATCH_SCORES: dict[str, Callable[["PatchCoreGraph", Scored], torch.Tensor]] = {
    "topk": lambda g, s: topk_mean(s.patch, g.detector.topk_ratio),
    "power_mean": lambda g, s: power_mean(s.patch, g.detector.power_mean_p),
    "map_max": lambda g, s: map_max(s.maps),
    "max": _reweighted_max,
}
MAP_SCORES: dict[str, Callable[[object, torch.Tensor], torch.Tensor]] = {
    "topk": lambda detector, maps: topk_mean(maps, detector.topk_ratio),
    "max": lambda detector, maps: map_max(maps),
}


def _refuse_unsupported(detector, modes: dict) -> None:
    if detector.image_score not in modes:
        raise ConfigError(f"model.image_score: {detector.image_score!r} cannot be exported "
                          f"(exportable: {', '.join(modes)})")


class ImageTerm(nn.Module):
    """``global_weight > 0``: fuse the image-level Gaussian's distance into the image score, in
    float64 as :mod:`pyimgano_hydra.models.image_level` does."""

    def __init__(self, gaussian, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)
        self.register_buffer("mean", torch.from_numpy(np.asarray(gaussian.mean_, np.float64)))
        self.register_buffer("precision", torch.from_numpy(np.asarray(gaussian.precision_, np.float64)))

    def forward(self, feats: dict[str, torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
        from pyimgano_hydra.features import pool_features
        from pyimgano_hydra.models.image_level import _EPS

        delta = pool_features(feats, ("mean", "std"), std_correction=0).double() - self.mean
        distance = ((delta @ self.precision) * delta).sum(1).clamp_min(0.0).sqrt()
        return torch.log(scores.double() + _EPS) + self.weight * torch.log(distance + _EPS)


def image_term(detector) -> ImageTerm | None:
    gaussian = getattr(detector, "image_gaussian_", None)
    return None if gaussian is None else ImageTerm(gaussian, detector.global_weight)


class _MapGraph(nn.Module):
    """What both exported detectors share: normalise → backbone, then a per-position distance
    grid upsampled and blurred to the input size, the image score and the optional image term."""

    def __init__(self, detector, size: tuple[int, int], scores: dict) -> None:
        super().__init__()
        _refuse_unsupported(detector, scores)
        self.detector = detector
        self.size = size
        self.normalise = Normalise(detector._backbone())
        self.backbone = detector._backbone().cpu()
        self.blur = Blur(detector.smoothing_sigma, size)
        self.image_score = scores[detector.image_score]
        self.image_term = image_term(detector)

    def smoothed_map(self, grid: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
        """(N, H, W) input-size map of a (N, h·w) distance grid."""
        up = F.interpolate(grid.reshape(n, 1, h, w), size=self.size, mode="bilinear", align_corners=False)
        return self.blur(up)[:, 0]

    def output(self, feats: dict, score: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (score if self.image_term is None else self.image_term(feats, score)).float(), maps


class PatchCoreGraph(_MapGraph):
    """A fitted PatchCore: nearest-bank distance per patch, upsampled and smoothed map, image score."""

    def __init__(self, detector, size: tuple[int, int]) -> None:
        super().__init__(detector, size, PATCH_SCORES)
        bank = torch.from_numpy(np.ascontiguousarray(detector.memory_bank_, dtype=np.float32))
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sq", (bank * bank).sum(1))
        k = min(detector.num_neighbors, len(bank))
        support = None
        if detector.image_score == "max" and k > 1:  # each bank entry's k nearest bank entries
            _, found = detector._neighbour_index().search(np.ascontiguousarray(detector.memory_bank_), k)
            support = torch.from_numpy(found.astype(np.int64))
        self.register_buffer("support", support)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pyimgano_hydra.models.patchcore import aggregate_patches

        d = self.detector
        feats = self.backbone(self.normalise(images))
        emb = aggregate_patches(feats, d.neighbourhood, d.embed_dim, d.neighbourhood_pad)
        n, h, w, dim = emb.shape
        emb = emb.reshape(n, h * w, dim)
        d2 = (emb * emb).sum(-1, keepdim=True) - 2.0 * emb @ self.bank.T + self.bank_sq
        best, nearest = d2.min(dim=-1)
        patch = best.clamp_min(0.0).sqrt()  # (N, P)
        maps = self.smoothed_map(patch, n, h, w)
        return self.output(feats, self.image_score(self, Scored(patch, emb, nearest, maps)), maps)


class PaDiMGraph(_MapGraph):
    """A fitted PaDiM: Mahalanobis distance per position, upsampled and smoothed map, image score."""

    def __init__(self, detector, size: tuple[int, int]) -> None:
        super().__init__(detector, size, MAP_SCORES)
        self.chosen = {k: v.cpu() for k, v in detector.channels_.items()}
        self.register_buffer("mean", torch.from_numpy(np.asarray(detector.mean_, np.float32)))
        self.register_buffer("inv_cov", torch.from_numpy(np.asarray(detector.inv_cov_, np.float32)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pyimgano_hydra.models.padim import mahalanobis, padim_embedding

        feats = self.backbone(self.normalise(images))
        x = padim_embedding(feats, self.chosen, self.detector.grid_size)
        n, _, h, w = x.shape
        dist = mahalanobis(x.flatten(2).transpose(1, 2), self.mean, self.inv_cov)
        maps = self.smoothed_map(dist, n, h, w)
        return self.output(feats, self.image_score(self.detector, maps), maps)


def build_graph(detector, size: tuple[int, int]) -> nn.Module:
    """The export graph of a fitted detector for inputs of ``size`` (height, width)."""
    from pyimgano_hydra.models.padim import PaDiM
    from pyimgano_hydra.models.patchcore import PatchCore
    from pyimgano_hydra.registry import detector_name

    graphs = {PatchCore: PatchCoreGraph, PaDiM: PaDiMGraph}
    graph = graphs.get(type(detector))
    if graph is None:
        raise ConfigError(f"model: {detector_name(type(detector))} cannot be exported to ONNX "
                          "(exportable: patchcore, padim)")
    return graph(detector, size).eval()
