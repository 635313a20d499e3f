"""inotify helpers for race reproducers: act the moment a file is first opened or closed."""
from __future__ import annotations

import os
import threading
from pathlib import Path

IN_CLOSE_NOWRITE = 0x10
IN_OPEN = 0x20


def _watch(path: Path, mask: int):
    """A callable telling whether ``path`` saw an inotify event of ``mask`` since this call."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(str(path)), mask) >= 0

    def seen() -> bool:
        try:
            return bool(os.read(fd, 4096))
        except BlockingIOError:
            return False

    return seen


def _on_first_close(path: Path, action) -> threading.Thread:
    """A thread that runs ``action()`` as soon as ``path`` is first closed after reading
    (inotify ``IN_CLOSE_NOWRITE``): the moment a check's own open of the file ends."""
    return _on_close_count(path, 1, action)


def _on_close_count(path: Path, count: int, action) -> threading.Thread:
    """``_on_first_close`` at the ``count``-th close."""
    import ctypes
    import select

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0
    assert libc.inotify_add_watch(fd, os.fsencode(str(path)), IN_CLOSE_NOWRITE) >= 0

    def watch() -> None:
        seen = 0
        try:
            while seen < count:
                ready, _, _ = select.select([fd], [], [], 120)
                if not ready:
                    return
                data = os.read(fd, 4096)
                seen += len(data) // 16 if data else 0  # no name: one 16-byte event each
            action()
        finally:
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
