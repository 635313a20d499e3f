"""Embedded procedural dataset in the MVTec AD layout, generated into a cache dir on first use.

Two categories: ``weave`` (a periodic woven texture with mild noise) and ``washer`` (a
centred metal washer with slight pose and illumination jitter). Defects — scratch, spot,
crack, hole / missing piece — are painted through a binary shape, so each ground-truth
mask is exactly the set of changed pixels. Everything is seeded: the same generator
version and sizes give byte-identical files.

The cache key holds ``GENERATOR_VERSION`` and the sizes; bump the version whenever the
generator's output changes so old caches are not reused. Generation writes to a temp
dir beside the target and renames it into place, so a crash leaves nothing half-written
and two processes racing both end up with the same complete copy.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pyimgano_hydra.data.images import write_png
from pyimgano_hydra.data.mvtec import MVTecDataset
from pyimgano_hydra.errors import DataError, UserError
from pyimgano_hydra.files import read_text

GENERATOR_VERSION = 2
GENERATOR_SEED = 20240611
STAMP_FILE = "pyimgano_synthetic.json"
DEFECTS = {
    "weave": ("crack", "hole", "scratch", "spot"),
    "washer": ("crack", "missing", "scratch", "spot"),
}


# ---- shapes ---------------------------------------------------------------------------
def _canvas(size: int) -> np.ndarray:
    return np.zeros((size, size), np.uint8)


def _scratch(rng: np.random.Generator, size: int, centre: np.ndarray) -> np.ndarray:
    """A thin, slightly bent line."""
    m = _canvas(size)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.22, 0.38) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    bend = rng.uniform(-0.06, 0.06) * length
    pts = np.array([centre - direction * length / 2, centre + normal * bend,
                    centre + direction * length / 2])
    thickness = max(1, int(round(size / 96)))
    cv2.polylines(m, [np.round(pts).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    return m.astype(bool)


def _spot(rng: np.random.Generator, size: int, centre: np.ndarray) -> np.ndarray:
    """A filled ellipse (stain)."""
    m = _canvas(size)
    axes = (int(rng.uniform(0.035, 0.065) * size), int(rng.uniform(0.025, 0.05) * size))
    cv2.ellipse(m, tuple(int(v) for v in np.round(centre)), (max(axes[0], 2), max(axes[1], 2)),
                float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def _crack(rng: np.random.Generator, size: int, centre: np.ndarray) -> np.ndarray:
    """A jagged random-walk polyline with one short branch."""
    m = _canvas(size)
    thickness = max(1, int(round(size / 128)))
    heading = rng.uniform(0, 2 * np.pi)
    step = size / 28
    pts = [centre.copy()]
    for _ in range(int(rng.integers(6, 10))):
        heading += rng.uniform(-0.7, 0.7)
        pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    cv2.polylines(m, [np.round(np.array(pts)).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    start = pts[len(pts) // 2]
    branch = [start, start + step * 1.5 * np.array([np.cos(heading + 1.2), np.sin(heading + 1.2)])]
    cv2.polylines(m, [np.round(np.array(branch)).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    return m.astype(bool)


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """An irregular filled polygon (hole, chipped-off piece)."""
    m = _canvas(size)
    n = 9
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.6, 1.0, n)
    pts = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def _paint(img: np.ndarray, mask: np.ndarray, colour, alpha: float) -> None:
    img[mask] = (1 - alpha) * img[mask] + alpha * np.asarray(colour, np.float32)


# ---- categories -----------------------------------------------------------------------
def _weave(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A plain-weave fabric: crossing threads, random phase, mild noise and gain jitter."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 12 * rng.uniform(0.98, 1.02)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    u = 2 * np.pi * xx / period + px
    v = 2 * np.pi * yy / period + py
    over = np.sign(np.sin(u / 2) * np.sin(v / 2))  # alternating over/under cells
    warp = 0.5 + 0.5 * np.cos(u) ** 2
    weft = 0.5 + 0.5 * np.cos(v) ** 2
    lum = np.where(over > 0, warp * (0.8 + 0.2 * weft), weft * (0.8 + 0.2 * warp))
    lum = 0.25 + 0.5 * lum
    lum += rng.normal(0, 0.025, lum.shape).astype(np.float32)
    lum *= rng.uniform(0.96, 1.04)
    tint = np.array([0.95, 0.82, 0.62], np.float32)
    img = lum[:, :, None] * tint
    return img.astype(np.float32), np.ones((size, size), bool)


def _washer(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A metal washer with a key notch, on a dark background; small pose/light jitter."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.uniform(-0.02, 0.02, 2) * size
    outer = size * 0.36 * rng.uniform(0.985, 1.015)
    inner = size * 0.16 * rng.uniform(0.985, 1.015)
    d = np.hypot(xx - cx, yy - cy)
    theta = np.arctan2(yy - cy, xx - cx)
    part = np.clip(outer - d + 0.5, 0, 1) * np.clip(d - inner + 0.5, 0, 1)
    key_angle = rng.uniform(-0.14, 0.14) - np.pi / 2  # notch on the inner edge, near the top
    along = (xx - cx) * np.cos(key_angle) + (yy - cy) * np.sin(key_angle)
    across = -(xx - cx) * np.sin(key_angle) + (yy - cy) * np.cos(key_angle)
    notch = (np.abs(across) < size * 0.035) & (along > 0) & (along < inner + size * 0.05)
    part[notch] = 0
    light = rng.uniform(0, 2 * np.pi)
    metal = 0.62 + 0.12 * np.cos(theta - light) + 0.03 * np.sin(d * 2 * np.pi / 3.0)
    metal += 0.06 * (d - inner) / (outer - inner)
    metal *= rng.uniform(0.95, 1.05)
    background = 0.2 + 0.03 * (yy / size) + rng.normal(0, 0.012, (size, size))
    lum = part * metal + (1 - part) * background
    lum += rng.normal(0, 0.012, lum.shape)
    img = lum[:, :, None] * np.array([0.92, 0.96, 1.0], np.float32)
    return img.astype(np.float32), part > 0.5


def _defect(rng: np.random.Generator, category: str, defect: str, img: np.ndarray,
            part: np.ndarray, size: int) -> np.ndarray:
    """Paint one ``defect`` into ``img`` in place; return its exact bool mask."""
    ys, xs = np.nonzero(part)
    if defect == "missing":  # a chip comes off the rim: start from edge pixels
        depth = cv2.distanceTransform(part.astype(np.uint8), cv2.DIST_L2, 3)
        ys, xs = np.nonzero(part & (depth <= 2))
    for _ in range(50):
        if category == "washer":
            # stay on the metal, away from the rim for painted defects
            i = rng.integers(len(ys))
            centre = np.array([xs[i], ys[i]], np.float32)
        else:
            centre = rng.uniform(0.2, 0.8, 2).astype(np.float32) * size
        if defect == "scratch":
            shape = _scratch(rng, size, centre)
        elif defect == "spot":
            shape = _spot(rng, size, centre)
        elif defect == "crack":
            shape = _crack(rng, size, centre)
        else:  # hole / missing
            shape = _blob(rng, size, centre, rng.uniform(0.06, 0.1) * size)
        mask = shape & part
        inside = 0.3 if defect == "missing" else 0.85  # share of the shape on the part
        if mask.sum() >= max(6, size * size // 4000, inside * shape.sum()):
            break
    if defect == "scratch":
        _paint(img, mask, (0.97, 0.97, 0.95), 0.4)
    elif defect == "spot":
        colour = (0.55, 0.3, 0.12) if category == "washer" else (0.22, 0.2, 0.1)
        _paint(img, mask, colour, 0.45)
    elif defect == "crack":
        img[mask] *= 0.5
    elif defect == "hole":
        backing = 0.08 + rng.normal(0, 0.01, (int(mask.sum()), 1)).astype(np.float32)
        img[mask] = backing
    elif defect == "missing":  # chip a piece off: the background shows through
        img[mask] = (0.2 + rng.normal(0, 0.012, (int(mask.sum()), 1))) * np.array(
            [0.92, 0.96, 1.0], np.float32)
    return mask


_MAKERS = {"weave": _weave, "washer": _washer}


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _jobs(category: str, n_train: int, n_test_good: int, n_test_defect: int):
    """(split, defect, count) in generation order; the index seeds each image."""
    jobs = [("train", "good", n_train), ("test", "good", n_test_good)]
    return jobs + [("test", defect, n_test_defect) for defect in DEFECTS[category]]


def render_sample(category: str, split: str, defect: str, index: int, image_size: int = 256,
                  clean: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (uint8 H×W×3) and its mask (bool, None for good) exactly as ``generate`` writes it.

    ``clean=True`` returns the same image before its defect is painted (for checking masks).
    """
    c_idx = sorted(DEFECTS).index(category)
    j_idx = [(sp, d) for sp, d, _ in _jobs(category, 1, 1, 1)].index((split, defect))
    rng = np.random.default_rng([GENERATOR_SEED, GENERATOR_VERSION, c_idx, j_idx, index])
    img, part = _MAKERS[category](rng, image_size)
    mask = None
    if defect != "good" and not clean:
        mask = _defect(rng, category, defect, img, part, image_size)
    return _to_uint8(img), mask


