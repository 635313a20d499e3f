"""Attacker pass I2: new lab-side variants (paths, launchers, resumes, signals) that write into or lose a run."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import TINY, forge_kept, interrupted_copy, run_cli, small_png, start_cli, wait_for


def _digest(run_dir: Path) -> dict:
    """Every file of a run dir (relative path -> sha256): what a completed run's record is."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.is_symlink()}


def _entries(run_dir: Path) -> set:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")}


def test_cache_dir_dotdot_through_a_missing_folder_into_a_completed_run(trained, tmp_path):
    """``cache.dir=<tmp>/missing/../<completed run>/fc``: ``foreign_run`` walks the unnormalised path,
    whose parents do not exist (``missing`` is not there yet), so it finds no run; the cache then
    creates ``missing`` and writes its entries, locks and backbone records into the completed run.
    Expected: refused in one line naming cache.dir, non-zero exit, nothing added to the run."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _entries(done)
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}", "cache.enabled=true",
                    f"cache.dir={tmp_path}/missing/../done/fc"], timeout=120)
    assert _entries(done) == before, sorted(_entries(done) - before)[:5]
    assert proc.returncode != 0 and "cache.dir" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-500:]


def test_submitit_folder_dotdot_through_a_missing_folder_into_a_completed_run(trained, tmp_path):
    """``hydra.launcher.submitit_folder=<tmp>/missing/../<completed run>/sub``: ``_check_sweep_files`` ->
    ``foreign_run`` sees no run on the unnormalised path (``missing`` does not exist yet); submitit
    creates it and writes its job pickles and logs into ``<completed run>/sub``; the sweep exits 0.
    Expected: refused in one line naming hydra.launcher.submitit_folder before any job; nothing added."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _entries(done)
    proc = run_cli(["--multirun", *TINY, "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f"hydra.launcher.submitit_folder={tmp_path}/missing/../done/sub"], timeout=180)
    assert _entries(done) == before, sorted(_entries(done) - before)[:5]
    assert proc.returncode != 0 and "submitit_folder" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-500:]


@pytest.mark.parametrize("swap", ["categories", "run-dir"])
def test_a_run_dir_swapped_for_a_link_to_a_completed_run_while_fitting(trained, tmp_path, swap):
    """A run started into a new dir; once its status.json says ``running`` (before it made
    ``categories/``), ``<new>/categories`` is created as a symlink to a completed run's ``categories``
    (or the dir is renamed away and a symlink to the completed run put in its place). The run wrote
    its category's report.json, inspector.pt, plots (and its status.json, config.json, report.json)
    through the link: the completed run's record changed. Expected: the completed run unchanged
    (a run never writes through a link in its own dir; it stops with one line instead)."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _digest(done)
    new = tmp_path / "new"
    proc = start_cli([*TINY, f"hydra.run.dir={new}"])
    try:
        assert wait_for(new / "status.json"), "the run never started"
        if swap == "categories":
            os.symlink(done / "categories", new / "categories")
        else:
            os.rename(new, tmp_path / "moved")
            os.symlink(done, new)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    changed = sorted(k for k in before if _digest(done).get(k) != before[k])
    assert not changed and _entries(done) >= set(before), (changed, err[-300:])


@pytest.mark.parametrize("how", ["dataset.root", "PYIMGANO_CACHE"])
def test_synthetic_dataset_generated_into_a_completed_run(trained, tmp_path, how):
    """``dataset.root=<completed run>/syn`` (or ``PYIMGANO_CACHE=<completed run>/c``, the synthetic
    root's default) with ``cache.enabled=false``: the synthetic dataset (hundreds of PNGs and a stamp)
    is generated inside the completed run and the run exits 0 (``cache.dir`` there is refused, the
    dataset root is not checked). Expected (docs/WORKBENCH.md: "A run writes only into its own dir"):
    refused in one line naming dataset.root, nothing added to the completed run."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _entries(done)
    args = [*TINY, f"hydra.run.dir={tmp_path / 'new'}", "cache.enabled=false"]
    env = {}
    if how == "dataset.root":
        args.append(f"dataset.root={done}/syn")
    else:
        env["PYIMGANO_CACHE"] = f"{done}/c"
    proc = run_cli(args, env=env, timeout=120)
    assert _entries(done) == before, sorted(_entries(done) - before)[:3]
    assert proc.returncode != 0 and "dataset.root" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-500:]


@pytest.mark.parametrize("scheme", ["sqlite+pysqlite:///", "sqlite:///"])
def test_optuna_storage_dialect_spelling_into_a_completed_run(trained, tmp_path, scheme):
    """``hydra.sweeper.storage=sqlite+pysqlite:///<completed run>/study.db``: ``_check_sweep_files`` only
    looks at values starting ``sqlite:///``; SQLAlchemy's ``sqlite+pysqlite`` dialect spelling of the
    same database is not checked, and Optuna creates its study database inside the completed run
    (the sweep exits 0). Expected: refused in one line naming hydra.sweeper.storage, nothing added
    (the plain ``sqlite:///`` spelling, refused today, is the control)."""
    done = shutil.copytree(trained, tmp_path / "done")
    before = _entries(done)
    proc = run_cli(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={scheme}{done}/study.db"],
                   timeout=120)
    assert _entries(done) == before, sorted(_entries(done) - before)[:3]
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-500:]


