"""The run log: ``<run dir>/pyimgano_hydra.log`` for CLI runs (Hydra's job logging, see
conf/hydra/job_logging/pyimgano_hydra.yaml) and for Python API runs (handlers added here)."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyimgano_hydra.console import quiet_third_party_logs

LOG_NAME = "pyimgano_hydra.log"  # hydra.job.name + ".log"
FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


# control characters but newline and tab, shown escaped: a folder name's ESC or BEL never reaches the terminal
_ESCAPED = {c: repr(chr(c))[1:-1] for c in [*range(32), *range(0x7F, 0xA0)] if chr(c) not in "\n\t"}


class ConsoleFormatter(logging.Formatter):
    """Plain messages on the console, control characters escaped; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).translate(_ESCAPED)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def _writes_to(path: Path) -> bool:
    target = os.path.abspath(path)
    return any(isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename) == target
               for h in logging.getLogger().handlers)


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Make sure ``run_dir/pyimgano_hydra.log`` receives our INFO lines for this run.

    Under the CLI Hydra's job logging already writes it; from the Python API a file handler
    (and, when nothing else prints our lines, a console one) is attached for the run only.
    """
    quiet_third_party_logs()
    path = Path(run_dir) / LOG_NAME
    if _writes_to(path):
        yield
        return
    ours = logging.getLogger("pyimgano_hydra")
    added = []
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    added.append(file_handler)
    if not logging.getLogger().handlers and not ours.handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(ConsoleFormatter())
        added.append(console)
    previous_level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    for handler in added:
        ours.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            ours.removeHandler(handler)
            handler.close()
        ours.setLevel(previous_level)
