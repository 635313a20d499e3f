"""Attacker pass L: config sources, imports, sweep pins and claimed-then-failed runs."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import TINY, copy_run, pythonpath, run_cli, start_cli, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _evil_preset(path, victim):
    """A preset whose callback, once instantiated by Hydra, truncates ``victim`` (a FileHandler opened
    with mode w: a target no blocklist refuses)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: logging.FileHandler\n"
                    f"      filename: {victim}\n      mode: w\n")


def _changes(run_dir, before):
    """(files added, files changed) in ``run_dir`` since ``before`` (a ``_snapshot``)."""
    after = _snapshot(run_dir)
    return sorted(set(after) - set(before)), sorted(k for k in before if after.get(k) != before[k])


def _snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_preset_linked_into_a_run_dir_from_an_own_config_folder_is_never_composed(trained, tmp_path):
    """The user's own config folder (``--config-dir myconf``, not in a run dir) holds
    ``experiment/x.yaml``, a symlink to a YAML file inside a received run dir. Observed: rc 0, the run
    dir's YAML composed and its ``hydra.callbacks.evil`` instantiated (a FileHandler mode w truncated
    another completed run's report.json). config_sources.check_source resolves the config *folder*
    only, never the files Hydra reads through links in it. Expected: refused before composing (or the
    linked file never read), the completed run unchanged."""
    received = copy_run(trained, tmp_path, "received")
    victim = copy_run(trained, tmp_path, "victim")
    before = _snapshot(victim)
    _evil_preset(received / ".hydra" / "evil.yaml", victim / "report.json")
    conf = tmp_path / "myconf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "x.yaml").symlink_to(received / ".hydra" / "evil.yaml")
    proc = run_cli([f"--config-dir={conf}", "experiment=x", *TINY, f"hydra.run.dir={tmp_path / 'new'}"],
                   timeout=300)
    assert _snapshot(victim) == before, "a run dir's YAML was composed and its callback instantiated"
    assert proc.returncode != 0 and "x" in proc.stderr


@pytest.mark.parametrize("how", ["config-dir", "searchpath"])
def test_a_run_dir_inside_an_own_config_folder_is_never_composed(trained, tmp_path, how):
    """A received run dir saved inside the user's own config folder (``myconf/experiment/recv``), and
    ``experiment=recv/.hydra/evil``: no ``..``, no absolute path, the config folder is not in a run
    dir, so config_sources.check_config_arguments passes it. Observed: rc 0, the run dir's YAML composed
    and its callback instantiated (another completed run's report.json truncated). Expected: a group
    option read from inside a run dir is refused before composing; the completed run unchanged."""
    conf = tmp_path / "myconf"
    received = copy_run(trained, conf / "experiment", "recv")
    victim = copy_run(trained, tmp_path, "victim")
    before = _snapshot(victim)
    _evil_preset(received / ".hydra" / "evil.yaml", victim / "report.json")
    source = [f"--config-dir={conf}"] if how == "config-dir" else [f"hydra.searchpath=[file://{conf}]"]
    proc = run_cli([*source, "experiment=recv/.hydra/evil", *TINY, f"hydra.run.dir={tmp_path / 'new'}"],
                   cwd=tmp_path, timeout=300)
    assert _snapshot(victim) == before, "a run dir's YAML was composed and its callback instantiated"
    assert proc.returncode != 0 and "recv" in proc.stderr


