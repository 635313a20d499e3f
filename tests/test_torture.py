"""Messy factory data and bad configs: one-line errors, non-zero exits, earlier runs untouched."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli
from pyimgano_hydra.data.synthetic import ensure_generated
from pyimgano_hydra.runs.writers import read_json

TESTS = Path(__file__).resolve().parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


@pytest.fixture(scope="module")
def clean_folder(synthetic_cache, tmp_path_factory):
    src = ensure_generated(Path(synthetic_cache) / "synthetic", 128, 40, 12, 4) / "weave"
    dst = tmp_path_factory.mktemp("clean")
    shutil.copytree(src / "train" / "good", dst / "train" / "normal")
    shutil.copytree(src / "test" / "good", dst / "test" / "normal")
    shutil.copytree(src / "test" / "scratch", dst / "test" / "scratch")
    return dst


@pytest.fixture(scope="module")
def earlier_run(clean_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("earlier") / "run"
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={clean_folder}", "dataset.resize=64",
                    f"hydra.run.dir={out}"], env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _bad_files(folder: Path) -> dict[str, Path]:
    """One bad file of each kind, written into the train split."""
    train = folder / "train" / "normal"
    good = next(iter(sorted(train.glob("*.png")))).read_bytes()
    files = {
        "corrupt_jpeg": train / "corrupt.jpg",
        "truncated_png": train / "truncated.png",
        "zero_byte": train / "empty.png",
        "text_as_png": train / "notes.png",
    }
    files["corrupt_jpeg"].write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    files["truncated_png"].write_bytes(good[: len(good) // 3])
    files["zero_byte"].write_bytes(b"")
    files["text_as_png"].write_text("this is not an image\n")
    return files


@pytest.mark.parametrize("kind", ["corrupt_jpeg", "truncated_png", "zero_byte", "text_as_png"])
def test_bad_image_is_a_one_line_error_naming_the_file(kind, clean_folder, earlier_run, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(clean_folder, folder)
    bad = _bad_files(folder)
    for other, path in bad.items():
        if other != kind:
            path.unlink()
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={folder}", "dataset.resize=64",
                    f"hydra.run.dir={tmp_path / 'run'}"], env=ENV)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and bad[kind].name in lines[0], proc.stderr
    out, files = earlier_run
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_on_bad_image_skip_lists_every_skipped_file(clean_folder, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(clean_folder, folder)
    bad = _bad_files(folder)
    out = tmp_path / "run"
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={folder}", "dataset.resize=64",
                    "dataset.on_bad_image=skip", f"hydra.run.dir={out}"], env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    skipped = {Path(s["path"]).name for s in read_json(out / "report.json")["skipped_images"]}
    assert skipped == {p.name for p in bad.values()}
    assert f"skipped {len(bad)} unreadable image(s)" in proc.stdout


def test_mixed_modes_sizes_and_odd_names_load(clean_folder, tmp_path):
    """Gray, RGBA, palette and 16-bit files of different sizes with spaces/non-ASCII names."""
    folder = tmp_path / "data"
    shutil.copytree(clean_folder, folder)
    train = folder / "train" / "normal"
    src = np.asarray(Image.open(next(iter(sorted(train.glob("*.png"))))).convert("RGB"))
    Image.fromarray(src).convert("L").save(train / "gray image.png")
    Image.fromarray(src).convert("RGBA").resize((150, 140)).save(train / "rgba_ü.png")
    Image.fromarray(src).convert("P").save(train / "palette.png")
    Image.fromarray((src[..., 0].astype(np.uint16) * 257)).save(train / "sixteen_bit.png")
    out = tmp_path / "run"
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={folder}", "dataset.resize=64",
                    "dataset.input_mode=gray", f"hydra.run.dir={out}"], env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(out / "status.json")["status"] == "completed"


@pytest.mark.parametrize("override,key", [
    ("recipe.contamination=0", "recipe.contamination"),
    ("recipe.contamination=0.6", "recipe.contamination"),
    ("recipe.calibration_quantile=1", "recipe.calibration_quantile"),
    ("tiling=tile256", "tiling.tile_size"),
    ("tiling.stride=0", "tiling.stride"),
    ("defects.roi_xyxy_norm=[1.2,1.5,2,3]", "defects.roi_xyxy_norm"),
    ("model=does_not_exist", "model"),
    ("dataset.limit_train=abc", "dataset.limit_train"),
])
def test_bad_config_names_the_key_and_touches_no_earlier_run(override, key, earlier_run, clean_folder, tmp_path):
    extra = ["tiling=tile128"] if override.startswith("tiling.stride") else []
    extra += ["defects=default"] if override.startswith("defects.") else []
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={clean_folder}", "dataset.resize=128",
                    *extra, override, f"hydra.run.dir={tmp_path / 'run'}"], env=ENV)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    out, files = earlier_run
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_full_error_env_shows_the_traceback(clean_folder, tmp_path):
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={clean_folder}",
                    "recipe.contamination=0.9", f"hydra.run.dir={tmp_path / 'run'}"],
                   env={**ENV, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
