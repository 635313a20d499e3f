"""Attacker pass W1 (line side): infer / export / score_onnx.py input images, a received run dir and
the environment a line PC plausibly has; new variants after V1..V3."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import REPO, _cli_env, run_cli, small_png


def _tiled_tiff(tile_side: int, width: int = 16, height: int = 16) -> bytes:
    """A little-endian RGB TIFF of ``width`` x ``height`` pixels stored as ONE deflated tile of
    ``tile_side`` x ``tile_side`` pixels (12 bytes of data)."""
    data = zlib.compress(b"\x00" * 64)
    tags = sorted([(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 2), (277, 3, 3),
                   (284, 3, 1), (322, 4, tile_side), (323, 4, tile_side), (324, 4, 8), (325, 4, len(data))])
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        ifd += struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd


def test_a_158_byte_tiff_declaring_one_huge_tile_never_takes_gigabytes(tmp_path):
    """A 16x16 TIFF (158 bytes) whose one deflated tile is declared 26752x26752: the header's
    size check sees 16x16 (768 bytes), libtiff allocates and fills the whole 2.1 GB tile. Infer
    peaked at 2.7 GB RSS for this one file (score_onnx.py at 2.2 GB, the same Pillow path); the
    file should be refused (tile far larger than the image / than dataset.max_image_megabytes)
    before decoding, within a few hundred MB."""
    path = tmp_path / "a.tif"
    path.write_bytes(_tiled_tiff(26752))
    code = ("from pyimgano_hydra.data.images import load_image\n"
            "from pyimgano_hydra.errors import DataError\n"
            f"try: load_image({str(path)!r}, resize=128)\n"
            "except DataError as exc: print(exc)\n"
            "print('peak_kb', int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))"
            ".split()[1]))\n")  # VmHWM: ru_maxrss keeps the forking pytest's peak across exec
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stdout.split("peak_kb")[-1]) / 1024
    assert peak_mb < 1024, f"decoding a {path.stat().st_size}-byte TIFF peaked at {peak_mb:.0f} MB"


def test_infer_onnxruntime_runs_under_a_nested_openmp_thread_count(exported, tmp_path):
    """OMP_NUM_THREADS=4,2 is valid OpenMP (threads per nesting level; libgomp and torch accept
    it, runtime=torch and score_onnx.py score fine). runtime=onnxruntime does
    int(os.environ['OMP_NUM_THREADS']) and fails the inference blaming the model:
    "model.onnx: not a loadable ONNX model (ValueError: invalid literal for int() ... '4,2')"
    (so does OMP_NUM_THREADS=abc: the line is told its exported model is broken)."""
    env = {"OMP_NUM_THREADS": "4,2"}
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={exported}", f"input={small_png(exported)}", "runtime=onnxruntime",
                    f"hydra.run.dir={out}"], module="pyimgano_hydra.infer", env=env, timeout=120)
    assert "model.onnx" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"


def test_score_onnx_scores_an_image_given_through_a_symlink_as_infer_does(exported, tmp_path):
    """A line keeps 'latest.png' -> the camera's newest file: infer scores the link; score_onnx.py
    reads every image with O_NOFOLLOW (meant for export.json / model.onnx) and gives no verdict,
    naming the wrong thing: "latest.png: ValueError: a symlink; an artifacts dir's files are read
    only as plain files" (exit 2)."""
    link = tmp_path / "latest.png"
    link.symlink_to(small_png(exported))
    artifacts = exported / "categories" / "weave" / "artifacts"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "score_onnx.py"), str(artifacts), str(link)],
                          capture_output=True, text=True, timeout=60, env=_cli_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[0])["image"] == str(link)


def test_held_infer_with_an_ascii_console_and_non_ascii_paths_completes(exported, tmp_path):
    """Held: PYTHONIOENCODING=ascii (or LC_ALL=C without UTF-8 mode) with a non-ASCII run dir,
    input and output dir (quoted for Hydra's grammar), and an undecodable byte in an image name:
    the inference completes, the console lines are escaped."""
    images = tmp_path / "prüf"
    images.mkdir()
    (images / "ä.png").write_bytes(small_png(exported).read_bytes())
    os.link(images / "ä.png", os.path.join(os.fsencode(images), b"bad\xffname.png"))
    out = tmp_path / "ausgabe_ö"
    for env in ({"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}):
        target = out.with_name(out.name + env.get("LC_ALL", ""))
        proc = run_cli([f"run_dir={exported}", f"input='{images}'", f"hydra.run.dir='{target}'"],
                       module="pyimgano_hydra.infer", env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert len((target / "predictions.jsonl").read_bytes().splitlines()) == 2


def test_held_torch_force_no_weights_only_load_never_unpickles_a_received_inspector(exported, tmp_path):
    """Held: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (set on a PC for another tool's old checkpoints)
    turns torch.load into a full unpickler only where weights_only is not passed; infer passes it:
    a pickled inspector is refused in one line, the marker is never written."""
    import shutil

    from conftest import pickle_that_touches

    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    marker = tmp_path / "MARKER"
    pickle_that_touches(run_dir / "categories" / "weave" / "inspector.pt", marker)
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(exported)}", f"hydra.run.dir={tmp_path / 'out'}"],
                   module="pyimgano_hydra.infer", env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, timeout=120)
    assert proc.returncode != 0
    assert not marker.exists()
    assert "inspector.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_a_progressive_mpo_is_counted_at_its_coefficients_like_a_progressive_jpeg(tmp_path):
    """A progressive JPEG is counted at its DCT coefficients (2x its pixels) against
    dataset.max_image_megabytes; the same file with an MP (multi-picture) APP2 block opens as
    format "MPO" and skips that check (and the draft): a 660 KB 13000x13000 progressive gray MPO
    decoded with 544 MB RSS where the .jpg of the same pixels is refused ("holds 338 MB, over
    ... 256"). Scaled down here with max_megabytes=1.5: 1000x1000 gray, 2 MB held."""
    from PIL import Image

    from pyimgano_hydra.data.images import load_image
    from pyimgano_hydra.errors import DataError

    image = Image.new("L", (1000, 1000), 100)
    image.save(tmp_path / "a.jpg", "JPEG", progressive=True)
    image.save(tmp_path / "a.mpo", "MPO", save_all=True, append_images=[Image.new("L", (16, 16))], progressive=True)
    with pytest.raises(DataError, match="holds"):
        load_image(tmp_path / "a.jpg", resize=128, max_megabytes=1.5)
    with pytest.raises(DataError, match="holds"):
        load_image(tmp_path / "a.mpo", resize=128, max_megabytes=1.5)


@pytest.mark.parametrize("value,expected", [("4,2", 1), ("1", 1), ("abc", 0), ("-1", 0), ("", 0), ("100000", None)])
def test_onnxruntime_threads_follow_omp_num_threads_outer_level_up_to_the_cpus(monkeypatch, value, expected):
    """OMP_NUM_THREADS=100000 took infer runtime=onnxruntime to 17 GB: at most the CPUs; a value
    that is no positive number leaves the runtime's default (0)."""
    from pyimgano_hydra.export.runtime import omp_threads

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(os, "cpu_count", lambda: 1 if value != "100000" else 2)
    assert omp_threads() == (2 if expected is None else expected)
