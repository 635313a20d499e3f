"""Attacker pass Z9 (#16): lost / misrecorded runs, memory, silent wrong results -- a shared feature
cache whose entries hold the wrong channel count, and variants that held."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import scores_as_fresh_after_rewriting


def test_cache_entries_of_another_channel_count_for_every_image_are_not_trusted(warm, tmp_path):
    """HOLE (wrong-result). Every entry of a shared cache rewritten with the backbone's layers at their
    right spatial size but ONE channel: ``blocks.2`` (1, 16, 16) and ``blocks.4`` (1, 8, 8) where the
    backbone gives (40, 16, 16) and (112, 8, 8). ``_plausible_map`` checks only h and w against the
    image (the W4 fix for (C, 1, 1) / (C, 0, 0)), and with every row a hit nothing is computed to compare
    with. Observed: rc 0, status "completed", image AUROC 0.5000 and pixel AUROC 0.5000, threshold 0
    (1.0000 / 0.93 from the same images extracted afresh). docs/WORKBENCH.md: an entry that is not "with
    the batch's layers and shapes" is recomputed -- a channel count no backbone of this key gives is
    another shape. Expected: the same metrics as a fresh run, or a refusal naming the cache."""
    cache = tmp_path / "cache"
    shutil.copytree(warm[0], cache)
    scores_as_fresh_after_rewriting(warm, cache, tmp_path, lambda shape: (1,) + shape[1:])


# ---- held -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("array", [
    np.asfortranarray(np.eye(6, 5, dtype=bool)[:, :, None]),
    np.eye(6, 5).astype(">u2") * 1,
    np.eye(6, 5).astype(np.float16),
], ids=["fortran-bool-hw1", "big-endian-u2", "float16"])
def test_held_npy_masks_of_odd_dtype_or_order_read_their_defect_pixels(tmp_path, array):
    """HELD. A .npy mask stored Fortran-order with a trailing channel, big-endian 16-bit, or float16:
    ``load_mask`` gives exactly the non-zero pixels (the diagonal), none read as empty."""
    from pyimgano_hydra.data.images import load_mask, mask_size

    path = tmp_path / "m.npy"
    np.save(path, array)
    assert mask_size(path) == (6, 5)
    assert (load_mask(path) == np.eye(6, 5, dtype=bool)).all()


@pytest.mark.parametrize("shape", [(6, 5, 5), (0, 5), (6,)], ids=["5-channels", "empty", "1-d"])
def test_held_npy_masks_of_odd_shapes_are_refused_naming_the_file(tmp_path, shape):
    """HELD. A .npy mask of 5 channels, zero rows or one dimension: one DataError naming the file."""
    from pyimgano_hydra.data.images import load_mask
    from pyimgano_hydra.errors import DataError

    path = tmp_path / "odd.npy"
    np.save(path, np.ones(shape, np.uint8))
    with pytest.raises(DataError, match="odd.npy"):
        load_mask(path)
