"""Save defect masks (read them back with ``data.images.load_mask``): PNG (8-bit gray) or NPY (uint8), values 0 = normal, 255 = defect.

Writes are atomic: a temp file in the target folder, then ``os.replace``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from pyimgano_hydra.errors import ConfigError, DataError
from pyimgano_hydra.runs.writers import write_bytes_atomic
from pyimgano_hydra.schemas.defects import MASK_FORMATS

PathLike = Union[str, os.PathLike]


def save_mask(mask: np.ndarray, stem: PathLike, mask_format: str = "png") -> Path:
    """Write ``mask`` (uint8 {0, 255}, (H, W)) to ``<stem>.<mask_format>``; returns that path."""
    if mask_format not in MASK_FORMATS:
        raise ConfigError(f"defects.mask_format: must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    arr = np.asarray(mask)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise DataError(f"mask for {stem}: expected a uint8 (H, W) array, got {arr.dtype} {arr.shape}")
    path = Path(f"{os.fspath(stem)}.{mask_format}")
    if mask_format == "png":
        ok, buf = cv2.imencode(".png", arr)
        if not ok:
            raise DataError(f"{path}: PNG encoding failed")
        data = buf.tobytes()
    else:
        bio = io.BytesIO()
        np.save(bio, arr, allow_pickle=False)
        data = bio.getvalue()
    write_bytes_atomic(path, data)
    return path

