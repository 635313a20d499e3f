"""Attacker pass M2 (lab side): hostile config folders, dataset folders, feature caches and signals
around ``python -m pyimgano_hydra``. Each test fails on the code it was written against."""
from __future__ import annotations

import os

import pytest

from conftest import TINY, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _received_run_with_callback(folder, marker):
    """A received run dir (its status.json marks it one) whose YAML adds a Hydra callback touching
    ``marker`` once instantiated (``pathlib.Path.touch``: a target no blocklist refuses)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "status.json").write_text('{"status": "completed"}')
    (folder / ".hydra" / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: pathlib.Path.touch\n"
        f"      self: {marker}\n")


def test_a_config_folder_linking_to_the_folder_above_a_run_dir_never_composes_it(tmp_path):
    """The user's own config folder holds a link to a downloads folder (not itself a run dir, nor
    inside one) that holds a received run: the walk for run dirs does not follow the link, Hydra
    does (``experiment=recv/run1/.hydra/evil``), and instantiates the run's callback."""
    marker = tmp_path / "PWNED"
    _received_run_with_callback(tmp_path / "downloads" / "run1", marker)
    mine = tmp_path / "mine"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "recv").symlink_to(tmp_path / "downloads")
    proc = run_cli(["--config-dir", str(mine), "experiment=recv/run1/.hydra/evil", *TINY,
                    f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, timeout=300)
    assert not marker.exists(), "a received run dir's callback was instantiated"
    assert proc.returncode != 0 and "reads a run dir" in proc.stderr, proc.stderr[-800:]


def test_a_config_folder_with_many_files_still_never_composes_a_run_dir_in_it(tmp_path):
    """``_run_in_tree`` stops after ``MAX_WALKED`` entries and then answers "no run dir": 20001 empty
    files at the top of the user's config folder hide a received run saved under experiment/."""
    from pyimgano_hydra.config_sources import MAX_WALKED

    marker = tmp_path / "PWNED"
    mine = tmp_path / "mine"
    mine.mkdir()
    for i in range(MAX_WALKED + 1):
        (mine / f"a{i:05d}.txt").touch()
    _received_run_with_callback(mine / "experiment" / "recv", marker)
    proc = run_cli(["--config-dir", str(mine), "experiment=recv/.hydra/evil", *TINY,
                    f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, timeout=300)
    assert not marker.exists(), "a received run dir's callback was instantiated"
    assert proc.returncode != 0, proc.stderr[-800:]


def test_a_group_of_the_users_own_config_folder_with_dotdot_never_composes_a_run_dir(tmp_path):
    """``..`` in a group option is refused only for the packaged groups (``_groups()`` lists
    conf/'s folders): a group of the user's own ``--config-dir`` (``+mygroup=../../recv/.hydra/evil``)
    leaves the config folder and composes a received run dir's YAML, whose callback Hydra
    instantiates."""
    marker = tmp_path / "PWNED"
    _received_run_with_callback(tmp_path / "recv", marker)
    mine = tmp_path / "mine"
    (mine / "mygroup").mkdir(parents=True)
    (mine / "mygroup" / "ok.yaml").write_text("a: 1\n")
    proc = run_cli(["--config-dir", str(mine), "+mygroup=../../recv/.hydra/evil", *TINY,
                    f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, timeout=300)
    assert not marker.exists(), "a received run dir's callback was instantiated"
    assert proc.returncode != 0 and "mygroup" in proc.stderr, proc.stderr[-800:]


def test_a_sweep_stopped_after_its_first_job_never_says_the_run_had_completed(tmp_path):
    """SIGTERM to a ``--multirun seed=0,1`` sweep once job 0 is recorded completed: the sweep's
    status.json says ``interrupted`` and job 1 never ran, but the one console line says
    ``interrupted: SIGTERM; the run had completed (its status.json says so)`` (``exit_on_interrupt``
    reads ``interrupt.COMPLETED``, set by job 0). Expected: the line says the sweep was interrupted."""
    import json
    import time

    from conftest import start_cli

    sweep = tmp_path / "sw"
    proc = start_cli(["--multirun", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            statuses = [p.read_text() for p in sweep.glob("*/status.json")] if sweep.is_dir() else []
            if any('"completed"' in s for s in statuses):
                proc.send_signal(15)
                break
            time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-500:]
    assert json.loads((sweep / "status.json").read_text())["status"] == "interrupted"
    assert "had completed" not in err, err.strip().splitlines()[-1]


def test_a_group_option_spelling_dotdot_through_an_interpolation_is_refused(tmp_path):
    """``experiment=../../<run>/exp`` is refused by looking for ``..`` in the text, but Hydra resolves
    interpolations in a group override first: ``${oc.env:UNSET,.}.`` is ``..`` (no environment
    needed), so ``experiment=${oc.env:UNSET,.}./${oc.env:UNSET,.}./.../recv/.hydra/evil`` composes a
    received run dir's YAML and Hydra instantiates its callback."""
    from conftest import REPO

    marker = tmp_path / "PWNED"
    _received_run_with_callback(tmp_path / "recv", marker)
    rel = os.path.relpath(tmp_path / "recv" / ".hydra" / "evil", REPO / "pyimgano_hydra" / "conf" / "experiment")
    dotdot = "${oc.env:PYIMGANO_UNSET_VARIABLE,.}."
    value = "/".join(dotdot if part == ".." else part for part in rel.split("/"))
    proc = run_cli([f"experiment={value}", *TINY, f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, timeout=300)
    assert not marker.exists(), "a received run dir's callback was instantiated"
    assert proc.returncode != 0 and "experiment" in proc.stderr, proc.stderr[-800:]


def test_rerunning_a_received_runs_hydra_record_without_its_status_files_runs_nothing_from_it(tmp_path):
    """A run dir counts as one for config sources only by ``.claim.json``/``status.json``/``report.json``
    (``RUN_RECORD_FILES``), while the claim counts ``.hydra/`` too. A colleague ships a run dir without
    those three files (only ``.hydra/``): ``-cp <run>/.hydra -cn config`` - the documented way to
    re-run a received run's config - composes its config.yaml and Hydra instantiates its callback."""
    marker = tmp_path / "PWNED"
    received = tmp_path / "recv"
    (received / ".hydra").mkdir(parents=True)
    (received / ".hydra" / "overrides.yaml").write_text("[]\n")
    (received / ".hydra" / "hydra.yaml").write_text("hydra:\n  run:\n    dir: .\n")
    (received / ".hydra" / "config.yaml").write_text(
        f"seed: 0\nhydra:\n  callbacks:\n    evil:\n      _target_: pathlib.Path.touch\n      self: {marker}\n")
    proc = run_cli(["-cp", str(received / ".hydra"), "-cn", "config", f"hydra.run.dir={tmp_path / 'out'}"],
                   cwd=tmp_path, timeout=300)
    assert not marker.exists(), "a received run's .hydra/config.yaml callback was instantiated"
    assert proc.returncode != 0 and "--config-path" in proc.stderr, proc.stderr[-800:]


def test_a_run_whose_stdout_reader_went_away_keeps_stderr_to_one_line(tmp_path):
    """``python -m pyimgano_hydra ... | head -1`` (or a ``less`` quit early): every later console log
    line fails with EPIPE and logging prints a ``--- Logging error --- / Call stack: / Message: /
    Arguments:`` block on stderr for each (11 blocks for a TINY run), though the run completes.
    Expected: a closed stdout costs at most one line on stderr, never a block per log record."""
    import subprocess
    import sys

    from conftest import _cli_env

    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", *TINY, f"hydra.run.dir={tmp_path / 'out'}"],
                            cwd=tmp_path, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `| head -1` does
    try:
        err = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert '"completed"' in (tmp_path / "out" / "status.json").read_text()
    assert "Logging error" not in err and len(err.strip().splitlines()) <= 1, err[:600]
