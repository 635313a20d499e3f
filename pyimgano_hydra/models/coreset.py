"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

``greedy_coreset(x, k, start)`` is the classic farthest-point greedy on the rows of ``x``
with one incremental min-distance update per pick (O(N·d) each). ``StreamingCoreset``
applies it per image (keeping ``oversample × ratio`` of each image's patches, most distinct
first), then per block of kept rows of bounded size. Greedy k-center coresets compose (a
greedy coreset of per-part greedy coresets is still a constant-factor k-center solution),
so the bank is covered almost as well as by one global pass, while the cost grows linearly
with the number of images (one global pass costs O(N·k·d), quadratic at a fixed ratio) and
memory stays bounded by the kept rows instead of all patches.
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


def greedy_coreset_parts(x: torch.Tensor, k: int, starts: torch.Tensor) -> torch.Tensor:
    """Indices (P, k) of a greedy k-center subset of each part ``x[p]`` (P, n, d), from
    ``starts`` (P,). The same picks as ``greedy_coreset`` per part, all parts at once and with
    no host sync per pick: on a GPU one launch per step instead of one round trip per part."""
    parts, n, _ = x.shape
    k = min(k, n)
    x = x.float().contiguous()
    sq = (x * x).sum(2)
    rows = torch.arange(parts, device=x.device)
    min_dist = torch.full((parts, n), float("inf"), dtype=x.dtype, device=x.device)
    chosen = torch.empty(parts, k, dtype=torch.long, device=x.device)
    idx = starts.to(x.device, torch.long)
    for i in range(k):
        chosen[:, i] = idx
        centre = x[rows, idx]  # (P, d)
        dist = torch.baddbmm(sq.unsqueeze(2), x, centre.unsqueeze(2), alpha=-2.0)[:, :, 0]
        torch.minimum(min_dist, dist.add_(sq[rows, idx].unsqueeze(1)), out=min_dist)
        idx = min_dist.argmax(1)
    return chosen


def random_projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor | None:
    """Seeded Gaussian projection (dim_in, dim_out) preserving distances; None if not smaller."""
    if dim_out <= 0 or dim_out >= dim_in:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=gen) / math.sqrt(dim_out)


class StreamingCoreset:
    """Greedy coreset of a bank that arrives batch by batch; keeps ``ratio`` of all rows.

    Two greedy passes, both on bounded problems so that the cost grows linearly with the
    rows seen: per image (``oversample × ratio`` of its rows, most distinct first), then
    per block of about ``merge_rows`` such kept rows (``ratio`` of the rows those images
    had). The bank is the union of the blocks' coresets.
    """

    def __init__(self, ratio: float, projection_dim: int, seed: int, oversample: float = 4.0,
                 merge_rows: int = 16384, batch_parts: bool | None = None):
        self.ratio, self.projection_dim, self.seed = ratio, projection_dim, seed
        self.oversample, self.merge_rows = oversample, merge_rows
        self.batch_parts = batch_parts  # greedy_coreset_parts for all parts at once; None: on a GPU
        self._rng = np.random.default_rng(seed)
        self._projection: torch.Tensor | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, projected rows)
        self._pending_rows = 0  # kept rows waiting for the block pass
        self._pending_seen = 0  # rows seen by the images they came from
        self._bank: list[torch.Tensor] = []
        self._bank_rows = 0
        self.n_seen = 0

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_seen == 0 and self._projection is None:
            self._projection = random_projection(x.shape[1], self.projection_dim, self.seed)
        if self._projection is not None and self._projection.device != x.device:
            self._projection = self._projection.to(x.device)  # drawn on the CPU: same on every device
        return x if self._projection is None else x @ self._projection

    def _batched(self, x: torch.Tensor) -> bool:
        return x.is_cuda if self.batch_parts is None else self.batch_parts

    def add(self, x: torch.Tensor, part_size: int | None = None) -> None:
        """Offer rows (n, d) float32 (on any device), in parts of ``part_size`` rows (one image each)."""
        proj = self._project(x)
        part_size = part_size or len(x)
        keep = min(part_size, max(1, math.ceil(part_size * self.ratio * self.oversample)))
        start, rows = 0, self._pending_rows
        group: list[tuple[int, int]] = []  # the parts up to the one that fills the block
        while start < len(x):
            size = min(part_size, len(x) - start)
            group.append((start, size))
            start, rows = start + size, rows + min(keep, size)
            if rows >= self.merge_rows or start >= len(x):
                self._keep_parts(x, proj, group, keep)
                group, rows = [], self._pending_rows

    def _keep_parts(self, x: torch.Tensor, proj: torch.Tensor, group: list[tuple[int, int]], keep: int) -> None:
        """Each part's ``keep`` most distinct rows into the block; the block pass if it is full.
        Starts are drawn part by part, in the order a part-by-part loop draws them."""
        starts = [int(self._rng.integers(size)) if keep < size else None for _, size in group]
        picks: list[torch.Tensor | None] = [None] * len(group)
        todo = [i for i, s in enumerate(starts) if s is not None]
        if self._batched(x) and todo and all(group[i][1] == group[todo[0]][1] for i in todo):
            stacked = torch.stack([proj[group[i][0]: group[i][0] + group[i][1]] for i in todo])
            for i, chosen in zip(todo, greedy_coreset_parts(stacked, keep, torch.tensor([starts[i] for i in todo]))):
                picks[i] = chosen
        else:
            with _threads(1):  # tiny problems: thread hand-offs cost more than they bring
                for i in todo:
                    first, size = group[i]
                    picks[i] = greedy_coreset(proj[first: first + size], keep, start=starts[i])
        for (first, size), chosen in zip(group, picks):
            part, part_proj = x[first: first + size], proj[first: first + size]
            if chosen is not None:
                part, part_proj = part[chosen], part_proj[chosen]
            self._pending.append((part, part_proj))
            self._pending_rows += len(part)
            self._pending_seen += size
            self.n_seen += size
        if self._pending_rows >= self.merge_rows:
            self._reduce(math.floor(self.ratio * self._pending_seen))

    def _reduce(self, k: int) -> None:
        """Greedy ``k`` rows of the pending block into the bank; empties the block."""
        rows = torch.cat([r for r, _ in self._pending])
        proj = torch.cat([p for _, p in self._pending])
        k = min(len(rows), max(1, k))
        if k < len(rows):
            start = int(self._rng.integers(len(rows)))
            if self._batched(rows):  # no host sync per pick
                rows = rows[greedy_coreset_parts(proj[None], k, torch.tensor([start]))[0]]
            else:
                with _threads(1):  # memory-bound matrix-vector products: one thread is as fast
                    rows = rows[greedy_coreset(proj, k, start=start)]
        self._bank.append(rows)
        self._bank_rows += len(rows)
        self._pending, self._pending_rows, self._pending_seen = [], 0, 0

    def result(self) -> torch.Tensor:
        """The final coreset: ``round(ratio * rows seen)`` rows (at least one)."""
        target = max(1, round(self.ratio * self.n_seen))
        if self._pending:
            self._reduce(target - self._bank_rows)
        bank = torch.cat(self._bank)
        self._bank, self._bank_rows = [], 0
        return bank.contiguous()
