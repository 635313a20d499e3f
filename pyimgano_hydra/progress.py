"""Progress that names its stage: ``[category 2/15 brick] features 64/80``.

One tqdm bar per stage while stderr is a terminal (tqdm's own check); a log line per stage
with its count and time either way, so logs and non-TTY runs get one line per stage.
"""
from __future__ import annotations

import contextvars
import logging
import time
from contextlib import contextmanager
from typing import Iterator

from tqdm.auto import tqdm

from pyimgano_hydra.errors import console_line

log = logging.getLogger(__name__)
_category = contextvars.ContextVar("pyimgano_category", default="")
_bar = contextvars.ContextVar("pyimgano_bar", default=None)


@contextmanager
def category(index: int, total: int, name: str) -> Iterator[None]:
    """Prefix every stage inside with ``[category index/total name]``."""
    token = _category.set(f"[category {index}/{total} {console_line(name)}]")  # a folder's ESC or BEL shown escaped
    try:
        yield
    finally:
        _category.reset(token)


def label(stage: str) -> str:
    """``[category i/n name] stage`` (just the stage outside a category)."""
    return f"{_category.get()} {stage}".strip()


class _Counted:
    """A tqdm bar (or nothing) plus the count, which a disabled tqdm does not keep."""

    def __init__(self, bar=None):
        self.bar, self.n = bar, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **values) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)


@contextmanager
def stage(name: str, total: int | None = None, unit: str = "img") -> Iterator[_Counted]:
    """Time one stage and log ``<label> [n/total unit] in s``; with ``total``, show one bar.

    A stage inside another stage's bar is silent (no bar, no line), so a test split
    predicted in chunks keeps one bar instead of one restarting bar per chunk.
    """
    if _bar.get() is not None:
        yield _Counted()
        return
    text = label(name)
    counted = _Counted(tqdm(total=total, desc=text, unit=unit, leave=False, disable=None, dynamic_ncols=True)
                       if total is not None else None)
    token = _bar.set(counted) if total is not None else None
    started = time.perf_counter()
    try:
        yield counted
    finally:
        if token is not None:
            _bar.reset(token)
            counted.bar.close()
        seconds = time.perf_counter() - started
        count = f" {counted.n}/{total} {unit}" if total is not None else ""
        log.info("%s%s in %.1fs", text, count, seconds)
