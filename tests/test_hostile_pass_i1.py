"""Attacker pass I1: line-side run dirs and inputs (infer, export, score_onnx) that hang, blow memory, lose a run or give a silent wrong verdict."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from forged_onnx import SCORE_ONNX, artifacts, env, graph, install, matmul_chain, max_rss_mb
from conftest import REPO, copy_run, run_cli, small_png, trained_run



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One completed TINY run, exported to ONNX; each test forges a file in a copy of it."""
    return trained_run(tmp_path_factory, export=True)







def _good_image():
    """A normal training image of the synthetic weave category (128x128 RGB: the model's input size)."""
    files = sorted(glob.glob(os.path.join(os.environ["PYIMGANO_CACHE"], "synthetic", "*", "weave", "train", "good", "*.png")))
    assert files, "no synthetic weave training image in PYIMGANO_CACHE"
    return files[len(files) // 2]


def _infer_scores(run_dir, inputs, out):
    proc = run_cli([f"run_dir={run_dir}", f"input={inputs}", "runtime=onnxruntime", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    return {os.path.basename(r["path"]): r["score"]
            for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


def _score_onnx_scores(run_dir, files):
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), *map(str, files)],
                          capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 0, proc.stderr[-800:]
    return {os.path.basename(r["image"]): r["score"] for r in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.parametrize("kind", ["16bit-gray-png", "exif-orientation"])
def test_score_onnx_scores_an_image_at_training_size_as_infer_does(trained, tmp_path, kind):
    """EXPORT.md: score_onnx.py at the training size gives infer's scores (only its resize differs).
    16bit-gray-png: a normal weave image as 16-bit gray (v*257): infer maps it to v (rint(v/257)),
    score_onnx's ``Image.convert("RGB")`` clips every pixel to 255; observed infer 23.33,
    score_onnx 81.95 (white image). exif-orientation: the image stored rotated with EXIF
    orientation 8: infer applies ``exif_transpose``, score_onnx ignores EXIF; observed infer 11.96,
    score_onnx 12.08 (a different image scored; with threshold 12.30 a verdict flip is a matter of margin). Expected: the same score (to 1e-3 relative) as infer."""
    from PIL import Image

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rgb = np.asarray(Image.open(_good_image()).convert("RGB"))
    if kind == "16bit-gray-png":
        gray = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257
        Image.fromarray(gray).save(inputs / "img.png")
    else:
        exif = Image.Exif()
        exif[0x0112] = 8
        Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(inputs / "img.png", exif=exif)
    expected = _infer_scores(trained, inputs, tmp_path / "infer")["img.png"]
    got = _score_onnx_scores(trained, [inputs / "img.png"])["img.png"]
    assert got == pytest.approx(expected, rel=1e-3), f"{kind}: infer {expected}, score_onnx.py {got}"


def _string_expand_model(copies=3000, size=1 << 20):
    """score = s0 + 0 * sum(Cast<float>(Expand(one 1 MB string, [copies]))): the arena holds only the
    string objects (32 bytes each); each copy's characters are heap memory outside the capped arena."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Expand", ["S", "shape"], ["big"]),
             helper.make_node("Cast", ["big"], ["bf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["bf"], ["bs"], keepdims=0),
             helper.make_node("Mul", ["bs", "zero"], ["z"]),
             helper.make_node("Add", ["s0", "z"], ["s1"])]
    inits = [numpy_helper.from_array(np.array(["1" + " " * (size - 1)], dtype=object), "S"),
             numpy_helper.from_array(np.array([copies], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    return graph(nodes, "s1", inits)


def _nonzero_model(n=200_000_000):
    """score = s0 + 0 * sum(NonZero(ConstantOfShape<bool>([n]))): n bytes in the arena, NonZero first
    gathers the n int64 indices in its own buffer (8n bytes, outside the arena), then asks the arena."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                              value=helper.make_tensor("v", TensorProto.BOOL, [1], [True])),
             helper.make_node("NonZero", ["ones"], ["idx"]),
             helper.make_node("Cast", ["idx"], ["idf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["idf"], ["bs"], keepdims=0),
             helper.make_node("Mul", ["bs", "zero"], ["z"]),
             helper.make_node("Add", ["s0", "z"], ["s1"])]
    inits = [numpy_helper.from_array(np.array([n], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    return graph(nodes, "s1", inits)


@pytest.mark.parametrize("kind", ["string-expand", "nonzero"])
def test_infer_onnxruntime_memory_stays_under_onnx_max_memory_gb_outside_the_arena(trained, tmp_path, kind):
    """model.onnx (1 MB / 1 KB) re-signed in export.json; ``infer runtime=onnxruntime onnx_max_memory_gb=1``.
    string-expand: Expand of a 1 MB string initializer to 3000 copies (declared 3000 x 8 bytes, so
    ``_check_tensors`` passes it; the characters live outside ONNX Runtime's arena); observed rc 0,
    "1 images scored", max RSS 3682 MB (30000 copies: 30 GB, OOM). nonzero: NonZero over 2e8 ones;
    observed rc 2 "... Available memory of 805306112 is smaller than requested bytes of 1600000000" only
    after max RSS 2400 MB (NonZero's index buffer sits outside the arena).
    Expected: memory bounded by onnx_max_memory_gb (string tensors / such ops refused, or the process
    capped): never gigabytes past it; a refusal is one line naming model.onnx."""
    run_dir = copy_run(trained, tmp_path)
    install(_string_expand_model() if kind == "string-expand" else _nonzero_model(), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                   f"input={small_png(trained)}", "runtime=onnxruntime", "onnx_max_memory_gb=1",
                                   f"hydra.run.dir={tmp_path / 'infer'}"])
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"{kind}: infer took {rss} MB (rc {rc}) with onnx_max_memory_gb=1; stderr {stderr[-300:]!r}"


def test_score_onnx_memory_stays_bounded_on_a_string_expand(trained, tmp_path):
    """The same string-Expand model through score_onnx.py (arena capped at half the RAM): observed rc 0
    and max RSS 3069 MB for 3000 copies; the copies scale without bound (the arena never sees them).
    Expected: refused (string tensors are not in an exported model) in one line naming model.onnx."""
    run_dir = copy_run(trained, tmp_path)
    install(_string_expand_model(), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(trained))])
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"score_onnx.py took {rss} MB (rc {rc}) for a 1 MB model.onnx"


def _varint(value):
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _split_graph_bytes(model, parts):
    """``model`` serialised with its GraphProto written as ``parts`` separate field-7 records, each
    holding a share of the nodes: protobuf merges repeated message fields (the nodes concatenate)."""
    import onnx

    nodes = list(model.graph.node)
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    data = head.SerializeToString()
    per = -(-len(nodes) // parts)
    for k in range(parts):
        graph = onnx.GraphProto()
        if k == 0:
            graph.CopyFrom(model.graph)
            del graph.node[:]
        graph.node.extend(nodes[k * per:(k + 1) * per])
        body = graph.SerializeToString()
        data += bytes([7 << 3 | 2]) + _varint(len(body)) + body
    return data


def test_score_onnx_refuses_a_model_whose_nodes_are_split_across_graph_records(trained, tmp_path):
    """model.onnx = 600,000 chained Identity nodes (MAX_NODES is 100,000) written as 7 GraphProto
    records of < 100k nodes each; export.json re-signed. ``check_ops`` counts nodes per record (its own
    protobuf walk), ONNX Runtime merges the records into one 600,004-node graph; observed: rc 0, a score
    printed after 13 s (``infer`` refuses the same file: "600004 nodes, more than the 100000").
    Expected: refused in one line naming model.onnx, non-zero exit."""
    import onnx
    from onnx import helper

    chain = [helper.make_node("Identity", [f"c{i}" if i else "s0"], [f"c{i + 1}"]) for i in range(600_000)]
    raw = _split_graph_bytes(graph(chain, "c600000"), 7)
    assert len(onnx.load_from_string(raw).graph.node) == 600_004
    run_dir = copy_run(trained, tmp_path)
    install(None, artifacts(run_dir), raw=raw)
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(trained))],
                          capture_output=True, text=True, timeout=120, env=env())
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.returncode != 0 and "model.onnx" in proc.stderr, f"rc {proc.returncode}: {proc.stdout[-300:]}"



def test_infer_onnxruntime_ends_on_a_model_that_computes_for_hours(trained, tmp_path):
    """model.onnx (a few hundred KB) = 5000 chained 2000x2000 MatMuls (no control flow, < 100k nodes,
    16 MB of memory), export.json re-signed. Nothing bounds a run's time: observed still running after
    60 s (hours of work), status.json "running" the whole time; only a signal ends it.
    Expected: a bound on the time a batch may take (``onnx_max_seconds``, default 600 s; 5 here): past
    it, stopped and refused in one line naming model.onnx and the key."""
    run_dir = copy_run(trained, tmp_path)
    install(matmul_chain(5000), artifacts(run_dir))
    out = tmp_path / "infer"
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                             f"input={small_png(trained)}", "runtime=onnxruntime", "onnx_max_seconds=5",
                             f"hydra.run.dir={out}"],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"infer runtime=onnxruntime still running after 60 s on a 5000-MatMul model.onnx; "
                        f"status.json: {(out / 'status.json').read_text() if (out / 'status.json').exists() else None}")
        assert proc.returncode != 0 and "Traceback" not in stderr and "model.onnx" in stderr, stderr[-800:]
        assert "onnx_max_seconds" in stderr, stderr[-800:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("target", ["status.json", "report.json", "categories/weave/artifacts/export.json"])
def test_infer_reads_a_json_with_many_keys_and_one_duplicate_in_linear_time(trained, tmp_path, target):
    """A run-dir JSON (3 MB, under the 64 MB limit) whose top-level object gets 300,000 extra keys
    ``"k0".."k299999"`` and then ``"k299999"`` again. ``trust._no_duplicates`` finds the repeated key with
    ``keys.count(k)`` for each key in turn: quadratic (9e10 comparisons here; a 1 MB file already
    took over 120 s); observed: infer still running after 30 s (120 s for a 1 MB file); status.json /
    report.json: before infer writes anything; export.json: with the new run's status.json "running".
    ``python -m pyimgano_hydra.export`` reads the same files through the same function.
    Expected: refused in one line naming the file ("duplicate key 'k299999'") within seconds."""
    run_dir = copy_run(trained, tmp_path)
    path = run_dir / target
    record = json.loads(path.read_text())
    n = 150_000  # under trust.MAX_JSON_VALUES, so the duplicate check itself is what answers
    path.write_text(json.dumps(record)[:-1] + ", " + ", ".join(f'"k{i}": 0' for i in range(n)) + f', "k{n - 1}": 1}}')
    runtime = "onnxruntime" if "export.json" in target else "torch"
    try:
        proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"runtime={runtime}",
                        f"hydra.run.dir={tmp_path / 'infer'}"], module="pyimgano_hydra.infer", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"infer still parsing {target} ({n + 1:,} keys, one repeated) after 30 s")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert os.path.basename(target) in proc.stderr and "duplicate key" in proc.stderr, proc.stderr[-800:]


