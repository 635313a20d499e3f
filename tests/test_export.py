"""Export to ONNX: the exported model scores like the PyTorch path, infer runs it, and a run
dir's export is checked before it is loaded."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli
from pyimgano_hydra.api import load_inspector, run
from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.features import build_backbone
from pyimgano_hydra.runs.writers import read_json, read_jsonl

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from pyimgano_hydra.export.runtime import load_exported  # noqa: E402
from test_handoff_parity import infer_in_process  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["dataset.category=washer", "dataset.limit_train=10", "dataset.limit_test=6"]
RUNS = {
    "patchcore": ["model=patchcore", "model.coreset_ratio=0.2"],
    "padim": ["model=padim"],
    "patchcore_tiled": ["model=patchcore", "model.coreset_ratio=0.2", "tiling=tile128",
                        "tiling.tile_size=64", "tiling.stride=48"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> completed run dir, exported through the CLI (lazily, one fit per name)."""
    made = {}

    def get(name):
        if name not in made:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            run([*TINY, *RUNS[name]], output_dir=run_dir)
            proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export")
            assert proc.returncode == 0, proc.stderr[-2000:]
            made[name] = run_dir
        return made[name]

    return get


def _test_images(run_dir):
    records = read_jsonl(run_dir / "categories" / "washer" / "per_image.jsonl")
    return records, Path(records[0]["path"]).parents[1]


def test_backbone_stages_give_the_hooked_network_outputs_and_export():
    """The truncated backbone returns exactly what the full network computes at those layers."""
    backbone = build_backbone("efficientnet_lite0", ["blocks.4", "blocks.2"], pretrained=False, device="cpu")
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    seen, modules = {}, dict(backbone.net.named_modules())
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for name in backbone.layers]
    with torch.no_grad():
        backbone.net(x)
        feats = backbone(x)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        scripted = torch.jit.script(backbone)(x)
    assert list(feats) == ["blocks.4", "blocks.2"]
    for name in backbone.layers:
        assert torch.equal(feats[name], seen[name])
        assert torch.equal(scripted[name], seen[name])
    torch.export.export(backbone, (x,))  # no hook raising through the graph


DETECTORS = {
    "patchcore-topk": ("PatchCore", {"image_score": "topk"}),
    "patchcore-power_mean": ("PatchCore", {"image_score": "power_mean", "power_mean_p": 24.0}),
    "patchcore-max": ("PatchCore", {"image_score": "max"}),
    "patchcore-map_max-standardize": ("PatchCore", {"image_score": "map_max", "image_norm": "standardize"}),
    "patchcore-global": ("PatchCore", {"global_weight": 0.5}),
    "padim-topk-gray": ("PaDiM", {"d": 32}),
    "padim-max-global": ("PaDiM", {"d": 32, "image_score": "max", "global_weight": 0.5}),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_exportable_setting_matches_the_detector(name):
    """Each image_score mode, image_norm and the image-level term, on 64 px random images."""
    from pyimgano_hydra.export import onnx_bytes
    from pyimgano_hydra.export.graph import build_graph
    from pyimgano_hydra.models.padim import PaDiM
    from pyimgano_hydra.models.patchcore import PatchCore

    cls, params = DETECTORS[name]
    if "power_mean_p" in params and "power_mean_p" not in PatchCore().get_params():
        pytest.skip("this PatchCore has no image_score=power_mean yet")
    channels = 1 if name.endswith("gray") else 3
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 64, 64, channels), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 64, 64, channels), dtype=np.uint8)
    detector = {"PatchCore": PatchCore, "PaDiM": PaDiM}[cls](device="cpu", **params).fit(train)
    expected = detector.score_maps(test)
    session = ort.InferenceSession(onnx_bytes(build_graph(detector, (64, 64)), (64, 64), channels, 17))
    score, maps = session.run(["score", "map"], {"images": np.ascontiguousarray(test.transpose(0, 3, 1, 2))})
    np.testing.assert_allclose(score, expected.scores, rtol=1e-4)
    np.testing.assert_allclose(maps, expected.maps, rtol=1e-4, atol=1e-4 * np.abs(expected.maps).max())


