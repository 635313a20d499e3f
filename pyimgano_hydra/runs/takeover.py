"""May a job write into a run dir that already exists? Only to finish its own run.

A requeued cluster job (SLURM preemption or timeout, submitit) starts again in the same job
dir. It takes that dir over when the earlier attempt was the same run: status ``running``
or ``interrupted`` and the same config hash. A ``running`` dir still owned by a live
process (``status.owner_gone``: by pid on this host, by heartbeat from another), a different
config, or a completed / failed run is never touched. The run-dir claim (``runs/claim.py``)
and the app both ask ``may_take_over``.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import stat
from pathlib import Path, PurePosixPath

from pyimgano_hydra.errors import UserError, console_line
from pyimgano_hydra.files import walk
from pyimgano_hydra.metrics import METRIC_RANGES
from pyimgano_hydra.recipes.context import CategoryResult
from pyimgano_hydra.runs.layout import RunDir
from pyimgano_hydra.runs.status import INTERRUPTED, RUNNING, current_state, describe
from pyimgano_hydra.runs.trust import is_finite_number, read_json_file
from pyimgano_hydra.sweep.cluster import cluster_job_id

log = logging.getLogger(__name__)
NEVER = "runs are never overwritten"
MAX_LISTED = 10000  # notes, plots or overlays of a kept category (400,000 made a report.json infer refused)


def _state(record: object) -> str | None:
    """``current_state`` as this job sees it: its own earlier attempt (same cluster job id, another
    node) is gone. The same job id with a live owner on this host is another run of the same
    allocation (two runs from one ``salloc`` shell, ``srun -n 2``), not an earlier attempt."""
    job_id = cluster_job_id()
    if isinstance(record, dict) and record.get("status") == RUNNING:
        if job_id and record.get("job_id") == job_id and record.get("host") != socket.gethostname():
            return INTERRUPTED
        if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
            return RUNNING
    return current_state(record)


def may_take_over(run_dir: RunDir, config_hash: str, key: str = "hydra.run.dir") -> bool:
    """False for a dir without status.json or report.json; True when this job (``config_hash``)
    may finish the unfinished run in it.

    Raises ``UserError`` (one line naming ``key``) when the dir holds a run this job must not touch.
    """
    if not run_dir.status.exists() and not run_dir.report.exists():
        return False
    where, never = f"{key}={run_dir.root}", f"{NEVER}: pick a new {key}"
    try:
        record = read_json_file(run_dir.status)  # never blocks on a FIFO, never recurses deep
    except UserError:
        raise UserError(f"{where}: already holds a run; {never}") from None
    state = _state(record)
    if state == RUNNING:
        raise UserError(f"{where}: is being written by another process, still {describe(record)}; {never}")
    if state != INTERRUPTED or run_dir.report.exists():
        raise UserError(f"{where}: already holds a run ({state or 'finished'}); {never}")
    if record.get("config_hash") != config_hash:
        raise UserError(f"{where}: already holds a run of another config (unfinished); {never}")
    _no_links_out(run_dir, key)
    return True


def _no_links_out(run_dir: RunDir, key: str = "hydra.run.dir") -> None:
    """Refuse to resume a run whose ``categories/`` tree holds anything but folders and regular
    files: a resumed run deletes half-written categories and writes the rest, never through a
    symlink (outside its dir) nor into a FIFO (it would wait forever), and keeps only plain files."""
    categories = run_dir.root / "categories"
    if not os.path.lexists(categories):
        return
    _plain(categories, key, folder=True)
    for folder, dirs, files in walk(categories):
        here = Path(folder)
        for name in dirs:
            _plain(here / name, key, folder=True)
        for name in files:
            _plain(here / name, key, folder=here == categories)


def _plain(entry: Path, key: str, folder: bool = False) -> None:
    """``entry`` is a real folder (``folder``) or a regular file; else one line naming it."""
    mode = os.lstat(entry).st_mode
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
        return
    what = ("a symlink" if stat.S_ISLNK(mode) else "not a folder" if folder else "not a regular file")
    raise UserError(f"{console_line(str(entry))}: {what} in an unfinished run dir; a resumed run never writes "
                    f"or deletes through it; {NEVER}: pick a new {key}")


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
        result = category_result(record, out.report, category)
        named = [result.extra.get("inspector"), *result.extra.get("plots", []), *result.extra.get("overlays", [])]
        gone = next((name for name in named if name and not (out.root / name).is_file()), None)
        inspector = result.extra.get("inspector")
        if gone is None and inspector and (inspector != out.inspector.name or not _loadable(out.inspector)):
            gone = inspector  # the run records the standard inspector.pt: another file kept it, none there
        if gone is not None:  # deleted or broken since: the report alone is no finished category
            log.warning("%s names %s, which is missing or unreadable: category %s is redone", out.report, gone,
                        category)
            _no_links_out(run_dir)
            shutil.rmtree(out.root)
            continue
        done[category] = result
    return done


def _loadable(path: Path) -> bool:
    """A kept inspector infer will read (``trust.load_weights``, an inspector's format): an empty,
    text or pickled file kept the category and the resumed run completed with a model nobody loads."""
    from pyimgano_hydra.inspector import FORMAT
    from pyimgano_hydra.runs.trust import load_weights

    try:
        return load_weights(path).get("format") == FORMAT
    except UserError:
        return False


def category_result(record: dict, path, category: str) -> CategoryResult:
    """A category's report.json back into the recipe's result (``to_dict``'s inverse), checked: it
    is a file of an unfinished run dir, so its name, types and file references are parsed, not trusted."""
    redo = "delete its category folder to redo the category"
    fields = ("category", "metrics", "threshold", "timings", "counts", "notes")
    try:
        kwargs = {key: record[key] for key in fields}
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: lacks {exc}; {redo}") from None

    def bad(key: str, what: str) -> UserError:
        return UserError(f"{path}: {key} {what}; {redo}")

    if kwargs["category"] != category:
        raise bad("category", f"is not this folder's category {category!r}")
    for key in ("metrics", "threshold", "timings", "counts"):
        if not isinstance(kwargs[key], dict):
            raise bad(key, "must be an object")
    for key, value in [("threshold.value", kwargs["threshold"].get("value")),
                       *((f"timings.{k}", kwargs["timings"].get(k)) for k in ("fit_s", "predict_s", "total_s"))]:
        if not is_finite_number(value):
            raise bad(key, "must be a finite number")
    for section, fits, what in (("metrics", lambda v: v is None or is_finite_number(v),
                                 "must be a finite number or null"),
                                ("timings", lambda v: is_finite_number(v) and v >= 0, "must be a finite number >= 0"),
                                ("counts", _count, "must be a whole number >= 0")):
        for name, value in kwargs[section].items():
            if not fits(value):
                raise bad(f"{section}.{console_line(name)}", what)
    for name, value in kwargs["metrics"].items():  # a forged AUROC of 5.0 was averaged into the aggregate
        if name not in METRIC_RANGES:
            raise bad(f"metrics.{console_line(name)[:80]}", "is no metric a run records")
        low, high = METRIC_RANGES[name]
        if value is not None and not ((low is None or value >= low) and (high is None or value <= high)):
            raise bad(f"metrics.{name}", f"must lie in {low if low is not None else '-inf'}.."
                                         f"{high if high is not None else 'inf'}, got {value!r}")
        if name.startswith("n_") and value is not None and not _count(value):
            raise bad(f"metrics.{name}", "must be a whole number >= 0")
    kwargs["metrics"] = {k: math.nan if v is None else v for k, v in kwargs["metrics"].items()}
    provenance = kwargs["threshold"].get("provenance", {})
    if set(kwargs["threshold"]) - {"value", "provenance"} or not isinstance(provenance, dict) or not all(
            v is None or isinstance(v, str) or is_finite_number(v) for v in provenance.values()):
        raise bad("threshold", "must hold a value and a provenance of plain values")
    if not isinstance(kwargs["notes"], list) or not all(isinstance(n, str) for n in kwargs["notes"]) or \
            len(kwargs["notes"]) > MAX_LISTED:
        raise bad("notes", f"must be a list of at most {MAX_LISTED} strings")
    extra = {k: v for k, v in record.items() if k not in fields}
    for key in ("plots", "overlays"):
        listed = extra.get(key, [])
        if not isinstance(listed, list) or len(listed) > MAX_LISTED or not all(_inside(p) for p in listed):
            raise bad(key, f"must list at most {MAX_LISTED} files inside the category folder")
    if "inspector" in extra and not _inside(extra["inspector"]):
        raise bad("inspector", "must name a file inside the category folder")
    return CategoryResult(**kwargs, extra=extra)


MAX_COUNT = 10**9  # images, fits, calibration models of one category


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _inside(name: object) -> bool:
    """A relative path with no ``..``, no control character (a file the category folder holds)."""
    return (isinstance(name, str) and bool(name) and not PurePosixPath(name).is_absolute()
            and ".." not in PurePosixPath(name).parts and name.isprintable())
