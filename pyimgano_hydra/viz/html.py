"""report.html: one static page per run (relative links, no script, no server)."""
from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

import yaml

from pyimgano_hydra.runs.writers import write_bytes_atomic

COLUMNS = (("image_auroc", "image AUROC"), ("image_ap", "image AP"), ("image_f1", "F1 at threshold"),
           ("image_f1_max", "best F1"), ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "AUPRO"))
TOP_OVERLAYS = 6
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.figs img{max-width:48%;margin:.3em;border:1px solid #ddd;
vertical-align:top}.overlays img{width:23%;margin:.2em}pre{background:#f6f6f6;padding:.8em;overflow:auto}
.note{color:#8a4b00}"""


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and value == value else "–"


def _img(src: str, alt: str) -> str:
    return f'<a href="{quote(src)}"><img src="{quote(src)}" alt="{html.escape(alt)}" loading="eager"></a>'


def report_html(report: dict, config: dict) -> str:
    """The page for one completed run's report.json (paths in it are relative to the run dir)."""
    e = html.escape
    categories = report.get("categories", {})
    head = "".join(f"<th>{e(title)}</th>" for _, title in COLUMNS)
    rows = []
    for name, cat in categories.items():
        metrics = cat.get("metrics", {})
        threshold = (report.get("thresholds", {}).get(name) or {}).get("value")
        rows.append(f"<tr><td>{e(name)}</td>" + "".join(f"<td>{_cell(metrics.get(k))}</td>" for k, _ in COLUMNS)
                    + f"<td>{_cell(threshold)}</td><td>{cat.get('timings', {}).get('total_s', 0):.1f}</td></tr>")
    if len(categories) > 1:
        agg = report.get("aggregate", {})
        rows.append("<tr><th>mean</th>" + "".join(f"<th>{_cell((agg.get(k) or {}).get('mean'))}</th>"
                                                  for k, _ in COLUMNS) + "<th></th><th></th></tr>")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>pyimgano_hydra run "
             f"{e(report.get('timestamp_utc', ''))}</title><style>{STYLE}</style></head><body>",
             f"<h1>pyimgano_hydra run</h1><p>{e(report.get('timestamp_utc', ''))} · status "
             f"<b>{e(str(report.get('status')))}</b> · model {e(str(report.get('choices', {}).get('model', '')))}"
             f" · dataset {e(str(report.get('choices', {}).get('dataset', '')))} · total "
             f"{report.get('timings', {}).get('total_s', 0):.1f} s</p>",
             f"<p>overrides: <code>{e(' '.join(report.get('overrides', [])) or '(none)')}</code></p>",
             f"<h2>Summary</h2><table><tr><th>category</th>{head}<th>threshold</th><th>total s</th></tr>"
             + "".join(rows) + "</table>"]
    for name, cat in categories.items():
        parts.append(f"<h2 id='{e(name)}'>{e(name)}</h2>")
        parts += [f"<p class='note'>note: {e(note)}</p>" for note in cat.get("notes", [])]
        if cat.get("plots"):
            parts.append("<div class='figs'>" + "".join(_img(p, f"{name} {Path(p).stem}") for p in cat["plots"])
                         + "</div>")
        overlays = cat.get("overlays", [])[:TOP_OVERLAYS]
        if overlays:
            parts.append("<h3>Most anomalous test images</h3><div class='overlays'>"
                         + "".join(_img(p, f"{name} {Path(p).stem}") for p in overlays) + "</div>")
    parts.append("<h2>Config</h2><pre>" + e(yaml.safe_dump(config, sort_keys=False)) + "</pre></body></html>")
    return "\n".join(parts)


def write_report_html(path: str | Path, report: dict, config: dict) -> Path:
    # an undecodable file-name byte (lone surrogate) goes back to its byte, as in the JSON files
    return write_bytes_atomic(path, report_html(report, config).encode("utf-8", "surrogateescape"))