def test_a_sweep_jobs_dir_made_a_link_before_the_job_starts_never_writes_into_a_completed_run(trained, tmp_path):
    """``--multirun seed=0,1`` with the default subdir; while job 0 runs, ``<sweep>/1_1`` (job 1's dir
    name) is created as a symlink to a completed run. The sweep dir itself is the pinned one, so
    sweep_dir_swapped passes; Hydra makes the job dir with exist_ok through the link and writes its
    ``.hydra/`` record before any check of the job. Expected: the completed run unchanged (job 1
    refused, its dir never written through a link)."""
    done = copy_run(trained, tmp_path, "done")
    before = _snapshot(done)
    sweep = tmp_path / "sweep"
    proc = start_cli(["--multirun", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    try:
        assert wait_for(sweep / "0_0" / "status.json"), "job 0 never started"
        os.symlink(done, sweep / "1_1")
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    changed = sorted(k for k, v in _snapshot(done).items() if before.get(k) != v)
    assert not changed, (changed, err[-400:])


def test_a_run_claimed_then_failed_by_hydra_under_hydra_full_error_is_recorded_failed(tmp_path):
    """``HYDRA_FULL_ERROR=1`` (the debugging mode the one-line errors point to) and a
    ``hydra.job_logging`` handler class that does not exist: Hydra fails after ClaimRunDir claimed the
    run dir. console.one_line_errors marks such a run failed only when it folds the error; under
    HYDRA_FULL_ERROR=1 it just yields, so the run dir is left with a ``.claim.json`` and no
    ``status.json`` (observed), an unrecorded run. Expected: status.json ``failed`` (a traceback is
    allowed in this mode)."""
    run_dir = tmp_path / "new"
    proc = run_cli([*TINY, "hydra.job_logging.handlers.console.class=logging.NoSuchHandler",
                    f"hydra.run.dir={run_dir}"], env={"HYDRA_FULL_ERROR": "1"}, timeout=120)
    assert proc.returncode != 0
    assert (run_dir / ".claim.json").exists()
    assert (run_dir / "status.json").exists(), sorted(os.listdir(run_dir))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


def test_a_run_dir_swapped_for_a_link_leaves_its_real_folder_marked_running(tmp_path):
    """A run's dir is renamed away (``moved``) once its status.json says running and replaced by a link
    to an empty folder. The run stops with one line (rc 2), rightly writing nothing through the link;
    but app._run re-raises without writing the run's status anywhere, so the run's real folder keeps
    ``status: running`` after the process ended (observed). Expected: the moved run recorded failed
    or interrupted (written through the pinned folder, not the path), never left ``running``."""
    new, moved, empty = tmp_path / "new", tmp_path / "moved", tmp_path / "empty"
    empty.mkdir()
    proc = start_cli([*TINY, f"hydra.run.dir={new}"])
    try:
        assert wait_for(new / "status.json"), "the run never started"
        os.rename(new, moved)
        os.symlink(empty, new)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert not os.listdir(empty)
    status = json.loads((moved / "status.json").read_text())
    assert status["status"] != "running", (status, err[-300:])


def test_an_infer_output_dir_swapped_for_a_link_never_writes_into_a_completed_run(trained, tmp_path):
    """infer into a new ``hydra.run.dir`` (``save_maps=true``, enough images to take a moment); once
    its status.json says running, the dir is renamed away and replaced by a link to a completed run.
    infer.py pins nothing (the app's RunDir.identity/still_here have no infer counterpart): observed
    rc 0, the completed run's status.json overwritten with infer's, ``maps/*.npy`` and predictions
    written into it, and the real infer dir left ``running``. Expected: the completed run unchanged
    (infer stops with one line, or finishes in the folder it made)."""
    from PIL import Image
    import numpy as np

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(images / f"{i:03d}.png")
    done = copy_run(trained, tmp_path, "done")
    before = _snapshot(done)
    new = tmp_path / "new"
    import subprocess

    from conftest import REPO

    env = dict(os.environ, PYTHONPATH=pythonpath(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained}", f"input={images}",
                             "save_maps=true", "batch_size=2", f"hydra.run.dir={new}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(new / "status.json"), "infer never started"
        os.rename(new, tmp_path / "moved")
        os.symlink(done, new)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    added, changed = _changes(done, before)
    assert not added and not changed, (added[:4], changed, proc.returncode, err[-300:])
    # infer writes into the folder it made, wherever it now lies: its results are not lost either
    moved = tmp_path / "moved"
    status = json.loads((moved / "status.json").read_text())["status"]
    assert status == "completed" and (moved / "predictions.jsonl").is_file() or proc.returncode != 0, status


def test_an_export_whose_category_folder_is_swapped_for_a_link_never_writes_into_another_run(trained, tmp_path):
    """export of run A; 60% into it (export.export_category checks for links once, via trust.no_links,
    then spends seconds in torch.onnx.export; the swap lands there), A's category folder is
    renamed away and replaced by a link to completed run B's ``categories/weave``. Observed: rc 0, A's
    model.onnx and export.json written into B's category (B now ships a model fitted on A's data, its
    manifest's sha256 matching), nothing in A. Expected: B unchanged; the export stops with one line,
    rc != 0 (paths checked again, or written relative to a pinned folder)."""
    import subprocess
    import time

    from conftest import REPO

    run_a = copy_run(trained, tmp_path, "a")
    done = copy_run(trained, tmp_path, "b")
    before = _snapshot(done)
    env = dict(os.environ, PYTHONPATH=pythonpath(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    started = time.monotonic()  # how long an export takes here: the swap lands at 60% of it
    subprocess.run([sys.executable, "-m", "pyimgano_hydra.export", f"run_dir={copy_run(trained, tmp_path, 'c')}"],
                   cwd=REPO, env=env, capture_output=True, timeout=180, check=True)
    baseline = time.monotonic() - started
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.export", f"run_dir={run_a}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.6 * baseline)  # past the link checks, inside torch.onnx.export
        os.rename(run_a / "categories" / "weave", tmp_path / "moved")
        os.symlink(done / "categories" / "weave", run_a / "categories" / "weave")
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    added, changed = _changes(done, before)
    assert not added and not changed, (added, changed, proc.returncode, err[-300:])
    # the export lands in the category folder it checked, wherever that now lies (or is refused)
    assert proc.returncode != 0 or (tmp_path / "moved" / "artifacts" / "export.json").is_file(), err[-300:]


def test_a_sweep_job_failed_by_hydra_before_the_app_is_recorded_failed(tmp_path):
    """``--multirun seed=0,1 +hydra.job.env_set.X=${oc.env:NOPE}``: Hydra makes job 0's dir, writes its
    ``.hydra/`` record and log, then fails resolving ``env_set`` before the app runs. The sweep root is
    marked failed (console.one_line_errors -> mark_unstarted_runs), but job 0's dir (a run dir with a
    Hydra record, which the leaderboard reads) is left with no status.json at all (observed). Expected:
    every job dir Hydra made is recorded failed (or removed), none left without a status."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}",
                    "+hydra.job.env_set.X=${oc.env:PYIMGANO_PASS_L_UNSET_VAR}"], timeout=180)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    # since pass Z6 a config sets no such variable: refused before Hydra makes any job dir
    assert "hydra.job.env_set.X" in proc.stderr.strip().splitlines()[-1], proc.stderr[-500:]
    for job in [p for p in sweep.iterdir() if p.is_dir()] if sweep.exists() else []:
        assert (job / "status.json").exists(), (job.name, sorted(os.listdir(job)))
        assert json.loads((job / "status.json").read_text())["status"] == "failed"


def test_a_relative_pythonpath_entry_never_imports_from_the_run_dir_infer_runs_in(trained, tmp_path):
    """A user whose shell exports a relative ``PYTHONPATH=src`` (a common dev setup) runs
    ``python -m pyimgano_hydra.infer run_dir=.`` inside a received run dir that ships ``src/torch.py``.
    Python makes ``src`` absolute against the working dir: ``<run dir>/src`` sits on sys.path ahead of
    site-packages. pyimgano_hydra/__init__.py _no_imports_from_a_run_dir drops only entries equal to
    the working dir, not entries inside the run dir: observed, the run dir's torch.py ran (marker
    written). Expected: no sys.path entry inside a run dir is kept; the marker absent."""
    received = copy_run(trained, tmp_path, "received")
    marker = tmp_path / "MARKER"
    (received / "src").mkdir()
    (received / "src" / "torch.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 120, 120)).save(image)
    from conftest import REPO

    proc = run_cli(["run_dir=.", f"input={image}", f"hydra.run.dir={tmp_path / 'out'}"], cwd=received,
                   module="pyimgano_hydra.infer", env={"PYTHONPATH": f"{REPO}{os.pathsep}src"}, timeout=180)
    assert not marker.exists(), "a module shipped in the run dir ran"
    assert proc.returncode == 0, proc.stderr[-300:]


@pytest.mark.parametrize("launcher", ["basic"])  # joblib: tests/test_held_folders.py
def test_a_sweep_dir_swapped_for_a_link_to_a_completed_run_gets_no_job_status_written_into_it(trained, tmp_path,
                                                                                              launcher):
    """``--multirun seed=0,1`` (default subdir; basic or joblib launcher); while job 0 runs, the sweep dir
    is renamed away and replaced by a link to a completed run. Job 0's app rightly stops without
    writing through the link; then sweep/callbacks.LeaderboardCallback.on_job_end sees the job FAILED
    with no status.json at ``<sweep>/0_0`` (the path, through the link) and writes one: observed, the
    completed run gained ``0_0/status.json`` (with joblib ``1_1/status.json`` too), while the jobs'
    real dirs (under the moved sweep dir) stay ``running``. on_job_end checks sweep_dir_swapped only
    for the leaderboard. Expected: the completed run unchanged."""
    done = copy_run(trained, tmp_path, "done")
    before = _snapshot(done)
    sweep = tmp_path / "sweep"
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = start_cli(["--multirun", *extra, *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    try:
        assert wait_for(sweep / "0_0" / "status.json"), "job 0 never started"
        os.rename(sweep, tmp_path / "moved")
        os.symlink(done, sweep)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    added, changed = _changes(done, before)
    assert not added and not changed, (added, changed, err[-300:])


def test_a_matplotlibrc_in_the_working_dir_does_not_lose_a_training_run(tmp_path):
    """The app started in a received dataset folder (not a run dir, so the working dir is kept) that
    ships a ``matplotlibrc`` with ``text.usetex: True`` (no LaTeX installed). Observed: the model is
    fitted and scored, then the plots raise ``RuntimeError: Failed to process string with tex`` and the
    whole run is recorded failed, its results lost (the K fix imports matplotlib from / only when the
    working dir is a run dir). Expected: a plot that cannot be drawn is skipped with a warning (as
    report.html is), the run completed with its report.json."""
    if shutil.which("latex"):
        pytest.skip("latex is installed: usetex works")
    folder = tmp_path / "dataset_folder"
    folder.mkdir()
    (folder / "matplotlibrc").write_text("text.usetex: True\n")
    run_dir = tmp_path / "new"
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], cwd=folder, env={"MPLBACKEND": ""}, timeout=300)
    status = json.loads((run_dir / "status.json").read_text())
    assert proc.returncode == 0 and status["status"] == "completed", (status, proc.stderr[-300:])


@pytest.fixture(scope="module")
def trained_hbos(tmp_path_factory):
    """One completed TINY run of PyOD's HBOS on features (its scoring code is compiled by numba)."""
    root = tmp_path_factory.mktemp("trained_hbos") / "run"
    proc = run_cli(["model=hbos", "dataset.category=weave", "dataset.limit_train=12", "dataset.limit_test=12",
                    f"hydra.run.dir={root}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_a_numba_config_in_the_run_dir_infer_runs_in_never_unpickles_its_files(trained_hbos, tmp_path):
    """A received HBOS run dir ships ``.numba_config.yaml`` (``cache_dir: nbc``) and, under ``nbc/``, a
    numba cache index named for PyOD's ``hbos._calculate_outlier_scores`` holding a pickle. The user
    runs ``python -m pyimgano_hydra.infer run_dir=.`` inside it (the documented way is safe: the working
    dir is dropped from sys.path). numba reads ``./.numba_config.yaml`` when it is imported
    (NUMBA_CACHE_DIR=nbc), models/pyod_on_features.keep_compiled_code turns caching on as the inspector
    refits HBOS, and numba ``pickle.load``s the index: observed, the pickle ran (marker written), rc 0.
    (The index's folder name is ``models_<sha1 of PyOD's install folder>``: guessable for common
    installs.) Expected: nothing in the run dir is unpickled; no marker."""
    import hashlib
    import pickle

    import pyod.models.hbos as hbos

    received = copy_run(trained_hbos, tmp_path, "received")
    marker = tmp_path / "MARKER"
    source_dir = os.path.dirname(os.path.abspath(hbos.__file__))
    index_dir = received / "nbc" / f"{os.path.basename(source_dir)}_{hashlib.sha1(source_dir.encode()).hexdigest()}"
    index_dir.mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    names = {p.name for p in (Path(source_dir) / "__pycache__").glob(f"hbos.*.{py}.nbi")}
    names.add(f"hbos._calculate_outlier_scores-269.{py}.nbi")
    for name in names:
        (index_dir / name).write_bytes(pickle.dumps(Payload()))
    (received / ".numba_config.yaml").write_text("cache_dir: nbc\n")
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (120, 120, 120)).save(image)
    run_cli(["run_dir=.", f"input={image}", f"hydra.run.dir={tmp_path / 'out'}"], cwd=received,
            module="pyimgano_hydra.infer", timeout=300)
    assert not marker.exists(), "a pickle shipped in the run dir was unpickled (numba cache index)"
