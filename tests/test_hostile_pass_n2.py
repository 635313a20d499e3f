"""Fresh attacker's pass n2: the lab side (config sources, code execution, run records)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import REPO, TINY, copy_run, run_cli

DOTDOT = "${oc.env:PYIMGANO_UNSET_VARIABLE_N2,.}."  # resolves to '..' without any environment


def _received_run_with_logging_factory(folder: Path, marker: Path) -> None:
    """A received run dir (its status.json marks it one) whose YAML adds a ``hydra.job_logging``
    handler whose ``()`` factory is called when Hydra configures a job's logging (``pathlib.Path.touch``:
    a target the blocklist lets through)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "status.json").write_text('{"status": "completed"}')
    (folder / ".hydra" / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  job_logging:\n    handlers:\n      evil:\n"
        f"        (): pathlib.Path.touch\n        self: {marker}\n")


def _experiment_value(target: Path) -> str:
    rel = os.path.relpath(target, REPO / "pyimgano_hydra" / "conf" / "experiment")
    return "/".join(DOTDOT if part == ".." else part for part in rel.split("/"))


@pytest.mark.parametrize("sweeper,launcher", [("optuna", "joblib"), ("optuna_patchcore", "joblib"),
                                              ("optuna", "submitit_local")])
def test_an_optuna_sweep_on_joblib_workers_never_composes_a_run_dirs_yaml(tmp_path, sweeper, launcher):
    """The per-file guard (config_sources.guard_config_reads) patches the config sources of the
    process that called it. Hydra's Optuna sweeper does not compose the trial configs in the
    parent (no validate_batch_is_legal) and hands Hydra's plain config loader to the joblib
    launcher, whose loky workers compose each trial unguarded: ``experiment=choice(<..>/recv/.hydra/evil)``
    (``..`` spelled through an interpolation, which the argument check does not see) composes a
    received run dir's YAML in the worker, and Hydra calls its ``hydra.job_logging`` factory.
    The same with ``hydra/launcher=submitit_local`` (its job process composes unguarded too)."""
    marker = tmp_path / "PWNED"
    _received_run_with_logging_factory(tmp_path / "recv", marker)
    value = _experiment_value(tmp_path / "recv" / ".hydra" / "evil")
    proc = run_cli(["--multirun", f"hydra/sweeper={sweeper}", f"hydra/launcher={launcher}",
                    *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []),
                    "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", f"experiment=choice({value})", *TINY,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=300)
    assert not marker.exists(), "a received run dir's YAML was composed in a joblib worker and its factory called"
    assert proc.returncode != 0 and "reads a run dir" in proc.stderr, proc.stderr[-800:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import trained_run

    return trained_run(tmp_path_factory)


@pytest.mark.parametrize("script", ["pyimgano-hydra-infer", "pyimgano-hydra", "pyimgano-hydra-export"])
def test_a_console_script_in_a_run_dir_never_imports_a_relative_pythonpath_entry_inside_it(trained, tmp_path,
                                                                                          script):
    """``python -m pyimgano_hydra.infer`` drops a ``PYTHONPATH`` entry inside a run dir (a relative
    ``PYTHONPATH=src``, a common dev setup, made ``<run dir>/src`` importable), but
    pyimgano_hydra/__init__.py _no_imports_from_a_run_dir returns early for the installed console
    scripts (``_module_argument`` finds no ``-m``, so neither the app nor infer/export is recognised):
    ``cd <received run> && pyimgano-hydra-infer run_dir=. ...`` - the form the docs recommend over
    ``python -m`` - keeps ``<run dir>/src`` on sys.path and Hydra's plugin scan imports its
    ``hydra_plugins/<pkg>/__init__.py``. Expected: marker absent, as with ``python -m``."""
    import subprocess
    import sys

    from PIL import Image

    from conftest import _cli_env

    received = copy_run(trained, tmp_path, "received")
    marker = tmp_path / "MARKER"
    plugin = received / "src" / "hydra_plugins" / "evil_n2"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (120, 120, 120)).save(image)
    args = {"pyimgano-hydra-infer": ["run_dir=.", f"input={image}", f"hydra.run.dir={tmp_path / 'out'}"],
            "pyimgano-hydra": ["--help"], "pyimgano-hydra-export": ["--help"]}[script]
    exe = Path(sys.executable).parent / script
    if not exe.exists():
        pytest.skip(f"{script} is not installed beside {sys.executable}")
    proc = subprocess.run([str(exe), *args], cwd=received, env=_cli_env({"PYTHONPATH": f"{REPO}{os.pathsep}src"}),
                          capture_output=True, text=True, timeout=180)
    assert not marker.exists(), f"{script} imported a hydra_plugins package shipped in the run dir it ran in"
    assert proc.returncode == 0, proc.stderr[-300:]


