"""A run dir is untrusted: loading it parses, never imports, instantiates, interpolates or
unpickles; every refusal is one line naming the file and key, and no marker file appears."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pyimgano_hydra import app
from pyimgano_hydra.api import compose_with_choices, load_inspector
from pyimgano_hydra.errors import UserError
from pyimgano_hydra.inspector import Inspector
from pyimgano_hydra.runs.load import load_run
from pyimgano_hydra.runs.writers import read_json, write_json_atomic


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A completed one-category run of the fast pixel z-score detector."""
    cfg, choices = compose_with_choices(["dataset.category=weave", "dataset.limit_test=6",
                                         "dataset.limit_train=6", "postprocess=inspect"])
    cfg.model = OmegaConf.create({"_target_": "fakes.PixelZScore"})
    out = tmp_path_factory.mktemp("trust") / "run"
    app.run(cfg, out, choices=choices)
    return out


def patchcore_state() -> dict:
    """A valid stored PatchCore inspector (tiny memory bank; no backbone is built to load it)."""
    return {
        "format": "pyimgano_hydra.inspector", "version": 1, "category": "weave",
        "detector": {"name": "PatchCore",
                     "params": {"backbone": "resnet18", "layers": ["layer1"], "coreset_ratio": 0.1},
                     "state": {"memory_bank": torch.zeros(4, 8), "feature_shape": [2, 2]}},
        "tiling": None, "postprocess": None,
        "image_threshold": {"value": 1.5, "provenance": {"method": "quantile"}},
        "pixel_threshold": None,
        "preprocessing": {"resize": 64, "input_mode": "rgb"},
        "defects": None,
    }


POSTPROCESS = {"enabled": True, "sigma": 2.0, "normalize": "minmax", "percentile": 99.5,
               "percentile_low": 0.5, "clip": False, "low": 0.1, "high": 0.9}


def test_a_valid_postprocess_state_loads():
    state = patchcore_state()
    state["postprocess"] = dict(POSTPROCESS)
    assert Inspector.from_state(state).postprocessor.high_ == 0.9


def _marker_attack(marker: Path) -> str:
    return f"echo PWNED > {marker}"


def test_a_valid_state_loads(tmp_path):
    inspector = Inspector.from_state(patchcore_state())
    assert type(inspector.detector).__name__ == "PatchCore"
    assert inspector.detector.coreset_ratio == 0.1 and inspector.threshold_ == 1.5


