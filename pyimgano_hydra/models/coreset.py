"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

``greedy_coreset(x, k, start)`` is the classic farthest-point greedy on the rows of ``x``
with one incremental min-distance update per pick (O(N·d) each). ``StreamingCoreset``
applies it per image (keeping ``oversample × ratio`` of each image's patches, most distinct
first), then once more on the union. Greedy k-center coresets compose (a greedy coreset of
per-part greedy coresets is still a constant-factor k-center solution), so the bank is
covered almost as well as by one global pass, at a small fraction of the O(N·k·d) cost and
with memory bounded by the kept rows instead of all patches.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def greedy_coreset(x: torch.Tensor, k: int, start: int = 0) -> torch.Tensor:
    """Indices (k,) of a greedy k-center subset of the rows of ``x`` (N, d), from ``start``."""
    n = x.shape[0]
    k = min(k, n)
    if k >= n:
        return torch.arange(n)
    x = x.float().contiguous()
    sq = (x * x).sum(1)
    min_dist = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    chosen = torch.empty(k, dtype=torch.long)
    dist = torch.empty_like(min_dist)
    idx = int(start)
    for i in range(k):
        chosen[i] = idx
        # ||x - c||^2 = |x|^2 + |c|^2 - 2 x.c, fused into one matrix-vector product
        torch.addmv(sq, x, x[idx], alpha=-2.0, out=dist)
        torch.minimum(min_dist, dist.add_(sq[idx]), out=min_dist)
        idx = int(torch.argmax(min_dist))
    return chosen


def random_projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor | None:
    """Seeded Gaussian projection (dim_in, dim_out) preserving distances; None if not smaller."""
    if dim_out <= 0 or dim_out >= dim_in:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=gen) / math.sqrt(dim_out)


class StreamingCoreset:
    """Greedy coreset of a bank that arrives batch by batch; keeps ``ratio`` of all rows."""

    def __init__(self, ratio: float, projection_dim: int, seed: int, oversample: float = 4.0):
        self.ratio, self.projection_dim, self.seed = ratio, projection_dim, seed
        self.oversample = oversample
        self._rng = np.random.default_rng(seed)
        self._projection: torch.Tensor | None = None
        self._kept: list[torch.Tensor] = []
        self._kept_proj: list[torch.Tensor] = []
        self.n_seen = 0

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_seen == 0 and self._projection is None:
            self._projection = random_projection(x.shape[1], self.projection_dim, self.seed)
        return x if self._projection is None else x @ self._projection

    def add(self, x: torch.Tensor, part_size: int | None = None) -> None:
        """Offer rows (n, d) float32 CPU, in parts of ``part_size`` rows (one image each)."""
        proj = self._project(x)
        self.n_seen += len(x)
        part_size = part_size or len(x)
        keep = min(part_size, max(1, math.ceil(part_size * self.ratio * self.oversample)))
        if keep >= part_size:
            self._kept.append(x)
            self._kept_proj.append(proj)
            return
        with _threads(1):  # tiny problems: thread hand-offs cost more than they bring
            for s in range(0, len(x), part_size):
                part = proj[s : s + part_size]
                idx = greedy_coreset(part, keep, start=int(self._rng.integers(len(part)))) + s
                self._kept.append(x[idx])
                self._kept_proj.append(proj[idx])

    def result(self) -> torch.Tensor:
        """The final coreset: ``round(ratio * rows seen)`` rows (at least one)."""
        bank, proj = torch.cat(self._kept), torch.cat(self._kept_proj)
        k = min(len(bank), max(1, round(self.ratio * self.n_seen)))
        if k < len(bank):
            with _threads(1):  # memory-bound matrix-vector products: one thread is as fast
                bank = bank[greedy_coreset(proj, k, start=int(self._rng.integers(len(bank))))]
        self._kept, self._kept_proj = [], []
        return bank.contiguous()
