"""Tiling: run any detector on full-resolution tiles of large images and stitch the results.

Border rule: tiles start every ``stride`` pixels and the last tile of each row/column is
shifted inward so it ends exactly at the border; no tile is padded or resampled. Only an
image smaller than one tile is reflect-padded (``symmetric``) up to the tile size, and its
map is cropped back.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Mapping, Union

import cv2
import numpy as np

from pyimgano_hydra.errors import check
from pyimgano_hydra.models.base import BaseDetector, DetectorOutput
from pyimgano_hydra.schemas.tiling import MAP_REDUCES, SCORE_REDUCES, TilingSchema

DetectorLike = Union[BaseDetector, Callable[[], BaseDetector]]
PARAM_NAMES = ("tile_size", "stride", "score_reduce", "score_topk", "map_reduce",
               "batch_size", "max_fit_tiles", "seed")


MAX_TILES = 4096  # tiles per image


def tile_starts(length: int, tile_size: int, stride: int) -> np.ndarray:
    """Start offsets along one axis; the last tile is shifted inward to end at ``length``."""
    if length <= tile_size:
        return np.zeros(1, dtype=int)
    starts = list(range(0, length - tile_size + 1, stride))
    if starts[-1] != length - tile_size:
        starts.append(length - tile_size)
    return np.asarray(starts, dtype=int)


def tile_grid(height: int, width: int, tile_size: int, stride: int) -> np.ndarray:
    """(n_tiles, 2) array of (y, x) tile origins covering an image row by row."""
    ys = tile_starts(height, tile_size, stride)
    xs = tile_starts(width, tile_size, stride)
    # training and a stored inspector alike: stride 1 on a 1024-pixel image was a million tiles
    check(len(ys) * len(xs) <= MAX_TILES, "tiling.stride",
          f"tile_size={tile_size}, stride={stride} cut a {width}x{height} image into {len(ys) * len(xs):,} tiles; "
          f"at most {MAX_TILES:,}: raise tiling.stride or tiling.tile_size")
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)


def blend_window(tile_size: int, map_reduce: str) -> np.ndarray:
    """Per-pixel weight of a tile's map when overlaps are averaged (float64, all > 0)."""
    if map_reduce == "hann":
        # sin² bell sampled at pixel centres: highest in the middle, never exactly zero,
        # so border pixels covered by a single tile edge keep their value.
        w = np.sin(np.pi * (np.arange(tile_size) + 0.5) / tile_size) ** 2
        return np.outer(w, w)
    return np.ones((tile_size, tile_size))


def reduce_scores(tile_scores: np.ndarray, how: str, topk: int = 3) -> np.ndarray:
    """Image scores (N,) from tile scores (N, n_tiles) by max, mean or mean of the top k."""
    if how == "max":
        return tile_scores.max(axis=1)
    if how == "mean":
        return tile_scores.mean(axis=1)
    k = min(topk, tile_scores.shape[1])
    return np.sort(tile_scores, axis=1)[:, -k:].mean(axis=1)


def _pad_to(images: np.ndarray, tile_size: int) -> np.ndarray:
    """Reflect-pad (N, H, W, C) images whose side is below ``tile_size``."""
    _, h, w, _ = images.shape
    ph, pw = max(tile_size - h, 0), max(tile_size - w, 0)
    if ph == 0 and pw == 0:
        return images
    return np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="symmetric")


