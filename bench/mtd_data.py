"""Standalone MTD loader for quick benches (no dependency on the dataset layouts).

split(seed, n_train): MT_Free shuffled by seed; first n_train (default 80 %) train, rest test;
all MT_<Defect> images are test anomalies with their masks. Arrays are cached under /tmp.
"""
from __future__ import annotations

import glob
import os

import cv2
import numpy as np

ROOT = os.environ.get("MTD_ROOT", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "datasets", "mtd"))
if not os.path.isdir(ROOT):
    ROOT = "/work/shared/datasets/mtd"


def _load(paths, size, mask=False):
    out = []
    for p in paths:
        im = cv2.imread(p, cv2.IMREAD_GRAYSCALE)
        interp = cv2.INTER_NEAREST if mask else cv2.INTER_AREA
        out.append(cv2.resize(im, (size, size), interpolation=interp))
    arr = np.stack(out)
    return arr > 127 if mask else arr[..., None]


def load(size=256, seed=0, n_train=None):
    cache = f"/tmp/mtd_{size}_{seed}_{n_train}.npz"
    if os.path.exists(cache):
        z = np.load(cache)
        return z["xtr"], z["xte"], z["yte"], z["mte"], list(z["types"])
    free = sorted(glob.glob(os.path.join(ROOT, "MT_Free", "Imgs", "*.jpg")))
    order = np.random.default_rng(seed).permutation(len(free))
    n_train = n_train or int(round(0.8 * len(free)))
    train = [free[i] for i in order[:n_train]]
    test_good = [free[i] for i in order[n_train:]]
    defects = sorted(p for d in glob.glob(os.path.join(ROOT, "MT_*")) if not d.endswith("MT_Free")
                     for p in glob.glob(os.path.join(d, "Imgs", "*.jpg")))
    test = test_good + defects
    xtr, xte = _load(train, size), _load(test, size)
    yte = np.array([0] * len(test_good) + [1] * len(defects))
    mte = _load([p[:-4] + ".png" for p in test], size, mask=True)
    types = ["good"] * len(test_good) + [p.split(os.sep)[-3][3:] for p in defects]
    np.savez(cache, xtr=xtr, xte=xte, yte=yte, mte=mte, types=np.array(types))
    return xtr, xte, yte, mte, types
