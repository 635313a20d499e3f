"""SIGTERM and Ctrl-C: raised as :class:`Interrupted` inside a run, one line and 128+signal at exit."""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator

from pyimgano_hydra.sweep.cluster import under_submitit


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C) during a run; ``signum`` is the signal's number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Interrupted` (main thread only; not under
    submitit, which owns SIGTERM and the requeue signal: see ``sweep/cluster.py``)."""
    if under_submitit():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def exit_on_interrupt(what: str) -> Iterator[None]:
    """At an entry point: an interrupt prints one line and exits 128 + signal (143, 130)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", int(signal.SIGINT))
        print(f"interrupted: {signal.Signals(signum).name}; {what} marked interrupted in its status.json",
              file=sys.stderr)
        sys.exit(128 + signum)
