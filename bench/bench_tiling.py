"""Overhead of tiling itself (cutting, batching, stitching) with a near-free inner detector.

    python bench/bench_tiling.py [--size 2048] [--images 4]

Prints seconds per image for each tile preset and map_reduce; the inner detector is almost
free (map = grey value), so this is roughly the floor tiling adds per image. Threads are not
pinned; other load on the machine shows up in the numbers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from pyimgano_hydra.adapt.tiling import TiledDetector, tile_grid
from pyimgano_hydra.models.base import BaseDetector, DetectorOutput


class Identity(BaseDetector):
    """Map = grey value; the cheapest map-producing detector."""

    produces_maps = True

    def fit(self, images):
        return self

    def score_maps(self, images):
        maps = images.mean(-1, dtype=np.float32)
        return DetectorOutput(scores=maps.reshape(len(maps), -1).max(1), maps=maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3),
                                               dtype=np.uint8)
    print(f"{args.images} images of {args.size}², seconds per image")
    print(f"{'tile':>5} {'stride':>6} {'tiles':>5} {'map_reduce':>10} {'s/image':>8}")
    for tile in (128, 256, 512):
        stride = tile * 3 // 4
        n_tiles = len(tile_grid(args.size, args.size, tile, stride))
        det = TiledDetector(Identity, tile_size=tile, stride=stride).fit(images[:1])
        for how in ("max", "mean", "hann"):
            det.map_reduce = how
            start = time.perf_counter()
            det.score_maps(images)
            per_image = (time.perf_counter() - start) / args.images
            print(f"{tile:>5} {stride:>6} {n_tiles:>5} {how:>10} {per_image:>8.3f}")


if __name__ == "__main__":
    main()
