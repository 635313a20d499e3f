"""Attacker pass Z11 (#16): lost / misrecorded runs, silent wrong results -- a handed-over VisA split
CSV with odd entries (a NUL byte in an image path, a mask entry naming a folder), and variants that held."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from pyimgano_hydra.data.visa import VisaDataset
from pyimgano_hydra.errors import DataError

HEADER = "object,split,label,image,mask"


def _visa(root: Path, cat: str = "candle") -> list[str]:
    """A tiny VisA tree (5 train, 3 normal + 3 anomalous test images of 32x32, masks 0/255);
    returns the CSV lines (header first), written to ``split_csv/1cls.csv``."""
    rng = np.random.default_rng(0)
    for sub in ("Data/Images/Normal", "Data/Images/Anomaly", "Data/Masks/Anomaly"):
        (root / cat / sub).mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for i in range(8):
        rel = f"{cat}/Data/Images/Normal/{i:03d}.png"
        Image.fromarray((rng.random((32, 32, 3)) * 60 + 100).astype(np.uint8)).save(root / rel)
        lines.append(f"{cat},{'train' if i < 5 else 'test'},normal,{rel},")
    for i in range(3):
        img = (rng.random((32, 32, 3)) * 60 + 100).astype(np.uint8)
        img[8:16, 8:16] = 255
        rel = f"{cat}/Data/Images/Anomaly/{i:03d}.png"
        Image.fromarray(img).save(root / rel)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = 255
        mrel = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
        Image.fromarray(mask).save(root / mrel)
        lines.append(f"{cat},test,anomaly,{rel},{mrel}")
    _write_csv(root, lines)
    return lines


def _write_csv(root: Path, lines: list[str], encoding: str = "utf-8", newline: str = "\n") -> Path:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


def test_visa_csv_image_entry_with_a_nul_byte_is_one_line_naming_the_csv_or_file(tmp_path):
    """HOLE (misreported run). A handed-over ``split_csv/1cls.csv`` whose last image entry holds a NUL
    byte (``candle/Data/Images/Anomaly/00\\x002.png``; Python's csv reads NUL since 3.11). ``_under_root``
    checks only ``/``, ``..`` and ``:``; ``ImageDataset._refuse_repeats`` then calls ``os.path.realpath``
    on it. Observed: rc 1, the run recorded failed with ``"error": "embedded null byte"``, and the one
    line ``error: job ['dataset=visa', ...]: ValueError: embedded null byte`` -- neither the CSV, the
    row nor the entry is named (``dataset.on_bad_image=skip`` gives the same). A NUL in a mask entry is
    named (``<mask path>: not a readable image (embedded null byte)``). Expected: rc != 0 and a line
    naming the CSV (or the entry), no Python exception name."""
    root = tmp_path / "visa"
    lines = _visa(root)
    lines[-1] = lines[-1].replace("Anomaly/002.png,", "Anomaly/00\x002.png,")
    csv_path = _write_csv(root, lines)
    proc = run_cli(["dataset=visa", f"dataset.root={root}", "dataset.resize=32", "model=padim",
                    f"hydra.run.dir={tmp_path / 'run'}"], timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert any(str(csv_path) in line or "00\\x002.png" in line or "Anomaly/00" in line for line in errors), errors
    assert not any("ValueError" in line for line in errors), errors


def test_visa_csv_mask_entry_naming_a_folder_is_refused_not_read_as_every_file_in_it(tmp_path):
    """HOLE (wrong-result). A VisA CSV whose anomalous row's mask entry names a folder
    (``candle/Data/Images/Normal``) instead of a mask file. ``load_mask`` reads a folder as the union of
    the masks in it (MVTec LOCO's ground truth), so the VisA layout silently takes every normal image in
    that folder as a mask: observed mask coverage 1.0 (every pixel a defect) for that image, rc 0, pixel
    metrics computed against it. The same folder in the *image* column is refused ("not a regular file").
    Expected: a DataError naming the CSV or the folder (VisA masks are single files)."""
    root = tmp_path / "visa"
    lines = _visa(root)
    lines[-1] = lines[-1].rsplit(",", 1)[0] + ",candle/Data/Images/Normal"
    _write_csv(root, lines)
    data = VisaDataset(str(root), "candle", resize=32)
    try:
        split = data.split("candle")
        masks = data.load_masks(split.test)
    except DataError as exc:
        assert "candle/Data/Images/Normal" in str(exc) or "1cls.csv" in str(exc), exc
        return
    coverage = masks.reshape(len(masks), -1).mean(1)
    pytest.fail(f"a folder read as a VisA mask: coverage per test image {coverage.tolist()}")


# ---- held -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_held_visa_csv_of_another_encoding_is_refused_naming_it(tmp_path, encoding):
    root = tmp_path / "visa"
    lines = _visa(root)
    lines.append("candle,test,normal,candle/\xe9.png,")
    path = _write_csv(root, lines, encoding=encoding)
    with pytest.raises(DataError, match=str(path)):
        VisaDataset(str(root), "candle", resize=32).rows()


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_held_visa_csv_with_crlf_or_cr_line_ends_reads_the_same_rows(tmp_path, newline):
    root = tmp_path / "visa"
    lines = _visa(root)
    plain = VisaDataset(str(root), "candle", resize=32).rows()
    _write_csv(root, lines, encoding="utf-8-sig", newline=newline)
    assert VisaDataset(str(root), "candle", resize=32).rows() == plain


def test_held_visa_csv_with_a_10_mb_field_is_refused_naming_it(tmp_path):
    root = tmp_path / "visa"
    lines = _visa(root)
    lines.append("candle,test,normal," + "a" * (10 << 20) + ",")
    path = _write_csv(root, lines)
    with pytest.raises(DataError, match=str(path)):
        VisaDataset(str(root), "candle", resize=32).rows()


def test_held_mvtec_mask_name_that_is_a_folder_is_not_read_as_a_mask(tmp_path):
    """The MVTec counterpart of the VisA folder mask: ``ground_truth/crack/000_mask.png/`` a folder
    holding an all-white PNG is not taken as the mask (the image is refused as having none)."""
    rng = np.random.default_rng(0)
    cat = tmp_path / "mvtec" / "bottle"
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack/000_mask.png"):
        (cat / sub).mkdir(parents=True)
    for i in range(5):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(cat / f"train/good/{i:03d}.png")
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(cat / "test/good/000.png")
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(cat / "test/crack/000.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(cat / "ground_truth/crack/000_mask.png/x.png")
    from pyimgano_hydra.data.mvtec import MVTecDataset

    with pytest.raises(DataError, match="no ground-truth mask"):
        MVTecDataset(str(tmp_path / "mvtec"), "bottle", resize=32).split("bottle")
