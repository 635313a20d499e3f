"""Sweep leaderboard: one row per job, read from each job's run dir, written at the sweep root.

Rows come only from files on disk (``status.json``, ``report.json``, ``.hydra/overrides.yaml``),
so any process can rebuild the board at any time. A run dir counts as a result only when its
``status.json`` says ``completed``; other states give a row with the status and its error line.
Jobs planned in ``sweep.json`` that have no run dir yet are ``not_started`` rows.
"""
from __future__ import annotations

import csv
import html
import io
import math
import re
from pathlib import Path
from typing import Any

from pyimgano_hydra.errors import UserError, console_line
from pyimgano_hydra.runs.layout import RunDir
from pyimgano_hydra.runs.status import COMPLETED, RUNNING, current_state, utc_now
from pyimgano_hydra.metrics import METRIC_RANGES
from pyimgano_hydra.runs.writers import to_json, write_bytes_atomic, write_text_atomic
from pyimgano_hydra.sweep.naming import read_sweep_file, split_override

LEADERBOARD_VERSION = 1
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_aupro")
METRICS = IMAGE_METRICS + PIXEL_METRICS
# what a job's report.json aggregates (defects_* with defects enabled): a board may rank by any of them
RANKABLE = METRICS + tuple(name for name in METRIC_RANGES if name not in METRICS and not name.startswith("n_"))
NOT_STARTED = "not_started"
MAX_LABEL = 160


def _job_file(path: Path) -> tuple[Any, str | None]:
    """(a job file's parsed value, None), (None, None) when it does not exist (yet), or (None, why
    it cannot be read): a FIFO, a device, a link or a huge file in a copied-in job dir is never read."""
    import yaml

    from pyimgano_hydra.runs.trust import read_json_file, read_regular_file

    try:
        if path.suffix == ".json":
            return read_json_file(path, follow=False), None
        return yaml.safe_load(read_regular_file(path, follow=False).decode("utf-8")), None
    except UserError as exc:
        return None, (None if isinstance(exc.__cause__, FileNotFoundError) else str(exc))
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        return None, f"{path}: not readable ({type(exc).__name__})"


