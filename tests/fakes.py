"""Tiny detectors for fast tests of the run path (not shipped in the package)."""
from __future__ import annotations

import numpy as np

from pyimgano_hydra.models.base import BaseDetector, DetectorOutput


class PixelZScore(BaseDetector):
    """Per-pixel z-score against the mean/std of the training images; score = map max."""

    produces_maps = True
    fitted_attribute = "mean_"

    def __init__(self, *, eps: float = 1.0):
        self.eps = eps

    def fit(self, images):
        x = np.asarray(images, dtype=np.float32).mean(axis=-1)
        self.mean_, self.std_ = x.mean(axis=0), x.std(axis=0) + self.eps
        return self

    def score_maps(self, images):
        x = np.asarray(images, dtype=np.float32).mean(axis=-1)
        maps = np.abs(x - self.mean_) / self.std_
        return DetectorOutput(scores=maps.reshape(len(maps), -1).max(axis=1), maps=maps.astype(np.float32))

    def state_dict(self):
        return {"mean": self.mean_, "std": self.std_}

    def load_state_dict(self, state):
        self.mean_, self.std_ = np.asarray(state["mean"]), np.asarray(state["std"])
        return self


class Broken(BaseDetector):
    """Fails in fit, like a detector hitting bad data."""

    def __init__(self, message: str = "boom"):
        self.message = message

    def fit(self, images):
        raise RuntimeError(self.message)


class Sleepy(PixelZScore):
    """Sleeps in fit (and in predict for $FAKES_PREDICT_SLEEP seconds), so a test can interrupt
    a run or an inference mid-way."""

    def __init__(self, seconds: float = 60.0):
        super().__init__()
        self.seconds = seconds

    def fit(self, images):
        import time

        time.sleep(self.seconds)
        return super().fit(images)

    def score_maps(self, images):
        import os
        import time

        time.sleep(float(os.environ.get("FAKES_PREDICT_SLEEP", 0)))
        return super().score_maps(images)


class ScoresOnly(PixelZScore):
    """Image scores without maps, like a PyOD model on pooled features."""

    produces_maps = False

    def score_maps(self, images):
        return DetectorOutput(scores=super().score_maps(images).scores, maps=None)
