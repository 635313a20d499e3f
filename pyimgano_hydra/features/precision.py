"""Mixed precision for the backbone: ``gpu.autocast: none | bf16 | fp16`` (a job setting).

The backbone's forward pass runs under ``torch.autocast`` on its device; features come out
float32 again, and everything after the backbone (bank, distances, maps) stays float32.
Off by default: autocast changes scores in the 3rd-4th digit. On the CPU only ``bf16`` is
used (torch has no fast fp16 CPU path); ``fp16`` there runs float32.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

import torch

from pyimgano_hydra.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ACTIVE = "none"


def active_autocast() -> str:
    """The setting of the running job: none, bf16 or fp16."""
    return _ACTIVE


@contextmanager
def autocast_setting(name: Any) -> Iterator[None]:
    """Use ``name`` for every backbone pass of the job, then restore the previous setting."""
    global _ACTIVE
    name = "none" if name is None else str(name)
    if name != "none" and name not in DTYPES:
        raise ConfigError(f"gpu.autocast: {name!r} must be none, bf16 or fp16")
    previous, _ACTIVE = _ACTIVE, name
    try:
        yield
    finally:
        _ACTIVE = previous


def backbone_autocast(device: torch.device) -> ContextManager:
    """The autocast context for a backbone pass on ``device`` under the active setting."""
    if _ACTIVE == "none" or (device.type == "cpu" and _ACTIVE != "bf16"):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[_ACTIVE])


def float_features(feats: dict) -> dict:
    """Autocast's half-precision maps back to float32 (no copy when already float32)."""
    return {k: v.float() if v.dtype in (torch.bfloat16, torch.float16) else v for k, v in feats.items()}
