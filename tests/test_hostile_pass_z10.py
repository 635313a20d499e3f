"""Attacker pass Z10: code execution and writes outside the run dir through hydra.job.env_copy, joblib
launcher settings, pkg:// search paths and files planted in the folder the console scripts start in.
No hole found this pass; the attacks below held."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, _cli_env, run_cli

SCRIPTS = Path(sys.executable).parent


def _tree(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns if p.is_file() else 0) for p in root.rglob("*"))


def _plant(folder: Path, marker: Path) -> None:
    """Modules a child Python (forkserver, loky) or Hydra's plugin scan would import from the working dir, a
    package a search path could name, a matplotlibrc naming it as backend."""
    (folder / "pkgz").mkdir(parents=True)
    (folder / "pkgz" / "__init__.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (folder / "hydra_plugins" / "z10").mkdir(parents=True)
    (folder / "hydra_plugins" / "z10" / "__init__.py").write_text(f"open({str(marker)!r}, 'w')\n")
    for name in ("multiprocessing", "json", "pickle", "joblib", "numpy"):
        (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (folder / "matplotlibrc").write_text("backend: module://pkgz\n")


def test_held_env_copy_of_a_variable_outside_the_allowlist_is_refused_before_any_run_dir(tmp_path):
    """HELD. ``+hydra.job.env_copy=[HOME]`` (a preset copying a variable the allowlist refuses into the job's
    env): Hydra copies it into env_set, and the env_set check refuses it in one line; no run dir made."""
    out = tmp_path / "run"
    proc = run_cli([*TINY, f"hydra.run.dir={out}", "+hydra.job.env_copy=[HOME]"], timeout=120)
    assert proc.returncode != 0
    assert "hydra.job.env_set.HOME" in proc.stderr.strip().splitlines()[-1], proc.stderr[-800:]
    assert not out.exists()


def test_held_joblib_temp_folder_in_a_received_run_never_writes_there(trained, tmp_path):
    """HELD. A joblib sweep with ``hydra.launcher.temp_folder=<completed run>/categories/weave`` and
    ``max_nbytes=1`` (memmap everything): the jobs' arguments held no arrays, so nothing landed in the
    run; since this pass the folder is refused before any job, like submitit's and Ray's."""
    before = _tree(trained)
    proc = run_cli(["-m", *TINY, "model.coreset_ratio=0.2,0.3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    f"hydra.launcher.temp_folder={trained / 'categories' / 'weave'}", "hydra.launcher.max_nbytes=1",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: hydra.launcher.temp_folder="), proc.stderr[-800:]
    assert _tree(trained) == before and not (tmp_path / "sweep").exists()


def test_held_joblib_threading_backend_keeps_each_jobs_record_and_log_in_its_own_dir(tmp_path):
    """HELD. ``hydra.launcher.backend=threading`` runs two jobs at once in one process (one HydraConfig
    singleton, one root logger): each job's config.json and log still name its own dir and value."""
    import json

    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *[a for a in TINY if not a.startswith("model.")], "model.coreset_ratio=0.2,0.3",
                    "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.launcher.backend=threading",
                    f"hydra.sweep.dir={sweep}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_0.2", "1_0.3"]
    for job in jobs:
        value = job.name.split("_", 1)[1]
        assert str(json.loads((job / "config.json").read_text())["model"]["coreset_ratio"]) == value
        assert all(str(job) in line for line in (job / "pyimgano_hydra.log").read_text().splitlines()
                   if "run dir:" in line)


@pytest.mark.skipif(not (SCRIPTS / "pyimgano-hydra").exists(), reason="console scripts not installed")
def test_held_console_scripts_started_in_a_received_dataset_folder_import_nothing_from_it(trained, tmp_path):
    """HELD. A received image folder (no run record in it) holding ``pkgz/``, ``hydra_plugins/z10/``,
    ``multiprocessing.py``, ``json.py``, ``joblib.py``, ``numpy.py`` and a ``matplotlibrc`` naming
    ``module://pkgz``: ``pyimgano-hydra-infer input=.`` (torch and onnxruntime) and a ``pyimgano-hydra -m``
    joblib sweep with ``hydra.searchpath=[pkg://pkgz]`` started there import none of them."""
    from PIL import Image

    folder, marker = tmp_path / "received", tmp_path / "MARK"
    _plant(folder, marker)
    Image.new("RGB", (32, 32), (120, 120, 120)).save(folder / "a.png")
    env = _cli_env({"OMP_NUM_THREADS": "1"})
    for command in ([str(SCRIPTS / "pyimgano-hydra-infer"), f"run_dir={trained}", "input=.",
                     f"hydra.run.dir={tmp_path / 'inf'}"],
                    [str(SCRIPTS / "pyimgano-hydra"), "-m", *TINY[:3], "model.coreset_ratio=0.2,0.3",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sw'}",
                     "hydra.searchpath=[pkg://pkgz]"]):
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-800:]
        assert not marker.exists(), command[0]


def test_held_a_search_path_naming_a_package_that_is_not_installed_runs_nothing(tmp_path):
    """HELD. ``hydra.searchpath=[pkg://z10_not_installed.conf]`` (a received preset's search path to a module
    the user lacks): Hydra skips a source it cannot find; the run completes, nothing imported."""
    out = tmp_path / "run"
    proc = run_cli([*TINY, f"hydra.run.dir={out}", "hydra.searchpath=[pkg://z10_not_installed.conf]"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert (out / "report.json").is_file()
