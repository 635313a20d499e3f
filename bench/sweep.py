"""Wall time of one run vs. an 8-detector PyOD sweep on the same data, with and without the
feature cache. Prints numbers only (no asserts); goal: the cached sweep <= 1.5x one run.

    python bench/sweep.py                                  # synthetic, all categories, 8 PyOD models
    python bench/sweep.py --category weave --limit-train 20 --limit-test 20
    python bench/sweep.py --launcher joblib --n-jobs 2     # the sweeps in parallel worker processes
    OMP_NUM_THREADS=1 python bench/sweep.py ...            # state it when you pin threads
    python bench/sweep.py --repeat 3 ...                   # best of 3 per row (a shared, noisy box)

Every timed command is the real CLI in a fresh process (imports included), run from a
temporary directory; the synthetic dataset is generated once before timing. Each row gives
wall time and the CPU seconds of the process (less moved by other load on the box). Sweeps:
  sweep, no cache   cache.enabled=false
  sweep, cold cache a fresh cache dir: the first job extracts, the other jobs read
  sweep, warm cache the same cache dir again (what a repeated sweep costs)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "ecod,copod,iforest,knn,lof,pca,hbos,ocsvm"


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run(args: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of one CLI command in a fresh process."""
    t, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): pyimgano_hydra {' '.join(args)}")
    return wall, cpu


def newest_sweep(cwd: Path) -> Path:
    return max((cwd / "outputs" / "multirun").iterdir(), key=lambda p: p.stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model options")
    parser.add_argument("--category", default="all")
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--launcher", choices=("basic", "joblib"), default="basic")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every command")
    parser.add_argument("--repeat", type=int, default=1, help="run each row this often, keep the fastest")
    opts = parser.parse_args()

    models = opts.models.split(",")
    missing = [m for m in models if not (REPO / "conf" / "model" / f"{m}.yaml").is_file()]
    if missing:
        raise SystemExit(f"no conf/model/{{{','.join(missing)}}}.yaml: pick models from "
                         f"{sorted(p.stem for p in (REPO / 'conf' / 'model').glob('*.yaml'))}")

    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYIMGANO_CACHE=str(work / "data"))
    data = [f"dataset.category={opts.category}"]
    data += [f"dataset.limit_train={opts.limit_train}"] if opts.limit_train else []
    data += [f"dataset.limit_test={opts.limit_test}"] if opts.limit_test else []
    data += opts.extra
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={opts.n_jobs}"] if opts.launcher == "joblib" else []
    cache_dir = work / "features"

    subprocess.run([sys.executable, "-c", "from pyimgano_hydra.api import compose_config;"
                    "from pyimgano_hydra.instantiate import build;"
                    f"d = build(compose_config({data!r}).dataset, 'dataset'); [d.split(c) for c in d.categories()]"],
                   cwd=work, env=env, check=True)

    print(f"bench/sweep.py  models={','.join(models)}  data={' '.join(data)}  launcher={opts.launcher}"
          f"{f' n_jobs={opts.n_jobs}' if launcher else ''}  cpus={os.cpu_count()}"
          f"  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    rows = []
    one = min(run([f"model={models[0]}", "cache.enabled=false", *data], work, env) for _ in range(opts.repeat))
    rows.append(("one run (no cache)", *one, None))
    sweep = ["--multirun", *launcher, f"model={','.join(models)}", *data]
    for label, extra in (("sweep, no cache", lambda i: ["cache.enabled=false"]),
                         ("sweep, cold cache", lambda i: [f"cache.dir={cache_dir}{i}"]),
                         ("sweep, warm cache", lambda i: [f"cache.dir={cache_dir}{i}"])):
        best = min(run([*sweep, *extra(i)], work, env) for i in range(opts.repeat))
        board = json.loads((newest_sweep(work) / "leaderboard.json").read_text())
        rows.append((label, *best, board))

    print(f"{'':20s} {'wall s':>8s} {'x one run':>10s} {'CPU s':>7s} {'x one run':>10s}  {'jobs ok':>7s}  "
          "best (image_auroc)")
    for label, wall, cpu, board in rows:
        ok = best = ""
        if board:
            ok = f"{board['counts'].get('completed', 0)}/{len(board['jobs'])}"
            top = board["jobs"][0]
            value = (top["aggregate"].get("image_auroc") or {}).get("mean")
            best = f"{top['name']} ({value:.4f})" if value is not None else "-"
        print(f"{label:20s} {wall:8.1f} {wall / one[0]:10.2f} {cpu:7.1f} {cpu / one[1]:10.2f}  {ok:>7s}  {best}")
    same = [{r["name"]: (r["aggregate"].get("image_auroc") or {}).get("mean") for r in b["jobs"]}
            for *_, b in rows[1:]]
    print("identical metrics with and without the cache:", same[0] == same[1] == same[2])
    print(f"work dir (outputs, cache): {work}")


if __name__ == "__main__":
    main()
