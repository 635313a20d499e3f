"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distance to a coreset of normal patches.

Fit: backbone feature maps of ``layers`` → local neighbourhood average (``neighbourhood``
× ``neighbourhood``, zero padding counted unless ``neighbourhood_pad: exclude``) →
upsampled to the finest layer and concatenated → optionally averaged down to ``embed_dim``
channels → greedy k-center coreset (``coreset_ratio`` of all
patches, at most ``coreset_max_size`` rows, selected on a seeded ``projection_dim`` random
projection, per image then over the union; see :mod:`pyimgano_hydra.models.coreset`).

Predict: each patch's distance to its nearest bank entry is its score (exact, one matrix
product per chunk of patches: on 2 CPU cores torch's BLAS ran this 3× faster than faiss
``IndexFlatL2``, which still serves the reweighting's neighbour search). The image score is
the max patch score, reweighted as in the paper by how isolated the matched bank entry is
among its ``num_neighbors`` neighbours (``image_score: max``), the mean of the top
``topk_ratio`` share of patch scores (``image_score: topk``), the power mean of order
``power_mean_p`` of all patch scores (``image_score: power_mean``, the default: chosen on the
bench suite, see docs/BENCHMARKS.md), or the max of the smoothed map (``image_score: map_max``). The map is upsampled bilinearly to the input size and
Gaussian-smoothed (``smoothing_sigma`` pixels), float32. ``image_norm: standardize``
maps each image to a fixed intensity mean / spread before the backbone (removes exposure
differences; see docs/MODELS.md for its effect on MTD).

``global_weight > 0`` adds an image-level term: each image's per-channel mean and std of
the same feature maps, under one Gaussian (Ledoit-Wolf covariance) fitted on the training
images; image score = log(patch score) + global_weight · log(Mahalanobis distance). It
changes image scores only, never the maps.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from pyimgano_hydra.features import iter_features, resolve_device
from pyimgano_hydra.models.base import BackboneMixin, BaseDetector, DetectorOutput
from pyimgano_hydra.models.coreset import StreamingCoreset
from pyimgano_hydra.models.image_level import ImageGaussian, channel_stats, fuse, power_mean, topk_mean
from pyimgano_hydra.models.kernels import nearest_bank_entries, upsample_and_smooth

log = logging.getLogger(__name__)


