"""Test images/s of one fitted MTD run: PyTorch eager vs its ONNX Runtime export (+ int8).

    python bench/runtime.py [--model patchcore] [--train-limit 100] [--limit 60] [--int8] [--threads 2]

Fits ``model`` on MTD (``dataset=mtd``: seeded split, ``--train-limit`` normals, ``--limit``
test images), exports it (``python -m pyimgano_hydra.export``), then scores the
same decoded test images in a fresh process per runtime: PyTorch eager (the inspector),
ONNX Runtime (``model.onnx``) and, with ``--int8``, ONNX Runtime on a copy whose backbone
convolutions are dynamically quantised to int8. Each child warms up on one batch, then
reports test images/s, its peak RSS and the image AUROC. Last: the installed size of what a
line PC needs (onnxruntime + numpy + Pillow) against this whole venv.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

CHILD = r"""
import json, resource, sys, time
import numpy as np
from sklearn.metrics import roc_auc_score
from pyimgano_hydra.api import load_inspector
run_dir, runtime, model_file, batch, paths_file = sys.argv[1:6]
items = json.load(open(paths_file))
inspector = load_inspector(run_dir, device="cpu")
if runtime != "torch":
    from pyimgano_hydra.export.runtime import OnnxDetector, _session
    from pathlib import Path
    size = tuple(json.load(open(Path(model_file).parent / "export.json"))["input_size"])
    inspector.detector = OnnxDetector(input_size=size, where=model_file).with_session(
        _session(Path(model_file).read_bytes(), Path(model_file)))
images = inspector.load_images([i["path"] for i in items])
batch = int(batch)
inspector.score_maps(images[:batch])  # warm-up: backbone build, session allocation
start = time.perf_counter()
scores = np.concatenate([inspector.score_maps(images[s:s + batch])[0] for s in range(0, len(images), batch)])
seconds = time.perf_counter() - start
labels = [i["label"] for i in items]
print(json.dumps({"runtime": runtime, "images": len(images), "images_per_s": len(images) / seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "image_auroc": roc_auc_score(labels, scores) if len(set(labels)) == 2 else None}))
"""


def _du(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths if p.exists() for f in ([p] if p.is_file() else p.rglob("*"))
               if f.is_file() and not f.is_symlink())


def install_sizes() -> dict:
    """Installed MB of the line-PC runtime (onnxruntime, numpy, Pillow + their libs) vs this venv."""
    import numpy
    import onnxruntime
    import PIL

    site = Path(numpy.__file__).parents[1]
    line = [Path(m.__file__).parent for m in (numpy, onnxruntime, PIL)]
    line += [p for p in site.glob("*.libs") if p.name.split(".")[0] in ("numpy", "pillow", "onnxruntime")]
    line += [p for p in site.glob("*.dist-info") if p.name.split("-")[0].lower() in ("numpy", "pillow", "onnxruntime")]
    return {"line_pc_mb": _du(line) / 2**20, "full_venv_mb": _du([Path(sys.prefix)]) / 2**20}


def quantise_backbone(model: Path, out: Path) -> Path:
    """Dynamic int8 weights for the Conv nodes only (the bank distance stays float32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model), str(out), op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8)
    (out.parent / "export.json").write_bytes((model.parent / "export.json").read_bytes())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--train-limit", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="test images (seeded subset; default all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--out", default=None, help="keep the run dir here (default: a temp dir)")
    args = parser.parse_args()
    from _mtd_split import default_mtd_root

    from pyimgano_hydra.api import run
    from pyimgano_hydra.export import export_category
    from pyimgano_hydra.runs.writers import read_jsonl

    root = default_mtd_root()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.out or tmp) / "run"
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads), MPLBACKEND="Agg")
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        run(["dataset=mtd", f"dataset.root={root}", f"dataset.limit_train={args.train_limit}",
             *([f"dataset.limit_test={args.limit}"] if args.limit else []), f"model={args.model}"],
            output_dir=run_dir)
        manifest = export_category(run_dir, "mtd")
        model = run_dir / "categories" / "mtd" / "artifacts" / "model.onnx"
        test = read_jsonl(run_dir / "categories" / "mtd" / "per_image.jsonl")  # the run's own test split
        paths = Path(tmp) / "test.json"
        paths.write_text(json.dumps([{"path": r["path"], "label": r["label"]} for r in test]))
        jobs = [("torch", model), ("onnxruntime", model)]
        if args.int8:
            (Path(tmp) / "int8").mkdir()
            jobs.append(("onnxruntime-int8", quantise_backbone(model, Path(tmp) / "int8" / "model.onnx")))
        rows = []
        for runtime, file in jobs:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), runtime, str(file),
                                   str(args.batch_size), str(paths)], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{runtime} failed: {proc.stderr.strip().splitlines()[-1]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["images_per_s"]
    print(f"MTD, model={args.model}, {args.train_limit} train / {len(test)} test images at "
          f"{manifest.input_size[0]}px, OMP_NUM_THREADS={args.threads}, batch {args.batch_size}")
    print(f"{'runtime':<18} {'img/s':>7} {'vs eager':>8} {'peak RSS MB':>11} {'img AUROC':>9}")
    for r in rows:
        auroc = "-" if r["image_auroc"] is None else f"{r['image_auroc']:.4f}"
        print(f"{r['runtime']:<18} {r['images_per_s']:>7.2f} {r['images_per_s'] / base:>7.2f}x "
              f"{r['peak_rss_mb']:>11.0f} {auroc:>9}")
    sizes = install_sizes()
    print(f"line PC install (onnxruntime + numpy + Pillow, installed): {sizes['line_pc_mb']:.0f} MB; "
          f"this full venv: {sizes['full_venv_mb']:.0f} MB")


if __name__ == "__main__":
    main()
