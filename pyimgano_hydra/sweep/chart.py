"""PNG bar chart of a sweep's main metric per job (mean over categories, std as error bar)."""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def chart_png(board: dict) -> bytes:
    """Horizontal bars in board order (best first); jobs without a result are labelled by status."""
    metric = board["metric"]
    rows = board["jobs"]
    labels, values, errors = [], [], []
    for row in rows:
        stat = (row.get("aggregate") or {}).get(metric) or {}
        name = row.get("name") or f"{row['job']} (planned)"
        labels.append(name if stat.get("mean") is not None else f"{name} [{row['status']}]")
        values.append(stat.get("mean") if stat.get("mean") is not None else 0.0)
        errors.append(stat.get("std") or 0.0)
    height = max(2.0, 0.35 * len(rows) + 1.2)
    fig = Figure(figsize=(8, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = list(range(len(rows)))[::-1]
    colours = ["tab:blue" if (r.get("aggregate") or {}).get(metric) else "tab:grey" for r in rows]
    ax.barh(positions, values, xerr=errors, color=colours, capsize=3)
    for pos, value, row in zip(positions, values, rows):
        ok = bool((row.get("aggregate") or {}).get(metric))
        ax.text(value + 0.01 if ok else 0.01, pos, f"{value:.3f}" if ok else row["status"], va="center", fontsize=8)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    upper = max([v + e for v, e in zip(values, errors)] + [1.0])
    ax.set_xlim(0, upper * 1.08)
    ax.set_xlabel(f"{metric} (mean over categories)")
    ax.set_title(f"{board['sweep_dir'].rstrip('/').split('/')[-1]}: {metric} per job", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
