"""Attacker pass Z12 (#16): lost / misrecorded runs, silent wrong results -- the other layouts' odd
entries (MVTec AD 2's private split, LOCO mask folders), infer's input= forms, and variants that held."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

RNG = np.random.default_rng(0)


def _png(path: Path, defect: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (RNG.random((32, 32, 3)) * 60 + 100).astype(np.uint8)
    if defect:
        arr[8:16, 8:16] = 255
    Image.fromarray(arr).save(path)


def _ad2(root: Path, cat: str = "can") -> Path:
    """A tiny MVTec AD 2 category: 6 train, 3 + 3 public test (masks), 3 private test images."""
    base = root / cat
    for i in range(6):
        _png(base / f"train/good/{i:03d}.png")
    for i in range(3):
        _png(base / f"test_public/good/{i:03d}.png")
        _png(base / f"test_public/bad/{i:03d}.png", True)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = 255
        (base / "test_public/ground_truth/bad").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(base / f"test_public/ground_truth/bad/{i:03d}_mask.png")
        _png(base / f"test_private/{i:03d}.png")
    return base


def test_mvtec_ad2_private_split_never_scores_a_hidden_folders_copies(tmp_path):
    """HOLE (wrong-result). ``test_private/.ipynb_checkpoints/000-checkpoint.png`` (a Jupyter copy
    of ``000.png`` left in the private split) is scored as a fourth private test image: the
    private split is read with ``walk`` and only the *file* name is checked for a leading dot, never
    the folders above it. Observed: ``counts.test_unlabelled = 4`` and a per_image.jsonl row for the
    checkpoint copy (a benchmark submission with one image too many). docs/DATASETS.md: hidden
    folders (``.hydra/``, ``.ipynb_checkpoints/``) under test/ are no part of the data; the public
    split and every other layout skip them. Expected: the 3 private images only."""
    from pyimgano_hydra.data.mvtec_ad2 import MVTecAD2Dataset

    base = _ad2(tmp_path / "ad2")
    hidden = base / "test_private" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "000-checkpoint.png").write_bytes((base / "test_private/000.png").read_bytes())
    split = MVTecAD2Dataset(str(tmp_path / "ad2"), "can", resize=32, test_split="test_private").split("can")
    scored = [Path(s.path).relative_to(base / "test_private").as_posix() for s in split.test]
    assert scored == ["000.png", "001.png", "002.png"], scored


def test_infer_folder_input_never_scores_a_hidden_folders_copies(trained, tmp_path):
    """HOLE (wrong-result). ``infer input=<folder>`` walks the folder and keeps every file whose own
    name has no leading dot: ``<folder>/.ipynb_checkpoints/a-checkpoint.png`` is scored and written
    to predictions.jsonl (observed: "2 images scored" for a folder of one image), while the same
    folder given as a glob (``input='<folder>/**/*.png'``) leaves hidden folders out, as glob does.
    Expected: a folder input and its ``**`` glob score the same images (hidden folders skipped)."""
    folder = tmp_path / "line"
    _png(folder / "a.png")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "a-checkpoint.png").write_bytes((folder / "a.png").read_bytes())
    out = tmp_path / "inf"
    proc = run_cli([f"run_dir={trained}", f"input={folder}", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-800:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["a.png"], [r["path"] for r in rows]


# ---- held -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "fifo", "undecodable"])
def test_held_infer_input_of_nothing_scorable_fails_naming_it(trained, tmp_path, kind):
    """HELD. ``input=`` an empty folder, a FIFO named ``*.png`` (not waited on), or a folder of files
    that are no images: rc != 0, the infer dir marked failed, the last line names the input."""
    folder = tmp_path / "in"
    folder.mkdir()
    spec = folder
    if kind == "fifo":
        spec = folder / "f.png"
        os.mkfifo(spec)
    elif kind == "undecodable":
        for name in ("a.png", "b.jpg"):
            (folder / name).write_bytes(b"x")
    out = tmp_path / "inf"
    proc = run_cli([f"run_dir={trained}", f"input={spec}", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and str(spec) in last and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert json.loads((out / "status.json").read_text())["status"] == "failed"


def test_held_mvtec_loco_mask_folder_of_mixed_sizes_is_refused_naming_it(tmp_path):
    """HELD. A LOCO ground-truth folder ``ground_truth/logical_anomalies/000/`` whose two masks differ
    in size: one DataError naming the odd mask (never a union of resized parts)."""
    from pyimgano_hydra.data.mvtec_loco import MVTecLocoDataset
    from pyimgano_hydra.errors import DataError

    base = tmp_path / "loco" / "pushpins"
    for i in range(4):
        _png(base / f"train/good/{i:03d}.png")
    _png(base / "test/good/000.png")
    _png(base / "test/logical_anomalies/000.png", True)
    gt = base / "ground_truth/logical_anomalies/000"
    gt.mkdir(parents=True)
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(gt / "000.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(gt / "001.png")
    with pytest.raises(DataError, match="001.png"):
        MVTecLocoDataset(str(tmp_path / "loco"), "pushpins", resize=32).split("pushpins")