@pytest.mark.parametrize("mutate,needle", [
    (lambda s, m: s["detector"].update(name="os.system"), "detector.name: os.system is not a registered detector"),
    (lambda s, m: s["detector"].update(name="pyimgano_hydra.models.patchcore.torch.load"), "not a registered detector"),
    (lambda s, m: s["detector"].update(name=["PatchCore"]), "detector.name: must be a detector name"),
    (lambda s, m: s["detector"]["params"].update(backbone={"_target_": "os.system", "command": _marker_attack(m)}),
     "detector.params.backbone._target_: not allowed"),
    (lambda s, m: s["detector"]["params"].update(
        backbone="${oc.create:{_target_: os.system, command: '" + _marker_attack(m) + "'}}"),
     "interpolations are not allowed"),
    (lambda s, m: s["detector"]["params"].update(command=_marker_attack(m)), "detector.params.command: PatchCore has no such parameter"),
    (lambda s, m: s["detector"]["params"].update(coreset_ratio="abc"), "detector.params"),
    (lambda s, m: s["detector"]["params"].update(coreset_ratio=float("inf")), "must be finite"),
    (lambda s, m: s["detector"]["params"].update(coreset_ratio=7.0), "model.coreset_ratio: must be in (0, 1]"),
    (lambda s, m: s["detector"]["state"].pop("memory_bank"), "the detector state does not fit PatchCore"),
    (lambda s, m: s.update(version=1.9), "inspector version 1.9"),
    (lambda s, m: s.update(version="abc"), "inspector version 'abc'"),
    (lambda s, m: s.update(version=None), "inspector version None"),
    (lambda s, m: s.update(format="other"), "not a pyimgano_hydra inspector"),
    (lambda s, m: s.pop("preprocessing"), "missing key 'preprocessing'"),
    (lambda s, m: s["preprocessing"].update(input_mode="cmyk"), "preprocessing.input_mode"),
    (lambda s, m: s["image_threshold"].update(value=float("nan")), "image_threshold"),
    (lambda s, m: s.update(tiling={"tile_size": 32, "_target_": "os.system"}), "tiling._target_: not allowed"),
    (lambda s, m: s.update(tiling={"tile_size": 32, "evil": 1}), "tiling.evil is not a tiling setting"),
    # a second attacker's pass: name tricks that held
    (lambda s, m: s["detector"].update(name="pyimgano_hydra.runs.writers.np.load"), "not a registered detector"),
    (lambda s, m: s["detector"].update(name="pyimgano_hydra.models.patchcore.PatchCore"), "not a registered detector"),
    (lambda s, m: s["detector"].update(name=" PatchCore"), "not a registered detector"),
    (lambda s, m: s["detector"].update(name="PatchCore.__init__"), "not a registered detector"),
    (lambda s, m: s["image_threshold"]["provenance"].update(_target_="os.system"), "provenance._target_: not allowed"),
    (lambda s, m: s["image_threshold"]["provenance"].update(x="${oc.env:HOME}"), "interpolations are not allowed"),
    (lambda s, m: s["detector"]["params"].update(device="cuda:0; touch x"), "model.device"),
    # ... and values that crashed deep inside (no file named) or ran out of memory
    (lambda s, m: s["image_threshold"].update(value=10**400), "image_threshold.value: must be a finite number"),
    (lambda s, m: s["preprocessing"].update(resize=[65536, 65536]), "preprocessing.resize must be"),
    (lambda s, m: s["preprocessing"].update(resize=65536), "preprocessing.resize must be"),
    (lambda s, m: s.update(postprocess={**POSTPROCESS, "sigma": 1e300}), "postprocess.sigma: must be in"),
    # a third pass: a 1e6-pixel blur kernel on every map hung infer (minutes of CPU per image)
    (lambda s, m: s["detector"]["params"].update(smoothing_sigma=1e6), "model.smoothing_sigma: must be in 0..1000"),
    (lambda s, m: s.update(defects={"enabled": True, "open_ksize": 10**6}), "defects.open_ksize: must be at most 255"),
    (lambda s, m: s.update(postprocess={**POSTPROCESS, "percentile": "99"}), "postprocess.percentile: must be a finite"),
    (lambda s, m: s.update(postprocess={**POSTPROCESS, "percentile": 10**400}), "postprocess.percentile: must be a finite"),
    (lambda s, m: s.update(postprocess={**POSTPROCESS, "clip": "yes"}), "postprocess.clip: must be true or false"),
    (lambda s, m: s.update(postprocess={**POSTPROCESS, "low": 5.0, "high": 1.0}), "postprocess.low 5.0 is above"),
    # a third pass: a bank that is not a finite (n, d) matrix crashed at scoring naming no file
    (lambda s, m: s["detector"]["state"].update(memory_bank=torch.zeros(2, 4, 8)), "memory_bank must be a non-empty finite"),
    (lambda s, m: s["detector"]["state"].update(memory_bank=torch.zeros(0, 8)), "memory_bank must be a non-empty finite"),
    (lambda s, m: s["detector"]["state"].update(memory_bank=torch.full((4, 8), float("nan"))),
     "memory_bank must be a non-empty finite"),  # every score NaN: every image "normal"
    # keys the loader would otherwise ignore: an inspector holds exactly what it wrote
    (lambda s, m: s.update(extra_payload={"_target_": "os.system"}), "unknown key 'extra_payload'"),
    (lambda s, m: s.update({1: "x"}), "unknown key '1'"),
    (lambda s, m: s.update({"a\nb" + "x" * 10**6: 1}), r"unknown key 'a\nb" + "x" * 77 + "' (an"),  # one short line
])
def test_hostile_inspector_states_are_refused_in_one_line(tmp_path, mutate, needle):
    marker = tmp_path / "pwned"
    state = patchcore_state()
    mutate(state, marker)
    with pytest.raises(UserError) as caught:
        Inspector.from_state(state, where="x/inspector.pt")
    message = str(caught.value)
    assert needle in message and message.startswith("x/inspector.pt") and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(name="pyod.models.knn.os.system"), "not a registered PyOD detector"),
    (lambda d: d.update(name="sklearn.utils._testing.os.system"), "not a registered PyOD detector"),
    (lambda d: d["params"].update(n_neighbors={"_target_": "os.system"}), "_target_: not allowed"),
    (lambda d: d["params"].update(no_such=1), "KNN has no such parameter"),
    (lambda d: d["params"].update(n_neighbors=10**9), "detector.params.n_neighbors: 1000000000 is out of range"),
])
def test_hostile_pyod_specs_are_refused(mutate, needle):
    state = patchcore_state()
    detector = {"name": "pyod.models.knn.KNN", "params": {"n_neighbors": 3}}
    mutate(detector)
    state["detector"] = {"name": "PyODOnFeatures", "params": {"detector": detector}, "state": {}}
    with pytest.raises(UserError, match="^inspector") as caught:
        Inspector.from_state(state)
    assert needle in str(caught.value)


