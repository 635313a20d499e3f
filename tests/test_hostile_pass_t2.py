"""Pass T2 (lab side): hostile datasets, config values and environment for the training app."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli

TESTS = Path(__file__).resolve().parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


def _dataset(root: Path, write_mask) -> Path:
    """train/normal (6), test/normal (3), test/scratch (3) 64x64, a bright square where each
    scratch image's mask (written by ``write_mask(bool array, path)``) says."""
    rng = np.random.default_rng(0)
    for split, n in (("train/normal", 6), ("test/normal", 3), ("test/scratch", 3)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(100, 140, (64, 64, 3), dtype=np.uint8)
            if "scratch" in split:
                mask = np.zeros((64, 64), bool)
                mask[10:30, 10:30] = True
                image[mask] = 255
                (root / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
                write_mask(mask, root / "ground_truth" / "scratch" / f"{i}_mask.png")
            Image.fromarray(image).save(root / split / f"{i}.png")
    return root


def _fit(root: Path, out: Path, *extra: str):
    return run_cli(["model.coreset_ratio=0.2", "dataset=folder", f"dataset.root={root}", "dataset.resize=64",
                    *extra, f"hydra.run.dir={out}"], env=ENV, timeout=300)


def _pixel_metrics(run_dir: Path) -> tuple:
    metrics = json.loads((run_dir / "report.json").read_text())["categories"]["custom"]["metrics"]
    return metrics["pixel_auroc"], metrics["pixel_aupro"]


@pytest.mark.parametrize("label", [1, 128])
def test_a_16_bit_label_mask_is_never_read_as_empty(tmp_path, label):
    """Ground-truth masks saved as 16-bit PNGs holding label values (0 = normal, 1 = defect: what
    label tools and ``Image.fromarray(mask.astype(np.uint16))`` write) are read through the image
    path's 65535 -> 255 scale: rint(1 / 257) = 0, so every defect pixel vanishes. The run exits 0,
    pixel_auroc / pixel_aupro are silently null (with 8-bit 0/255 masks of the same regions they are
    computed), and no note or warning says the masks were read empty. A mask pixel is defect when it is
    non-zero whatever its bit depth; or the run refuses the mask in one line. (data/images.py:
    load_mask -> _to_uint8, I;16 branch.)"""
    eight = _dataset(tmp_path / "m8", lambda m, p: Image.fromarray(m.astype(np.uint8) * 255).save(p))
    sixteen = _dataset(tmp_path / "m16", lambda m, p: Image.fromarray(m.astype(np.uint16) * label).save(p))
    assert Image.open(sixteen / "ground_truth" / "scratch" / "0_mask.png").mode.startswith("I;16")
    ref = _fit(eight, tmp_path / "run8")
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert None not in _pixel_metrics(tmp_path / "run8")
    proc = _fit(sixteen, tmp_path / "run16")
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "_mask.png" in lines[0], proc.stderr
        return
    assert _pixel_metrics(tmp_path / "run16") == _pixel_metrics(tmp_path / "run8")


@pytest.mark.parametrize("key", ["seed", "model.seed", "tiling.seed"])
def test_a_negative_seed_from_a_preset_is_one_line_naming_the_key(tmp_path, key):
    """A handed-over experiment preset setting a negative seed (``seed: -1``, ``model.seed: -1``
    or ``tiling.seed: -1``): no schema checks the seeds' range, numpy's generator raises deep in the
    fit and the app prints ``error: job ['experiment=neg_seed']: ValueError: expected non-negative
    integer`` -- it names neither the config key nor the preset file, so nobody can tell what to fix
    (on the command line the override list at least shows it). Every other bad value is one line
    starting with its key (``cache.max_gb: must be ...``). (schemas/run.py RunSchema,
    schemas/model.py PatchCoreSchema, schemas/tiling.py TilingSchema: no check on seed.)"""
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    body = {"seed": "seed: -1", "model.seed": "model:\n  seed: -1",
            "tiling.seed": "defaults:\n  - override /tiling: tile128\ntiling:\n  seed: -1\n  max_fit_tiles: 5"}[key]
    (conf / "neg_seed.yaml").write_text(f"# @package _global_\n{body}\n")
    extra = ["dataset.resize=256"] if key == "tiling.seed" else []
    proc = run_cli(["dataset.category=weave", "dataset.limit_train=12", "dataset.limit_test=12",
                    "model.coreset_ratio=0.2", *extra, f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                    "experiment=neg_seed", f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), proc.stderr


def test_a_write_refused_by_the_file_size_limit_names_the_file(tmp_path):
    """A training run whose output files cannot grow past a limit (``ulimit -f``, a quota or a full
    disk: ``OSError: [Errno 27] File too large`` / ENOSPC while writing a plot of ~45 KB) is marked
    failed, but its one error line is ``error: job [<overrides>]: OSError: [Errno 27] File too large``:
    it names neither the file nor the folder being written, so the operator cannot tell whether the
    dataset, the feature cache or the run dir is full. Expected: one line naming the file (or at
    least the run dir) it could not write. (app.run's catch-all for unexpected errors; the plot and
    report writers do not wrap OSError with the path.)"""
    import resource
    import subprocess
    import sys

    from conftest import _cli_env

    root = _dataset(tmp_path / "data", lambda m, p: Image.fromarray(m.astype(np.uint8) * 255).save(p))
    out = tmp_path / "run"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", SEARCH, "model=zscore", "dataset=folder",
                           f"dataset.root={root}", "dataset.resize=64", f"hydra.run.dir={out}"],
                          cwd=REPO, env=_cli_env(ENV), capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert len(lines) == 1 and str(out) in lines[0], proc.stderr


@pytest.mark.parametrize("override,key", [
    ("hydra.sweeper.n_jobs=0", "n_jobs"),
    ("hydra.sweeper.n_trials=0", "n_trials"),
    ("hydra.sweeper.n_trials=-1", "n_trials"),
    ("hydra.sweeper.direction=sideways", "direction"),
])
def test_a_bad_optuna_sweeper_value_is_one_line_naming_the_key(tmp_path, override, key):
    """``hydra/sweeper=optuna_patchcore`` with an impossible count or direction (from a handed-over
    preset or a typo): ``max_failure_rate`` is checked and named (sweep/optuna.py:
    study_sweeper), but ``n_jobs=0`` ends as ``error: ZeroDivisionError: division by zero``,
    ``n_trials=0`` / ``-1`` as ``error: ValueError: No trials are completed yet.`` (the sweep is marked
    failed, as if trials had run and all failed) and ``direction=sideways`` as Optuna's
    ValueError: none names the ``hydra.sweeper.*`` key. Expected: refused before the study starts, in
    one line naming the key."""
    proc = run_cli(["--multirun", "dataset.category=weave", "dataset.limit_train=12", "dataset.limit_test=12",
                    "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=2", override,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=180)
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and f"hydra.sweeper.{key}" in lines[0], proc.stderr


@pytest.mark.parametrize("name,array", [
    ("label16.png", np.uint16(1)),
    ("label16_128.png", np.uint16(128)),
    ("prob.tif", np.float32(0.001)),
])
def test_load_mask_keeps_every_non_zero_pixel_at_any_depth(tmp_path, name, array):
    """The unit behind test_a_16_bit_label_mask_is_never_read_as_empty: ``load_mask`` promises
    "any non-zero pixel is defect" but first scales the file to uint8 like an image (16-bit
    rint(v / 257), float v * 255 when <= 1), so a 16-bit mask of 1..128 or a float mask of small
    values reads all-False. (data/images.py: load_mask -> _to_uint8.)"""
    from pyimgano_hydra.data.images import load_mask

    mask = np.zeros((32, 32), array.dtype)
    mask[5:10, 5:10] = array
    Image.fromarray(mask).save(tmp_path / name)
    assert load_mask(tmp_path / name).sum() == 25


def test_a_pixel_threshold_past_float32_is_refused_or_quiet(tmp_path):
    """``defects.pixel_threshold=1e308`` (finite, so check_threshold_value accepts it) is cast to
    float32 per test image in defects/mask.py:binarize: numpy prints ``RuntimeWarning: overflow
    encountered in cast`` plus the source line to stderr once per image (24 lines for 12 images,
    thousands on a real test split) and the run exits 0 with a threshold no map can reach. Expected:
    refused in one line naming ``defects.pixel_threshold`` (it must fit the float32 maps), or
    at least a quiet stderr."""
    root = _dataset(tmp_path / "data", lambda m, p: Image.fromarray(m.astype(np.uint8) * 255).save(p))
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={root}", "dataset.resize=64",
                    "defects=default", "defects.pixel_threshold=1e308", f"hydra.run.dir={tmp_path / 'run'}"],
                   env=ENV, timeout=120)
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "defects.pixel_threshold" in lines[0], proc.stderr


@pytest.mark.parametrize("layout", ["simple", "explicit"])
def test_masks_beside_images_are_never_scored_as_images(tmp_path, layout):
    """``dataset.masks_beside_images=true`` with ``<stem>_mask.png`` next to each anomalous image
    (what the option documents): the folder listing keeps the mask files as images.
    Explicit dirs (``abnormal_dirs``): every mask is an "anomalous image" without a mask and the run
    is refused (``0_mask.png: ... expected 0_mask_mask.png``), so the option can never work.
    Simple layout: the option is silently ignored (it is read only by ``_collect_explicit``), the
    run exits 0 with the 3 masks scored as 3 more anomalous images (n_anomalous 6 of 3) and no
    pixel metrics. Expected: mask files are not test images (pixel metrics computed, 3 anomalous),
    or the simple layout refuses the option in one line naming it. (data/folder.py:
    _collect_explicit / _collect_simple list_images.)"""
    root = _dataset(tmp_path / "data", lambda m, p: Image.fromarray(m.astype(np.uint8) * 255).save(p))
    for mask in (root / "ground_truth" / "scratch").iterdir():
        mask.rename(root / "test" / "scratch" / mask.name)
    shutil.rmtree(root / "ground_truth")
    extra = ["dataset.normal_dir=train/normal", "dataset.normal_test_dir=test/normal",
             "dataset.abnormal_dirs={scratch:test/scratch}"] if layout == "explicit" else []
    out = tmp_path / "run"
    proc = run_cli([SEARCH, "model=zscore", "dataset=folder", f"dataset.root={root}", "dataset.resize=64",
                    "dataset.masks_beside_images=true", *extra, f"hydra.run.dir={out}"], env=ENV, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if layout == "simple" and proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "masks_beside_images" in lines[0], proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "report.json").read_text())["categories"]["custom"]["metrics"]
    assert metrics["n_anomalous"] == 3 and metrics.get("pixel_auroc") is not None, metrics
