"""Hostile pass q1 (line side): forged PyOD inspectors whose re-fit on load is costly, through
classes and params the GMM/LODA/LMDD/quadratic bounds do not cover."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import _cli_env, copy_run, small_png, trained_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIMIT_KB = int(1.5 * (1 << 20))  # 1.5 GB


@pytest.fixture(scope="module")
def trained_lof(tmp_path_factory):
    return trained_run(tmp_path_factory, model="lof")


def _forge_pyod(run_dir, cls, params, rows, dim):
    """Re-sign the run's PyODOnFeatures inspector as PyOD ``cls`` with ``params``, fitted on
    ``rows`` x ``dim`` stored embeddings (a small file: float32 values, torch.save)."""
    import torch

    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    state["detector"]["params"]["detector"] = {"name": cls, "params": params}
    inner = state["detector"]["state"]
    inner.update(detector_class=cls, detector_params=params)
    inner["train_embeddings"] = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    inner["mean"] = torch.zeros(dim, dtype=inner["mean"].dtype)
    inner["scale"] = torch.ones(dim, dtype=inner["scale"].dtype)
    torch.save(state, path)
    return path


def _group_rss_kb(pgid: int) -> int:
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def _infer_bounded(run_dir, image, out, timeout=60):
    """infer in its own process group: (rc, stderr, peak RSS kB); rc None when it ran past
    ``timeout`` or past 1.5 GB (then killed)."""
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}", f"input={image}",
                             f"hydra.run.dir={out}"], env=_cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak = [0]

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], _group_rss_kb(proc.pid))
            if peak[0] > LIMIT_KB:
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, "timeout", peak[0]
    watcher.join(1)
    if peak[0] > LIMIT_KB:
        return None, "memory", peak[0]
    return proc.returncode, err, peak[0]


def _assert_bounded(rc, err, peak, what):
    assert err != "timeout", f"infer still loading or scoring with a stored {what} after 60 s"
    assert err != "memory", f"infer with a stored {what} passed 1.5 GB (peak {peak // 1024} MB)"
    assert "Traceback" not in err, err[-500:]


def test_a_pyod_inspector_re_signed_as_abod_default_never_hangs_infer(trained_lof, tmp_path):
    """ABOD(method='default') is O(n^3) Python loops over the training rows; it is in neither
    QUADRATIC_MEMORY nor REPEATED_WORK, and the stored rows are not bounded. 300 stored
    embeddings of size 4 (an 8 KB inspector): observed infer still running after 60 s, status.json
    ``running``. Expected: refused in one line naming the inspector, or done within seconds."""
    run_dir = copy_run(trained_lof, tmp_path)
    _forge_pyod(run_dir, "pyod.models.abod.ABOD", {"contamination": 0.1, "n_neighbors": 10, "method": "default"},
                300, 4)
    _assert_bounded(*_infer_bounded(run_dir, small_png(trained_lof), tmp_path / "out"), "ABOD")


def test_a_pyod_inspector_re_signed_as_iforest_with_in_range_ints_never_takes_gigabytes(trained_lof, tmp_path):
    """IForest(n_estimators=10000, max_samples=10000): both ints within bounded_ints' -1..10,000,
    their product unbounded; 10,000 stored rows of size 1 (a 43 KB inspector). Observed: 3.8 GB
    RSS and still fitting after 60 s. Expected: the re-fit's work bounded (refused in one line)."""
    run_dir = copy_run(trained_lof, tmp_path)
    _forge_pyod(run_dir, "pyod.models.iforest.IForest",
                {"contamination": 0.1, "n_estimators": 10000, "max_samples": 10000}, 10000, 1)
    _assert_bounded(*_infer_bounded(run_dir, small_png(trained_lof), tmp_path / "out"), "IForest")


def test_a_pyod_inspector_re_signed_as_inne_with_in_range_ints_never_hangs_infer(trained_lof, tmp_path):
    """INNE(n_estimators=10000, max_samples=10000) on 10,000 stored rows of size 1 (43 KB):
    each estimator builds max_samples² distances. Observed: still running after 60 s."""
    run_dir = copy_run(trained_lof, tmp_path)
    _forge_pyod(run_dir, "pyod.models.inne.INNE",
                {"contamination": 0.1, "n_estimators": 10000, "max_samples": 10000}, 10000, 1)
    _assert_bounded(*_infer_bounded(run_dir, small_png(trained_lof), tmp_path / "out"), "INNE")


