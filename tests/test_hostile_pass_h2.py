"""Attacker pass H2: hostile lab-side inputs (resumed runs, sweeps, launchers, caches, signals) that
still run code, crash, hang, lose a run or mis-report."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, TINY, forge_kept, interrupted_copy, pythonpath, run_cli




def _status(run_dir):
    return json.loads((run_dir / "status.json").read_text())["status"]


def _set(section, key, value):
    def change(record):
        record[section][key] = value
    return change


@pytest.mark.parametrize("change", [_set("metrics", "image_auroc", 10**400), _set("metrics", "n_normal", 10**400),
                                    _set("timings", "fit_s", 10**400), _set("threshold", "value", 10**400)],
                         ids=["metric-huge-int", "count-metric-huge-int", "fit_s-huge-int", "threshold-huge-int"])
def test_resumed_run_names_a_kept_huge_int(trained, tmp_path, change):
    """A kept category's report.json holding an integer too large for a float (``10**400``: valid JSON,
    Python parses it). Observed: exit 1 with "error: job [...]: OverflowError: int too large to convert
    to float", naming neither the file nor the key; for a metric (raised in ``app.aggregate`` after the
    try block) status.json is even left "running" by a process that is gone. Expected: the kept
    report.json refused in one line naming it, non-zero exit, the run never left "running"."""
    run_dir = interrupted_copy(trained, tmp_path / "run")
    forged = forge_kept(run_dir, change)
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert str(forged) in proc.stderr, proc.stderr[-500:]
    assert _status(run_dir) != "running", (run_dir / "status.json").read_text()


@pytest.mark.parametrize("value", ["1.0", True, {"mean": 1.0}, [1.0]], ids=["str", "bool", "dict", "list"])
def test_resumed_run_never_records_a_forged_metric_type(trained, tmp_path, value):
    """``category_result`` checks only that ``metrics`` is an object: a kept ``image_auroc`` of
    ``"1.0"`` / ``true`` / ``{"mean": 1.0}`` / ``[1.0]`` goes verbatim into the new top-level report.json
    (``categories.weave.metrics.image_auroc``), the run exits 0 "completed" (the console shows "–" or, for
    ``true``, "1.0000"; the aggregate silently drops or counts it). Expected (docs/WORKBENCH.md: a kept
    category's report.json has "its fields of the right types"): refused in one line naming the file,
    non-zero exit, the run not recorded as completed."""
    run_dir = interrupted_copy(trained, tmp_path / "run")
    forged = forge_kept(run_dir, _set("metrics", "image_auroc", value))
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    assert proc.returncode != 0 and str(forged) in proc.stderr, (proc.returncode, proc.stderr[-500:])
    assert _status(run_dir) != "completed"


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A feature cache dir filled by one TINY run (entries ``<2 hex>/<key>.npz``, ``backbones/<key>.txt``)."""
    root = tmp_path_factory.mktemp("warm")
    proc = run_cli([*TINY, f"cache.dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "cache"


def _prepared_cache(warm_cache, tmp_path, pattern, forge, first_only=False):
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    paths = sorted(cache.glob(pattern))
    assert paths, pattern
    for path in paths[:1] if first_only else paths:
        path.unlink()
        forge(path)
    return cache


def _run_with_cache(cache, tmp_path, timeout=60):
    try:
        return run_cli([*TINY, f"cache.dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run blocked on the prepared cache {cache}")


@pytest.mark.parametrize("pattern", ["[0-9a-f][0-9a-f]/*.npz", "backbones/*.txt"], ids=["entry", "backbone-record"])
def test_a_cache_entry_that_is_a_fifo_never_hangs_the_run(warm_cache, tmp_path, pattern):
    """A shared feature cache prepared with FIFOs in place of its entries (``<2 hex>/<key>.npz``: read by
    ``FeatureCache.get`` with ``np.load(path)``) or of the backbone record (``backbones/<key>.txt``: read
    by ``backbone_key`` with ``Path.read_text``): both open the FIFO blocking and wait forever
    (observed: "fit features 0/12 img in 56.1s", killed by ``timeout 60``). Expected: a special file in
    the cache is a miss (features recomputed) or refused in one line naming it; never a hang."""
    cache = _prepared_cache(warm_cache, tmp_path, pattern, os.mkfifo)
    proc = _run_with_cache(cache, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    # the error line names the entry (the job line quotes cache.dir itself: not enough)
    assert proc.returncode == 0 or str(cache) + os.sep in proc.stderr, proc.stderr[-800:]


def _wrong_shape(path):
    import numpy as np

    np.savez(path, **{"blocks.2": np.zeros((40, 4, 4), np.float32), "blocks.4": np.zeros((112, 8, 8), np.float32)})


def _wrong_layers(path):
    import numpy as np

    np.savez(path, x=np.zeros(3))


def _huge_declared_shape(path):
    """An npz whose ``blocks.2.npy`` header declares a (10**7, 10**6) float32 array (36 TiB) over 64 bytes."""
    import io
    import zipfile

    import numpy as np

    def npy(shape):
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
        return buffer.getvalue() + bytes(64)

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("blocks.2.npy", npy((10**7, 10**6)))
        archive.writestr("blocks.4.npy", npy((112, 8, 8)))


@pytest.mark.parametrize("forge", [_wrong_shape, _wrong_layers, _huge_declared_shape],
                         ids=["wrong-shape", "wrong-layer-names", "huge-declared-shape"])
def test_a_cache_entry_of_the_wrong_shape_is_not_trusted(warm_cache, tmp_path, forge):
    """Cache entries that are valid npz files holding other arrays (one entry's ``blocks.2`` of 4x4 instead
    of 16x16; or only an array ``x``): ``map_images`` stacks them unchecked. Observed: the run fails with
    "error: job [...]: ValueError: all input arrays must have the same shape" / "KeyError: 'blocks.2'",
    naming neither the cache nor the entry (status.json "failed"); a header declaring a 36 TiB array:
    "error: job [...]: numpy._core._exceptions._ArrayMemoryError: Unable to allocate 36.4 TiB ..."
    (``FeatureCache.get`` catches OSError/ValueError/EOFError/BadZipFile, not MemoryError). Expected: an entry that does not
    hold the layers and shapes the backbone gives is a miss (recomputed, the run completes), or at
    least refused in one line naming the cache entry."""
    cache = _prepared_cache(warm_cache, tmp_path, "[0-9a-f][0-9a-f]/*.npz", forge, first_only=True)
    proc = _run_with_cache(cache, tmp_path, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    # the error line names the entry (the job line quotes cache.dir itself: not enough)
    assert proc.returncode == 0 or str(cache) + os.sep in proc.stderr, proc.stderr[-800:]


def _tree_digest(root):
    """{relative path: bytes} of every file and folder under ``root`` (a completed run's record)."""
    out = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


OPTUNA = ["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1", *TINY[:3]]


def test_optuna_storage_is_never_written_into_a_completed_run(trained, tmp_path):
    """``hydra.sweeper.storage=sqlite:///<completed run>/categories/weave/optuna.db``: the sweep runs
    and sqlite creates ``optuna.db`` inside the completed run's category folder (the job log, the
    sweep dir and ``hydra.output_subdir`` are refused there: "a log is never written into another
    run"). Expected: refused in one line naming hydra.sweeper.storage, the completed run unchanged."""
    run_dir = tmp_path / "done"
    shutil.copytree(trained, run_dir)
    before = _tree_digest(run_dir)
    proc = run_cli([*OPTUNA, f"hydra.sweeper.storage=sqlite:///{run_dir}/categories/weave/optuna.db",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert _tree_digest(run_dir) == before, sorted(set(_tree_digest(run_dir)) - set(before))
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("kind", ["report-json", "garbage", "fifo"])
def test_optuna_storage_that_is_not_a_database_is_named(trained, tmp_path, kind):
    """``hydra.sweeper.storage=sqlite:///<a file that is no sqlite database>`` (a run's report.json, a
    text file, a FIFO). Observed: exit 1 with the one line "error: (Background on this error at:
    https://sqlalche.me/e/14/4xp6)" (the last line of SQLAlchemy's message), naming neither the key nor
    the file. Expected: one line naming hydra.sweeper.storage (or the file), non-zero exit, no hang."""
    if kind == "report-json":
        target = tmp_path / "done" / "report.json"
        shutil.copytree(trained, tmp_path / "done")
    elif kind == "garbage":
        target = tmp_path / "garbage.db"
        target.write_text("garbage\n")
    else:
        target = tmp_path / "fifo.db"
        os.mkfifo(target)
    before = target.read_bytes() if kind != "fifo" else None
    try:
        proc = run_cli([*OPTUNA, f"hydra.sweeper.storage=sqlite:///{target}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sweep blocked on {target}")
    assert kind == "fifo" or target.read_bytes() == before
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert "hydra.sweeper.storage" in proc.stderr or str(target) in proc.stderr.splitlines()[-1], proc.stderr[-500:]


def test_optuna_prepared_study_is_named(tmp_path):
    """A prepared Optuna storage whose study ``patchcore`` (the preset's study_name) already holds a
    trial with ``model.coreset_ratio`` as a categorical parameter (the preset searches an interval).
    Observed: exit 1 with "error: ValueError: Cannot set different distribution kind to the same
    parameter name.", naming neither hydra.sweeper.storage, the study nor the file. Expected: one line
    naming the storage (or key), non-zero exit, no traceback."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    db = tmp_path / "prepared.db"
    study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"model.coreset_ratio": "x"},
        distributions={"model.coreset_ratio": optuna.distributions.CategoricalDistribution(["x"])}, value=1.0))
    proc = run_cli([*OPTUNA, f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "hydra.sweeper" in last or str(db) in last, last


def _booby_trapped(trained, tmp_path):
    """A completed run dir that also ships modules named like the app's dependencies, each leaving a marker."""
    run_dir = tmp_path / "received"
    shutil.copytree(trained, run_dir)
    markers = tmp_path / "markers"
    markers.mkdir()
    for name in ("sklearn", "matplotlib", "timm", "scipy"):
        (run_dir / f"{name}.py").write_text(f"open({str(markers / name)!r}, 'w').close()\n")
    (run_dir / "hydra_plugins" / "evil").mkdir(parents=True)
    (run_dir / "hydra_plugins" / "evil" / "__init__.py").write_text(
        f"open({str(markers / 'hydra_plugins')!r}, 'w').close()\n")
    return run_dir, markers


def test_ray_launcher_started_inside_a_run_dir_imports_nothing_from_it(trained, tmp_path):
    """``cd <received run dir>; python -m pyimgano_hydra --multirun hydra/launcher=ray_local ...`` (sweep dir
    elsewhere). The app drops the working dir from its own ``sys.path`` and sets PYTHONSAFEPATH, but
    Ray puts the driver's working dir on each worker's ``sys.path``: the job in the Ray worker imported
    the run dir's ``sklearn.py`` and ``matplotlib.py`` and its ``hydra_plugins/evil`` (observed markers
    sklearn, matplotlib, hydra_plugins; "warning: job 0 failed: ... ImportError('evil sklearn')").
    Expected (docs/WORKBENCH.md "Trust model": the app started inside a run dir imports nothing from
    it): no marker."""
    run_dir, markers = _booby_trapped(trained, tmp_path)
    try:
        proc = run_cli(["--multirun", "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=1", *TINY,
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=run_dir, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("Ray did not start in time here")
    assert sorted(p.name for p in markers.iterdir()) == [], proc.stderr[-800:]


def test_submitit_folder_is_never_written_into_a_completed_run(trained, tmp_path):
    """``hydra/launcher=submitit_local 'hydra.launcher.submitit_folder=<completed run>/categories/weave/%j'``:
    the sweep exits 0 and submitit writes ``<pid>/<pid>_submitted.pkl``, ``_result.pkl`` and the job's
    ``_log.out`` / ``_log.err`` into the completed run's category folder (plus an empty ``%j/``); the
    job log, sweep dir and output_subdir are refused there. Expected: refused in one line naming
    hydra.launcher.submitit_folder, the completed run unchanged."""
    run_dir = tmp_path / "done"
    shutil.copytree(trained, run_dir)
    before = _tree_digest(run_dir)
    proc = run_cli(["--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f"hydra.launcher.submitit_folder={run_dir}/categories/weave/%j"], timeout=300)
    assert _tree_digest(run_dir) == before, sorted(set(_tree_digest(run_dir)) - set(before))
    assert proc.returncode != 0 and "hydra.launcher.submitit_folder" in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("inside", ["", "categories/weave"], ids=["run-root", "category-folder"])
def test_cache_dir_is_never_written_into_a_completed_run(trained, tmp_path, inside):
    """``cache.dir=<completed run>`` (or its ``categories/weave``): the run completes and the feature
    cache writes ``<2 hex>/<key>.npz`` entries, ``backbones/`` and ``.locks/`` into the completed run
    (observed: ``categories/weave/75/750fc77...npz``). The job log, the sweep dir and output_subdir are
    refused there ("a log is never written into another run"). Expected: refused in one line naming
    cache.dir (or the cache turned off with a warning), the completed run unchanged."""
    run_dir = tmp_path / "done"
    shutil.copytree(trained, run_dir)
    before = _tree_digest(run_dir)
    proc = run_cli([*TINY, f"cache.dir={run_dir / inside}", f"hydra.run.dir={tmp_path / 'new'}"], timeout=300)
    assert _tree_digest(run_dir) == before, sorted(set(_tree_digest(run_dir)) - set(before))[:5]
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_to_a_joblib_sweep_marks_its_running_jobs_interrupted(tmp_path, signum):
    """``python -m pyimgano_hydra --multirun hydra/launcher=joblib hydra.launcher.n_jobs=2 ...``, the signal
    sent to the launching process only (``kill <pid>``, as a scheduler or a supervisor does) while both
    jobs fit. Observed: exit 143 / 130 / 129 with "interrupted: SIGTERM; the run marked interrupted in
    its status.json", but the loky workers are torn down without running their handlers: both job dirs
    keep status.json "running" (pid of a dead worker). (Ctrl-C to the whole group left one of the two
    "running" in 2 of 4 tries.) Expected: every started job's status.json "interrupted"."""
    import glob
    import signal
    import time

    sweep = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=pythonpath(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", "--multirun", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", *TINY[:3], "cache.enabled=false",
                             "model.coreset_ratio=0.2,0.3", f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP)])
    try:
        deadline = time.time() + 60
        while len(glob.glob(f"{sweep}/*/status.json")) < 2 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # both jobs are fitting
        proc.send_signal(getattr(signal, signum))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(3)
    states = {p: json.loads(open(p).read())["status"] for p in glob.glob(f"{sweep}/*/status.json")}
    assert len(states) == 2 and proc.returncode != 0, (proc.returncode, states, err[-500:])
    assert set(states.values()) == {"interrupted"}, (states, err[-300:])


def test_resumed_run_never_completes_with_a_kept_category_missing_its_inspector(trained, tmp_path):
    """An interrupted run whose finished category ``weave`` has its report.json (naming
    ``"inspector": "inspector.pt"``) but no ``inspector.pt``: ``finished_categories`` keeps it on the
    report alone, the resumed run exits 0 and records "completed" with
    ``categories.weave.inspector = categories/weave/inspector.pt``; infer on it then says "error:
    .../categories/weave/inspector.pt: missing; the run dir is incomplete". Expected: a kept category
    whose named files are missing is redone (or refused in one line naming it), never recorded as a
    completed run without its model."""
    run_dir = interrupted_copy(trained, tmp_path / "run")
    (run_dir / "categories" / "weave" / "inspector.pt").unlink()
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    if proc.returncode == 0:
        assert (run_dir / "categories" / "weave" / "inspector.pt").is_file(), "completed without its inspector"
    else:
        assert _status(run_dir) != "completed" and "inspector.pt" in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_hydra_logging_handler_never_truncates_a_completed_run(trained, tmp_path, mode):
    """``'+hydra.hydra_logging.handlers.f={class:logging.FileHandler,filename:<completed run>/report.json,mode:w}'
    'hydra.hydra_logging.root.handlers=[console,f]'``: the app refuses it ("error:
    hydra.hydra_logging.handlers.f.filename=...: lies inside the run dir ...; a log is never written into
    another run"), but only after Hydra configured its own logging, and ``FileHandler(mode="w")`` already
    truncated the completed run's report.json to 0 bytes (the run is lost). The check refuses the job
    log's handlers before they open (status.json survives ``hydra.job_logging``), not Hydra's.
    Expected: the completed run's record unchanged."""
    run_dir = tmp_path / "done"
    shutil.copytree(trained, run_dir)
    before = _tree_digest(run_dir)
    where = [f"hydra.run.dir={tmp_path / 'new'}"] if mode == "run" else \
        ["--multirun", "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    # --multirun first: argparse takes the overrides after it
    proc = run_cli([*where[:-1], *TINY, where[-1],
                    f"+hydra.hydra_logging.handlers.f={{class:logging.FileHandler,filename:{run_dir}/report.json,mode:w}}",
                    "hydra.hydra_logging.root.handlers=[console,f]"], timeout=300)
    assert proc.returncode != 0 and "hydra.hydra_logging.handlers.f" in proc.stderr, proc.stderr[-500:]
    assert (run_dir / "report.json").stat().st_size > 0, "the completed run's report.json was truncated"
    assert _tree_digest(run_dir) == before


SIGTERM_AFTER_REPORT = """
import os, signal, sys
from pathlib import Path
import pyimgano_hydra.app as app
real = app.write_json_atomic
def patched(path, obj):
    out = real(path, obj)
    run_dir = os.path.realpath(sys.argv[-1].split("=", 1)[1])  # the app writes through its held folder
    if Path(path).name == "report.json" and os.path.realpath(Path(path).parent) == run_dir:
        os.kill(os.getpid(), signal.SIGTERM)  # after report.json, before status.json says completed
    return out
app.write_json_atomic = patched
from pyimgano_hydra.__main__ import main
main()
"""


def test_sigterm_between_report_and_status_never_loses_the_run(tmp_path):
    """SIGTERM arriving after the run's report.json is written and before ``write_status(COMPLETED)``
    (``app._run``: that code runs after the ``running(...)`` / ``sigterm_as_interrupt()`` block, so the
    entry point's handler raises there). Reproduced by sending it from a wrapped ``write_json_atomic``.
    Observed: exit 143, "interrupted: SIGTERM; the run marked interrupted in its status.json", but
    status.json stays "running" (the dead pid) while report.json says "completed"; infer then refuses
    it ("the run is interrupted ... not completed") and a re-run refuses to take it over ("already holds
    a run (interrupted)"): the finished run is lost. Expected: either completed (status.json
    "completed") or interrupted and resumable; never both refused."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=pythonpath(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    first = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_REPORT, *TINY, f"hydra.run.dir={run_dir}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode != 0, "the wrapped SIGTERM did not fire"
    if _status(run_dir) == "completed":
        return
    again = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    assert again.returncode == 0 and _status(run_dir) == "completed", (
        _status(run_dir), first.stderr[-300:], again.stderr[-300:])


def test_ray_temp_dir_is_never_written_into_a_completed_run(trained, tmp_path):
    """``hydra/launcher=ray_local +hydra.launcher.ray.init._temp_dir=<completed run>/categories/weave/r``: the
    sweep exits 0 and Ray writes its session tree (``session_latest``, ``session_<date>/logs``, sockets)
    into the completed run's category folder. Expected: refused in one line naming the key, the
    completed run unchanged."""
    run_dir = tmp_path / "done"
    shutil.copytree(trained, run_dir)
    before = _tree_digest(run_dir)
    try:
        proc = run_cli(["--multirun", "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=1", *TINY,
                        f"hydra.sweep.dir={tmp_path / 'sweep'}",
                        f"+hydra.launcher.ray.init._temp_dir={run_dir}/categories/weave/r"], timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("Ray did not start in time here")
    after = _tree_digest(run_dir)
    assert after == before, sorted(set(after) - set(before))[:5]
    assert proc.returncode != 0 and "_temp_dir" in proc.stderr, proc.stderr[-500:]


def test_a_prepared_cache_never_writes_through_its_folder_symlinks(trained, warm_cache, tmp_path):
    """A shared cache dir prepared with its folders (``.locks``, ``backbones`` and every ``<2 hex>`` entry
    folder) as symlinks to a completed run's ``categories/weave``: the run completes and writes the
    entries ``<key>.npz``, the lock files and the backbone record through the links into the completed
    run (``entries()`` skips symlinked folders for eviction, ``put``/``_lock``/``backbone_key`` do not).
    Expected: the completed run unchanged (links in the cache refused, or the cache turned off)."""
    run_dir = tmp_path / "done"
    shutil.copytree(trained, run_dir)
    before = _tree_digest(run_dir)
    cache = tmp_path / "cache"
    cache.mkdir()
    for folder in warm_cache.iterdir():
        if folder.is_dir():
            (cache / folder.name).symlink_to(run_dir / "categories" / "weave")
    proc = _run_with_cache(cache, tmp_path, timeout=300)
    after = _tree_digest(run_dir)
    assert after == before, sorted(set(after) - set(before))[:5]
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("key", ["dataset.n_train", "dataset.n_test_good"])
def test_a_huge_synthetic_dataset_size_is_refused_not_run(tmp_path, key):
    """``dataset.n_train=1000000000000000000000000000000`` (the synthetic dataset's size; its schema checks
    only ``>= 1``): the app starts generating 10**30 images and runs until killed (observed: nothing
    printed for 45 s, then "interrupted: SIGTERM" from ``timeout``). ``dataset.image_size=10**30`` is
    refused ("must be in 64..8192"). Expected: refused in one line naming the key, no hang."""
    try:
        proc = run_cli([*TINY, f"{key}=1000000000000000000000000000000", f"hydra.run.dir={tmp_path / 'run'}"],
                       env={"PYIMGANO_CACHE": str(tmp_path / "cache")}, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{key}=10**30 ran for 60 s instead of being refused")
    assert proc.returncode != 0 and key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-500:]


SIGTERM_IN_HTML = """
import os, signal
import pyimgano_hydra.app as app
real = app.write_report_html
def patched(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # after status.json says completed, while report.html is drawn
    return real(*args, **kwargs)
app.write_report_html = patched
from pyimgano_hydra.__main__ import main
main()
"""


def test_sigterm_while_writing_report_html_never_misreports_the_run(tmp_path):
    """SIGTERM while report.html is written (after report.json and status.json "completed"): the
    entry point prints "interrupted: SIGTERM; the run marked interrupted in its status.json" and exits
    143, while status.json says "completed" (the console line names a state the run is not in).
    Expected: the console and exit code agree with status.json (a completed run says so; or the line
    does not claim it was marked interrupted)."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=pythonpath(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-c", SIGTERM_IN_HTML, *TINY, f"hydra.run.dir={run_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if _status(run_dir) == "completed":
        assert "marked interrupted" not in proc.stderr, (proc.returncode, proc.stderr[-300:])
