"""The default recipe: fit on normal images, calibrate, predict, measure, write artifacts."""
from __future__ import annotations

import time

import numpy as np

from pyimgano_hydra.data.sample import Sample
from pyimgano_hydra.errors import DataError
from pyimgano_hydra.metrics.image import image_metrics
from pyimgano_hydra.metrics.pixel import aupro, pixel_auroc
from pyimgano_hydra.recipes.calibration import calibrate_threshold, calibration_quantile
from pyimgano_hydra.recipes.context import CategoryResult, RecipeContext
from pyimgano_hydra.runs.writers import save_npy_atomic, write_jsonl_atomic


def holdout_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of normal training samples into (fit, calibration)."""
    n_hold = int(round(len(samples) * fraction))
    if fraction <= 0 or n_hold < 2 or len(samples) - n_hold < 2:
        return list(samples), []
    order = np.random.default_rng(seed).permutation(len(samples))
    hold = set(order[:n_hold].tolist())
    return ([s for i, s in enumerate(samples) if i not in hold],
            [s for i, s in enumerate(samples) if i in hold])


class IndustrialAdapt:
    """Per category: fit on train/good, calibrate the image threshold on held-out normal scores,
    predict the test split in batches, compute image (and pixel) metrics, write records."""

    def __init__(self, contamination=None, calibration_quantile=None, calibration_holdout=0.2,
                 pro_fpr_limit=0.3, save_maps=False, predict_batch_size=32):
        self.contamination = contamination
        self.calibration_quantile = calibration_quantile
        self.calibration_holdout = calibration_holdout
        self.pro_fpr_limit = pro_fpr_limit
        self.save_maps = save_maps
        self.predict_batch_size = predict_batch_size

    def _predict(self, detector, dataset, samples: list[Sample], keep_maps: bool):
        scores, maps = [], []
        for start in range(0, len(samples), self.predict_batch_size):
            chunk = samples[start:start + self.predict_batch_size]
            output = detector.predict(dataset.load_images(chunk))
            scores.append(np.asarray(output.scores, dtype=np.float64).reshape(-1))
            if keep_maps and output.maps is not None:
                maps.append(np.asarray(output.maps, dtype=np.float32))
        scores = np.concatenate(scores) if scores else np.zeros(0)
        return scores, (np.concatenate(maps) if maps else None)

    def __call__(self, ctx: RecipeContext) -> CategoryResult:
        timings: dict[str, float] = {}
        notes: list[str] = []
        t0 = time.perf_counter()
        split = ctx.dataset.split(ctx.category)
        if not split.train:
            raise DataError(f"category {ctx.category}: the train split is empty; add normal images under its train folder")
        fit_samples, calib_samples = holdout_split(split.train, self.calibration_holdout, ctx.seed)
        train_images = ctx.dataset.load_images(fit_samples)
        timings["load_train_s"] = time.perf_counter() - t0

        detector = ctx.make_detector()
        t = time.perf_counter()
        detector.fit(train_images)
        timings["fit_s"] = time.perf_counter() - t
        has_maps = bool(getattr(detector, "produces_maps", False))

        t = time.perf_counter()
        q, q_source = calibration_quantile(self.contamination, self.calibration_quantile)
        if calib_samples:
            calib_scores, _ = self._predict(detector, ctx.dataset, calib_samples, keep_maps=False)
            scores_from = f"{len(calib_samples)} held-out train images (recipe.calibration_holdout={self.calibration_holdout})"
        else:
            calib_scores = detector.predict(train_images).scores
            scores_from = f"{len(fit_samples)} training images (in-sample; biased low)"
            notes.append("threshold calibrated in-sample: too few train images for a hold-out")
        del train_images
        threshold = calibrate_threshold(calib_scores, q, q_source, scores_from)
        timings["calibrate_s"] = time.perf_counter() - t

        t = time.perf_counter()
        test = split.test
        scores, maps = self._predict(detector, ctx.dataset, test, keep_maps=has_maps)
        timings["predict_s"] = time.perf_counter() - t
        timings["test_images_per_s"] = len(test) / max(timings["predict_s"], 1e-9)

        t = time.perf_counter()
        labels = np.array([s.label for s in test], dtype=int)
        metrics = image_metrics(labels, scores, threshold["value"])
        has_masks = any(s.mask_path for s in test)
        if maps is not None and has_masks:
            masks = ctx.dataset.load_masks(test)
            known = labels >= 0
            metrics["pixel_auroc"] = pixel_auroc(masks[known], maps[known], seed=ctx.seed)
            metrics["pixel_aupro"] = aupro(masks[known], maps[known], fpr_limit=self.pro_fpr_limit)
        elif not has_maps:
            notes.append(f"{type(detector).__name__} produces no anomaly maps: pixel metrics skipped")
        else:
            notes.append("no ground-truth masks in the test split: pixel metrics skipped")
        timings["metrics_s"] = time.perf_counter() - t

        t = time.perf_counter()
        records = []
        for i, (sample, score) in enumerate(zip(test, scores)):
            record = {
                "index": i,
                "path": sample.path,
                "category": sample.category,
                "defect_type": sample.defect_type,
                "label": int(sample.label),
                "score": float(score),
                "pred_label": int(score > threshold["value"]),
                "threshold": threshold["value"],
            }
            if self.save_maps and maps is not None:
                path = ctx.out.map_path(i, sample.path)
                save_npy_atomic(path, maps[i])
                record["anomaly_map"] = {"path": str(path.relative_to(ctx.out.root.parent.parent)),
                                         "shape": list(maps[i].shape), "dtype": str(maps[i].dtype)}
            records.append(record)
        write_jsonl_atomic(ctx.out.per_image, records)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0

        counts = {"train": len(split.train), "fit": len(fit_samples), "calibration": len(calib_samples),
                  "test": len(test), "test_normal": int((labels == 0).sum()),
                  "test_anomalous": int((labels == 1).sum()), "test_unlabelled": int((labels < 0).sum())}
        return CategoryResult(ctx.category, metrics, threshold, timings, counts, notes,
                              extra={"produces_maps": has_maps})
