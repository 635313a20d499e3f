"""Where a job runs: under submitit (SLURM or its local executor) or a plain process.

Under submitit the job's signals belong to submitit: it bypasses SIGTERM and, on the
preemption / timeout signal (USR2), checkpoints the job, requeues it and exits with
``SystemExit``. The app then leaves SIGTERM alone and records the run as interrupted, so
the requeued job can take its run dir over (see ``runs/takeover.py``).
"""
from __future__ import annotations

import os
import socket


def under_submitit() -> bool:
    """True inside a job started by submitit: its launcher sets ``SUBMITIT_EXECUTOR`` and its job
    handles SIGTERM (the variable alone, leaked into a plain run, left nobody handling SIGTERM)."""
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    return bool(os.environ.get("SUBMITIT_EXECUTOR")) and getattr(handler, "__module__", "").startswith("submitit")


def cluster_job_id() -> str | None:
    """The scheduler's id of this job, stable across requeues (SLURM or submitit local)."""
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        value = os.environ.get(key)
        if value:
            if key == "SLURM_ARRAY_JOB_ID":
                return f"{value}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
            return value
    return None


def owner() -> dict:
    """Who runs the job now: host, pid (and its start time) and the scheduler's job id (status.json records it)."""
    from pyimgano_hydra.runs.status import process_start

    record = {"host": socket.gethostname(), "pid": os.getpid()}
    started = process_start(os.getpid())  # a later process reusing the pid is told apart by it
    if started is not None:
        record["pid_start"] = started
    job_id = cluster_job_id()
    if job_id:
        record["job_id"] = job_id
    return record