def _planted(fake_run, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "planted"
    shutil.copytree(fake_run, dst)
    return dst


def _set_report(run_dir: Path, edit) -> None:
    report = read_json(run_dir / "report.json")
    edit(report)
    write_json_atomic(run_dir / "report.json", report)


@pytest.mark.parametrize("value,needle", [
    ("abc", "schema_version must be an integer, got 'abc'"),
    (None, "schema_version must be an integer, got None"),
    (1.9, "schema_version must be an integer, got 1.9"),
    (True, "schema_version must be an integer, got True"),
    (1, "schema_version 1 run dirs are no longer read"),
    (3, "newer"),
    ("2", "schema_version must be an integer, got '2'"),
    (2.0, "schema_version must be an integer, got 2.0"),
    (-1, "schema_version -1 run dirs are no longer read"),
])
def test_report_schema_versions_are_parsed_strictly(fake_run, tmp_path, value, needle):
    run_dir = _planted(fake_run, tmp_path)
    _set_report(run_dir, lambda r: r.update(schema_version=value))
    with pytest.raises(UserError, match="report.json") as caught:
        load_run(run_dir)
    assert needle in str(caught.value)


@pytest.mark.parametrize("name,text,needle", [
    ("report.json", "{not json", "not a readable JSON file"),
    ("report.json", "[" * 200_000 + "]" * 200_000, "report.json"),
    ("report.json", '{"schema_version": 2}', "missing key 'categories'"),
    ("report.json", "[" * 40 + "]" * 40, "report.json"),
    ("status.json", "[]", 'status: expected a string such as "completed"'),
    ("status.json", '"completed"', 'status: expected a string'),
    ("status.json", '{"status": ["completed"]}', 'status: expected a string'),
    ("status.json", "[" * 200_000 + "]" * 200_000, "not a readable JSON file"),
    ("status.json", '{"status": "failed", "status": "completed"}', "duplicate key 'status'"),
])
def test_broken_run_json_is_one_line_naming_the_file(fake_run, tmp_path, name, text, needle):
    run_dir = _planted(fake_run, tmp_path)
    (run_dir / name).write_text(text)
    with pytest.raises(UserError) as caught:
        load_run(run_dir)
    assert needle in str(caught.value) and str(run_dir / name) in str(caught.value)


@pytest.mark.parametrize("where", ["../../outside.pt", "/etc/passwd", "symlink"])
def test_inspector_paths_stay_inside_the_run_dir(fake_run, tmp_path, where):
    run_dir = _planted(fake_run, tmp_path)
    outside = tmp_path / "outside.pt"
    torch.save(torch.load(run_dir / "categories/weave/inspector.pt", weights_only=True), outside)
    if where == "symlink":
        target = run_dir / "categories/weave/inspector.pt"
        target.unlink()
        target.symlink_to(outside)
        rel = "categories/weave/inspector.pt"
    else:
        rel = where
    _set_report(run_dir, lambda r: r["categories"]["weave"].update(inspector=rel))
    with pytest.raises(UserError, match="inside the run dir|outside the run dir"):
        load_run(run_dir).inspector("weave", trust_targets=True)


def test_custom_detector_needs_trust_targets_then_scores_like_the_run(fake_run):
    with pytest.raises(UserError, match="fakes.PixelZScore is not a registered detector"):
        load_inspector(fake_run)
    inspector = load_inspector(fake_run, trust_targets=True)
    assert inspector.category == "weave" and inspector.preprocessing["resize"] == 128


def test_a_state_edited_in_place_round_trips(tmp_path):
    """Save → load keeps every field (weights_only)."""
    inspector = Inspector.from_state(patchcore_state())
    path = inspector.save(tmp_path / "inspector.pt")
    again = Inspector.load(path)
    assert again.state_dict()["detector"]["params"] == inspector.state_dict()["detector"]["params"]
    np.testing.assert_array_equal(again.detector.memory_bank_, inspector.detector.memory_bank_)
    assert again.image_threshold == inspector.image_threshold


def test_duplicate_keys_in_report_json_are_refused(fake_run, tmp_path):
    run_dir = _planted(fake_run, tmp_path)
    text = (run_dir / "report.json").read_text()
    (run_dir / "report.json").write_text(text.replace('"schema_version": 2', '"schema_version": 1, "schema_version": 2'))
    with pytest.raises(UserError, match="report.json: not a readable JSON file .duplicate key 'schema_version'"):
        load_run(run_dir)


@pytest.mark.parametrize("name,kind", [("status.json", "fifo"), ("report.json", "fifo"), ("report.json", "devzero"),
                                       ("categories/weave/inspector.pt", "fifo")])
def test_fifos_and_devices_in_a_run_dir_are_refused_without_blocking(fake_run, tmp_path, name, kind):
    import os

    run_dir = _planted(fake_run, tmp_path)
    (run_dir / name).unlink()
    if kind == "fifo":
        os.mkfifo(run_dir / name)
    else:
        (run_dir / name).symlink_to("/dev/zero")
    with pytest.raises(UserError, match="not a regular file|leads outside the run dir") as caught:
        load_run(run_dir).inspector("weave", trust_targets=True)
    assert str(run_dir / name) in str(caught.value)


@pytest.mark.parametrize("name", ["status.json", "report.json"])
def test_run_json_files_are_read_only_from_inside_the_run_dir(fake_run, tmp_path, name):
    """A fourth pass: status.json / report.json symlinked to a file outside were read (a JSON's
    "status" value was echoed in the error line)."""
    run_dir = _planted(fake_run, tmp_path)
    outside = tmp_path / f"outside-{name}"
    (run_dir / name).rename(outside)
    (run_dir / name).symlink_to(outside)
    with pytest.raises(UserError, match=f"^{run_dir / name}: .* leads outside the run dir"):
        load_run(run_dir)


def test_nul_byte_in_an_inspector_path_is_one_line(fake_run, tmp_path):
    run_dir = _planted(fake_run, tmp_path)
    _set_report(run_dir, lambda r: r["categories"]["weave"].update(inspector="categories/weave/inspector.pt\x00x"))
    with pytest.raises(UserError, match="categories.weave.inspector: .* holds a NUL byte"):
        load_run(run_dir).inspector("weave", trust_targets=True)


def _pyod_state(detector_params: dict) -> dict:
    state = patchcore_state()
    cls = "pyod.models.iforest.IForest"
    state["detector"] = {
        "name": "PyODOnFeatures",
        "params": {"backbone": "resnet18", "layers": ["layer1"], "pretrained": False,
                   "detector": {"name": cls, "params": {"n_estimators": 10, "random_state": 2**31}}},
        "state": {"state_version": 1, "detector_class": cls, "detector_params": detector_params,
                  "train_embeddings": torch.randn(8, 4), "mean": torch.zeros(4), "scale": torch.ones(4), "notes": []}}
    return state


def test_stored_pyod_params_with_huge_counts_are_refused_not_refitted_for_hours():
    assert Inspector.from_state(_pyod_state({"n_estimators": 10, "random_state": 2**31})).detector is not None
    with pytest.raises(UserError, match=r"^x: detector_params.n_estimators: 1000000000 is out of range"):
        Inspector.from_state(_pyod_state({"n_estimators": 10**9}), where="x")


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_a_pickled_weights_path_is_refused_in_one_line_and_never_run(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"w": _Marker(marker)}, evil)
    state = patchcore_state()
    state["detector"]["params"].update(weights_path=evil.name, pretrained=False)
    inspector = Inspector.from_state(state, where="x", folder=tmp_path)
    with pytest.raises(UserError, match="model.weights_path: cannot read weights") as caught:
        inspector.score_maps(np.zeros((1, 64, 64, 3), np.uint8))
    assert "\n" not in str(caught.value) and not marker.exists()


