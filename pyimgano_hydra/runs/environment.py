"""Facts about the machine and software a run used (environment.json, report.json)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pyimgano_hydra

PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "scikit-image", "faiss-cpu",
            "pyod", "hydra-core", "omegaconf", "opencv-python-headless", "pillow")


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """HEAD of the checkout the package runs from, when it is one."""
    repo = Path(pyimgano_hydra.__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(device: str | None = None) -> dict:
    """``device``: the torch device the run computes on (resolved, e.g. ``cuda:0``)."""
    import torch

    from pyimgano_hydra.features.device import describe_gpus

    return {
        "device": device,
        "gpu": describe_gpus(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "pyimgano_hydra": pyimgano_hydra.__version__,
        "git_sha": git_sha(),
        "packages": package_versions(),
    }
