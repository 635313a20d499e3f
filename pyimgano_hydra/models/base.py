"""Detector contract: scikit-learn / PyOD style estimators over image batches."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from pyimgano_hydra.errors import UserError


class NotFittedError(UserError, AttributeError):
    """A detector used before ``fit`` (an AttributeError, like scikit-learn's)."""


@dataclass
class DetectorOutput:
    """Image scores (N,) and, for map-capable models, anomaly maps (N, H, W) float32."""

    scores: np.ndarray
    maps: np.ndarray | None = None


class BaseDetector(BaseEstimator):
    """scikit-learn / PyOD style: ``__init__`` stores params only (``get_params``,
    ``set_params`` and ``sklearn.base.clone`` work); ``fit(images)`` returns self;
    ``decision_function(images)`` gives (N,) scores, higher = more anomalous;
    ``score_maps(images)`` gives scores and, for map models, (N, H, W) float32 maps.
    Thresholds and the 0/1 ``predict`` belong to :class:`pyimgano_hydra.inspector.Inspector`.

    ``images`` is a uint8 array (N, H, W, C), C = 3 (rgb) or 1 (gray).

    Hand-off: ``state_dict()`` holds the fitted attributes only (tensors, arrays, plain
    data); ``load_state_dict(state)`` restores them into a detector built with the same
    params (the inspector stores the params beside the state). Every detector means this.
    """

    produces_maps: ClassVar[bool] = False
    fitted_attribute: ClassVar[str] = ""  # set by fit / load_state_dict; None or absent = not fitted

    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, self.fitted_attribute, None) is not None

    def _check_fitted(self) -> None:
        """The one not-fitted error of every detector."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(images) first "
                                 "(or load a run's inspector)")

    def _check_params(self) -> None:
        """The schema's type and range checks on this object's params (they live only there)."""
        from dataclasses import fields

        from pyimgano_hydra.schemas import schema_for

        schema = schema_for(type(self))
        if schema is not None:
            names = {f.name for f in fields(schema)} - {"_target_", "detector"}
            params = self.get_params(deep=False)
            schema(**{k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if k in names})

    def fit(self, images: np.ndarray) -> "BaseDetector":
        raise NotImplementedError

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        raise NotImplementedError

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        return self.score_maps(images).scores

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved yet")

    def load_state_dict(self, state: dict[str, Any]) -> "BaseDetector":
        raise NotImplementedError(f"{type(self).__name__} cannot be loaded yet")


class BackboneMixin:
    """The feature backbone named by the detector's params, built on first real use (a job whose
    features all come from the feature cache never builds it); jobs in one process (a sweep's
    in-process or worker jobs) share it (it is frozen, eval mode)."""

    def _backbone(self):
        if getattr(self, "backbone_", None) is None:
            weights = None
            if self.weights_path:  # a changed file is another backbone
                path = os.path.expanduser(str(self.weights_path))
                weights = (path, os.stat(path).st_mtime_ns if os.path.isfile(path) else None)
            from pyimgano_hydra.features.device import resolve_device

            self.backbone_ = _shared_backbone(self.backbone, tuple(self.layers), bool(self.pretrained), weights,
                                              str(resolve_device(self.device)), int(self.seed),
                                              getattr(self, "image_norm", "none"))
        return self.backbone_


@functools.lru_cache(maxsize=2)
def _shared_backbone(name: str, layers: tuple, pretrained: bool, weights: tuple | None, device: str, seed: int,
                     image_norm: str):
    """``deferred_backbone`` memoised per process on everything the network depends on."""
    from pyimgano_hydra.features.backbones import deferred_backbone

    return deferred_backbone(name, list(layers), pretrained=pretrained, weights_path=weights[0] if weights else None,
                             device=device, seed=seed, image_norm=image_norm)
