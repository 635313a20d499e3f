"""Attacker pass R1 (the line side): what infer / export / score_onnx / the API do with a received run dir."""
import subprocess
import sys

import pytest

from conftest import copy_run, small_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _secret_values(length: int):
    """A uint8 TensorProto whose data is external: ``notes/secret.txt`` (relative, so ONNX Runtime
    reads it from the working dir of a model loaded from bytes)."""
    from onnx import TensorProto

    secret = TensorProto()
    secret.name, secret.data_type = "secret_values", TensorProto.UINT8
    secret.dims.append(length)
    secret.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "notes/secret.txt"), ("offset", "0"), ("length", str(length))):
        entry = secret.external_data.add()
        entry.key, entry.value = key, value
    return secret


def _sparse_constant_model(length: int):
    """The export's interface whose score is the byte sum of a ``Constant`` node's ``sparse_value``
    attribute, the sparse tensor's values stored as external data at ``notes/secret.txt``."""
    import numpy as np
    from onnx import SparseTensorProto, TensorProto, helper, numpy_helper

    from forged_onnx import graph

    sparse = SparseTensorProto()
    sparse.values.CopyFrom(_secret_values(length))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.arange(length, dtype=np.int64), "idx"))
    sparse.dims.append(length)
    nodes = [helper.make_node("Constant", [], ["secret"], sparse_value=sparse),
             helper.make_node("Cast", ["secret"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["sf"], ["ss"], keepdims=0),
             helper.make_node("Mul", ["s0", "zero"], ["z"]),
             helper.make_node("Add", ["z", "ss"], ["s1"])]
    return graph(nodes, "s1", [numpy_helper.from_array(np.array(0, np.float32), "zero")])


def test_score_onnx_never_reads_external_data_of_a_constants_sparse_value(exported, tmp_path):
    """The variant of pass K1's external-data test its fix does not cover: model.onnx (re-signed in
    export.json) holds a ``Constant`` node whose ``sparse_value`` attribute (AttributeProto field 22)
    has its values stored as external data at the relative location ``notes/secret.txt``.
    ``examples/score_onnx.py``'s ``check_ops`` looks at initializers, sparse initializers and the
    ``t``/``tensors`` attributes (fields 5 and 10) only; ONNX Runtime reads the values from the
    working dir. Observed, run from the user's folder: rc 0 and ``"score": 3279.0``, the byte sum of
    notes/secret.txt (infer runtime=onnxruntime refuses the same model: "references external data
    files"). Expected: refused in one line naming model.onnx (rc != 0), the file never read."""
    from forged_onnx import SCORE_ONNX, artifacts, env, install

    run_dir = copy_run(exported, tmp_path)
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    secret = b"private notes of the line engineer"
    (home / "notes" / "secret.txt").write_bytes(secret)
    install(_sparse_constant_model(len(secret)), artifacts(run_dir))
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(exported))],
                          cwd=home, env=env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert str(float(sum(secret))) not in proc.stdout, proc.stdout
    assert proc.returncode != 0 and "model.onnx" in proc.stderr, (proc.stdout, proc.stderr[-800:])


