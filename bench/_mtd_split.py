"""The one MTD split every bench uses: seeded 80/20 normal split, limits, ground truth.

``make_split`` returns plain data (paths, labels, mask paths) that any tool can read, so
anomalib, pyimgano and ours see the very same train and test images. The split comes
from :class:`pyimgano_hydra.data.mtd.MTDDataset` (normals permuted by ``seed``, 20 % to
test, all defect images to test; ``train_limit`` / ``test_limit`` pick seeded subsets).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benches run as scripts from anywhere
    sys.path.insert(0, str(REPO))

from pyimgano_hydra.data.mtd import MTDDataset  # noqa: E402
from pyimgano_hydra.data.sample import Sample  # noqa: E402


def default_mtd_root() -> Path:
    """``$PYIMGANO_DATA_ROOT/mtd`` if set, else ``../shared/datasets/mtd`` beside the repo."""
    env = os.environ.get("PYIMGANO_DATA_ROOT")
    if env:
        return Path(env) / "mtd"
    for base in (REPO.parent / "shared", REPO.parents[1] / "shared", Path("/work/shared")):
        if (base / "datasets" / "mtd").is_dir():
            return base / "datasets" / "mtd"
    return REPO.parent / "shared" / "datasets" / "mtd"


def mtd_dataset(root: Path, resize: int = 256, seed: int = 0, train_limit: int | None = 100,
                test_limit: int | None = None) -> MTDDataset:
    return MTDDataset(root=str(root), resize=resize, seed=seed, limit_train=train_limit,
                      limit_test=test_limit)


def make_split(root: Path, resize: int = 256, seed: int = 0, train_limit: int | None = 100,
               test_limit: int | None = None) -> dict:
    """JSON-able split: ``train`` paths, ``test`` records (path, label, mask, defect)."""
    split = mtd_dataset(root, resize, seed, train_limit, test_limit).split("mtd")
    return {
        "root": str(root), "resize": resize, "seed": seed,
        "train_limit": train_limit, "test_limit": test_limit,
        "train": [s.path for s in split.train],
        "test": [{"path": s.path, "label": int(s.label), "mask": s.mask_path,
                  "defect": s.defect_type} for s in split.test],
    }


def test_samples(split: dict) -> list[Sample]:
    return [Sample(t["path"], t["label"], t["mask"], "mtd", t["defect"], "test")
            for t in split["test"]]


def train_samples(split: dict) -> list[Sample]:
    return [Sample(p, 0, None, "mtd", "good", "train") for p in split["train"]]


def mvtec_split(root: Path, category: str, resize: int = 256, seed: int = 0, train_limit: int | None = None,
                test_limit: int | None = None) -> dict:
    """The same JSON-able split for one category of any MVTec-layout root."""
    from pyimgano_hydra.data.mvtec import MVTecDataset

    ds = MVTecDataset(root=str(root), category=category, resize=resize, seed=seed,
                      limit_train=train_limit, limit_test=test_limit)
    split = ds.split(category)
    return {
        "root": str(root), "category": category, "resize": resize, "seed": seed,
        "train_limit": train_limit, "test_limit": test_limit,
        "train": [s.path for s in split.train],
        "test": [{"path": s.path, "label": int(s.label), "mask": s.mask_path,
                  "defect": s.defect_type} for s in split.test],
    }


def ground_truth(split: dict) -> tuple[np.ndarray, np.ndarray]:
    """Test labels (N,) and masks bool (N, resize, resize), as our loader resizes them."""
    from pyimgano_hydra.data.images import load_mask

    side = split["resize"]
    masks = np.zeros((len(split["test"]), side, side), bool)
    for i, t in enumerate(split["test"]):
        if t["mask"]:
            masks[i] = load_mask(t["mask"], (side, side))
    return np.array([t["label"] for t in split["test"]]), masks


def scaling_split(root: Path, resize: int = 256, seed: int = 0, n_test_normal: int = 20,
                  n_test_defect: int = 20) -> tuple[list[str], dict]:
    """A large train pool and one fixed small test set, for growth-with-data benches.

    Holds ``n_test_normal`` normals out (seeded), picks ``n_test_defect`` defect images
    (seeded, all defect kinds); the pool is every other normal image in a seeded order,
    so ``pool[:n]`` are nested training sets.
    """
    n_normal = len(list((Path(root) / "MT_Free" / "Imgs").glob("*.jpg")))
    ds = MTDDataset(root=str(root), resize=resize, seed=seed,
                    test_ratio=n_test_normal / max(n_normal, 1))
    split = ds.split("mtd")
    rng = np.random.default_rng(seed)
    pool = [split.train[i].path for i in rng.permutation(len(split.train))]
    normals = [s for s in split.test if s.label == 0]
    defects = [s for s in split.test if s.label == 1]
    picked = sorted(rng.choice(len(defects), size=min(n_test_defect, len(defects)),
                               replace=False))
    test = normals + [defects[i] for i in picked]
    return pool, {
        "root": str(root), "resize": resize, "seed": seed, "train": [],
        "test": [{"path": s.path, "label": int(s.label), "mask": s.mask_path,
                  "defect": s.defect_type} for s in test],
    }
