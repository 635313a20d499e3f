"""Attacker pass Z2 (#16): lost / misrecorded runs from small received files (Optuna study databases,
MVTec AD 2 private splits, image formats outside the decoder list)."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import refused_naming, run_cli, run_cli_measured  # noqa: F401


# ---- holes ------------------------------------------------------------------------------------------

def _study_with_a_wide_json_attribute(path: Path, entries: int) -> None:
    """An Optuna database exactly as this Optuna makes it (study ``patchcore``, one completed trial, no
    params), whose one trial_user_attributes row holds ``[{},{},...,{}]``: 3 bytes of JSON per Python dict."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{path}", direction="maximize")
    study.tell(study.ask(), 0.5)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (1, 'a', ?)",
                ("[" + "{}," * entries + "{}]",))
    con.commit()
    con.close()


def test_an_optuna_study_with_a_wide_json_attribute_never_takes_gigabytes(tmp_path):
    """HOLE (lost-run: memory blow-up). ``_check_study_database`` checks the schema and counts rows
    (at most 150,000), never how much JSON one row holds. A 30 MB optuna.db (it gzips to ~70 KB) made by
    this Optuna, one trial whose user attribute is ``[{},{},...]`` (10 million empty dicts), took
    ``python -m pyimgano_hydra --multirun hydra/sweeper=optuna_patchcore hydra.sweeper.n_trials=1
    hydra.sweeper.storage=sqlite:///d.db`` to 2.4 GB max RSS in 14 s before its first job
    (``continue_study``: ``load_study().trials`` json-decodes every attribute, then deep-copies it).
    Expected: refused in one line naming hydra.sweeper.storage, under 2 GB."""
    db = tmp_path / "d.db"
    _study_with_a_wide_json_attribute(db, 10_000_000)
    assert db.stat().st_size < 40_000_000
    proc, peak_kib = run_cli_measured(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                                       f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sw'}",
                                       "dataset=synthetic", "dataset.resize=32"], cwd=tmp_path, timeout=120)
    assert peak_kib < 2 * 1024 * 1024, (f"peak {peak_kib >> 10} MB", proc.stderr[-300:])
    assert proc.returncode != 0 and "hydra.sweeper.storage" in proc.stderr, proc.stderr[-500:]


def _ad2_with_a_long_private_path(root: Path) -> Path:
    """MVTec AD 2 category ``vial``: 4 train images, 2 private test images, and one more private test
    image nested so deep that its full path passes PATH_MAX (4096): its folder can be listed, the file
    cannot be stat'ed or opened by name (ENAMETOOLONG)."""
    import cv2

    base = root / "vial"
    rng = np.random.default_rng(0)
    for path in [*(base / "train" / "good" / f"{i:03d}.png" for i in range(4)),
                 *(base / "test_private" / f"{i:03d}.png" for i in range(2))]:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (32, 32, 3)).astype(np.uint8))
    data = (base / "test_private" / "000.png").read_bytes()
    here = os.getcwd()
    deep = base / "test_private"
    os.chdir(deep)
    try:
        while len(str(deep)) + 201 < 4090:  # the folder stays listable by its full path, whatever tmp_path is
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
            deep = deep / ("d" * 200)
        name = "y" * (4100 - len(str(deep))) + ".png"  # relative: the full path is past PATH_MAX
        Path(name).write_bytes(data)
    finally:
        os.chdir(here)
    return deep / name


def test_an_ad2_private_image_past_path_max_is_skipped_with_on_bad_image_skip(tmp_path):
    """HOLE (lost-run, low). In ``dataset=mvtec_ad2 dataset.test_split=test_private`` the private split
    is walked with ``files.walk``, then ``p.is_file()`` raises OSError ENAMETOOLONG on a file whose full
    path passes 4096 bytes: the category fails (``failed: [Errno 36] File name too long: ...``, the
    job's line reads ``OSError: ...``) although ``dataset.on_bad_image=skip`` was set; its other images
    are never scored. Expected: the file listed in report.json's skipped_images (or refused as a
    DataError before any work), the category's other images scored."""
    import json

    root = tmp_path / "ad2"
    bad = _ad2_with_a_long_private_path(root)
    proc = run_cli(["dataset=mvtec_ad2", f"dataset.root={root}", "dataset.category=vial",
                    "dataset.test_split=test_private", "dataset.resize=32", "dataset.on_bad_image=skip",
                    "model=padim", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "OSError" not in proc.stderr, proc.stderr[-400:]
    assert proc.returncode == 0 and "vial" in report["categories"], (report.get("failed_categories"),
                                                                    proc.stderr[-300:])
    assert any(bad.name in str(s) for s in report["skipped_images"]), report["skipped_images"]


# ---- held -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content", [
    ("huge.png", b"P5\n60000 60000\n65535\n" + b"\0" * 100),  # PGM, maxval 65535, 7 GB declared
    ("tga.bmp", None),  # a TGA renamed .bmp
])
def test_held_formats_outside_the_decoder_list_are_refused_naming_the_file(tmp_path, name, content):
    """HELD. Pillow's PPM/PGM and TGA decoders are never chosen by content: a PGM of 60000x60000 at
    maxval 65535 named .png and a TGA named .bmp are refused in one line naming the file."""
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "t.tga")
        path.write_bytes((tmp_path / "t.tga").read_bytes())
    else:
        path.write_bytes(content)
    refused_naming(path, lambda a: f"shape {a.shape}")


def test_held_a_multi_page_tiff_loads_its_first_page(tmp_path):
    """HELD. A two-page TIFF (red, then green) loads its first page, red, never a mix or the last."""
    from pyimgano_hydra.data.images import load_image

    path = tmp_path / "m.tif"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(path, save_all=True,
                                                  append_images=[Image.new("RGB", (16, 16), (0, 255, 0))])
    arr = load_image(path)
    assert arr.reshape(-1, 3).mean(0).tolist() == [255.0, 0.0, 0.0]


def test_an_ad2_private_folder_past_path_max_is_named_in_skipped_images(tmp_path):
    """A private-split folder whose own full path passes PATH_MAX cannot be listed: its images were
    dropped without a word. With on_bad_image=skip it is listed under skipped_images; the run completes."""
    import json

    root = tmp_path / "ad2"
    _ad2_with_a_long_private_path(root)
    deep = root / "vial" / "test_private"
    here = os.getcwd()
    os.chdir(deep)
    try:
        while len(str(deep)) < 4200:  # past PATH_MAX by its folder's own name
            os.mkdir("e" * 200)
            os.chdir("e" * 200)
            deep = deep / ("e" * 200)
    finally:
        os.chdir(here)
    proc = run_cli(["dataset=mvtec_ad2", f"dataset.root={root}", "dataset.category=vial",
                    "dataset.test_split=test_private", "dataset.resize=32", "dataset.on_bad_image=skip",
                    "model=padim", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert proc.returncode == 0, proc.stderr[-300:]
    assert any("cannot be listed" in s["reason"] for s in report["skipped_images"]), report["skipped_images"]
