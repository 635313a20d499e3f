"""Draw the pictures in docs/ADAPTATION.md: the tile grid and an overlay.

    python docs/make_adaptation_figures.py          # writes docs/img/tiles.png, overlay.png

Uses a generated grainy 2048x2200 surface with a 10 px defect (grain missing) and a tiny
local-statistics detector (stand-in for PatchCore so the script runs in seconds on a CPU).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pyimgano_hydra.adapt.postprocess import MapPostprocessor  # noqa: E402
from pyimgano_hydra.adapt.tiling import TiledDetector, blend_window, tile_grid  # noqa: E402
from pyimgano_hydra.models.base import BaseDetector, DetectorOutput  # noqa: E402
from pyimgano_hydra.viz.overlays import heatmap_overlay  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"
H, W, SIDE = 2048, 2200, 10


class LocalStats(BaseDetector):
    """Local mean/std in an 8 px window, Mahalanobis distance to normal train pixels."""

    produces_maps = True

    def _features(self, images):
        out = []
        for img in images:
            x = img.astype(np.float32).mean(-1)
            m = cv2.blur(x, (8, 8), borderType=cv2.BORDER_REFLECT)
            sq = cv2.blur(x * x, (8, 8), borderType=cv2.BORDER_REFLECT)
            out.append(np.stack([m, np.sqrt(np.maximum(sq - m * m, 0))], -1))
        return np.stack(out)

    def fit(self, images):
        f = self._features(images).reshape(-1, 2).astype(np.float64)
        self.mean_, self.precision_ = f.mean(0), np.linalg.inv(np.cov(f, rowvar=False))
        return self

    def predict(self, images):
        d = self._features(images) - self.mean_.astype(np.float32)
        maps = np.sqrt(np.einsum("...i,ij,...j->...", d, self.precision_.astype(np.float32), d))
        return DetectorOutput(scores=maps.reshape(len(maps), -1).max(1), maps=maps)


def grain(rng, defect=None):
    img = 128 + 30 * rng.standard_normal((H, W), dtype=np.float32)
    if defect is not None:
        y, x, s = defect
        img[y:y + s, x:x + s] = 128 + 3 * rng.standard_normal((s, s), dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)[..., None]


def draw_tiles(path: Path, tile: int = 256, stride: int = 192) -> None:
    grid = tile_grid(H, W, tile, stride)
    weight = np.zeros((H, W))
    for y, x in grid:
        weight[y:y + tile, x:x + tile] += blend_window(tile, "hann")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 5))
    ax0.imshow(np.full((H, W), 0.92), cmap="gray", vmin=0, vmax=1)
    last_y, last_x = grid[:, 0].max(), grid[:, 1].max()
    rows = {y: i for i, y in enumerate(sorted(set(grid[:, 0])))}
    cols = {x: i for i, x in enumerate(sorted(set(grid[:, 1])))}
    for y, x in grid:
        shifted = x == last_x or y == last_y
        color = "tab:red" if shifted else ("tab:blue", "tab:green")[(rows[y] + cols[x]) % 2]
        inset = 12 * ((rows[y] + cols[x]) % 2)  # keep overlapping outlines apart
        ax0.add_patch(Rectangle((x + inset, y + inset), tile - 2 * inset, tile - 2 * inset,
                                fill=True, alpha=0.18, fc=color, ec=color, lw=1.0))
    ax0.set_title(f"tile {tile}, stride {stride} on a {H}x{W} image ({len(grid)} tiles)\n"
                  "red: last row/column shifted inward to end at the border")
    ax1.imshow(weight, cmap="viridis")
    ax1.set_title("sum of Hann weights (map_reduce=hann)\nstitched map = weighted mean")
    for ax in (ax0, ax1):
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def draw_overlay(path: Path) -> None:
    rng = np.random.default_rng(3)
    defect = (1300, 1500, SIDE)
    train = np.stack([grain(rng) for _ in range(2)])
    test = grain(rng, defect)[None]
    mask = np.zeros((H, W), dtype=bool)
    mask[defect[0]:defect[0] + SIDE, defect[1]:defect[1] + SIDE] = True

    tiled = TiledDetector(LocalStats, tile_size=256, stride=192).fit(train)
    post = MapPostprocessor(sigma=2.0, normalize="minmax").fit(tiled.score_maps(train).maps)
    tiled_map = post.transform(tiled.score_maps(test).maps)[0]

    def small(batch):
        return np.stack([cv2.resize(i, (256, 256), interpolation=cv2.INTER_AREA)[..., None]
                         for i in batch])

    plain = LocalStats().fit(small(train))
    plain_post = MapPostprocessor(sigma=2.0 / 8, normalize="minmax").fit(
        plain.score_maps(small(train)).maps)
    plain_map = cv2.resize(plain_post.transform(plain.score_maps(small(test)).maps)[0], (W, H))

    y, x = defect[0] + SIDE // 2, defect[1] + SIDE // 2
    crop = (slice(y - 64, y + 64), slice(x - 64, x + 64))
    lo, hi = float(np.median(tiled_map)), float(tiled_map.max())  # one scale for all panels
    whole = heatmap_overlay(test[0], tiled_map, None, lo, hi)
    whole = cv2.resize(whole, (W // 4, H // 4), interpolation=cv2.INTER_AREA)
    panels = [("tiled (tile 256, stride 192), whole image", whole),
              ("tiled, 128 px around the defect",
               heatmap_overlay(test[0][crop], tiled_map[crop], mask[crop], lo, hi)),
              ("resized to 256² instead, same crop",
               heatmap_overlay(test[0][crop], plain_map[crop], mask[crop], lo, hi))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for ax, (title, rgb) in zip(axes, panels):
        ax.imshow(rgb)
        ax.set_title(title)
        ax.axis("off")
    axes[0].add_patch(Rectangle(((x - 64) / 4, (y - 64) / 4), 32, 32, fill=False, ec="white",
                                lw=1.5))
    fig.suptitle("10 px defect (green: ground-truth contour); postprocess sigma=2, minmax; "
                 "one colour scale")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def shrink_png(path: Path) -> None:
    """Re-save with a 256-colour palette (the grain makes full-colour PNGs large)."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    draw_tiles(OUT / "tiles.png")
    draw_overlay(OUT / "overlay.png")
    for name in ("tiles.png", "overlay.png"):
        shrink_png(OUT / name)
    print("wrote", OUT / "tiles.png", OUT / "overlay.png")
