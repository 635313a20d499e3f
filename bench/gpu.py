"""Fit and test throughput (images/s) per model, CPU vs GPU, as one table. Numbers only.

    python bench/gpu.py                                  # patchcore, padim; cpu and every visible GPU
    python bench/gpu.py --models patchcore --size 256 --n-train 100 --n-test 100
    python bench/gpu.py --devices cpu --n-train 20 --n-test 20   # a quick CPU figure
    python bench/gpu.py --autocast bf16                  # the backbone under torch.autocast

Images are the synthetic ``washer`` category rendered at ``--size`` (MVTec AD runs at 256),
decoded once before timing; each model is fitted and then scores the test images (maps
included). The feature cache is off; progress bars go to stderr (``2>/dev/null``). The first device's scores are the reference: the
``max |Δscore|`` column is each device's largest difference from them. CPU threads: torch's
default unless OMP_NUM_THREADS is set (state it with the numbers).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyimgano_hydra.api import compose_config  # noqa: E402
from pyimgano_hydra.data.synthetic import render_sample  # noqa: E402
from pyimgano_hydra.features.precision import autocast_setting  # noqa: E402
from pyimgano_hydra.instantiate import build_detector_factory  # noqa: E402


def images(split: str, defect: str, n: int, size: int) -> np.ndarray:
    return np.stack([render_sample("washer", split, defect, i, size)[0] for i in range(n)])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model: str, device: str, train: np.ndarray, test: np.ndarray, autocast: str) -> tuple[float, float, np.ndarray]:
    cfg = compose_config([f"model={model}", f"model.device={device}"])
    detector = build_detector_factory(cfg.model)()
    with autocast_setting(autocast):
        detector.fit(train[:2])  # warm-up: backbone build, CUDA context, kernels
        detector.score_maps(test[:2])
        warm, detector = detector, build_detector_factory(cfg.model)()
        detector.backbone_ = warm.backbone_  # timed: the work per image, not the backbone build
        sync(device)
        start = time.perf_counter()
        detector.fit(train)
        sync(device)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        out = detector.score_maps(test)
        sync(device)
        test_s = time.perf_counter() - start
    return len(train) / fit_s, len(test) / test_s, np.asarray(out.scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="patchcore,padim")
    parser.add_argument("--devices", default=None, help="comma list; default: cpu and every visible GPU")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"])
    args = parser.parse_args()
    devices = args.devices.split(",") if args.devices else ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    train = images("train", "good", args.n_train, args.size)
    test = np.concatenate([images("test", "good", args.n_test // 2, args.size),
                           images("test", "scratch", args.n_test - args.n_test // 2, args.size)])
    print(f"images {args.size}x{args.size}, {len(train)} train / {len(test)} test, autocast {args.autocast}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    for i in range(torch.cuda.device_count()):
        print(f"cuda:{i} = {torch.cuda.get_device_name(i)}")
    print(f"{'model':<10} {'device':<8} {'fit img/s':>10} {'test img/s':>11} {'test x cpu':>11} {'max |Δscore|':>13}")
    for model in args.models.split(","):
        reference = cpu_test = None
        for device in devices:
            fit_rate, test_rate, scores = measure(model, device, train, test, args.autocast)
            reference = scores if reference is None else reference
            cpu_test = test_rate if device == "cpu" else cpu_test
            ratio = f"{test_rate / cpu_test:.1f}" if cpu_test else "–"
            print(f"{model:<10} {device:<8} {fit_rate:>10.1f} {test_rate:>11.1f} {ratio:>11} "
                  f"{np.abs(scores - reference).max():>13.2e}")


if __name__ == "__main__":
    main()
