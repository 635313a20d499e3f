"""Bench the PyOD-on-features detectors and the autoencoder on MTD (not a test).

    python bench/models_zoo.py [--models ecod,knn,...] [--threads 1] [--ae-epochs 10]

MTD (../shared/datasets/mtd, or $MTD_ROOT): MT_Free shuffled by ``--seed``, 80 % train,
20 % test normals; every MT_<defect> image is a test anomaly (its .png is the mask).
Images are loaded as gray and resized to 256² with the package's own loader.

Each model runs in its own subprocess so peak RSS (ru_maxrss, whole process including
the ~120 MB of loaded images) is that model's alone. Prints one markdown row per model:
image AUROC, pixel AUROC (map models), fit seconds (embedding + fit; the backbone is built
lazily inside fit), test images/s (predict only), peak RSS, and the RSS before fit (the
imported libraries + data: torch alone is ~0.7 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # import this checkout's package
PYOD_MODELS = ["ecod", "copod", "iforest", "knn", "lof", "ocsvm", "pca", "hbos"]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "mtd"


def mtd_root() -> Path:
    root = Path(os.environ.get("MTD_ROOT", DEFAULT_ROOT))
    return root if root.is_dir() else Path("/work/shared/datasets/mtd")


def load_mtd(seed: int, size: int) -> dict[str, np.ndarray]:
    """Train/test arrays (cached in /tmp as .npz, no pickle)."""
    cache = Path(f"/tmp/pyimgano_bench_mtd_{size}_{seed}.npz")
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from pyimgano_hydra.data.images import load_image, load_mask

    root = mtd_root()
    free = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))
    order = np.random.default_rng(seed).permutation(len(free))
    n_train = int(round(0.8 * len(free)))
    train = [free[i] for i in order[:n_train]]
    good = [free[i] for i in order[n_train:]]
    defects = sorted(p for d in sorted(root.glob("MT_*")) if d.name != "MT_Free" for p in (d / "Imgs").glob("*.jpg"))
    test = good + defects
    data = {
        "train": np.stack([load_image(p, size, "gray") for p in train]),
        "test": np.stack([load_image(p, size, "gray") for p in test]),
        "labels": np.array([0] * len(good) + [1] * len(defects)),
        "masks": np.stack([np.zeros((size, size), bool) for _ in good]
                          + [load_mask(p.with_suffix(".png"), size) for p in defects]),
    }
    np.savez(cache, **data)
    return data


def overrides_for(model: str, args: argparse.Namespace) -> list[str]:
    base = [f"model={model}", "model.device=cpu"]
    if model == "autoencoder":
        base += [f"model.epochs={args.ae_epochs}", f"model.image_size={args.ae_size}"]
    return base + list(args.override)


def run_one(model: str, args: argparse.Namespace) -> dict:
    """Fit and score one model in this process; return its row."""
    import torch

    torch.set_num_threads(args.threads)
    from sklearn.metrics import roc_auc_score

    from pyimgano_hydra.api import compose_config
    from pyimgano_hydra.instantiate import build
    from pyimgano_hydra.metrics.pixel import pixel_auroc
    from pyimgano_hydra.schemas import validate

    data = load_mtd(args.seed, args.size)
    cfg = compose_config(overrides_for(model, args))
    validate(cfg)
    detector = build(cfg.model, "model")
    rss_before_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # libraries + data
    start = time.perf_counter()
    detector.fit(data["train"])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    out = detector.score_maps(data["test"])
    predict_s = time.perf_counter() - start
    row = {
        "model": model,
        "image_auroc": float(roc_auc_score(data["labels"], out.scores)),
        "pixel_auroc": float(pixel_auroc(data["masks"], out.maps)) if out.maps is not None else None,
        "fit_s": fit_s,
        "test_img_per_s": len(data["test"]) / predict_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_fit_mb": rss_before_fit,
        "n_train": int(len(data["train"])),
        "n_test": int(len(data["test"])),
    }
    history = getattr(detector, "history_", None)
    if history:
        row["loss_first_last"] = [history[0]["loss"], history[-1]["loss"]]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PYOD_MODELS + ["autoencoder"]))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (stated in the output)")
    parser.add_argument("--ae-epochs", type=int, default=10)
    parser.add_argument("--ae-size", type=int, default=128)
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every model")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(args.one, args)), flush=True)
        return

    load_mtd(args.seed, args.size)  # build the cache once, outside the timed runs
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
    passthrough = [f"--seed={args.seed}", f"--size={args.size}", f"--threads={args.threads}",
                   f"--ae-epochs={args.ae_epochs}", f"--ae-size={args.ae_size}"]
    passthrough += [f"--override={o}" for o in args.override]
    rows = []
    print(f"# MTD, resize {args.size}, seed {args.seed}, torch threads {args.threads}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus (shared)")
    print("| model | image AUROC | pixel AUROC | fit s | test img/s | peak RSS MB | RSS before fit MB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        proc = subprocess.run([sys.executable, __file__, f"--one={model}", *passthrough],
                              env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("ROW ")), None)
        if line is None:
            print(f"| {model} | failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]} | | | | | |")
            continue
        row = json.loads(line[4:])
        rows.append(row)
        pixel = "–" if row["pixel_auroc"] is None else f"{row['pixel_auroc']:.3f}"
        print(f"| {model} | {row['image_auroc']:.3f} | {pixel} | {row['fit_s']:.1f} | "
              f"{row['test_img_per_s']:.1f} | {row['peak_rss_mb']:.0f} | {row['rss_before_fit_mb']:.0f} |",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
