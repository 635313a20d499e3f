"""Attacker pass X10: numba's ``.numba_config.yaml`` beyond ``cache_dir``, and what held.

numba reads ``./.numba_config.yaml`` (every key becomes a ``NUMBA_<KEY>`` setting) when it is
imported and again at every compile (``config.reload_config``). Pass L neutralised ``cache_dir``
only (``NUMBA_CACHE_DIR`` set when the file exists); the file's other keys still reach numba.
"""
import os
import sys
from pathlib import Path

from conftest import REPO, run_cli, run_cli_measured

TINY_HBOS = ["model=hbos", "dataset.category=weave", "dataset.limit_train=12", "dataset.limit_test=12"]


def test_a_numba_config_in_the_working_dir_never_overwrites_a_file_it_names(tmp_path):
    """A received dataset folder (or run dir) holds ``.numba_config.yaml`` with ``chrome_trace:
    <absolute path>``; the user trains (or runs infer) from inside it with a PyOD model whose
    scoring numba compiles (HBOS). numba registers an atexit hook that ``open(path, "w")``s the
    named file and dumps its compile events there: observed, a file outside the folder and the
    run dir (here ``victim.txt``; ``~/.bashrc`` alike) was overwritten with JSON, rc 0. Same from
    ``python -m pyimgano_hydra.infer run_dir=.`` inside a received HBOS run dir (the file became
    ``[]``). Expected: a file of the working dir never makes anything write outside the run dir."""
    received = tmp_path / "received_dataset"
    received.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (received / ".numba_config.yaml").write_text(f"chrome_trace: {victim}\n")
    run = tmp_path / "run"
    proc = run_cli([*TINY_HBOS, f"hydra.run.dir={run}"], cwd=received, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert victim.read_text() == "precious\n", "a file named by ./.numba_config.yaml (chrome_trace) was overwritten"


def test_a_numba_config_in_the_working_dir_never_imports_a_module_it_names(tmp_path):
    """``.numba_config.yaml`` with ``cache_locator_classes: <module>.<Class>``: numba's cache
    (turned on by ``models/pyod_on_features.keep_compiled_code`` as HBOS fits) runs
    ``importlib.import_module(<module>)`` on the name from the file, any module the Python can
    import (here one installed on PYTHONPATH, outside the folder, that writes a marker when
    imported): observed, the module was imported (marker written), rc 0; the failure of the
    class lookup is swallowed (a debug line). The registry's rule is that nothing from a file is
    ever imported by a dotted path without trust_targets. Expected: no marker."""
    received = tmp_path / "received_dataset"
    received.mkdir()
    marker = tmp_path / "MARKER"
    installed = tmp_path / "site"
    installed.mkdir()
    (installed / "x10_side_effect.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "class Locator:\n    @classmethod\n    def from_function(cls, func, path):\n        return None\n")
    (received / ".numba_config.yaml").write_text("cache_locator_classes: x10_side_effect.Locator\n")
    run = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(installed)])}
    proc = run_cli([*TINY_HBOS, f"hydra.run.dir={run}"], cwd=received, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists(), "a module named by ./.numba_config.yaml (cache_locator_classes) was imported"


def _alias_bomb(depth: int) -> str:
    """A YAML file of a few hundred bytes whose last key is a list of 10**(depth+1) strings,
    shared through anchors (yaml.safe_load keeps them shared; ``str()`` of it does not)."""
    lines = ["a0: &a0 [" + ",".join(['"xxxxxxxxxx"'] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, depth)]
    lines.append("color_scheme: [" + ",".join([f"*a{depth - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_a_small_numba_config_in_the_working_dir_never_blows_up_memory(tmp_path):
    """A 496-byte ``.numba_config.yaml`` of YAML anchors (a list of 10**7 shared strings under
    ``color_scheme``) in the folder a PyOD run starts in: numba turns each value into its setting
    with ``str()``, expanding the shared list; observed, ``import numba`` alone took 1.7 GB and
    12 s, the tiny HBOS run peaked at 2.6 GB (1.36 GB without the file); one more level of
    anchors (546 bytes) is ~15 GB. Expected: the run's peak stays near its usual size."""
    received = tmp_path / "received_dataset"
    received.mkdir()
    (received / ".numba_config.yaml").write_text(_alias_bomb(7))
    assert (received / ".numba_config.yaml").stat().st_size < 600
    proc, peak_kib = run_cli_measured([*TINY_HBOS, f"hydra.run.dir={tmp_path / 'run'}"], cwd=received, timeout=300)
    assert proc.returncode == 0 or ".numba_config.yaml" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert peak_kib < 1_900_000, f"peak {peak_kib >> 10} MB from a {len(_alias_bomb(7))}-byte .numba_config.yaml"


def test_a_malformed_numba_config_in_the_working_dir_is_named_or_ignored(tmp_path):
    """``.numba_config.yaml`` holding a YAML list (not a mapping): numba's import fails with
    AttributeError inside PyOD's import. Observed: rc 2, status failed, and the one line blames
    the install: "Error loading 'pyod.models.hbos.HBOS': AttributeError("'list' object has no
    attribute 'items'") Are you sure that module 'pyod' is installed?" - nothing names the file.
    Expected: the run ignores the file (rc 0), or its one error line names ``.numba_config.yaml``."""
    received = tmp_path / "received_dataset"
    received.mkdir()
    (received / ".numba_config.yaml").write_text("- a\n- b\n")
    proc = run_cli([*TINY_HBOS, f"hydra.run.dir={tmp_path / 'run'}"], cwd=received, timeout=300)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == 0 or ".numba_config.yaml" in last, last


def test_held_a_matplotlibrc_backend_module_in_the_working_dir_is_never_imported(tmp_path):
    """Held: ``./matplotlibrc`` of a received dataset folder naming ``backend: module://<module>``
    (a module installed on PYTHONPATH that writes a marker when imported; MPLBACKEND unset): the
    plots are drawn with Agg (``matplotlib.use("Agg")`` before pyplot), the module is never
    imported, and the plots are written."""
    received = tmp_path / "received_dataset"
    received.mkdir()
    marker = tmp_path / "MARKER"
    installed = tmp_path / "site"
    installed.mkdir()
    (installed / "x10_backend.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n")
    (received / "matplotlibrc").write_text("backend: module://x10_backend\n")
    run = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(installed)]), "MPLBACKEND": ""}
    proc = run_cli([*TINY_HBOS, f"hydra.run.dir={run}"], cwd=received, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists()
    assert list(run.glob("categories/weave/plots/*.png"))
