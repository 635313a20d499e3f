"""Pass V2 (lab side): numeric config keys, hostile dataset folders, output dirs and sweeps of the
training app, variants not in the earlier passes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, run_cli


def _padim_tiny():
    return [a for a in TINY if not a.startswith("model.")] + ["model=padim"]


def test_a_huge_global_weight_is_one_line_naming_the_key(tmp_path):
    """model.global_weight=1e308 passes the schema (only >= 0 is checked), the whole fit runs, then
    log(distance) x 1e308 overflows: numpy RuntimeWarnings and a ValueError that names no key
    ('Input contains infinity ...') fail the run after its work is done."""
    run_dir = tmp_path / "run"
    proc = run_cli([*_padim_tiny(), "model.global_weight=1e308", f"hydra.run.dir={run_dir}"], timeout=300)
    assert proc.returncode != 0
    assert "RuntimeWarning" not in proc.stderr, proc.stderr[-1500:]
    assert "model.global_weight" in proc.stderr, proc.stderr[-1500:]


def _folder_dataset(root: Path, n_train: int = 8, n_good: int = 4, n_bad: int = 4, side: int = 64) -> Path:
    """train/normal, test/normal, test/scratch of small noisy PNGs (the scratch a bright square)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub, n in (("train/normal", n_train), ("test/normal", n_good), ("test/scratch", n_bad)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = (rng.random((side, side, 3)) * 60 + 100).astype(np.uint8)
            if "scratch" in sub:
                arr[20:30, 20:30] = 255
            Image.fromarray(arr).save(root / sub / f"{i:03d}.png")
    return root


def _folder_args(root: Path, run_dir: Path) -> list:
    return ["dataset=folder", f"dataset.root={root}", "dataset.resize=64", "model=padim",
            f"hydra.run.dir={run_dir}"]


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_a_mask_drawn_in_its_alpha_channel_is_never_read_as_empty(tmp_path, mode):
    """Masks whose defect is only in the alpha channel (colour 0 everywhere, alpha 255 on the
    defect: what an annotation tool's transparent layer exports) load as all-normal: alpha is
    dropped. The run completes with pixel metrics silently missing (no note either), where an
    L mask of the same region gives px_AUROC 0.99."""
    import numpy as np
    from PIL import Image

    root = _folder_dataset(tmp_path / "custom")
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(4):
        arr = np.zeros((64, 64, len(mode)), np.uint8)
        arr[20:30, 20:30, -1] = 255
        Image.fromarray(arr, mode).save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    run_dir = tmp_path / "run"
    proc = run_cli(_folder_args(root, run_dir), timeout=300)
    if proc.returncode != 0:  # refused: in one line naming a mask file
        assert "_mask.png" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    aggregate = json.loads((run_dir / "report.json").read_text())["aggregate"]
    assert "pixel_auroc" in aggregate, "alpha-channel masks were read as empty: no pixel metrics, no note"


def test_a_test_good_folder_of_the_simple_folder_layout_is_never_scored_as_defects(tmp_path):
    """The simple folder layout names its normal test images test/normal; a received dataset in
    MVTec's spelling (test/good beside test/normal) has its good images counted as a defect type
    'good': 8 anomalous instead of 4, AUROC computed against wrong labels, no note. Either they
    count as normal or the run says, in one line naming test/good, that the folder is taken as a
    defect type."""
    import shutil

    root = _folder_dataset(tmp_path / "custom")
    shutil.copytree(root / "test" / "normal", root / "test" / "good")
    run_dir = tmp_path / "run"
    proc = run_cli(_folder_args(root, run_dir), timeout=300)
    if proc.returncode != 0:
        assert "good" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    if "test/good" in proc.stdout + proc.stderr:  # a note naming it is enough
        return
    aggregate = json.loads((run_dir / "report.json").read_text())["aggregate"]
    assert aggregate["n_anomalous"]["mean"] == 4, "test/good images scored as anomalies, silently"
