"""A folder above a run's paths renamed and replaced by a link while the run runs (someone who can
write that parent): the run, a sweep's jobs and the feature cache keep writing into the folders
they began in, never through the link into a completed run (the gaps pass L left open)."""
import json
import os

import pytest

from conftest import TINY, copy_run, start_cli, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _unchanged(run_dir, before, err):
    after = _snapshot(run_dir)
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not added and not changed, (added[:5], changed[:5], err[-400:])


def _swap_for_link(folder, moved_to, target):
    os.rename(folder, moved_to)
    os.symlink(target, folder)


def test_a_sweep_with_its_own_subdir_stops_before_writing_a_job_through_a_swapped_sweep_dir(trained, tmp_path):
    """``hydra.sweep.subdir=${hydra.job.num}`` (no pin check of its own): the sweep dir is swapped for
    a link to a folder whose ``1/`` is a completed run while job 0 runs; job 1 is refused in one line
    before Hydra writes its record."""
    parent = tmp_path / "elsewhere"
    done = copy_run(trained, parent, "1")
    before = _snapshot(done)
    sweep = tmp_path / "sweep"
    proc = start_cli(["--multirun", *TINY, "seed=0,1", "cache.enabled=false", f"hydra.sweep.dir={sweep}",
                      "hydra.sweep.subdir=${hydra.job.num}"])
    try:
        assert wait_for(sweep / "0" / "status.json"), "job 0 never started"
        _swap_for_link(sweep, tmp_path / "moved", parent)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    _unchanged(done, before, err)
    assert proc.returncode != 0 and "Traceback" not in err, err[-400:]
    assert "hydra.sweep.dir" in err, err[-400:]


def test_a_joblib_sweep_swapped_while_both_jobs_run_writes_nothing_through_the_link(trained, tmp_path):
    """Two jobs at once (joblib); the sweep dir is swapped for a link to a completed run while they
    run: each job goes on writing into its own (held) dir, nothing lands in the completed run, and
    no job is left ``running`` in the moved sweep dir."""
    done = copy_run(trained, tmp_path, "done")
    before = _snapshot(done)
    sweep = tmp_path / "sweep"
    proc = start_cli(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "seed=0,1",
                      "dataset.limit_test=40",
                      "cache.enabled=false", f"hydra.sweep.dir={sweep}"])
    try:
        assert wait_for(sweep / "0_0" / "status.json", 180) and wait_for(sweep / "1_1" / "status.json", 180)
        assert wait_for(sweep / "0_0" / "categories" / "weave", 180), "job 0 never began its category"
        _swap_for_link(sweep, tmp_path / "moved", done)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    _unchanged(done, before, err)
    for job in ("0_0", "1_1"):
        status = json.loads((tmp_path / "moved" / job / "status.json").read_text())["status"]
        assert status != "running", (job, err[-400:])


def test_a_folder_above_the_cache_swapped_mid_run_never_gets_a_cache_file_into_a_completed_run(trained, tmp_path):
    """``cache.dir=<shared>/fc``; once the cache has made its lock folder, ``<shared>`` is renamed away
    and replaced by a link to a folder whose ``fc`` is a completed run. The cache works in the
    folder it opened (held), so the run completes and the completed run gains no entry, lock or
    backbone record."""
    shared = tmp_path / "shared"
    elsewhere = tmp_path / "elsewhere"
    done = copy_run(trained, elsewhere, "fc")
    before = _snapshot(done)
    run_dir = tmp_path / "new"
    proc = start_cli([*TINY, "dataset.limit_train=40", f"cache.dir={shared / 'fc'}", f"hydra.run.dir={run_dir}"])
    try:
        assert wait_for(shared / "fc" / ".locks", 180), "the cache never made its lock folder"
        _swap_for_link(shared, tmp_path / "moved", elsewhere)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    _unchanged(done, before, err)
    assert proc.returncode == 0, err[-400:]
    assert list((tmp_path / "moved" / "fc").glob("[0-9a-f][0-9a-f]/*.npz")), "the cache wrote no entry"
