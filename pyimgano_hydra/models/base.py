"""Detector contract: scikit-learn / PyOD style estimators over image batches."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass
class DetectorOutput:
    """Image scores (N,) and, for map-capable models, anomaly maps (N, H, W) float32."""

    scores: np.ndarray
    maps: np.ndarray | None = None


class BaseDetector:
    """``__init__`` stores params only; ``fit(images)`` returns self; ``predict`` scores.

    ``images`` is a uint8 array (N, H, W, C), C = 3 (rgb) or 1 (gray). Higher = more anomalous.
    """

    produces_maps: ClassVar[bool] = False

    def fit(self, images: np.ndarray) -> "BaseDetector":
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> DetectorOutput:
        raise NotImplementedError

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images).scores

    def get_params(self) -> dict[str, Any]:
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    # Hand-off (saving a fitted detector): plain tensors / arrays / JSON-able data only.
    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved yet")

    def load_state_dict(self, state: dict[str, Any]) -> "BaseDetector":
        raise NotImplementedError(f"{type(self).__name__} cannot be loaded yet")


class BackboneMixin:
    """Builds the feature backbone named by the detector's params once, on first use; jobs in
    one process (a sweep's in-process or worker jobs) share it (it is frozen, eval mode)."""

    def _backbone(self):
        if getattr(self, "backbone_", None) is None:
            from pyimgano_hydra.features.device import resolve_device
            from pyimgano_hydra.progress import stage

            weights = None
            if self.weights_path:  # a changed file is another backbone
                path = os.path.expanduser(str(self.weights_path))
                weights = (path, os.stat(path).st_mtime_ns if os.path.isfile(path) else None)
            with stage(f"load backbone {self.backbone}"):  # weights load: seconds of otherwise silent work
                self.backbone_ = _shared_backbone(self.backbone, tuple(self.layers), bool(self.pretrained), weights,
                                                  str(resolve_device(self.device)), int(self.seed),
                                                  getattr(self, "image_norm", "none"))
        return self.backbone_


@functools.lru_cache(maxsize=2)
def _shared_backbone(name: str, layers: tuple, pretrained: bool, weights: tuple | None, device: str, seed: int,
                     image_norm: str):
    """``build_backbone`` memoised per process on everything the network depends on."""
    from pyimgano_hydra.features import build_backbone

    return build_backbone(name, list(layers), pretrained=pretrained, weights_path=weights[0] if weights else None,
                          device=device, seed=seed, image_norm=image_norm)
