"""Hostile pass y1: code execution / writes outside the run dir at inference and export time,
through other libraries' config files read from the working dir in child processes."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import _cli_env, copy_run, small_png, trained_run
from tests.test_hostile_pass_x5 import _set_stored_pyod_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_copod(tmp_path_factory):
    return trained_run(tmp_path_factory, model="copod")


def _received_folder(tmp_path, trained, config: str):
    images = tmp_path / "line_images"
    images.mkdir()
    (images / ".numba_config.yaml").write_text(config)
    (images / "part.png").write_bytes(small_png(trained).read_bytes())
    return images


def test_a_numba_config_in_the_image_folder_never_overwrites_a_file_from_infers_loky_workers(trained_copod, tmp_path):
    """``python -m pyimgano_hydra.infer`` started in a received image folder holding
    ``.numba_config.yaml`` with ``chrome_trace: <victim>``, on a PyOD run whose stored detector has
    ``n_jobs=2`` (in range): pass X10 points the main process's numba at a config path that never
    exists, but the re-fit's loky workers import numba themselves (unpickling the task), in the
    same working dir, and read the file there. Expected: the victim file is unchanged."""
    run_dir = copy_run(trained_copod, tmp_path)
    _set_stored_pyod_params(run_dir, n_jobs=2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    images = _received_folder(tmp_path, trained_copod, f"chrome_trace: {victim}\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}", "input=part.png",
                           f"hydra.run.dir={out}"], cwd=images, env=_cli_env(), capture_output=True, text=True,
                          timeout=180)
    assert victim.read_text() == "precious\n", "a loky worker's numba wrote the chrome trace over the victim file"
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_a_numba_config_in_the_image_folder_never_overwrites_a_file_from_the_apis_loky_workers(trained_copod, tmp_path):
    """Same through ``pyimgano_hydra.api.load_inspector`` from a script started in the image folder."""
    run_dir = copy_run(trained_copod, tmp_path)
    _set_stored_pyod_params(run_dir, n_jobs=2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    images = _received_folder(tmp_path, trained_copod, f"chrome_trace: {victim}\n")
    script = tmp_path / "scripts" / "score.py"
    script.parent.mkdir()
    script.write_text("from pyimgano_hydra.api import load_inspector\n"
                      f"inspector = load_inspector({str(run_dir)!r})\n"
                      "print(inspector.predict(inspector.load_images(['part.png'])))\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=images, env=_cli_env(), capture_output=True, text=True,
                          timeout=180)
    assert victim.read_text() == "precious\n", "a loky worker's numba wrote the chrome trace over the victim file"
    assert proc.returncode == 0, proc.stderr[-1500:]


@pytest.fixture(scope="module")
def trained_hbos(tmp_path_factory):
    return trained_run(tmp_path_factory, model="hbos")


def test_held_a_numba_config_in_a_folder_the_api_changes_into_never_overwrites_a_file(trained_hbos, tmp_path):
    """Held: a script loads an HBOS run with ``pyimgano_hydra.api.load_inspector`` (fresh numba
    cache: the re-fit compiles), then changes into a received image folder (``%cd line_images``)
    holding ``.numba_config.yaml`` with ``chrome_trace: <victim>`` and scores there: numba re-reads
    ``./.numba_config.yaml`` only when it compiles, and scoring compiles nothing new. The victim
    file is unchanged."""
    run_dir = copy_run(trained_hbos, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    images = _received_folder(tmp_path, trained_hbos, f"chrome_trace: {victim}\n")
    script = tmp_path / "scripts" / "score.py"
    script.parent.mkdir()
    script.write_text("import os\nfrom pyimgano_hydra.api import load_inspector\n"
                      f"inspector = load_inspector({str(run_dir)!r})\n"
                      f"os.chdir({str(images)!r})\n"
                      "print(inspector.predict(inspector.load_images(['part.png'])))\n")
    env = _cli_env({"NUMBA_CACHE_DIR": str(tmp_path / "fresh_numba_cache")})
    proc = subprocess.run([sys.executable, str(script)], cwd=script.parent, env=env, capture_output=True,
                          text=True, timeout=180)
    assert victim.read_text() == "precious\n", "numba wrote the chrome trace over the victim file"
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_a_small_numba_config_in_the_image_folder_never_blows_up_infers_loky_workers(trained_copod, tmp_path):
    """``python -m pyimgano_hydra.infer`` started in a received image folder holding a ~500-byte
    ``.numba_config.yaml`` of YAML anchors (pass X10's bomb), on a PyOD run with stored ``n_jobs=2``:
    each loky worker of the re-fit imports numba in that folder and expands the anchors (pass X10
    measured 1.7 GB for ``import numba`` alone). Killed at 1.5 GB over infer and all its workers.
    Expected: infer completes (or refuses in one line) within the bound."""
    import os
    import signal
    import threading
    import time

    from tests.test_hostile_pass_x5 import LIMIT_KB, _group
    from tests.test_hostile_pass_x10 import _alias_bomb

    run_dir = copy_run(trained_copod, tmp_path)
    _set_stored_pyod_params(run_dir, n_jobs=2)
    images = _received_folder(tmp_path, trained_copod, _alias_bomb(7))
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}", "input=part.png",
                             f"hydra.run.dir={tmp_path / 'out'}"], cwd=images, env=_cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak, killed = [0], []

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], _group(proc.pid)[1])
            if peak[0] > LIMIT_KB:
                killed.append(True)
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    watcher.join(1)
    assert not killed, f"infer and its loky workers passed {LIMIT_KB >> 10} MB from a 500-byte .numba_config.yaml"
    assert proc.returncode == 0 or ".numba_config.yaml" in err.strip().splitlines()[-1], err[-1500:]


def test_a_numba_config_in_the_working_dir_never_overwrites_a_file_from_exports_loky_workers(trained_copod, tmp_path):
    """``python -m pyimgano_hydra.export run_dir=<PyOD run with stored n_jobs=2>`` started in a
    received folder holding ``.numba_config.yaml`` with ``chrome_trace: <victim>``: export loads
    (re-fits) the detector before it refuses a PyOD model, and the re-fit's loky workers read the
    file. Expected: the victim file is unchanged (the refusal itself is fine)."""
    run_dir = copy_run(trained_copod, tmp_path)
    _set_stored_pyod_params(run_dir, n_jobs=2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    folder = _received_folder(tmp_path, trained_copod, f"chrome_trace: {victim}\n")
    subprocess.run([sys.executable, "-m", "pyimgano_hydra.export", f"run_dir={run_dir}"], cwd=folder,
                   env=_cli_env(), capture_output=True, text=True, timeout=180)
    assert victim.read_text() == "precious\n", "a loky worker's numba wrote the chrome trace over the victim file"
