"""Opening files that may be hostile: a regular file only, checked on the open descriptor, never
waiting on a FIFO or reading a device."""
from __future__ import annotations

import os
import re
import stat
from contextlib import ExitStack, contextmanager
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
    message = f"{shown(str(path))}: not a regular file (a FIFO, device or folder); {advice}"
    try:
        handle = open(path, "rb", opener=_nonblocking if follow else _nonblocking_no_link)
    except IsADirectoryError:
        raise error(message) from None
    except OSError:
        if follow:
            raise
        raise error(f"{shown(str(path))}: not a regular file (a link, FIFO or folder?); {advice}") from None
    try:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise error(message)
    except BaseException:
        handle.close()
        raise
    return handle


MIN_SPARSE_CHECK_BYTES = 64 << 20


def refuse_sparse(handle: BinaryIO, path: str | Path, advice: str, error: type[UserError] = UserError,
                  min_bytes: int = MIN_SPARSE_CHECK_BYTES) -> None:
    """``error`` for a file of ``min_bytes`` or more whose blocks on disk hold under half its
    length: a sparse file, which no writer of ours makes (a 21 MB run dir whose inspector.pt read
    as 3 GB)."""
    info = os.fstat(handle.fileno())
    if info.st_size >= min_bytes and info.st_blocks * 512 < info.st_size // 2:
        raise error(f"{shown(str(path))}: refused: a sparse file ({info.st_size >> 20} MB long, "
                    f"{info.st_blocks * 512 >> 20} MB on disk); {advice}")


def read_regular(path: str | Path, limit: int, advice: str, error: type[UserError] = UserError,
                 follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before and while reading: a
    2 GB sparse file is never read); otherwise ``error`` naming it and ending with ``advice``."""
    with open_regular(path, advice, error, follow) as handle:
        refuse_sparse(handle, path, advice, error)
        if os.fstat(handle.fileno()).st_size > limit:
            raise error(f"{shown(str(path))}: larger than {limit >> 20} MB; {advice}")
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew meanwhile
        raise error(f"{shown(str(path))}: larger than {limit >> 20} MB; {advice}")
    return data


def read_text(path: str | Path, limit: int, advice: str, error: type[UserError] = UserError,
              encoding: str = "utf-8") -> str:
    """``read_regular`` decoded; bytes that are not text are ``error`` naming the file (a decoder
    error named none)."""
    data = read_regular(path, limit, advice, error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(f"{shown(str(path))}: not {encoding} text (byte {exc.start}); {advice}") from None


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
    _HELD[str(handle.fileno())] = shown(os.path.abspath(path))
    return proc


_FOLDER = os.O_RDONLY | os.O_DIRECTORY


def _open_folder(folder: str | Path, follow: bool, below: str | Path | None) -> int:
    """A descriptor of ``folder``; with ``below``, of ``below/folder`` reached one component at a
    time with no link on the way (OSError otherwise: a link anywhere, not only at the end)."""
    if below is None:
        return os.open(folder, _FOLDER | (0 if follow else os.O_NOFOLLOW))
    if Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise OSError(f"{folder}: not a folder below {below}")
    fd = os.open(below, _FOLDER)
    try:
        for part in Path(folder).parts:
            inner = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _proc_path(fd: int, shown_as: str) -> Path | None:
    proc = Path(f"/proc/self/fd/{fd}")
    _HELD[str(fd)] = shown(shown_as)
    return proc if proc.is_dir() else None


@contextmanager
def held_folder(folder: str | Path, follow: bool = True, below: str | Path | None = None) -> Iterator[Path | None]:
    """``folder`` itself, whatever its path leads to later: ``/proc/self/fd/<n>`` of a descriptor
    held open for the block (a run dir moved or swapped for a link mid-run got writes through the
    link, or kept ``running``); None where there is no ``/proc``. ``follow=False``: ``folder``
    itself may not be a link (OSError). ``below``: ``folder`` is relative to it and no component
    of it may be a link."""
    fd = _open_folder(folder, follow, below)
    try:
        yield _proc_path(fd, os.path.abspath(os.path.join(below, folder) if below is not None else folder))
    finally:
        os.close(fd)


@contextmanager
def held_run_folder(relative: str | Path, below: str | Path, shown_as: Path) -> Iterator[Path]:
    """:func:`held_folder` of a run dir's part (``relative`` to the held ``below``); a link on the
    way or a missing folder is one error naming ``shown_as``."""
    stack = ExitStack()
    try:
        held = stack.enter_context(held_folder(relative, below=below))
    except OSError:
        raise UserError(f"{shown_as}: not a folder of the run dir (a link, or missing?); refused") from None
    with stack:
        yield held or shown_as


@contextmanager
def folder_lock(folder: str | Path, name: str, timeout: float, follow: bool = False) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder/name`` for the block (TimeoutError after ``timeout`` s).
    The file is made inside ``folder`` opened once (``follow=False``: not a link), never through a
    link and never truncated: filelock resolves the folder's path by name first, so a held
    ``/proc/self/fd`` folder swapped meanwhile got its lock file behind the link."""
    import fcntl
    import time

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    folder_fd = os.open(folder, flags)
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                     dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise OSError(f"{os.path.join(folder, name)} is not a lock file of its own (a link?)")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{os.path.join(folder, name)}: held by another run or thread for "
                                       f"{timeout}s; try again when it has finished") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class KeptFolder:
    """A folder held open while this object lives: ``path`` is its ``/proc/self/fd/<n>`` (the
    folder itself, whatever its name leads to later), or its name where there is no ``/proc``."""

    def __init__(self, folder: str | Path):
        self._fd = _open_folder(folder, True, None)
        self.path = _proc_path(self._fd, os.path.abspath(folder)) or Path(folder)

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)


def walk(top: str | Path, onerror=None) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, onerror=onerror)`` (top-down; ``dirs`` may be pruned in place; links to folders
    listed in ``dirs``, never entered) without recursion: on Python 3.11 a folder nested 1,100 deep
    raised RecursionError, losing every other file of the walk."""
    stack = [os.fspath(top)]
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as entries:
                listed = list(entries)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs, names, links = [], [], set()
        for entry in listed:
            try:
                is_dir = entry.is_dir()
                if is_dir and entry.is_symlink():
                    links.add(entry.name)
            except OSError:
                is_dir = False
            (dirs if is_dir else names).append(entry.name)
        yield root, dirs, names
        stack.extend(os.path.join(root, d) for d in reversed(dirs) if d not in links)


def glob_parts_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether path ``parts`` match glob ``pattern`` parts, ``**`` matching any number of parts
    (a state set per part, not recursion: a path 2,000 parts deep is matched too)."""
    from fnmatch import fnmatchcase

    def closure(states: set[int]) -> set[int]:
        for i in sorted(states):
            while i < len(pattern) and pattern[i] == "**":
                i += 1
                states.add(i)
        return states

    states = closure({0})
    for part in parts:
        states = closure({i if pattern[i] == "**" else i + 1 for i in states
                          if i < len(pattern) and (pattern[i] == "**" or fnmatchcase(part, pattern[i]))})
        if not states:
            return False
    return len(pattern) in states
