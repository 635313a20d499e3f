"""Choose detector defaults on the whole suite, never on one dataset.

    python bench/defaults.py --root /tmp/suite --model patchcore \
        --variant base= --variant excl=neighbourhood_pad=exclude --variant max=image_score=max
    python bench/defaults.py --root /tmp/suite --mtd --model padim --variant base= --variant s8=smoothing_sigma=8

Every category of every MVTec-layout ``--root`` (and MTD with ``--mtd``) is loaded once; each
``--variant NAME=key=value,key=value`` is a set of detector params on top of the model's
schema defaults (``NAME=`` alone is the defaults). ``fit_fraction=0.8`` in a variant fits on
that seeded share of train/good (what a calibration hold-out costs). Backbone features are
computed once per layer set through the feature cache. Prints image AUROC, pixel AUROC and
AUPRO per category, the mean per source (the root's name) and the mean over sources, and
writes the numbers as JSON (``--json``). Not a test: it prints numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from pyimgano_hydra.data.mvtec import MVTecDataset  # noqa: E402
from pyimgano_hydra.features.cache import feature_cache  # noqa: E402
from pyimgano_hydra.metrics.image import image_metrics  # noqa: E402
from pyimgano_hydra.metrics.pixel import aupro, pixel_auroc  # noqa: E402
from pyimgano_hydra.schemas import model as model_schemas  # noqa: E402

MODELS = {"patchcore": ("pyimgano_hydra.models.patchcore", "PatchCore"),
          "padim": ("pyimgano_hydra.models.padim", "PaDiM")}


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition("=")
    params = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value.replace(";", ","))
    return name, params


def schema_defaults(model: str) -> dict:
    schema = model_schemas.SCHEMAS[model]()
    return {k: v for k, v in vars(schema).items() if not k.startswith("_")}


def sources(roots: list[str], mtd: bool, resize: int, train_limit: int | None):
    """Yield (source, category, dataset) for every category of every root (and MTD)."""
    for root in roots:
        ds = MVTecDataset(root=root, category="all", resize=resize, limit_train=train_limit)
        for cat in ds.categories():
            yield Path(root).name, cat, ds
    if mtd:
        from pyimgano_hydra.data.mtd import MTDDataset

        conf = yaml.safe_load((REPO / "conf/dataset/mtd.yaml").read_text())
        keep = {k: v for k, v in conf.items() if k not in ("defaults", "_target_", "root")}
        keep.update(resize=resize, limit_train=train_limit)
        ds = MTDDataset(root=str(REPO.parent / "shared/datasets/mtd"), **keep)
        for cat in ds.categories():
            yield "mtd", cat, ds


def build(model: str, params: dict):
    module, cls = MODELS[model]
    return getattr(__import__(module, fromlist=[cls]), cls)(**params)


def scores_and_maps(det, images: np.ndarray, batch: int = 32):
    method = getattr(det, "score_with_maps", None) or det.score_maps
    scores, maps = [], []
    for start in range(0, len(images), batch):
        out = method(images[start:start + batch])
        scores.append(np.asarray(out.scores, np.float64))
        maps.append(out.maps)
    return np.concatenate(scores), np.concatenate(maps)


def _nearest_patch():
    """Study knob: PaDiM's deeper layers upsampled by nearest neighbour (as anomalib does)."""
    import torch.nn.functional as F
    from pyimgano_hydra.models import padim

    def interpolate(x, size=None, mode="nearest", align_corners=None):
        if x.shape[1] > 1:  # feature maps; anomaly maps (1 channel) stay bilinear
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)

    padim.F = type("F", (), {"interpolate": staticmethod(interpolate),
                             "adaptive_avg_pool2d": staticmethod(F.adaptive_avg_pool2d)})
    return lambda: setattr(padim, "F", F)


def evaluate(model: str, variant: dict, train: np.ndarray, test: np.ndarray, labels: np.ndarray,
             masks: np.ndarray, seed: int = 0) -> dict:
    params = {**schema_defaults(model), **{k: v for k, v in variant.items() if not k.startswith(("fit_", "_"))}}
    restore = _nearest_patch() if variant.get("_nearest") else (lambda: None)
    fraction = float(variant.get("fit_fraction", 1.0))
    if fraction < 1:
        order = np.random.default_rng(seed).permutation(len(train))
        train = train[np.sort(order[: max(2, int(round(len(train) * fraction)))])]
    t = time.perf_counter()
    det = build(model, params).fit(train)
    scores, maps = scores_and_maps(det, test)
    seconds = time.perf_counter() - t
    restore()
    has_px = masks.any()
    return {"image_auroc": image_metrics(labels, scores, None)["image_auroc"],
            "pixel_auroc": pixel_auroc(masks, maps) if has_px else float("nan"),
            "aupro": aupro(masks, maps) if has_px else float("nan"),
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", action="append", default=[], help="an MVTec-layout root (one source); repeat")
    ap.add_argument("--mtd", action="store_true", help="add ../shared/datasets/mtd as a source")
    ap.add_argument("--model", default="patchcore", choices=sorted(MODELS))
    ap.add_argument("--variant", action="append", default=[], help="NAME=key=value,key=value (';' for list commas)")
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    variants = dict(parse_variant(v) for v in (args.variant or ["base="]))
    results: dict = {}
    with tempfile.TemporaryDirectory() as cache_dir, feature_cache({"enabled": True, "dir": cache_dir, "max_gb": 20}):
        for source, cat, ds in sources(args.root, args.mtd, args.resize, args.train_limit):
            split = ds.split(cat)
            train = ds.load_images(split.train)
            test = ds.load_images(split.test)
            labels = np.array([s.label for s in split.test])
            masks = ds.load_masks(split.test)
            for name, variant in variants.items():
                row = evaluate(args.model, variant, train, test, labels, masks)
                results.setdefault(name, {}).setdefault(source, {})[cat] = row
                print(f"{name:14s} {source:10s} {cat:14s} img {row['image_auroc']:.3f}  px {row['pixel_auroc']:.3f}  "
                      f"pro {row['aupro']:.3f}  {row['seconds']:.1f}s", flush=True)
    print("\nmean per source (image AUROC / pixel AUROC / AUPRO), then the mean over sources")
    for name, by_source in results.items():
        means = {s: {k: float(np.nanmean([r[k] for r in cats.values()])) for k in ("image_auroc", "pixel_auroc", "aupro")}
                 for s, cats in by_source.items()}
        overall = {k: float(np.nanmean([m[k] for m in means.values()])) for k in ("image_auroc", "pixel_auroc", "aupro")}
        cells = "  ".join(f"{s}: {m['image_auroc']:.3f}/{m['pixel_auroc']:.3f}/{m['aupro']:.3f}" for s, m in means.items())
        print(f"{name:14s} {cells}  || all: {overall['image_auroc']:.3f}/{overall['pixel_auroc']:.3f}/{overall['aupro']:.3f}")
        results[name]["_mean"] = {"per_source": means, "overall": overall}
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "variants": variants, "results": results}, indent=1))


if __name__ == "__main__":
    main()