def test_a_handed_over_presets_hydra_logging_never_truncates_a_completed_run(trained, tmp_path):
    """console.refuse_unsafe_arguments refuses ``hydra.hydra_logging`` only as a command-line
    override, because Hydra opens those handlers while composing, before any check. A preset a
    colleague hands over (``--config-dir presets experiment=line3``, no run dir involved) sets
    ``hydra.hydra_logging`` itself: a FileHandler with ``mode: w`` on an earlier completed run's
    report.json. runs/claim.py names the file afterwards (rc 2, 'lies inside the run dir'), but
    Hydra has already opened it: the completed run's report.json is truncated to 0 bytes."""
    done = copy_run(trained, tmp_path, "done")
    before = (done / "report.json").read_bytes()
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "line3.yaml").write_text(
        "# @package _global_\nhydra:\n  hydra_logging:\n    version: 1\n    handlers:\n      file:\n"
        f"        class: logging.FileHandler\n        filename: {done / 'report.json'}\n        mode: w\n"
        "    root:\n      handlers: [file]\n    disable_existing_loggers: false\n")
    proc = run_cli(["--config-dir", str(tmp_path / "presets"), "experiment=line3", *TINY,
                    f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, timeout=300)
    assert (done / "report.json").read_bytes() == before, "a completed run's report.json changed"
    assert proc.returncode != 0 and "hydra_logging" in proc.stderr, proc.stderr[-800:]


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("setting", ["job_logging", "output_subdir", "sweep.subdir"])
def test_a_swept_group_option_never_lets_hydra_write_into_a_completed_run(trained, tmp_path, setting):
    """The sweep's checks of hydra.job_logging / hydra.output_subdir run on the master config, which
    Hydra composes without the sweep overrides. A swept group option (``--multirun experiment=a,b``,
    ``b`` a preset of the user's own folder) sets them for one job only, and Hydra's run_job writes
    ``.hydra/`` and configures the job log before any callback of the job: observed, with
    ``b`` setting ``hydra.job_logging.handlers.file.filename=<completed>/report.json`` (mode w) the
    completed run's report.json became job 1's log; with ``hydra.output_subdir=<completed>/.hydra``
    its hydra.yaml and overrides.yaml were rewritten. All jobs 'completed', rc 0. With
    ``hydra.sweep.subdir: ../done`` the app refuses the job (rc 1), but after Hydra rewrote the
    completed run's .hydra/hydra.yaml, overrides.yaml and appended to its pyimgano_hydra.log."""
    done = copy_run(trained, tmp_path, "done")
    before = _files(done)
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "a.yaml").write_text("# @package _global_\nseed: 1\n")
    if setting == "job_logging":
        text = f"hydra:\n  job_logging:\n    handlers:\n      file:\n        filename: {done / 'report.json'}\n        mode: w\n"
    elif setting == "output_subdir":
        text = f"hydra:\n  output_subdir: {done / '.hydra'}\n"
    else:  # Hydra writes the job's .hydra/ and log there; the app refuses the dir only afterwards
        text = f"hydra:\n  sweep:\n    subdir: {os.path.relpath(done, tmp_path / 'sweep')}\n"
    (presets / "b.yaml").write_text("# @package _global_\n" + text)
    proc = run_cli(["--multirun", "--config-dir", str(tmp_path / "presets"), "experiment=a,b", *TINY,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=300)
    changed = [name for name, data in _files(done).items() if before.get(name) != data]
    assert not changed, f"a completed run's record changed: {changed}"
    assert proc.returncode != 0 and setting in proc.stderr, proc.stderr[-800:]


@pytest.mark.parametrize("key,value", [("hydra.job_logging.handlers.file.filename", "report.json"),
                                       ("hydra.output_subdir", ".hydra")])
def test_sweeper_params_sweeping_a_hydra_key_never_write_into_a_completed_run(trained, tmp_path, key, value):
    """Hydra refuses a sweep over its own config on the command line (``hydra.x=a,b``), and the
    checks of hydra.job_logging / hydra.output_subdir run on the master config. The default
    compose_once sweeper takes ``hydra.sweeper.params`` without that rule:
    ``+hydra.sweeper.params={hydra.job_logging.handlers.file.filename:'x.log,<done>/report.json'}``
    gives job 1 a log file on a completed run's report.json (or ``hydra.output_subdir`` its
    ``.hydra/``), which Hydra opens/writes in run_job before any callback: the completed run's
    record changes, every job 'completed'."""
    done = copy_run(trained, tmp_path, "done")
    before = _files(done)
    proc = run_cli(["--multirun", f"+hydra.sweeper.params={{{key}:'x.log,{done / value}'}}"
                    if "logging" in key else f"+hydra.sweeper.params={{{key}:'.hydra,{done / value}'}}",
                    *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=300)
    changed = [name for name, data in _files(done).items() if before.get(name) != data]
    assert not changed, f"a completed run's record changed: {changed}"
    assert proc.returncode != 0 and key.split(".")[1] in proc.stderr, proc.stderr[-800:]
