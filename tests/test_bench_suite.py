"""The benchmark suite generator (bench/suite.py): reproducible, readable through our own
``dataset=mvtec``, with a pixel mask for every anomalous image and none for normal ones."""
from __future__ import annotations

import hashlib
import sys

import numpy as np

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from suite import build_suite  # noqa: E402


def digest(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = build_suite(tmp_path / "a", size="small", seed=0)["guard"]
    b = build_suite(tmp_path / "b", size="small", seed=0)["guard"]
    c = build_suite(tmp_path / "c", size="small", seed=1)["guard"]
    da, db, dc = digest(a), digest(b), digest(c)
    assert da and da == db
    assert set(da) == set(dc) and sum(da[k] != dc[k] for k in da) > len(da) // 2


def test_suite_reads_through_dataset_mvtec_with_masks(tmp_path):
    from pyimgano_hydra.api import compose_config
    from pyimgano_hydra.instantiate import build

    root = build_suite(tmp_path, size="small")["guard"]
    cfg = compose_config(["dataset=mvtec", f"dataset.root={root}", "dataset.category=all", "dataset.resize=64"])
    dataset = build(cfg.dataset, "dataset")
    assert dataset.categories() == ["grass", "gravel", "washer"]
    split = dataset.split("gravel")
    assert len(split.train) == 24
    labels = np.array([s.label for s in split.test])
    assert (labels == 0).sum() == 8 and (labels == 1).sum() == 10
    assert len({s.defect_type for s in split.test if s.label == 1}) == 5
    masks = dataset.load_masks(split.test)
    assert masks.shape == (18, 64, 64)
    defect_px = masks.reshape(len(masks), -1).sum(1)
    assert (defect_px[labels == 1] > 0).all() and (defect_px[labels == 0] == 0).all()
    assert defect_px[labels == 1].max() < 0.1 * 64 * 64  # defects are small, as on real parts
