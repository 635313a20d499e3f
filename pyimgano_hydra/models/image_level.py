"""Image-level pieces shared by the map detectors (PatchCore, PaDiM).

* ``channel_stats(feats)``: per image, the spatial mean and std of every channel of every
  layer, ``(B, 2·ΣC)`` float64 — a texture fingerprint of the whole image.
* ``ImageGaussian``: one Gaussian (Ledoit-Wolf covariance) over the training fingerprints;
  ``distance`` is the Mahalanobis distance of new fingerprints.
* ``fuse(scores, distance, weight)``: ``log(score) + weight · log(distance)`` — scale-free,
  so the patch score and the image term need no calibration against each other.
* ``topk_mean(values, ratio)``: mean of the top ``ratio`` share of each row.
* ``power_mean(values, p)``: ``(mean(v^p))^(1/p)`` of each row — between the mean (p=1)
  and the max (p→∞); one strong patch and a spread of weaker ones both raise it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pyimgano_hydra.errors import check
from pyimgano_hydra.features import pool_features

_EPS = 1e-6


def channel_stats(feats: dict[str, torch.Tensor]) -> np.ndarray:
    """(B, 2·ΣC) float64: per-channel spatial mean and (population) std of each layer's maps."""
    return pool_features(feats, ("mean", "std"), std_correction=0).cpu().double().numpy()


def topk_mean(values: np.ndarray, ratio: float) -> np.ndarray:
    """(B,) mean of the largest ``ratio`` share (at least one) of each row of ``values``."""
    flat = values.reshape(len(values), -1)
    k = max(1, math.ceil(ratio * flat.shape[1]))
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def power_mean(values: np.ndarray, p: float) -> np.ndarray:
    """(B,) power mean of order ``p`` of each row of non-negative ``values``, in float64."""
    flat = np.maximum(values.reshape(len(values), -1).astype(np.float64), 0.0)
    peak = flat.max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak, 1.0)  # factor out the max: no overflow at large p
    return scale[:, 0] * np.mean((flat / scale) ** p, axis=1) ** (1.0 / p)


def fuse(scores: np.ndarray, distance: np.ndarray, weight: float) -> np.ndarray:
    """Log-product of a detector's image scores and the image-level distance."""
    return np.log(np.asarray(scores, np.float64) + _EPS) + weight * np.log(distance + _EPS)


class ImageGaussian:
    """Ledoit-Wolf Gaussian over training fingerprints; Mahalanobis distance of new ones."""

    def fit(self, stats: np.ndarray) -> "ImageGaussian":
        from sklearn.covariance import LedoitWolf

        check(len(stats) >= 2, "model.global_weight", "the image-level term needs at least 2 training images")
        gauss = LedoitWolf().fit(stats)
        self.mean_, self.precision_ = gauss.location_, gauss.precision_
        return self

    def distance(self, stats: np.ndarray) -> np.ndarray:
        delta = stats - self.mean_
        return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", delta, self.precision_, delta), 0.0))

    def state_dict(self) -> dict[str, Any]:
        return {"global_mean": self.mean_, "global_precision": self.precision_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ImageGaussian | None":
        """The stored Gaussian, or None when the checkpoint has none."""
        if state.get("global_mean") is None:
            return None
        gauss = cls()
        gauss.mean_ = np.asarray(state["global_mean"], dtype=np.float64)
        gauss.precision_ = np.asarray(state["global_precision"], dtype=np.float64)
        return gauss