@pytest.mark.parametrize("stored", ["/etc/passwd", "../evil.pt", "link.pt", "absent.pt", "sub/evil.pt",
                                    "~/evil.pt", "a\nb.pt", "../../../evil.pt"])
def test_a_stored_weights_path_outside_the_inspector_folder_is_refused(tmp_path, stored):
    folder, outside = tmp_path / "run" / "categories" / "weave", tmp_path / "evil.pt"
    folder.mkdir(parents=True)
    outside.write_bytes(b"x")
    (folder / "link.pt").symlink_to(outside)
    (folder / "sub").symlink_to(tmp_path, target_is_directory=True)  # a folder symlinked out
    state = patchcore_state()
    state["detector"]["params"].update(weights_path=stored, pretrained=False)
    with pytest.raises(UserError) as caught:
        Inspector.from_state(state, where="x/inspector.pt", folder=folder)
    message = str(caught.value)
    assert message.startswith("x/inspector.pt: detector.params.weights_path (model.weights_path): ")
    assert "\n" not in message and "trust_targets=true" in message
    with pytest.raises(UserError, match="read only from the inspector's folder"):
        Inspector.from_state(state, where="x/inspector.pt")


def test_trust_targets_reads_a_stored_relative_weights_path_beside_the_inspector(tmp_path, monkeypatch):
    folder = tmp_path / "run" / "categories" / "weave"
    folder.mkdir(parents=True)
    (folder / "backbone_weights.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)  # not the inspector's folder
    state = patchcore_state()
    state["detector"]["params"].update(weights_path="backbone_weights.pt", pretrained=False)
    trusted = Inspector.from_state(state, where="x/inspector.pt", trust_targets=True, folder=folder)
    assert trusted.detector.weights_path == str(folder / "backbone_weights.pt")
    state["detector"]["params"]["weights_path"] = str(tmp_path / "lab.pt")  # an opt-in reads any path
    assert Inspector.from_state(state, trust_targets=True, folder=folder).detector.weights_path == str(tmp_path / "lab.pt")


def test_a_run_fitted_with_local_weights_carries_them(tmp_path):
    import torchvision

    weights = tmp_path / "lab" / "r18.pt"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg, choices = compose_with_choices(["dataset.category=weave", "dataset.limit_train=6", "dataset.limit_test=4",
                                         "dataset.resize=64", "model.backbone=resnet18", "model.layers=[layer1]",
                                         "model.pretrained=false", f"model.weights_path={weights}", "model.device=cpu"])
    out = tmp_path / "run"
    app.run(cfg, out, choices=choices)
    stored = torch.load(out / "categories/weave/inspector.pt", weights_only=True)
    assert stored["detector"]["params"]["weights_path"] == "backbone_weights.pt"
    assert (out / "categories/weave/backbone_weights.pt").read_bytes() == weights.read_bytes()
    weights.unlink()  # the line PC has only the run dir
    inspector = Inspector.load(out / "categories/weave/inspector.pt")
    image = np.full((1, 64, 64, 3), 128, np.uint8)
    assert np.isfinite(inspector.score_batch(image).records[0]["score"])


@pytest.mark.parametrize("link", ["categories/weave/artifacts", "categories/weave", "categories"])
def test_export_never_writes_through_a_symlink_in_the_run_dir(fake_run, tmp_path, link):
    """A third attacker's pass: ``artifacts -> /elsewhere`` made the export write model.onnx and
    export.json there (an existing export.json outside was replaced)."""
    import shutil

    from pyimgano_hydra.export import export_category

    run_dir = _planted(fake_run, tmp_path)
    outside = tmp_path / "outside"
    if link == "categories/weave/artifacts":
        outside.mkdir()
    else:
        shutil.copytree(run_dir / link, outside)
        shutil.rmtree(run_dir / link)
    (outside / "export.json").write_text("keep")
    (run_dir / link).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="a symlink in the run dir; an export is never written through one") as caught:
        export_category(run_dir, "weave")
    assert "\n" not in str(caught.value)
    assert (outside / "export.json").read_text() == "keep" and not (outside / "model.onnx").exists()


