"""Backbones (offline weights) and batched feature extraction.

Public API::

    from pyimgano_hydra.features import build_backbone, extract_features, pooled_embedding
    bb = build_backbone("efficientnet_lite0", layers=["blocks.2", "blocks.4"], pretrained=True)
    feats = extract_features(bb, images_uint8_nhwc, batch_size=16, desc="fit")  # {layer: (N,C,h,w)}
    emb = pooled_embedding(bb, images_uint8_nhwc)                              # (N, D) float32

See :mod:`pyimgano_hydra.features.backbones` and :mod:`pyimgano_hydra.features.extract`.
"""
from pyimgano_hydra.features.backbones import (
    BACKBONES,
    Backbone,
    build_backbone,
    hub_checkpoint_dir,
    resolve_device,
)
from pyimgano_hydra.features.extract import extract_features, iter_features, pool_features, pooled_embedding

__all__ = [
    "BACKBONES",
    "Backbone",
    "build_backbone",
    "extract_features",
    "hub_checkpoint_dir",
    "iter_features",
    "pooled_embedding",
    "resolve_device",
]
