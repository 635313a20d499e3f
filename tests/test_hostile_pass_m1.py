"""Attacker pass M1 (line side): run dirs, exported bundles and image folders handed to the line.
Each test fails on the code it was written against and passes once the hole is closed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, copy_run, run_cli, small_png, trained_run
from forged_onnx import SCORE_ONNX, artifacts, env, install
from watch_files import IN_OPEN, _on_first_close, _watch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory, export=True)


def _constant_model(inputs):
    """score/map from constants; graph inputs ``inputs`` (value infos) unused."""
    from onnx import TensorProto, helper, numpy_helper

    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])
    amap = helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 128, 128])
    nodes = [helper.make_node("Identity", ["c"], ["score"]), helper.make_node("Identity", ["m"], ["map"])]
    inits = [numpy_helper.from_array(np.array([0.5], dtype=np.float32), "c"),
             numpy_helper.from_array(np.zeros((1, 128, 128), dtype=np.float32), "m")]
    made = helper.make_graph(nodes, "forged", list(inputs), [score, amap], initializer=inits)
    return helper.make_model(made, opset_imports=[helper.make_opsetid("", 17)])


def test_score_onnx_names_model_onnx_for_a_model_with_no_input(trained, tmp_path):
    """A re-signed model.onnx whose graph has no input at all (score and map are constants): ONNX
    Runtime loads it, then ``load`` reads ``session.get_inputs()[0]`` outside any try. Observed: rc 1,
    ``IndexError: list index out of range`` traceback. Expected: one line naming model.onnx, rc 2."""
    run_dir = copy_run(trained, tmp_path)
    install(_constant_model([]), artifacts(run_dir))
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(trained))],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.returncode == 2 and "model.onnx" in proc.stderr, proc.stderr[-800:]


def _snapshot(root: Path) -> dict:
    """Every path below ``root`` (links not followed) -> (size, mtime_ns, inode)."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            info = path.lstat()
            out[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, info.st_ino)
    return out


def _changes(root: Path, before: dict) -> tuple[list, list]:
    after = _snapshot(root)
    return (sorted(set(after) - set(before)),
            sorted(k for k in before if k in after and after[k] != before[k] and not Path(root, k).is_dir()))


def test_an_export_whose_artifacts_folder_appears_as_a_link_never_writes_into_another_run(trained, tmp_path):
    """Run A (never exported: no ``artifacts/``) is exported; while ``torch.onnx.export`` runs,
    ``categories/weave/artifacts`` appears as a link to completed run B's ``categories/weave``.
    export_category checked for links once (trust.no_links) and holds only the category folder
    (files.held_folder): ``held/artifacts/model.onnx`` still resolves the ``artifacts`` name through
    the link. Observed: rc 0, model.onnx and export.json written into B's category folder (B's
    record changed). Expected: B unchanged; the export stops in one line or lands in A."""
    import shutil

    run_a = copy_run(trained, tmp_path, "a")
    shutil.rmtree(artifacts(run_a))
    done = copy_run(trained, tmp_path, "b")
    before = _snapshot(done)
    started = time.monotonic()
    scratch = copy_run(trained, tmp_path, "c")
    shutil.rmtree(artifacts(scratch))
    subprocess.run([sys.executable, "-m", "pyimgano_hydra.export", f"run_dir={scratch}"],
                   cwd=REPO, env=env(), capture_output=True, timeout=180, check=True)
    baseline = time.monotonic() - started
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.export", f"run_dir={run_a}"], cwd=REPO,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.6 * baseline)  # past the link check, inside torch.onnx.export
        try:
            os.symlink(done / "categories" / "weave", artifacts(run_a))
        except FileExistsError:  # a loaded machine: the export made artifacts/ first; B must still be unchanged
            pass
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    added, changed = _changes(done, before)
    assert not added and not changed, (added, changed, proc.returncode, err[-300:])


