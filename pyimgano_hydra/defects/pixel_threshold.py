"""Pixel threshold resolution with provenance: explicit → run → normal-pixel quantile → error.

The quantile is taken over map values of normal training images, streamed through a bounded
uniform subsample (:class:`NormalPixelSample`), so memory stays at ``max_pixels`` values
whatever the training-set size; it is exact whenever the pixel count fits in ``max_pixels``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from pyimgano_hydra.defects.roi import RoiNorm, clamp_roi, roi_box
from pyimgano_hydra.errors import ConfigError, DataError
from pyimgano_hydra.schemas.defects import check_threshold_value, defects_settings

DEFAULT_MAX_PIXELS = 2_000_000
NO_THRESHOLD = (
    "defects.pixel_threshold: no pixel threshold; set defects.pixel_threshold=<value>, load a run "
    "that stored one, or use defects.pixel_threshold_strategy=normal_pixel_quantile with training maps"
)

Maps = Union[np.ndarray, Iterable[np.ndarray]]


@dataclass(frozen=True)
class PixelThreshold:
    """A resolved pixel threshold and where it came from (JSON-able provenance dict)."""

    value: float
    provenance: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        return {"pixel_threshold": self.value, "pixel_threshold_provenance": dict(self.provenance)}


class NormalPixelSample:
    """Uniform sample (without replacement) of at most ``max_pixels`` normal-pixel map values.

    Each pixel draws a random key; the sample keeps the ``max_pixels`` smallest keys seen so
    far (bottom-k sampling), so batches can be fed one at a time. Only pixels inside ``roi``
    count, as the ROI is where defects are reported.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0, roi: RoiNorm = None):
        if max_pixels < 1:
            raise ConfigError("max_pixels: must be >= 1")
        self.max_pixels = int(max_pixels)
        self.roi = roi
        self.n_pixels = 0
        self._rng = np.random.default_rng(seed)
        self._values = np.empty(0, np.float32)
        self._keys = np.empty(0, np.float64)

    def update(self, maps: np.ndarray) -> "NormalPixelSample":
        """Add one map (H, W) or a batch (N, H, W)."""
        arr = np.asarray(maps, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise DataError(f"normal maps: expected (H, W) or (N, H, W), got shape {arr.shape}")
        x0, y0, x1, y1 = roi_box(self.roi, arr.shape[1:])
        values = arr[:, y0:y1, x0:x1].ravel()
        if not np.isfinite(values).all():
            raise DataError("normal maps: contain NaN or inf; fix the detector output before calibrating")
        self.n_pixels += values.size
        keys = self._rng.random(values.size)
        if self._keys.size >= self.max_pixels:  # full: only keys below the current cut can enter
            keep = keys < self._keys.max()
            values, keys = values[keep], keys[keep]
        values = np.concatenate([self._values, values])
        keys = np.concatenate([self._keys, keys])
        if keys.size > self.max_pixels:
            idx = np.argpartition(keys, self.max_pixels - 1)[: self.max_pixels]
            values, keys = values[idx], keys[idx]
        self._values, self._keys = values, keys
        return self

    @property
    def n_sampled(self) -> int:
        return int(self._values.size)

    def quantile(self, q: float) -> float:
        if self._values.size == 0:
            raise DataError("normal maps: no normal pixels to take a quantile of; check the training split")
        return float(np.quantile(self._values, q))


def normal_pixel_quantile(
    maps: Maps, q: float, roi: RoiNorm = None, max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0
) -> PixelThreshold:
    """Quantile ``q`` of normal-pixel map values; ``maps`` is an array (N, H, W) or an iterable of batches."""
    sample = NormalPixelSample(max_pixels=max_pixels, seed=seed, roi=roi)
    batches = [maps] if isinstance(maps, np.ndarray) else maps
    for batch in batches:
        sample.update(batch)
    provenance = {
        "source": "normal_pixel_quantile",
        "q": float(q),
        "n_pixels": sample.n_pixels,
        "n_sampled": sample.n_sampled,
        "roi_xyxy_norm": None if roi is None else list(roi),
    }
    return PixelThreshold(sample.quantile(q), provenance)


def resolve_pixel_threshold(
    settings: Any,
    run_threshold: Optional[float] = None,
    run_provenance: Optional[dict] = None,
    normal_maps: Union[Maps, Callable[[], Maps], None] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
) -> PixelThreshold:
    """Resolve the pixel threshold in order: explicit value → run value → normal-pixel quantile.

    ``settings``: defects settings (schema, DictConfig or mapping). ``run_threshold`` /
    ``run_provenance``: what a loaded run stored. ``normal_maps``: maps of normal training
    images, or a zero-argument callable returning them (called only when needed). Raises a
    one-line ConfigError naming the three ways when none applies.
    """
    s = defects_settings(settings)
    if s.pixel_threshold is not None:
        return PixelThreshold(check_threshold_value(s.pixel_threshold), {"source": "explicit"})
    if run_threshold is not None:
        value = check_threshold_value(run_threshold, "pixel_threshold stored with the run")
        provenance = {"source": "run"}
        if run_provenance:
            provenance["run_provenance"] = dict(run_provenance)
        return PixelThreshold(value, provenance)
    if s.pixel_threshold_strategy == "normal_pixel_quantile" and normal_maps is not None:
        maps = normal_maps() if callable(normal_maps) else normal_maps
        return normal_pixel_quantile(maps, s.pixel_normal_quantile, clamp_roi(s.roi_xyxy_norm), max_pixels, seed)
    raise ConfigError(NO_THRESHOLD)
