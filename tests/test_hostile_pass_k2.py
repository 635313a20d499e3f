"""Attacker pass K2 (lab side): takeovers, sweeps, signals and records."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (REPO, TINY, interrupted_copy, pickle_that_touches, pythonpath, run_cli, run_cli_measured,
                      start_cli)


def _status(run_dir: Path) -> str:
    return json.loads((run_dir / "status.json").read_text())["status"]


def test_resumed_run_never_records_an_inspector_path_the_kept_category_does_not_have(trained, tmp_path):
    """An interrupted run whose kept category ``weave`` names ``"inspector": "plots/x.pt"`` (a loadable
    inspector, moved there) and has no ``inspector.pt``: ``finished_categories`` checks the file the
    kept report names, keeps the category, and the resumed run exits 0, ``completed``, while its
    report.json records ``categories.weave.inspector = categories/weave/inspector.pt`` (the standard
    path, ``app._inspector_path``), which does not exist: infer then says "error: .../inspector.pt:
    missing; the run dir is incomplete". Expected: the kept category is redone (or refused in one line),
    never a completed run whose recorded inspector is missing."""
    run_dir = interrupted_copy(trained, tmp_path / "run")
    folder = run_dir / "categories" / "weave"
    (folder / "inspector.pt").rename(folder / "plots" / "x.pt")
    record = json.loads((folder / "report.json").read_text())
    record["inspector"] = "plots/x.pt"
    (folder / "report.json").write_text(json.dumps(record))
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    if proc.returncode == 0:
        recorded = json.loads((run_dir / "report.json").read_text())["categories"]["weave"]["inspector"]
        assert (run_dir / recorded).is_file(), f"completed, recording {recorded}, which is missing"
    else:
        assert _status(run_dir) != "completed" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(path.rglob("*"))}


def _wait_for(path: Path, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never wrote " + str(path)
        time.sleep(0.02)


def test_a_shared_cache_root_swapped_for_a_link_never_writes_into_a_completed_run(trained, tmp_path):
    """A shared feature cache ``cache.dir=<shared>/features`` (a link to ``<shared>/real``, checked
    once at the start by ``refuse_foreign``): whoever can write ``<shared>`` re-points the link at a
    completed run (which they cannot write) once the run has started. The run then writes its
    feature entries (``<2 hex>/<key>.npz``), ``.locks/*.lock`` and ``backbones/*.txt`` into the
    completed run: 20+ files added to its record. ``own_folder`` checks the entry folders, the lock
    and backbone folders, never the cache root itself. Expected: the cache never writes through its
    linked root into another run (turned off, or the run stopped), the completed run unchanged."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _tree(done)
    shared = tmp_path / "shared"
    (shared / "real").mkdir(parents=True)
    (shared / "features").symlink_to(shared / "real")
    run_dir = tmp_path / "new"
    proc = start_cli([*TINY, f"hydra.run.dir={run_dir}", f"cache.dir={shared / 'features'}"])
    try:
        _wait_for(run_dir / "status.json", proc)
        (shared / "swap").symlink_to(done)
        os.replace(shared / "swap", shared / "features")
        proc.communicate(timeout=300)
    finally:
        proc.kill()
    added = sorted(set(_tree(done)) - set(before))
    assert not added and _tree(done) == before, added[:5]


def test_a_sweep_dir_swapped_for_a_link_between_jobs_never_writes_into_a_completed_run(trained, tmp_path):
    """A two-job sweep into ``hydra.sweep.dir=<shared>/sweep``: once job 0 is recorded completed,
    whoever can write ``<shared>`` renames the sweep dir and puts a link to a completed run in its
    place. Job 1 then runs entirely inside the completed run (``<done>/1_.../.hydra/*``, its
    categories, status.json, report.json) and the leaderboard lands there too
    (``<done>/leaderboard.*``): the completed run's folder gains a whole job, and the sweep exits 0
    with job 1 recorded nowhere in the real sweep dir. The single-run dir is re-checked
    (``RunDir.swapped``), the sweep dir holding the next job's dir never is. Expected: the completed
    run unchanged (the sweep stops, or job 1 refuses its dir in one line)."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _tree(done)
    sweep = tmp_path / "shared" / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", "--multirun", *TINY, "seed=0,1",
                             f"hydra.sweep.dir={sweep}"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": pythonpath(REPO)})
    try:
        status = sweep / "0_0" / "status.json"
        deadline = time.monotonic() + 240
        while not (status.exists() and '"completed"' in status.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "job 0 never completed"
            time.sleep(0.01)
        os.rename(sweep, tmp_path / "shared" / "moved")
        os.symlink(done, sweep)
        proc.communicate(timeout=300)
    finally:
        proc.kill()
    added = sorted(set(_tree(done)) - set(before))
    assert not added, added[:6]


@pytest.mark.parametrize("how", ["config_dir", "searchpath"])
def test_a_run_dirs_yaml_never_adds_a_hydra_callback_that_runs_before_the_config_dir_check(trained, tmp_path, how):
    """The user points Hydra at a received run dir (``--config-dir <run dir>`` or
    ``hydra.searchpath=[file://<run dir>]``). Its ``schema/run/app.yaml`` (found before the structured
    schema) holds only a defaults list, ``- /evil@_global_``, and ``evil.yaml`` adds
    ``hydra.callbacks.evil: {_target_: numpy.load, file: <run dir>/evil.pkl, allow_pickle: true}``.
    Hydra instantiates every ``hydra.callbacks`` entry before calling any ``on_run_start``, so the
    pickle runs (``touch``) before ``ClaimRunDir._check_config_sources`` refuses the config dir
    ("lies in a run dir, whose YAML would be composed and instantiated"). Expected: nothing from the
    run dir is instantiated or unpickled."""
    received = shutil.copytree(trained, tmp_path / "received")
    marker = tmp_path / "PWNED"
    pickle_that_touches(received / "evil.pkl", marker)
    (received / "schema" / "run").mkdir(parents=True)
    (received / "schema" / "run" / "app.yaml").write_text("defaults:\n  - /evil@_global_\n")
    (received / "evil.yaml").write_text(
        f"hydra:\n  callbacks:\n    evil:\n      _target_: numpy.load\n      file: {received / 'evil.pkl'}\n"
        "      allow_pickle: true\n")
    args = [*TINY, f"hydra.run.dir={tmp_path / 'new'}"]
    args = ["--config-dir", str(received), *args] if how == "config_dir" else \
        [*args, f"hydra.searchpath=[file://{received}]"]
    proc = run_cli(args, timeout=300)
    assert not marker.exists(), ("the run dir's pickle ran", proc.returncode, proc.stderr[-300:])


@pytest.mark.parametrize("where", ["callbacks", "dataset"])
def test_rerunning_a_received_runs_hydra_config_with_config_path_runs_nothing_from_it(trained, tmp_path, where):
    """``--experimental-rerun`` is refused with "re-run with the overrides in .hydra/overrides.yaml";
    the other way to re-run a received run is ``-cp <run dir>/.hydra -cn config``. Hydra then composes
    the run dir's own ``.hydra/config.yaml`` as the primary config: its ``hydra.callbacks`` replace the
    app's (no ``ClaimRunDir``, so no claim, no config-source check either) and are instantiated, and a
    ``dataset._target_`` in it is instantiated by the app: with ``numpy.load`` of the run dir's
    ``evil.pkl`` (``allow_pickle: true``) the pickle runs (``touch``); with the callback the run even
    completes. Expected: a config path in a run dir is refused in one line (as ``--config-dir`` is),
    nothing from the run dir is instantiated or unpickled."""
    received = shutil.copytree(trained, tmp_path / "received")
    marker = tmp_path / "PWNED"
    pickle_that_touches(received / "evil.pkl", marker)
    load = f"_target_: numpy.load\n      file: {received / 'evil.pkl'}\n      allow_pickle: true\n"
    config = received / ".hydra" / "config.yaml"
    if where == "callbacks":
        config.write_text(config.read_text() + "hydra:\n  callbacks:\n    evil:\n      " + load)
    else:
        text = config.read_text().replace("dataset:\n", "dataset:\n  evil:\n    " + load.replace("      ", "    "), 1)
        config.write_text(text)
    proc = run_cli(["-cp", str(received / ".hydra"), "-cn", "config", f"hydra.run.dir={tmp_path / 'new'}"],
                   timeout=300)
    assert not marker.exists(), ("the run dir's pickle ran", proc.returncode, proc.stderr[-300:])
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]


def test_the_api_never_composes_a_search_path_in_a_run_dir(trained, tmp_path):
    """``pyimgano_hydra.api.run([..., "hydra.searchpath=[file://<received run dir>]"])``: the CLI
    refuses a search path in a run dir (``ClaimRunDir._check_config_sources``), the API composes with
    no callback and never checks it. The run dir's ``schema/run/app.yaml`` (found before the structured
    schema) adds ``dataset.evil: {_target_: numpy.load, file: <run dir>/evil.pkl, allow_pickle: true}``;
    building the dataset instantiates it, the pickle runs (``touch``) and the run completes.
    Expected: a ``UserError`` naming ``hydra.searchpath``, nothing from the run dir unpickled."""
    received = shutil.copytree(trained, tmp_path / "received")
    marker = tmp_path / "PWNED"
    pickle_that_touches(received / "evil.pkl", marker)
    (received / "schema" / "run").mkdir(parents=True)
    (received / "schema" / "run" / "app.yaml").write_text(
        f"dataset:\n  evil:\n    _target_: numpy.load\n    file: {received / 'evil.pkl'}\n    allow_pickle: true\n")
    code = ("import sys\nfrom pyimgano_hydra.api import run\nfrom pyimgano_hydra.errors import UserError\n"
            "try:\n    run(sys.argv[2:], output_dir=sys.argv[1])\n"
            "except UserError as exc:\n    print('error:', exc, file=sys.stderr); sys.exit(2)\n")
    env = {**os.environ, "PYTHONPATH": pythonpath(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "new"), *TINY,
                           f"hydra.searchpath=[file://{received}]"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert not marker.exists(), ("the run dir's pickle ran", proc.returncode, proc.stderr[-300:])
    assert proc.returncode != 0 and "hydra.searchpath" in proc.stderr, proc.stderr[-300:]


def test_an_experiment_option_with_dotdot_never_composes_a_run_dirs_yaml(trained, tmp_path):
    """``experiment=../../../<received run dir>/exp`` (a preset named by path, relative to the packaged
    ``conf/experiment``): Hydra's package source joins the option onto its folder, so the run dir's
    ``exp.yaml`` is composed (``--config-dir`` / ``hydra.searchpath`` naming a run dir are refused, this
    path is not). Its ``# @package _global_`` body adds ``hydra.callbacks.evil: {_target_: numpy.load,
    file: <run dir>/evil.pkl, allow_pickle: true}``: the pickle runs (``touch``) and the run completes,
    exit 0. Expected: refused in one line naming ``experiment``, nothing from the run dir unpickled."""
    received = shutil.copytree(trained, tmp_path / "received")
    marker = tmp_path / "PWNED"
    pickle_that_touches(received / "evil.pkl", marker)
    (received / "exp.yaml").write_text(
        f"# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: numpy.load\n"
        f"      file: {received / 'evil.pkl'}\n      allow_pickle: true\n")
    option = os.path.relpath(received / "exp", REPO / "pyimgano_hydra" / "conf" / "experiment")
    proc = run_cli([*TINY, f"experiment={option}", f"hydra.run.dir={tmp_path / 'new'}"], timeout=300)
    assert not marker.exists(), ("the run dir's pickle ran", proc.returncode, proc.stderr[-300:])
    assert proc.returncode != 0 and "experiment" in proc.stderr, proc.stderr[-300:]


@pytest.mark.parametrize("uri", ["sqlite:///{done}/mlflow.db", "{done}/mlruns"])
def test_an_mlflow_store_is_never_written_into_a_completed_run(trained, tmp_path, uri):
    """``+callbacks=mlflow hydra.callbacks.mlflow.tracking_uri=sqlite:///<completed run>/mlflow.db``
    (or a plain path, a file store MLflow accepts as a URI): ``MlflowCallback.on_job_end`` checks the
    store against other runs only for ``file:`` URIs, so MLflow creates ``mlflow.db`` (or ``mlruns/``)
    inside the completed run (as an Optuna ``sqlite:///`` storage there is refused). Expected: the
    completed run unchanged (refused in one line, or not logged with a warning)."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _tree(done)
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}", "+callbacks=mlflow",
                    f"hydra.callbacks.mlflow.tracking_uri={uri.format(done=done)}"], cwd=tmp_path,
                   env={"MLFLOW_ALLOW_FILE_STORE": "true"}, timeout=300)
    added = sorted(set(_tree(done)) - set(before))
    assert not added, (added[:4], proc.returncode, proc.stderr[-300:])


def test_mlflow_artifacts_of_a_database_store_never_land_in_a_completed_run_started_in(trained, tmp_path):
    """Started inside a received (completed) run dir with ``+callbacks=mlflow`` and a database store
    outside it (``tracking_uri=sqlite:///<elsewhere>/db``): the store passes the callback's check, but
    MLflow puts a new experiment's artifacts under ``./mlruns`` of the working dir, and
    ``log_artifacts`` copies the whole new run into ``<completed run>/mlruns/1/<id>/artifacts``.
    Expected: nothing added to the completed run."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _tree(done)
    (tmp_path / "store").mkdir()
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}", "+callbacks=mlflow",
                    f"hydra.callbacks.mlflow.tracking_uri=sqlite:///{tmp_path / 'store' / 'db'}"], cwd=done, timeout=300)
    added = sorted(set(_tree(done)) - set(before))
    assert not added, (added[:4], proc.returncode, proc.stderr[-300:])


def test_a_pkg_search_path_naming_a_run_dir_is_refused_like_a_file_one(trained, tmp_path):
    """Started from the folder holding a received run dir ``received/`` (not inside it, so the working
    dir stays on ``sys.path``), ``hydra.searchpath=[pkg://received]`` names the same folder as
    ``file://<folder>/received``, which is refused; ``_check_config_sources`` checks only ``file``
    sources. The run dir's ``schema/run/app.yaml`` adds ``dataset.evil: {_target_: numpy.load, file:
    <run dir>/evil.pkl, allow_pickle: true}``: the pickle runs (``touch``), the run completes.
    Expected: refused in one line, nothing from the run dir unpickled."""
    received = shutil.copytree(trained, tmp_path / "received")
    marker = tmp_path / "PWNED"
    pickle_that_touches(received / "evil.pkl", marker)
    (received / "schema" / "run").mkdir(parents=True)
    (received / "schema" / "run" / "app.yaml").write_text(
        f"dataset:\n  evil:\n    _target_: numpy.load\n    file: {received / 'evil.pkl'}\n    allow_pickle: true\n")
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}", "hydra.searchpath=[pkg://received]"],
                   cwd=tmp_path, timeout=300)
    assert not marker.exists(), ("the run dir's pickle ran", proc.returncode, proc.stderr[-300:])


@pytest.mark.parametrize("forge", ["sparse_2gb", "long_field", "not_utf8"])
def test_a_forged_visa_split_csv_is_one_line_naming_it_within_bounded_memory(tmp_path, forge):
    """``dataset=visa dataset.root=<attacker folder>`` whose ``split_csv/1cls.csv`` is a 2 GB sparse file
    (no byte on disk), a row with a 200,000-character field, or not UTF-8: ``VisaDataset.rows`` reads
    it with ``csv`` unchecked. The sparse file is read as one 2 GB line (peak RSS ~2.8 GB under a 6 GB
    address-space limit, "error: job [...]: MemoryError"); the others end "error: job [...]:
    _csv.Error: field larger than field limit (131072)" / "UnicodeDecodeError: 'utf-8' codec can't
    decode byte 0xff": none names the file. Expected: one line naming ``1cls.csv``, rc != 0, and a
    forged CSV never costs more than 1.5 GB."""
    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    (root / "candle").mkdir()
    csv_path = root / "split_csv" / "1cls.csv"
    if forge == "sparse_2gb":
        with open(csv_path, "wb") as fh:
            fh.truncate(2 << 30)
    elif forge == "long_field":
        csv_path.write_text("object,split,label,image,mask\ncandle,train,normal," + "a" * 200000 + ",\n")
    else:
        csv_path.write_bytes(b"\xff\xfe\x00bad")
    proc, peak_kib = run_cli_measured(["dataset=visa", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'run'}"],
                                   cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert peak_kib < 1.5 * 1024 * 1024, (f"peak RSS {peak_kib >> 10} MB", proc.stderr[-300:])
    assert proc.returncode != 0 and len(lines) == 1 and "1cls.csv" in lines[0], proc.stderr[-300:]


def test_a_fifo_stamp_in_a_shared_synthetic_cache_never_hangs_the_run(tmp_path):
    """``PYIMGANO_CACHE`` names a shared folder; the synthetic dataset lives under
    ``$PYIMGANO_CACHE/synthetic/v2_s128_n40-12-4`` and ``ensure_generated`` checks its
    ``pyimgano_synthetic.json`` stamp with ``read_text()``. Whoever can write the shared folder makes
    the stamp a FIFO: the run (status ``running``) waits on it forever (killed after 60 s).
    Expected: the stamp read as a regular file only (a FIFO is a stale entry: regenerated, or one
    line naming it), never waited on."""
    shared = tmp_path / "shared"
    folder = shared / "synthetic" / "v2_s128_n40-12-4"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pyimgano_synthetic.json")
    try:
        proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], env={"PYIMGANO_CACHE": str(shared)}, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the run waited on the FIFO stamp for 60 s")
    assert proc.returncode == 0 or len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-300:]


def test_a_shared_cache_entry_flagged_encrypted_is_a_miss_not_a_failed_run(trained, tmp_path):
    """A shared feature cache whose entries (``<2 hex>/<key>.npz``, the ones a TINY run reads) have the
    zip "encrypted" flag set in their headers: ``read_entry`` lets ``zipfile`` raise ``RuntimeError``
    ("File <ZipInfo filename='blocks.2.npy' ...> is encrypted, password required for extraction"), which
    it does not catch, and the run ends ``failed`` at its first read. The docs: an entry that is not a
    regular, uncompressed npz of plain numbers is recomputed. Expected: a miss; the run completes."""
    cache = shutil.copytree(Path(os.environ["PYIMGANO_CACHE"]) / "features", tmp_path / "cache")
    entries = list(cache.glob("*/*.npz"))
    assert entries, "the trained run left no cache entry"
    for path in entries:
        data = bytearray(path.read_bytes())
        for magic, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(magic)
            while at >= 0:
                data[at + flag_at] |= 1
                at = data.find(magic, at + 4)
        path.write_bytes(bytes(data))
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'run'}", f"cache.dir={cache}"], timeout=300)
    assert proc.returncode == 0 and _status(tmp_path / "run") == "completed", proc.stderr[-300:]


