"""Image-threshold calibration on normal scores, with provenance."""
from __future__ import annotations

import numpy as np

DEFAULT_QUANTILE = 0.995


def calibration_quantile(contamination: float | None, quantile: float | None) -> tuple[float, str]:
    """The quantile to use and where it came from."""
    if quantile is not None:
        return float(quantile), "recipe.calibration_quantile"
    if contamination is not None:
        return 1.0 - float(contamination), "1 - recipe.contamination"
    return DEFAULT_QUANTILE, "default"


def calibrate_threshold(normal_scores: np.ndarray, quantile: float, source: str, scores_from: str) -> dict:
    """Threshold = quantile of normal scores; returns value plus provenance."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    value = float(np.quantile(scores, quantile, method="linear")) if len(scores) else float("nan")
    return {
        "value": value,
        "provenance": {
            "method": "quantile",
            "quantile": quantile,
            "quantile_source": source,
            "scores_from": scores_from,
            "n_scores": int(len(scores)),
        },
    }


def threshold_notes(metrics: dict, gap: float = 0.1) -> list[str]:
    """A note when F1 at the calibrated threshold trails the best F1 on the test split."""
    f1, best = metrics.get("image_f1", np.nan), metrics.get("image_f1_max", np.nan)
    if not (np.isfinite(f1) and np.isfinite(best)) or best - f1 < gap:
        return []
    side = ("conservative (few false alarms, missed defects)" if metrics.get("image_fpr", 0) <= 0.05
            else "loose (false alarms)")
    return [f"the image threshold is {side}: F1 {f1:.2f} at it (FPR {metrics.get('image_fpr', np.nan):.2f}, "
            f"TPR {metrics.get('image_tpr', np.nan):.2f}) vs best F1 {best:.2f} at score "
            f"{metrics.get('image_f1_max_threshold', np.nan):.4g} on the test split; move it with "
            "recipe.calibration_quantile (lower = more sensitive) or recipe.contamination"]
