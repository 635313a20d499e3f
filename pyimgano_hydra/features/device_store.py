"""Feature maps kept in GPU memory across the jobs of one process (a sweep's in-process or
worker jobs), in front of the on-disk feature cache.

Used when the backbone runs on CUDA and the feature cache is on (``cache.enabled``): a batch
whose every image was seen before with the same backbone configuration (the disk cache's
key: name, layers, weights, preprocessing, device, torch, autocast) is served from device
memory, without a disk read or a host-to-device copy. One entry per image, least recently
used entries dropped past :data:`DEVICE_SHARE` of the GPU's memory. Values are the tensors
the backbone (or the disk cache) gave, so scores do not depend on the store.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Optional

import numpy as np
import torch

from pyimgano_hydra.features.cache import active_cache, backbone_key, image_digest, make_key

DEVICE_SHARE = 0.25  # at most this share of the GPU's total memory holds kept features


class DeviceFeatureStore:
    """LRU map ``(backbone configuration, image digest) -> {layer: (1, C, h, w) tensor}``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.entries: "OrderedDict[tuple[str, str], dict[str, torch.Tensor]]" = OrderedDict()
        self.bytes = 0

    def lookup(self, config_key: str, digests: list[str]) -> Optional[dict[str, torch.Tensor]]:
        """The batch's ``{layer: (B, C, h, w)}`` when every image is kept, else None."""
        keys = [(config_key, d) for d in digests]
        if not keys or any(k not in self.entries for k in keys):
            return None
        for k in keys:
            self.entries.move_to_end(k)
        layers = self.entries[keys[0]]
        out = {}
        for layer in layers:
            value = torch.cat([self.entries[k][layer] for k in keys])
            out[layer] = value.contiguous(memory_format=torch.channels_last) if value.ndim == 4 else value
        return out

    def keep(self, config_key: str, digests: list[str], feats: dict[str, torch.Tensor]) -> None:
        """Store each image's slice of ``feats``; drop the least recently used past the bound."""
        for i, digest in enumerate(digests):
            key = (config_key, digest)
            if key in self.entries:
                self.entries.move_to_end(key)
                continue
            entry = {layer: v[i:i + 1].clone() for layer, v in feats.items()}
            self.entries[key] = entry
            self.bytes += sum(v.numel() * v.element_size() for v in entry.values())
        while self.bytes > self.max_bytes and self.entries:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= sum(v.numel() * v.element_size() for v in dropped.values())


_STORES: dict[str, DeviceFeatureStore] = {}  # one per CUDA device, for the process
_FORCED: ContextVar[Optional[DeviceFeatureStore]] = ContextVar("pyimgano_device_store", default=None)


@contextmanager
def forced_store(store: DeviceFeatureStore) -> Iterator[DeviceFeatureStore]:
    """Use ``store`` whatever the device (tests on a CPU-only machine)."""
    token = _FORCED.set(store)
    try:
        yield store
    finally:
        _FORCED.reset(token)


def store_for(backbone: Any) -> Optional[DeviceFeatureStore]:
    """The store for ``backbone``'s features: on CUDA with the feature cache on, else None."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    device = backbone.device
    if device.type != "cuda" or active_cache() is None:
        return None
    name = str(device)
    if name not in _STORES:
        _STORES[name] = DeviceFeatureStore(DEVICE_SHARE * torch.cuda.get_device_properties(device).total_memory)
    return _STORES[name]


def _keys(backbone: Any, chunk: np.ndarray) -> tuple[str, list[str]]:
    from pyimgano_hydra.features.precision import active_autocast

    config_key = make_key(backbone_key(active_cache(), backbone), active_autocast())
    return config_key, [image_digest(image) for image in chunk]


def kept_features(backbone: Any, chunk: np.ndarray) -> Optional[dict[str, torch.Tensor]]:
    """``chunk``'s feature maps from the device store, or None (no store, or not all kept)."""
    store = store_for(backbone)
    if store is None:
        return None
    return store.lookup(*_keys(backbone, chunk))


def keep_features(backbone: Any, chunk: np.ndarray, feats: dict[str, torch.Tensor]) -> None:
    """Keep ``chunk``'s freshly computed feature maps when a store applies."""
    store = store_for(backbone)
    if store is not None:
        store.keep(*_keys(backbone, chunk), feats)
