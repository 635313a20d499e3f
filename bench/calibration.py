"""How the image threshold is calibrated, compared on the whole suite through the CLI.

    python bench/calibration.py --root /tmp/suite/textures --root /tmp/suite/objects \
        --root /tmp/suite/scale --mtd --models patchcore padim --methods holdout refit crossfit

Runs ``python -m pyimgano_hydra`` once per (source, model, ``recipe.calibration``) on every
category and prints, per source: image AUROC / pixel AUROC / AUPRO (what fitting on fewer
images costs), F1 and FPR on the test split at the calibrated threshold (how well the threshold
sits; the target FPR is 1 - 0.995), and the run's wall time. Not a test: it prints numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1", "image_fpr")
MTD_ROOT = REPO.parent / "shared" / "datasets" / "mtd"


def run_once(dataset_args: list[str], model: str, method: str, out: Path) -> tuple[dict, float]:
    """Per-category metrics of one CLI run, and its wall time."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", *dataset_args, f"model={model}",
                           f"recipe.calibration={method}", f"hydra.run.dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{model} {method}: {proc.stderr.strip().splitlines()[-1]}")
    report = json.loads((out / "report.json").read_text())
    return {cat: c["metrics"] for cat, c in report["categories"].items()}, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", action="append", default=[], help="an MVTec-layout source (repeatable)")
    ap.add_argument("--mtd", action="store_true", help=f"also MTD ({MTD_ROOT})")
    ap.add_argument("--mtd-train-limit", type=int, default=None)
    ap.add_argument("--models", nargs="+", default=["patchcore", "padim"])
    ap.add_argument("--methods", nargs="+", default=["holdout", "refit", "crossfit"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sources = [(Path(r).name, ["dataset=mvtec", f"dataset.root={r}", "dataset.category=all"]) for r in args.root]
    if args.mtd:
        limit = [f"dataset.limit_train={args.mtd_train_limit}"] if args.mtd_train_limit else []
        sources.append(("mtd", ["dataset=mtd", f"dataset.root={MTD_ROOT}", *limit]))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_calibration_") as work:
        for model in args.models:
            print(f"\n{model}: mean over categories of image AUROC / pixel AUROC / AUPRO / F1@thr / FPR@thr; wall s")
            print(f"{'source':<10} " + " ".join(f"{m:<42}" for m in args.methods))
            for source, dataset_args in sources:
                cells = []
                for method in args.methods:
                    per_cat, wall = run_once(dataset_args, model, method, Path(work) / f"{model}_{source}_{method}")
                    means = {k: float(np.nanmean([m.get(k, np.nan) for m in per_cat.values()])) for k in COLUMNS}
                    results.append({"model": model, "source": source, "method": method, "wall_s": wall,
                                    "mean": means, "categories": per_cat})
                    cells.append(" / ".join(f"{means[k]:.3f}" for k in COLUMNS) + f"; {wall:.0f} s")
                print(f"{source:<10} " + " ".join(f"{c:<42}" for c in cells), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