def _plant_plugins(run_dir: Path, marker: Path) -> None:
    """A received run dir that also ships a ``hydra_plugins/`` package whose import leaves ``marker``."""
    (run_dir / "hydra_plugins").mkdir()
    (run_dir / "hydra_plugins" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


@pytest.mark.parametrize("key", ["working_dir", "py_modules"])
def test_ray_runtime_env_names_a_received_run_dir(trained, tmp_path, key):
    """``hydra/launcher=ray_local +hydra.launcher.ray.init.runtime_env.working_dir=<received run dir>``
    (started from a clean folder): Ray ships the run dir to its workers and puts it first on their
    ``sys.path``; the workers import the run dir's ``hydra_plugins/__init__.py`` (the marker file is
    written), then fail with a multi-line worker traceback. The same as the refused "Ray launched
    inside a run dir", by another key. Expected: refused in one line naming the key before Ray starts;
    nothing from the run dir runs."""
    run_dir = shutil.copytree(trained, tmp_path / "received")
    marker = tmp_path / "PWNED"
    _plant_plugins(run_dir, marker)
    value = str(run_dir) if key == "working_dir" else f"[{run_dir}/hydra_plugins]"
    proc = run_cli(["--multirun", *TINY, "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=1",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", f"+hydra.launcher.ray.init.runtime_env.{key}={value}"],
                   cwd=tmp_path, timeout=150)
    assert not marker.exists(), "the received run dir's hydra_plugins/__init__.py ran in a Ray worker"
    assert proc.returncode != 0 and "runtime_env" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-500:]


def _status(run_dir: Path) -> str:
    return json.loads((run_dir / "status.json").read_text())["status"]


def _resume_completes_only_what_infer_loads(trained, run_dir: Path, tmp_path: Path, named: str) -> None:
    """Resume ``run_dir``: completed only if infer then loads it; otherwise refused naming ``named``."""
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=150)
    if proc.returncode == 0:
        check = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'inf'}"],
                        module="pyimgano_hydra.infer", timeout=120)
        assert check.returncode == 0, ("the resume completed a run infer refuses", check.stderr[-300:])
    else:
        assert _status(run_dir) != "completed" and named in proc.stderr, proc.stderr[-300:]


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"\x80\x04K\x01."], ids=["empty", "text", "pickle"])
def test_resumed_run_keeps_a_broken_inspector_as_completed(trained, tmp_path, content):
    """A requeued run whose kept category's ``inspector.pt`` is empty / not a torch file / a bare
    pickle (report.json intact): ``finished_categories`` only checks that the named inspector
    ``is_file()``, keeps the category, and the resume exits 0 with status.json ``completed``; infer then
    refuses the run ("inspector.pt: not a readable torch file (EOFError)"). Expected: the category
    redone (as for a missing inspector) or the resume refused in one line naming the file, never a
    run recorded completed that infer cannot load."""
    run_dir = interrupted_copy(trained, tmp_path / "run")
    (run_dir / "categories" / "weave" / "inspector.pt").write_bytes(content)
    _resume_completes_only_what_infer_loads(trained, run_dir, tmp_path, "inspector.pt")


