"""Attacker pass K1 (the line side): what infer / export / score_onnx do with a received run dir."""
import json
import math
import shutil
import sys

import pytest

from conftest import copy_run, forge_inspector, run_cli, small_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_finite_memory_bank_that_overflows_is_never_called_normal(trained, tmp_path):
    """inspector.pt re-saved with every PatchCore memory-bank value 3e38 (finite: ``load_state_dict``'s
    isfinite check passes). The nearest-neighbour distances overflow: observed rc 0, "0 anomalous,
    1 normal", predictions.jsonl ``{"score": null, "pred_label": 0}`` -- a NaN score silently called
    normal (runtime=onnxruntime refuses a NaN score: "no verdict without a number"; runtime=torch does
    not). Expected: no verdict without a number (rc != 0 in one line naming the file, or an error record)."""
    run_dir = copy_run(trained, tmp_path)

    def overflow(state):
        bank = state["detector"]["state"]["memory_bank"]
        state["detector"]["state"]["memory_bank"] = bank.new_full(bank.shape, 3e38)

    forge_inspector(run_dir, overflow)
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    if proc.returncode == 0:
        records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        called = [r for r in records if "error" not in r]
        assert all(isinstance(r["score"], float) and math.isfinite(r["score"]) for r in called), records


def test_a_category_named_like_anothers_folder_never_scores_with_its_export(trained, tmp_path):
    """report.json lists categories ``a b`` (stored, as training does, under ``categories/a_b-c8687a08``)
    and ``a_b-c8687a08`` (a file-name-safe name equal to the first one's folder; its own inspector
    elsewhere, with a different memory bank). Training refuses two categories sharing a folder; export
    does not: both exports go to ``categories/a_b-c8687a08/artifacts`` (rc 0, the second overwrites the
    first), and ``infer category='a b' runtime=onnxruntime`` accepts the other category's export.json
    (``read_export`` compares folder names, not the category) and scores with its model: observed
    rc 0, score 113.7 where runtime=torch gives 78.4. Expected: export refuses the pair (or keeps each
    export), and infer never scores a category with another category's model."""
    import torch

    from pyimgano_hydra.runs.layout import category_dir_name

    run_dir = copy_run(trained, tmp_path)
    shutil.rmtree(run_dir / "categories" / "weave" / "artifacts", ignore_errors=True)
    first = "a b"
    folder = category_dir_name(first)
    (run_dir / "categories" / folder).mkdir()
    (run_dir / "categories" / "other").mkdir()
    state = torch.load(run_dir / "categories" / "weave" / "inspector.pt", map_location="cpu", weights_only=True)
    state["category"] = first
    torch.save(state, run_dir / "categories" / folder / "inspector.pt")
    state["category"] = folder
    state["detector"]["state"]["memory_bank"] = state["detector"]["state"]["memory_bank"] * 3
    torch.save(state, run_dir / "categories" / "other" / "inspector.pt")
    report = json.loads((run_dir / "report.json").read_text())
    entry = report["categories"].pop("weave")
    report["categories"][first] = {**entry, "inspector": f"categories/{folder}/inspector.pt"}
    report["categories"][folder] = {**entry, "inspector": "categories/other/inspector.pt"}
    (run_dir / "report.json").write_text(json.dumps(report))

    export = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export", timeout=300)
    assert "Traceback" not in export.stderr, export.stderr[-800:]
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"category={first}", "runtime=onnxruntime",
                    f"hydra.run.dir={tmp_path / 'infer'}"], module="pyimgano_hydra.infer", timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    if proc.returncode == 0:
        manifest = json.loads((run_dir / "categories" / folder / "artifacts" / "export.json").read_text())
        assert manifest["category"] == first, (export.stdout, manifest["category"])


