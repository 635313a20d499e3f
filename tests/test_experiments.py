"""Every experiment preset composes and runs on tiny data."""
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from pyimgano_hydra.api import compose_config
from pyimgano_hydra.data.synthetic import ensure_generated
from pyimgano_hydra.paths import conf_dir
from pyimgano_hydra.runs.writers import read_json

PRESETS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
SMALL = ["dataset.limit_train=8", "dataset.limit_test=6", "dataset.resize=128"]


@pytest.fixture(scope="module")
def mvtec_root(synthetic_cache):
    """The synthetic set is written in the MVTec AD layout: use it as an MVTec root."""
    return ensure_generated(Path(synthetic_cache) / "synthetic", 128, 40, 12, 4)


@pytest.fixture(scope="module")
def folder_root(mvtec_root, tmp_path_factory):
    """The simple custom-folder layout, built from the synthetic washer category."""
    src, dst = mvtec_root / "washer", tmp_path_factory.mktemp("folder")
    shutil.copytree(src / "train" / "good", dst / "train" / "normal")
    for defect in (src / "test").iterdir():
        shutil.copytree(defect, dst / "test" / ("normal" if defect.name == "good" else defect.name))
    for defect in (src / "ground_truth").iterdir():
        shutil.copytree(defect, dst / "ground_truth" / defect.name)
    return dst


def test_every_preset_composes():
    assert {"mvtec_patchcore", "highres_tiling", "deploy_defects_roi", "autoencoder_finetune",
            "compare_detectors", "custom_folder_starter"} <= set(PRESETS)
    for name in PRESETS:
        cfg = compose_config([f"experiment={name}"])
        assert cfg.tag == name


def _overrides(name, mvtec_root, folder_root):
    per_preset = {
        "mvtec_patchcore": [f"dataset.root={mvtec_root}", "dataset.category=washer"],
        "mtd_patchcore": [f"dataset.root={folder_root}"],  # MTD layout is checked in test_data_mtd
        "highres_tiling": [f"dataset.root={folder_root}", "tiling.tile_size=64", "tiling.stride=48"],
        "deploy_defects_roi": [f"dataset.root={folder_root}"],
        "autoencoder_finetune": ["dataset.category=washer", "model.epochs=1"],
        "custom_folder_starter": [f"dataset.root={folder_root}"],
    }
    return per_preset[name]


@pytest.mark.parametrize("name", [p for p in PRESETS if p not in ("compare_detectors", "mtd_patchcore")])
def test_preset_runs_on_tiny_data(name, mvtec_root, folder_root, tmp_path):
    overrides = _overrides(name, mvtec_root, folder_root)
    if name == "highres_tiling":
        overrides = [o for o in overrides] + ["dataset.limit_train=8", "dataset.limit_test=6"]
    else:
        overrides = overrides + SMALL
    out = tmp_path / "run"
    if "autoencoder" not in name:
        overrides.append("model.coreset_ratio=0.2")
    proc = run_cli([f"experiment={name}", *overrides, f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = read_json(out / "report.json")
    assert report["status"] == "completed" and report["tag"] == name


def test_compare_detectors_preset_sweeps(mvtec_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", "experiment=compare_detectors", "dataset.category=washer", *SMALL,
                    "model=patchcore,ecod", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (sweep / "leaderboard.csv").is_file()
    assert len(list(sweep.glob("*/report.json"))) == 2