def test_run_dir_dotdot_through_a_missing_folder_onto_an_unclaimed_completed_run(trained, tmp_path):
    """A completed run without ``.claim.json`` (made before claims, or copied without it) and
    ``hydra.run.dir=<tmp>/missing/../done``: ``_claim`` checks the run markers on the unnormalised path
    before creating ``missing`` (none "exists"), then mkdir makes the path real and the exclusive
    ``.claim.json`` succeeds; Hydra rewrites the completed run's ``.hydra/config.yaml``,
    ``overrides.yaml`` and ``hydra.yaml`` before the app refuses ("already holds a run (completed)").
    The plain ``hydra.run.dir=<tmp>/done`` is refused before anything is written. Expected: the same
    for the ``..`` spelling: the completed run's record unchanged."""
    done = shutil.copytree(trained, tmp_path / "done")
    (done / ".claim.json").unlink()
    before = _digest(done)
    proc = run_cli([*TINY, "model.coreset_ratio=0.3", f"hydra.run.dir={tmp_path}/missing/../done"], timeout=120)
    changed = sorted(k for k in before if _digest(done).get(k) != before[k])
    assert not changed, (changed, proc.stderr[-300:])
    assert proc.returncode != 0 and "hydra.run.dir" in proc.stderr, proc.stderr[-300:]


def test_sweep_dir_dotdot_through_a_missing_folder_onto_an_unclaimed_completed_run(trained, tmp_path):
    """As above for ``--multirun hydra.sweep.dir=<tmp>/missing/../done``: the "must be empty" and
    marker checks see no dir, the claim succeeds, and the whole sweep (job dir ``0``,
    ``multirun.yaml``, ``sweep.json``, ``leaderboard.*``, ``.leaderboard.lock``) is written into the
    completed run; exit 0. Expected: refused in one line naming hydra.sweep.dir, nothing added."""
    done = shutil.copytree(trained, tmp_path / "done")
    (done / ".claim.json").unlink()
    before = _entries(done)
    proc = run_cli(["--multirun", *TINY, f"hydra.sweep.dir={tmp_path}/missing/../done"], timeout=120)
    assert _entries(done) - {".claim.json"} == before, sorted(_entries(done) - before)[:6]
    assert proc.returncode != 0 and "hydra.sweep.dir" in proc.stderr, proc.stderr[-300:]


def test_sweep_log_file_names_job_0s_dir_and_job_1_appends_to_its_completed_record(tmp_path):
    """``--multirun ... hydra.job_logging.handlers.file.filename=${hydra.sweep.dir}/0/config.json``:
    ``_check_log_files`` probes job 0 only (its own dir: allowed) and before any job ran (no run there
    yet). Job 0 completes (config.json replaced atomically); job 1's Hydra then opens job 0's
    config.json for append and writes its whole log into that completed run (config.json no longer
    JSON); exit 0. Expected: a log file every job shares, or one inside another job's dir, refused in
    one line naming the key before any job; a completed job's files never change."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", *TINY, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}",
                    "hydra.job_logging.handlers.file.filename=${hydra.sweep.dir}/0/config.json",
                    "model.coreset_ratio=0.2,0.3"], timeout=150)
    if (sweep / "0" / "config.json").exists():
        json.loads((sweep / "0" / "config.json").read_text())  # job 0's record intact
    assert proc.returncode != 0 and "hydra.job_logging.handlers.file.filename" in proc.stderr, proc.stderr[-300:]


def test_resumed_run_with_a_long_kept_plots_list_completes_a_report_infer_refuses(trained, tmp_path):
    """A requeued run whose kept category's report.json (62 MB, under the 64 MB read limit) lists one
    existing file (a 150-character name in the category folder) 400,000 times under ``plots``: every
    entry passes ``category_result`` and the ``is_file`` check, the resume exits 0 ``completed``, and the
    new top-level report.json (entries prefixed ``categories/weave/`` and indented) is ~71 MB: infer
    then refuses the completed run ("report.json: larger than 64 MB; not a run-dir file"). Expected:
    the kept list refused (or bounded) in one line naming the file; never a run recorded completed
    whose report.json its own reader refuses."""
    run_dir = interrupted_copy(trained, tmp_path / "run")
    name = "p" * 150
    (run_dir / "categories" / "weave" / name).write_bytes(b"")

    def change(record):
        record["plots"] = [name] * 400_000
    forge_kept(run_dir, change)
    _resume_completes_only_what_infer_loads(trained, run_dir, tmp_path, "report.json")
