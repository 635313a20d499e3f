"""The default recipe: fit on normal images, calibrate, predict, measure, write artifacts."""
from __future__ import annotations

import logging
import time

import numpy as np

from pyimgano_hydra.adapt.postprocess import MapPostprocessor
from pyimgano_hydra.data.sample import Sample
from pyimgano_hydra.defects.export import DefectsExporter, require_maps
from pyimgano_hydra.defects.pixel_threshold import PixelThreshold, resolve_pixel_threshold
from pyimgano_hydra.errors import DataError
from pyimgano_hydra.inspector import Inspector, RecordOutputs, record_stem, score_all
from pyimgano_hydra.metrics.image import image_metrics
from pyimgano_hydra.metrics.pixel import StreamingPixelMetrics
from pyimgano_hydra.progress import stage
from pyimgano_hydra.recipes.calibration import calibrate_threshold, calibration_quantile, threshold_notes
from pyimgano_hydra.recipes.context import CategoryResult, RecipeContext
from pyimgano_hydra.runs.writers import write_jsonl_atomic
from pyimgano_hydra.viz.overlays import select_overlays, write_overlays
from pyimgano_hydra.viz.plots import category_plots


log = logging.getLogger(__name__)
FEW_CALIBRATION_SCORES = 20  # below this many normal scores the threshold gets a warning note


