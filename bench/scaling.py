"""Fit and test time of our PatchCore as the training set doubles (50 … 800 images).

Not part of CI. Each size runs in its own subprocess (bench/peer_drivers/ours_driver.py,
the same driver bench/peers.py uses), on nested training sets drawn from MT_Free and one
fixed small test set (20 held-out normals + 20 defect images). Prints the table and
writes it to the "Scaling" section of docs/BENCHMARKS.md.

    nice -n 10 python bench/scaling.py
    nice -n 10 python bench/scaling.py --sizes 50 100 --no-write      # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _mtd_split import default_mtd_root, scaling_split  # noqa: E402
from _doc import DOC, write_section  # noqa: E402
from peers import run_one  # noqa: E402

SECTION = "## Scaling"
FIGURE = DOC.parent / "img" / "scaling.png"


def table(rows: list[dict]) -> str:
    lines = ["| train images | fit s | fit ms / train image | fit growth vs previous "
             "| test s | test img/s | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    prev = None
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['n']} | failed: {r.get('error', '')[:80]} | | | | | |")
            continue
        growth = "—" if prev is None else f"×{r['fit_s'] / prev['fit_s']:.2f} (data ×{r['n'] / prev['n']:.0f})"
        lines.append(f"| {r['n']} | {r['fit_s']:.1f} | {1000 * r['fit_s'] / r['n']:.0f} | {growth} "
                     f"| {r['test_s']:.1f} | {r['n_test'] / r['test_s']:.2f} | {r['peak_rss_mb']:.0f} |")
        prev = r
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    """Fit and test seconds against training images, log-log, with a linear reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("failed")]
    if not ok:
        return
    n = np.array([r["n"] for r in ok], dtype=float)
    fit = np.array([r["fit_s"] for r in ok])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.loglog(n, fit, "o-", label="fit s")
    ax.loglog(n, [r["test_s"] for r in ok], "s-", label=f"test s ({ok[0]['n_test']} images)")
    ax.loglog(n, fit[0] * n / n[0], "k--", lw=0.8, label="linear in train images")
    ax.set_xlabel("training images")
    ax.set_ylabel("seconds")
    ax.set_title("PatchCore fit time vs training set size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=default_mtd_root())
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--model", default="patchcore")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    args.root = args.root.resolve()
    work = args.work_dir or Path("/tmp/pyimgano_hydra_scaling") / time.strftime("%Y%m%d-%H%M%S")
    pool, split = scaling_split(args.root, args.resize, args.seed)
    sizes = [n for n in args.sizes if n <= len(pool)]
    if len(sizes) < len(args.sizes):
        print(f"[warn] only {len(pool)} training normals; skipping sizes above that")
    overrides = ["dataset=mtd", f"dataset.root={args.root}", f"dataset.resize={args.resize}",
                 f"model={args.model}", "model.device=cpu", *args.override]
    ns = argparse.Namespace(resize=args.resize, seed=args.seed)
    rows = []
    for n in sizes:
        result = run_one("ours", f"{args.model}_n{n}", {"overrides": overrides},
                         split | {"train": pool[:n]}, ns, work)
        result["n"] = n
        rows.append(result)
    cmd = "nice -n 10 python bench/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = (f"Command: `{cmd.strip()}`  \n"
              f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} CPU cores "
              f"({platform.machine()}), no GPU, shared with other jobs. Model: `{args.model}` "
              f"(defaults of conf/model/{args.model}.yaml{', ' + ' '.join(args.override) if args.override else ''}); "
              f"nested training sets from MT_Free, fixed test set of {len(split['test'])} images "
              f"(20 held-out normals + 20 defect images), resize {args.resize}. "
              f"Fit time includes image decode and resize.\n\n" + table(rows))
    print("\n" + report)
    (work / "scaling.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k not in ("scores", "maps_path")} for r in rows],
        indent=2, default=str))
    if not args.no_write:
        figure(rows, FIGURE)
        report += f"\n![fit and test time vs training images]({FIGURE.relative_to(DOC.parent).as_posix()})\n"
        write_section(SECTION, "scaling", report)
        print("[doc] wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
