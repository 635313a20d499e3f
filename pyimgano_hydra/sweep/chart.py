"""PNG bar chart of a sweep's main metric per job (mean over categories, std as error bar),
on an axis zoomed to the values so 0.914 and 0.971 look different; bars labelled key=value."""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyimgano_hydra.errors import console_line
from pyimgano_hydra.sweep.leaderboard import job_label
from pyimgano_hydra.viz.plots import plain_text


def zoomed_limits(values: list[float], errors: list[float]) -> tuple[float, float]:
    """x-axis range around the scored values (and error bars), padded, kept within [0, 1]
    for metrics that live there."""
    if not values:
        return 0.0, 1.0
    low = min(v - e for v, e in zip(values, errors))
    high = max(v + e for v, e in zip(values, errors))
    pad = max(0.15 * (high - low), 0.01)
    bounded = all(0.0 <= v <= 1.0 for v in values)
    return (max(0.0, low - pad) if bounded else low - pad), (min(1.0, high + pad) if bounded else high + pad) + pad * 0.6


MAX_BARS = 200  # bars in a chart; leaderboard.csv/.md/.json hold every job


def _error_bar(std: object, mean: object) -> float:
    """A job's std as an error bar; one no metric can have (negative, past the scale: a forged
    report.json) is drawn as none, never losing the whole chart."""
    ok = isinstance(std, (int, float)) and isinstance(mean, (int, float)) and 0 <= std <= abs(mean) + 1
    return float(std) if ok else 0.0


@plain_text
def chart_png(board: dict) -> bytes:
    """Horizontal bars in board order (best first); jobs without a result are labelled by status."""
    metric = board["metric"]
    rows = board["jobs"][:MAX_BARS]  # the best first; a 20,000-job plan held the chart for minutes
    labels, values, errors = [], [], []
    for row in rows:
        stat = (row.get("aggregate") or {}).get(metric) or {}
        name = job_label(row) if row.get("name") else f"#{row['job']} (planned)"
        labels.append(name if stat.get("mean") is not None else f"{name} [{row['status']}]")
        values.append(stat.get("mean"))
        errors.append(_error_bar(stat.get("std"), stat.get("mean")))
    height = max(2.0, 0.35 * len(rows) + 1.2)
    fig = Figure(figsize=(8, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = list(range(len(rows)))[::-1]
    scored = [(v, e) for v, e in zip(values, errors) if v is not None]
    left, right = zoomed_limits([v for v, _ in scored], [e for _, e in scored])
    for pos, value, error, row in zip(positions, values, errors, rows):
        if value is None:
            ax.text(left, pos, f" {row['status']}", va="center", fontsize=8, color="tab:grey")
            continue
        ax.barh(pos, value - left, left=left, xerr=error, color="tab:blue", capsize=3)
        ax.text(value + error, pos, f" {value:.3f}", va="center", fontsize=8)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(left, right)
    ax.set_xlabel(f"{metric} (mean over categories; axis zoomed from {left:.3g})")
    ax.set_title(console_line(f"{board['sweep_dir'].rstrip('/').split('/')[-1]}: {metric} per job"), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
