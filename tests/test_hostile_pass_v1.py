"""Attacker pass V1 (line side): a run dir handed over from the lab, read by infer / export /
the API / examples/score_onnx.py, and hostile infer input folders."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, _cli_env, copy_run, small_png


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
    env = _cli_env()
    # as on the line: with PYTHONWARNINGS set (this package sets it in the test process) Python's own
    # runpy imports warnings -> re -> enum before any of our code (docs/WORKBENCH.md)
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=run_dir, env=env,
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


def _scan_bomb(path, scans: int = 10_000, side: int = 4000):
    """A progressive JPEG whose last AC scan is repeated ``scans`` times: libjpeg warns of the
    inconsistent progression and goes on, updating every DCT block once per scan (about 9 ms a
    scan at 4000x4000 here): 10,000 scans are 370 KB on disk and minutes of decoding, inside C
    (SIGTERM waits for it). The header says 4000x4000 gray (16 MB), well under every size limit."""
    import io
    import re

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = [m.start() for m in re.finditer(b"\xff\xda", data)][-1]
    scan = data[last:data.rfind(b"\xff\xd9")]
    path.write_bytes(data[:last] + scan * scans + b"\xff\xd9")
    return path


def test_a_small_jpeg_with_thousands_of_scans_never_stalls_infer(trained, tmp_path):
    """One 370 KB JPEG in an infer input folder kept the line busy for minutes (and a bigger one
    for hours: the cost is scans x blocks, and neither limit counts scans); refused like any
    unreadable image (an error record naming it), the other images still scored."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(small_png(trained).read_bytes())
    _scan_bomb(folder / "b.jpg")
    try:
        proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained}", f"input={folder}",
                               f"hydra.run.dir={tmp_path / 'out'}"], env=_cli_env(),
                              capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("infer still decoding a 370 KB JPEG after 40 s")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "b.jpg" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [("error" in r, "score" in r) for r in records] == [(False, True), (True, False)]


def test_a_small_jpeg_with_thousands_of_scans_never_stalls_score_onnx(exported, tmp_path):
    """examples/score_onnx.py on the line PC: the same 370 KB JPEG decoded for minutes before the
    next image; one line naming it, the other image still scored."""
    bomb = _scan_bomb(tmp_path / "b.jpg")
    artifacts = exported / "categories" / "weave" / "artifacts"
    try:
        proc = subprocess.run([sys.executable, "-I", str(REPO / "examples" / "score_onnx.py"), str(artifacts),
                               str(bomb), str(small_png(exported))], capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("score_onnx.py still decoding a 370 KB JPEG after 40 s")
    assert proc.returncode == 2 and "b.jpg" in proc.stderr, proc.stderr[-1500:]
    assert len(proc.stdout.splitlines()) == 1


# -- attacks that held ---------------------------------------------------------------------
def test_held_a_legacy_format_inspector_declaring_an_8_gb_storage_is_one_line(trained, tmp_path):
    """torch's pre-zip format (no zip check applies) whose pickle declares a 2**31-element storage
    for a 7-float tensor: refused in one line naming the file (peak memory as a good file's, measured by hand)."""
    import struct

    import torch

    run_dir = copy_run(trained, tmp_path)
    inspector = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(inspector, weights_only=True)
    state["detector"]["state"]["memory_bank"] = torch.zeros(7, dtype=torch.float32)
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    at = data.find(b"K\x07")
    inspector.write_bytes(data[:at] + b"J" + struct.pack("<i", 2**31 - 1) + data[at + 2:])
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                           f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"], env=_cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and "inspector.pt" in errors[0], proc.stderr[-1500:]


def test_held_api_run_never_trains_into_a_completed_run_through_links_or_dotdot(trained, tmp_path):
    """``api.run(output_dir=...)`` naming a link to a completed run, a new folder under a link to
    its categories/, or ``missing/..`` into it: refused before anything is written."""
    run_dir = copy_run(trained, tmp_path)
    (tmp_path / "to_run").symlink_to(run_dir)
    (tmp_path / "to_categories").symlink_to(run_dir / "categories")
    before = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    code = ("import sys\nfrom pyimgano_hydra.api import run\nfrom pyimgano_hydra.errors import UserError\n"
            "for out in sys.argv[1:]:\n"
            "    try:\n        run(['dataset.category=weave', 'dataset.limit_train=4'], output_dir=out)\n"
            "        print('RAN', out)\n"
            "    except UserError as exc:\n        print('refused', out)\n")
    outs = [tmp_path / "to_run", tmp_path / "to_categories" / "new", tmp_path / "missing" / ".." / "run" / "new"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, outs)], cwd=tmp_path, env=_cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split().count("refused") == 3, proc.stdout + proc.stderr[-1500:]
    assert sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before
