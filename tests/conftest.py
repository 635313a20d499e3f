"""Shared fixtures: an isolated synthetic-data cache and a helper to run the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _deliverable_signals() -> None:
    """A suite started in the background (``nohup ... &``) inherits SIGINT and SIGQUIT ignored, and
    so would every command a test starts: an operator's Ctrl-C or Ctrl-\\ that a test sends would
    never arrive (the product rightly keeps an ignored signal ignored)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


_deliverable_signals()
MTD_ROOT = REPO.parent / "shared" / "datasets" / "mtd"

# Small, fast settings for end-to-end runs on the embedded synthetic dataset.
TINY = [
    "dataset.category=weave",
    "dataset.limit_train=12",
    "dataset.limit_test=12",
    "model.coreset_ratio=0.2",
]


@pytest.fixture(scope="session", autouse=True)
def synthetic_cache(tmp_path_factory):
    """Generated datasets go to a per-session cache, never the user's home."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("PYIMGANO_CACHE")
    os.environ["PYIMGANO_CACHE"] = str(cache)
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield cache
    if old is None:
        os.environ.pop("PYIMGANO_CACHE", None)
    else:
        os.environ["PYIMGANO_CACHE"] = old


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    on a shared 2-core CI box, 2 spinning threads are ~50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pythonpath(*first) -> str:
    """``first`` then the inherited PYTHONPATH, with no empty entry (Python reads one as the working dir)."""
    entries = [*map(str, first), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.pathsep.join(e for e in entries if e)


def _cli_env(env=None) -> dict:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = pythonpath(REPO)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return full_env


def run_cli(args, cwd=None, module="pyimgano_hydra", env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` in a subprocess, importing this checkout."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=_cli_env(env),
                          capture_output=True, text=True, timeout=timeout)


def run_cli_measured(args, cwd, timeout=300, module="pyimgano_hydra") -> tuple[subprocess.CompletedProcess, int]:
    """``run_cli``; also the command's peak anonymous memory in KiB, sampled every 20 ms (RssAnon:
    VmHWM and ru_maxrss count mapped library pages, which vary by 200 MB with the page cache
    between two identical venvs)."""
    import threading
    import time

    command = [sys.executable, "-m", module, *args]
    proc = subprocess.Popen(command, cwd=cwd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    kb = next((int(line.split()[1]) for line in status if line.startswith("RssAnon:")), 0)
            except (OSError, ValueError):
                kb = 0
            peak[0] = max(peak[0], kb)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    sampler.join(1)
    return subprocess.CompletedProcess(command, proc.returncode, out, err), peak[0]


def start_cli(args, cwd=None, env=None, module="pyimgano_hydra") -> subprocess.Popen:
    """``run_cli`` started in the background (for signals and swaps while it runs)."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=_cli_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hold_ctrl_c(proc: subprocess.Popen, times: int = 1000, every: float = 0.002) -> str:
    """An operator holding Ctrl-C: SIGINT to ``proc`` every ``every`` seconds until it ends (at most
    ``times``); its stderr."""
    import signal
    import time

    for _ in range(times):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(every)
    return proc.communicate(timeout=60)[1]


def wait_for(path: Path, timeout: float = 90.0) -> bool:
    """True once ``path`` exists (a link too), False after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.lexists(path):
            return True
        time.sleep(0.005)
    return False


def pickle_that_touches(path: Path, marker: Path) -> None:
    """A pickle at ``path`` whose loading runs ``touch marker`` (the proof of code execution)."""
    import pickle

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps(Touch()))


def interrupted_copy(completed: Path, run_dir: Path) -> Path:
    """A copy of the ``completed`` run turned back into its own interrupted attempt (what a requeued
    job finds): report.json and report.html gone, status.json ``interrupted`` with the run's hash."""
    import json
    import shutil

    shutil.copytree(completed, run_dir)
    config_hash = json.loads((run_dir / "report.json").read_text())["config_hash"]
    (run_dir / "report.json").unlink()
    (run_dir / "report.html").unlink()
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted", "config_hash": config_hash,
                                                      "updated_utc": "2026-01-01T00:00:00.000+00:00"}))
    return run_dir


