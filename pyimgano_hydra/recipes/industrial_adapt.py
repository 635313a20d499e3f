"""The default recipe: fit on normal images, calibrate, predict, measure, write artifacts."""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np

from pyimgano_hydra.adapt.postprocess import MapPostprocessor
from pyimgano_hydra.data.images import without_skip_advice
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
MAX_CALIBRATION_MAP_BYTES = 512 * 2**20  # normal maps kept from cross-fitting (postprocess, pixel threshold)


def calibration_folds(n: int, method: str, folds: int, holdout: float, seed: int) -> list[np.ndarray]:
    """Seeded sets of training-image indices to score with a model fitted without them: one set
    of ``holdout`` share (``holdout``, ``refit``), ``folds`` disjoint sets covering all ``n``
    (``crossfit``), or none when there are too few images (every model needs 2 to fit on)."""
    order = np.random.default_rng(seed).permutation(n)
    if method == "crossfit":
        k = min(folds, n // 2)
        return [np.sort(part) for part in np.array_split(order, k)] if k >= 2 else []
    n_hold = int(round(n * holdout))
    if holdout <= 0 or n_hold < 2 or n - n_hold < 2:
        return []
    return [np.sort(order[:n_hold])]


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
    """Per category: fit on train/good, calibrate the image threshold on normal scores from
    models that did not see those images (refit, cross-fitting or a hold-out), predict the test
    split in batches, compute image (and pixel) metrics, write records."""

    def __init__(self, contamination=None, calibration_quantile=None, calibration="refit",
                 calibration_folds=5, calibration_holdout=0.2, pro_fpr_limit=0.3, predict_batch_size=32,
                 save_checkpoint=True):
        self.contamination = contamination
        self.calibration_quantile = calibration_quantile
        self.calibration = calibration
        self.calibration_folds = calibration_folds
        self.calibration_holdout = calibration_holdout
        self.pro_fpr_limit = pro_fpr_limit
        self.predict_batch_size = predict_batch_size
        self.save_checkpoint = save_checkpoint

    def _batches(self, detector, images: np.ndarray, bar):
        """Detector outputs of in-memory ``images`` batch by batch (calibration, before an
        inspector exists), advancing ``bar``."""
        for start in range(0, len(images), self.predict_batch_size):
            batch = images[start:start + self.predict_batch_size]
            yield detector.score_maps(batch)
            bar.update(len(batch))

    def _fit(self, ctx: RecipeContext, split, timings: dict, notes: list):
        t = time.perf_counter()
        with stage("load train"):
            train_images = ctx.dataset.load_images(split.train)
        timings["load_train_s"] = time.perf_counter() - t
        log.debug("train images %s %s", train_images.shape, train_images.dtype)
        n = len(train_images)
        held = calibration_folds(n, self.calibration, self.calibration_folds, self.calibration_holdout, ctx.seed)
        holdout = self.calibration == "holdout" and bool(held)  # the kept model is the one that scored
        fit_images = np.delete(train_images, held[0], axis=0) if holdout else train_images
        detector = ctx.make_detector()
        self.check_detector(detector)
        if (ctx.defects or {}).get("enabled"):
            require_maps(detector)
        t = time.perf_counter()
        with stage("fit"):
            detector.fit(fit_images)
        timings["fit_s"] = time.perf_counter() - t
        notes.extend(getattr(detector, "notes_", []))  # e.g. a PyOD parameter lowered to fit the data
        t = time.perf_counter()
        n_scored = sum(len(idx) for idx in held)
        with stage("calibrate", total=n_scored or n) as bar:
            if holdout:
                outputs = list(self._batches(detector, train_images[held[0]], bar))
                scores_from = (f"{len(held[0])} held-out train images "
                               f"(recipe.calibration_holdout={self.calibration_holdout})")
            elif held:
                outputs = self._unseen_outputs(ctx, train_images, held, bar)
                scores_from = (f"{n_scored} train images, each scored by one of {len(held)} fold models fitted without "
                               f"it (recipe.calibration=crossfit); the final model is fitted on all {n}"
                               if len(held) > 1 else
                               f"{n_scored} held-out train images scored by a model fitted on the other {n - n_scored} "
                               f"(recipe.calibration=refit); the final model is refitted on all {n}")
            else:
                outputs = list(self._batches(detector, train_images, bar))
                scores_from = f"{n} training images (in-sample; biased low)"
                notes.append("threshold calibrated in-sample: too few train images to hold any out")
        normal_scores = np.concatenate([np.asarray(o.scores, np.float64).reshape(-1) for o in outputs])
        if len(normal_scores) < FEW_CALIBRATION_SCORES:
            hint = ", or use recipe.calibration=crossfit" if len(held) == 1 else ""
            notes.append(f"threshold rests on only {len(normal_scores)} normal scores: treat it as rough "
                         f"(add normal train images{hint})")
        kept = [o.maps for o in outputs if o.maps is not None]
        normal_maps = np.concatenate(kept).astype(np.float32) if kept else None
        q, q_source = calibration_quantile(self.contamination, self.calibration_quantile)
        threshold = calibrate_threshold(normal_scores, q, q_source, scores_from)
        log.debug("image threshold %s", threshold)
        timings["calibrate_s"] = time.perf_counter() - t
        counts = {"train": n, "fit": len(fit_images), "calibration": n_scored,
                  "calibration_models": len(held) if held and not holdout else 0}
        return detector, threshold, normal_maps, counts

    def _unseen_outputs(self, ctx: RecipeContext, train_images: np.ndarray, held: list[np.ndarray], bar) -> list:
        """Outputs for the ``held`` training images, each set from a fresh detector fitted on the
        other images; maps are kept up to ``MAX_CALIBRATION_MAP_BYTES`` (at least one set's)."""
        outputs, map_bytes = [], 0
        for idx in held:
            model = ctx.make_detector()
            model.fit(np.delete(train_images, idx, axis=0))
            for out in self._batches(model, train_images[idx], bar):
                if out.maps is not None:
                    if map_bytes and map_bytes + out.maps.nbytes > MAX_CALIBRATION_MAP_BYTES:
                        out = replace(out, maps=None)
                    else:
                        map_bytes += out.maps.nbytes
                outputs.append(out)
        return outputs

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

        # dataset.on_bad_image=skip: a file gone bad since the listing is skipped too, not the run's end
        skip = getattr(ctx.dataset, "on_bad_image", "error") == "skip"
        unreadable: list[dict] | None = [] if skip else None
        lost_masks: dict[int, str] = {}

        def pixel_update(items, maps, masks):
            known = np.array([item["label"] >= 0 and item["index"] not in lost_masks for item in items])
            pixel.update(masks[known], maps[known])

        def load_masks(chunk):
            samples = [test[item["index"]] for item in chunk]
            try:
                return ctx.dataset.load_masks(samples)
            except DataError:
                if not skip:
                    raise
            masks = []
            for item, sample in zip(chunk, samples):
                try:
                    masks.append(ctx.dataset.load_masks([sample])[0])
                except DataError as exc:
                    lost_masks[item["index"]] = str(exc)
                    masks.append(ctx.dataset.load_masks([replace(sample, mask_path=None)])[0])  # left out below
            return np.stack(masks)

        items = [{"index": i, "path": s.path, "category": s.category, "defect_type": s.defect_type,
                  "label": int(s.label)} for i, s in enumerate(test)]
        with stage("test", total=len(test)) as bar:
            records = score_all(
                inspector, items, lambda chunk: ctx.dataset.load_images([test[i["index"]] for i in chunk], return_sizes=True),
                self.predict_batch_size,
                RecordOutputs(root=ctx.out.root, maps_dir=ctx.out.maps if pp_cfg.get("save_maps") else None,
                              exporter=exporter,
                              load_masks=load_masks if has_masks else None,
                              on_batch=pixel_update if pixel is not None else None, unreadable=unreadable),
                advance=bar.update)
        lost = {item["index"]: item["error"] for item in unreadable or []} | lost_masks
        if lost:
            for index, reason in sorted(lost.items()):
                ctx.dataset.skipped.append({"path": test[index].path, "reason": without_skip_advice(reason),
                                            "category": ctx.category})
            for record in records:  # a mask that went bad after its image's map and mask were written
                if record["index"] in lost:
                    for written in ((record.get("anomaly_map") or {}).get("path"),
                                    (record.get("defects") or {}).get("mask")):
                        if written:
                            (ctx.out.root / written).unlink(missing_ok=True)
            records = sorted((r for r in records if r["index"] not in lost), key=lambda r: r["index"])
            test = [sample for index, sample in enumerate(test) if index not in lost]
            labels = np.array([s.label for s in test], dtype=int)
            notes.append(f"{len(lost)} test image(s) became unreadable during the run: skipped "
                         "(dataset.on_bad_image=skip), listed under skipped_images")
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
        elif not test:
            notes.append("no test image was evaluated (the test split is empty, or every test image was "
                         "skipped): metrics are null")
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
