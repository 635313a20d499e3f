"""Pixel and region figures against ground truth, on hand-made masks."""
import numpy as np
import pytest

from pyimgano_hydra.defects.evaluate import FIGURES, DefectsEvaluator, evaluate_defects
from pyimgano_hydra.errors import DataError


def test_figures_on_one_anomalous_and_one_normal_image():
    gt_a = np.zeros((10, 10), bool)
    gt_a[1:3, 1:3] = True  # defect 1: 4 px
    gt_a[6:9, 6:9] = True  # defect 2: 9 px, missed
    pred_a = np.zeros((10, 10), np.uint8)
    pred_a[2:4, 2:4] = 255  # 4 px, 1 overlaps defect 1
    pred_a[0, 9] = 255  # false region on the anomalous image
    pred_n = np.zeros((10, 10), np.uint8)
    pred_n[0, 0] = pred_n[5, 5] = 255  # two false regions on the normal image
    res = evaluate_defects([pred_a, pred_n], [gt_a, np.zeros((10, 10), bool)], labels=[1, 0])
    tp, fp, fn = 1, 3 + 1 + 2, 3 + 9
    assert res["pixel_precision"] == pytest.approx(tp / (tp + fp))
    assert res["pixel_recall"] == pytest.approx(tp / (tp + fn))
    assert res["pixel_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert res["gt_defects_hit_share"] == 0.5
    assert res["false_regions_per_normal_image"] == 2.0
    assert res["counts"]["n_gt_defects"] == 2 and res["counts"]["n_normal_images"] == 1


def test_undefined_figures_are_none_and_labels_default_to_empty_gt():
    res = evaluate_defects(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), bool))
    assert res["pixel_precision"] is res["pixel_recall"] is res["pixel_f1"] is res["gt_defects_hit_share"] is None
    assert res["false_regions_per_normal_image"] == 0.0 and res["counts"]["n_normal_images"] == 2


def test_shape_and_length_mismatches_are_data_errors():
    with pytest.raises(DataError, match="shape"):
        evaluate_defects([np.zeros((4, 4), np.uint8)], [np.zeros((4, 5), bool)])
    with pytest.raises(DataError, match="labels"):
        evaluate_defects([np.zeros((4, 4), np.uint8)], [np.zeros((4, 4), bool)], labels=[0, 1])


def test_the_figures_a_leaderboard_may_rank_by_are_the_ones_a_report_holds():
    from pyimgano_hydra.sweep.leaderboard import RANKABLE

    assert set(DefectsEvaluator().result()) - {"counts"} == set(FIGURES)
    assert {m for m in RANKABLE if m.startswith("defects_")} == {f"defects_{f}" for f in FIGURES}