def test_a_sigterm_during_sweep_job_1_is_recorded_in_the_leaderboard_and_sweep_status(tmp_path):
    """A basic 3-job sweep gets SIGTERM while job 1 runs: job 1's status.json says ``interrupted``
    (right), but the sweep's ``leaderboard.json`` (rewritten after each job, "so every board sees it")
    was last written after job 0 and is never rewritten: it lists job 1 as ``not_started`` (counts
    ``{completed: 1, not_started: 2}``), and the sweep root's status.json says ``interrupted (SIGTERM)
    before it started`` although job 0 completed. Expected: the board counts job 1 ``interrupted`` and
    the sweep's status does not claim it never started."""
    sweep = tmp_path / "sweep"
    proc = start_cli(["--multirun", *TINY, "seed=0,1,2", f"hydra.sweep.dir={sweep}"])
    try:
        deadline = time.monotonic() + 240
        while not list(sweep.glob("1_*/status.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "job 1 never started"
            time.sleep(0.02)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    recorded = {int(p.name.split("_")[0]): _status(p) for p in sweep.glob("*_*") if (p / "status.json").exists()}
    assert "running" not in recorded.values(), recorded  # SIGTERM in job 1, or between jobs
    board = json.loads((sweep / "leaderboard.json").read_text())
    rows = {row["job"]: row["status"] for row in board["jobs"]}
    sweep_status = json.loads((sweep / "status.json").read_text())
    assert all(rows.get(job) == state for job, state in recorded.items()), (board["counts"], rows, recorded)
    assert "before it started" not in str(sweep_status.get("error")), sweep_status


def test_a_job_failing_between_the_claim_and_the_app_is_recorded_failed(tmp_path):
    """``hydra.job_logging.root.level=BOGUS``: the claim succeeds (``.claim.json``), then Hydra's
    ``run_job`` fails configuring the job log: "error: ValueError: Unable to configure root logger"
    (no key named), and the dir keeps only ``.claim.json`` and an empty log: no status.json at all (a
    SIGTERM at that moment is recorded ``interrupted``; a failure is recorded nothing), and the dir is
    refused for any later run. Expected: status.json ``failed`` (or the bad value refused before the
    claim), one line naming ``hydra.job_logging``."""
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}", "hydra.job_logging.root.level=BOGUS"], timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "hydra.job_logging" in lines[0], proc.stderr[-300:]
    assert not run_dir.exists() or _status(run_dir) == "failed", sorted(p.name for p in run_dir.iterdir())
