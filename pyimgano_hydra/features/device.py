"""Which torch device a job computes on: ``auto | cpu | cuda | cuda:N``.

``cuda`` on a machine with several visible GPUs picks one per job, so parallel jobs spread
over them: the launcher's local rank (``LOCAL_RANK``, ``SLURM_LOCALID``, submitit's local
rank) when there is one, else the sweep's job number (set by the entry point), modulo the
GPU count. Under SLURM / Ray ``CUDA_VISIBLE_DEVICES`` usually shows one GPU: that one.
The device a run fitted on is a record, not a requirement: any run scores on any device.
"""
from __future__ import annotations

import os

import torch

from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.schemas.model import valid_device

RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID", "SUBMITIT_LOCAL_LOCALID", "PYIMGANO_JOB_NUM")


def job_gpu_index(count: int) -> int:
    """The GPU (of ``count`` visible) this job uses for ``cuda``: its rank modulo ``count``."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value) % max(count, 1)
    return 0


def resolve_device(device: str = "auto", key: str = "model.device") -> torch.device:
    """``auto`` → a GPU when one is visible, else cpu; ``cuda``/``cuda:N`` without it → ConfigError."""
    device = str(device)
    if not valid_device(device):
        raise ConfigError(f"{key}: {device!r} is not auto, cpu, cuda or cuda:N")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"{key}: {device} was asked for but no GPU is visible; use cpu or auto")
    if ":" in device:
        index = int(device.split(":")[1])
        if index >= count:
            raise ConfigError(f"{key}: {device} but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    return torch.device("cuda", job_gpu_index(count))


def describe_gpus() -> dict:
    """environment.json's GPU facts: CUDA / cuDNN versions and each visible GPU's name."""
    info = {"cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "gpus": []}
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return info
