"""Pass X3 (sweeps, the python api, export): variants not in the earlier passes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, run_cli


def _board(sweep: Path) -> dict:
    return json.loads((sweep / "leaderboard.json").read_text())


# ---- sweeps ------------------------------------------------------------------------------------
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_swept_value_whose_interpolation_does_not_resolve_is_one_line_and_on_the_board(tmp_path, launcher):
    """``--multirun ... "tag='${oc.env:UNSET}',ok"`` (a typo'd variable in one swept value). The single
    run of that value is refused in one line ("error: job [...]: InterpolationResolutionError ...").
    In the sweep, the value is resolved again inside ``hydra.sweep.subdir``
    (``${pyimgano_job_dir:...,${hydra.overrides.task}}``): observed, LeaderboardCallback.on_multirun_start
    fails (a UserWarning; no sweep.json, so no plan), then the launch of job 0 dies with a raw
    172-line traceback (InterpolationResolutionError, full_key hydra.sweep.subdir), and
    leaderboard.json lists no job at all (counts {}): neither the failed job nor the one never
    started; the sweep root keeps its .claim.json but gets no status.json (a plain job failure
    records the sweep root ``failed``). Expected: rc != 0, one line naming the value/key (no
    Traceback), the board holding a row for each planned job (failed / not_started), the sweep root
    recorded failed.
    With ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` and ``tag=ok,'${oc.env:UNSET}'``: one line, but
    the board's only row is job 0 (``tag=ok``, which never ran) recorded "failed (...'UNSET' not found)
    before the job started": the other job's error pinned on it; job 1 has no row. Expected there too:
    a row per job, and no job blamed for another's value."""
    sweep = tmp_path / "sweep"
    values = "tag='${oc.env:PYIMGANO_X3_UNSET_VARIABLE}',ok" if launcher == "basic" else \
        "tag=ok,'${oc.env:PYIMGANO_X3_UNSET_VARIABLE}'"
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = run_cli(["--multirun", *TINY, values, *extra,
                    f"hydra.sweep.dir={sweep}", "hydra.callbacks.leaderboard.chart=false"], timeout=180)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert "PYIMGANO_X3_UNSET_VARIABLE" in proc.stderr
    if not sweep.exists():  # refused before the sweep dir was made: no job ran, nothing to record
        return
    assert (sweep / "status.json").is_file(), sorted(os.listdir(sweep))
    assert json.loads((sweep / "status.json").read_text())["status"] == "failed"
    jobs = _board(sweep)["jobs"]
    assert len(jobs) == 2, jobs
    assert {row["status"] for row in jobs} <= {"failed", "not_started", "interrupted"}, jobs
    for row in jobs:
        if "tag=ok" in row["overrides"]:
            assert "PYIMGANO_X3_UNSET_VARIABLE" not in (row["error"] or ""), row


# ---- the python api --------------------------------------------------------------------------------
def test_api_run_into_an_existing_folder_never_replaces_the_files_already_there(tmp_path):
    """``api.run(TINY, output_dir=<an existing project folder>)`` (or ``hydra.run.dir=.`` on the line) whose
    folder already holds the user's own ``config.json`` / ``report.html`` / ``environment.json``: none of
    them is a run marker (``claim.RUN_MARKERS``), so the folder is claimed and the run's files replace
    them (observed: rc 0, the user's ``{"my": "precious"}`` config.json is now the run's config, the
    html and environment.json replaced too; nothing says so). Expected: refused in one line naming
    output_dir (as a sweep dir that is not empty is), or the user's files left as they were."""
    from pyimgano_hydra.api import run
    from pyimgano_hydra.errors import UserError

    project = tmp_path / "project"
    project.mkdir()
    mine = {"config.json": '{"my": "precious"}\n', "report.html": "<html>mine</html>\n",
            "environment.json": '{"keep": 1}\n'}
    for name, text in mine.items():
        (project / name).write_text(text)
    try:
        run(TINY, output_dir=project)
    except UserError as exc:
        assert "output_dir" in str(exc), str(exc)
    for name, text in mine.items():
        assert (project / name).read_text() == text, name


# ---- sweeps (continued) --------------------------------------------------------------------------------
@pytest.mark.parametrize("defects", ["default", "none"])
def test_a_misspelled_defects_leaderboard_metric_is_named_before_any_job(tmp_path, defects):
    """Pass V2 had ``hydra.callbacks.leaderboard.metric=image_aurroc`` refused before any job; any name
    starting ``defects_`` is still taken as given (LeaderboardCallback.on_multirun_start). A report
    holds exactly defects_pixel_f1 / _precision / _recall, defects_gt_defects_hit_share and
    defects_false_regions_per_normal_image (with defects enabled; none with ``defects=none``).
    Observed: ``metric=defects_pixel_f1x`` (a typo) runs every job, rc 0, "best: none" (an Optuna study
    would record every completed job as a failed trial, objective nan). Expected: refused in one line
    naming hydra.callbacks.leaderboard.metric before any job runs."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", *TINY, f"defects={defects}", "seed=0",
                    "hydra.callbacks.leaderboard.metric=defects_pixel_f1x", "hydra.callbacks.leaderboard.chart=false",
                    f"hydra.sweep.dir={sweep}"], timeout=180)
    assert proc.returncode != 0, proc.stderr[-800:]
    assert "hydra.callbacks.leaderboard.metric" in proc.stderr, proc.stderr[-1500:]
    assert not list(sweep.glob("0_*")), "a job ran before the unknown metric was named"


_TWO_INTERRUPTED_RUNS = """
import json, os, signal, sys, time
from pyimgano_hydra.api import run
import pyimgano_hydra.models.patchcore as patchcore

fit = patchcore.PatchCore.fit
def interrupted_fit(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C / "interrupt kernel" while the model fits
    time.sleep(0.5)
    return fit(self, *args, **kwargs)
patchcore.PatchCore.fit = interrupted_fit

for out in sys.argv[2:]:
    try:
        run(json.loads(sys.argv[1]), output_dir=out)
        print("RESULT", out, "completed", flush=True)
    except KeyboardInterrupt as exc:
        print("RESULT", out, "interrupted", type(exc).__name__, flush=True)
"""


def test_api_a_second_run_in_the_same_process_can_still_be_interrupted(tmp_path):
    """A notebook: ``api.run(...)`` stopped with Ctrl-C ("interrupt kernel"): rightly ``Interrupted`` and the
    run dir recorded interrupted. The next ``api.run(...)`` in the same kernel then ignores Ctrl-C (and
    SIGTERM): interrupt._RAISED, set by the first interrupt, is never cleared, so _raise_once swallows
    every later signal. Observed: the second run, sent SIGINT while it fits, goes on to "completed"
    (a long fit cannot be stopped short of killing the kernel). Expected: each run stops on its own
    interrupt, recorded interrupted."""
    script = tmp_path / "notebook.py"
    script.write_text(_TWO_INTERRUPTED_RUNS)
    outs = [str(tmp_path / "first"), str(tmp_path / "second")]
    from conftest import _cli_env

    proc = subprocess.run([sys.executable, str(script), json.dumps(TINY), *outs], cwd=tmp_path,
                          env=_cli_env(None), capture_output=True, text=True, timeout=180)
    results = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert results == ["interrupted", "interrupted"], (results, proc.stderr[-1500:])
    for out in outs:
        assert json.loads(Path(out, "status.json").read_text())["status"] == "interrupted", out


# ---- attacks that held (they pass now) ----------------------------------------------------------------
def test_held_rerunning_a_failed_sweep_into_its_dir_leaves_its_completed_job_as_it_was(tmp_path):
    """``--multirun model.coreset_ratio=0.2,0`` (job 1 fails), then the same command again into the same
    ``hydra.sweep.dir`` (a user "resuming" it): refused in one line before any job; job 0's record,
    the sweep's status.json and its board unchanged."""
    sweep = tmp_path / "sweep"
    args = ["--multirun", *[a for a in TINY if not a.startswith("model.coreset_ratio")], "model.coreset_ratio=0.2,0",
            f"hydra.sweep.dir={sweep}", "hydra.callbacks.leaderboard.chart=false"]
    first = run_cli(args, timeout=180)
    assert first.returncode != 0
    kept = {p: p.read_bytes() for p in [*sweep.glob("0_*/*.json"), sweep / "status.json", sweep / "leaderboard.json"]}
    assert json.loads((sweep / "status.json").read_text())["status"] == "failed"
    again = run_cli(args, timeout=180)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert "hydra.sweep.dir" in again.stderr.strip().splitlines()[-1]
    assert {p: p.read_bytes() for p in kept} == kept


def test_held_api_strided_and_masked_uint8_arrays_score_as_the_plain_array(tmp_path):
    """A negative-stride (flipped rows then flipped back), a zero-stride (np.broadcast_to) and a masked
    uint8 batch give the plain array's scores; a list of arrays or None is refused (an exception),
    never scored."""
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], timeout=180)
    assert proc.returncode == 0, proc.stderr[-800:]
    from pyimgano_hydra.api import load_inspector

    inspector = load_inspector(tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "categories" / "weave" / "per_image.jsonl").open()]
    images = inspector.load_images([r["path"] for r in rows][:2])
    base = inspector.decision_function(images)
    assert np.allclose(inspector.decision_function(images[:, ::-1][:, ::-1]), base)
    assert np.allclose(inspector.decision_function(np.ma.masked_array(images)), base)
    assert np.allclose(inspector.decision_function(np.broadcast_to(images[:1], images.shape)), base[0])
    for bad in ([images[0], images[1]], None):
        with pytest.raises(Exception):
            inspector.decision_function(bad)


# ---- export ---------------------------------------------------------------------------------------
def test_export_with_a_file_log_never_appends_through_a_log_link_in_the_working_dir(tmp_path):
    """``python -m pyimgano_hydra.export run_dir=<run> hydra/job_logging=default`` (a user wanting the
    export's log; conf/export.yaml disables it) started in a folder that holds ``__main__.log`` as a
    symlink (a received folder: the link points at any file of the user's): export.yaml's
    ``hydra.run.dir: .`` puts Hydra's file log in the working dir and it is opened through the link.
    Observed: rc 0, the linked file gains the export's log lines. The app refuses a ``<job>.log`` link in
    its run dir; expected here the same: the linked file unchanged (refused in one line, or the log
    written nowhere through a link)."""
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], timeout=180)
    assert proc.returncode == 0, proc.stderr[-800:]
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM\n")
    work = tmp_path / "received"
    work.mkdir()
    (work / "__main__.log").symlink_to(victim)
    proc = run_cli([f"run_dir={tmp_path / 'run'}", "hydra/job_logging=default"], cwd=work,
                   module="pyimgano_hydra.export", timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert victim.read_text() == "VICTIM\n", (proc.returncode, victim.read_text()[-300:])
