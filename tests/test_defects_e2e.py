"""defects= end to end through the CLI: masks on disk, JSONL blocks, thresholds, refusals."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from pyimgano_hydra.runs.writers import read_json, read_jsonl

TESTS = Path(__file__).resolve().parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"
FAST = ["dataset.category=washer", "dataset.limit_train=10", "dataset.limit_test=8"]
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


def test_defects_default_with_explicit_threshold_writes_masks_and_blocks(tmp_path):
    out = tmp_path / "run"
    # 0.5 of the normal maps' range: the toy z-score model (10 training images) marks a defect there
    proc = run_cli([SEARCH, "model=zscore", *FAST, "defects=default", "defects.pixel_threshold=0.5",
                    "defects.min_area=3", f"hydra.run.dir={out}"], env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cat = out / "categories" / "washer"
    records = read_jsonl(cat / "per_image.jsonl")
    assert len(records) == 8
    for r in records:
        block = r["defects"]
        assert block["pixel_threshold"] == 0.5
        assert block["pixel_threshold_provenance"]["source"] == "explicit"
        mask = cv2.imread(str(cat / block["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == block["mask_area"]
        assert all(region["area"] >= 3 for region in block["regions"])
    assert any(r["defects"]["regions"] for r in records if r["label"] == 1)
    metrics = read_json(cat / "report.json")["metrics"]
    assert 0 <= metrics["defects_pixel_precision"] <= 1
    stored = torch.load(cat / "inspector.pt", weights_only=True)
    assert stored["pixel_threshold"]["value"] == 0.5


def test_defects_default_alone_uses_normal_pixel_quantile(tmp_path):
    out = tmp_path / "run"
    proc = run_cli([SEARCH, "model=zscore", *FAST, "defects=default", f"hydra.run.dir={out}"], env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = read_jsonl(out / "categories" / "washer" / "per_image.jsonl")[0]["defects"]
    provenance = block["pixel_threshold_provenance"]
    assert provenance["source"] == "normal_pixel_quantile" and provenance["q"] == 0.999
    assert provenance["n_pixels"] > 0


def test_defects_on_a_mapless_model_is_a_one_line_error(tmp_path):
    proc = run_cli([SEARCH, "model=scores_only", *FAST, "defects=default", f"hydra.run.dir={tmp_path / 'r'}"], env=ENV)
    assert proc.returncode != 0
    assert "produces no anomaly maps" in proc.stderr and "patchcore" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("override,key", [
    ("defects.pixel_threshold=-1", "defects.pixel_threshold"),
    ("defects.pixel_threshold=nan", "defects.pixel_threshold"),
    ("defects.roi_xyxy_norm=[0.5,0.5,0.5,0.9]", "defects.roi_xyxy_norm"),
    ("defects.open_ksize=-3", "defects.open_ksize"),
])
def test_bad_defects_values_name_the_key(tmp_path, override, key):
    proc = run_cli([SEARCH, "model=zscore", *FAST, "defects=default", override, f"hydra.run.dir={tmp_path / 'r'}"], env=ENV)
    assert proc.returncode != 0 and key in proc.stderr, proc.stderr


def test_multirun_sweeps_two_pixel_thresholds(tmp_path):
    proc = run_cli(["--multirun", SEARCH, "model=zscore", *FAST, "defects=default",
                    "defects.pixel_threshold=0.6,0.9", f"hydra.sweep.dir={tmp_path / 'sweep'}"], env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    thresholds = set()
    areas = {}
    for report in (tmp_path / "sweep").glob("*/report.json"):
        run = report.parent
        block = read_jsonl(run / "categories" / "washer" / "per_image.jsonl")[0]["defects"]
        thresholds.add(block["pixel_threshold"])
        areas[block["pixel_threshold"]] = block["mask_area"]
    assert thresholds == {0.6, 0.9}
    assert areas[0.6] >= areas[0.9]
