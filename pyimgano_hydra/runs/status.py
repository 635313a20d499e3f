"""status.json: running -> completed | failed | interrupted, written atomically, with the\nwriting process (host, pid) so that readers can tell a killed run from a live one."""
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
    """A process with this id exists on this host (a reused id reads as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(record: dict) -> bool:
    """The process that wrote ``record`` (its ``host`` and ``pid``) is known and no longer runs."""
    pid = record.get("pid")
    return record.get("host") == socket.gethostname() and type(pid) is int and pid > 0 and not process_alive(pid)


def current_state(record: object) -> str | None:
    """status.json's state as readers should report it: ``running`` by a process that is gone
    (killed by SIGKILL, out of memory, a power cut) reads as ``interrupted``."""
    state = record.get("status") if isinstance(record, dict) else None
    return INTERRUPTED if state == RUNNING and owner_gone(record) else state