def test_infer_never_waits_on_an_inspector_swapped_for_a_fifo_after_its_zip_check(trained, tmp_path):
    """``trust.load_weights`` checks inspector.pt (is_file, then ``uncompressed_archive`` opens it,
    reads the zip directory and closes it) and then ``torch.load(path)`` opens it again by name. The
    moment the check's open is closed, inspector.pt is replaced (rename) by a FIFO. Observed: infer
    blocks forever in torch.load's open (killed after 60 s, status.json ``running``). Expected: the
    bytes checked are the bytes loaded (one descriptor), or a one-line refusal naming the file; no hang."""
    run_dir = copy_run(trained, tmp_path)
    inspector = run_dir / "categories" / "weave" / "inspector.pt"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    watcher = _on_first_close(inspector, lambda: os.rename(fifo, inspector))
    out = tmp_path / "out"
    try:
        proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"hydra.run.dir={out}"],
                       module="pyimgano_hydra.infer", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"infer hung on inspector.pt swapped for a FIFO after its check; status: "
                    f"{(out / 'status.json').read_text() if (out / 'status.json').exists() else None}")
    finally:
        watcher.join(1)
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert proc.returncode == 0 or "inspector.pt" in proc.stderr, proc.stderr[-500:]  # the bytes checked, or refused


def test_ctrl_c_held_down_never_leaves_infer_running_or_a_traceback(trained, tmp_path):
    """An operator holds Ctrl-C while infer scores a folder: SIGINT every 2 ms. SIGINT is Python's
    default handler (a KeyboardInterrupt each time: only SIGTERM & co. go through ``_raise_once``),
    so the second one lands inside the first one's cleanup: in ``write_status(INTERRUPTED)`` (the
    atomic write is undone, status.json stays ``running``) or in ``exit_on_interrupt``'s handler
    (a KeyboardInterrupt traceback). Expected: status.json not ``running``, one line, rc 130."""
    from PIL import Image

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(300):
        Image.new("RGB", (64, 64), (i % 256,) * 3).save(inputs / f"{i:03d}.png")
    out = tmp_path / "out"
    from conftest import hold_ctrl_c, start_cli, wait_for

    proc = start_cli([f"run_dir={trained}", f"input={inputs}", f"hydra.run.dir={out}"],
                     module="pyimgano_hydra.infer")
    try:
        assert wait_for(out / "status.json", 120)
        time.sleep(1.0)  # scoring
        err = hold_ctrl_c(proc)
    finally:
        proc.kill()
    status = json.loads((out / "status.json").read_text())
    assert status["status"] != "running", (status, err[-3000:])
    assert "Traceback" not in err and proc.returncode == 130, (proc.returncode, err[-600:])


@pytest.fixture(scope="module")
def trained_lof(tmp_path_factory):
    from conftest import trained_run

    return trained_run(tmp_path_factory, model="lof")


@pytest.mark.parametrize("module", ["pyimgano_hydra.infer", "pyimgano_hydra.export"])
def test_a_small_pyod_inspector_never_takes_gigabytes_to_load(trained_lof, tmp_path, module):
    """A PyODOnFeatures inspector re-signed as ``pyod.models.cof.COF`` (a registry class, default
    params) whose stored ``train_embeddings`` are 14,000 x 1 floats: 58 KB on disk, every check
    passes (bounded_ints bounds int params, bounded_payload the tensor bytes against the file).
    Loading re-fits COF, which builds 14,000 x 14,000 float64 distance matrices. Observed: infer
    3.7 GB peak RSS (16,000 rows: 4.6 GB, 43 s) before a one-line error; export loads the inspector
    (LoadedRun.inspector) before it looks at the detector class, so it re-fits too. Expected: a stored detector whose
    re-fit cost is far past anything its run could have trained is refused before fitting (or
    memory stays under 1.5 GB)."""
    import torch

    from forged_onnx import max_rss_mb

    run_dir = copy_run(trained_lof, tmp_path)
    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    cof = {"contamination": 0.1, "n_neighbors": 20, "method": "fast"}
    state["detector"]["params"]["detector"] = {"name": "pyod.models.cof.COF", "params": cof}
    stored = state["detector"]["state"]
    stored.update(detector_class="pyod.models.cof.COF", detector_params=cof,
                  train_embeddings=torch.randn(14000, 1, generator=torch.Generator().manual_seed(0)),
                  mean=torch.zeros(1, dtype=torch.float64), scale=torch.ones(1, dtype=torch.float64))
    torch.save(state, path)
    assert path.stat().st_size < 100_000
    args = [f"input={small_png(trained_lof)}", f"hydra.run.dir={tmp_path / 'out'}"] if module.endswith("infer") else []
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", module, f"run_dir={run_dir}", *args], timeout=120)
    assert rss < 1536, f"{module} took {rss} MB (rc {rc}) for a {path.stat().st_size >> 10} KB inspector: {stderr[-300:]}"


