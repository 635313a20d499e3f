"""Attacker pass Y4: the lab side (preset folders, config dirs, datasets, shared cache)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, run_cli


def _done_run(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "status.json").write_text(json.dumps({"status": "completed"}))
    return done


def test_a_preset_log_handler_property_never_points_the_log_into_another_run(tmp_path):
    """A colleague's preset (``-cd <presets> experiment=evil``) sets, on Hydra's file log handler,
    ``delay: true`` and logging.config's ``.`` properties ``{baseFilename: <completed run>/status.json}``.
    Only ``handlers.<h>.filename`` is checked (it still names the new run's own log); the handler
    opens ``baseFilename`` at its first record: the new run completes (rc 0) and every log line is
    appended to the completed run's status.json, which is then no JSON (infer refuses that run).
    Expected: refused in one line naming hydra.job_logging, the completed run unchanged."""
    done = _done_run(tmp_path)
    before = (done / "status.json").read_bytes()
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  job_logging:\n    handlers:\n      file:\n        delay: true\n"
        f"        .:\n          baseFilename: {done / 'status.json'}\n")
    proc = run_cli(["-cd", str(tmp_path / "presets"), "experiment=evil", *TINY,
                    f"hydra.run.dir={tmp_path / 'new'}"], timeout=300)
    assert (done / "status.json").read_bytes() == before, (done / "status.json").read_text()[:300]
    assert proc.returncode != 0 and "hydra.job_logging" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-500:]


def test_a_log_file_named_through_cfg_indirection_never_lands_in_another_run(tmp_path):
    """logging.config converts handler arguments: ``filename: cfg://evil.path`` is looked up in the
    same logging dict. ``+hydra.job_logging.evil.path=<completed run>/status.json
    hydra.job_logging.handlers.file.filename="cfg://evil.path"`` (typed, or in a preset) passes the
    check of ``handlers.<h>.filename`` (a relative path ``cfg:/evil.path``, in no run) and every log
    line is appended to the completed run's status.json (rc 0). Expected: refused in one line naming
    the key, the completed run unchanged."""
    done = _done_run(tmp_path)
    before = (done / "status.json").read_bytes()
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}",
                    f"+hydra.job_logging.evil.path={done / 'status.json'}",
                    'hydra.job_logging.handlers.file.filename="cfg://evil.path"'], timeout=300)
    assert (done / "status.json").read_bytes() == before, (done / "status.json").read_text()[:300]
    assert proc.returncode != 0 and "hydra.job_logging" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-500:]


def _mvtec_with_hard_linked_test_images(root):
    import os

    import numpy as np
    from PIL import Image

    cat = root / "pcb"
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (cat / sub).mkdir(parents=True)
    for i in range(10):
        Image.fromarray((rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)).save(cat / f"train/good/{i:03d}.png")
    for i in range(3):
        arr = (rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)
        arr[20:30, 20:30] = 255
        Image.fromarray(arr).save(cat / f"test/crack/{i:03d}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[20:30, 20:30] = 255
        Image.fromarray(mask).save(cat / f"ground_truth/crack/{i:03d}_mask.png")
        os.link(cat / f"train/good/{i:03d}.png", cat / f"test/good/{i:03d}.png")  # the same file, twice


def test_a_train_image_hard_linked_into_the_test_split_is_refused_as_listed_twice(tmp_path):
    """``_refuse_repeats`` refuses an image listed for train and test (scored on what the model was
    fitted on) by its realpath; a handed-over MVTec folder whose test/good/*.png are hard links of
    train/good/*.png (one inode, ``cp -al``, a dedup tool) passes: the run completes (rc 0) scoring 3
    training images as its normal test images, metrics inflated, no note. Expected: refused as
    'listed twice' in one line naming the file (or the repeats dropped with a note)."""
    root = tmp_path / "mvtec"
    _mvtec_with_hard_linked_test_images(root)
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=mvtec", f"dataset.root={root}", "dataset.category=pcb", "dataset.resize=64",
                    "model=padim", f"hydra.run.dir={run_dir}"], timeout=300)
    if proc.returncode == 0:
        counts = json.loads((run_dir / "report.json").read_text())["categories"]["pcb"]["counts"]
        assert counts.get("test_normal", 3) < 3 or counts.get("train", 10) < 10, counts
        return
    assert "listed twice" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("text", ["# @package _global_\nseed: [1\n",
                                  '# @package _global_\ntag: !!python/object/apply:os.system ["touch {marker}"]\n'])
def test_a_broken_preset_in_a_config_dir_is_one_line_naming_its_file(tmp_path, text):
    """A handed-over preset folder (``-cd presets experiment=lab``) whose YAML does not parse (an
    unclosed list) or carries a Python tag: rc 1 and ``error: expected ',' or ']', but got '<stream
    end>'`` / ``error: yaml.constructor.ConstructorError: could not determine a constructor for the
    tag ...python/object/apply:os.system``: one line, but naming neither the file nor the line (the
    folder may hold dozens of presets). The tag is never run (held). Expected: the line names
    experiment/lab.yaml."""
    marker = tmp_path / "MARKER"
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "lab.yaml").write_text(text.format(marker=marker))
    proc = run_cli(["-cd", str(tmp_path / "presets"), "experiment=lab", *TINY,
                    f"hydra.run.dir={tmp_path / 'new'}"], timeout=120)
    assert not marker.exists()
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0, proc.stderr[-500:]
    assert "lab.yaml" in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("record", ["status.json", "report.json"])
def test_a_log_file_named_as_the_runs_own_record_is_refused_naming_the_log_key(tmp_path, record):
    """``hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/status.json`` (a preset's
    typo, or a handed-over one): the log handler creates an empty status.json in the new run dir, then
    the app says ``error: hydra.run.dir=<dir>: already holds a run; runs are never overwritten`` - the
    wrong key - and leaves .claim.json, .hydra/ and the empty record behind, so the same dir is
    refused for ever (a rerun without the log setting gets the same line). Expected: one line naming
    hydra.job_logging, and the dir usable by the fixed command."""
    run_dir = tmp_path / "run"
    bad = run_cli([*TINY, f"hydra.run.dir={run_dir}",
                   f"hydra.job_logging.handlers.file.filename=${{hydra.runtime.output_dir}}/{record}"], timeout=300)
    assert bad.returncode != 0 and "hydra.job_logging" in bad.stderr and "Traceback" not in bad.stderr, \
        bad.stderr[-500:]
    good = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    assert good.returncode == 0, good.stderr[-500:]


def test_a_preset_placed_under_hydra_logging_by_its_package_header_never_writes_into_another_run(tmp_path):
    """A user file may not set ``hydra.hydra_logging`` (Hydra opens those handlers before any check):
    the guard looks for a ``hydra_logging`` key in the file or a path under hydra/hydra_logging. A preset
    ``experiment/evil.yaml`` whose header is ``# @package hydra.hydra_logging`` holds neither, yet its
    content lands there: ``-cd presets experiment=evil`` prints a correct refusal naming
    hydra.hydra_logging.handlers.f.filename, but Hydra's debug log ('Hydra 1.3.8 / Installed Hydra
    Plugins ...') has already been appended to the completed run's status.json (infer then refuses
    that run). Expected: refused before Hydra opens the handler; the completed run unchanged."""
    done = _done_run(tmp_path)
    before = (done / "status.json").read_bytes()
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "evil.yaml").write_text(
        "# @package hydra.hydra_logging\nversion: 1\nhandlers:\n  f:\n    class: logging.FileHandler\n"
        f"    filename: {done / 'status.json'}\nroot:\n  level: DEBUG\n  handlers: [f]\n"
        "disable_existing_loggers: false\n")
    proc = run_cli(["-cd", str(tmp_path / "presets"), "experiment=evil", *TINY,
                    f"hydra.run.dir={tmp_path / 'new'}"], timeout=300)
    assert proc.returncode != 0 and "hydra_logging" in proc.stderr, proc.stderr[-500:]
    assert (done / "status.json").read_bytes() == before, (done / "status.json").read_text()[:300]


def test_a_job_env_set_pythonpath_into_a_run_dir_runs_nothing_from_it(tmp_path):
    """PYTHONPATH entries inside a run dir are dropped at start (docs/WORKBENCH.md), but
    ``hydra.job.env_set.PYTHONPATH=<received run dir>`` (a preset's env_set, applied by Hydra inside
    the job, after that check) reaches every child Python the job starts: with
    ``loader.num_workers=2`` the decode workers' interpreter runs the run dir's sitecustomize.py
    (marker written; rc 0). Expected: refused in one line naming hydra.job.env_set.PYTHONPATH (or the
    entry dropped for the children too), no marker."""
    done = _done_run(tmp_path)
    marker = tmp_path / "MARKER"
    (done / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    proc = run_cli([*TINY, "loader.num_workers=2", f"hydra.run.dir={tmp_path / 'new'}",
                    f"+hydra.job.env_set.PYTHONPATH={done}"], timeout=300)
    assert not marker.exists(), proc.stderr[-500:]


def test_a_preset_placed_under_hydra_logging_by_a_package_override_never_writes_into_another_run(tmp_path):
    """Same hole as the ``# @package`` header, spelled on the line: ``-cd presets
    +experiment@hydra.hydra_logging=evil`` (a plain logging dict, no hydra_logging key, not under
    hydra/hydra_logging): refused with the right line, but only after Hydra's debug log was appended
    to the completed run's status.json."""
    done = _done_run(tmp_path)
    before = (done / "status.json").read_bytes()
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "evil.yaml").write_text(
        f"version: 1\nhandlers:\n  f:\n    class: logging.FileHandler\n    filename: {done / 'status.json'}\n"
        "root:\n  level: DEBUG\n  handlers: [f]\ndisable_existing_loggers: false\n")
    proc = run_cli(["-cd", str(tmp_path / "presets"), "+experiment@hydra.hydra_logging=evil", *TINY,
                    f"hydra.run.dir={tmp_path / 'new'}"], timeout=300)
    assert proc.returncode != 0 and "hydra_logging" in proc.stderr, proc.stderr[-500:]
    assert (done / "status.json").read_bytes() == before, (done / "status.json").read_text()[:300]


# ---- attacks that held ----------------------------------------------------------------------

def test_held_a_job_env_set_cache_root_into_a_completed_run_is_refused(tmp_path):
    """``+hydra.job.env_set.PYIMGANO_CACHE=<completed run>``: the job's cache.dir (and a synthetic
    dataset's root) resolve under it only inside the job; the job's own check refuses it."""
    done = _done_run(tmp_path)
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'new'}", f"+hydra.job.env_set.PYIMGANO_CACHE={done}"],
                   timeout=300)
    refusals = ("error: cache.dir=", "error: hydra.job.env_set.PYIMGANO_CACHE=")  # the latter since pass Z8
    assert proc.returncode != 0 and proc.stderr.startswith(refusals) \
        and proc.stderr.strip().count("\n") == 0, proc.stderr[-500:]
    assert sorted(p.name for p in done.iterdir()) == ["status.json"]


def test_held_the_api_refuses_an_output_dir_or_search_path_inside_a_run(tmp_path):
    """From a notebook: ``api.run(output_dir=<completed run>/sub)`` and
    ``compose_config(['hydra.searchpath=[file://<completed run>]'])`` are refused, nothing written."""
    import subprocess
    import sys

    from tests.conftest import _cli_env

    done = _done_run(tmp_path)
    code = (
        "from pyimgano_hydra.api import run, compose_config\n"
        "from pyimgano_hydra.errors import UserError\n"
        f"for call in (lambda: run({TINY!r}, output_dir={str(done / 'sub')!r}),\n"
        f"             lambda: compose_config(['hydra.searchpath=[file://{done}]'])):\n"
        "    try:\n        call(); print('RAN')\n    except UserError as exc:\n        print('REFUSED', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.stdout.count("REFUSED") == 2 and "RAN" not in proc.stdout, proc.stdout + proc.stderr[-500:]
    assert sorted(p.name for p in done.iterdir()) == ["status.json"]


def test_held_a_category_folder_named_like_an_interpolation_is_never_resolved(tmp_path):
    """An MVTec category (and defect) folder named ``p${oc.env:HOME}``: recorded and reported by its
    exact name, never resolved by OmegaConf."""
    import os

    root = tmp_path / "mvtec"
    _mvtec_with_hard_linked_test_images(root)
    for i in range(3):
        os.unlink(root / "pcb" / f"test/good/{i:03d}.png")
    name = "p${oc.env:HOME}"
    (root / "pcb").rename(root / name)
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=mvtec", f"dataset.root={root}", "dataset.category=all", "dataset.resize=64",
                    "model=padim", f"hydra.run.dir={run_dir}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert list(json.loads((run_dir / "report.json").read_text())["categories"]) == [name]
