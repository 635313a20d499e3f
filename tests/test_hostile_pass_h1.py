"""Attacker pass H1: hostile run dirs on the line side (infer, export, ONNX scoring) that hang, blow up or lose a run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from forged_onnx import artifacts, env, graph, install, matmul_chain, max_rss_mb
from conftest import REPO, copy_run, run_cli, small_png, trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One completed TINY run, exported to ONNX; each test forges a file in a copy of it."""
    return trained_run(tmp_path_factory, export=True)








def _loop_model(trips=10**12):
    """score = a Loop of ``trips`` identity iterations over the mean pixel: no tensor is large,
    shape inference sees nothing wrong, ONNX Runtime spins for ever."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    inits = [numpy_helper.from_array(np.array(trips, dtype=np.int64), "M"),
             numpy_helper.from_array(np.array(True), "C")]
    return graph([helper.make_node("Loop", ["M", "C", "s0"], ["s1"], body=body)], "s1", inits)




def test_infer_onnxruntime_refuses_an_exported_model_with_an_endless_loop(trained, tmp_path):
    """model.onnx = a valid graph with the export's inputs/outputs whose score passes through a
    ``Loop`` of 10**12 iterations; export.json re-signed with its sha256. ``_check_tensors`` only
    bounds tensor sizes, so ``infer runtime=onnxruntime`` hangs in session.run for ever (observed:
    still running after 11 minutes, status.json "running"; SIGTERM from ``timeout 60`` did not stop it).
    Expected: refused in one line naming model.onnx (ops outside what export writes: Loop, If, Scan...)."""
    run_dir = copy_run(trained, tmp_path)
    install(_loop_model(), artifacts(run_dir))
    try:
        proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", "runtime=onnxruntime",
                        f"hydra.run.dir={tmp_path / 'infer'}"], module="pyimgano_hydra.infer", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("infer runtime=onnxruntime still running after 30 s on a model.onnx with a 10**12-trip Loop")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "model.onnx" in proc.stderr, proc.stderr[-800:]


def test_score_onnx_refuses_an_exported_model_with_an_endless_loop(trained, tmp_path):
    """The same forged Loop model through ``examples/score_onnx.py`` (it checks only the sha256):
    it hangs in session.run. Expected: refused in one line naming model.onnx, non-zero exit."""
    run_dir = copy_run(trained, tmp_path)
    install(_loop_model(), artifacts(run_dir))
    try:
        proc = subprocess.run([sys.executable, str(REPO / "examples" / "score_onnx.py"), str(artifacts(run_dir)),
                               str(small_png(trained))], capture_output=True, text=True, timeout=30, env=env())
    except subprocess.TimeoutExpired:
        pytest.fail("score_onnx.py still running after 30 s on a model.onnx with a 10**12-trip Loop")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "model.onnx" in proc.stderr, proc.stderr[-800:]



def test_sigterm_stops_infer_onnxruntime_inside_session_run(trained, tmp_path):
    """SIGTERM while ONNX Runtime runs a long graph (a chain of big MatMuls): ``sigterm_as_interrupt`` turns
    it into a Python KeyboardInterrupt, which is never delivered while session.run holds the thread;
    observed: SIGTERM and then SIGINT ignored, status.json left "running" until SIGKILL.
    Expected: infer ends within seconds of SIGTERM, status.json "interrupted", one line on stderr."""
    run_dir = copy_run(trained, tmp_path)
    install(matmul_chain(400), artifacts(run_dir))
    out = tmp_path / "infer"
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                             f"input={small_png(trained)}", "runtime=onnxruntime", f"hydra.run.dir={out}"],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None and not (out / "status.json").exists():
            time.sleep(0.2)
        time.sleep(3)  # into session.run
        assert proc.poll() is None, proc.communicate()[1][-800:]
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("infer runtime=onnxruntime ignored SIGTERM for 15 s (inside ONNX Runtime's session.run); "
                        f"status.json: {(out / 'status.json').read_text()}")
        assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
        assert "Traceback" not in stderr, stderr[-800:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alloc_model(k):
    """score multiplied by the sum of a ConstantOfShape whose length is (max pixel) * ``k``: the size
    comes from the image at run time, so shape inference (``data_prop=True``) sees an unknown dim."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMax", ["images"], ["mx"], keepdims=0),
             helper.make_node("Cast", ["mx"], ["mx64"], to=TensorProto.INT64),
             helper.make_node("Mul", ["mx64", "K"], ["n"]),
             helper.make_node("ConstantOfShape", ["n"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["bs"], keepdims=1),
             helper.make_node("Mul", ["s0", "bs"], ["s1"])]
    return graph(nodes, "s1", [numpy_helper.from_array(np.array([k], dtype=np.int64), "K")])



