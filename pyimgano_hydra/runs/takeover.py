"""May a job write into a run dir that already exists? Only to finish its own run.

A requeued cluster job (SLURM preemption or timeout, submitit) starts again in the same job
dir. It takes that dir over when the earlier attempt was the same run: status ``running``
or ``interrupted`` and the same config hash. A ``running`` dir still owned by a live
process, a different config, or a completed / failed run is never touched.
"""
from __future__ import annotations

import os
import shutil
import socket

from pyimgano_hydra.errors import UserError
from pyimgano_hydra.recipes.context import CategoryResult
from pyimgano_hydra.runs.layout import RunDir
from pyimgano_hydra.runs.status import INTERRUPTED, RUNNING, owner_gone
from pyimgano_hydra.runs.trust import read_json_file
from pyimgano_hydra.sweep.cluster import cluster_job_id

NEVER = "runs are never overwritten: pick a new hydra.run.dir"


def _owner_gone(record: dict) -> bool:
    """The process that marked the run ``running`` is this job's earlier attempt or is dead. The
    same job id with a live owner on this host is another run in the same allocation (two runs
    from one ``salloc`` shell, ``srun -n 2``), not an earlier attempt: taking over mixed them."""
    job_id = cluster_job_id()
    if job_id and record.get("job_id") == job_id and record.get("host") != socket.gethostname():
        return True
    return record.get("pid") != os.getpid() and owner_gone(record)


def abandoned(run_dir: RunDir) -> bool:
    """An unfinished run nobody is writing: ``interrupted``, or ``running`` by a gone owner.

    The run-dir claim (``runs/claim.py``) lets such a dir through; ``may_take_over`` then
    checks that the new job is the same run (config hash).
    """
    try:
        record = read_json_file(run_dir.status)  # never blocks on a FIFO, never recurses deep
    except UserError:
        return False
    if not isinstance(record, dict) or run_dir.report.exists():
        return False
    return record.get("status") == INTERRUPTED or (record.get("status") == RUNNING and _owner_gone(record))


def may_take_over(run_dir: RunDir, config_hash: str) -> bool:
    """False for an empty dir; True when this job may finish the unfinished run in it.

    Raises ``UserError`` (one line) when the dir holds a run this job must not touch.
    """
    if not run_dir.status.exists() and not run_dir.report.exists():
        return False
    try:
        record = read_json_file(run_dir.status)
    except UserError:
        raise UserError(f"{run_dir.root} already holds a run; {NEVER}") from None
    state = record.get("status") if isinstance(record, dict) else None
    if state not in (RUNNING, INTERRUPTED) or run_dir.report.exists():
        raise UserError(f"{run_dir.root} already holds a run ({state or 'finished'}); {NEVER}")
    if record.get("config_hash") != config_hash:
        raise UserError(f"{run_dir.root} holds an unfinished run of another config; {NEVER}")
    if state == RUNNING and not _owner_gone(record):
        raise UserError(f"{run_dir.root} is being written by another process "
                        f"({record.get('host')}, pid {record.get('pid')}); {NEVER}")
    _no_links_out(run_dir)
    return True


def _no_links_out(run_dir: RunDir) -> None:
    """Refuse to resume a run whose ``categories/`` (or a category folder) is a symlink: a
    resumed run deletes half-written categories and writes the rest, never outside its dir."""
    categories = run_dir.root / "categories"
    entries = [categories, *(categories.iterdir() if categories.is_dir() and not categories.is_symlink() else [])]
    for entry in entries:
        if entry.is_symlink():
            raise UserError(f"{entry}: a symlink in an unfinished run dir; a resumed run never writes or "
                            f"deletes through one; {NEVER}")


def finished_categories(run_dir: RunDir, categories: list[str]) -> dict[str, CategoryResult]:
    """Results of the categories an earlier attempt finished; unfinished ones are cleared."""
    done = {}
    for category in categories:
        out = run_dir.category(category)
        try:
            record = read_json_file(out.report)
        except UserError:
            if out.root.exists():
                _no_links_out(run_dir)
                shutil.rmtree(out.root)  # half-written by the interrupted attempt: redo it
            continue
        done[category] = category_result(record, out.report)
    return done


def category_result(record: dict, path) -> CategoryResult:
    """A category's report.json back into the recipe's result (``to_dict``'s inverse)."""
    fields = ("category", "metrics", "threshold", "timings", "counts", "notes")
    try:
        kwargs = {key: record[key] for key in fields}
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: lacks {exc}; delete its category folder to redo the category") from None
    return CategoryResult(**kwargs, extra={k: v for k, v in record.items() if k not in fields})
