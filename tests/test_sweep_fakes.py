"""A tiny stand-in detector for sweep tests (used via ``model._target_``); holds no tests."""
from __future__ import annotations

import numpy as np

from pyimgano_hydra.models.base import BaseDetector, DetectorOutput


class MeanImageDetector(BaseDetector):
    """Distance to the mean training image; accepts (and ignores) any model.* keys."""

    produces_maps = True

    def __init__(self, **params):
        self.params = params

    def fit(self, images):
        self.mean_ = images.astype(np.float32).mean(axis=0)
        return self

    def predict(self, images):
        maps = np.abs(images.astype(np.float32) - self.mean_).mean(axis=-1)
        return DetectorOutput(scores=maps.reshape(len(maps), -1).max(axis=1), maps=maps.astype(np.float32))