def test_a_pyod_inspector_re_signed_as_rod_on_wide_embeddings_never_hangs_infer(trained_lof, tmp_path):
    """ROD fits every 3-dimensional subspace of the embedding: C(300, 3) = 4.5 million for 12
    stored rows of size 300 (a 23 KB inspector). Observed: still running after 60 s."""
    run_dir = copy_run(trained_lof, tmp_path)
    _forge_pyod(run_dir, "pyod.models.rod.ROD", {"contamination": 0.1, "parallel_execution": False}, 12, 300)
    _assert_bounded(*_infer_bounded(run_dir, small_png(trained_lof), tmp_path / "out"), "ROD")


def test_a_pyod_inspector_re_signed_as_knn_with_in_range_neighbours_never_takes_gigabytes(trained_lof, tmp_path):
    """KNN(n_neighbors=10000) on 10,001 stored rows of size 1 (a 43 KB inspector): the re-fit asks
    for every row's 10,000 neighbours, a 10,001 x 10,000 distance and index matrix (1.6 GB), plus
    copies. n_neighbors is within bounded_ints' range and the rows are not bounded. Observed: peak
    3.5 GB RSS, 40 s, before failing on the feature size. Expected: refused before fitting."""
    run_dir = copy_run(trained_lof, tmp_path)
    _forge_pyod(run_dir, "pyod.models.knn.KNN",
                {"contamination": 0.1, "n_neighbors": 10000, "method": "largest", "algorithm": "auto",
                 "leaf_size": 30, "metric": "minkowski", "p": 2, "metric_params": None, "radius": 1.0,
                 "n_jobs": 1}, 10001, 1)
    _assert_bounded(*_infer_bounded(run_dir, small_png(trained_lof), tmp_path / "out"), "KNN")


@pytest.fixture(scope="module")
def trained_tiled(tmp_path_factory):
    from tests.conftest import TINY, run_cli

    root = tmp_path_factory.mktemp("trained_tiled") / "run"
    proc = run_cli([*TINY, "tiling=tile128", f"hydra.run.dir={root}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_a_tiled_inspector_with_stride_1_at_a_large_resize_never_hangs_infer(trained_tiled, tmp_path):
    """A tiled PatchCore inspector re-signed with ``tiling.tile_size=16, stride=1`` and
    ``preprocessing.resize=1024``: each value passes its own check (tile >= 16, stride >= 1, resize
    <= 8192), but one 32x32 input image becomes 1009² ≈ 1 million tiles, each through the
    backbone. Observed: infer still running after 60 s on ONE image (status.json ``running``).
    Expected: the tiles per image a stored inspector may ask for are bounded (refused in one
    line naming the inspector), or the image is scored within seconds."""
    import torch

    run_dir = copy_run(trained_tiled, tmp_path)
    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    state["tiling"].update(tile_size=16, stride=1)
    state["preprocessing"]["resize"] = 1024
    torch.save(state, path)
    _assert_bounded(*_infer_bounded(run_dir, small_png(trained_tiled), tmp_path / "out"), "tiling")


@pytest.fixture(scope="module")
def trained_ae(tmp_path_factory):
    from tests.conftest import TINY, run_cli

    root = tmp_path_factory.mktemp("trained_ae") / "run"
    args = [a for a in TINY if not a.startswith("model.")]
    proc = run_cli([*args, "model=autoencoder", "model.epochs=1", f"hydra.run.dir={root}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_an_autoencoder_inspector_with_in_range_shape_params_never_takes_gigabytes(trained_ae, tmp_path):
    """An autoencoder inspector re-signed with ``image_size=1024, depth=1, base_channels=64,
    batch_size=64`` (each within its schema range) and a matching 0.5 MB ``net``: 8 tiny input
    images are each upsampled to 1024² and run as one batch, a 64-channel 1024² activation per
    image (256 MB each). Observed: infer past 4 GB RSS within 17 s (killed). Expected: a load's
    (or a batch's) memory bounded: refused in one line naming the inspector, or scored in
    smaller batches within bounded memory."""
    import torch
    from PIL import Image

    from pyimgano_hydra.models.autoencoder import _network

    run_dir = copy_run(trained_ae, tmp_path)
    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    params = state["detector"]["params"]
    params.update(image_size=1024, depth=1, base_channels=64, batch_size=64)
    state["detector"]["state"]["net"] = _network(3, 64, 1, params["latent_channels"]).state_dict()
    torch.save(state, path)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (100 + i,) * 3).save(images / f"{i}.png")
    _assert_bounded(*_infer_bounded(run_dir, images, tmp_path / "out"), "autoencoder")
