"""Wrong types and non-finite numbers fail before any work, in one line naming the key."""
import os
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from pyimgano_hydra.runs.writers import read_json

TESTS = Path(__file__).resolve().parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


@pytest.mark.parametrize("overrides,key", [
    (["seed=abc"], "seed"),
    (["seed=1.5"], "seed"),
    (["tag=[1,2]"], "tag"),
    (["cache.enabled=maybe"], "cache.enabled"),
    (["cache.max_gb=inf"], "cache.max_gb"),
    (["model.smoothing_sigma=inf"], "model.smoothing_sigma"),
    (["model.global_weight=inf"], "model.global_weight"),
    (["model.smoothing_sigma=1e6"], "model.smoothing_sigma"),  # hung in the blur of the first map
    (["model=padim", "model.smoothing_sigma=1e6"], "model.smoothing_sigma"),
    (["model=padim", "model.eps=inf"], "model.eps"),
    (["model=padim", "model.max_memory_gb=inf"], "model.max_memory_gb"),
    (["dataset.max_image_megabytes=nan"], "dataset.max_image_megabytes"),
    (["dataset.resize=99999999999999999999999"], "dataset.resize"),  # reached cv2: "Can't parse 'dsize'"
    # a third pass: raw numpy "Unable to allocate" errors after the fit, naming no key
    (["defects=default", "defects.open_ksize=1000001"], "defects.open_ksize"),
    (["defects=default", "defects.close_ksize=256"], "defects.close_ksize"),
    (["dataset.image_size=100000"], "dataset.image_size"),
])
def test_bad_top_level_or_non_finite_value_fails_in_one_line_naming_the_key(overrides, key, tmp_path):
    out = tmp_path / "run"
    proc = run_cli([*overrides, f"hydra.run.dir={out}"], env=ENV)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], proc.stderr
    assert not (out / "config.json").exists()  # refused before any work
    if (out / "status.json").exists():
        assert read_json(out / "status.json")["status"] == "failed"


def test_top_level_keys_keep_their_types(tmp_path):
    proc = run_cli(["--cfg", "job", "seed=7", "tag=line7", "cache.max_gb=0.5"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "seed: 7\n" in proc.stdout and "tag: line7\n" in proc.stdout and "max_gb: 0.5\n" in proc.stdout


@pytest.mark.parametrize("override,key", [
    ("trust_targets=no", "trust_targets"),  # the string "no" is truthy: it turned trust on
    ("save_maps=maybe", "save_maps"),
    ("batch_size=0", "batch_size"),  # reached range(): "arg 3 must not be zero"
    ("batch_size=99999999999999999999999", "batch_size"),
])
def test_bad_infer_values_fail_in_one_line_naming_the_key(override, key, tmp_path):
    proc = run_cli(["run_dir=/nowhere", "input=/nowhere", override, f"hydra.run.dir={tmp_path / 'out'}"],
                   module="pyimgano_hydra.infer", env=ENV)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}: "), proc.stderr