def _external_tensor(name: str = "c"):
    from onnx import TensorProto

    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[16], data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "secret.txt"  # read relative to the working dir
    return tensor


def _external_models() -> dict:
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info("score", TensorProto.UINT8, [16])
    branch = helper.make_graph([], "b", [], [out], initializer=[_external_tensor()])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    sparse = helper.make_sparse_tensor(_external_tensor(), helper.make_tensor("i", TensorProto.INT64, [1], [0]), [16])
    return {
        "constant": helper.make_graph([helper.make_node("Constant", [], ["score"], value=_external_tensor())],
                                      "g", [], [out]),
        "subgraph": helper.make_graph([helper.make_node("If", ["cond"], ["score"], then_branch=branch,
                                                        else_branch=branch)], "g", [cond], [out]),
        "sparse": helper.make_graph([], "g", [], [out], sparse_initializer=[sparse]),
    }


@pytest.mark.parametrize("kind", ["constant", "subgraph", "sparse"])
def test_an_exported_model_with_external_data_anywhere_is_refused(kind):
    """Only top-level initializers were checked: a Constant node, an If branch or a sparse
    initializer could still name a file for ONNX Runtime to read."""
    pytest.importorskip("onnx")
    from onnx import helper

    from pyimgano_hydra.export.runtime import _session

    model = helper.make_model(_external_models()[kind]).SerializeToString()
    with pytest.raises(UserError, match=r"^x/model.onnx: refused: it references external data files$"):
        _session(model, "x/model.onnx")