def test_the_api_load_inspector_after_a_notebook_changed_into_a_received_run_dir_imports_nothing_from_it(
        trained, tmp_path):
    """The load_inspector variant of pass P2's compose test: a notebook (IPython keeps '' = the working
    dir on sys.path) imports ``pyimgano_hydra.api`` elsewhere, ``%cd``s into a received run dir and
    calls ``api.load_inspector('.')`` as the module docstring shows. load_inspector lazily imports
    torch, cv2, faiss, sklearn, scipy... for the first time, through '' = the run dir: the run dir's
    ``torch.py`` and ``cv2.py`` run (markers written; the call then fails "not a readable torch file
    (AttributeError)"). ``api.compose_with_choices`` re-runs ``_no_imports_from_a_run_dir``;
    ``api.load_inspector`` does not. Expected: no marker (run-dir entries dropped from sys.path before
    loading, or a one-line refusal)."""
    from conftest import _cli_env

    run_dir = copy_run(trained, tmp_path)
    markers = {name: tmp_path / f"MARKER_{name}" for name in ("torch", "cv2")}
    for name, marker in markers.items():
        (run_dir / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    code = ("import os, sys\nsys.path.insert(0, '')\nimport pyimgano_hydra.api as api\n"
            f"os.chdir({str(run_dir)!r})\n"
            "try:\n    api.load_inspector('.')\nexcept Exception as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_cli_env(), capture_output=True,
                          text=True, timeout=180)
    ran = sorted(name for name, marker in markers.items() if marker.exists())
    assert not ran, f"the run dir's {ran} modules were imported by api.load_inspector ({proc.stdout[-200:]})"


def test_score_onnx_memory_stays_bounded_on_a_string_constant_expand(exported, tmp_path):
    """The variant of pass I1's string-Expand test its fix does not cover: the 1 MB string comes from a
    ``Constant`` node's ``value_strings`` attribute (AttributeProto type STRINGS, field 9), not an
    initializer or a ``t`` tensor: ``examples/score_onnx.py``'s ``check_ops`` looks for string
    TensorProtos and casts *to* strings only. ``Expand`` copies it 2500 times outside the capped arena,
    ``Cast`` to float, times 0. Observed: rc 0, a score printed, max RSS 2632 MB from a 1 MB
    model.onnx (infer runtime=onnxruntime refuses it: "string tensor 'S'"). Expected: refused in one
    line naming model.onnx (a string constant is not in an exported model), or memory bounded."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from forged_onnx import SCORE_ONNX, artifacts, graph, install, max_rss_mb

    nodes = [helper.make_node("Constant", [], ["S"], value_strings=["1" + " " * ((1 << 20) - 1)]),
             helper.make_node("Expand", ["S", "shape"], ["big"]),
             helper.make_node("Cast", ["big"], ["bf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["bf"], ["bs"], keepdims=0),
             helper.make_node("Mul", ["bs", "zero"], ["z"]),
             helper.make_node("Add", ["s0", "z"], ["s1"])]
    inits = [numpy_helper.from_array(np.array([2500], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    run_dir = copy_run(exported, tmp_path)
    install(graph(nodes, "s1", inits), artifacts(run_dir))
    rc, stderr, rss = max_rss_mb([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(exported))])
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 1536, f"score_onnx.py took {rss} MB (rc {rc}) for a 1 MB model.onnx"


@pytest.mark.parametrize("name", ["model.onnx", "export.json"])
def test_score_onnx_never_reads_a_file_outside_the_run_dir_through_a_link(exported, tmp_path, name):
    """The received run dir's ``artifacts/model.onnx`` (or ``export.json``) is a symlink to a file
    outside it (here: the real file moved to ``elsewhere/``; on a line, another product's export
    whose sha256 the sender knows). ``examples/score_onnx.py``'s ``read_regular`` opens with
    O_NONBLOCK but follows links (it refuses only what is not a regular file once opened), so it
    loads the outside file and scores with it. Observed: rc 0 and a score printed for either link
    (``infer runtime=onnxruntime`` refuses the same run dir: "model_file: ... leads outside the run
    dir (a symlink?); refused"). Expected: refused in one line naming the file, rc != 0, no score."""
    import os

    from forged_onnx import SCORE_ONNX, artifacts, env

    run_dir = copy_run(exported, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.replace(artifacts(run_dir) / name, elsewhere / name)
    (artifacts(run_dir) / name).symlink_to(elsewhere / name)
    proc = subprocess.run([sys.executable, str(SCORE_ONNX), str(artifacts(run_dir)), str(small_png(exported))],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert '"score"' not in proc.stdout, f"scored through a link to {elsewhere / name}: {proc.stdout}"
    assert proc.returncode != 0 and name in proc.stderr, (proc.stdout, proc.stderr[-800:])


def test_a_patchcore_inspector_re_signed_at_a_large_resize_never_takes_gigabytes(trained, tmp_path):
    """The PatchCore analogue of pass Q1's autoencoder-activation bound: a 128-pixel TINY run's
    inspector.pt re-saved with only ``preprocessing.resize`` changed to 3072 (inside MAX_SIDE = 8192;
    the inspector file stays 370 KB). infer upsizes one 32x32 PNG to 3072x3072 and runs the backbone,
    the neighbourhood pooling and the memory-bank search on 147,456 patches at once. Observed: rc 0,
    max RSS 3161 MB (resize 2048: 1896 MB, 4096: 4927 MB; 8192 would be ~18 GB). Expected: bounded as
    the autoencoder is (one image's activations over 1 GB refused in one line naming the file, or
    scored in bounded pieces), max RSS < 2 GB."""
    import torch

    from forged_onnx import max_rss_mb

    run_dir = copy_run(trained, tmp_path)
    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["preprocessing"]["resize"] = 3072
    torch.save(state, path)
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                  f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'infer'}"], timeout=180)
    assert "Traceback" not in stderr, stderr[-800:]
    assert rss < 2048, f"infer took {rss} MB (rc {rc}) for an inspector.pt with preprocessing.resize=3072"
