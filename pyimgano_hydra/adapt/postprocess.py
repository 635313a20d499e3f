"""Anomaly-map postprocess: Gaussian smoothing and normalisation fitted on normal maps only.

``fit`` sees maps of normal (train) images only; ``transform`` then applies the same fixed
numbers to any map, so a test image never changes how another one is scaled. The fitted
numbers are plain floats (``state_dict``) stored with the run.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pyimgano_hydra.errors import check
from pyimgano_hydra.smoothing import gaussian_blur
from pyimgano_hydra.schemas.postprocess import PostprocessSchema

PARAM_NAMES = ("enabled", "sigma", "normalize", "percentile", "percentile_low", "clip")


class MapPostprocessor:
    """Smooth maps by ``sigma`` then map train statistics to [0, 1].

    ``normalize``: ``none``; ``minmax`` — train min → 0, train max → 1; ``percentile`` —
    train ``percentile_low``-th → 0, ``percentile``-th → 1 (robust to a few hot pixels).
    Test maps can leave [0, 1] (a defect above every normal pixel scores > 1) unless ``clip``.
    """

    def __init__(self, sigma: float = 2.0, normalize: str = "minmax", percentile: float = 99.5,
                 percentile_low: float = 0.5, clip: bool = False, enabled: bool = True,
                 max_fit_pixels: int = 1 << 22, seed: int = 0) -> None:
        self.sigma = sigma
        self.normalize = normalize
        self.percentile = percentile
        self.percentile_low = percentile_low
        self.clip = clip
        self.enabled = enabled
        self.max_fit_pixels = max_fit_pixels
        self.seed = seed

    @classmethod
    def from_config(cls, cfg: Any) -> "MapPostprocessor":
        """Build from ``cfg.postprocess`` (DictConfig, schema or dict); extra keys ignored."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        return cls(**{k: get(k) for k in PARAM_NAMES if get(k) is not None})

    def _check_params(self) -> None:
        """The schema's range checks, on this object's params."""
        PostprocessSchema(**{k: getattr(self, k) for k in ("sigma", "normalize", "percentile", "percentile_low")})

    def fit(self, train_maps: np.ndarray) -> "MapPostprocessor":
        """Learn ``low``/``high`` from maps (N, H, W) of normal training images."""
        self._check_params()
        self.low_, self.high_ = 0.0, 1.0
        if not self.enabled or self.normalize == "none":
            return self
        maps = gaussian_blur(train_maps, self.sigma)
        check(maps.ndim == 3 and maps.size > 0, "postprocess",
              f"fit needs train maps shaped (N, H, W), got {maps.shape}")
        if self.normalize == "minmax":
            self.low_, self.high_ = float(maps.min()), float(maps.max())
        else:
            values = maps.reshape(-1)
            if values.size > self.max_fit_pixels:
                rng = np.random.default_rng(self.seed)
                values = values[rng.choice(values.size, self.max_fit_pixels, replace=False)]
            low, high = np.percentile(values, [self.percentile_low, self.percentile])
            self.low_, self.high_ = float(low), float(high)
        return self

    def transform(self, maps: np.ndarray) -> np.ndarray:
        """Smoothed, normalised copy of ``maps`` (N, H, W) as float32."""
        check(hasattr(self, "low_"), "postprocess", "call fit(train_maps) or load_state_dict first")
        if not self.enabled:
            return np.asarray(maps, dtype=np.float32)
        out = gaussian_blur(maps, self.sigma)
        if self.normalize != "none":
            span = self.high_ - self.low_
            out = (out - np.float32(self.low_)) / np.float32(span if span > 1e-12 else 1.0)
        if self.clip:
            out = np.clip(out, 0.0, 1.0)
        return out.astype(np.float32, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """Settings and fitted numbers, all plain JSON-able values."""
        check(hasattr(self, "low_"), "postprocess", "call fit(train_maps) before state_dict()")
        state = {k: getattr(self, k) for k in PARAM_NAMES}
        state.update(low=self.low_, high=self.high_)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> "MapPostprocessor":
        for key in PARAM_NAMES:
            if key in state:
                setattr(self, key, state[key])
        self._check_params()
        self.low_, self.high_ = float(state["low"]), float(state["high"])
        return self