@pytest.mark.parametrize("k, cap", [(10**9, None), (6_500_000, 1)], ids=["default-cap", "onnx_max_memory_gb=1"])
def test_infer_onnxruntime_bounds_a_data_dependent_constantofshape(trained, tmp_path, k, cap):
    """model.onnx (1 KB) = the export's interface plus ConstantOfShape([max pixel * 6.5e6]) summed into
    the score; export.json re-signed. Shape inference cannot size it (the length comes from the
    pixels), so ``_check_tensors`` lets it through; observed: rc 0, "1 images scored", max RSS 3780 MB
    for a 32x32 gray(120) image (the memory scales with ``k`` and the pixel values: OOM at will).
    Expected: run under a memory bound (ONNX Runtime's arena capped at half of the machine's memory, or
    at ``onnx_max_memory_gb``): past it, one line naming model.onnx and the key; never gigabytes."""
    run_dir = copy_run(trained, tmp_path)
    install(_alloc_model(k), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                   f"input={small_png(trained)}", "runtime=onnxruntime",
                                   *([f"onnx_max_memory_gb={cap}"] if cap else []),
                                   f"hydra.run.dir={tmp_path / 'infer'}"])
    assert rss < 2048, f"infer runtime=onnxruntime took {rss} MB (rc {rc}) for a 1 KB forged model.onnx"
    assert "Traceback" not in stderr, stderr[-800:]
    assert rc != 0 and "model.onnx" in stderr and "onnx_max_memory_gb" in stderr, stderr[-800:]


def test_score_onnx_bounds_a_data_dependent_constantofshape(trained, tmp_path):
    """The same ConstantOfShape model through ``examples/score_onnx.py`` (no tensor check at all)."""
    run_dir = copy_run(trained, tmp_path)
    install(_alloc_model(10**9), artifacts(run_dir))  # 480 GB: past half of any machine's memory
    rc, stderr, rss = max_rss_mb([sys.executable, str(REPO / "examples" / "score_onnx.py"),
                                   str(artifacts(run_dir)), str(small_png(trained))])
    assert rss < 2048, f"score_onnx.py took {rss} MB (rc {rc}) for a 1 KB forged model.onnx"
    assert "Traceback" not in stderr, stderr[-800:]
    assert rc != 0 and "model.onnx" in stderr, stderr[-800:]