def test_power_mean_graph_function_is_the_float64_power_mean():
    """image score = (mean over patch scores of s^p)^(1/p), computed in float64."""
    from pyimgano_hydra.export.graph import power_mean

    values = np.random.default_rng(0).gamma(2.0, 3.0, (4, 300)).astype(np.float32)
    values[3] = 0.0
    for p in (1.0, 24.0):
        expected = np.mean(values.astype(np.float64) ** p, axis=1) ** (1.0 / p)
        np.testing.assert_allclose(power_mean(torch.from_numpy(values), p).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_exported_model_scores_and_maps_match_pytorch(name, runs):
    run_dir = runs(name)
    artifacts = run_dir / "categories" / "washer" / "artifacts"
    manifest = read_json(artifacts / "export.json")
    assert manifest["sha256"] == hashlib.sha256((artifacts / "model.onnx").read_bytes()).hexdigest()
    assert (manifest["tiling"] is not None) == name.endswith("tiled")
    records, _ = _test_images(run_dir)
    inspector = load_inspector(run_dir)
    assert manifest["image_threshold"]["value"] == inspector.threshold_
    images = inspector.load_images([r["path"] for r in records])
    torch_scores, torch_maps = inspector.score_maps(images)
    _, inspector.detector = load_exported(run_dir, run_dir / "categories" / "washer")
    onnx_scores, onnx_maps = inspector.score_maps(images)
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4)
    np.testing.assert_allclose(onnx_maps, torch_maps, rtol=1e-4, atol=1e-4 * np.abs(torch_maps).max())


def test_infer_with_onnxruntime_gives_the_torch_records(runs, tmp_path):
    run_dir = runs("patchcore")
    _, test_root = _test_images(run_dir)
    torch_records = infer_in_process(run_dir, test_root, tmp_path / "torch")
    onnx_records = infer_in_process(run_dir, test_root, tmp_path / "onnx", "runtime=onnxruntime")
    assert [set(r) for r in onnx_records] == [set(r) for r in torch_records]
    for a, b in zip(onnx_records, torch_records):
        assert a["path"] == b["path"] and a["pred_label"] == b["pred_label"]
        assert a["score"] == pytest.approx(b["score"], rel=1e-4)


def test_other_detectors_and_unexportable_settings_are_refused_in_one_line(tmp_path):
    from pyimgano_hydra.export.graph import build_graph
    from pyimgano_hydra.models.patchcore import PatchCore

    run_dir = tmp_path / "run"
    run([*TINY, "model=ecod"], output_dir=run_dir)
    proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model:" in proc.stderr and "exportable" in proc.stderr
    with pytest.raises(ConfigError, match="model.image_score"):
        build_graph(PatchCore(image_score="nope"), (64, 64))


def test_tampered_or_escaping_exports_are_refused_naming_the_file(runs, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(runs("patchcore"), run_dir)
    category = run_dir / "categories" / "washer"
    model = category / "artifacts" / "model.onnx"
    original = model.read_bytes()

    model.write_bytes(original[:-10] + b"0123456789")
    with pytest.raises(UserError, match=r"model\.onnx: sha256 does not match"):
        load_exported(run_dir, category)

    garbage = b"not an onnx model"
    model.write_bytes(garbage)
    manifest_path = category / "artifacts" / "export.json"
    manifest = read_json(manifest_path)
    manifest_path.write_text(json.dumps(manifest | {"sha256": hashlib.sha256(garbage).hexdigest()}))
    with pytest.raises(UserError, match=r"model\.onnx: not a loadable ONNX model") as info:
        load_exported(run_dir, category)
    assert "\n" not in str(info.value)

    outside = tmp_path / "outside.onnx"
    outside.write_bytes(original)
    model.unlink()
    model.symlink_to(outside)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="outside the run dir"):
        load_exported(run_dir, category)

    manifest_path.write_text(json.dumps(manifest | {"model_file": "../../../outside.onnx"}))
    with pytest.raises(UserError, match="model_file"):
        load_exported(run_dir, category)
    manifest_path.write_text(json.dumps(manifest | {"_target_": "os.system"}))
    with pytest.raises(UserError, match="_target_"):
        load_exported(run_dir, category)


def test_cuda_with_onnxruntime_and_small_tiled_images_are_refused(runs, tmp_path):
    run_dir = runs("patchcore")
    _, test_root = _test_images(run_dir)
    proc = run_cli([f"run_dir={run_dir}", f"input={test_root}", "runtime=onnxruntime", "device=cuda",
                    f"hydra.run.dir={tmp_path / 'out'}"], module="pyimgano_hydra.infer")
    assert proc.returncode == 2 and "runtime=onnxruntime" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0

    tiled = runs("patchcore_tiled")
    _, detector = load_exported(tiled, tiled / "categories" / "washer")
    with pytest.raises(UserError, match="smaller than the 64-pixel tile"):
        detector.score_maps(np.zeros((1, 40, 80, 3), np.uint8))