def _read_overrides(job_dir: Path) -> tuple[list[str] | None, str | None]:
    """(the job's override strings, None), (None, None) while a starting job has not written them,
    or (None, why the file is not a list of override strings)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    value, why = _job_file(path)
    if value is None or why:
        return None, why
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        return None, f"{path}: not a list of override strings"
    return value, None


def _job_number(job_dir: Path) -> int | None:
    match = re.match(r"^(\d+)(?:_|$)", job_dir.name)
    if match:
        return int(match.group(1))
    value, _ = _job_file(job_dir / ".hydra" / "hydra.yaml")
    number = _mapping(_mapping(_mapping(value).get("hydra")).get("job")).get("num")
    return number if type(number) is int else None


def _is_job_dir(path: Path) -> bool:
    return path.is_dir() and ((path / ".hydra" / "overrides.yaml").is_file() or (path / "status.json").is_file())


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def job_row(job_dir: Path, varying: list[str] | None) -> dict:
    """One job's row: identity, overrides, status (+ error), metrics and timings when completed.
    A job dir whose files cannot be read or have the wrong shape is a failed row of its own."""
    run = RunDir(job_dir)
    linked = next((p for p in (job_dir, job_dir / ".hydra") if p.is_symlink()), None)
    if linked is not None:  # nothing of a run dir is read through a link in it
        return {"job": None, "name": job_dir.name, "run_dir": job_dir.name, "status": "failed",
                "error": console_line(f"{linked}: is a link; a job dir's files are read only from inside it"),
                "overrides": [], "varying": {}, "aggregate": {}, "categories": {}, "timings": {}}
    status_record, unreadable = _job_file(run.status)
    status = current_state(_mapping(status_record)) or RUNNING
    overrides, bad_overrides = _read_overrides(job_dir)
    if status == COMPLETED:  # a finished job's files are final; a starting job may be writing them
        unreadable = unreadable or bad_overrides
    report: Any = {}
    if overrides is None or status == COMPLETED:
        report, why = _job_file(run.report)
        unreadable = unreadable or (why if status == COMPLETED else None)
    report = _mapping(report)
    if overrides is None:
        overrides = [str(o) for o in report.get("overrides") or [] if isinstance(report.get("overrides"), list)]
    keep = set(varying) if varying is not None else None
    error = _mapping(status_record).get("error")
    row: dict[str, Any] = {
        "job": _job_number(job_dir),
        "name": job_dir.name,
        "run_dir": job_dir.name,
        "status": status,
        "error": console_line(str(error)) if error is not None else None,
        "overrides": overrides,
        "varying": {k: v for k, v in map(split_override, overrides) if keep is None or k in keep},
        "aggregate": {},
        "categories": {},
        "timings": {},
    }
    if unreadable:
        row.update(status="failed", error=console_line(unreadable))
        return row
    if status != COMPLETED:
        return row
    categories = report.get("categories")
    if report.get("status") != COMPLETED or not isinstance(categories, dict) or not all(
            isinstance(entry, dict) for entry in categories.values()):  # status.json and report.json disagree
        row.update(status="failed", error="status.json says completed but report.json is missing or incomplete")
        return row
    row["aggregate"] = {k: {"mean": _number(v.get("mean")), "std": _number(v.get("std")), "n": v.get("n")}
                        for k, v in _mapping(report.get("aggregate")).items() if isinstance(v, dict)}
    row["categories"] = {cat: {k: _number(v) for k, v in _mapping(entry.get("metrics")).items()
                               if _number(v) is not None or v is None}
                         for cat, entry in categories.items()}
    timings = _mapping(report.get("timings"))
    row["timings"] = {"fit_s": _number(timings.get("fit_s")), "test_s": _number(timings.get("predict_s")),
                      "total_s": _number(timings.get("total_s"))}
    return row


def main_value(row: dict, metric: str) -> float | None:
    return (row.get("aggregate", {}).get(metric) or {}).get("mean")


def collect(sweep_dir: str | Path, metric: str = "image_auroc") -> dict:
    """The whole board as plain data: rows ranked by ``metric`` (completed first), then the rest by job."""
    sweep_dir = Path(sweep_dir)
    plan = read_sweep_file(sweep_dir) or {}
    varying = plan.get("varying")
    rows = [job_row(p, varying) for p in sorted(sweep_dir.iterdir()) if _is_job_dir(p)] if sweep_dir.is_dir() else []
    seen = {r["job"] for r in rows}
    for num, overrides in enumerate(plan.get("planned") or []):
        if num not in seen:
            keep = set(varying) if varying is not None else None
            rows.append({"job": num, "name": None, "run_dir": None, "status": NOT_STARTED, "error": None,
                         "overrides": list(overrides),
                         "varying": {k: v for k, v in map(split_override, overrides) if keep is None or k in keep},
                         "aggregate": {}, "categories": {}, "timings": {}})
    scored = [r for r in rows if main_value(r, metric) is not None]
    scored.sort(key=lambda r: (-main_value(r, metric), r["job"] if r["job"] is not None else 1 << 30))
    rest = [r for r in rows if main_value(r, metric) is None]
    rest.sort(key=lambda r: (r["job"] if r["job"] is not None else 1 << 30, r["name"] or ""))
    for rank, row in enumerate(scored, 1):
        row["rank"] = rank
    for row in rest:
        row["rank"] = None
    rows = scored + rest
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {
        "schema_version": LEADERBOARD_VERSION,
        "updated_utc": utc_now(),
        "sweep_dir": str(sweep_dir),
        "metric": metric,
        "varying": varying,
        "counts": counts,
        "best": rows[0]["name"] if scored else None,
        "best_label": job_label(rows[0]) if scored else None,
        "jobs": rows,
    }


def _categories(board: dict) -> list[str]:
    return sorted({c for row in board["jobs"] for c in row["categories"]})


def _overrides_text(row: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in row["varying"].items()) or " ".join(row["overrides"])


def job_label(row: dict) -> str:
    """'#1 model=padim tiling=tile128': the job number and its varying key=value pairs, at most
    ``MAX_LABEL`` characters (a chart laid out a 1.5 MB override for over a minute)."""
    label = console_line(f"#{row['job']} {_overrides_text(row)}".strip())  # a swept name's escapes, shown
    return label if len(label) <= MAX_LABEL else label[:MAX_LABEL - 1] + "…"


def flat_rows(board: dict) -> tuple[list[str], list[dict]]:
    """CSV columns and one flat dict per job (mean metrics, then ``<category>/<metric>``)."""
    cats = _categories(board)
    columns = ["rank", "job", "name", "status", "overrides", board["metric"]]
    columns += [m for m in METRICS if m != board["metric"]]
    columns += [f"{c}/{m}" for c in cats for m in METRICS]
    columns += ["fit_s", "test_s", "total_s", "error", "all_overrides"]
    rows = []
    for row in board["jobs"]:
        flat = {"rank": row["rank"], "job": row["job"], "name": row["name"], "status": row["status"],
                "overrides": _overrides_text(row), "error": row["error"],
                "all_overrides": " ".join(row["overrides"])}
        for m in METRICS:
            flat[m] = main_value(row, m)
        for c in cats:
            for m in METRICS:
                flat[f"{c}/{m}"] = row["categories"].get(c, {}).get(m)
        flat.update({k: row["timings"].get(k) for k in ("fit_s", "test_s", "total_s")})
        rows.append(flat)
    return columns, rows


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula


def _csv_cell(value: Any) -> Any:
    """A cell as a spreadsheet shows it: text that would start a formula (a category folder named
    ``=HYPERLINK(...)``) gets a leading apostrophe; numbers are written as they are."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = console_line(value)  # ``cat leaderboard.csv`` never runs a name's terminal escapes
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    return value


