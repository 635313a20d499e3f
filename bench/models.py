"""Detector benchmark on MTD: image AUROC, pixel AUROC, fit seconds, test images/s, peak RSS.

    python bench/models.py [--models patchcore padim ...] [--root ../shared/datasets/mtd]
                           [--set model.coreset_ratio=0.02 ...] [--write docs/BENCHMARKS.md]

Each model runs in a fresh process (so peak RSS is its own) through the real config path:
``dataset=mtd`` (normal images split 80/20 by seed, all defect images in test), ``model=<name>``
plus ``--set`` overrides. Times are wall-clock on this machine and CPU seconds (user+sys),
which stay meaningful when other jobs share the cores. Not a test: it prints numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "mtd"
if not DEFAULT_ROOT.is_dir():
    DEFAULT_ROOT = Path("/work/shared/datasets/mtd")

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score
from pyimgano_hydra.api import compose_config
from pyimgano_hydra.metrics.pixel import pixel_auroc
from pyimgano_hydra.schemas import validate

overrides = json.loads(sys.argv[1])
cfg = compose_config(overrides)
validate(cfg)
dataset = instantiate(cfg.dataset)
category = dataset.categories()[0]
split = dataset.split(category)
train = dataset.load_images(split.train)
test = dataset.load_images(split.test)
labels = np.array([s.label for s in split.test])
kinds = np.array([s.defect_type or "good" for s in split.test])
model = instantiate(cfg.model)

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

w0, c0 = time.perf_counter(), cpu()
model.fit(train)
fit_s, fit_cpu = time.perf_counter() - w0, cpu() - c0
w0, c0 = time.perf_counter(), cpu()
out = model.predict(test)
test_s, test_cpu = time.perf_counter() - w0, cpu() - c0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the metrics' own buffers
row = {
    "n_train": len(train), "n_test": len(test), "n_anomalous": int(labels.sum()),
    "image_auroc": float(roc_auc_score(labels, out.scores)),
    "pixel_auroc": None,
    "fit_s": fit_s, "fit_cpu_s": fit_cpu, "test_img_per_s": len(test) / test_s,
    "test_cpu_s_per_img": test_cpu / len(test),
    "peak_rss_mb": peak_mb,
    "per_defect": {},
}
if out.maps is not None:
    row["pixel_auroc"] = pixel_auroc(dataset.load_masks(split.test), out.maps)
normal = out.scores[labels == 0]
for kind in sorted(set(kinds[labels == 1])):
    bad = out.scores[kinds == kind]
    row["per_defect"][kind] = float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(bad))], np.r_[normal, bad]))
print("RESULT " + json.dumps(row))
"""


def run_one(model: str, root: Path, extra: list[str], threads: int | None) -> dict:
    overrides = ["dataset=mtd", f"dataset.root={root}", f"model={model}", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(overrides)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"model": model, "overrides": extra, "error": tail[0]}
    return {"model": model, "overrides": extra, **json.loads(lines[-1][len("RESULT "):])}


def _fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads default.",
        "",
        "| model | overrides | image AUROC | pixel AUROC | fit s (cpu s) | test img/s | peak RSS MB | per defect image AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {' '.join(r['overrides'])} | error: {r['error']} ||||||")
            continue
        per = ", ".join(f"{k} {v:.3f}" for k, v in r["per_defect"].items())
        lines.append(
            f"| {r['model']} | {' '.join(r['overrides']) or 'defaults'} | {_fmt(r['image_auroc'])} | "
            f"{_fmt(r['pixel_auroc'])} | {r['fit_s']:.0f} ({r['fit_cpu_s']:.0f}) | {r['test_img_per_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {per} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["patchcore", "padim"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="Hydra overrides for every model")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child")
    parser.add_argument("--write", type=Path, default=None, help="append the table to this markdown file")
    args = parser.parse_args()
    if not (args.root / "MT_Free").is_dir():
        sys.exit(f"--root {args.root}: MTD not found (expected MT_Free/Imgs/*.jpg)")
    rows = []
    for model in args.models:
        row = run_one(model, args.root.resolve(), args.extra, args.threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = "python bench/models.py " + " ".join(sys.argv[1:])
    table = markdown(rows, command)
    print(table)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as fh:
            fh.write("\n" + table)


if __name__ == "__main__":
    main()