class TiledDetector(BaseDetector):
    """Wrap a detector so it fits on and predicts full-resolution tiles.

    ``detector`` is a detector instance or a zero-argument factory (a class,
    ``functools.partial`` or Hydra ``_partial_: true`` target) called at ``fit``.
    Scores of an image's tiles are reduced by ``score_reduce``; tile maps are stitched into a
    full-size map, overlaps blended by ``map_reduce`` (max, mean, or Hann-weighted mean).
    """

    def __init__(self, detector: DetectorLike, *, tile_size: int = 256, stride: int | None = None,
                 score_reduce: str = "max", score_topk: int = 3, map_reduce: str = "hann",
                 batch_size: int = 64, max_fit_tiles: int | None = None, seed: int = 0) -> None:
        self.detector = detector
        self.tile_size = tile_size
        self.stride = stride
        self.score_reduce = score_reduce
        self.score_topk = score_topk
        self.map_reduce = map_reduce
        self.batch_size = batch_size
        self.max_fit_tiles = max_fit_tiles
        self.seed = seed

    fitted_attribute = "detector_"

    # ---- inner detector -------------------------------------------------------------
    @property
    def produces_maps(self) -> bool:  # type: ignore[override]
        """Mirrors the inner detector (read from its class when it is a factory)."""
        inner = getattr(self, "detector_", None)
        inner = self.detector if inner is None else inner
        if isinstance(inner, BaseDetector):
            return bool(inner.produces_maps)
        if isinstance(inner, functools.partial) and isinstance(inner.func, type):
            inner = inner.func
        if isinstance(inner, type):
            return bool(inner.produces_maps)
        return bool(self._new_inner().produces_maps)

    def _new_inner(self) -> BaseDetector:
        if isinstance(self.detector, BaseDetector):
            return self.detector
        inner = self.detector()
        check(isinstance(inner, BaseDetector), "tiling",
              f"the wrapped factory returned {type(inner).__name__}, not a BaseDetector")
        return inner

    def _check_params(self) -> None:
        """The schema's range checks, on this object's params."""
        TilingSchema(enabled=True, **{k: getattr(self, k) for k in PARAM_NAMES})

    @property
    def _stride(self) -> int:
        return int(self.stride or self.tile_size)

    # ---- fit / predict --------------------------------------------------------------
    def _tiles(self, images: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Copy the tiles named by ``index`` rows (image, y, x) out of padded ``images``."""
        t = self.tile_size
        return np.stack([images[n, y:y + t, x:x + t] for n, y, x in index])

    def fit(self, images: np.ndarray) -> "TiledDetector":
        """Fit the inner detector on the tiles of normal images (all, or ``max_fit_tiles``)."""
        self._check_params()
        height, width = np.asarray(images).shape[1:3]
        self.notes_ = ([f"tiling.tile_size={self.tile_size} covers the whole {width}x{height} image: "
                        "tiling changes nothing; use dataset.resize=null (full size) or a larger "
                        "dataset.resize, or a smaller tile"]
                       if self.tile_size >= max(height, width) else [])
        images = _pad_to(np.asarray(images), self.tile_size)
        n, h, w, _ = images.shape
        grid = tile_grid(h, w, self.tile_size, self._stride)
        index = np.array([(i, y, x) for i in range(n) for y, x in grid])
        if self.max_fit_tiles is not None and len(index) > self.max_fit_tiles:
            keep = np.random.default_rng(self.seed).choice(len(index), self.max_fit_tiles,
                                                           replace=False)
            index = index[np.sort(keep)]
        inner = self._new_inner()
        inner.fit(self._tiles(images, index))
        self.detector_ = inner
        return self

    def _batches(self, n: int, grid: np.ndarray) -> Iterator[np.ndarray]:
        """(image, tile number, y, x) rows, ``batch_size`` at a time, across images."""
        rows = ((i, k, y, x) for i in range(n) for k, (y, x) in enumerate(grid))
        while batch := [r for _, r in zip(range(self.batch_size), rows)]:
            yield np.array(batch)

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        """Tile scores reduced to image scores; tile maps stitched to (N, H, W) float32."""
        self._check_fitted()
        images = np.asarray(images)
        n, h0, w0 = images.shape[:3]
        images = _pad_to(images, self.tile_size)
        h, w = images.shape[1:3]
        t = self.tile_size
        grid = tile_grid(h, w, t, self._stride)
        window = blend_window(t, self.map_reduce).astype(np.float32)
        tile_scores = np.empty((n, len(grid)), dtype=np.float64)
        maps: np.ndarray | None = None
        for batch in self._batches(n, grid):
            out = self.detector_.score_maps(self._tiles(images, batch[:, [0, 2, 3]]))
            tile_scores[batch[:, 0], batch[:, 1]] = np.asarray(out.scores, dtype=np.float64)
            if out.maps is None:
                continue
            if maps is None:
                fill = -np.inf if self.map_reduce == "max" else 0.0
                maps = np.full((n, h, w), fill, dtype=np.float32)
            for (i, _, y, x), tile_map in zip(batch, out.maps):
                tile_map = np.asarray(tile_map, dtype=np.float32)
                if tile_map.shape != (t, t):
                    tile_map = cv2.resize(tile_map, (t, t), interpolation=cv2.INTER_LINEAR)
                view = maps[i, y:y + t, x:x + t]
                if self.map_reduce == "max":
                    np.maximum(view, tile_map, out=view)
                else:
                    view += window * tile_map
        if maps is not None and self.map_reduce != "max":
            weight = np.zeros((h, w), dtype=np.float64)
            for y, x in grid:
                weight[y:y + t, x:x + t] += window
            maps /= weight.astype(np.float32)
        if maps is not None:
            maps = np.ascontiguousarray(maps[:, :h0, :w0])
        scores = reduce_scores(tile_scores, self.score_reduce, self.score_topk)
        return DetectorOutput(scores=scores, maps=maps)

    # ---- hand-off -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner detector's state (the tiling params are this object's params)."""
        self._check_fitted()
        return {"inner": self.detector_.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> "TiledDetector":
        """Restore the inner detector (built from ``detector``)."""
        self._check_params()
        inner = self._new_inner()
        inner.load_state_dict(state["inner"])
        self.detector_ = inner
        return self


def _as_mapping(tiling: Any) -> Mapping[str, Any]:
    if tiling is None:
        return {}
    if isinstance(tiling, Mapping):
        return tiling
    try:  # DictConfig
        from omegaconf import DictConfig, OmegaConf

        if isinstance(tiling, DictConfig):
            return OmegaConf.to_container(tiling, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return vars(tiling)  # a TilingSchema instance


def maybe_tile(detector: DetectorLike, tiling: Any) -> BaseDetector:
    """The detector to fit: wrapped in :class:`TiledDetector` when ``tiling.enabled``.

    ``tiling`` is ``cfg.tiling`` (DictConfig), a TilingSchema, a dict or None; a factory is
    called here when tiling is disabled, so the result is always a detector instance.
    """
    params = dict(_as_mapping(tiling))
    if not params.pop("enabled", False):
        return detector if isinstance(detector, BaseDetector) else detector()
    return TiledDetector(detector, **{k: v for k, v in params.items() if k in PARAM_NAMES})