@pytest.mark.parametrize("mutate", [
    lambda s: s["detector"]["state"].update(memory_bank=torch.zeros(4, 7)),  # not the backbone's width
    lambda s: s["detector"]["params"].update(seed=2**80),
])
def test_a_stored_detector_that_fails_at_scoring_names_its_file(tmp_path, mutate):
    """Accepted at load, the state crashed inside the detector: 'RuntimeError: mat1 and mat2
    shapes cannot be multiplied' was infer's whole message."""
    state = patchcore_state()
    state["detector"]["params"].update(pretrained=False, device="cpu")
    mutate(state)
    path = tmp_path / "inspector.pt"
    torch.save(state, path)
    inspector = Inspector.load(path)
    with pytest.raises(UserError) as caught:
        inspector.score_batch(np.zeros((1, 64, 64, 3), np.uint8))
    message = str(caught.value)
    assert message.startswith(f"{path}: scoring with the stored detector failed (") and "\n" not in message


def test_a_padim_state_whose_shapes_disagree_is_refused_at_load():
    state = patchcore_state()
    state["detector"] = {"name": "PaDiM", "params": {"backbone": "resnet18", "layers": ["layer1"], "pretrained": False},
                         "state": {"channels": {"layer1": torch.arange(4)}, "mean": torch.zeros(16, 4),
                                   "inv_cov": torch.zeros(16, 5, 5), "grid": [4, 4]}}
    with pytest.raises(UserError, match=r"^x: the detector state does not fit PaDiM .*inv_cov \(P, d, d\)"):
        Inspector.from_state(state, where="x")
    state["detector"]["state"]["inv_cov"] = torch.zeros(16, 4, 4)
    assert Inspector.from_state(state, where="x").detector.inv_cov_.shape == (16, 4, 4)


def _deflated(source: Path, target: Path) -> None:
    """``source`` (a torch zip file) rewritten with every entry deflated."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)


def test_a_deflated_inspector_is_refused_before_it_inflates(tmp_path):
    """A third pass: a 0.8 MB inspector.pt with a deflated 800 MB bank loaded (torch.load inflates
    deflated zip entries); scaled up it takes the line PC's memory."""
    state = patchcore_state()
    state["detector"]["state"]["memory_bank"] = torch.zeros(100_000, 8)
    plain_file, bomb = tmp_path / "plain.pt", tmp_path / "inspector.pt"
    torch.save(state, plain_file)
    _deflated(plain_file, bomb)
    assert bomb.stat().st_size < plain_file.stat().st_size / 50
    with pytest.raises(UserError, match=rf"^{bomb}: refused: compressed entries"):
        Inspector.load(bomb)
    assert Inspector.load(plain_file).detector.memory_bank_.shape == (100_000, 8)