def generate(out_dir: str | Path, image_size: int = 256, n_train: int = 40,
             n_test_good: int = 12, n_test_defect: int = 4) -> None:
    """Write every synthetic category under ``out_dir`` in the MVTec AD layout."""
    out = Path(out_dir)
    for category in sorted(DEFECTS):
        base = out / category
        for split, defect, count in _jobs(category, n_train, n_test_good, n_test_defect):
            folder = base / split / defect
            folder.mkdir(parents=True, exist_ok=True)
            if defect != "good":
                (base / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img, mask = render_sample(category, split, defect, i, image_size)
                if mask is not None:
                    write_png(base / "ground_truth" / defect / f"{i:03d}_mask.png",
                              mask.astype(np.uint8) * 255)
                write_png(folder / f"{i:03d}.png", img)


def ensure_generated(root: str | Path, image_size: int = 256, n_train: int = 40,
                     n_test_good: int = 12, n_test_defect: int = 4) -> Path:
    """Return the dataset dir under ``root``, generating it atomically if absent or stale."""
    params = {"version": GENERATOR_VERSION, "image_size": int(image_size), "n_train": int(n_train),
              "n_test_good": int(n_test_good), "n_test_defect": int(n_test_defect)}
    key = "v{version}_s{image_size}_n{n_train}-{n_test_good}-{n_test_defect}".format(**params)
    root = Path(root).expanduser()
    final = root / key

    def complete() -> bool:
        try:  # the cache may be shared: a FIFO stamp hung the run
            return json.loads(read_text(final / STAMP_FILE, 1 << 16, "regenerated")) == params
        except (OSError, ValueError, RecursionError, UserError):  # RecursionError: '[' nested 4,000 deep
            return False

    if complete():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    except OSError as exc:
        raise DataError(f"dataset.root {root}: cannot create the synthetic dataset cache "
                        f"({exc.strerror or exc}); set dataset.root or PYIMGANO_CACHE to a "
                        f"writable folder") from None
    try:
        generate(tmp, **{k: v for k, v in params.items() if k != "version"})
        (tmp / STAMP_FILE).write_text(json.dumps(params, sort_keys=True))
        if final.exists() and not complete():  # stale or half-copied: move it out of the way
            trash = Path(tempfile.mkdtemp(prefix=f".{key}.old-", dir=root))
            try:
                os.rename(final, trash / "old")
            except OSError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not complete():  # not a lost race: a real failure
                raise
    except OSError as exc:
        raise DataError(f"dataset.root {root}: cannot write the synthetic dataset "
                        f"({exc.strerror or exc}); set dataset.root or PYIMGANO_CACHE to a "
                        f"writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class SyntheticDataset(MVTecDataset):
    """The embedded default dataset: generated on first use, then read as MVTec AD."""

    layout = "synthetic"
    known_categories = tuple(sorted(DEFECTS))
    writes_root = True  # generated into ``root`` on first use (never into another run: app.py checks)

    def __init__(self, root: str, category: Any = "all", resize: int | None = 256,
                 input_mode: str = "rgb", limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, on_bad_image: str = "error",
                 image_size: int = 256, n_train: int = 40, n_test_good: int = 12,
                 n_test_defect: int = 4, **extra: Any) -> None:
        super().__init__(root, category, resize, input_mode, limit_train, limit_test, seed,
                         on_bad_image, **extra)
        self.image_size = int(image_size)
        self.n_train = int(n_train)
        self.n_test_good = int(n_test_good)
        self.n_test_defect = int(n_test_defect)
        self._data_dir: Path | None = None

    @property
    def root_path(self) -> Path:
        """The generated dataset dir (created on first access)."""
        if self._data_dir is None:
            self._data_dir = ensure_generated(self.root, self.image_size, self.n_train,
                                              self.n_test_good, self.n_test_defect)
        return self._data_dir
