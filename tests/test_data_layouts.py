"""Every dataset layout, built on disk in its published naming (quirks included)."""
from __future__ import annotations

import logging
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyimgano_hydra.data.btad import BTADDataset
from pyimgano_hydra.data.folder import FolderDataset
from pyimgano_hydra.data.mtd import MTDDataset
from pyimgano_hydra.data.mvtec import MVTecDataset
from pyimgano_hydra.data.mvtec_ad2 import MVTecAD2Dataset
from pyimgano_hydra.data.mvtec_loco import MVTecLocoDataset
from pyimgano_hydra.data.visa import VisaDataset
from pyimgano_hydra.errors import ConfigError, DataError

SIZE = (24, 32)  # height, width of every tiny image


def put_image(path: Path, value: int = 128, size=SIZE, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = np.clip(value + rng.integers(-20, 20, size + (3,)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    img = img.convert(mode) if mode != "RGB" else img
    img.save(path)
    return path


def put_mask(path: Path, box=(2, 2, 8, 8), on: int = 255, size=SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(size, np.uint8)
    y0, x0, y1, x1 = box
    arr[y0:y1, x0:x1] = on
    Image.fromarray(arr).save(path)
    return path


def counts(split):
    return Counter((s.label, s.defect_type) for s in split.test)


# ---- MVTec AD -------------------------------------------------------------------------
def build_mvtec(root: Path, categories=("bottle", "screw")) -> Path:
    for cat in categories:
        base = root / cat
        for i in range(5):
            put_image(base / "train" / "good" / f"{i:03d}.png")
        for i in range(3):
            put_image(base / "test" / "good" / f"{i:03d}.png")
        for defect in ("broken_large", "contamination"):
            for i in range(2):
                put_image(base / "test" / defect / f"{i:03d}.png", 30)
                put_mask(base / "ground_truth" / defect / f"{i:03d}_mask.png")
    (root / "license.txt").write_text("CC BY-NC-SA")
    return root


def test_mvtec_counts_labels_and_mask_pairing(tmp_path):
    ds = MVTecDataset(build_mvtec(tmp_path / "mvtec"), resize=16)
    assert ds.categories() == ["bottle", "screw"]
    split = ds.split("bottle")
    assert len(split.train) == 5 and all(s.label == 0 and s.split == "train" for s in split.train)
    assert counts(split) == {(0, "good"): 3, (1, "broken_large"): 2, (1, "contamination"): 2}
    for s in split.test:
        if s.label == 1:
            assert Path(s.mask_path) == (tmp_path / "mvtec" / "bottle" / "ground_truth"
                                         / s.defect_type / f"{Path(s.path).stem}_mask.png")
        else:
            assert s.mask_path is None
    images = ds.load_images(split.test)
    masks = ds.load_masks(split.test)
    assert images.shape == (7, 16, 16, 3) and images.dtype == np.uint8
    assert masks.shape == (7, 16, 16) and masks.dtype == bool
    labels = np.array([s.label for s in split.test])
    assert masks[labels == 1].any(axis=(1, 2)).all() and not masks[labels == 0].any()


def test_gray_input_mode_gives_one_channel(tmp_path):
    ds = MVTecDataset(build_mvtec(tmp_path / "mvtec", ("bottle",)), resize=16, input_mode="gray")
    assert ds.load_images(ds.split("bottle").train).shape == (5, 16, 16, 1)


def test_category_resolution(tmp_path, caplog):
    root = build_mvtec(tmp_path / "mvtec")
    assert MVTecDataset(root, category="screw").categories() == ["screw"]
    assert MVTecDataset(root, category=["screw", "bottle"]).categories() == ["screw", "bottle"]
    assert MVTecDataset(root, category="bottle,screw").categories() == ["bottle", "screw"]
    with caplog.at_level(logging.WARNING):
        assert MVTecDataset(root, category="all").categories() == ["bottle", "screw"]
    assert "carpet" in caplog.text  # a known category missing is a warning, not a crash
    with pytest.raises(DataError) as info:
        MVTecDataset(root, category="carpet").categories()
    assert "carpet" in str(info.value) and "available: bottle, screw" in str(info.value)
    with pytest.raises(DataError, match="available: bottle, screw"):
        MVTecDataset(root).split("carpet")


def test_missing_root_shows_expected_layout(tmp_path):
    with pytest.raises(DataError) as info:
        MVTecDataset(tmp_path / "nowhere").categories()
    message = str(info.value)
    assert "nowhere" in message and "train/good" in message and "\n" not in message


def test_empty_root_says_no_category_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no mvtec category found"):
        MVTecDataset(tmp_path / "empty").categories()


def test_empty_train_split_is_an_error(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    for p in (root / "bottle" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"bottle.train.*empty train split"):
        MVTecDataset(root).split("bottle")


def test_defect_image_without_mask_is_an_error(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    (root / "bottle" / "ground_truth" / "contamination" / "001_mask.png").unlink()
    with pytest.raises(DataError) as info:
        MVTecDataset(root).split("bottle")
    assert "contamination/001.png" in str(info.value) and "001_mask.png" in str(info.value)


def test_mask_size_mismatch_is_an_error(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    put_mask(root / "bottle" / "ground_truth" / "contamination" / "000_mask.png", size=(10, 10))
    with pytest.raises(DataError) as info:
        MVTecDataset(root).split("bottle")
    assert "000_mask.png" in str(info.value) and "10x10" in str(info.value)


def test_unreadable_image_errors_or_is_skipped(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    bad = root / "bottle" / "train" / "good" / "002.png"
    bad.write_text("not an image")
    truncated = root / "bottle" / "test" / "good" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DataError, match="002.png"):
        MVTecDataset(root).split("bottle")

    ds = MVTecDataset(root, on_bad_image="skip", resize=16)
    split = ds.split("bottle")
    assert str(bad) not in [s.path for s in split.train] and len(split.train) == 4
    assert str(truncated) not in [s.path for s in split.test]
    assert {d["path"] for d in ds.skipped} == {str(bad), str(truncated)}
    assert all(d["reason"] and d["category"] == "bottle" for d in ds.skipped)
    assert ds.load_images(split.test).shape[0] == len(split.test)


def test_truncated_image_named_at_load_time(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    truncated = root / "bottle" / "test" / "good" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    ds = MVTecDataset(root, resize=16)
    split = ds.split("bottle")  # the header still reads
    with pytest.raises(DataError, match="test/good/001.png"):
        ds.load_images(split.test)


def test_mixed_gray_rgb_palette_in_one_folder(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    train = root / "bottle" / "train" / "good"
    put_image(train / "000.png", mode="L")
    put_image(train / "001.png", mode="P")
    put_image(train / "002.png", mode="RGBA")
    ds = MVTecDataset(root, resize=16)
    assert ds.load_images(ds.split("bottle").train).shape == (5, 16, 16, 3)


def test_native_size_needs_equal_sizes(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    ds = MVTecDataset(root, resize=None)
    split = ds.split("bottle")
    assert ds.load_images(split.train).shape == (5,) + SIZE + (3,)
    assert ds.load_masks(split.test).shape == (7,) + SIZE
    put_image(root / "bottle" / "train" / "good" / "004.png", size=(20, 20))
    with pytest.raises(DataError, match="set dataset.resize"):
        ds.load_images(ds.split("bottle").train)


# ---- limits ---------------------------------------------------------------------------
def test_limits_are_seeded_subsets_keeping_both_labels(tmp_path):
    root = build_mvtec(tmp_path / "mvtec", ("bottle",))
    for i in range(3, 20):
        put_image(root / "bottle" / "test" / "good" / f"{i:03d}.png")
    full = MVTecDataset(root).split("bottle")
    ds = MVTecDataset(root, limit_train=3, limit_test=4, seed=1)
    split = ds.split("bottle")
    assert len(split.train) == 3 and len(split.test) == 4
    assert {s.label for s in split.test} == {0, 1}
    assert set(split.test) <= set(full.test) and set(split.train) <= set(full.train)
    again = MVTecDataset(root, limit_train=3, limit_test=4, seed=1).split("bottle")
    assert again.test == split.test and again.train == split.train
    others = [MVTecDataset(root, limit_test=4, seed=s).split("bottle").test for s in range(2, 8)]
    assert any(o != split.test for o in others)
    two = MVTecDataset(root, limit_test=2).split("bottle").test
    assert sorted(s.label for s in two) == [0, 1]
    assert len(MVTecDataset(root, limit_test=100).split("bottle").test) == len(full.test)


# ---- MVTec LOCO -----------------------------------------------------------------------
def build_loco(root: Path) -> Path:
    base = root / "juice_bottle"
    for i in range(4):
        put_image(base / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        put_image(base / "validation" / "good" / f"{i:03d}.png")
        put_image(base / "test" / "good" / f"{i:03d}.png")
    for kind in ("logical_anomalies", "structural_anomalies"):
        for i in range(2):
            put_image(base / "test" / kind / f"{i:03d}.png", 40)
            put_mask(base / "ground_truth" / kind / f"{i:03d}" / "000.png", (0, 0, 4, 4))
    # an image whose ground truth spans two files (values as published: not 255)
    put_mask(base / "ground_truth" / "logical_anomalies" / "001" / "001.png", (20, 28, 24, 32), 77)
    return root


def test_loco_unions_multi_file_masks_and_keeps_types(tmp_path):
    ds = MVTecLocoDataset(build_loco(tmp_path / "loco"), resize=None)
    assert ds.categories() == ["juice_bottle"]
    split = ds.split("juice_bottle")
    assert len(split.train) == 4
    assert counts(split) == {(0, "good"): 2, (1, "logical_anomalies"): 2,
                             (1, "structural_anomalies"): 2}
    two_files = next(s for s in split.test
                     if s.defect_type == "logical_anomalies" and Path(s.path).stem == "001")
    assert Path(two_files.mask_path).is_dir()
    mask = ds.load_masks([two_files])[0]
    assert mask[:4, :4].all() and mask[20:, 28:].all() and mask.sum() == 32
    with_val = MVTecLocoDataset(tmp_path / "loco", validation="train").split("juice_bottle")
    assert len(with_val.train) == 6 and {s.split for s in with_val.train} == {"train", "validation"}


def test_loco_missing_mask_folder_is_an_error(tmp_path):
    root = build_loco(tmp_path / "loco")
    gt = root / "juice_bottle" / "ground_truth" / "structural_anomalies" / "000"
    for p in gt.iterdir():
        p.unlink()
    with pytest.raises(DataError, match="structural_anomalies/000.png"):
        MVTecLocoDataset(root).split("juice_bottle")


# ---- VisA -----------------------------------------------------------------------------
def build_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        images = root / cat / "Data" / "Images"
        for i in range(5):
            rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            put_image(root / rel)
            rows.append(f"{cat},{'train' if i < 3 else 'test'},normal,{rel},")
        for i in range(2):
            rel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG"
            mask_rel = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            put_image(root / rel, 40)
            put_mask(root / mask_rel, on=1)  # VisA masks may be 0/1
            rows.append(f"{cat},test,anomaly,{rel},{mask_rel}")
        assert images.is_dir()
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_reads_the_official_csv_and_01_masks(tmp_path):
    ds = VisaDataset(build_visa(tmp_path / "visa"), resize=None)
    assert ds.categories() == ["candle", "pcb1"]
    split = ds.split("pcb1")
    assert len(split.train) == 3
    assert counts(split) == {(0, "good"): 2, (1, "anomaly"): 2}
    anomalous = [s for s in split.test if s.label == 1]
    assert all(s.mask_path.endswith(".png") and "Masks/Anomaly" in s.mask_path for s in anomalous)
    masks = ds.load_masks(anomalous)
    assert masks[:, 2:8, 2:8].all() and masks.sum() == 2 * 36


def test_visa_missing_csv_is_named(tmp_path):
    root = build_visa(tmp_path / "visa")
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DataError, match=r"split_csv/1cls.csv"):
        VisaDataset(root).categories()


@pytest.mark.parametrize("entry", ["/etc/hostname", "../outside/0000.JPG", "candle/../../outside/0000.JPG",
                                   "C:/data/0000.JPG", "..\\outside\\0000.JPG"])
@pytest.mark.parametrize("column", ["image", "mask"])
def test_a_visa_csv_entry_outside_the_root_is_one_line_naming_the_csv(tmp_path, entry, column):
    """A handed-over VisA CSV whose image or mask column points outside the dataset root (absolute,
    through ``..``, a drive letter) is refused naming the CSV, before any file is opened."""
    root = build_visa(tmp_path / "visa")
    csv_path = root / "split_csv" / "1cls.csv"
    good = "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png"
    forged = ",".join(["candle", "test", "anomaly"] + ([entry, "candle/Data/Masks/Anomaly/000.png"]
                                                        if column == "image" else
                                                        ["candle/Data/Images/Anomaly/000.JPG", entry]))
    csv_path.write_text(csv_path.read_text().replace(good, forged))
    with pytest.raises(DataError, match=rf"1cls.csv: {column} entry .* is not a path under the dataset root"):
        VisaDataset(root).split("candle")


# ---- BTAD -----------------------------------------------------------------------------
def build_btad(root: Path) -> Path:
    for product, img_ext, mask_ext in (("01", ".bmp", ".png"), ("02", ".png", ".png"),
                                       ("03", ".bmp", ".bmp")):
        base = root / product
        for i in range(4):
            put_image(base / "train" / "ok" / f"{i:04d}{img_ext}")
        for i in range(2):
            put_image(base / "test" / "ok" / f"{i:04d}{img_ext}")
        for i in range(3):
            put_image(base / "test" / "ko" / f"{i:04d}{img_ext}", 40)
            put_mask(base / "ground_truth" / "ko" / f"{i:04d}{mask_ext}")
    return root


def test_btad_pairs_masks_across_extensions(tmp_path):
    ds = BTADDataset(build_btad(tmp_path / "btad"), resize=16)
    assert ds.categories() == ["01", "02", "03"]
    for product in ("01", "03"):
        split = ds.split(product)
        assert len(split.train) == 4
        assert counts(split) == {(0, "good"): 2, (1, "ko"): 3}
        for s in split.test:
            if s.label == 1:
                assert Path(s.mask_path).stem == Path(s.path).stem
                assert Path(s.mask_path).parent.name == "ko"
        assert ds.load_masks(split.test).sum() > 0
    assert Path(ds.split("01").test[-1].mask_path).suffix == ".png"
    assert Path(ds.split("01").test[-1].path).suffix == ".bmp"
    assert BTADDataset(tmp_path / "btad", category=1).categories() == ["01"]


# ---- MVTec AD 2 -----------------------------------------------------------------------
def build_ad2(root: Path) -> Path:
    base = root / "vial"
    for i in range(4):
        put_image(base / "train" / "good" / f"{i:03d}_regular.png")
    put_image(base / "validation" / "good" / "000_regular.png")
    for i in range(2):
        put_image(base / "test_public" / "good" / f"{i:03d}_regular.png")
        put_image(base / "test_public" / "bad" / f"{i:03d}_regular.png", 40)
        put_mask(base / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png")
    for i in range(3):
        put_image(base / "test_private" / f"{i:03d}_regular.png")
    put_image(base / "test_private_mixed" / "000_overexposed.png")
    return root


def test_ad2_public_and_private_splits(tmp_path):
    root = build_ad2(tmp_path / "ad2")
    ds = MVTecAD2Dataset(root, resize=16)
    assert ds.categories() == ["vial"]
    split = ds.split("vial")
    assert len(split.train) == 4
    assert counts(split) == {(0, "good"): 2, (1, "bad"): 2}
    assert all(s.mask_path.endswith("_regular_mask.png") for s in split.test if s.label == 1)
    private = MVTecAD2Dataset(root, test_split="test_private", resize=16).split("vial")
    assert len(private.test) == 3
    assert all(s.label == -1 and s.mask_path is None for s in private.test)
    assert not MVTecAD2Dataset(root, test_split="test_private", resize=16).load_masks(
        private.test).any()
    mixed = MVTecAD2Dataset(root, test_split="test_private_mixed").split("vial")
    assert [Path(s.path).name for s in mixed.test] == ["000_overexposed.png"]
    with pytest.raises(ConfigError, match="dataset.test_split"):
        MVTecAD2Dataset(root, test_split="test_secret")


# ---- custom folders -------------------------------------------------------------------
def build_simple(root: Path) -> Path:
    for i in range(5):
        put_image(root / "train" / "normal" / f"n{i}.png")
    for i in range(2):
        put_image(root / "test" / "normal" / f"t{i}.png")
    for i in range(3):
        put_image(root / "test" / "anomaly" / f"a{i}.png", 40)
        put_mask(root / "ground_truth" / "anomaly" / f"a{i}_mask.png")
    return root


def test_simple_layout_single_and_multi_category(tmp_path):
    ds = FolderDataset(build_simple(tmp_path / "line"), name="line3", resize=16)
    assert ds.categories() == ["line3"]
    split = ds.split("line3")
    assert len(split.train) == 5
    assert counts(split) == {(0, "good"): 2, (1, "anomaly"): 3}
    assert all(s.mask_path.endswith(f"{Path(s.path).stem}_mask.png")
               for s in split.test if s.label == 1)
    build_simple(tmp_path / "plant" / "part_a")
    build_simple(tmp_path / "plant" / "part_b")
    multi = FolderDataset(tmp_path / "plant")
    assert multi.categories() == ["part_a", "part_b"]
    assert len(multi.split("part_b").test) == 5


def test_simple_layout_without_ground_truth_needs_no_masks(tmp_path):
    root = build_simple(tmp_path / "line")
    for p in (root / "ground_truth" / "anomaly").iterdir():
        p.unlink()
    (root / "ground_truth" / "anomaly").rmdir()
    ds = FolderDataset(root, resize=16)
    split = ds.split("custom")
    assert all(s.mask_path is None for s in split.test)
    assert not ds.load_masks(split.test).any()
    put_image(root / "test" / "scratch" / "s0.png")
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    with pytest.raises(DataError, match=r"ground_truth/scratch/s0_mask.png"):
        FolderDataset(root).split("custom")


def build_explicit(root: Path) -> Path:
    for i in range(10):
        put_image(root / "ok" / f"img_{i}.jpg")
    for defect in ("dent", "scratch"):
        for i in range(2):
            put_image(root / "ng" / defect / f"{defect}_{i}.jpg", 40)
            put_mask(root / "masks" / defect / f"{defect}_{i}_gt.png")
    return root


def test_explicit_dirs_with_seeded_split_and_mask_dir(tmp_path):
    root = build_explicit(tmp_path / "own")
    kwargs = dict(normal_dir="ok", abnormal_dirs=["ng/dent", "ng/scratch"], mask_dir="masks",
                  mask_suffix="_gt", resize=16)
    ds = FolderDataset(root, **kwargs)
    assert ds.categories() == ["custom"]
    split = ds.split("custom")
    assert len(split.train) == 8
    assert counts(split) == {(0, "good"): 2, (1, "dent"): 2, (1, "scratch"): 2}
    assert not {s.path for s in split.train} & {s.path for s in split.test}
    assert all(Path(s.mask_path).name == f"{Path(s.path).stem}_gt.png"
               for s in split.test if s.label == 1)
    again = FolderDataset(root, **kwargs).split("custom")
    assert again.test == split.test
    other = [FolderDataset(root, **kwargs, seed=s).split("custom").test for s in range(1, 6)]
    assert any(o != split.test for o in other)
    named = FolderDataset(root, normal_dir="ok", abnormal_dirs={"bump": "ng/dent"}).split("custom")
    assert len(named.train) == 8 and counts(named) == {(0, "good"): 2, (1, "bump"): 2}
    with pytest.raises(ConfigError, match="dataset.normal_test_dir: .* is listed by dataset.normal_dir too"):
        FolderDataset(root, normal_dir="ok", abnormal_dirs=["ng/dent"], normal_test_dir="ok").split("custom")


def test_explicit_dirs_bad_input(tmp_path):
    root = build_explicit(tmp_path / "own")
    with pytest.raises(DataError, match=r"dataset.normal_dir .*nope"):
        FolderDataset(root, normal_dir="nope", abnormal_dirs=["ng/dent"]).split("custom")
    with pytest.raises(DataError, match=r"dent_0.jpg.*no ground-truth mask.*dent_0_mask.png"):
        FolderDataset(root, normal_dir="ok", abnormal_dirs=["ng/dent"], mask_dir="masks",
                      mask_suffix="_mask").split("custom")
    with pytest.raises(DataError, match="available: custom"):
        FolderDataset(root, category="other", normal_dir="ok",
                      abnormal_dirs=["ng/dent"]).categories()


# ---- MTD ------------------------------------------------------------------------------
def build_mtd(root: Path) -> Path:
    for i in range(10):
        jpg = put_image(root / "MT_Free" / "Imgs" / f"exp0_num_{i}.jpg", mode="L")
        put_mask(jpg.with_suffix(".png"), box=(0, 0, 0, 0))  # MT_Free ships all-zero masks
    for folder in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"):
        for i in range(2):
            jpg = put_image(root / folder / "Imgs" / f"exp1_num_{i}{folder[-3:]}.jpg", 40, mode="L")
            put_mask(jpg.with_suffix(".png"))
    return root


def test_mtd_preset(tmp_path):
    ds = MTDDataset(build_mtd(tmp_path / "mtd"), resize=16)
    assert ds.categories() == ["mtd"]
    split = ds.split("mtd")
    assert len(split.train) == 8  # 80/20 split of the 10 normal images
    assert counts(split) == {(0, "good"): 2, (1, "blowhole"): 2, (1, "break"): 2,
                             (1, "crack"): 2, (1, "fray"): 2, (1, "uneven"): 2}
    assert all(s.path.endswith(".jpg") for s in split.train + split.test)
    assert all(s.mask_path == s.path[:-4] + ".png" for s in split.test if s.label == 1)
    images = ds.load_images(split.test)
    assert images.shape == (12, 16, 16, 3)
    assert ds.load_masks(split.test)[[s.label == 1 for s in split.test]].any(axis=(1, 2)).all()


def test_mtd_missing_root_describes_layout(tmp_path):
    (tmp_path / "mtd").mkdir()
    with pytest.raises(DataError, match=r"MT_Free/Imgs"):
        MTDDataset(tmp_path / "mtd").categories()


# ---- every conf/dataset option composes and instantiates ------------------------------
BUILDERS = {"mvtec": build_mvtec, "mvtec_loco": build_loco, "visa": build_visa,
            "btad": build_btad, "mvtec_ad2": build_ad2, "folder": build_simple,
            "mtd": build_mtd}


@pytest.mark.parametrize("option", sorted(BUILDERS))
def test_conf_option_instantiates_on_its_layout(tmp_path, option):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pyimgano_hydra.schemas import register_configs

    register_configs()
    root = BUILDERS[option](tmp_path / option)
    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(overrides=[f"+dataset={option}", f"dataset.root={root}",
                                 "dataset.resize=16", "dataset.limit_test=3"])
    assert cfg.dataset.root == str(root)
    ds = instantiate(cfg.dataset)
    category = ds.categories()[0]
    split = ds.split(category)
    assert split.train and len(split.test) == 3
    assert ds.load_images(split.test).shape == (3, 16, 16, 3)


def test_conf_root_defaults_to_env(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from pyimgano_hydra.schemas import register_configs

    register_configs()
    monkeypatch.setenv("PYIMGANO_DATA_ROOT", str(tmp_path))
    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(overrides=["+dataset=mtd"])
    assert cfg.dataset.root == os.path.join(str(tmp_path), "mtd")


@pytest.mark.parametrize("option", ["mvtec", "mvtec_loco", "folder"])
def test_a_hidden_folder_under_test_is_no_defect_type(tmp_path, option):
    """A dataset handed over from a Hydra or Jupyter session holds ``test/.hydra/`` or
    ``test/.ipynb_checkpoints/`` with images in them: never scored as a defect type."""
    root = BUILDERS[option](tmp_path / option)
    test_dirs = [p for p in root.rglob("test") if p.is_dir()]
    for test_dir in test_dirs:
        for hidden in (".hydra", ".ipynb_checkpoints"):
            put_image(test_dir / hidden / "000.png", 30)
    ds = {"mvtec": MVTecDataset, "mvtec_loco": MVTecLocoDataset, "folder": FolderDataset}[option](root)
    split = ds.split(ds.categories()[0])
    assert split.test and not [s for s in split.test if s.defect_type.startswith(".") or "/." in s.path]
