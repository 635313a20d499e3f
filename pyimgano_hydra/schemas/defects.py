"""Schema of the ``defects`` group (presets in ``conf/defects/``: none, default, strict)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, List, Optional

import numpy as np

from pyimgano_hydra.defects.roi import clamp_roi
from pyimgano_hydra.errors import ConfigError, check

MASK_FORMATS = ("png", "npy")
MAX_KSIZE = 255  # defects.open_ksize / close_ksize, map pixels
# normal_pixel_quantile: explicit → run → quantile of normal pixels; fixed: explicit → run only.
STRATEGIES = ("normal_pixel_quantile", "fixed")
MAX_MAP_VALUE = float(np.finfo(np.float32).max)


def check_threshold_value(value: Any, key: str = "defects.pixel_threshold") -> float:
    """The threshold as a float; ConfigError naming ``key`` if non-numeric, NaN, inf or negative."""
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    numeric = numeric or (isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf")
    check(numeric, key, f"must be a number >= 0, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range (10**400)
        number = math.inf
    check(math.isfinite(number) and number >= 0, key, f"must be a finite number >= 0, got {str(value)[:40]}")
    check(number <= MAX_MAP_VALUE, key, f"must be at most {MAX_MAP_VALUE:.3g} (maps are float32), got {value!r}")
    return number


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class DefectsSchema:
    """Settings of the defects chain: ROI ▶ binarise ▶ open/close ▶ fill ▶ min_area ▶ regions."""

    enabled: bool = False
    # Explicit value wins; null falls back to the run's stored value, then (strategy
    # normal_pixel_quantile) to the quantile of normal training-pixel map values.
    pixel_threshold: Optional[float] = None
    pixel_threshold_strategy: str = "normal_pixel_quantile"  # normal_pixel_quantile | fixed
    pixel_normal_quantile: float = 0.999
    roi_xyxy_norm: Optional[List[float]] = None  # [x1, y1, x2, y2] in [0, 1]; null = whole map
    open_ksize: int = 0  # square kernel side in map pixels; 0 skips
    close_ksize: int = 0
    fill_holes: bool = True
    min_area: int = 0  # components with fewer pixels are removed; 0 keeps all
    max_regions: Optional[int] = 50  # null keeps all
    save_masks: bool = True
    mask_format: str = "png"  # png (0/255 8-bit gray) | npy (uint8 0/255)

    def __post_init__(self) -> None:
        for key in ("enabled", "fill_holes", "save_masks"):  # a stored "false" is a true string
            check(isinstance(getattr(self, key), (bool, np.bool_)), f"defects.{key}",
                  f"must be true or false, got {getattr(self, key)!r}"[:120])
        if self.pixel_threshold is not None:
            check_threshold_value(self.pixel_threshold, "defects.pixel_threshold")
        check(
            self.pixel_threshold_strategy in STRATEGIES,
            "defects.pixel_threshold_strategy",
            f"must be one of {', '.join(STRATEGIES)}",
        )
        q = self.pixel_normal_quantile
        check(
            isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1,
            "defects.pixel_normal_quantile",
            "must be a number in (0, 1), e.g. 0.999",
        )
        clamp_roi(self.roi_xyxy_norm)
        for key in ("open_ksize", "close_ksize", "min_area"):
            value = getattr(self, key)
            check(_is_int(value) and value >= 0, f"defects.{key}", "must be an integer >= 0 (0 skips)")
        for key in ("open_ksize", "close_ksize"):  # a 10**6 kernel is terabytes; 1025 already seconds per map
            check(getattr(self, key) <= MAX_KSIZE, f"defects.{key}", f"must be at most {MAX_KSIZE} map pixels")
        m = self.max_regions
        check(m is None or (_is_int(m) and m >= 1), "defects.max_regions", "must be an integer >= 1 or null (all)")
        check(self.mask_format in MASK_FORMATS, "defects.mask_format", f"must be one of {', '.join(MASK_FORMATS)}")


def defects_settings(settings: Any) -> DefectsSchema:
    """A validated :class:`DefectsSchema` from a schema instance, a DictConfig or a mapping."""
    if isinstance(settings, DefectsSchema):
        return settings
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(settings, DictConfig):
            settings = OmegaConf.to_container(settings, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        pass
    if not isinstance(settings, dict):
        raise ConfigError(f"defects: expected a mapping of settings, got {type(settings).__name__}")
    known = {f.name for f in fields(DefectsSchema)}
    unknown = sorted(set(settings) - known - {"_target_"})
    check(not unknown, f"defects.{unknown[0] if unknown else ''}", f"unknown key; known keys: {', '.join(sorted(known))}")
    return DefectsSchema(**{k: v for k, v in settings.items() if k in known})


SCHEMAS = {"defects": DefectsSchema}
