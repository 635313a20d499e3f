"""Connected regions of a uint8 {0, 255} mask, scored by the anomaly map.

Each region is a JSON-able dict::

    {"id": 3, "bbox_xyxy": [x1, y1, x2, y2], "area": 42, "centroid": [cx, cy],
     "score_max": 0.91, "score_mean": 0.73}

``id`` numbers the 8-connected components of the final mask 1..n in OpenCV's scan order
(top to bottom, deterministic); ``bbox_xyxy`` holds inclusive pixel coordinates
(x = column, y = row); ``centroid`` is the mean pixel position (x, y). Regions are sorted
by score_max desc, then area desc, then id asc.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from pyimgano_hydra.defects.morphology import Components, label_components


def sort_regions(regions: list[dict]) -> list[dict]:
    """Order by score_max desc, area desc, id asc."""
    return sorted(regions, key=lambda r: (-r["score_max"], -r["area"], r["id"]))


LOOP_LIMIT = 128  # up to this many regions, score inside each bbox; beyond, one vectorised pass


def _score_max_sum(components: Components, mask: np.ndarray, anomaly_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label max and sum of the map over the pixels of each kept component."""
    labels, n = components.labels, len(components.keep)
    maxes, sums = np.full(n, -np.inf), np.zeros(n)
    kept = np.flatnonzero(components.keep)
    if kept.size <= LOOP_LIMIT:
        for label in kept:
            x, y, w, h = components.stats[label, :4]
            vals = anomaly_map[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label]
            maxes[label], sums[label] = vals.max(), vals.sum(dtype=np.float64)
        return maxes, sums
    points = cv2.findNonZero(mask).reshape(-1, 2)  # (N, 1, 2) in OpenCV 4, (N, 2) in OpenCV 5
    xs, ys = points[:, 0], points[:, 1]
    lab = labels[ys, xs]
    vals = anomaly_map[ys, xs].astype(np.float64)
    np.maximum.at(maxes, lab, vals)
    sums += np.bincount(lab, weights=vals, minlength=n)
    return maxes, sums


def regions_from_components(
    components: Components, mask: np.ndarray, anomaly_map: np.ndarray, max_regions: Optional[int] = None
) -> tuple[list[dict], int]:
    """Sorted regions of the kept components, cut to ``max_regions`` (None keeps all).

    ``mask`` is the uint8 mask of exactly the kept components. Returns ``(regions, n_total)``,
    ``n_total`` counting kept components before the cut.
    """
    kept = np.flatnonzero(components.keep)
    if kept.size == 0:
        return [], 0
    maxes, sums = _score_max_sum(components, mask, anomaly_map)
    regions = []
    for new_id, label in enumerate(kept, start=1):
        x, y, w, h, area = (int(v) for v in components.stats[label])
        cx, cy = components.centroids[label]
        regions.append(
            {
                "id": new_id,
                "bbox_xyxy": [x, y, x + w - 1, y + h - 1],
                "area": area,
                "centroid": [round(float(cx), 3), round(float(cy), 3)],
                "score_max": float(maxes[label]),
                "score_mean": float(sums[label] / area),
            }
        )
    regions = sort_regions(regions)
    return (regions if max_regions is None else regions[:max_regions]), int(kept.size)


def find_regions(mask: np.ndarray, anomaly_map: np.ndarray, max_regions: Optional[int] = None) -> tuple[list[dict], int]:
    """Regions of ``mask`` scored on ``anomaly_map`` (same shape), cut to ``max_regions``."""
    return regions_from_components(label_components(mask), mask, anomaly_map, max_regions)
