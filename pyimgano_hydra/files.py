"""Opening files that may be hostile: a regular file only, checked on the open descriptor, never
waiting on a FIFO or reading a device."""
from __future__ import annotations

import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from pyimgano_hydra.errors import UserError


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def _nonblocking_no_link(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW)


def open_regular(path: str | Path, advice: str, error: type[UserError] = UserError,
                 follow: bool = True) -> BinaryIO:
    """``path`` opened for binary reading when it is a regular file; otherwise ``error`` naming it,
    ending with ``advice``. The file object owns the descriptor from the open (a signal between a
    raw open and its wrapping once closed a descriptor twice). ``follow=False``: ``path`` itself may
    not be a link either."""
    message = f"{path}: not a regular file (a FIFO, device or folder); {advice}"
    try:
        handle = open(path, "rb", opener=_nonblocking if follow else _nonblocking_no_link)
    except IsADirectoryError:
        raise error(message) from None
    except OSError:
        if follow:
            raise
        raise error(f"{path}: not a regular file (a link, FIFO or folder?); {advice}") from None
    try:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise error(message)
    except BaseException:
        handle.close()
        raise
    return handle


def read_regular(path: str | Path, limit: int, advice: str, error: type[UserError] = UserError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before and while reading: a
    2 GB sparse file is never read); otherwise ``error`` naming it and ending with ``advice``."""
    with open_regular(path, advice, error) as handle:
        if os.fstat(handle.fileno()).st_size > limit:
            raise error(f"{path}: larger than {limit >> 20} MB; {advice}")
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew meanwhile
        raise error(f"{path}: larger than {limit >> 20} MB; {advice}")
    return data


def read_text(path: str | Path, limit: int, advice: str, error: type[UserError] = UserError,
              encoding: str = "utf-8") -> str:
    """``read_regular`` decoded; bytes that are not text are ``error`` naming the file (a decoder
    error named none)."""
    data = read_regular(path, limit, advice, error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not {encoding} text (byte {exc.start}); {advice}") from None


_HELD: dict[str, str] = {}  # descriptor number -> the path of the folder held_folder opened with it
_HELD_PATH = re.compile(r"/proc/self/fd/(\d+)(?=/|\W|$)")


def shown(text: str) -> str:
    """``text`` with each held folder's ``/proc/self/fd/<n>`` put back as the path the user gave."""
    return _HELD_PATH.sub(lambda m: _HELD.get(m.group(1), m.group(0)), text)


_KEPT: list[BinaryIO] = []  # files held open for the process (see held_file)


def held_file(path: str | Path, advice: str, error: type[UserError] = UserError) -> str:
    """``/proc/self/fd/<n>`` of ``path`` opened now (a regular file, not a link) and held open: a
    reader later gets these bytes even if a link is swapped in by then (a stored backbone file,
    checked at load and read at the first batch, was read from outside the run dir). ``path`` where
    there is no ``/proc``."""
    handle = open_regular(path, advice, error, follow=False)
    proc = f"/proc/self/fd/{handle.fileno()}"
    if not os.path.exists(proc):
        handle.close()
        return str(path)
    _KEPT.append(handle)
    _HELD[str(handle.fileno())] = os.path.abspath(path)
    return proc


@contextmanager
def held_folder(folder: str | Path, follow: bool = True) -> Iterator[Path | None]:
    """``folder`` itself, whatever its path leads to later: ``/proc/self/fd/<n>`` of a descriptor
    held open for the block (a run dir moved or swapped for a link mid-run got writes through the
    link, or kept ``running``); None where there is no ``/proc``. ``follow=False``: ``folder``
    itself may not be a link (OSError)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW))
    try:
        proc = Path(f"/proc/self/fd/{fd}")
        _HELD[str(fd)] = os.path.abspath(folder)
        yield proc if proc.is_dir() else None
    finally:
        os.close(fd)
