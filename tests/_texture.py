"""Tiny textured images with an optional dark blob, shared by the detector tests."""
from __future__ import annotations

import numpy as np
from sklearn.base import clone


def textures(n: int, size: int = 64, seed: int = 0, defect: bool = False, channels: int = 3) -> np.ndarray:
    """uint8 (n, size, size, channels): vertical streaks + noise; a dark blob when ``defect``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, channels), np.uint8)
    for i in range(n):
        streaks = 20 * np.sin(xx * rng.uniform(0.8, 1.2) + rng.uniform(0, 6.28))
        img = 128 + streaks + rng.normal(0, 6, (size, size))
        if defect:
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 10) ** 2] = 20
        out[i] = np.clip(img, 0, 255).astype(np.uint8)[..., None]
    return out


def check_image_score_option(plain, model, data) -> None:
    """``model`` (fitted with an image-score option) vs ``plain`` (fitted without): same maps,
    other scores, the defects still ranked first, and scores kept through a state round trip."""
    base, out = plain.score_maps(data[2]), model.score_maps(data[2])
    np.testing.assert_array_equal(base.maps, out.maps)
    assert not np.allclose(base.scores, out.scores)
    assert out.scores.min() > model.score_maps(data[1]).scores.max()
    restored = clone(model).load_state_dict(model.state_dict())
    np.testing.assert_array_equal(restored.score_maps(data[2]).scores, out.scores)
