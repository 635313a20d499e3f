"""status.json: running -> completed | failed | interrupted, written atomically."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pyimgano_hydra.runs.writers import read_json, write_json_atomic

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_status(path: Path, state: str, error: str | None = None, **extra) -> None:
    record = {"status": state, "updated_utc": utc_now()}
    if error:
        record["error"] = error
    record.update(extra)
    write_json_atomic(path, record)


def read_status(path: Path) -> str | None:
    """The run's state, or None when no status.json exists."""
    try:
        record = read_json(path)
    except (OSError, ValueError, RecursionError):
        return None
    return record.get("status") if isinstance(record, dict) else None