def _png_with_exif_tags(path, ntags=2000, size=1000):
    """A 32x32 grey PNG with an eXIf chunk whose IFD has ``ntags`` private tags, each declaring
    ``size`` bytes at the same offset: Pillow skips each past the first few with a UserWarning."""
    import io
    import struct
    import zlib

    from PIL import Image

    data_offset = 8 + 2 + ntags * 12 + 4
    ifd = struct.pack("<H", ntags) + b"".join(struct.pack("<HHII", 0x8000 + i, 7, size, data_offset)
                                               for i in range(ntags)) + struct.pack("<I", 0)
    exif = b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * size
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 120, 120)).save(buffer, "PNG")
    png = buffer.getvalue()
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif) & 0xFFFFFFFF)
    path.write_bytes(png[:33] + chunk + png[33:])  # after the signature and IHDR


def test_infer_keeps_stderr_quiet_on_an_image_with_thousands_of_exif_tags(trained, tmp_path):
    """input = a 25 KB PNG whose eXIf IFD holds 2000 tags over the same 1000 bytes. ``_open`` calls
    ``ImageOps.exif_transpose`` with only DecompressionBombWarning silenced; Pillow warns
    "Tag data larger than file. Skipping tag N" per tag; observed: rc 0 and 3950 lines of
    ``.../PIL/TiffImagePlugin.py:946: UserWarning: ...`` on stderr (a 65535-tag file: 131k lines;
    one line per image of a folder). Expected: a hostile input never floods the console: at most a
    line or two naming the file (or the image recorded as unreadable)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _png_with_exif_tags(inputs / "exif.png")
    proc = run_cli([f"run_dir={trained}", f"input={inputs}", f"hydra.run.dir={tmp_path / 'infer'}"],
                   module="pyimgano_hydra.infer", timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "[INFO]" not in line]
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert len(lines) <= 2, f"rc {proc.returncode}, {len(lines)} stderr lines, first: {lines[:2]}"


def _deep_file(base, data, depth=45, name="d" * 100):
    """``base``/<name>/<name>/.../x.png, 4.5 KB of path: past PATH_MAX (4096), made with dir fds."""
    fd = os.open(base, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("x.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def test_infer_scores_the_other_images_of_a_folder_holding_a_path_past_path_max(trained, tmp_path):
    """input=<folder> holding a.png and, 45 folders of 100 characters down (4.5 KB of path, past
    PATH_MAX), x.png. ``collect_inputs``' ``path.rglob("*")`` raises ENAMETOOLONG from os.scandir;
    observed: rc 1 and the one line "error: job ['run_dir=...', 'input=...']: OSError: [Errno 36] File
    name too long: '<4.5 KB path>'": a.png is never scored, the whole inference is lost (an unreadable
    image elsewhere is only an error record). Expected: a.png scored (rc 0), the unreachable entry
    recorded or reported in one short line naming it; never the run lost."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    png = small_png(trained).read_bytes()
    (inputs / "a.png").write_bytes(png)
    _deep_file(inputs, png)
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={trained}", f"input={inputs}", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[:300]!r}"
    paths = [json.loads(line)["path"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert str(inputs / "a.png") in paths, paths


def _string_score_model():
    """The export's interface, but ``score`` is a string tensor (Cast(mean pixel, STRING)), shape (batch,)."""
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, 128, 128])
    outputs = [helper.make_tensor_value_info("score", TensorProto.STRING, None),
               helper.make_tensor_value_info("map", TensorProto.FLOAT, None)]
    nodes = [helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf"], ["s0"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Cast", ["s0"], ["score"], to=TensorProto.STRING),
             helper.make_node("ReduceMean", ["xf"], ["map"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "forged", [images], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_score_onnx_refuses_a_string_score_in_one_line(trained, tmp_path):
    """model.onnx whose ``score`` output is a string tensor of the right shape; export.json re-signed.
    score_onnx.py checks the shapes, then ``np.isfinite(score)`` on an object array; observed: rc 1 and a
    Python traceback ending "TypeError: ufunc 'isfinite' not supported for the input types ...".
    Expected: one line naming model.onnx, non-zero exit, no traceback."""
    run_dir = copy_run(trained, tmp_path)
    install(_string_score_model(), artifacts(run_dir))
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(trained))],
                          capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "model.onnx" in proc.stderr, proc.stderr[-800:]


