"""Overlays: anomaly heat map over the image, with the ground-truth contour when known."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

GT_COLOR = (0, 255, 0)  # RGB green contour for the ground-truth mask


def heatmap_overlay(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
                    vmin: float | None = None, vmax: float | None = None, alpha: float = 0.5,
                    caption: str | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3): JET heat map of ``amap`` blended over ``image``.

    ``image`` is uint8 (H, W), (H, W, 1) or (H, W, 3); ``amap`` is resized to it if needed.
    Values are scaled from [vmin, vmax] (default: the map's own min/max); pass one range for
    a whole category so colours compare across images. ``mask`` (bool) draws its contour.
    """
    rgb = np.asarray(image, dtype=np.uint8)
    if rgb.ndim == 2 or rgb.shape[-1] == 1:
        rgb = np.repeat(rgb.reshape(rgb.shape[:2] + (1,)), 3, axis=-1)
    h, w = rgb.shape[:2]
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    lo = float(amap.min()) if vmin is None else float(vmin)
    hi = float(amap.max()) if vmax is None else float(vmax)
    scaled = np.clip((amap - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)
    thickness = max(1, round(min(h, w) / 256))
    if mask is not None and np.any(mask):
        contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, GT_COLOR, thickness)
    if caption:
        scale = max(0.4, min(h, w) / 512)
        cv2.putText(out, caption, (4, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def select_overlays(scores: np.ndarray, labels: np.ndarray, top_n: int,
                    normal_n: int) -> list[tuple[str, int]]:
    """(kind, index) pairs: the ``top_n`` highest scores (kind ``top``), then the
    ``normal_n`` highest-scoring normal images not already chosen (kind ``normal``) —
    the ones closest to a false alarm."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    top = [int(i) for i in order[:top_n]]
    normals = [int(i) for i in order if labels[i] == 0 and int(i) not in top][:normal_n]
    return [("top", i) for i in top] + [("normal", i) for i in normals]


def write_overlays(out_dir: str | Path, images: np.ndarray, maps: np.ndarray,
                   scores: np.ndarray, labels: np.ndarray, names: Sequence[str],
                   masks: np.ndarray | None = None, top_n: int = 10, normal_n: int = 4,
                   vmin: float | None = None, vmax: float | None = None) -> list[Path]:
    """Write ``<kind><rank>_<name>.png`` overlays for :func:`select_overlays`; return paths.

    ``vmin``/``vmax`` default to the range of the chosen maps, shared by every overlay.
    """
    chosen = select_overlays(scores, labels, top_n, normal_n)
    if not chosen:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picked = np.stack([maps[i] for _, i in chosen])
    vmin = float(picked.min()) if vmin is None else vmin
    vmax = float(picked.max()) if vmax is None else vmax
    paths, ranks = [], {"top": 0, "normal": 0}
    for kind, i in chosen:
        ranks[kind] += 1
        mask = None if masks is None else masks[i]
        caption = f"score {float(scores[i]):.3g}  label {int(labels[i])}"
        rgb = heatmap_overlay(images[i], maps[i], mask, vmin, vmax, caption=caption)
        path = out_dir / f"{kind}{ranks[kind]:02d}_{names[i]}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
