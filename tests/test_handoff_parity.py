"""Hand-off parity: infer on a run's own test images reproduces its scores and labels."""
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import run_cli
from pyimgano_hydra.api import load_inspector, run
from pyimgano_hydra.infer import run_inference
from pyimgano_hydra.paths import conf_dir
from pyimgano_hydra.runs.writers import read_json, read_jsonl

TINY = ["dataset.category=washer", "dataset.limit_train=10", "dataset.limit_test=8"]
MODELS = {
    "patchcore": ["model=patchcore", "model.coreset_ratio=0.2"],
    "padim": ["model=padim"],
    "ecod": ["model=ecod"],
    "autoencoder": ["experiment=autoencoder_finetune", "model.epochs=2"],
}


def infer_in_process(run_dir: Path, input_: Path, out: Path, *overrides: str) -> list[dict]:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("infer", overrides=[f"run_dir={run_dir}", f"input={input_}", *overrides])
    run_inference(cfg, out, task_overrides=list(overrides))
    return read_jsonl(out / "predictions.jsonl")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_infer_reproduces_every_score_and_label(name, tmp_path):
    if name == "padim" and not (conf_dir() / "model" / "padim.yaml").exists():
        pytest.skip("padim not available")
    run_dir = tmp_path / "run"
    # no feature cache: features an earlier test cached from other batches may differ from fresh
    # ones in the 6th digit (multi-threaded convolutions); parity here is the inspector's
    run([*TINY, *MODELS[name], "cache.enabled=false"], output_dir=run_dir)
    records = read_jsonl(run_dir / "categories" / "washer" / "per_image.jsonl")
    test_root = Path(records[0]["path"]).parents[1]
    predicted = {r["path"]: r for r in infer_in_process(run_dir, test_root, tmp_path / "infer")}
    for r in records:
        assert predicted[r["path"]]["score"] == pytest.approx(r["score"], rel=1e-6, abs=1e-6), r["path"]
        assert predicted[r["path"]]["pred_label"] == r["pred_label"]
        # same vocabulary: infer records are the recipe's minus the ground truth
        assert set(r) - set(predicted[r["path"]]) == {"label", "defect_type"}
    inspector = load_inspector(run_dir)
    images = inspector.load_images([r["path"] for r in records])
    np.testing.assert_allclose(inspector.decision_function(images), [r["score"] for r in records], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(inspector.predict(images), [r["pred_label"] for r in records])


def test_micro_finetune_then_infer_new_images_with_masks(tmp_path):
    """train (micro-finetune) -> infer on new images via the CLI -> predictions and masks on disk."""
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, "experiment=autoencoder_finetune", "model.epochs=2", "defects=default",
                    f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = read_json(run_dir / "categories" / "washer" / "report.json")
    assert [h["epoch"] for h in report["training"]["loss"]] == [1, 2]
    assert (run_dir / "categories" / "washer" / report["loss_plot"]).is_file()
    assert (run_dir / "categories" / "washer" / "inspector.pt").is_file()
    # "New" images: the synthetic generator's other category split is unseen by this run.
    new_images = Path(read_jsonl(run_dir / "categories" / "washer" / "per_image.jsonl")[0]["path"]).parents[2] / "train" / "good"
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={new_images}", f"hydra.run.dir={out}"], module="pyimgano_hydra.infer")
    assert proc.returncode == 0, proc.stderr[-2000:]
    predictions = read_jsonl(out / "predictions.jsonl")
    assert len(predictions) == len(list(new_images.glob("*.png")))
    for p in predictions:
        assert p["defects"]["pixel_threshold_provenance"]["source"] == "run"
        assert (out / p["defects"]["mask"]).is_file()