def test_infer_onnxruntime_names_model_onnx_for_a_string_score(trained, tmp_path):
    """The same string-score model through ``infer runtime=onnxruntime``: observed rc 2 and
    "error: .../categories/weave/inspector.pt: scoring with the stored detector failed (TypeError: ufunc
    'isfinite' not supported ...)": it blames inspector.pt, which is intact. Expected: the one line
    names model.onnx (the file that is wrong)."""
    run_dir = copy_run(trained, tmp_path)
    install(_string_score_model(), artifacts(run_dir))
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", "runtime=onnxruntime",
                    f"hydra.run.dir={tmp_path / 'infer'}"], module="pyimgano_hydra.infer", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "model.onnx" in proc.stderr and "inspector.pt" not in proc.stderr, proc.stderr[-800:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_an_infer_interrupted_before_its_dir_exists_does_not_claim_a_status_json(trained, tmp_path, sig):
    """SIGINT/SIGTERM 1 s after ``python -m pyimgano_hydra.infer`` starts (handlers installed, Hydra not
    yet at the job): observed rc 130/143 and "interrupted: SIGTERM; the inference run marked interrupted
    in its status.json" while hydra.run.dir does not exist at all (no status.json anywhere).
    Expected: the one line says what happened (nothing was started / written), never points the
    operator at a status.json that is not there."""
    out = tmp_path / "infer"
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained}",
                             f"input={small_png(trained)}", f"hydra.run.dir={out}"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode < 0 or (out / "status.json").exists():
        pytest.skip(f"the signal landed outside the window (rc {proc.returncode})")
    assert "Traceback" not in stderr, stderr[-800:]
    assert "marked interrupted in its status.json" not in stderr, \
        f"rc {proc.returncode}, {out} exists: {out.exists()}; stderr {stderr.strip()[-200:]!r}"


def test_export_reads_a_report_with_many_keys_and_one_duplicate_in_linear_time(trained, tmp_path):
    """The same 300,001-key report.json (one key repeated) through ``python -m pyimgano_hydra.export``:
    observed still running after 30 s (``trust._no_duplicates``' ``keys.count`` per key).
    Expected: refused in one line naming report.json within seconds."""
    run_dir = copy_run(trained, tmp_path)
    path = run_dir / "report.json"
    n = 150_000  # under trust.MAX_JSON_VALUES, so the duplicate check itself is what answers
    path.write_text(path.read_text().rstrip()[:-1] + ", " + ", ".join(f'"k{i}": 0' for i in range(n))
                    + f', "k{n - 1}": 1}}')
    try:
        proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"export still parsing report.json ({n + 1:,} keys, one repeated) after 30 s")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "report.json" in proc.stderr and "duplicate key" in proc.stderr, proc.stderr[-800:]
