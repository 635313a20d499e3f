"""Overlays: anomaly heat map over the image, the ground-truth contour when known, the
pixel-threshold contour, the score / predicted label caption and a colour bar."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

GT_COLOR = (0, 255, 0)  # RGB green contour for the ground-truth mask
THRESHOLD_COLOR = (255, 255, 255)  # RGB white contour: map >= pixel threshold (predicted defect)


def heatmap_overlay(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
                    vmin: float | None = None, vmax: float | None = None, alpha: float = 0.5,
                    caption: str | None = None, pixel_threshold: float | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3): JET heat map of ``amap`` blended over ``image``.

    ``image`` is uint8 (H, W), (H, W, 1) or (H, W, 3); ``amap`` is resized to it if needed.
    Values are scaled from [vmin, vmax] (default: the map's own min/max); pass one range for
    a whole category so colours compare across images. ``mask`` (bool) draws its contour in
    green, ``pixel_threshold`` the contour of ``amap >= pixel_threshold`` in white.
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
    if pixel_threshold is not None and np.any(amap >= pixel_threshold):
        contours, _ = cv2.findContours((amap >= pixel_threshold).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, THRESHOLD_COLOR, thickness)
    if caption:  # one text line per caption line, top left
        scale = max(0.35, min(h, w) / 512)
        step = int(22 * scale) + 4
        for row, text in enumerate(caption.splitlines()):
            cv2.putText(out, text, (3, step * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def with_colour_bar(rgb: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """``rgb`` with a JET colour bar on the right, labelled with the map values at its ends."""
    h = rgb.shape[0]
    ramp = np.linspace(255, 0, h).astype(np.uint8).reshape(h, 1).repeat(max(8, h // 24), axis=1)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    scale = max(0.3, h / 640)
    labels = [f"{vmax:.3g}", f"{vmin:.3g}"]
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for t in labels) + 6
    panel = np.full((h, bar.shape[1] + width, 3), 255, np.uint8)
    panel[:, :bar.shape[1]] = bar
    for text, y in ((labels[0], int(14 * scale / 0.4)), (labels[1], h - 4)):
        cv2.putText(panel, text, (bar.shape[1] + 3, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([rgb, np.full((h, 4, 3), 255, np.uint8), panel], axis=1)


def _caption(score: float, label: int, image_threshold: float | None) -> str:
    """'score 14.2 > 13.7' / 'pred: ANOMALY' / 'gt: anomalous' (the threshold's side decides)."""
    truth = "gt: " + {0: "normal", 1: "anomalous"}.get(int(label), "unlabelled")
    if image_threshold is None:
        return f"score {score:.3g}\n{truth}"
    above = score > image_threshold
    return (f"score {score:.3g} {'>' if above else '<='} {image_threshold:.3g}\n"
            f"pred: {'ANOMALY' if above else 'ok'}\n{truth}")


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
                   vmin: float | None = None, vmax: float | None = None,
                   image_threshold: float | None = None, pixel_threshold: float | None = None) -> list[Path]:
    """Write ``<kind><rank>_<name>.png`` overlays for :func:`select_overlays`; return paths.

    ``vmin``/``vmax`` default to the range of the chosen maps, shared by every overlay and
    shown on its colour bar; with ``image_threshold`` the caption gives the predicted label.
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
        caption = _caption(float(scores[i]), int(labels[i]), image_threshold)
        rgb = heatmap_overlay(images[i], maps[i], mask, vmin, vmax, caption=caption,
                              pixel_threshold=pixel_threshold)
        rgb = with_colour_bar(rgb, vmin, vmax)
        path = out_dir / f"{kind}{ranks[kind]:02d}_{names[i]}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