def trained_run(tmp_path_factory, export: bool = False, model: str | None = None) -> Path:
    """One completed TINY run (exported to ONNX with ``export``; of another ``model`` option, TINY's
    ``model.*`` settings left out): module fixtures build it once and each test forges files in a
    copy (``copy_run``)."""
    root = tmp_path_factory.mktemp(f"trained_{model}" if model else "trained") / "run"
    args = [*TINY] if model is None else [*[a for a in TINY if not a.startswith("model.")], f"model={model}"]
    proc = run_cli([*args, f"hydra.run.dir={root}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    if export:
        proc = run_cli([f"run_dir={root}"], module="pyimgano_hydra.export", timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One completed TINY run per test module, copied by each test that forges a file in it."""
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One completed TINY run exported to ONNX per test module."""
    return trained_run(tmp_path_factory, export=True)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """(a feature cache dir filled by one TINY run, that run's dir), per test module."""
    root = tmp_path_factory.mktemp("warm")
    proc = run_cli([*TINY, f"cache.dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "cache", root / "run"


def cache_entries(cache: Path) -> list[Path]:
    """The feature cache's entry files (at least one)."""
    paths = sorted(cache.glob("[0-9a-f][0-9a-f]/*.npz"))
    assert paths
    return paths


def scores_as_fresh_after_rewriting(warm: tuple, cache: Path, tmp_path: Path, shape_of) -> None:
    """Rewrite every entry of ``cache`` (a copy of ``warm``'s) as zeros of ``shape_of(stored shape)``,
    rerun ``warm``'s run on it: it scores as the fresh run did, or fails naming a cache file."""
    import json
    import os

    import numpy as np

    for entry in cache_entries(cache):
        with np.load(entry) as stored:
            arrays = {name: np.zeros(shape_of(stored[name].shape), np.float32) for name in stored.files}
        np.savez(entry, **arrays)
    proc = run_cli([*TINY, f"cache.dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], timeout=300)
    if proc.returncode != 0:
        # the job line quotes cache.dir itself: the error must name an entry (or the cache's own folder)
        assert str(cache) + os.sep in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-800:]
        return
    fresh = json.loads((warm[1] / "report.json").read_text())["categories"]["weave"]["metrics"]
    got = json.loads((tmp_path / "run" / "report.json").read_text())["categories"]["weave"]["metrics"]
    assert got["image_auroc"] == pytest.approx(fresh["image_auroc"]), (got, fresh)


def global_preset(tmp_path: Path, name: str, body: str) -> list[str]:
    """The overrides that apply ``body`` (YAML) as a received ``# @package _global_`` preset ``name``."""
    group = tmp_path / "presets" / "x"
    group.mkdir(parents=True, exist_ok=True)
    (group / f"{name}.yaml").write_text("# @package _global_\n" + body)
    return [f"hydra.searchpath=[file://{tmp_path / 'presets'}]", f"+x@_global_={name}"]


def run_status(run: Path) -> dict:
    """A run dir's status.json."""
    import json

    return json.loads((run / "status.json").read_text())


def told_study(db: Path, name: str = "patchcore") -> Path:
    """``db``: an Optuna study database made by this Optuna (maximize), one trial told 0.5."""
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{db}", direction="maximize")
    study.tell(study.ask(), 0.5)
    return db


def copy_run(trained: Path, tmp_path: Path, name: str = "run") -> Path:
    import shutil

    run_dir = tmp_path / name
    shutil.copytree(trained, run_dir)
    return run_dir


def run_score_onnx(exported: Path, *images: Path) -> subprocess.CompletedProcess:
    """examples/score_onnx.py of an exported run's weave category on ``images``, as the line PC runs it."""
    artifacts = exported / "categories" / "weave" / "artifacts"
    return subprocess.run([sys.executable, "-I", str(REPO / "examples" / "score_onnx.py"), str(artifacts),
                           *map(str, images)], capture_output=True, text=True, timeout=120)


def small_png(trained: Path) -> Path:
    """A 32x32 grey PNG beside the trained run: any image is fine as infer input."""
    from PIL import Image

    path = trained.parent / "img.png"
    if not path.exists():
        Image.new("RGB", (32, 32), (120, 120, 120)).save(path)
    return path


def forge_kept(run_dir: Path, change, category: str = "weave") -> Path:
    """Apply ``change`` to a kept category's report.json (a dict, in place); return its path."""
    import json

    path = run_dir / "categories" / category / "report.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path


def forge_inspector(run_dir: Path, change, category: str = "weave") -> Path:
    """Apply ``change`` to a category's stored inspector state (a dict) and save it as torch.save
    does; return its path."""
    import torch

    path = run_dir / "categories" / category / "inspector.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, path)
    return path


def refused_naming(path: Path, what_loaded) -> None:
    """``load_image(path)`` refuses it in a DataError naming it; else the test fails saying ``what_loaded``."""
    from pyimgano_hydra.data.images import load_image
    from pyimgano_hydra.errors import DataError

    try:
        loaded = load_image(path)
    except DataError as exc:
        assert path.name in str(exc)
        return
    pytest.fail(f"{path.name} loaded: {what_loaded(loaded)}")


def traced_peak(call):
    """(what ``call()`` returns, the peak bytes of Python and numpy allocations while it ran)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
