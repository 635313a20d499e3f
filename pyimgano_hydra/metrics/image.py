"""Image-level metrics (scikit-learn) over scores, labels and a threshold."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score


def image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict:
    """AUROC, AP, F1 at ``threshold`` and F1-max; NaN where a class is missing."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    known = labels >= 0
    labels, scores = labels[known], scores[known]
    out = {"n_normal": int((labels == 0).sum()), "n_anomalous": int((labels == 1).sum())}
    both = out["n_normal"] > 0 and out["n_anomalous"] > 0
    out["image_auroc"] = float(roc_auc_score(labels, scores)) if both else float("nan")
    out["image_ap"] = float(average_precision_score(labels, scores)) if both else float("nan")
    if both:
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
        out["image_f1_max"] = float(f1[best])
        out["image_f1_max_threshold"] = float(thresholds[best]) if len(thresholds) else float("nan")
    else:
        out["image_f1_max"] = out["image_f1_max_threshold"] = float("nan")
    if threshold is not None and len(labels):
        predicted = (scores > threshold).astype(int)
        out["image_f1"] = float(f1_score(labels, predicted, zero_division=0)) if out["n_anomalous"] else float("nan")
        out["image_accuracy"] = float((predicted == labels).mean())
        out["image_fpr"] = float(predicted[labels == 0].mean()) if out["n_normal"] else float("nan")
        out["image_tpr"] = float(predicted[labels == 1].mean()) if out["n_anomalous"] else float("nan")
    return out
