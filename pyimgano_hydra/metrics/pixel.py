"""Pixel-level metrics: pixel AUROC (scikit-learn) and AUPRO up to an FPR limit."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, roc_auc_score

_MAX_AUROC_PIXELS = 4_000_000  # subsample (seeded, stratified) above this for speed


def pixel_auroc(masks: np.ndarray, maps: np.ndarray, seed: int = 0) -> float:
    """ROC AUC over all pixels; NaN when the masks hold no defect pixel."""
    truth = np.asarray(masks, dtype=bool).ravel()
    values = np.asarray(maps, dtype=np.float32).ravel()
    if not truth.any() or truth.all():
        return float("nan")
    if truth.size > _MAX_AUROC_PIXELS:
        rng = np.random.default_rng(seed)
        pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
        share = _MAX_AUROC_PIXELS / truth.size
        keep = np.concatenate([
            rng.choice(pos, max(1, int(len(pos) * share)), replace=False),
            rng.choice(neg, max(1, int(len(neg) * share)), replace=False),
        ])
        truth, values = truth[keep], values[keep]
    return float(roc_auc_score(truth, values))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, bins: int = 2000) -> float:
    """Area under the per-region-overlap curve for FPR in [0, fpr_limit], normalised to [0, 1].

    Scores are binned into ``bins`` thresholds; per-region overlap and the FPR over normal
    pixels are read from cumulative histograms, so the cost is linear in the pixel count.
    """
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float32)
    if not masks.any() or masks.all():
        return float("nan")
    lo, hi = float(maps.min()), float(maps.max())
    if hi <= lo:
        return float("nan")
    edges = np.linspace(lo, hi, bins + 1)[1:-1]
    normal_hist = np.zeros(bins, dtype=np.int64)
    region_hists, region_sizes = [], []
    for mask, amap in zip(masks, maps):
        idx = np.searchsorted(edges, amap, side="right")
        normal_hist += np.bincount(idx[~mask], minlength=bins)
        if mask.any():
            labelled, n = ndimage.label(mask)
            counts = np.bincount(labelled[mask] * bins + idx[mask], minlength=(n + 1) * bins)
            counts = counts.reshape(n + 1, bins)[1:]
            region_hists.append(counts)
            region_sizes.append(counts.sum(axis=1))
    hists = np.concatenate(region_hists)
    sizes = np.concatenate(region_sizes).astype(np.float64)
    # Pixels above threshold t_k = bins k..end: reverse cumulative sums (threshold from high to low).
    region_above = np.cumsum(hists[:, ::-1], axis=1) / sizes[:, None]
    pro = region_above.mean(axis=0)
    fpr = np.cumsum(normal_hist[::-1]) / max(1, normal_hist.sum())
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], pro])
    if fpr_limit < 1:
        cut = np.searchsorted(fpr, fpr_limit, side="right")
        if cut < len(fpr):
            x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / max(x1 - x0, 1e-12)
            fpr = np.concatenate([fpr[:cut], [fpr_limit]])
            pro = np.concatenate([pro[:cut], [y_lim]])
    return float(auc(fpr, pro) / fpr_limit)


class StreamingPixelMetrics:
    """Pixel AUROC and AUPRO from fixed-size histograms, fed one batch at a time.

    Scores are binned on [lo, hi] (values outside go to the end bins), so memory stays
    O(bins) however many test images stream through. Pick ``lo``/``hi`` from normal maps
    (e.g. calibration maps): thresholds that matter for AUPRO lie inside the normal range.
    Per-region overlap is accumulated as each region's pixel share per bin, so the PRO curve
    is one reverse cumulative sum at the end.
    """

    def __init__(self, lo: float, hi: float, bins: int = 1 << 16, fpr_limit: float = 0.3):
        if not hi > lo:
            hi = lo + 1.0
        self.lo, self.hi, self.bins, self.fpr_limit = float(lo), float(hi), int(bins), float(fpr_limit)
        self.normal = np.zeros(self.bins, np.int64)
        self.anomalous = np.zeros(self.bins, np.int64)
        self.region_share = np.zeros(self.bins, np.float64)
        self.n_regions = 0

    def _bin(self, values: np.ndarray) -> np.ndarray:
        scaled = (values.astype(np.float64) - self.lo) * (self.bins / (self.hi - self.lo))
        return np.clip(scaled, 0, self.bins - 1).astype(np.int64)

    def update(self, masks: np.ndarray, maps: np.ndarray) -> None:
        for mask, amap in zip(np.asarray(masks, bool), np.asarray(maps, np.float32)):
            idx = self._bin(amap)
            self.normal += np.bincount(idx[~mask], minlength=self.bins)
            if mask.any():
                self.anomalous += np.bincount(idx[mask], minlength=self.bins)
                labelled, n = ndimage.label(mask)
                sizes = np.bincount(labelled.ravel())[1:].astype(np.float64)
                weights = (1.0 / sizes)[labelled[mask] - 1]
                self.region_share += np.bincount(idx[mask], weights=weights, minlength=self.bins)
                self.n_regions += n

    def pixel_auroc(self) -> float:
        if not self.anomalous.any() or not self.normal.any():
            return float("nan")
        tpr = np.concatenate([[0.0], np.cumsum(self.anomalous[::-1]) / self.anomalous.sum()])
        fpr = np.concatenate([[0.0], np.cumsum(self.normal[::-1]) / self.normal.sum()])
        return float(auc(fpr, tpr))

    def aupro(self) -> float:
        if not self.n_regions or not self.normal.any():
            return float("nan")
        fpr = np.concatenate([[0.0], np.cumsum(self.normal[::-1]) / self.normal.sum()])
        pro = np.concatenate([[0.0], np.cumsum(self.region_share[::-1]) / self.n_regions])
        cut = np.searchsorted(fpr, self.fpr_limit, side="right")
        if cut < len(fpr):
            x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
            y_lim = y0 + (y1 - y0) * (self.fpr_limit - x0) / max(x1 - x0, 1e-12)
            fpr = np.concatenate([fpr[:cut], [self.fpr_limit]])
            pro = np.concatenate([pro[:cut], [y_lim]])
        return float(auc(fpr, pro) / self.fpr_limit)
