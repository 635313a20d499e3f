"""Decode + resize throughput of data/loader.py with and without worker processes, on MTD.
Prints numbers only (no asserts): images/s, wall time, peak RSS of the main process and of
the largest worker (forked: most of its pages are shared with the main process). Each setting runs in a fresh process (torch imported first, as in a job), over
the same files, in batches like the recipe's (``predict_batch_size``).

    OMP_NUM_THREADS=1 python bench/loader.py                        # all MTD images, workers 0,1,2
    OMP_NUM_THREADS=1 python bench/loader.py --limit 300 --workers 0,2 --resize 256

MTD: $MTD_ROOT, else /work/shared/datasets/mtd (bench/mtd_data.py); its JPEGs are small
(~200-400 px), so decode is cheap and worker start-up weighs more than on large images.
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from mtd_data import ROOT  # noqa: E402


def files(limit: int | None) -> list[str]:
    paths = sorted(glob.glob(os.path.join(ROOT, "MT_*", "Imgs", "*.jpg")))
    if not paths:
        raise SystemExit(f"no MTD images under {ROOT}; set MTD_ROOT")
    return paths[:limit] if limit else paths


def one(opts) -> None:
    import torch  # noqa: F401  (a job has torch loaded before it decodes)

    from pyimgano_hydra.data.loader import LoaderSetting, stack_images

    paths = files(opts.limit)
    setting = LoaderSetting(num_workers=opts.one)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    n = 0
    for start in range(0, len(paths), opts.batch):
        n += len(stack_images(paths[start:start + opts.batch], opts.resize, "rgb", setting=setting))
    wall = time.perf_counter() - t
    main_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    workers_mb = ("-" if not opts.one else f"{children / 1024:.0f}" if children != children_before
                  else f"<={children_before / 1024:.0f}")  # an earlier helper process was larger
    print(f"{opts.one:>7d} {n:>7d} {wall:8.2f} {n / wall:9.1f} {main_mb:12.0f} {workers_mb:>14s}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated loader.num_workers values")
    parser.add_argument("--limit", type=int, default=None, help="first N files (sorted)")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="images per stack_images call")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.one is not None:
        return one(opts)
    print(f"bench/loader.py  files={len(files(opts.limit))}  resize={opts.resize}  batch={opts.batch}  "
          f"cpus={os.cpu_count()}  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}  "
          f"load1={os.getloadavg()[0]:.1f}")
    print(f"{'workers':>7s} {'images':>7s} {'wall s':>8s} {'images/s':>9s} {'peak RSS MB':>12s} "
          f"{'worker RSS MB':>14s}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for workers in (int(w) for w in opts.workers.split(",")):
        args = [a for a in sys.argv[1:]]
        subprocess.run([sys.executable, __file__, *args, "--one", str(workers)], env=env, check=True)


if __name__ == "__main__":
    main()
