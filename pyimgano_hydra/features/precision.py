"""Mixed precision for the backbone: ``gpu.autocast: none | bf16 | fp16`` (a job setting).

The backbone's forward pass runs under ``torch.autocast`` on its device; features come out
float32 again, and everything after the backbone (bank, distances, maps) stays float32.
Off by default: autocast changes scores in the 3rd-4th digit. On the CPU only ``bf16`` is
used (torch has no fast fp16 CPU path); ``fp16`` there runs float32.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, ContextManager, Iterator

import torch

from pyimgano_hydra.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ACTIVE: ContextVar[str] = ContextVar("pyimgano_autocast", default="none")  # set only inside autocast_setting


def active_autocast() -> str:
    """The setting of the enclosing ``autocast_setting`` block: none, bf16 or fp16."""
    return _ACTIVE.get()


@contextmanager
def autocast_setting(name: Any) -> Iterator[None]:
    """Use ``name`` for every backbone pass of the job, then restore the previous setting."""
    name = "none" if name is None else str(name)
    if name != "none" and name not in DTYPES:
        raise ConfigError(f"gpu.autocast: {name!r} must be none, bf16 or fp16")
    token = _ACTIVE.set(name)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def backbone_autocast(device: torch.device) -> ContextManager:
    """The autocast context for a backbone pass on ``device`` under the active setting."""
    name = _ACTIVE.get()
    if name == "none" or (device.type == "cpu" and name != "bf16"):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[name])


def exact_float32() -> None:
    """Float32 on a GPU means float32: no TF32 in cuDNN convolutions or cuBLAS products.

    torch lets cuDNN use TF32 by default; on an H200 that moved PatchCore scores by 1e-3
    relative to the CPU's and changed which patches the coreset kept. Called when a backbone
    is put on a GPU; ``gpu.autocast`` is the opt-in for reduced precision.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def float_features(feats: dict) -> dict:
    """Autocast's half-precision maps back to float32 (no copy when already float32)."""
    return {k: v.float() if v.dtype in (torch.bfloat16, torch.float16) else v for k, v in feats.items()}