def test_deflated_backbone_weights_are_refused(tmp_path):
    import torchvision

    plain_file, bomb = tmp_path / "r18.pt", tmp_path / "backbone_weights.pt"
    torch.save(torchvision.models.resnet18().state_dict(), plain_file)
    _deflated(plain_file, bomb)
    from pyimgano_hydra.features.backbones import _read_state_dict

    with pytest.raises(UserError, match=rf"^model.weights_path: {bomb}: refused: compressed entries"):
        _read_state_dict(bomb, "model.weights_path")
    assert _read_state_dict(plain_file, "model.weights_path")


def test_a_stride0_bank_is_refused_before_it_is_copied(tmp_path):
    """A fourth pass: a 3 KB inspector.pt whose bank is a stride-0 view of one float as a
    200000x20000 matrix loaded, then took 15 GB copying it (MemoryError, or the OOM killer)."""
    state = patchcore_state()
    state["detector"]["state"]["memory_bank"] = torch.zeros(1).as_strided((200_000, 20_000), (0, 0))
    path = tmp_path / "inspector.pt"
    torch.save(state, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(UserError, match=rf"^{path}: refused: its tensors hold 15258 MB in a"):
        Inspector.load(path)


@pytest.mark.parametrize("where", ["params", "provenance", "state"])
def test_a_shared_reference_bomb_is_refused_not_walked_forever(tmp_path, where):
    """A fourth pass: a pickle naming one list 2**28 times through shared references (a few KB)
    hung infer in the params check (and PaDiM's np.asarray of its channels)."""
    leaf = [0.0]
    for _ in range(28):
        leaf = [leaf, leaf]
    state = patchcore_state()
    target = {"params": state["detector"]["params"], "provenance": state["image_threshold"]["provenance"],
              "state": state["detector"]["state"]}[where]
    target["layers" if where == "params" else "x"] = leaf
    path = tmp_path / "inspector.pt"
    torch.save(state, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(UserError, match=rf"^{path}: refused: holds more than 1000000 values"):
        Inspector.load(path)


def test_an_autoencoder_state_with_huge_in_channels_is_refused_before_building(tmp_path):
    """A fourth pass: a tiny inspector.pt with in_channels=10**6 built a 3.7 GB network (10**7:
    the line PC's memory) before its tensors were found missing."""
    import resource

    from pyimgano_hydra.models.autoencoder import STATE_VERSION

    state = patchcore_state()
    state["detector"] = {"name": "ConvAutoencoder", "params": {"pretrained": False},
                         "state": {"state_version": STATE_VERSION, "in_channels": 10**6, "net": {}}}
    path = tmp_path / "inspector.pt"
    torch.save(state, path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError, match=rf"^{path}: the detector state does not fit ConvAutoencoder "
                                        r"\(ValueError: in_channels must be 1 \(gray\) or 3 \(rgb\), got 1000000\)"):
        Inspector.load(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB


@pytest.mark.parametrize("module, flag", [("pyimgano_hydra.infer", "-m"), ("pyimgano_hydra.export", "-m"),
                                          ("pyimgano_hydra.infer", "-um")])
def test_python_m_started_inside_a_run_dir_imports_nothing_from_it(fake_run, tmp_path, module, flag):
    """A fourth pass: ``cd <run dir> && python -m pyimgano_hydra.infer run_dir=. ...`` ran a
    ``hydra_plugins/`` package shipped in the run dir (Hydra imports every plugin on sys.path,
    and ``python -m`` puts the working dir first); the inference then completed as usual.
    A verification pass: ``python -um`` (combined short options) still ran it."""
    import subprocess
    import sys

    run_dir = _planted(fake_run, tmp_path)
    marker = tmp_path / "pwned"
    plugin = run_dir / "hydra_plugins" / "evil"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (run_dir / "omegaconf.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    args = ["run_dir=.", f"input={run_dir / 'categories'}", "trust_targets=true",
            f"hydra.run.dir={tmp_path / 'out'}"] if module.endswith("infer") else ["run_dir=."]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(Path(__file__).parent)])}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, flag, module, *args], cwd=run_dir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert not marker.exists(), proc.stderr[-2000:]
    assert proc.returncode == 0 or module.endswith("export"), proc.stderr[-2000:]  # the fake detector has no export


