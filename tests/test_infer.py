"""Hand-off: a run dir reloads and reproduces its scores; untrusted run dirs are refused."""
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_cli
from pyimgano_hydra import app
from pyimgano_hydra.api import compose_with_choices
from pyimgano_hydra.errors import UserError
from pyimgano_hydra.runs.load import load_run
from pyimgano_hydra.runs.writers import read_json, read_jsonl, write_json_atomic


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A completed run of the fast pixel z-score detector on two synthetic categories."""
    cfg, choices = compose_with_choices(["dataset.category=all", "dataset.limit_test=10", "postprocess=inspect"])
    cfg.model = OmegaConf.create({"_target_": "fakes.PixelZScore"})
    out = tmp_path_factory.mktemp("handoff") / "run"
    app.run(cfg, out, choices=choices)
    return out


def _infer(run_dir, input_, tmp_path, *extra):
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / f"infer{len(list(tmp_path.iterdir()))}"
    proc = run_cli([f"run_dir={run_dir}", f"input={input_}", f"hydra.run.dir={out}", *extra],
                   module="pyimgano_hydra.infer", env=env)
    return proc, out


def test_infer_reproduces_run_scores_and_labels(fake_run, tmp_path):
    records = read_jsonl(fake_run / "categories" / "weave" / "per_image.jsonl")
    folder = Path(records[0]["path"]).parents[1]  # .../weave/test
    proc, out = _infer(fake_run, folder, tmp_path, "category=weave", "trust_targets=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = {r["path"]: r for r in read_jsonl(out / "predictions.jsonl")}
    for r in records:
        assert predicted[r["path"]]["score"] == pytest.approx(r["score"], abs=1e-6)
        assert predicted[r["path"]]["pred_label"] == r["pred_label"]
    assert read_json(out / "status.json")["status"] == "completed"
    assert "images scored" in proc.stdout


def test_each_category_stores_one_inspector_that_report_references(fake_run):
    report = read_json(fake_run / "report.json")
    assert report["schema_version"] == 2
    assert not (fake_run / "artifacts").exists()
    for cat in ("weave", "washer"):
        state = torch.load(fake_run / report["categories"][cat]["inspector"], weights_only=True)
        assert state["detector"]["name"] == "fakes.PixelZScore"
        assert state["preprocessing"] == {"resize": 128, "input_mode": "rgb"}
        assert state["image_threshold"]["provenance"]["method"] == "quantile"
        assert state["postprocess"]["normalize"] == "minmax"


@pytest.mark.parametrize("args,needle", [
    (["category=weave"], "fakes.PixelZScore is not a registered detector"),
    (["trust_targets=true"], "pick one with category="),
    (["trust_targets=true", "category=nope"], "category=nope is not in this run"),
])
def test_infer_refusals(fake_run, tmp_path, args, needle):
    folder = Path(read_jsonl(fake_run / "categories" / "weave" / "per_image.jsonl")[0]["path"]).parent
    proc, _ = _infer(fake_run, folder, tmp_path, *args)
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_infer_input_matching_nothing(fake_run, tmp_path):
    proc, _ = _infer(fake_run, tmp_path / "none" / "*.png", tmp_path, "category=weave", "trust_targets=true")
    assert proc.returncode != 0 and "matches no image" in proc.stderr


def test_infer_missing_run_dir(tmp_path):
    proc, out = _infer(tmp_path / "missing", tmp_path, tmp_path)
    assert proc.returncode != 0 and "no such directory" in proc.stderr
    status = read_json(out / "status.json")  # the dir infer made is marked, never left unfinished-looking
    assert status["status"] == "failed" and "missing" in status["error"], status


def _copy(run, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def test_planted_pickle_inspector_is_refused(fake_run, tmp_path):
    planted = _copy(fake_run, tmp_path, "pickled")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo PWNED > " + str(tmp_path / "pwned"),))

    torch.save({"format": "pyimgano_hydra.inspector", "detector": Evil()},
               planted / "categories" / "weave" / "inspector.pt")
    folder = Path(read_jsonl(planted / "categories" / "weave" / "per_image.jsonl")[0]["path"]).parent
    proc, _ = _infer(planted, folder, tmp_path, "category=weave", "trust_targets=true")
    assert proc.returncode != 0 and "refused" in proc.stderr and "inspector.pt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("stored", ["/etc/passwd", "../../../outside.pt", "link.pt"])
def test_infer_refuses_a_stored_weights_path_outside_the_run_dir(fake_run, tmp_path, stored):
    planted = _copy(fake_run, tmp_path, "weights")
    folder = planted / "categories" / "weave"
    (tmp_path / "outside.pt").write_bytes(b"x")
    (folder / "link.pt").symlink_to(tmp_path / "outside.pt")
    torch.save({"format": "pyimgano_hydra.inspector", "version": 1, "category": "weave",
                "detector": {"name": "PatchCore", "params": {"backbone": "resnet18", "layers": ["layer1"],
                                                             "pretrained": False, "weights_path": stored},
                             "state": {"memory_bank": torch.zeros(4, 8), "feature_shape": [2, 2]}},
                "tiling": None, "postprocess": None, "image_threshold": {"value": 1.0, "provenance": {}},
                "pixel_threshold": None, "preprocessing": {"resize": 64, "input_mode": "rgb"}, "defects": None},
               folder / "inspector.pt")
    images = Path(read_jsonl(folder / "per_image.jsonl")[0]["path"]).parent
    proc, _ = _infer(planted, images, tmp_path, "category=weave")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert "inspector.pt" in lines[0] and "model.weights_path" in lines[0] and "Traceback" not in proc.stderr


def test_unfinished_and_newer_runs_are_refused(fake_run, tmp_path):
    running = _copy(fake_run, tmp_path, "running")
    write_json_atomic(running / "status.json", {"status": "interrupted"})
    with pytest.raises(UserError, match="interrupted, not completed"):
        load_run(running)
    newer = _copy(fake_run, tmp_path, "newer")
    report = read_json(newer / "report.json")
    report["schema_version"] = 999
    write_json_atomic(newer / "report.json", report)
    with pytest.raises(UserError, match="newer"):
        load_run(newer)


def test_infer_console_is_free_of_faiss_loader_chatter(tmp_path):
    """A PatchCore hand-off prints its summary, not faiss's 'Could not load ... ModuleNotFoundError' INFO lines."""
    from pyimgano_hydra.api import run
    run_dir = tmp_path / "run"
    run(["dataset.category=washer", "dataset.limit_train=6", "dataset.limit_test=4", "model.coreset_ratio=0.2",
         "cache.enabled=false"], output_dir=run_dir)
    test_image = read_jsonl(run_dir / "categories" / "washer" / "per_image.jsonl")[0]["path"]
    proc, out = _infer(run_dir, test_image, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "images scored" in proc.stdout
    console = proc.stdout + proc.stderr
    assert "faiss" not in console, console[-2000:]
    assert read_jsonl(out / "predictions.jsonl")[0]["path"] == test_image


def test_a_run_with_a_weights_file_stores_it_once_and_each_category_loads_it(tmp_path):
    """The backbone weights file was copied into every category folder: one copy on disk per run
    now (hard links), each category still self-contained, and the run needs no outside file."""
    from pyimgano_hydra.api import load_inspector, run
    from pyimgano_hydra.features import BACKBONES

    weights = tmp_path / "lite0.pt"
    torch.save(BACKBONES["efficientnet_lite0"]().build().state_dict(), weights)
    run_dir = tmp_path / "run"
    run(["model=padim", "model.pretrained=false", f"model.weights_path={weights}", "dataset.category=all",
         "dataset.limit_train=6", "dataset.limit_test=4", "cache.enabled=false"], output_dir=run_dir)
    copies = sorted(run_dir.glob("categories/*/backbone_weights.pt"))
    assert len(copies) == 2 and copies[0].samefile(copies[1]) and copies[0].read_bytes() == weights.read_bytes()
    weights.unlink()
    for category in ("washer", "weave"):
        image = read_jsonl(run_dir / "categories" / category / "per_image.jsonl")[0]
        inspector = load_inspector(run_dir, category, device="cpu")
        score = inspector.score_batch(inspector.load_images([image["path"]])).records[0]["score"]
        assert score == pytest.approx(image["score"], rel=1e-4)
