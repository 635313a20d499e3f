"""Child Pythons our code starts (decode workers, PyOD's joblib workers) import nothing from the
working dir."""
from __future__ import annotations

import atexit
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator


_EMPTY: list[str] = []  # this process's empty private folder, made on first use


def _remove_empty() -> None:
    try:
        os.rmdir(_EMPTY[0])
    except OSError:  # something was written into it: left for the OS's temp cleaning
        pass


@contextmanager
def without_working_dir(leave_it: bool = False) -> Iterator[None]:
    """``PYTHONSAFEPATH=1`` for the child Pythons started inside the block: ``python -m`` / ``-c``
    put the working dir first on ``sys.path``, so a received image folder's ``joblib/`` or
    ``multiprocessing/`` ran in them (the parent's own ``sys.path`` still reaches them through
    the start method's preparation data). ``leave_it`` (a block that opens no file: PyOD's fit and
    scoring): the block runs in an empty private folder, where its children start and stay; PyOD's
    loky workers imported numba in the working dir, whose ``.numba_config.yaml`` overwrote files
    (``chrome_trace``) or took GBs (YAML anchors)."""
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    here = os.open(".", os.O_RDONLY) if leave_it else None
    try:
        if here is not None:
            if not _EMPTY:
                _EMPTY.append(tempfile.mkdtemp(prefix="pyimgano_hydra-workers-"))
                atexit.register(_remove_empty)
            os.chdir(_EMPTY[0])
        yield
    finally:
        if here is not None:
            os.fchdir(here)  # back, even if the folder was renamed meanwhile
            os.close(here)
        if before is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = before


def bounded_jobs(jobs: object) -> object:
    """A stored ``n_jobs`` at most this machine's CPUs (10,000 started hundreds of workers)."""
    cpus = os.cpu_count() or 1
    return cpus if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs > cpus else jobs