def _score_onnx_scores(run_dir, images) -> list[float]:
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), *map(str, images)],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    return proc, [json.loads(line)["score"] for line in proc.stdout.splitlines()]


def test_score_onnx_scores_a_float_tiff_as_infer_does(trained, tmp_path):
    """A 32-bit float TIFF (mode F) with values in [0, 1], grey 0.47: infer maps it x255 (grey 120,
    data/images._to_uint8) and scores 55.03, like a grey-120 PNG; examples/score_onnx.py only
    ``convert("L")``s it (0.47 -> 0: black) and prints 78.38, rc 0. The line gets another verdict
    from the same model for the same file, with no word. Expected: the same score as infer (1e-3),
    or a one-line refusal."""
    from PIL import Image

    tiff = tmp_path / "half.tif"
    Image.fromarray(np.full((128, 128), 0.47, dtype=np.float32), mode="F").save(tiff)
    out = tmp_path / "out"
    proc = run_cli([f"run_dir={trained}", f"input={tiff}", "runtime=onnxruntime", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=180)
    assert proc.returncode == 0, proc.stderr[-500:]
    expected = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["score"]
    script, scores = _score_onnx_scores(trained, [tiff])
    assert script.returncode != 0 or abs(scores[0] - expected) < 1e-3, (scores, expected)


def test_score_onnx_gives_no_verdict_for_a_nan_float_tiff(trained, tmp_path):
    """A mode-F TIFF full of NaN: infer refuses it (``refused: float image holds NaN or inf``);
    score_onnx.py converts it to some grey and prints ``pred_label: 1``, rc 0. Expected: one line
    naming the image, non-zero exit, no verdict."""
    from PIL import Image

    tiff = tmp_path / "nan.tif"
    Image.fromarray(np.full((64, 64), np.nan, dtype=np.float32), mode="F").save(tiff)
    script, scores = _score_onnx_scores(trained, [tiff])
    assert script.returncode != 0 and not scores and "nan.tif" in script.stderr, (script.returncode, scores)


def test_infer_never_reads_backbone_weights_through_a_link_swapped_in_after_the_inspector_check(trained, tmp_path):
    """An inspector whose ``weights_path`` is ``backbone_weights.pt``, a regular file beside it: the
    inspector parse refuses a link or a path outside (inspector._stored_weights). The weights are
    read only later, when the first batch builds the backbone (features/backbones.build_backbone:
    ``path.is_file()``, which follows links, then _read_state_dict). Once the input image is decoded,
    backbone_weights.pt is replaced by a link to a file outside the run dir. Observed: that outside
    file is opened and read as the backbone's weights (inotify IN_OPEN on it). Expected: the file
    checked is the file read (held open / checked again), or a one-line refusal; nothing outside."""
    import torch

    run_dir = copy_run(trained, tmp_path)
    folder = run_dir / "categories" / "weave"
    state = torch.load(folder / "inspector.pt", weights_only=True)
    state["detector"]["params"]["weights_path"] = "backbone_weights.pt"
    torch.save(state, folder / "inspector.pt")
    (folder / "backbone_weights.pt").write_bytes(b"checked at parse, read later")
    outside = tmp_path / "outside" / "secret.pt"
    outside.parent.mkdir()
    outside.write_bytes(b"a file outside the run dir")
    link = tmp_path / "link"
    os.symlink(outside, link)
    image = tmp_path / "img.png"
    image.write_bytes(small_png(trained).read_bytes())
    # the image is decoded after the inspector parse, before the first batch builds the backbone
    watcher = _on_first_close(image, lambda: os.rename(link, folder / "backbone_weights.pt"))
    opened = _watch(outside, IN_OPEN)
    out = tmp_path / "out"
    proc = run_cli([f"run_dir={run_dir}", f"input={image}", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=120)
    watcher.join(5)
    assert (folder / "backbone_weights.pt").is_symlink(), "the swap did not happen"
    assert not opened(), f"infer opened {outside} (outside the run dir) through the swapped-in link: {proc.stderr[-300:]}"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-500:]


def test_score_onnx_memory_stays_bounded_for_an_8192_input_and_a_few_elementwise_ops(trained, tmp_path):
    """export.json re-signed with ``input_size [8192, 8192]`` (MAX_SIDE, accepted) and a 1 KB
    model.onnx declaring that input: Cast to float, then four elementwise ops (Mul, Add, Sub, Add),
    each an 805 MB intermediate; the arena is capped only at half the machine's memory. A 32x32 PNG
    is upscaled to 8192x8192. Observed: rc 0, 2977 MB peak RSS. Expected: under 1.5 GB (a tighter
    default cap, or an input size bound by the memory it implies), or a one-line refusal."""
    from onnx import TensorProto, helper

    from forged_onnx import max_rss_mb

    run_dir = copy_run(trained, tmp_path)
    side = 8192
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, side, side])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    amap = helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", side, side])
    nodes = [helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xf", "xf"], ["y"]), helper.make_node("Add", ["y", "xf"], ["z"]),
             helper.make_node("Sub", ["z", "y"], ["w"]), helper.make_node("Add", ["w", "z"], ["v"]),
             helper.make_node("ReduceMean", ["v"], ["score"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["v"], ["map"], axes=[1], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "forged", [images], [score, amap]),
                              opset_imports=[helper.make_opsetid("", 17)])
    install(model, artifacts(run_dir), input_size=[side, side])
    rc, stderr, rss = max_rss_mb([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(trained))],
                                 timeout=120)
    assert rss < 1536, f"score_onnx.py took {rss} MB (rc {rc}) for a 1 KB model.onnx and a 32x32 PNG"
    assert rc == 0 or ("SCORE_ONNX_MAX_MEMORY_GB" in stderr and len(stderr.strip().splitlines()) == 1), stderr[-500:]


