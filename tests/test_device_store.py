"""Feature maps kept in device memory (features/device_store.py), forced on for this CPU machine."""
from __future__ import annotations

import numpy as np
import torch

from pyimgano_hydra.features.device_store import DeviceFeatureStore, forced_store, store_for


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8).repeat(8, 1).repeat(8, 2)


def test_kept_features_skip_the_backbone_and_equal_fresh_ones(monkeypatch):
    from pyimgano_hydra.features import build_backbone, iter_features
    from pyimgano_hydra.features.backbones import Backbone

    backbone = build_backbone("efficientnet_lite0", ["blocks.2", "blocks.4"], device="cpu")
    images = _images(5, seed=3)
    fresh = list(iter_features(backbone, images, batch_size=4))
    seen: list[int] = []
    forward = Backbone.forward
    monkeypatch.setattr(Backbone, "forward", lambda self, x: seen.append(len(x)) or forward(self, x))
    with forced_store(DeviceFeatureStore(max_bytes=1 << 30)) as store:
        first = list(iter_features(backbone, images, batch_size=4))
        assert sum(seen) == 5 and len(store.entries) == 5
        again = list(iter_features(backbone, images, batch_size=4))
        assert sum(seen) == 5  # served from the store
        regrouped = list(iter_features(backbone, images, batch_size=5))  # other batches, same images
        assert sum(seen) == 5
    for ref, a, b in zip(fresh, first, again):
        for layer in ref:
            for got in (a[layer], b[layer]):
                assert torch.equal(got, ref[layer]) and got.stride() == ref[layer].stride()
                assert torch.equal(got.mean(dim=(2, 3)), ref[layer].mean(dim=(2, 3)))
    for layer in fresh[0]:
        assert torch.equal(regrouped[0][layer], torch.cat([f[layer] for f in fresh]))


def test_least_recently_used_entries_are_dropped_past_the_bound():
    feats = {"a": torch.zeros(3, 2, 4, 4)}  # 128 bytes per image
    store = DeviceFeatureStore(max_bytes=2 * 128)
    store.keep("cfg", ["x", "y"], {"a": feats["a"][:2]})
    assert store.lookup("cfg", ["x"]) is not None  # x is now the most recent
    store.keep("cfg", ["z"], {"a": feats["a"][:1]})
    assert store.lookup("cfg", ["y"]) is None and store.lookup("cfg", ["x", "z"]) is not None
    assert store.bytes == 2 * 128 and store.lookup("other", ["x"]) is None


def test_no_store_on_the_cpu_unless_forced():
    from pyimgano_hydra.features import build_backbone

    backbone = build_backbone("efficientnet_lite0", ["blocks.2"], device="cpu")
    assert store_for(backbone) is None
    with forced_store(DeviceFeatureStore(1)) as store:
        assert store_for(backbone) is store
