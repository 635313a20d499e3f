"""Time extract_defects per 1024×1024 float32 map on one core (prints numbers, asserts nothing).

Run: PYTHONPATH=. python bench/defects.py [--repeats 50] (``taskset -c 0`` pins it to one core).
OpenCV is pinned to one thread (cv2.setNumThreads(1)); numpy runs these element-wise ops
single-threaded. Goal: under 10 ms per map. On a shared machine read the min column.
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from pyimgano_hydra.defects.extract import extract_defects
from pyimgano_hydra.defects.pixel_threshold import normal_pixel_quantile
from pyimgano_hydra.schemas.defects import DefectsSchema


def make_map(size: int, n_blobs: int, noise: float, seed: int) -> np.ndarray:
    """Smooth background noise plus Gaussian blobs, like an upsampled patch-distance map."""
    rng = np.random.default_rng(seed)
    small = rng.random((size // 8, size // 8)).astype(np.float32) * noise
    amap = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(n_blobs):
        cx, cy, r = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size, rng.uniform(8, 40)
        amap += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)).astype(np.float32)
    return amap


def time_case(name: str, amap: np.ndarray, threshold: float, settings: DefectsSchema, repeats: int) -> None:
    extract_defects(amap, threshold, settings)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = extract_defects(amap, threshold, settings)
        times.append((time.perf_counter() - t0) * 1e3)
    fg = np.count_nonzero(result.mask) / result.mask.size
    print(
        f"{name:<34} min {np.min(times):6.2f} ms  median {np.median(times):6.2f} ms"
        f"  p90 {np.percentile(times, 90):6.2f} ms"
        f"  foreground {fg:6.2%}  regions {result.n_regions}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    size = args.size
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"extract_defects on {size}x{size} float32 maps, cv2 threads = {cv2.getNumThreads()},"
        f" OpenCV {cv2.__version__}, numpy {np.__version__}, load average {load:.1f} on {os.cpu_count()} CPUs"
    )
    amap = make_map(size, n_blobs=6, noise=0.5, seed=0)
    default = DefectsSchema(enabled=True, close_ksize=3, min_area=10, max_regions=50)
    strict = DefectsSchema(enabled=True, open_ksize=3, close_ksize=5, min_area=50, max_regions=10)
    bare = DefectsSchema(enabled=True, fill_holes=False, max_regions=None)
    roi = DefectsSchema(enabled=True, close_ksize=3, min_area=10, roi_xyxy_norm=[0.1, 0.1, 0.9, 0.9])
    time_case("normal image: empty mask", amap, float(amap.max()) + 1.0, default, args.repeats)
    time_case("bare (binarise + regions)", amap, 0.6, bare, args.repeats)
    time_case("default preset (close 3, min 10)", amap, 0.6, default, args.repeats)
    time_case("strict preset (open 3, close 5)", amap, 0.6, strict, args.repeats)
    time_case("default + ROI", amap, 0.6, roi, args.repeats)
    time_case("noisy: threshold inside noise", amap, 0.4, default, args.repeats)
    noise = np.random.default_rng(1).random((size, size), dtype=np.float32)
    time_case("worst case: white noise, 50% fg", noise, 0.5, default, max(args.repeats // 5, 3))

    maps = np.stack([make_map(256, 0, 0.5, s) for s in range(64)])
    t0 = time.perf_counter()
    pt = normal_pixel_quantile((maps[i : i + 16] for i in range(0, 64, 16)), 0.999, max_pixels=1_000_000)
    print(
        f"normal_pixel_quantile 64 maps 256x256: {(time.perf_counter() - t0) * 1e3:.1f} ms,"
        f" n_pixels {pt.provenance['n_pixels']}, n_sampled {pt.provenance['n_sampled']}"
    )


if __name__ == "__main__":
    main()
