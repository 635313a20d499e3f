"""The embedded synthetic dataset: layout, exact masks, determinism, atomic cached generation."""
from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pyimgano_hydra.data import synthetic
from pyimgano_hydra.data.synthetic import (DEFECTS, STAMP_FILE, SyntheticDataset, ensure_generated,
                                           generate, render_sample)
from pyimgano_hydra.errors import DataError

SMALL = dict(image_size=64, n_train=3, n_test_good=2, n_test_defect=2)


def test_writes_mvtec_layout_with_texture_and_object_categories(tmp_path):
    ds = SyntheticDataset(tmp_path / "cache", resize=64, **SMALL)
    assert ds.categories() == ["washer", "weave"]
    for category in ds.categories():
        split = ds.split(category)
        assert len(split.train) == 3
        expected = {(0, "good"): 2, **{(1, d): 2 for d in DEFECTS[category]}}
        assert Counter((s.label, s.defect_type) for s in split.test) == expected
        base = ds.root_path / category
        for s in split.test:
            if s.label == 1:
                assert Path(s.mask_path) == (base / "ground_truth" / s.defect_type
                                             / f"{Path(s.path).stem}_mask.png")
        masks = ds.load_masks(split.test)
        labels = np.array([s.label for s in split.test])
        assert masks[labels == 1].any(axis=(1, 2)).all() and not masks[labels == 0].any()
        assert ds.load_images(split.train).shape == (3, 64, 64, 3)
    assert {"crack", "scratch", "spot"} <= set(DEFECTS["washer"]) & set(DEFECTS["weave"])
    assert "missing" in DEFECTS["washer"]


@pytest.mark.parametrize("category", sorted(DEFECTS))
def test_masks_are_exactly_the_changed_pixels(category):
    for defect in DEFECTS[category]:
        for index in range(3):
            img, mask = render_sample(category, "test", defect, index, 96)
            clean, none = render_sample(category, "test", defect, index, 96, clean=True)
            assert none is None and mask.shape == (96, 96) and mask.dtype == bool
            changed = (img != clean).any(axis=2)
            assert not (changed & ~mask).any(), f"{category}/{defect}: change outside its mask"
            assert changed.sum() >= 0.9 * mask.sum(), f"{category}/{defect}: mask too large"
            assert mask.sum() >= 6


def test_defects_are_visible_against_normal_variation():
    # mean absolute change inside the mask clearly above the normal image-to-image noise
    for category in DEFECTS:
        normals = [render_sample(category, "train", "good", i, 96)[0].astype(float)
                   for i in range(2)]
        for defect in DEFECTS[category]:
            img, mask = render_sample(category, "test", defect, 0, 96)
            clean, _ = render_sample(category, "test", defect, 0, 96, clean=True)
            delta = np.abs(img.astype(float) - clean)[mask].mean()
            assert delta >= 20, f"{category}/{defect} changes pixels by only {delta:.1f}"
        assert not np.array_equal(normals[0], normals[1])  # normal images vary


def test_generation_is_deterministic(tmp_path):
    generate(tmp_path / "a", **SMALL)
    generate(tmp_path / "b", **SMALL)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_cache_is_reused_and_a_new_generator_version_regenerates(tmp_path, monkeypatch):
    first = ensure_generated(tmp_path, **SMALL)
    marker = first / "washer" / "train" / "good" / "000.png"
    stamp_time = (first / STAMP_FILE).stat().st_mtime_ns
    assert ensure_generated(tmp_path, **SMALL) == first
    assert (first / STAMP_FILE).stat().st_mtime_ns == stamp_time
    assert marker.is_file()
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    second = ensure_generated(tmp_path, **SMALL)
    assert second != first and (second / STAMP_FILE).is_file()
    # other sizes live side by side
    assert ensure_generated(tmp_path, **{**SMALL, "n_train": 4}) not in (first, second)


def test_stale_dir_without_stamp_is_replaced(tmp_path):
    final = ensure_generated(tmp_path, **SMALL)
    (final / STAMP_FILE).unlink()
    (final / "junk.txt").write_text("half-copied")
    again = ensure_generated(tmp_path, **SMALL)
    assert again == final and (final / STAMP_FILE).is_file() and not (final / "junk.txt").exists()


def test_racing_generators_end_with_one_complete_copy(tmp_path):
    results, errors = [], []

    def work():
        try:
            results.append(ensure_generated(tmp_path, **SMALL))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert (results[0] / STAMP_FILE).is_file()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_unwritable_cache_root_is_a_data_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache dir should be")
    with pytest.raises(DataError, match=r"dataset.root .*file.*writable"):
        SyntheticDataset(blocker / "cache", **SMALL).categories()


def test_default_conf_instantiates(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pyimgano_hydra.schemas import register_configs

    register_configs()
    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(overrides=["+dataset=synthetic", f"dataset.root={tmp_path}",
                                 "dataset.n_train=2", "dataset.n_test_good=1",
                                 "dataset.n_test_defect=1"])
    assert cfg.dataset._target_ == "pyimgano_hydra.data.synthetic.SyntheticDataset"
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, SyntheticDataset)
    split = ds.split("weave")
    assert ds.load_images(split.test).shape[1:] == (cfg.dataset.resize, cfg.dataset.resize, 3)
