"""Detector contract: scikit-learn / PyOD style estimators over image batches."""
from __future__ import annotations

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
    """Builds the feature backbone named by the detector's params once, on first use."""

    def _backbone(self):
        if getattr(self, "backbone_", None) is None:
            from pyimgano_hydra.features import build_backbone
            from pyimgano_hydra.progress import stage

            kwargs = {"image_norm": self.image_norm} if hasattr(self, "image_norm") else {}
            with stage(f"load backbone {self.backbone}"):  # weights load: seconds of otherwise silent work
                self.backbone_ = build_backbone(self.backbone, list(self.layers), pretrained=self.pretrained,
                                                weights_path=self.weights_path, device=self.device,
                                                seed=self.seed, **kwargs)
        return self.backbone_
