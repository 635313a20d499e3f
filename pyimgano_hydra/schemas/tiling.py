"""Schemas of the ``tiling`` group (see docs/ADAPTATION.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pyimgano_hydra.errors import check

SCORE_REDUCES = ("max", "mean", "topk_mean")
MAP_REDUCES = ("max", "mean", "hann")


@dataclass
class TilingSchema:
    """Cut each image into ``tile_size`` squares every ``stride`` pixels; the last tile of a
    row/column is shifted inward to end at the border (no padding, no resampling)."""

    enabled: bool = False
    tile_size: int = 256
    stride: Optional[int] = None  # null = tile_size (no overlap)
    score_reduce: str = "max"  # max | mean | topk_mean
    score_topk: int = 3  # tiles averaged by topk_mean
    map_reduce: str = "hann"  # max | mean | hann (overlaps blended)
    batch_size: int = 64  # tiles per inner predict call
    max_fit_tiles: Optional[int] = None  # null = fit on every tile of every normal image
    seed: int = 0  # which tiles max_fit_tiles keeps

    def __post_init__(self) -> None:
        check(self.tile_size >= 16, "tiling.tile_size", "must be >= 16 pixels")
        check(self.stride is None or 1 <= self.stride <= self.tile_size, "tiling.stride",
              f"must be in 1..tiling.tile_size ({self.tile_size}: no pixel may fall between tiles) or null")
        check(self.score_reduce in SCORE_REDUCES, "tiling.score_reduce",
              f"must be one of {', '.join(SCORE_REDUCES)}")
        check(self.score_topk >= 1, "tiling.score_topk", "must be >= 1")
        check(self.map_reduce in MAP_REDUCES, "tiling.map_reduce",
              f"must be one of {', '.join(MAP_REDUCES)}")
        check(1 <= self.batch_size <= 4096, "tiling.batch_size", "must be in 1..4096")
        check(self.max_fit_tiles is None or self.max_fit_tiles >= 1, "tiling.max_fit_tiles",
              "must be >= 1 or null")


SCHEMAS = {"tiling": TilingSchema}
