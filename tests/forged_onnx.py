"""Forged exported models for the hostile tests: the export's interface with chosen nodes, installed
into a copied run dir with export.json re-signed (a sha256 anyone can write)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import numpy as np
import pytest

from conftest import REPO, pythonpath

SCORE_ONNX = REPO / "examples" / "score_onnx.py"


def artifacts(run_dir):
    return run_dir / "categories" / "weave" / "artifacts"


def env():
    out = dict(os.environ)
    out["PYTHONPATH"] = pythonpath(REPO)
    out.pop("HYDRA_FULL_ERROR", None)
    out.setdefault("OMP_NUM_THREADS", "1")
    return out


def install(model, folder, raw=None, **manifest_changes):
    """Write ``model`` (or ``raw`` bytes) as model.onnx and re-sign export.json with its sha256."""
    data = raw if raw is not None else model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    manifest = json.loads((folder / "export.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest.update(manifest_changes)
    (folder / "export.json").write_text(json.dumps(manifest))


def graph(extra_nodes, score_src, inits=()):
    """The exported model's interface (uint8 images (batch, 3, 128, 128) in, ``score`` (batch,) and
    ``map`` (batch, 128, 128) out); ``s0`` is the per-image mean pixel, ``score`` comes from ``score_src``."""
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, 128, 128])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    amap = helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", 128, 128])
    nodes = [helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf"], ["s0"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["xf"], ["map"], axes=[1], keepdims=0),
             *extra_nodes,
             helper.make_node("Identity", [score_src], ["score"])]
    made = helper.make_graph(nodes, "forged", [images], [score, amap], initializer=list(inits))
    return helper.make_model(made, opset_imports=[helper.make_opsetid("", 17)])


def matmul_chain(steps, side=2000):
    """score = s0 + 0 * sum of ``steps`` chained (side x side) MatMuls: standard ops, ~16 GFLOP a node
    (seconds each on one core), a few MB of memory."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ConstantOfShape", ["side"], ["w"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1e-3]))]
    nodes += [helper.make_node("MatMul", [f"m{i}" if i else "w", "w"], [f"m{i + 1}"]) for i in range(steps)]
    nodes += [helper.make_node("ReduceSum", [f"m{steps}"], ["total"], keepdims=0),
              helper.make_node("Mul", ["total", "zero"], ["nothing"]),
              helper.make_node("Add", ["s0", "nothing"], ["s1"])]
    inits = [numpy_helper.from_array(np.array([side, side], dtype=np.int64), "side"),
             numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    return graph(nodes, "s1", inits)


def max_rss_mb(cmd, timeout=90):
    """(returncode, stderr, peak RSS in MB) of ``cmd`` run to completion: its ``VmHWM``, sampled until it
    exits (``wait4``'s ru_maxrss keeps the forking process's peak across exec: a long pytest session
    read 2.7 GB for every child)."""
    with open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=devnull, stderr=subprocess.PIPE)
        deadline, peak_kb = time.monotonic() + timeout, 0
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    peak_kb = max([peak_kb] + [int(line.split()[1]) for line in status if line.startswith("VmHWM:")])
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"{cmd[:3]} still running after {timeout} s")
            time.sleep(0.02)
        return proc.returncode, proc.stderr.read().decode(errors="replace"), peak_kb // 1024
