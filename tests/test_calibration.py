"""Threshold calibration: refit and cross-fitting fit the final model on every training image and
still take the threshold from scores of models that never saw the image; the hold-out fits on less."""
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fakes import PixelZScore
from pyimgano_hydra import app
from pyimgano_hydra.api import compose_with_choices
from pyimgano_hydra.recipes.industrial_adapt import calibration_folds
from pyimgano_hydra.runs.writers import read_json


def test_crossfit_folds_partition_the_training_images():
    folds = calibration_folds(23, "crossfit", 5, 0.2, seed=3)
    assert len(folds) == 5
    together = np.concatenate(folds)
    assert sorted(together.tolist()) == list(range(23))  # disjoint, and every image once
    assert {len(f) for f in folds} == {4, 5}
    assert [f.tolist() for f in calibration_folds(23, "crossfit", 5, 0.2, seed=3)] == [f.tolist() for f in folds]
    assert len(calibration_folds(5, "crossfit", 5, 0.2, seed=0)) == 2  # every fold model keeps >= 2 images
    assert calibration_folds(3, "crossfit", 5, 0.2, seed=0) == []


def test_holdout_is_one_seeded_set():
    (held,) = calibration_folds(20, "holdout", 5, 0.2, seed=0)
    assert len(held) == 4
    assert calibration_folds(20, "holdout", 5, 0.0, seed=0) == []


def _run(tmp_path, calibration):
    cfg, choices = compose_with_choices(["dataset.category=weave", "dataset.limit_train=12", "dataset.limit_test=6",
                                         f"recipe.calibration={calibration}"])
    cfg.model = OmegaConf.create({"_target_": "fakes.PixelZScore"})
    out = tmp_path / calibration
    app.run(cfg, out, choices=choices)
    train = instantiate(cfg.dataset)
    images = train.load_images(train.split("weave").train)
    return read_json(out / "report.json")["categories"]["weave"], out, images


def test_crossfit_fits_on_all_images_and_calibrates_out_of_fold(tmp_path):
    cat, out, images = _run(tmp_path, "crossfit")
    assert cat["counts"]["fit"] == cat["counts"]["calibration"] == len(images) == 12
    state = torch.load(out / cat["inspector"], weights_only=True)
    full = PixelZScore().fit(images)
    np.testing.assert_allclose(np.asarray(state["detector"]["state"]["mean"]), full.mean_, rtol=1e-6)
    # the threshold is the quantile of every image's score under a model fitted without its fold
    oof = np.empty(len(images))
    for idx in calibration_folds(len(images), "crossfit", 5, 0.2, seed=0):
        oof[idx] = PixelZScore().fit(np.delete(images, idx, axis=0)).score_maps(images[idx]).scores
    threshold = state["image_threshold"]
    quantile = threshold["provenance"]["quantile"]
    assert threshold["value"] == pytest.approx(np.quantile(oof, quantile), rel=1e-6)
    assert threshold["value"] > np.quantile(full.score_maps(images).scores, quantile)  # not in-sample
    assert threshold["provenance"]["n_scores"] == 12


def test_refit_fits_on_all_images_and_calibrates_on_the_holdout_model(tmp_path):
    cat, out, images = _run(tmp_path, "refit")
    assert cat["counts"]["fit"] == 12 and cat["counts"]["calibration"] == 2
    state = torch.load(out / cat["inspector"], weights_only=True)
    np.testing.assert_allclose(np.asarray(state["detector"]["state"]["mean"]), PixelZScore().fit(images).mean_, rtol=1e-6)
    (held,) = calibration_folds(len(images), "refit", 5, 0.2, seed=0)
    scores = PixelZScore().fit(np.delete(images, held, axis=0)).score_maps(images[held]).scores
    threshold = state["image_threshold"]
    assert threshold["value"] == pytest.approx(np.quantile(scores, threshold["provenance"]["quantile"]), rel=1e-6)
    assert "refit" in threshold["provenance"]["scores_from"]


def test_holdout_fits_on_the_rest(tmp_path):
    cat, out, _ = _run(tmp_path, "holdout")
    assert cat["counts"]["fit"] == 12 - 2 and cat["counts"]["calibration"] == 2
    assert torch.load(out / cat["inspector"], weights_only=True)["image_threshold"]["provenance"]["n_scores"] == 2
