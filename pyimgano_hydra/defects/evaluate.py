"""Pixel- and region-level figures of predicted defect masks against ground-truth masks.

- pixel precision / recall / F1 over all test pixels pooled (micro), at the pixel threshold;
- share of ground-truth defects (8-connected components) hit by a predicted region, i.e.
  overlapping the predicted mask by at least ``min_overlap`` pixels;
- false regions per normal image: predicted 8-connected regions on normal images, averaged.

Undefined ratios (zero denominator) are None. Streams image by image (:class:`DefectsEvaluator`).
"""
from __future__ import annotations

from typing import Iterable, Optional

import cv2
import numpy as np

from pyimgano_hydra.defects.morphology import CONNECTIVITY
from pyimgano_hydra.errors import DataError

# the figures of ``DefectsEvaluator.result`` (a report holds each as defects_<name>)
FIGURES = ("pixel_precision", "pixel_recall", "pixel_f1", "gt_defects_hit_share", "false_regions_per_normal_image")


def _ratio(num: int, den: int) -> Optional[float]:
    return float(num) / float(den) if den else None


class DefectsEvaluator:
    """Accumulates confusion counts and component hits, one image at a time."""

    def __init__(self, min_overlap: int = 1):
        self.min_overlap = max(int(min_overlap), 1)
        self.tp = self.fp = self.fn = 0
        self.n_gt_defects = self.n_gt_defects_hit = 0
        self.n_normal_images = self.n_regions_on_normal = 0
        self.n_images = 0

    def update(self, pred_mask: np.ndarray, gt_mask: np.ndarray, label: Optional[int] = None) -> None:
        """One image: predicted mask (nonzero = defect), GT mask (bool or nonzero), label 0/1.

        Without ``label`` an image counts as normal when its GT mask is empty.
        """
        pred = np.asarray(pred_mask) > 0
        gt = np.asarray(gt_mask) > 0
        if pred.shape != gt.shape:
            raise DataError(f"defects evaluation: predicted mask {pred.shape} and ground truth {gt.shape} differ in shape")
        self.n_images += 1
        tp = int(np.count_nonzero(pred & gt))
        self.tp += tp
        self.fp += int(np.count_nonzero(pred)) - tp
        self.fn += int(np.count_nonzero(gt)) - tp
        if gt.any():
            n, labels = cv2.connectedComponents(gt.view(np.uint8), connectivity=CONNECTIVITY)
            overlap = np.bincount(labels[pred], minlength=n)[1:]
            self.n_gt_defects += n - 1
            self.n_gt_defects_hit += int(np.count_nonzero(overlap >= self.min_overlap))
        is_normal = (not gt.any()) if label is None else int(label) == 0
        if is_normal:
            self.n_normal_images += 1
            if pred.any():
                n_pred, _ = cv2.connectedComponents(pred.view(np.uint8), connectivity=CONNECTIVITY)
                self.n_regions_on_normal += n_pred - 1

    def result(self) -> dict:
        """JSON-able figures plus the counts behind them."""
        return {
            "pixel_precision": _ratio(self.tp, self.tp + self.fp),
            "pixel_recall": _ratio(self.tp, self.tp + self.fn),
            "pixel_f1": _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "gt_defects_hit_share": _ratio(self.n_gt_defects_hit, self.n_gt_defects),
            "false_regions_per_normal_image": _ratio(self.n_regions_on_normal, self.n_normal_images),
            "counts": {
                "n_images": self.n_images,
                "tp_pixels": self.tp,
                "fp_pixels": self.fp,
                "fn_pixels": self.fn,
                "n_gt_defects": self.n_gt_defects,
                "n_gt_defects_hit": self.n_gt_defects_hit,
                "n_normal_images": self.n_normal_images,
                "n_regions_on_normal": self.n_regions_on_normal,
            },
        }


def evaluate_defects(
    pred_masks: Iterable[np.ndarray],
    gt_masks: Iterable[np.ndarray],
    labels: Optional[Iterable[int]] = None,
    min_overlap: int = 1,
) -> dict:
    """Figures over paired predicted / GT masks (arrays (N, H, W) or iterables of (H, W))."""
    evaluator = DefectsEvaluator(min_overlap)
    preds, gts = list(pred_masks), list(gt_masks)
    labs = [None] * len(preds) if labels is None else [int(v) for v in labels]
    if not len(preds) == len(gts) == len(labs):
        raise DataError(f"defects evaluation: {len(preds)} predicted masks, {len(gts)} GT masks, {len(labs)} labels")
    for pred, gt, lab in zip(preds, gts, labs):
        evaluator.update(pred, gt, lab)
    return evaluator.result()
