"""Opening files that may be hostile: a regular file only, checked on the open descriptor, never
waiting on a FIFO or reading a device."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from pyimgano_hydra.errors import UserError


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def open_regular(path: str | Path, advice: str, error: type[UserError] = UserError) -> BinaryIO:
    """``path`` opened for binary reading when it is a regular file; otherwise ``error`` naming it,
    ending with ``advice``. The file object owns the descriptor from the open (a signal between a
    raw open and its wrapping once closed a descriptor twice)."""
    message = f"{path}: not a regular file (a FIFO, device or folder); {advice}"
    try:
        handle = open(path, "rb", opener=_nonblocking)
    except IsADirectoryError:
        raise error(message) from None
    try:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise error(message)
    except BaseException:
        handle.close()
        raise
    return handle


def read_text(path: str | Path, limit: int, advice: str, error: type[UserError] = UserError,
              encoding: str = "utf-8") -> str:
    """A regular text file of at most ``limit`` bytes, decoded; otherwise ``error`` naming it and
    ending with ``advice`` (a 2 GB sparse CSV was read as one line; bytes that are not text gave a
    decoder error naming no file)."""
    with open_regular(path, advice, error) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit >> 20} MB; {advice}")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not {encoding} text (byte {exc.start}); {advice}") from None
