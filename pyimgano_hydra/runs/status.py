"""status.json: running -> completed | failed | interrupted, written atomically, with the
writing process (host, pid) so that readers can tell a killed run from a live one: by its pid
on the same host, by its heartbeat (``updated_utc``, rewritten every ``HEARTBEAT_S`` while
running) from another host of a shared disk."""
from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pyimgano_hydra.runs.writers import write_json_atomic

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
HEARTBEAT_S = 60.0  # a running job rewrites its status.json this often
STALE_S = 600.0  # another host's ``running`` status not rewritten for this long: its job is gone
_WRITING = threading.RLock()  # one status write at a time: the heartbeat never follows the final state
_LAST: dict[str, str] = {}  # status.json path -> the state this process last wrote there


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_status(path: Path, state: str, error: str | None = None, **extra) -> None:
    record = {"status": state, "updated_utc": utc_now()}
    if error:
        record["error"] = error
    record.update(extra)
    with _WRITING:
        write_json_atomic(path, record)
        _LAST[str(path)] = state


@contextmanager
def running(path: Path, every: float = HEARTBEAT_S, **fields) -> Iterator[None]:
    """Mark ``path`` running (with ``fields``: the owner) and rewrite it every ``every`` seconds
    while the block runs, until another state is written: its fresh ``updated_utc`` is the
    heartbeat by which another host tells a live run from a dead one (``owner_gone``)."""
    write_status(path, RUNNING, **fields)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with _WRITING:
                if stop.is_set() or _LAST.get(str(path)) != RUNNING:
                    return
                try:
                    write_status(path, RUNNING, **fields)
                except OSError:  # a full or gone disk: the run itself reports it
                    pass

    thread = threading.Thread(target=beat, name="status-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def process_alive(pid: int) -> bool:
    """A process with this id exists on this host (a reused id reads as alive; an id no
    process can have, as a hostile status.json may hold, reads as gone)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return _process_state(pid) != b"Z"  # a zombie (killed, not yet reaped) runs nothing


def _process_state(pid: int) -> bytes | None:
    """The state letter of ``/proc/<pid>/stat`` (R, S, Z...); None where unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError, OverflowError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, ``/proc/<pid>/stat``); None where unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, OverflowError):
        return None


def silent_for(record: dict) -> float:
    """Seconds since ``record``'s ``updated_utc`` (its last heartbeat); inf when it has none."""
    try:
        updated = datetime.fromisoformat(str(record.get("updated_utc")))
        updated = updated if updated.tzinfo else updated.replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - updated).total_seconds()
    except (ValueError, OverflowError, TypeError):
        return float("inf")


def owner_gone(record: dict) -> bool:
    """The process that wrote ``record`` (its ``host``, ``pid`` and ``pid_start``) no longer runs:
    on this host, no such process, another one that reused the pid (another start time), or a
    pid no process can have (0, negative, not an int); on another host (its pid cannot be
    checked from here), no heartbeat for ``STALE_S`` seconds (``running``)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname():
        return silent_for(record) > STALE_S
    if type(pid) is not int or pid <= 0 or not process_alive(pid):
        return True
    started = record.get("pid_start")
    return type(started) is int and process_start(pid) not in (None, started)


def current_state(record: object) -> str | None:
    """status.json's state as readers should report it: ``running`` by a process that is gone
    (killed by SIGKILL, out of memory, a power cut) reads as ``interrupted``."""
    state = record.get("status") if isinstance(record, dict) else None
    return INTERRUPTED if state == RUNNING and owner_gone(record) else state


def describe(record: object) -> str | None:
    """``current_state`` for a message: a running or killed run names its process."""
    state = current_state(record)
    pid = record.get("pid") if isinstance(record, dict) else None
    if type(pid) is not int or not 0 < pid < 2**32 or record.get("status") != RUNNING:
        return state
    process = f"pid {pid} on {str(record.get('host'))[:80]!r}"
    if state == INTERRUPTED:
        return f"{INTERRUPTED} ({process} stopped without finishing)"
    return f"{RUNNING} ({process})"