@pytest.mark.parametrize("module", ["pyimgano_hydra", "pyimgano_hydra.__main__"])
def test_the_app_started_inside_a_run_dir_imports_nothing_from_it(fake_run, tmp_path, module):
    """Pass D: ``cd <received run dir> && python -m pyimgano_hydra --help`` ran its ``hydra_plugins/``
    (the working-dir guard covered infer and export only). The app keeps the working dir elsewhere
    (a project's own detector modules)."""
    import subprocess
    import sys

    run_dir = _planted(fake_run, tmp_path)
    marker = tmp_path / "pwned"
    plugin = run_dir / "categories" / "hydra_plugins" / "evil"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=run_dir / "categories", env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and not marker.exists(), proc.stderr[-2000:]


def test_hostile_category_names_make_one_short_error_line(fake_run, tmp_path):
    """A fourth pass: a 2 MB category name in report.json made a 2 MB error line, one holding
    a newline and an escape sequence split it and cleared the terminal."""
    run_dir = _planted(fake_run, tmp_path)

    def add(report):
        entry = report["categories"]["weave"]
        report["categories"].update({"x" * 2_000_000: entry, "a\nb\x1b[2J": entry})

    _set_report(run_dir, add)
    with pytest.raises(UserError) as caught:
        load_run(run_dir).category(None)
    message = str(caught.value)
    assert len(message) < 400 and "\n" not in message and "\x1b" not in message and r"a\nb\x1b[2J" in message


def _oversized_models() -> dict:
    """Small model files that declare a tensor of 16 GB."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 3, 8, 8])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, [])
    shape = numpy_helper.from_array(np.array([4, 1 << 30], np.int64), "shape")
    fill = numpy_helper.from_array(np.array([1.0], np.float32))
    summed = helper.make_node("ReduceSum", ["big"], ["score"], keepdims=0)
    empty = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 1 << 30])  # declared, no data
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [1], [0]), [4, 1 << 30])
    return {
        "constant of shape": helper.make_graph([helper.make_node("Constant", [], ["shape"], value=shape),
                                                helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fill),
                                                summed], "g", [images], [score]),
        "input shape": helper.make_graph([helper.make_node("ReduceSum", ["images"], ["score"], keepdims=0)], "g",
                                         [helper.make_tensor_value_info("images", TensorProto.FLOAT, [4, 1 << 30])],
                                         [score]),
        "initializer": helper.make_graph([helper.make_node("ReduceSum", ["w"], ["score"], keepdims=0)], "g",
                                         [images], [score], initializer=[empty]),
        "sparse": helper.make_graph([helper.make_node("ReduceSum", ["v"], ["score"], keepdims=0)], "g",
                                    [images], [score], sparse_initializer=[sparse]),
    }


@pytest.mark.parametrize("kind", ["constant of shape", "input shape", "initializer", "sparse"])
def test_an_exported_model_declaring_a_huge_tensor_is_refused_before_onnxruntime(kind, monkeypatch):
    """A 212-byte model.onnx made ONNX Runtime ask for 16 GB."""
    pytest.importorskip("onnx")
    from onnx import helper

    from pyimgano_hydra.export import runtime

    monkeypatch.setattr(runtime, "_onnxruntime", lambda: pytest.fail("onnxruntime reached"))
    model = helper.make_model(_oversized_models()[kind], opset_imports=[helper.make_opsetid("", 17)])
    data = model.SerializeToString()
    assert len(data) < 400
    with pytest.raises(UserError, match=r"^x/model.onnx: refused: .*(declares|has shape) .*more than the 2 GB") as caught:
        runtime._session(data, "x/model.onnx")
    assert "\n" not in str(caught.value)
