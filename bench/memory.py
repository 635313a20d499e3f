"""Peak RSS of a run as the test set grows (goal: flat — prediction streams batch by batch).

    python bench/memory.py [--sizes 250 1000] [--model patchcore]

Each size runs in a fresh process on the synthetic `weave` category (generated into a temp
cache) and reports its own peak RSS (ru_maxrss), wall time and test images/s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pyimgano_hydra.api import run
n_test, model, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
defect = max(1, n_test // 10)
t = time.perf_counter()
report = run(["dataset.category=weave", f"dataset.n_test_good={n_test - 4 * defect}",
              f"dataset.n_test_defect={defect}", f"model={model}"], output_dir=out)
wall = time.perf_counter() - t
cat = report["categories"]["weave"]
print(json.dumps({"n_test": cat["counts"]["test"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall_s": wall, "test_images_per_s": cat["timings"]["test_images_per_s"],
                  "image_auroc": cat["metrics"]["image_auroc"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--model", default="patchcore")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYIMGANO_CACHE=tmp, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
        for n in args.sizes:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(n), args.model, f"{tmp}/run{n}"],
                                  env=env, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                sys.exit(f"size {n} failed: {proc.stderr.strip().splitlines()[-1]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'test images':>11}  {'peak RSS MB':>11}  {'wall s':>7}  {'test img/s':>10}  {'img AUROC':>9}")
    for r in rows:
        print(f"{r['n_test']:>11}  {r['peak_rss_mb']:>11.0f}  {r['wall_s']:>7.1f}  {r['test_images_per_s']:>10.1f}  {r['image_auroc']:>9.3f}")


if __name__ == "__main__":
    main()