def _score_model(score_nodes, inits=(), map_nodes=None):
    """The export's interface with ``score`` (and optionally ``map``) computed by the given nodes
    (inputs available: ``xf`` float images, ``s0`` the per-image mean pixel)."""
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, 128, 128])
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("map", TensorProto.FLOAT, None)]
    nodes = [helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf"], ["s0"], axes=[1, 2, 3], keepdims=0), *score_nodes,
             *(map_nodes or [helper.make_node("ReduceMean", ["xf"], ["map"], axes=[1], keepdims=0)])]
    graph = helper.make_graph(nodes, "forged", [images], outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_infer_onnxruntime_loses_no_image_when_the_model_returns_fewer_scores(trained, tmp_path):
    """model.onnx returns only the first image's score (``Slice(score, 0, 1)``) for a batch of 3;
    export.json re-signed. ``score_all`` zips the batch's items with the model's records, so two
    images vanish: observed rc 0, "1 images scored ... 1 anomalous, 0 normal", predictions.jsonl
    and summary.json (n_images 1) hold one record, no word about the other two.
    Expected: a model whose outputs do not match its batch is refused in one line naming model.onnx
    (non-zero exit), or every input image gets a record."""
    from onnx import helper, numpy_helper
    from PIL import Image

    run_dir = copy_run(trained, tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (100 + 10 * i,) * 3).save(inputs / f"{i}.png")
    install(_score_model([helper.make_node("Slice", ["s0", "st", "en"], ["score"])],
                          [numpy_helper.from_array(np.array([0], dtype=np.int64), "st"),
                           numpy_helper.from_array(np.array([1], dtype=np.int64), "en")]), artifacts(run_dir))
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={inputs}", "runtime=onnxruntime", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    if proc.returncode == 0:
        records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(records) == 3, f"3 input images, {len(records)} records; stdout: {proc.stdout[-300:]}"
    else:
        assert "model.onnx" in proc.stderr, proc.stderr[-800:]


def test_infer_onnxruntime_never_calls_a_nan_score_normal(trained, tmp_path):
    """model.onnx returns NaN scores (``0/0``); export.json re-signed. Observed: rc 0, "1 images
    scored ...: 0 anomalous, 1 normal", the record {"score": null, "pred_label": 0}: a detector
    that produced no number passes the part as good (``score > threshold`` is False for NaN).
    Expected: a non-finite score is an error naming model.onnx (or the image), never a "normal" verdict."""
    from onnx import helper

    run_dir = copy_run(trained, tmp_path)
    install(_score_model([helper.make_node("Sub", ["s0", "s0"], ["z"]), helper.make_node("Div", ["z", "z"], ["score"])]),
             artifacts(run_dir))
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", "runtime=onnxruntime", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    if proc.returncode == 0:
        for line in (out / "predictions.jsonl").read_text().splitlines():
            record = json.loads(line)
            assert not (record.get("score") is None and record.get("pred_label") == 0), record
    else:
        assert "model.onnx" in proc.stderr or "img.png" in proc.stderr, proc.stderr[-800:]


def test_infer_onnxruntime_nan_map_error_names_the_model(trained, tmp_path):
    """model.onnx returns a NaN anomaly map; infer with defects=default defects.pixel_threshold=0.5.
    Observed: rc 2 and the one line "error: anomaly map: contains NaN or inf; fix the detector output
    before extracting defects": it names neither model.onnx nor the image.
    Expected: the error line names the file (model.onnx, or the image whose map it is)."""
    from onnx import helper

    run_dir = copy_run(trained, tmp_path)
    install(_score_model([helper.make_node("Identity", ["s0"], ["score"])], map_nodes=[
        helper.make_node("ReduceMean", ["xf"], ["m0"], axes=[1], keepdims=0),
        helper.make_node("Sub", ["m0", "m0"], ["mz"]), helper.make_node("Div", ["mz", "mz"], ["map"])]),
        artifacts(run_dir))
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", "runtime=onnxruntime", "defects=default",
                    "defects.pixel_threshold=0.5", f"hydra.run.dir={tmp_path / 'infer'}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "model.onnx" in proc.stderr or "img.png" in proc.stderr, proc.stderr[-800:]


def test_score_onnx_refuses_an_input_size_the_model_does_not_take(trained, tmp_path):
    """export.json's ``input_size`` forged to [16384, 16384] (inside score_onnx.py's own 1..16384
    bound; the sha256 still matches the real model.onnx, whose input is 3x128x128). ``read_image``
    upsizes every image to 16384x16384 RGB before ONNX Runtime rejects the shape; observed: max RSS
    2635 MB for a 32x32 PNG, then "error: .../img.png: InvalidArgument: ... Got invalid dimensions".
    Expected: input_size checked against the model's input (or refused) before any image is decoded;
    one line naming export.json; never gigabytes."""
    run_dir = copy_run(trained, tmp_path)
    manifest_path = artifacts(run_dir) / "export.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["input_size"] = [16384, 16384]
    manifest_path.write_text(json.dumps(manifest))
    rc, stderr, rss = max_rss_mb([sys.executable, str(REPO / "examples" / "score_onnx.py"),
                                   str(artifacts(run_dir)), str(small_png(trained))])
    assert rc != 0 and "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"score_onnx.py took {rss} MB on a forged input_size ({stderr.strip()[-200:]})"
    assert "export.json" in stderr, stderr[-800:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_export_interrupted_midway_says_so_in_one_line(trained, tmp_path, sig):
    """``python -m pyimgano_hydra.export`` interrupted while it builds the graph (at ~60% and ~85% of
    an uninterrupted export's time). Export installs no interrupt handling (no ``exit_on_interrupt`` /
    ``sigterm_as_interrupt``, unlike infer): observed SIGINT -> rc -2 and a full Python traceback
    ending in "KeyboardInterrupt" (…importlib._bootstrap… _compile_bytecode) or nothing at all;
    SIGTERM -> rc -15 and an empty stderr. Expected: non-zero exit, one line on stderr saying the
    export was interrupted, no traceback, and no half-written artifacts."""
    source = copy_run(trained, tmp_path, "timed")
    shutil.rmtree(source / "categories" / "weave" / "artifacts")
    started = time.monotonic()
    proc = run_cli([f"run_dir={source}"], module="pyimgano_hydra.export", timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    duration = time.monotonic() - started
    for fraction in (0.6, 0.85):
        run_dir = copy_run(trained, tmp_path, f"run{fraction}")
        shutil.rmtree(run_dir / "categories" / "weave" / "artifacts")
        proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.export", f"run_dir={run_dir}"], cwd=REPO,
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(duration * fraction)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        if proc.returncode == 0:
            continue  # finished before the signal landed
        assert "Traceback" not in stderr, f"{sig.name} at {fraction:.0%}: {stderr[-600:]}"
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "interrupt" in lines[0].lower(), \
            f"{sig.name} at {fraction:.0%}: rc {proc.returncode}, stderr {stderr[-300:]!r}"


def test_infer_never_waits_on_an_input_image_swapped_for_a_fifo(trained, tmp_path):
    """TOCTOU: infer collects input=<folder> (3 PNGs, regular files), writes status.json, then loads
    the inspector; in that window 1.png is replaced by a FIFO. The decoder opens it with a blocking
    ``open`` (Pillow's ``Image.open(path)``) and waits for a writer for ever; observed: still running
    after 40 s, status.json "running" (reproduced on the first try).
    Expected: the file is opened non-blocking / checked on the open descriptor, recorded as unreadable
    (or refused in one line naming it); infer ends."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        shutil.copy(small_png(trained), inputs / f"{i}.png")
    out = tmp_path / "infer"
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained}",
                             f"input={inputs}", f"hydra.run.dir={out}"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (out / "status.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        (inputs / "1.png").unlink()
        os.mkfifo(inputs / "1.png")
        try:
            _, stderr = proc.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            pytest.fail(f"infer blocked on a FIFO input for 25 s; status.json: {(out / 'status.json').read_text()}")
        assert "Traceback" not in stderr, stderr[-800:]
        assert json.loads((out / "status.json").read_text())["status"] != "running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_score_onnx_never_waits_on_a_fifo_image(trained, tmp_path):
    """``score_onnx.py <artifacts> *.png`` where the shell glob picks up a FIFO named x.png: the
    script reads export.json / model.onnx non-blocking, but opens images with a blocking
    ``Image.open(path)``; observed: hangs for ever. Expected: one line naming the file, non-zero exit."""
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    try:
        proc = subprocess.run([sys.executable, str(REPO / "examples" / "score_onnx.py"), str(artifacts(trained)),
                               str(fifo)], capture_output=True, text=True, timeout=30, env=env())
    except subprocess.TimeoutExpired:
        pytest.fail("score_onnx.py blocked on a FIFO image for 30 s")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "x.png" in proc.stderr, proc.stderr[-800:]


def test_infer_onnxruntime_bounds_memory_of_a_long_node_chain(trained, tmp_path):
    """model.onnx = the export's interface with 600,000 ``Identity`` nodes chained into the score
    (~17 MB, far under the 2 GB model limit); export.json re-signed. Loading it (protobuf parse,
    ``_check_tensors``' walk and ``infer_shapes(data_prop=True)``, then ONNX Runtime's graph) costs
    ~4 KB of memory per 28-byte node: observed 500,000 nodes (14.8 MB) -> max RSS 2057 MB, 24 s; 600,000 -> 2377 MB, 32 s;
    and it grows linearly (a 150 MB model would need ~20 GB).
    Expected: a graph far larger than any export writes (the real PatchCore export has ~100 nodes)
    refused in one line naming model.onnx, memory bounded."""
    from onnx import helper

    run_dir = copy_run(trained, tmp_path)
    n = 600_000
    nodes = [helper.make_node("Identity", [f"t{i}" if i else "s0"], [f"t{i + 1}"]) for i in range(n)]
    install(graph(nodes, f"t{n}"), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                   f"input={small_png(trained)}", "runtime=onnxruntime",
                                   f"hydra.run.dir={tmp_path / 'infer'}"], timeout=120)
    assert rss < 2048, f"infer runtime=onnxruntime took {rss} MB (rc {rc}) for a 17 MB chain of Identity nodes"
    assert "Traceback" not in stderr, stderr[-800:]
