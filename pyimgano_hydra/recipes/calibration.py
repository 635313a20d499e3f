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
