"""Binary postprocess of uint8 {0, 255} masks with OpenCV (8-connected foreground, square kernels)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CONNECTIVITY = 8


def _kernel(k: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Square kernel and the anchors of the first and second pass (mirrored for even sizes)."""
    first = k // 2
    second = k - 1 - first
    return np.ones((k, k), np.uint8), (first, first), (second, second)


def open_close(mask: np.ndarray, open_ksize: int = 0, close_ksize: int = 0) -> np.ndarray:
    """Opening with an ``open_ksize`` square kernel, then closing with ``close_ksize``; 0 skips.

    Opening removes specks thinner than the kernel; OpenCV's neutral border keeps blobs cut by
    the map edge from being eroded by it. Closing bridges gaps narrower than the kernel and is
    computed on a zero-padded copy, so it never grows a blob towards the map edge. Even sizes
    work too (the second pass mirrors the anchor, so nothing shifts).
    """
    out = mask.copy()
    if open_ksize > 0:
        kernel, a1, a2 = _kernel(open_ksize)
        out = cv2.dilate(cv2.erode(out, kernel, anchor=a1), kernel, anchor=a2)
    if close_ksize > 0:
        k = close_ksize
        kernel, a1, a2 = _kernel(k)
        padded = cv2.copyMakeBorder(out, k, k, k, k, cv2.BORDER_CONSTANT, value=0)
        closed = cv2.erode(cv2.dilate(padded, kernel, anchor=a1), kernel, anchor=a2)
        out = np.ascontiguousarray(closed[k:-k, k:-k])
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set to 255 every background pixel the map border cannot reach (4-connected background)."""
    out = mask.copy()
    x, y, w, h = cv2.boundingRect(mask)  # holes lie inside the foreground's bounding box
    if w == 0 or h == 0:
        return out
    padded = cv2.copyMakeBorder(mask[y : y + h, x : x + w], 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    outside = np.zeros((h + 4, w + 4), np.uint8)  # floodFill's mask is 2 px larger than the image
    cv2.floodFill(padded, outside, (0, 0), 255, flags=4 | cv2.FLOODFILL_MASK_ONLY | (255 << 8))
    out[y : y + h, x : x + w] = cv2.bitwise_not(outside[2:-2, 2:-2])
    return out


@dataclass
class Components:
    """8-connected components of a mask; ``keep`` marks the ones still in it (row 0 = background)."""

    labels: np.ndarray  # int32 (H, W), 0 = background
    stats: np.ndarray  # (n, 5): x, y, width, height, area (cv2.CC_STAT_* order)
    centroids: np.ndarray  # (n, 2): x, y
    keep: np.ndarray  # bool (n,)

    @property
    def n_kept(self) -> int:
        return int(np.count_nonzero(self.keep))


def label_components(mask: np.ndarray) -> Components:
    """Label 8-connected foreground components (OpenCV, Grana's block-based algorithm)."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask, CONNECTIVITY, cv2.CV_32S, cv2.CCL_GRANA
    )
    keep = np.ones(n, dtype=bool)
    keep[0] = False
    return Components(labels, stats, centroids, keep)


def drop_small(components: Components, min_area: int) -> Components:
    """Un-keep components with fewer than ``min_area`` pixels (0 or 1 keeps all)."""
    keep = components.keep & (components.stats[:, cv2.CC_STAT_AREA] >= min_area)
    return Components(components.labels, components.stats, components.centroids, keep)


def components_mask(components: Components, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 {0, 255} mask of the kept components.

    ``mask``: the mask that was labelled, if at hand; then only dropped components are erased
    (inside their bounding boxes), which is faster when few are dropped.
    """
    dropped = np.flatnonzero(~components.keep)[1:]  # row 0 is the background
    if mask is not None and dropped.size <= 128:
        out = mask.copy()
        for label in dropped:
            x, y, w, h = components.stats[label, :4]
            out[y : y + h, x : x + w][components.labels[y : y + h, x : x + w] == label] = 0
        return out
    lut = np.where(components.keep, np.uint8(255), np.uint8(0))
    return np.take(lut, components.labels)


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_area`` pixels; 0 or 1 keeps all."""
    if min_area <= 1:
        return mask.copy()
    return components_mask(drop_small(label_components(mask), min_area), mask)
