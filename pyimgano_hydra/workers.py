"""Child Pythons our code starts (decode workers, PyOD's joblib workers) import nothing from the
working dir."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def without_working_dir() -> Iterator[None]:
    """``PYTHONSAFEPATH=1`` for the child Pythons started inside the block: ``python -m`` / ``-c``
    put the working dir first on ``sys.path``, so a received image folder's ``joblib/`` or
    ``multiprocessing/`` ran in them (the parent's own ``sys.path`` still reaches them through
    the start method's preparation data)."""
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = before


def bounded_jobs(jobs: object) -> object:
    """A stored ``n_jobs`` at most this machine's CPUs (10,000 started hundreds of workers)."""
    cpus = os.cpu_count() or 1
    return cpus if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs > cpus else jobs