def test_an_inspector_path_under_a_tilde_folder_never_reads_weights_from_home(trained, tmp_path):
    """Infer started inside the received run dir with ``run_dir=.``. report.json's inspector is
    ``~/x/inspector.pt`` (a folder literally named ``~`` in the run dir: ``confined`` accepts it, it
    resolves inside) and that inspector stores ``weights_path: backbone_weights.pt`` (beside it, a
    regular file: ``_stored_weights`` accepts it). The path handed to the backbone is then the
    relative ``~/x/backbone_weights.pt``, which ``build_backbone`` runs through ``expanduser``: observed
    rc 2, "model.weights_path: cannot read weights from $HOME/x/backbone_weights.pt" -- infer read a
    file outside the run dir, in the user's home (with a state_dict there, it scores with it).
    Expected: the weights read are the ones checked inside the run dir; nothing under $HOME is opened."""
    import torch

    run_dir = copy_run(trained, tmp_path)
    home = tmp_path / "home"
    (home / "x").mkdir(parents=True)
    (home / "x" / "backbone_weights.pt").write_bytes(b"outside the run dir")
    inner = run_dir / "~" / "x"
    inner.mkdir(parents=True)
    state = torch.load(run_dir / "categories" / "weave" / "inspector.pt", map_location="cpu", weights_only=True)
    state["detector"]["params"]["weights_path"] = "backbone_weights.pt"
    torch.save(state, inner / "inspector.pt")
    (inner / "backbone_weights.pt").write_bytes(b"inside the run dir")
    report = json.loads((run_dir / "report.json").read_text())
    report["categories"]["weave"]["inspector"] = "~/x/inspector.pt"
    (run_dir / "report.json").write_text(json.dumps(report))
    proc = run_cli(["run_dir=.", f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'infer'}"],
                   cwd=run_dir, module="pyimgano_hydra.infer", env={"HOME": str(home)}, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert str(home) not in proc.stderr + proc.stdout, proc.stderr[-800:]


def _external_data_model(location: str, length: int):
    """The export's interface whose score is the byte sum of an initializer stored as external data
    at ``location`` (relative: ONNX Runtime reads it from the working dir of a model loaded from bytes)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from forged_onnx import graph

    secret = TensorProto()
    secret.name, secret.data_type = "secret", TensorProto.UINT8
    secret.dims.append(length)
    secret.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = secret.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("Cast", ["secret"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["sf"], ["ss"], keepdims=0),
             helper.make_node("Mul", ["s0", "zero"], ["z"]),
             helper.make_node("Add", ["z", "ss"], ["s1"])]
    return graph(nodes, "s1", [secret, numpy_helper.from_array(np.array(0, np.float32), "zero")])


def test_score_onnx_never_reads_external_data_from_the_working_dir(exported, tmp_path):
    """model.onnx (re-signed in export.json) stores an initializer as external data at the relative
    location ``notes/secret.txt``; ``examples/score_onnx.py`` (its ``check_ops`` looks for local
    functions, control flow and strings, not external data) hands the bytes to ONNX Runtime, which
    reads external data of a model loaded from bytes relative to the *working dir*. Run from the
    user's folder, observed: rc 0 and ``"score": <byte sum of notes/secret.txt>`` -- a file outside the
    run dir is read and leaked into the printed score (infer runtime=onnxruntime refuses external data).
    Expected: refused in one line naming model.onnx (rc != 0), the file never read."""
    import subprocess

    from forged_onnx import SCORE_ONNX, artifacts, env, install

    run_dir = copy_run(exported, tmp_path)
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    secret = b"private notes of the line engineer"
    (home / "notes" / "secret.txt").write_bytes(secret)
    install(_external_data_model("notes/secret.txt", len(secret)), artifacts(run_dir))
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(exported))],
                          cwd=home, env=env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert str(float(sum(secret))) not in proc.stdout, proc.stdout
    assert proc.returncode != 0 and "model.onnx" in proc.stderr, (proc.stdout, proc.stderr[-800:])


def test_score_onnx_memory_stays_bounded_for_a_model_declaring_a_16384_input(exported, tmp_path):
    """The variant of pass H's input_size test that its fix does not cover: model.onnx (1 KB, re-signed)
    itself declares uint8 images (batch, 3, 16384, 16384) (it slices one pixel), and export.json says
    input_size [16384, 16384] (inside score_onnx.py's own 1..16384; training never resizes past
    MAX_SIDE = 8192, infer's manifest check allows 65536). score_onnx.py upsizes a 32x32 PNG to
    16384x16384 RGB and copies it twice: observed max RSS 2626 MB, rc 2. Expected: an input size past
    what a run can export (8192) refused in one line naming export.json, or memory bounded (< 2 GB)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from forged_onnx import SCORE_ONNX, artifacts, install, max_rss_mb

    side = 16384
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, side, side])
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", 1, 1])]
    nodes = [helper.make_node("Slice", ["images", "start", "end"], ["pixel"]),
             helper.make_node("Cast", ["pixel"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf"], ["score"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["xf"], ["map"], axes=[1], keepdims=0)]
    inits = [numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "start"),
             numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "end")]
    model = helper.make_model(helper.make_graph(nodes, "forged", [images], outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    run_dir = copy_run(exported, tmp_path)
    install(model, artifacts(run_dir), input_size=[side, side])
    rc, stderr, rss = max_rss_mb([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(exported))],
                                 timeout=120)
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"score_onnx.py took {rss} MB for a 1 KB model declaring a 16384x16384 input (rc {rc})"


def test_decode_workers_import_nothing_from_the_input_folder_infer_runs_in(trained, tmp_path):
    """``cd <image folder> && pyimgano-hydra-infer run_dir=<run> input=. +loader.num_workers=2``: the
    folder of received images holds a ``multiprocessing.py``. infer drops the working dir from its own
    ``sys.path`` (and sets PYTHONSAFEPATH only inside a *run* dir), but its decode workers start a
    forkserver as ``python -c 'from multiprocessing.forkserver import main; ...'``, whose ``sys.path``
    begins with the working dir: the folder's multiprocessing.py runs (observed: marker written, rc 0;
    the same with the installed console script). Expected: nothing imported from the working dir."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(small_png(trained), folder / name)
    marker = tmp_path / "marker"
    (folder / "multiprocessing.py").write_text(
        "import importlib, os, sys\n"
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "del sys.modules['multiprocessing']\n"
        "sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
        "sys.modules['multiprocessing'] = importlib.import_module('multiprocessing')\n")
    proc = run_cli([f"run_dir={trained}", "input=.", "+loader.num_workers=2", f"hydra.run.dir={tmp_path / 'infer'}"],
                   cwd=folder, module="pyimgano_hydra.infer", timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert not marker.exists(), "a multiprocessing.py in infer's working dir ran in its decode workers"


def test_score_onnx_memory_stays_bounded_on_a_small_16_bit_png(exported, tmp_path):
    """A 320 KB 16-bit grey PNG of 13000x13000 (under Pillow's decompression-bomb error limit, which
    only warns) given to ``examples/score_onnx.py``: ``read_image`` decodes it and converts it to float64
    (``np.asarray(image, dtype=np.float64) / 257``): observed max RSS 2982 MB, rc 0, and a two-line
    DecompressionBombWarning on stderr (infer refuses the same file from its header: "decodes to 338 MB,
    over dataset.max_image_megabytes=256"). Expected: refused in one line naming the image (or decoded
    within a bound), never gigabytes for a small file."""
    from PIL import Image

    from forged_onnx import SCORE_ONNX, max_rss_mb

    image = tmp_path / "wide16.png"
    Image.new("I;16", (13000, 13000)).save(image)
    assert image.stat().st_size < 1 << 20
    rc, stderr, rss = max_rss_mb([sys.executable, str(SCORE_ONNX),
                                  str(exported / "categories" / "weave" / "artifacts"), str(image)], timeout=120)
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"score_onnx.py took {rss} MB (rc {rc}) for a {image.stat().st_size >> 10} KB PNG"
    assert len(stderr.strip().splitlines()) <= 1, stderr[-800:]


def _split_to_sequence_model(n: int):
    """score = s0 + 0 * SequenceLength(SplitToSequence(ConstantOfShape([n]), 1)): n one-element tensors
    in a sequence (32 MB of data for n = 8M in the arena; each element's OrtValue lives outside it)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from forged_onnx import graph

    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("SplitToSequence", ["big", "one"], ["seq"], axis=0, keepdims=0),
             helper.make_node("SequenceLength", ["seq"], ["length"]),
             helper.make_node("Cast", ["length"], ["lengthf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["lengthf", "zero"], ["nothing"]),
             helper.make_node("Add", ["s0", "nothing"], ["s1"])]
    inits = [numpy_helper.from_array(np.array([n], np.int64), "shape"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array(0, np.float32), "zero")]
    return graph(nodes, "s1", inits)


def test_infer_onnxruntime_memory_stays_under_the_cap_with_a_long_sequence(exported, tmp_path):
    """model.onnx (1 KB, re-signed) splits a 32 MB ConstantOfShape into a sequence of 8M scalars
    (``SplitToSequence``: standard, no subgraph, its output a sequence, so neither the op list nor the
    value-shape check sees it). ``infer runtime=onnxruntime onnx_max_memory_gb=1``: observed max RSS
    3031 MB before "Available memory of 0" (rc 2); ``score_onnx.py`` on the same model: 4615 MB, rc 0.
    Expected: memory bounded by onnx_max_memory_gb (sequence ops refused, or counted), never 3 GB."""
    from forged_onnx import artifacts, install, max_rss_mb

    run_dir = copy_run(exported, tmp_path)
    install(_split_to_sequence_model(8_000_000), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                  f"input={small_png(exported)}", "runtime=onnxruntime", "onnx_max_memory_gb=1",
                                  f"hydra.run.dir={tmp_path / 'infer'}"], timeout=170)
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"infer took {rss} MB (rc {rc}) with onnx_max_memory_gb=1; stderr {stderr[-300:]!r}"


def test_infer_onnxruntime_shape_check_stays_bounded_on_doubling_shape_concats(exported, tmp_path):
    """model.onnx (1.5 KB, re-signed): ``c0 = Shape(images)`` then 22 nodes ``c{i+1} = Concat(c{i}, c{i})``
    (4 * 2**22 int64s, 128 MB at run time), summed into the score times 0. ``_check_tensors`` runs
    ``onnx.shape_inference.infer_shapes(proto, data_prop=True)`` before ONNX Runtime: its data
    propagation holds every concatenated shape as protobuf dims. Observed with onnx_max_memory_gb=1:
    max RSS 3461 MB, rc 0 (infer_shapes alone: 2.9 GB, 4 s; each extra node doubles it: 26 nodes is
    ~45 GB). Expected: the pre-check itself bounded (refused in one line naming model.onnx, or the
    data propagation capped), memory under onnx_max_memory_gb plus the process."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from forged_onnx import artifacts, graph, install, max_rss_mb

    k = 22
    nodes = [helper.make_node("Shape", ["images"], ["c0"])]
    nodes += [helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0) for i in range(k)]
    nodes += [helper.make_node("ReduceSum", [f"c{k}"], ["total"], keepdims=0),
              helper.make_node("Cast", ["total"], ["totalf"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["totalf", "zero"], ["nothing"]),
              helper.make_node("Add", ["s0", "nothing"], ["s1"])]
    run_dir = copy_run(exported, tmp_path)
    install(graph(nodes, "s1", [numpy_helper.from_array(np.array(0, np.float32), "zero")]), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                  f"input={small_png(exported)}", "runtime=onnxruntime", "onnx_max_memory_gb=1",
                                  f"hydra.run.dir={tmp_path / 'infer'}"], timeout=170)
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"infer took {rss} MB (rc {rc}) with onnx_max_memory_gb=1 on a 1.5 KB model.onnx"
