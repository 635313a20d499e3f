"""status.json: running -> completed | failed | interrupted, written atomically, with the
writing process (host, pid) so that readers can tell a killed run from a live one."""
from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from pyimgano_hydra.runs.writers import write_json_atomic

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_status(path: Path, state: str, error: str | None = None, **extra) -> None:
    record = {"status": state, "updated_utc": utc_now()}
    if error:
        record["error"] = error
    record.update(extra)
    write_json_atomic(path, record)


def process_alive(pid: int) -> bool:
    """A process with this id exists on this host (a reused id reads as alive; an id no
    process can have, as a hostile status.json may hold, reads as gone)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, ``/proc/<pid>/stat``); None where unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, OverflowError):
        return None


def owner_gone(record: dict) -> bool:
    """The process that wrote ``record`` (its ``host``, ``pid`` and ``pid_start``) no longer runs
    on this host: no such process, another one that reused the pid (another start time), or a
    pid no process can have (0, negative, not an int). Another host's process cannot be checked."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname():
        return False
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
