"""Attacker pass V1 (line side): a run dir handed over from the lab, read by infer / export /
the API / examples/score_onnx.py, and hostile infer input folders."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import _cli_env, copy_run, small_png, trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory)


def _planted(folder, name, marker):
    (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")


@pytest.mark.parametrize("module", ["pyimgano_hydra.infer", "pyimgano_hydra.export"])
@pytest.mark.parametrize("name", ["signal", "enum"])
def test_a_signal_py_in_a_received_run_dir_is_never_imported_by_python_m_started_inside_it(
        trained, tmp_path, module, name):
    """``python -m pyimgano_hydra.infer`` / ``.export`` started inside a received run dir drop the
    working dir from ``sys.path`` (``_no_imports_from_a_run_dir``), but the package's ``__init__``
    first calls ``_ctrl_c_while_starting()``, which does ``import signal``: a ``signal.py`` shipped
    in the run dir (or an ``enum.py``, which the real ``signal`` imports) ran before the guard.
    Unlike ``importlib.py`` (runpy's own import, documented), this one is our import order."""
    run_dir = copy_run(trained, tmp_path)
    marker = tmp_path / f"ran_{name}"
    _planted(run_dir, name, marker)
    args = [f"run_dir={run_dir}"]
    if module.endswith("infer"):
        args += [f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=run_dir, env=_cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert not marker.exists(), f"{name}.py of the run dir was imported: {proc.stderr[-600:]}"
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_a_signal_py_in_the_image_folder_infer_runs_in_is_never_imported(trained, tmp_path):
    """The same import from an infer input folder (a supplier's images, scored with ``input=.``):
    no run record there, but infer drops the working dir from ``sys.path`` all the same, after
    ``import signal`` ran the folder's ``signal.py``."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(small_png(trained).read_bytes())
    marker = tmp_path / "ran_signal"
    _planted(folder, "signal", marker)
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained}", "input=.",
                           f"hydra.run.dir={tmp_path / 'out'}"], cwd=folder, env=_cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert not marker.exists(), f"signal.py of the input folder was imported: {proc.stderr[-600:]}"
    assert proc.returncode == 0, proc.stderr[-1500:]
