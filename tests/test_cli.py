"""The real CLI, end to end, in a subprocess."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY, run_cli

SMALL_ALL = ["dataset.category=all", "dataset.limit_train=10", "dataset.limit_test=10", "model.coreset_ratio=0.2"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli([*SMALL_ALL, f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_run_dir_is_complete(default_run):
    out, proc = default_run
    for name in ("report.json", "config.json", "environment.json", "status.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    report = json.loads((out / "report.json").read_text())
    for key in ("schema_version", "timestamp_utc", "version", "overrides", "config_hash", "status",
                "thresholds", "aggregate", "categories", "timings"):
        assert key in report, key
    assert report["status"] == "completed"
    assert set(report["categories"]) == {"washer", "weave"}
    assert report["aggregate"]["image_auroc"]["n"] == 2
    assert "std" in report["aggregate"]["image_auroc"]
    for cat, threshold in report["thresholds"].items():
        assert threshold["provenance"]["method"] == "quantile"
        assert threshold["provenance"]["quantile"] == 0.995
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["limit_test"] == 10 and "${" not in json.dumps(config)


def test_per_category_artifacts(default_run):
    out, _ = default_run
    for cat in ("washer", "weave"):
        records = [json.loads(line) for line in (out / "categories" / cat / "per_image.jsonl").read_text().splitlines()]
        assert len(records) == 10
        for r in records:
            assert {"path", "category", "label", "score", "pred_label", "threshold"} <= set(r)
            assert r["pred_label"] == int(r["score"] > r["threshold"])
        cat_report = json.loads((out / "categories" / cat / "report.json").read_text())
        assert "pixel_auroc" in cat_report["metrics"] and "pixel_aupro" in cat_report["metrics"]


def test_summary_table_on_stdout(default_run):
    _, proc = default_run
    assert "img_AUROC" in proc.stdout and "washer" in proc.stdout and "mean" in proc.stdout


def test_run_dir_name_carries_choices_and_subsecond_time(tmp_path):
    proc = run_cli([*TINY, "dataset.limit_train=6", "dataset.limit_test=4"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1
    name = runs[0].name
    assert name.endswith("_industrial_adapt_synthetic_patchcore")
    # 6 train images leave 1-2 for calibration: the console and the report warn about it
    assert "note [weave]: threshold rests on only" in proc.stdout
    notes = json.loads((runs[0] / "report.json").read_text())["categories"]["weave"]["notes"]
    assert any("threshold rests on only" in n for n in notes)
    assert len(name.split("_")[0].split("-")) == 4  # HH-MM-SS-micro


def test_never_overwrites_an_earlier_run(default_run):
    out, _ = default_run
    before = (out / "report.json").read_bytes()
    proc = run_cli([*TINY, f"hydra.run.dir={out}"])
    assert proc.returncode != 0
    assert "already holds a run" in proc.stderr
    assert (out / "report.json").read_bytes() == before


def test_cfg_job_prints_config_and_runs_nothing(tmp_path):
    proc = run_cli(["--cfg", "job", "model.coreset_ratio=0.05"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "coreset_ratio: 0.05" in proc.stdout and "_target_" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_help_lists_groups_under_app_name():
    proc = run_cli(["--help"])
    assert proc.returncode == 0
    assert "pyimgano-hydra" in proc.stdout
    for group in ("dataset:", "model:", "recipe:", "tiling:", "postprocess:", "defects:"):
        assert group in proc.stdout
    assert "model: autoencoder, copod" in proc.stdout and "patchcore_mtd" in proc.stdout
    assert "schema/" not in proc.stdout  # internal schema nodes stay out of the user's list


def test_version_flag():
    proc = run_cli(["--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("pyimgano_hydra ")


@pytest.mark.parametrize("override,key", [
    ("dataset.resize=abc", "dataset.resize"),
    ("recipe.calibration_quantile=2", "recipe.calibration_quantile"),
    ("model=nonexistent", "model"),
])
def test_bad_override_fails_naming_the_key(tmp_path, override, key):
    proc = run_cli([override, f"hydra.run.dir={tmp_path / 'r'}"])
    assert proc.returncode != 0
    assert key in proc.stderr
    assert "Traceback" not in proc.stderr


def test_installed_wheel_finds_its_configs_from_any_directory(tmp_path):
    """conf/ ships inside the wheel: a non-editable install runs from another directory."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip("setuptools/wheel not importable for an isolated build here")
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pyimgano_hydra/conf/config.yaml" in names
    assert "pyimgano_hydra/conf/model/patchcore.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", "--cfg", "job"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pyimgano_hydra.models.patchcore.PatchCore" in proc.stdout
    probe = subprocess.run([sys.executable, "-c", "import pyimgano_hydra, sys; print(pyimgano_hydra.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert str(site) in probe.stdout


def test_summary_table_shows_unmeasured_metrics_as_a_dash_not_nan():
    from pyimgano_hydra.app import summary_table
    from pyimgano_hydra.recipes.context import CategoryResult

    def result(name, metrics):
        return CategoryResult(name, metrics, {"value": 1.5}, {"fit_s": 1.0, "total_s": 2.0}, {})

    table = summary_table([result("a", {"image_auroc": 0.9, "pixel_auroc": float("nan")}),
                           result("b", {"image_auroc": 0.7})])
    assert "nan" not in table
    lines = table.splitlines()
    assert lines[2].split()[:2] == ["a", "0.9000"] and lines[2].split()[4] == "–"
    assert lines[-1].split()[:2] == ["mean", "0.8000"]
