"""Detector checkpoints: tensors and plain data only, loaded with ``weights_only=True``.

numpy arrays are stored as tensors and come back as tensors; detectors' ``load_state_dict``
accepts either. A file holding any other pickled object is refused, never executed.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyimgano_hydra.errors import UserError
from pyimgano_hydra.runs.writers import write_bytes_atomic

FORMAT = "pyimgano_hydra.checkpoint/1"


def _to_saveable(obj: Any, key: str = "state") -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {str(k): _to_saveable(v, f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_saveable(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{key}: {type(obj).__name__} cannot go into a checkpoint (tensors, arrays, plain data only)")


def save_checkpoint(path: str | Path, state: dict, meta: dict | None = None) -> Path:
    """Write ``{"format", "meta", "state"}`` atomically with torch.save."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "meta": _to_saveable(meta or {}), "state": _to_saveable(state)}, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely; returns ``{"format", "meta", "state"}``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; was the run completed with this version?")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: refused: the checkpoint holds pickled objects, not just tensors and plain data") from exc
    except Exception as exc:  # corrupt / not a torch file
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a pyimgano_hydra checkpoint (format {payload.get('format') if isinstance(payload, dict) else '?'})")
    return payload