def to_csv(board: dict) -> str:
    columns, rows = flat_rows(board)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([_csv_cell(c) for c in columns])
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _md_cell(text: str) -> str:
    """Text as a Markdown table cell: no raw HTML (a category folder named ``<img onerror=...>``), no
    terminal escapes, no cell break."""
    return html.escape(console_line(str(text)), quote=False).replace("|", "\\|")


def to_markdown(board: dict) -> str:
    metric = board["metric"]
    cats = _categories(board)
    head = ["#", "job", "overrides", "status", f"**{metric}**"]
    head += [m for m in METRICS if m != metric]
    head += [f"{_md_cell(c)} {metric}" for c in cats] if len(cats) > 1 else []
    head += ["fit s", "test s", "error"]
    lines = [f"# Sweep leaderboard — `{_md_cell(Path(board['sweep_dir']).name)}`", "",
             f"Ranked by mean `{metric}` over categories. "
             + ", ".join(f"{n} {s}" for s, n in sorted(board["counts"].items())) + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in board["jobs"]:
        cells = [_fmt(row["rank"]), _fmt(row["job"]), _overrides_text(row), row["status"],
                 _fmt(main_value(row, metric))]
        cells += [_fmt(main_value(row, m)) for m in METRICS if m != metric]
        cells += [_fmt(row["categories"].get(c, {}).get(metric)) for c in cats] if len(cats) > 1 else []
        cells += [_fmt(row["timings"].get("fit_s"), 1), _fmt(row["timings"].get("test_s"), 1),
                  (row["error"] or "")[:160]]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(sweep_dir: str | Path, metric: str = "image_auroc", chart: bool = True,
                      shown_as: str | Path | None = None) -> dict:
    """(Re)write ``leaderboard.{csv,md,json}`` (and ``leaderboard.png``) atomically; return the board.
    ``shown_as``: the sweep dir's path in the board when ``sweep_dir`` is a held ``/proc/self/fd`` path."""
    sweep_dir = Path(sweep_dir)
    board = collect(sweep_dir, metric)
    if shown_as is not None:
        board["sweep_dir"] = str(shown_as)
    write_text_atomic(sweep_dir / "leaderboard.json", to_json(board) + "\n")
    write_text_atomic(sweep_dir / "leaderboard.csv", to_csv(board))
    write_text_atomic(sweep_dir / "leaderboard.md", to_markdown(board))
    if chart:
        from pyimgano_hydra.sweep.chart import chart_png

        write_bytes_atomic(sweep_dir / "leaderboard.png", chart_png(board))
    return board


__all__ = ["collect", "write_leaderboard", "job_row", "to_csv", "to_markdown"]
