"""The default recipe: fit on normal images, calibrate, predict, measure, write artifacts."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pyimgano_hydra.adapt.postprocess import MapPostprocessor
from pyimgano_hydra.data.images import read_size
from pyimgano_hydra.data.sample import Sample
from pyimgano_hydra.defects.export import DefectsExporter, require_maps
from pyimgano_hydra.defects.pixel_threshold import resolve_pixel_threshold
from pyimgano_hydra.errors import DataError
from pyimgano_hydra.metrics.image import image_metrics
from pyimgano_hydra.metrics.pixel import aupro, pixel_auroc
from pyimgano_hydra.recipes.calibration import calibrate_threshold, calibration_quantile
from pyimgano_hydra.recipes.context import CategoryResult, RecipeContext
from pyimgano_hydra.runs.checkpoints import save_checkpoint
from pyimgano_hydra.runs.layout import safe_name
from pyimgano_hydra.runs.writers import save_npy_atomic, write_jsonl_atomic
from pyimgano_hydra.viz.overlays import select_overlays, write_overlays


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
                 pro_fpr_limit=0.3, predict_batch_size=32, save_checkpoint=True):
        self.contamination = contamination
        self.calibration_quantile = calibration_quantile
        self.calibration_holdout = calibration_holdout
        self.pro_fpr_limit = pro_fpr_limit
        self.predict_batch_size = predict_batch_size
        self.save_checkpoint = save_checkpoint

    def _batches(self, detector, dataset, samples: list[Sample]):
        """Yield (start, images, DetectorOutput) per batch; nothing is held across batches."""
        for start in range(0, len(samples), self.predict_batch_size):
            images = dataset.load_images(samples[start:start + self.predict_batch_size])
            yield start, images, detector.predict(images)

    def _fit(self, ctx: RecipeContext, split, timings: dict, notes: list):
        fit_samples, calib_samples = holdout_split(split.train, self.calibration_holdout, ctx.seed)
        t = time.perf_counter()
        train_images = ctx.dataset.load_images(fit_samples)
        timings["load_train_s"] = time.perf_counter() - t
        detector = ctx.make_detector()
        if (ctx.defects or {}).get("enabled"):
            require_maps(detector)
        t = time.perf_counter()
        detector.fit(train_images)
        timings["fit_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if calib_samples:
            outputs = [out for _, _, out in self._batches(detector, ctx.dataset, calib_samples)]
            scores_from = (f"{len(calib_samples)} held-out train images "
                           f"(recipe.calibration_holdout={self.calibration_holdout})")
        else:
            outputs = [detector.predict(train_images)]
            scores_from = f"{len(fit_samples)} training images (in-sample; biased low)"
            notes.append("threshold calibrated in-sample: too few train images for a hold-out")
        normal_scores = np.concatenate([np.asarray(o.scores, np.float64).reshape(-1) for o in outputs])
        normal_maps = (np.concatenate([o.maps for o in outputs]).astype(np.float32)
                       if outputs and outputs[0].maps is not None else None)
        q, q_source = calibration_quantile(self.contamination, self.calibration_quantile)
        threshold = calibrate_threshold(normal_scores, q, q_source, scores_from)
        timings["calibrate_s"] = time.perf_counter() - t
        counts = {"train": len(split.train), "fit": len(fit_samples), "calibration": len(calib_samples)}
        return detector, threshold, normal_maps, counts

    def __call__(self, ctx: RecipeContext) -> CategoryResult:
        timings: dict[str, float] = {}
        notes: list[str] = []
        t0 = time.perf_counter()
        split = ctx.dataset.split(ctx.category)
        if not split.train:
            raise DataError(f"category {ctx.category}: the train split is empty; "
                            "add normal images under its train folder")
        detector, threshold, normal_maps, counts = self._fit(ctx, split, timings, notes)
        fit_details = self.describe_fit(ctx, detector)
        has_maps = normal_maps is not None
        pp_cfg = ctx.postprocess or {}
        postprocessor = None
        if has_maps:
            postprocessor = MapPostprocessor.from_config(pp_cfg).fit(normal_maps)
            normal_maps = postprocessor.transform(normal_maps)
        elif not getattr(detector, "produces_maps", False):
            notes.append(f"{type(detector).__name__} produces no anomaly maps: pixel metrics skipped")
        save_maps = bool(pp_cfg.get("save_maps", False)) and has_maps
        exporter = None
        if (ctx.defects or {}).get("enabled") and has_maps:
            pixel_threshold = resolve_pixel_threshold(ctx.defects, normal_maps=normal_maps, seed=ctx.seed)
            exporter = DefectsExporter(ctx.defects, pixel_threshold, ctx.out.masks, ctx.out.root)

        t = time.perf_counter()
        test = split.test
        scores = np.zeros(len(test))
        maps = None
        for start, _, out in self._batches(detector, ctx.dataset, test):
            scores[start:start + len(out.scores)] = np.asarray(out.scores, np.float64).reshape(-1)
            if has_maps and out.maps is not None:
                batch_maps = postprocessor.transform(out.maps)
                if maps is None:
                    maps = np.zeros((len(test),) + batch_maps.shape[1:], np.float32)
                maps[start:start + len(batch_maps)] = batch_maps
                if save_maps:
                    for j, amap in enumerate(batch_maps):
                        save_npy_atomic(ctx.out.map_path(start + j, test[start + j].path), amap)
        timings["predict_s"] = time.perf_counter() - t
        timings["test_images_per_s"] = len(test) / max(timings["predict_s"], 1e-9)

        t = time.perf_counter()
        labels = np.array([s.label for s in test], dtype=int)
        metrics = image_metrics(labels, scores, threshold["value"])
        has_masks = any(s.mask_path for s in test)
        masks = None
        if maps is not None and has_masks:
            masks = ctx.dataset.load_masks(test)
            known = labels >= 0
            metrics["pixel_auroc"] = pixel_auroc(masks[known], maps[known], seed=ctx.seed)
            metrics["pixel_aupro"] = aupro(masks[known], maps[known], fpr_limit=self.pro_fpr_limit)
        elif maps is not None:
            notes.append("no ground-truth masks in the test split: pixel metrics skipped")
        timings["metrics_s"] = time.perf_counter() - t

        t = time.perf_counter()
        records = []
        for i, (sample, score) in enumerate(zip(test, scores)):
            record = {
                "index": i, "path": sample.path, "category": sample.category,
                "defect_type": sample.defect_type, "label": int(sample.label), "score": float(score),
                "pred_label": int(score > threshold["value"]), "threshold": threshold["value"],
            }
            if save_maps:
                record["anomaly_map"] = {"path": str(ctx.out.map_path(i, sample.path).relative_to(ctx.out.root)),
                                         "shape": list(maps[i].shape), "dtype": str(maps[i].dtype)}
            if exporter is not None:
                record["defects"] = exporter(
                    f"{i:06d}_{safe_name(Path(sample.path).stem)}", maps[i], read_size(sample.path),
                    gt_mask=None if masks is None else masks[i], label=int(sample.label))
            records.append(record)
        extra: dict = {"produces_maps": has_maps, **fit_details}
        if exporter is not None:
            extra["pixel_threshold"] = {"value": exporter.threshold.value,
                                        "provenance": exporter.threshold.provenance}
            figures = exporter.figures()
            if figures:
                metrics.update({f"defects_{k}": v for k, v in figures.items() if k != "counts"})
                extra["defects_counts"] = figures["counts"]
        if maps is not None:
            self._overlays(ctx, test, scores, labels, maps, masks, pp_cfg, extra)
        if self.save_checkpoint:
            self._checkpoint(ctx, detector, postprocessor, threshold, notes, extra)
        write_jsonl_atomic(ctx.out.per_image, records)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        counts.update(test=len(test), test_normal=int((labels == 0).sum()),
                      test_anomalous=int((labels == 1).sum()), test_unlabelled=int((labels < 0).sum()))
        return CategoryResult(ctx.category, metrics, threshold, timings, counts, notes, extra=extra)

    def describe_fit(self, ctx: RecipeContext, detector) -> dict:
        """Extra report fields about the fitted detector (recipes that train add loss curves)."""
        return {}

    @staticmethod
    def _overlays(ctx, test, scores, labels, maps, masks, pp_cfg, extra) -> None:
        top_n, normal_n = int(pp_cfg.get("overlays_top_n", 0)), int(pp_cfg.get("overlays_normal_n", 0))
        chosen = [i for _, i in select_overlays(scores, labels, top_n, normal_n)]
        if not chosen:
            return
        picked = [test[i] for i in chosen]
        paths = write_overlays(
            ctx.out.overlays, ctx.dataset.load_images(picked), maps[chosen], scores[chosen], labels[chosen],
            [f"{i:06d}_{safe_name(Path(s.path).stem)}" for i, s in zip(chosen, picked)],
            masks=None if masks is None else masks[chosen],
            top_n=min(top_n, len(chosen)), normal_n=normal_n)
        extra["overlays"] = [str(p.relative_to(ctx.out.root)) for p in paths]

    @staticmethod
    def _checkpoint(ctx, detector, postprocessor, threshold, notes, extra) -> None:
        try:
            state = detector.state_dict()
        except NotImplementedError as exc:
            notes.append(f"checkpoint not saved: {exc}")
            return
        path = ctx.out.checkpoints / "model.pt"
        save_checkpoint(path, state, meta={
            "detector": f"{type(detector).__module__}.{type(detector).__qualname__}",
            "category": ctx.category,
            "postprocess": postprocessor.state_dict() if postprocessor is not None else None,
            "image_threshold": threshold,
        })
        extra["checkpoint"] = str(path.relative_to(ctx.out.root))
        extra["postprocess_state"] = postprocessor.state_dict() if postprocessor is not None else None