def aggregate_patches(
    feats: dict[str, torch.Tensor], neighbourhood: int, embed_dim: int | None, pad: str = "zeros"
) -> torch.Tensor:
    """Layer maps → patch embeddings (B, h, w, D) at the finest layer's resolution.

    ``pad="zeros"`` counts the zero padding in the neighbourhood average (as in the paper's
    code): border patches shrink alike in train and test. ``"exclude"`` averages the in-image
    cells only; on stochastic textures that made border patches noisy and cost 0.1-0.2 image
    AUROC (docs/BENCHMARKS.md, "Choosing defaults"), on MTD's deep layers it kept AUPRO.
    """
    size = max((f.shape[-2:] for f in feats.values()), key=lambda s: s[0] * s[1])
    parts = []
    for f in feats.values():
        f = f.float()
        if neighbourhood > 1:
            f = F.avg_pool2d(f, neighbourhood, 1, neighbourhood // 2, count_include_pad=pad == "zeros")
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        parts.append(f)
    x = torch.cat(parts, dim=1).permute(0, 2, 3, 1)  # (B, h, w, C)
    if embed_dim and embed_dim < x.shape[-1]:
        b, h, w, c = x.shape
        x = F.adaptive_avg_pool1d(x.reshape(-1, 1, c), embed_dim).reshape(b, h, w, embed_dim)
    return x.contiguous()


class PatchCore(BackboneMixin, BaseDetector):
    """PatchCore anomaly detector with anomaly maps; see the module docstring for the knobs."""

    produces_maps = True
    fitted_attribute = "memory_bank_"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[str] = ("blocks.2", "blocks.4"),
        pretrained: bool = True,
        weights_path: str | None = None,
        device: str = "auto",
        batch_size: int = 16,
        neighbourhood: int = 3,
        neighbourhood_pad: str = "zeros",
        embed_dim: int | None = None,
        coreset_ratio: float = 0.1,
        coreset_max_size: int | None = 20000,
        projection_dim: int = 128,
        num_neighbors: int = 9,
        image_score: str = "power_mean",
        topk_ratio: float = 0.03,
        power_mean_p: float = 24.0,
        smoothing_sigma: float = 4.0,
        image_norm: str = "none",
        global_weight: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.pretrained = pretrained
        self.weights_path = weights_path
        self.device = device
        self.batch_size = batch_size
        self.neighbourhood = neighbourhood
        self.neighbourhood_pad = neighbourhood_pad
        self.embed_dim = embed_dim
        self.coreset_ratio = coreset_ratio
        self.coreset_max_size = coreset_max_size
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.image_score = image_score
        self.topk_ratio = topk_ratio
        self.power_mean_p = power_mean_p
        self.smoothing_sigma = smoothing_sigma
        self.image_norm = image_norm
        self.global_weight = global_weight
        self.seed = seed

    # -- internals -------------------------------------------------------------------
    def _embed(self, images: np.ndarray, desc: str):
        """Yield ((B, h, w, D) patch embeddings on the compute device, (B, 2·ΣC) channel
        mean/std or None)."""
        backbone = self._backbone()
        for feats in iter_features(backbone, images, self.batch_size, desc):
            pooled = channel_stats(feats) if self.global_weight > 0 else None
            yield aggregate_patches(feats, self.neighbourhood, self.embed_dim, self.neighbourhood_pad), pooled

    def _build_index(self) -> None:
        """Bank on the compute device with its squared norms (nearest-patch search); faiss later."""
        self.bank_t_ = torch.from_numpy(np.ascontiguousarray(self.memory_bank_, dtype=np.float32)).to(
            resolve_device(self.device))  # the backbone's device, without building it on load
        self.bank_sq_ = (self.bank_t_ * self.bank_t_).sum(1)
        self.index_ = None

    def _neighbour_index(self) -> faiss.IndexFlatL2:
        """faiss index over the bank, built on first use (only ``image_score: max`` needs it)."""
        if self.index_ is None:
            self.index_ = faiss.IndexFlatL2(self.memory_bank_.shape[1])
            self.index_.add(np.ascontiguousarray(self.memory_bank_, dtype=np.float32))
        return self.index_

    # -- estimator API ---------------------------------------------------------------
    def fit(self, images: np.ndarray) -> "PatchCore":
        self._check_params()
        coreset, pooled = None, []
        for emb, stats in self._embed(images, "fit features"):
            b, h, w, d = emb.shape
            if coreset is None:
                coreset = StreamingCoreset(self.bank_ratio(len(images) * h * w), self.projection_dim, self.seed)
            coreset.add(emb.reshape(-1, d), part_size=h * w)
            pooled.append(stats)
        self.feature_shape_ = (h, w)
        self.memory_bank_ = coreset.result().cpu().numpy()
        log.debug("patchcore memory bank %s from %d images of %dx%d patches", self.memory_bank_.shape, len(images), h, w)
        self._build_index()
        self.image_gaussian_ = ImageGaussian().fit(np.concatenate(pooled)) if self.global_weight > 0 else None
        return self

    def bank_ratio(self, n_patches: int) -> float:
        """Share of the ``n_patches`` training patches kept: ``coreset_ratio``, capped."""
        if self.coreset_max_size is None:
            return self.coreset_ratio
        return min(self.coreset_ratio, self.coreset_max_size / n_patches)

    def _patch_scores(self, emb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(n,) distance of each patch to its nearest bank entry, and that entry's index."""
        return nearest_bank_entries(emb, self.bank_t_, self.bank_sq_)

    def _image_scores(self, emb: torch.Tensor, patch: np.ndarray, nn_idx: np.ndarray) -> np.ndarray:
        """(B,) from patch scores (B, h*w); PatchCore reweighting of the max patch."""
        if self.image_score == "topk":
            return topk_mean(patch, self.topk_ratio)
        if self.image_score == "power_mean":
            return power_mean(patch, self.power_mean_p)
        top = patch.argmax(axis=1)
        scores = patch[np.arange(len(patch)), top]
        k = min(self.num_neighbors, len(self.memory_bank_))
        if k <= 1:
            return scores
        rows = np.arange(len(patch))
        query = emb[rows, top]  # (B, D) the most anomalous patch of each image
        nearest = self.memory_bank_[nn_idx[rows, top]]  # its nearest bank entry m*
        _, support = self._neighbour_index().search(np.ascontiguousarray(nearest), k)  # m*'s neighbours
        dists = np.linalg.norm(self.memory_bank_[support] - query[:, None, :], axis=2)  # (B, k)
        weights = 1.0 - torch.softmax(torch.from_numpy(dists), dim=1)[:, 0].numpy()
        return weights * scores

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        self._check_fitted()
        height, width = images.shape[1:3]
        all_scores, all_maps = [], []
        for emb, pooled in self._embed(images, "features"):
            b, h, w, d = emb.shape
            if (h, w) != tuple(self.feature_shape_):  # another resize or tile size than the fit's
                raise ValueError(f"{width}x{height} images give a {h}x{w} feature grid; the memory bank was "
                                 f"fitted on {self.feature_shape_[0]}x{self.feature_shape_[1]} (feature_shape): "
                                 "score images of the size it was fitted on")
            flat = emb.reshape(-1, d)
            patch, nn_idx = self._patch_scores(flat)
            patch, nn_idx = patch.reshape(b, h * w), nn_idx.reshape(b, h * w)
            grid = torch.from_numpy(patch.reshape(b, 1, h, w)).to(emb.device)
            maps = upsample_and_smooth(grid, (height, width), self.smoothing_sigma)
            all_maps.append(maps)
            if self.image_score == "map_max":
                scores = maps.reshape(b, -1).max(axis=1).astype(np.float64)
            else:
                scores = self._image_scores(flat.cpu().numpy().reshape(b, h * w, d), patch, nn_idx).astype(np.float64)
            if self.image_gaussian_ is not None:
                scores = fuse(scores, self.image_gaussian_.distance(pooled), self.global_weight)
            all_scores.append(scores)
        return DetectorOutput(
            scores=np.concatenate(all_scores).astype(np.float64), maps=np.concatenate(all_maps)
        )

    # -- hand-off ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._check_fitted()
        state = {
            "memory_bank": self.memory_bank_,
            "feature_shape": list(self.feature_shape_),
        }
        if self.image_gaussian_ is not None:
            state |= self.image_gaussian_.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> "PatchCore":
        self.backbone_ = None
        self.memory_bank_ = np.ascontiguousarray(np.asarray(state["memory_bank"], dtype=np.float32))
        bank = self.memory_bank_
        if bank.ndim != 2 or not bank.size or not np.isfinite(bank).all():
            raise ValueError(f"memory_bank must be a non-empty finite (n, d) array, got shape {bank.shape}")
        shape = state["feature_shape"]
        if not (isinstance(shape, (list, tuple)) and len(shape) == 2
                and all(type(v) is int and 0 < v <= 1 << 16 for v in shape)):
            raise ValueError(f"feature_shape must be [height, width] of the fitted feature grid, got {shape!r}")
        self.feature_shape_ = tuple(shape)
        self.image_gaussian_ = ImageGaussian.from_state(state)
        if (self.image_gaussian_ is not None) != (self.global_weight > 0):
            raise ValueError(f"global_weight {self.global_weight:g} with{'out' if self.image_gaussian_ is None else ''} "
                             "a stored image Gaussian (global_mean, global_precision): the params do not describe it")
        self._build_index()
        return self
