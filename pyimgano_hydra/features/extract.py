"""Batched feature extraction over uint8 image arrays.

* ``iter_features(backbone, images, batch_size, desc)`` yields ``{layer: (B, C, h, w)}``
  per batch (on the backbone's device) — use it to reduce features batch by batch.
* ``extract_features(...)`` concatenates them: ``{layer: float32 CPU tensor (N, C, h, w)}``.
* ``pooled_embedding(..., stats=("mean",))`` returns one vector per image, float32
  ``np.ndarray (N, len(stats) * sum C)``: per layer the spatial mean (and, with
  ``stats=("mean", "std")``, the spatial standard deviation) of each channel, concatenated
  (for PyOD-style image-level models; mean+std is much stronger on textures such as MTD).

All run under ``torch.inference_mode()`` in a progress stage (one bar, named by category).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pyimgano_hydra.errors import ConfigError, DataError
from pyimgano_hydra.features.backbones import Backbone, forward_images
from pyimgano_hydra.features.precision import backbone_autocast, float_features
from pyimgano_hydra.features.cache import active_cache, cached_backbone_features
from pyimgano_hydra.features.device_store import keep_features, kept_features
from pyimgano_hydra.progress import stage


MAX_FEATURE_PIXELS = 2048 * 2048  # one image's, and one forward pass's (about 1 GB of activations)


def _check_images(images: np.ndarray) -> None:
    if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] in (1, 3)):
        shape = getattr(images, "shape", None)
        raise DataError(f"images: expected a uint8 array (N, H, W, 1|3), got shape {shape}")
    if images.dtype != np.uint8:
        raise DataError(f"images: expected dtype uint8, got {images.dtype}")


def iter_features(
    backbone: Backbone, images: np.ndarray, batch_size: int = 16, desc: str = "features"
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield each batch's ``{layer: feature map}`` (device tensors, inference mode); through
    the feature cache when a job activated one (``cache:`` config node)."""
    _check_images(images)
    n = len(images)
    pixels = int(images.shape[1]) * int(images.shape[2])
    if pixels > MAX_FEATURE_PIXELS:  # a stored resize of 3072 took 3.1 GB for one image
        raise ConfigError(f"dataset.resize: {images.shape[2]}x{images.shape[1]} images through a backbone take "
                          f"gigabytes each; at most {MAX_FEATURE_PIXELS:,} pixels (2048x2048): set a smaller "
                          "dataset.resize, or tiling")
    batch_size = max(1, min(int(batch_size), MAX_FEATURE_PIXELS // pixels))  # pixels per pass, not images
    cache = active_cache()
    with torch.inference_mode(), stage(desc, total=n) as bar:
        for start in range(0, n, batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size])
            kept = kept_features(backbone, chunk)  # GPU runs: maps kept in device memory (device_store.py)
            if kept is not None:
                yield kept
                bar.update(len(chunk))
                continue
            with backbone_autocast(backbone.device):  # gpu.autocast; off by default
                if cache is not None:
                    feats = cached_backbone_features(cache, backbone, chunk, batch_size)
                else:
                    feats = forward_images(backbone, chunk, batch_size)
            feats = float_features(feats)
            keep_features(backbone, chunk, feats)
            yield feats
            bar.update(len(chunk))


def extract_features(
    backbone: Backbone, images: np.ndarray, batch_size: int = 16, desc: str = "features"
) -> dict[str, torch.Tensor]:
    """All images' ``{layer: float32 CPU tensor (N, C, h, w)}``."""
    parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in backbone.layers}
    for feats in iter_features(backbone, images, batch_size, desc):
        for layer, value in feats.items():
            parts[layer].append(value.float().cpu().contiguous())
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


POOL_STATS = ("mean", "std", "max")


def pool_features(
    feats: dict[str, torch.Tensor], stats: tuple[str, ...] | list[str] = ("mean",), std_correction: int = 1
) -> torch.Tensor:
    """(B, len(stats) × sum of layer channels) float32 for one batch of layer maps: per layer,
    each of ``stats`` over the spatial axes (std with ``std_correction``; 0 on 1×1 maps)."""
    pooled = []
    for value in feats.values():
        value = value.float()
        for stat in stats:
            if stat == "mean":
                pooled.append(value.mean(dim=(2, 3)))
            elif stat == "std":
                pooled.append(value.std(dim=(2, 3), correction=std_correction)
                              if value.shape[2] * value.shape[3] > 1 else torch.zeros_like(value[:, :, 0, 0]))
            else:
                pooled.append(value.amax(dim=(2, 3)))
    return torch.cat(pooled, dim=1)


def pooled_embedding(
    backbone: Backbone,
    images: np.ndarray,
    batch_size: int = 16,
    desc: str = "embedding",
    stats: tuple[str, ...] | list[str] = ("mean",),
) -> np.ndarray:
    """(N, len(stats) × sum of layer channels) float32: per-layer spatial statistics."""
    bad = [s for s in stats if s not in POOL_STATS]
    if bad or not stats:
        raise ConfigError(f"model.pooling: {list(stats)} must be a non-empty subset of {', '.join(POOL_STATS)}")
    rows = [pool_features(feats, stats).cpu().numpy() for feats in iter_features(backbone, images, batch_size, desc)]
    return np.concatenate(rows).astype(np.float32, copy=False)