def test_infer_onnxruntime_memory_stays_bounded_on_tiled_intermediates_under_the_tensor_limit(trained, tmp_path):
    """A re-signed model.onnx of a few hundred bytes: ``Tile`` of the float image by constant
    repeats [1, 1, 90, 90] (a static 1.6 GB tensor: under the 2 GB each tensor may declare, so
    runtime._check_tensors passes it), then Mul and Add of it (two more). The default arena cap is
    half the machine's memory. Observed: rc 0, 5549 MB peak RSS for one 32x32 image. Expected: a
    small model never takes gigabytes by default (a total bound on declared intermediates, or a
    default cap near what an export needs), or a one-line refusal naming model.onnx."""
    from onnx import helper, numpy_helper

    from forged_onnx import graph, max_rss_mb

    run_dir = copy_run(trained, tmp_path)
    nodes = [helper.make_node("Tile", ["xf", "reps"], ["t"]), helper.make_node("Mul", ["t", "t"], ["t2"]),
             helper.make_node("Add", ["t2", "t"], ["t3"]),
             helper.make_node("ReduceMean", ["t3"], ["r"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["r", "zero"], ["r0"]), helper.make_node("Add", ["s0", "r0"], ["s1"])]
    inits = [numpy_helper.from_array(np.array([1, 1, 90, 90], dtype=np.int64), "reps"),
             numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    install(graph(nodes, "s1", inits), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                  f"input={small_png(trained)}", "runtime=onnxruntime",
                                  f"hydra.run.dir={tmp_path / 'out'}"], timeout=120)
    assert rss < 1536, f"infer runtime=onnxruntime took {rss} MB (rc {rc}) for a tiny model.onnx: {stderr[-300:]}"