def holdout_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of normal training samples into (fit, calibration)."""
    n_hold = int(round(len(samples) * fraction))
    if fraction <= 0 or n_hold < 2 or len(samples) - n_hold < 2:
        return list(samples), []
    order = np.random.default_rng(seed).permutation(len(samples))
    hold = set(order[:n_hold].tolist())
    return ([s for i, s in enumerate(samples) if i not in hold],
            [s for i, s in enumerate(samples) if i in hold])


def per_defect_type(test: list[Sample], labels: np.ndarray, scores: np.ndarray) -> dict:
    """Image AUROC of the normal images against each defect type alone (e.g. LOCO's logical
    vs structural anomalies), with counts."""
    types = np.array([s.defect_type for s in test])
    normal = labels == 0
    out = {}
    for name in sorted(set(types[labels == 1])):
        chosen = normal | ((labels == 1) & (types == name))
        m = image_metrics(labels[chosen], scores[chosen], None)
        out[name] = {"n": int(((labels == 1) & (types == name)).sum()), "image_auroc": m["image_auroc"],
                     "image_ap": m["image_ap"]}
    return out


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

    def _batches(self, detector, dataset, samples: list[Sample], name: str):
        """Detector outputs of ``samples`` batch by batch under one progress bar ``name``
        (calibration, before an inspector exists); nothing is held across batches."""
        with stage(name, total=len(samples)) as bar:
            for start in range(0, len(samples), self.predict_batch_size):
                images = dataset.load_images(samples[start:start + self.predict_batch_size])
                yield detector.score_maps(images)
                bar.update(len(images))

    def _fit(self, ctx: RecipeContext, split, timings: dict, notes: list):
        fit_samples, calib_samples = holdout_split(split.train, self.calibration_holdout, ctx.seed)
        t = time.perf_counter()
        with stage("load train"):
            train_images = ctx.dataset.load_images(fit_samples)
        timings["load_train_s"] = time.perf_counter() - t
        log.debug("train images %s %s", train_images.shape, train_images.dtype)
        detector = ctx.make_detector()
        self.check_detector(detector)
        if (ctx.defects or {}).get("enabled"):
            require_maps(detector)
        t = time.perf_counter()
        with stage("fit"):
            detector.fit(train_images)
        timings["fit_s"] = time.perf_counter() - t
        notes.extend(getattr(detector, "notes_", []))  # e.g. a PyOD parameter lowered to fit the data
        t = time.perf_counter()
        if calib_samples:
            outputs = list(self._batches(detector, ctx.dataset, calib_samples, "calibrate"))
            scores_from = (f"{len(calib_samples)} held-out train images "
                           f"(recipe.calibration_holdout={self.calibration_holdout})")
        else:
            outputs = [detector.score_maps(train_images)]
            scores_from = f"{len(fit_samples)} training images (in-sample; biased low)"
            notes.append("threshold calibrated in-sample: too few train images for a hold-out")
        normal_scores = np.concatenate([np.asarray(o.scores, np.float64).reshape(-1) for o in outputs])
        if len(normal_scores) < FEW_CALIBRATION_SCORES:
            notes.append(f"threshold rests on only {len(normal_scores)} normal scores: treat it as rough "
                         f"(add normal train images, or raise recipe.calibration_holdout)")
        normal_maps = (np.concatenate([o.maps for o in outputs]).astype(np.float32)
                       if outputs and outputs[0].maps is not None else None)
        q, q_source = calibration_quantile(self.contamination, self.calibration_quantile)
        threshold = calibrate_threshold(normal_scores, q, q_source, scores_from)
        log.debug("image threshold %s", threshold)
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
        inspector, normal_maps = self._inspector(ctx, detector, threshold, normal_maps, notes)
        has_maps = normal_maps is not None
        pp_cfg = ctx.postprocess or {}
        exporter = None
        if inspector.pixel_threshold is not None:
            exporter = DefectsExporter(ctx.defects, PixelThreshold(**inspector.pixel_threshold),
                                       ctx.out.masks, ctx.out.root)

        # Stream the test split through the inspector's one loop; pixel metrics per batch.
        t = time.perf_counter()
        test = split.test
        labels = np.array([s.label for s in test], dtype=int)
        has_masks = has_maps and any(s.mask_path for s in test)
        pixel = (StreamingPixelMetrics(float(normal_maps.min()),
                                       float(normal_maps.max()) * 3 - 2 * float(normal_maps.min()),
                                       fpr_limit=self.pro_fpr_limit) if has_masks else None)

        def pixel_update(items, maps, masks):
            known = np.array([item["label"] >= 0 for item in items])
            pixel.update(masks[known], maps[known])

        items = [{"index": i, "path": s.path, "category": s.category, "defect_type": s.defect_type,
                  "label": int(s.label)} for i, s in enumerate(test)]
        with stage("test", total=len(test)) as bar:
            records = score_all(
                inspector, items, lambda chunk: ctx.dataset.load_images([test[i["index"]] for i in chunk]),
                self.predict_batch_size,
                RecordOutputs(root=ctx.out.root, maps_dir=ctx.out.maps if pp_cfg.get("save_maps") else None,
                              exporter=exporter,
                              load_masks=(lambda chunk: ctx.dataset.load_masks([test[i["index"]] for i in chunk]))
                              if has_masks else None,
                              on_batch=pixel_update if pixel is not None else None),
                advance=bar.update)
        scores = np.array([r["score"] for r in records], dtype=np.float64)
        timings["predict_s"] = time.perf_counter() - t
        timings["test_images_per_s"] = len(test) / max(timings["predict_s"], 1e-9)

        t = time.perf_counter()
        metrics = image_metrics(labels, scores, threshold["value"])
        by_type = per_defect_type(test, labels, scores)
        notes.extend(threshold_notes(metrics))
        if (labels < 0).any():
            notes.append(f"{int((labels < 0).sum())} unlabelled test images (e.g. a private split): "
                         "scored and recorded, left out of the metrics")
        if pixel is not None:
            metrics["pixel_auroc"] = pixel.pixel_auroc()
            metrics["pixel_aupro"] = pixel.aupro()
        elif has_maps:
            notes.append("no ground-truth masks in the test split: pixel metrics skipped")
        timings["metrics_s"] = time.perf_counter() - t
        t = time.perf_counter()
        extra: dict = {"produces_maps": has_maps, "per_defect_type": by_type, **fit_details}
        if exporter is not None:
            extra["pixel_threshold"] = inspector.pixel_threshold
            figures = exporter.figures()
            if figures:
                metrics.update({f"defects_{k}": v for k, v in figures.items() if k != "counts"})
                extra["defects_counts"] = figures["counts"]
        with stage("plots"):
            extra["plots"] = [str(p.relative_to(ctx.out.root)) for p in category_plots(
                ctx.out.plots, ctx.category, labels, scores, threshold["value"], by_type)]
        if has_maps:
            self._overlays(ctx, inspector, test, scores, labels, pp_cfg, extra)
        elif int(pp_cfg.get("overlays_top_n", 0)) or int(pp_cfg.get("overlays_normal_n", 0)):
            notes.append(f"{type(inspector.detector).__name__} produces no anomaly maps: no overlays written "
                         "(pick a map model such as model=patchcore)")
        if self.save_checkpoint:
            self._save(ctx, inspector, notes, extra)
        write_jsonl_atomic(ctx.out.per_image, records)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        counts.update(test=len(test), test_normal=int((labels == 0).sum()),
                      test_anomalous=int((labels == 1).sum()), test_unlabelled=int((labels < 0).sum()))
        return CategoryResult(ctx.category, metrics, threshold, timings, counts, notes, extra=extra)

    @staticmethod
    def _inspector(ctx: RecipeContext, detector, threshold: dict, normal_maps, notes: list):
        """The fitted inspector (postprocessor fitted on the normal maps, pixel threshold
        resolved on them when defects are on) and the postprocessed normal maps."""
        postprocessor = pixel_threshold = None
        if normal_maps is not None:
            postprocessor = MapPostprocessor.from_config(ctx.postprocess or {}).fit(normal_maps)
            normal_maps = postprocessor.transform(normal_maps)
            if (ctx.defects or {}).get("enabled"):
                resolved = resolve_pixel_threshold(ctx.defects, normal_maps=normal_maps, seed=ctx.seed)
                pixel_threshold = {"value": resolved.value, "provenance": resolved.provenance}
        elif not getattr(detector, "produces_maps", False):
            notes.append(f"{type(detector).__name__} produces no anomaly maps: pixel metrics skipped")
        inspector = Inspector(detector, postprocessor, threshold, pixel_threshold, ctx.preprocessing,
                              defects=ctx.defects or None, category=ctx.category)
        return inspector, normal_maps

    def check_detector(self, detector) -> None:
        """Refuse a detector this recipe cannot fit (one-line ConfigError); any detector here."""

    def describe_fit(self, ctx: RecipeContext, detector) -> dict:
        """Extra report fields about the fitted detector (recipes that train add loss curves)."""
        return {}

    @staticmethod
    def _overlays(ctx, inspector, test, scores, labels, pp_cfg, extra) -> None:
        """Overlays of the top-N and a few normal images; their maps are recomputed (few images)."""
        top_n, normal_n = int(pp_cfg.get("overlays_top_n", 0)), int(pp_cfg.get("overlays_normal_n", 0))
        chosen = [i for _, i in select_overlays(scores, labels, top_n, normal_n)]
        if not chosen:
            return
        picked = [test[i] for i in chosen]
        with stage("overlays", total=len(picked)) as bar:
            images = ctx.dataset.load_images(picked)
            maps = inspector.score_batch(images).maps
            bar.update(len(picked))
        masks = ctx.dataset.load_masks(picked) if any(s.mask_path for s in picked) else None
        paths = write_overlays(
            ctx.out.overlays, images, maps, scores[chosen], labels[chosen],
            [record_stem(i, s.path) for i, s in zip(chosen, picked)],
            masks=masks, top_n=min(top_n, len(chosen)), normal_n=normal_n,
            image_threshold=inspector.threshold_,
            pixel_threshold=(inspector.pixel_threshold or {}).get("value"))
        extra["overlays"] = [str(p.relative_to(ctx.out.root)) for p in paths]

    @staticmethod
    def _save(ctx, inspector, notes, extra) -> None:
        """categories/<cat>/inspector.pt: the one stored copy of what inference needs."""
        try:
            path = inspector.save(ctx.out.inspector)
        except NotImplementedError as exc:
            notes.append(f"inspector not saved: {exc}")
            return
        extra["inspector"] = str(path.relative_to(ctx.out.root))
