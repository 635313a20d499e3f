"""The benchmark suite: several seeded, procedural data sources in MVTec AD layout.

    python bench/suite.py --out /tmp/suite               # full suite (about a minute)
    python bench/suite.py --out /tmp/suite_small --size small   # the CI guard's tiny version

Writes ``<out>/<source>/<category>/{train/good, test/good, test/<defect>,
ground_truth/<defect>/<stem>_mask.png}``: each source is one MVTec-layout root, read by
``dataset=mvtec dataset.root=<out>/<source>`` (and ``dataset=folder``). Sources:

* ``textures``: stochastic and regular textures (grass-like strokes, gravel-like stones,
  fractal noise, woven fabric, brushed metal), colour and gray;
* ``objects``: structured parts with small pose and lighting jitter (a washer, a circuit
  board, a printed label);
* ``scale``: the same kinds of content at other sizes and counts: small images upscaled
  (96 px), large images downscaled (640 px, small defects), and many (200) training images.

Defects: scratch, stain, hole, cut-paste (a patch of another normal image), colour shift
and, for objects, a missing part; every anomalous image has an exact pixel mask. The same
seed gives byte-identical files. MTD (real images) is the suite's fourth source, read from
``../shared/datasets/mtd`` by the bench scripts where it exists.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

SUITE_VERSION = 1
Image = np.ndarray  # uint8 (H, W, 3) BGR, as cv2 writes it


# ---- content ----------------------------------------------------------------------------
def _noise(rng, side: int, octaves: int = 5, base: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1], (side, side) float32."""
    out = np.zeros((side, side), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2 ** o
        grid = rng.random((cells, cells)).astype(np.float32)
        out += amp * cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.55
    out /= total
    return (out - out.min()) / max(1e-6, out.max() - out.min())


def _tint(gray: np.ndarray, color) -> Image:
    """(H, W) in [0, 1] × a BGR colour → uint8 image."""
    img = gray[..., None] * np.asarray(color, np.float32)[None, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def grass(rng, side: int) -> Image:
    img = _tint(0.35 + 0.3 * _noise(rng, side, 3), (40, 110, 45))
    for _ in range(int(side * side / 110)):
        x, y = rng.integers(0, side, 2)
        length = rng.uniform(6, 16) * side / 256
        angle = rng.normal(np.pi / 2, 0.35)
        x2, y2 = int(x + length * np.cos(angle)), int(y - length * np.sin(angle))
        shade = rng.uniform(0.6, 1.3)
        color = tuple(int(min(255, c * shade)) for c in (50, 150, 60))
        cv2.line(img, (int(x), int(y)), (x2, y2), color, 1, cv2.LINE_AA)
    return img


def gravel(rng, side: int) -> Image:
    img = _tint(0.3 + 0.2 * _noise(rng, side, 3), (70, 80, 90))
    for _ in range(int(side * side / 120)):
        x, y = (int(v) for v in rng.integers(0, side, 2))
        a, b = (max(1, int(v * side / 256)) for v in rng.uniform(3, 8, 2))
        shade = rng.uniform(90, 190)
        color = (int(shade * rng.uniform(0.85, 1.0)), int(shade * rng.uniform(0.9, 1.05)), int(shade))
        cv2.ellipse(img, (x, y), (a, b), float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
        cv2.ellipse(img, (x, y), (a, b), 0, 200, 320, tuple(int(c * 0.6) for c in color), 1, cv2.LINE_AA)
    return img


def fractal(rng, side: int) -> Image:
    return _tint(0.25 + 0.6 * _noise(rng, side, 6), (200, 200, 200))


def woven(rng, side: int) -> Image:
    period = max(4, int(round(12 * side / 256)))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    phase = rng.uniform(0, period, 2)
    warp = np.sin(2 * np.pi * (xx + phase[0]) / period)
    weft = np.sin(2 * np.pi * (yy + phase[1]) / period)
    checker = ((np.floor((xx + phase[0]) / period) + np.floor((yy + phase[1]) / period)) % 2).astype(np.float32)
    gray = 0.5 + 0.25 * np.where(checker > 0, warp, weft) + 0.1 * _noise(rng, side, 4) - 0.05
    return _tint(np.clip(gray, 0, 1), (60, 90, 170))


def brushed(rng, side: int) -> Image:
    streaks = cv2.resize(rng.random((side, 8)).astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    fine = cv2.GaussianBlur(rng.random((side, side)).astype(np.float32), (31, 1), 0)
    light = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0), side, dtype=np.float32)[None, :]
    return _tint(np.clip((0.45 + 0.2 * streaks.T + 0.35 * fine) * light, 0, 1), (210, 205, 200))


def washer(rng, side: int) -> Image:
    img = _tint(0.15 + 0.05 * _noise(rng, side, 3), (90, 90, 90))
    c = side / 2 + rng.normal(0, side / 128, 2)
    outer, inner = side * 0.38, side * 0.17
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    r = np.hypot(xx - c[0], yy - c[1])
    ring = (r <= outer) & (r >= inner)
    metal = 0.55 + 0.25 * np.cos(np.arctan2(yy - c[1], xx - c[0]) - rng.uniform(0, 2 * np.pi)) + 0.08 * _noise(rng, side, 5)
    img[ring] = _tint(np.clip(metal, 0, 1), (200, 200, 205))[ring]
    return cv2.GaussianBlur(img, (3, 3), 0)


def circuit(rng, side: int) -> Image:
    img = _tint(0.55 + 0.1 * _noise(rng, side, 4), (50, 120, 40))
    step = side / 8
    jitter = rng.normal(0, side / 256, 2)
    for i in range(1, 8):
        for j in range(1, 8):
            x, y = int(i * step + jitter[0]), int(j * step + jitter[1])
            if (i + j) % 3 == 0:
                cv2.line(img, (x, y), (int(x + step), y), (60, 190, 200), max(1, side // 128))
            half = max(2, int(side / 64))
            cv2.rectangle(img, (x - half, y - half), (x + half, y + half), (90, 200, 220), -1)
    return img


def label(rng, side: int) -> Image:
    img = np.full((side, side, 3), 40, np.uint8)
    off = rng.normal(0, side / 256, 2)
    x0, y0 = int(side * 0.1 + off[0]), int(side * 0.25 + off[1])
    cv2.rectangle(img, (x0, y0), (int(x0 + side * 0.8), int(y0 + side * 0.5)), (235, 235, 230), -1)
    scale = side / 256
    for k, text in enumerate(("LOT 4711", "PN 2026-B", "QC OK")):
        cv2.putText(img, text, (x0 + int(10 * scale), y0 + int((30 + 30 * k) * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8 * scale, (20, 20, 20), max(1, int(2 * scale)), cv2.LINE_AA)
    light = rng.uniform(0.9, 1.05)
    return np.clip(img.astype(np.float32) * light, 0, 255).astype(np.uint8)


def gray(fn: Callable) -> Callable:
    def make(rng, side):
        g = cv2.cvtColor(fn(rng, side), cv2.COLOR_BGR2GRAY)
        return np.repeat(g[..., None], 3, axis=2)
    return make


# ---- defects ----------------------------------------------------------------------------
def _blank(img: Image) -> np.ndarray:
    return np.zeros(img.shape[:2], np.uint8)


def _where(rng, side: int, margin: float = 0.15) -> tuple[int, int]:
    lo, hi = int(side * margin), int(side * (1 - margin))
    return int(rng.integers(lo, hi)), int(rng.integers(lo, hi))


def scratch(img, rng, donor):
    side, mask = img.shape[0], _blank(img)
    x, y = _where(rng, side)
    length, angle = rng.uniform(0.12, 0.25) * side, rng.uniform(0, np.pi)
    pts = [(x, y)]
    for _ in range(3):
        angle += rng.normal(0, 0.25)
        x, y = x + length / 3 * np.cos(angle), y + length / 3 * np.sin(angle)
        pts.append((int(x), int(y)))
    width = max(1, int(round(side / 128)))
    color = (235, 235, 235) if rng.random() < 0.5 else (25, 25, 25)
    for a, b in zip(pts, pts[1:]):
        cv2.line(img, a, b, color, width, cv2.LINE_AA)
        cv2.line(mask, a, b, 255, width + 1)
    return img, mask


def stain(img, rng, donor):
    side, mask = img.shape[0], _blank(img)
    x, y = _where(rng, side)
    radius = rng.uniform(0.03, 0.07) * side
    blob = np.zeros(img.shape[:2], np.float32)
    cv2.ellipse(blob, (x, y), (int(radius), int(radius * rng.uniform(0.6, 1.0))), float(rng.uniform(0, 180)),
                0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), radius / 4)
    color = np.array(rng.choice([[30, 60, 90], [20, 20, 20], [120, 140, 150]]), np.float32)
    alpha = (0.65 * blob)[..., None]
    img[:] = np.clip(img * (1 - alpha) + color * alpha, 0, 255).astype(np.uint8)
    mask[blob > 0.25] = 255
    return img, mask


def hole(img, rng, donor):
    side, mask = img.shape[0], _blank(img)
    x, y = _where(rng, side)
    r = max(2, int(rng.uniform(0.015, 0.035) * side))
    cv2.circle(img, (x, y), r, (10, 10, 10), -1, cv2.LINE_AA)
    cv2.circle(img, (x, y), r, (160, 160, 160), 1, cv2.LINE_AA)
    cv2.circle(mask, (x, y), r + 1, 255, -1)
    return img, mask


def cut_paste(img, rng, donor):
    side, mask = img.shape[0], _blank(img)
    size = int(rng.uniform(0.08, 0.15) * side)
    sx, sy = (int(v) for v in rng.integers(0, side - size, 2))
    patch = np.ascontiguousarray(np.rot90(donor[sy:sy + size, sx:sx + size], k=int(rng.integers(1, 4))))
    x, y = _where(rng, side, margin=0.1)
    x, y = min(x, side - size), min(y, side - size)
    img[y:y + size, x:x + size] = patch
    mask[y:y + size, x:x + size] = 255
    return img, mask


def color_shift(img, rng, donor):
    side, mask = img.shape[0], _blank(img)
    x, y = _where(rng, side)
    a, b = (int(v * side) for v in rng.uniform(0.04, 0.08, 2))
    cv2.ellipse(mask, (x, y), (a, b), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    shifted = img.astype(np.float32) * np.array(rng.choice([[1.3, 1.0, 0.7], [0.7, 0.9, 1.3], [0.6, 0.6, 0.6]]), np.float32)
    region = mask > 0
    img[region] = np.clip(shifted[region], 0, 255).astype(np.uint8)
    return img, mask


def missing(img, rng, donor):
    """A part gone: a sector of the object replaced by the background."""
    side, mask = img.shape[0], _blank(img)
    x, y = _where(rng, side, margin=0.25)
    a = int(rng.uniform(0.05, 0.09) * side)
    cv2.rectangle(mask, (x - a, y - a // 2), (x + a, y + a // 2), 255, -1)
    background = np.median(img[:4, :4].reshape(-1, 3), axis=0).astype(np.uint8)
    img[mask > 0] = background
    return img, mask


TEXTURE_DEFECTS = {"scratch": scratch, "stain": stain, "hole": hole, "cut_paste": cut_paste, "color_shift": color_shift}
OBJECT_DEFECTS = {"scratch": scratch, "stain": stain, "missing": missing, "color_shift": color_shift}


# ---- the suite ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Category:
    name: str
    make: Callable
    side: int
    n_train: int
    n_good: int
    n_per_defect: int
    defects: tuple[str, ...]


def catalogue(size: str) -> dict[str, list[Category]]:
    """Source → its categories; ``size`` = full | small."""
    tex, obj = tuple(TEXTURE_DEFECTS), tuple(OBJECT_DEFECTS)
    if size == "small":
        return {"guard": [
            Category("grass", grass, 128, 24, 8, 2, tex),
            Category("gravel", gravel, 128, 24, 8, 2, tex),
            Category("washer", washer, 128, 24, 8, 2, obj),
        ]}
    return {
        "textures": [
            Category("grass", grass, 256, 60, 20, 5, tex),
            Category("gravel", gravel, 256, 60, 20, 5, tex),
            Category("fractal_gray", gray(fractal), 256, 60, 20, 5, tex),
            Category("woven", woven, 256, 60, 20, 5, tex),
        ],
        "objects": [
            Category("washer", washer, 256, 60, 20, 5, obj),
            Category("circuit", circuit, 256, 60, 20, 5, obj),
            Category("label", label, 256, 60, 20, 5, obj),
        ],
        "scale": [
            Category("small_gravel_gray", gray(gravel), 96, 30, 20, 5, tex),
            Category("large_woven", woven, 640, 30, 20, 5, tex),
            Category("many_brushed", brushed, 256, 200, 20, 5, tex),
        ],
    }


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def build_category(root: Path, cat: Category, seed: int) -> None:
    """Write one category's train/test/ground_truth under ``root / cat.name``."""
    base = root / cat.name
    key = [seed, SUITE_VERSION] + [ord(c) for c in cat.name]
    rng = np.random.default_rng(key)
    for i in range(cat.n_train):
        _write(base / "train" / "good" / f"{i:03d}.png", cat.make(rng, cat.side))
    for i in range(cat.n_good):
        _write(base / "test" / "good" / f"{i:03d}.png", cat.make(rng, cat.side))
    funcs = {**TEXTURE_DEFECTS, **OBJECT_DEFECTS}
    for defect in cat.defects:
        for i in range(cat.n_per_defect):
            img, donor = cat.make(rng, cat.side), cat.make(rng, cat.side)
            img, mask = funcs[defect](img.copy(), rng, donor)
            _write(base / "test" / defect / f"{i:03d}.png", img)
            _write(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask)


def build_suite(out: str | Path, size: str = "full", seed: int = 0, sources: list[str] | None = None) -> dict[str, Path]:
    """Build the suite under ``out``; returns source → its MVTec-layout root."""
    out = Path(out)
    roots = {}
    for source, categories in catalogue(size).items():
        if sources and source not in sources:
            continue
        for cat in categories:
            build_category(out / source, cat, seed)
        roots[source] = out / source
    (out / "suite.json").write_text(json.dumps({"version": SUITE_VERSION, "size": size, "seed": seed,
                                               "sources": {k: str(v) for k, v in roots.items()}}, indent=1))
    return roots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=("full", "small"), default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", action="append", default=None, help="only this source (repeat)")
    args = ap.parse_args()
    for source, root in build_suite(args.out, args.size, args.seed, args.source).items():
        print(f"{source}: {root}")


if __name__ == "__main__":
    main()
