"""Batched feature extraction over uint8 image arrays.

* ``iter_features(backbone, images, batch_size, desc)`` yields ``{layer: (B, C, h, w)}``
  per batch (on the backbone's device) — use it to reduce features batch by batch.
* ``extract_features(...)`` concatenates them: ``{layer: float32 CPU tensor (N, C, h, w)}``.
* ``pooled_embedding(...)`` returns one vector per image, ``np.ndarray (N, sum C)``
  float32: each layer global-average-pooled, then concatenated (for PyOD-style models).

All run under ``torch.inference_mode()`` with a tqdm bar whose text names the stage.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from pyimgano_hydra.errors import DataError
from pyimgano_hydra.features.backbones import Backbone
from pyimgano_hydra.features.cache import active_cache, cached_backbone_features


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
    cache = active_cache()
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="img", leave=False) as bar:
        for start in range(0, n, batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size])
            if cache is not None:
                yield cached_backbone_features(cache, backbone, chunk)
            else:
                yield backbone(backbone.preprocess(torch.from_numpy(chunk)))
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


def pooled_embedding(
    backbone: Backbone, images: np.ndarray, batch_size: int = 16, desc: str = "embedding"
) -> np.ndarray:
    """(N, sum of layer channels) float32: per-layer global average pool, concatenated."""
    rows = []
    for feats in iter_features(backbone, images, batch_size, desc):
        pooled = [value.float().mean(dim=(2, 3)) for value in feats.values()]
        rows.append(torch.cat(pooled, dim=1).cpu().numpy())
    return np.concatenate(rows).astype(np.float32, copy=False)
