"""Real data: MTD through the CLI (skipped when ../shared/datasets/mtd is absent)."""
import json

import pytest

from conftest import MTD_ROOT, run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (MTD_ROOT / "MT_Free").is_dir(), reason="MTD not under ../shared/datasets/mtd")]


def test_mtd_runs_to_a_complete_run_dir(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(["dataset=mtd", f"dataset.root={MTD_ROOT}", "dataset.limit_train=60", "dataset.limit_test=60",
                    f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    (category,) = report["categories"]
    metrics = report["categories"][category]["metrics"]
    assert metrics["n_normal"] > 0 and metrics["n_anomalous"] > 0
    assert metrics["image_auroc"] > 0.7  # far above chance on real parts, even with 60 training images
    assert (out / "categories" / category / "per_image.jsonl").is_file()


def test_mtd_preset_clears_the_patchcore_accuracy_bar(tmp_path):
    """experiment=mtd_patchcore on the whole MTD split: image AUROC >= 0.95 (issue #4's bar)."""
    out = tmp_path / "run"
    proc = run_cli(["experiment=mtd_patchcore", f"dataset.root={MTD_ROOT}",
                    f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    (metrics,) = [c["metrics"] for c in report["categories"].values()]
    assert metrics["n_anomalous"] == 392 and metrics["n_normal"] == 190  # the full test split
    assert metrics["image_auroc"] >= 0.95