def test_standalone_example_scores_like_infer(runs, tmp_path):
    """examples/score_onnx.py (numpy + onnxruntime + Pillow only) gives infer's score."""
    run_dir = runs("patchcore")
    records, _ = _test_images(run_dir)
    inspector = load_inspector(run_dir)
    image = tmp_path / "line.png"  # already at the run's input size: no resampling differences
    Image.fromarray(inspector.load_images([records[-1]["path"]])[0]).save(image)
    expected = infer_in_process(run_dir, image, tmp_path / "infer", "runtime=onnxruntime")[0]
    artifacts = run_dir / "categories" / "washer" / "artifacts"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(REPO / "examples" / "score_onnx.py"), str(artifacts), str(image)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["score"] == pytest.approx(expected["score"], rel=1e-5)
    assert result["pred_label"] == expected["pred_label"]
    assert result["threshold"] == pytest.approx(expected["threshold"])


def test_standalone_example_names_a_bad_image_and_scores_the_others(runs, tmp_path):
    """examples/score_onnx.py given good, bad, good: the bad one is one line on stderr, the other two
    are scored, and the exit code says one failed (it stopped at the bad one, losing the third)."""
    artifacts = runs("padim") / "categories" / "washer" / "artifacts"
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(REPO / "examples" / "score_onnx.py"), str(artifacts),
                           str(good), str(bad), str(good)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {bad}: "), proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert [json.loads(line)["image"] for line in proc.stdout.splitlines()] == [str(good), str(good)]


@pytest.mark.parametrize("blocker", ["artifacts is a file", "model.onnx is a folder"])
def test_an_export_path_of_the_wrong_kind_is_one_line_naming_run_dir(runs, tmp_path, blocker):
    """A hostile pass: ``artifacts`` a file where the export writes a folder exited 1 with a raw FileExistsError."""
    run_dir = tmp_path / "copy"
    shutil.copytree(runs("padim"), run_dir)
    artifacts = run_dir / "categories" / "washer" / "artifacts"
    shutil.rmtree(artifacts)
    if blocker == "artifacts is a file":
        artifacts.write_text("keep me")
    else:
        (artifacts / "model.onnx").mkdir(parents=True)
    proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith(f"error: run_dir={run_dir}: cannot write the export into {artifacts}"), proc.stderr
    assert artifacts.is_dir() or artifacts.read_text() == "keep me"


@pytest.mark.parametrize("bad", ["image", "EPS named .png", "artifacts dir", "export.json", "model.onnx",
                                 "memory cap not a number", "memory cap under the input"])
def test_standalone_example_refuses_bad_input_in_one_line(runs, tmp_path, bad):
    """examples/score_onnx.py printed a traceback (exit 1) on a bad image or artifacts dir; a memory cap
    that is no number, or too small for 8 float copies of the model's input, is refused before it runs."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(runs("padim") / "categories" / "washer" / "artifacts", artifacts)
    image = tmp_path / "line.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    named = {"image": image, "EPS named .png": image, "artifacts dir": tmp_path / "nowhere" / "export.json",
             "export.json": artifacts / "export.json", "model.onnx": artifacts / "model.onnx",
             "memory cap not a number": "SCORE_ONNX_MAX_MEMORY_GB",
             "memory cap under the input": artifacts / "export.json"}[bad]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if bad == "image":
        image.write_text("not an image")
    elif bad == "EPS named .png":  # Pillow's EPS plugin runs Ghostscript where it is installed
        image.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n")
    elif bad == "artifacts dir":
        artifacts = tmp_path / "nowhere"
    elif bad.startswith("memory cap"):
        env["SCORE_ONNX_MAX_MEMORY_GB"] = "abc" if bad.endswith("number") else "0.0001"
    else:
        named.write_bytes(b"{not json" if bad == "export.json" else b"garbage")
    proc = subprocess.run([sys.executable, "-I", str(REPO / "examples" / "score_onnx.py"), str(artifacts), str(image)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {named}: "), proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stdout == ""
    if bad == "EPS named .png":
        assert "UnidentifiedImageError" in proc.stderr, proc.stderr  # refused unopened, never handed to EPS
