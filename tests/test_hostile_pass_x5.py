"""Hostile pass x5: code execution and lost runs from handed-over files (run dirs, stores, folders)."""
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

LIMIT_KB = int(1.5 * (1 << 20))  # 1.5 GB for infer and all its child processes


@pytest.fixture(scope="module")
def trained_copod(tmp_path_factory):
    return trained_run(tmp_path_factory, model="copod")


def _set_stored_pyod_params(run_dir, **params):
    """Change the stored PyOD params of the weave inspector (both copies training writes)."""
    import torch

    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    state["detector"]["params"]["detector"]["params"].update(params)
    state["detector"]["state"]["detector_params"].update(params)
    torch.save(state, path)
    return path


def _group(pgid: int) -> tuple[int, int]:
    """(processes, summed RSS in kB) of a process group."""
    count = rss = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            count += 1
            with open(f"/proc/{pid}/status") as fh:
                rss += next((int(line.split()[1]) for line in fh if line.startswith("RssAnon")), 0)
        except (OSError, ValueError):
            pass
    return count, rss


def _watched(module, args, timeout):
    """``python -m module args`` in its own process group: (rc or None when killed, stderr, peak
    processes, peak RSS kB); killed past ``timeout`` or LIMIT_KB over the whole group (its joblib
    workers included)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=_cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak, killed = [0, 0], []

    def watch():
        while proc.poll() is None:
            count, rss = _group(proc.pid)
            peak[0], peak[1] = max(peak[0], count), max(peak[1], rss)
            if rss > LIMIT_KB:
                killed.append("memory")
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, "timeout", *peak
    watcher.join(1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind
    except ProcessLookupError:
        pass
    return (None, "memory", *peak) if killed else (proc.returncode, err, *peak)


def _infer_watched(run_dir, image, out, timeout=60):
    return _watched("pyimgano_hydra.infer", [f"run_dir={run_dir}", f"input={image}", f"hydra.run.dir={out}"], timeout)


def test_a_stored_copod_n_jobs_never_forks_hundreds_of_workers_at_load(trained_copod, tmp_path):
    """HOLE. A received COPOD run dir whose inspector stores ``n_jobs=10000`` (in range for
    bounded_ints' -1..10,000; nothing else looks at n_jobs): on load PyOD re-fits COPOD, which runs
    ``joblib.Parallel(n_jobs=min(n_jobs, n_features))`` on the loky (process) backend: 304 worker
    Pythons for the 304-wide embedding. Observed: 71 processes and 3 GB RSS 9 s in (killed),
    ``[Parallel(n_jobs=304)]: Using backend LokyBackend with 304 concurrent workers`` on stderr;
    on a line PC that is an OOM kill that leaves infer's status.json at ``running``.
    Expected: a stored n_jobs is refused in one line naming it (or forced to 1), infer stays
    within a few processes and well under 1.5 GB."""
    run_dir = copy_run(trained_copod, tmp_path)
    _set_stored_pyod_params(run_dir, n_jobs=10000)
    rc, err, procs, rss = _infer_watched(run_dir, small_png(trained_copod), tmp_path / "out")
    assert err != "timeout", "infer still loading after 60 s"
    assert err != "memory", f"infer with a stored COPOD n_jobs=10000 passed 1.5 GB ({procs} processes)"
    assert procs <= 8, f"{procs} processes for one stored COPOD"
    assert "Traceback" not in err, err[-500:]
    if rc != 0:
        assert "n_jobs" in err.strip().splitlines()[-1], err[-500:]


def _run_watched(args, timeout=90):
    """The app, watched as :func:`_watched`."""
    return _watched("pyimgano_hydra", args, timeout)


def _handed_dataset(tmp_path):
    """A copy of the session's synthetic weave category as a received MVTec-layout dataset."""
    import glob
    import shutil

    found = sorted(glob.glob(os.path.join(os.environ["PYIMGANO_CACHE"], "synthetic", "*", "weave")))
    assert found, "synthetic weave not generated"
    root = tmp_path / "received"
    shutil.copytree(found[0], root / "weave")
    return root


def test_a_16_bit_colour_mask_with_a_sparse_tail_never_takes_gigabytes(trained, tmp_path):
    """HOLE. A received dataset whose one ground-truth mask is a 16-bit colour PNG (which
    ``images._open_mask`` hands to OpenCV) followed by a sparse 1 GB tail after IEND: 4 KB on
    disk. ``_open_mask`` reads the whole rest of the file (``np.frombuffer(handle.read())``) before
    cv2.imdecode. Observed (1.4 GB tail): training peaks at 3.5 GB RSS (804 MB without it) and
    completes; with a 2.2 GB tail, 5 GB RSS and the whole run ``failed`` on one raw line
    ``cv2.error: OpenCV(5.1.0) ... buf.checkVector(1, CV_8U) > 0 in function 'imdecode_'`` naming
    no file (dataset.on_bad_image=skip cannot skip it). Expected: only the PNG's own chunks are read
    (the run completes) or the mask is refused in one line naming it, within 1.5 GB."""
    import cv2
    import numpy as np

    root = _handed_dataset(tmp_path)
    mask = root / "weave" / "ground_truth" / "crack" / "000_mask.png"
    plain = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    colour = np.repeat(((plain > 0).astype(np.uint16) * 65535)[..., None], 3, axis=2)
    assert cv2.imwrite(str(mask), colour)
    with open(mask, "r+b") as fh:
        fh.truncate(1 << 30)  # a sparse tail: a hole, no disk blocks
    rc, err, procs, rss = _run_watched(["dataset=mvtec", f"dataset.root={root}", "dataset.category=weave",
                                        "dataset.limit_train=8", "model.coreset_ratio=0.2",
                                        f"hydra.run.dir={tmp_path / 'run'}"])
    assert err != "timeout", "training still running after 90 s"
    assert err != "memory", f"one 4 KB-on-disk mask took training past 1.5 GB (peak {rss // 1024} MB)"
    assert "Traceback" not in err, err[-500:]
    if rc != 0:
        assert "000_mask.png" in err.strip().splitlines()[-1], err[-500:]


def _png_with_a_sparse_idat(path, length=(1 << 31) - 1):
    """A valid 32x32 grey RGB PNG whose one IDAT chunk declares ``length`` bytes: its zlib stream,
    then a hole (a sparse file: a few blocks on disk), then IEND."""
    import struct
    import zlib

    width = height = 32
    raw = b"".join(b"\x00" + bytes([120] * width * 3) for _ in range(height))
    stream = zlib.compress(raw)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        fh.write(struct.pack(">I", length) + b"IDAT" + stream)
        fh.truncate(fh.tell() - len(stream) + length)
        fh.seek(0, 2)
        fh.write(b"\0\0\0\0" + chunk(b"IEND", b""))
    return path


def test_an_infer_input_png_with_a_sparse_2_gb_idat_never_takes_gigabytes(trained, tmp_path):
    """HOLE. A 32x32 PNG whose IDAT chunk declares 2 GB, its zlib stream (the whole image) first and
    a hole after it: 64 KB on disk. The completeness check (``headers``: rows inflated vs IHDR)
    does ``handle.read(length)`` of the declared chunk. Observed: infer peaks at 4.7 GB RSS (about
    1 GB for a plain PNG) for this one image and scores it. Expected: chunk data read in bounded
    pieces, or the image refused as an error record naming it; infer within 1.5 GB."""
    image = _png_with_a_sparse_idat(tmp_path / "line.png")
    rc, err, procs, rss = _infer_watched(trained, image, tmp_path / "out")
    assert err != "timeout", "infer still running after 60 s"
    assert err != "memory", f"one 64 KB-on-disk PNG took infer past 1.5 GB (peak {rss // 1024} MB)"
    assert "Traceback" not in err, err[-500:]
    assert rc == 0 or "line.png: refused: a sparse file" in err, err[-500:]  # its error record, the only image


def test_the_api_loading_a_pyod_run_never_imports_from_the_image_folder_a_script_runs_in(trained_copod, tmp_path):
    """HOLE (code execution). ``python ~/score.py`` started in a received image folder (a script's
    sys.path holds its own folder, never the working dir), ``score.py`` calling
    ``api.load_inspector(run_dir)`` on a PyOD run whose stored detector has ``n_jobs=2`` (in range;
    any COPOD/ECOD fitted with n_jobs > 1): the re-fit starts joblib's loky workers as
    ``python -m joblib.externals.loky...`` in the working dir, without PYTHONSAFEPATH (set only by
    the app, infer and export), so the image folder's ``joblib/__init__.py`` runs in them.
    Observed: marker written (and a child traceback). Expected: no marker."""
    run_dir = copy_run(trained_copod, tmp_path)
    _set_stored_pyod_params(run_dir, n_jobs=2)
    images = tmp_path / "line_images"
    (images / "joblib").mkdir(parents=True)
    marker = tmp_path / "marker"
    (images / "joblib" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (images / "part.png").write_bytes(small_png(trained_copod).read_bytes())
    script = tmp_path / "scripts" / "score.py"
    script.parent.mkdir()
    script.write_text("from pyimgano_hydra.api import load_inspector\n"
                      f"inspector = load_inspector({str(run_dir)!r})\n"
                      "print(inspector.predict(inspector.load_images(['part.png'])))\n")
    env = _cli_env()
    env.pop("PYTHONSAFEPATH", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=images, env=env, capture_output=True, text=True,
                          timeout=120)
    assert not marker.exists(), "the image folder's joblib/__init__.py ran in a loky worker"
    assert proc.returncode == 0, proc.stderr[-800:]


def test_the_api_with_decode_workers_never_imports_from_the_dataset_folder_a_script_runs_in(trained, tmp_path):
    """HOLE (code execution). ``python ~/train.py`` started inside a received dataset folder,
    ``train.py`` calling ``api.run([..., "loader.num_workers=2"])``: multiprocessing starts its
    helper Pythons (resource tracker, forkserver: ``python -c ...``) in the working dir without
    PYTHONSAFEPATH (the app, infer and export set it; the API does not), so the folder's
    ``multiprocessing/__init__.py`` runs. Observed: marker written, a child traceback
    (``No module named 'multiprocessing.resource_tracker'``). Expected: no marker."""
    root = _handed_dataset(tmp_path)
    marker = tmp_path / "marker"
    (root / "multiprocessing").mkdir()
    (root / "multiprocessing" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    script = tmp_path / "scripts" / "train.py"
    script.parent.mkdir()
    script.write_text("from pyimgano_hydra.api import run\n"
                      f"run(['dataset=mvtec', 'dataset.root={root}', 'dataset.category=weave', "
                      "'dataset.limit_train=8', 'dataset.limit_test=4', 'model.coreset_ratio=0.2', "
                      f"'loader.num_workers=2'], output_dir={str(tmp_path / 'run')!r})\n")
    env = _cli_env()
    env.pop("PYTHONSAFEPATH", None)
    subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert not marker.exists(), "the dataset folder's multiprocessing/__init__.py ran in a helper Python"


def test_held_infer_of_one_category_never_needs_another_categorys_files(tmp_path):
    """HELD. A two-category run whose washer inspector is garbage, whose washer report.json is
    broken JSON, or whose washer folder is gone: ``infer category=weave`` scores weave's images."""
    import shutil

    from tests.conftest import TINY, run_cli

    run_dir = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("dataset.category")]
    proc = run_cli([*args, "dataset.category=[weave,washer]", "dataset.limit_train=8", "dataset.limit_test=4",
                    f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-800:]
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 120, 120)).save(image)
    washer = lambda run: run / "categories" / "washer"  # noqa: E731
    damages = {"inspector": lambda run: (washer(run) / "inspector.pt").write_bytes(b"garbage"),
               "report": lambda run: (washer(run) / "report.json").write_text("{"),
               "folder": lambda run: shutil.rmtree(washer(run))}
    for name, damage in damages.items():
        copy = tmp_path / f"copy_{name}"
        shutil.copytree(run_dir, copy)
        damage(copy)
        out = tmp_path / f"out_{name}"
        proc = run_cli([f"run_dir={copy}", f"input={image}", "category=weave", f"hydra.run.dir={out}"],
                       module="pyimgano_hydra.infer", timeout=120)
        assert proc.returncode == 0, (name, proc.stderr[-800:])
        assert '"score"' in (out / "predictions.jsonl").read_text(), name


def test_an_infer_input_jpeg_with_a_sparse_32_gb_tail_never_hangs_infer(trained, tmp_path):
    """HOLE (hang). A 32x32 JPEG followed by a 32 GB hole (a sparse file: 8 KB on disk). Before
    decoding, ``headers.jpeg_scans`` counts SOS markers over the whole file in 1 MB reads, bounded
    by the count only, never by bytes: 18 s per 8 GB here, so this one image keeps infer busy for
    minutes (a 1 TB hole: most of an hour), status ``running``. Expected: the scan stops at the
    JPEG's EOI or a byte bound; infer is done (image scored or an error record) within 30 s (about 8 s without the hole)."""
    from PIL import Image

    image = tmp_path / "line.jpg"
    Image.new("RGB", (32, 32), (120, 120, 120)).save(image)
    with open(image, "r+b") as fh:
        fh.truncate(32 << 30)
    rc, err, procs, rss = _infer_watched(trained, image, tmp_path / "out", timeout=30)
    assert err != "timeout", "infer still on one sparse 8 KB-on-disk JPEG after 30 s"
    assert "Traceback" not in err, str(err)[-500:]
    assert rc == 0 or "line.jpg: refused: a sparse file" in err, str(err)[-500:]
