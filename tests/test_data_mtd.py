"""The MTD preset on the real Magnetic Tile Defects data (slow; skipped when absent)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pyimgano_hydra.data.mtd import MTDDataset

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [REPO.parent / "shared" / "datasets" / "mtd", REPO / "shared" / "datasets" / "mtd"]
MTD_ROOT = next((p for p in CANDIDATES if (p / "MT_Free" / "Imgs").is_dir()), None)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MTD_ROOT is None, reason="MTD data not under ../shared/datasets/mtd")]


def test_mtd_counts_split_and_masks():
    ds = MTDDataset(MTD_ROOT, resize=64, input_mode="gray")
    assert ds.categories() == ["mtd"]
    split = ds.split("mtd")  # also checks every mask against its image size
    # README: 952 defect-free images, split 80/20 by seed
    assert len(split.train) + sum(s.label == 0 for s in split.test) == 952
    assert sum(s.label == 0 for s in split.test) == round(0.2 * 952)
    assert Counter(s.defect_type for s in split.test if s.label == 1) == {
        "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    assert all(s.mask_path == s.path[:-4] + ".png" for s in split.test if s.label == 1)
    defects = [s for s in split.test if s.label == 1][::60]
    assert ds.load_images(defects).shape == (len(defects), 64, 64, 1)
    assert ds.load_masks(defects).any(axis=(1, 2)).all()
