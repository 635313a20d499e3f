"""Image-level term shared by PatchCore and PaDiM: fingerprints, Gaussian, fusion, top-k, power mean."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.models.image_level import ImageGaussian, channel_stats, fuse, power_mean, topk_mean


def test_channel_stats_are_per_channel_mean_and_std_of_each_layer():
    a, b = torch.rand(3, 4, 5, 5), torch.rand(3, 2, 2, 2)
    stats = channel_stats({"a": a, "b": b})
    assert stats.shape == (3, 2 * (4 + 2)) and stats.dtype == np.float64
    np.testing.assert_allclose(stats[:, :4], a.mean((2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats[:, 4:8], a.numpy().std(axis=(2, 3)), rtol=1e-5)


def test_gaussian_distance_grows_away_from_the_training_cloud_and_round_trips():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 6))
    gauss = ImageGaussian().fit(train)
    near, far = np.zeros((1, 6)), np.full((1, 6), 5.0)
    assert gauss.distance(far)[0] > 3 * gauss.distance(near)[0]
    again = ImageGaussian.from_state(gauss.state_dict())
    np.testing.assert_array_equal(again.distance(far), gauss.distance(far))
    assert ImageGaussian.from_state({}) is None
    with pytest.raises(ConfigError, match="model.global_weight"):
        ImageGaussian().fit(train[:1])


def test_fuse_ranks_by_both_terms_and_topk_mean_averages_the_largest():
    scores, dist = np.array([1.0, 2.0, 2.0]), np.array([1.0, 1.0, 3.0])
    fused = fuse(scores, dist, 1.0)
    assert fused[0] < fused[1] < fused[2]
    np.testing.assert_array_equal(fuse(scores, dist, 0.0).argsort(), np.log(scores).argsort())
    values = np.array([[1.0, 9.0, 3.0, 7.0], [0.0, 0.0, 0.0, 4.0]])
    np.testing.assert_allclose(topk_mean(values, 0.5), [8.0, 2.0])
    np.testing.assert_allclose(topk_mean(values, 0.01), [9.0, 4.0])


def test_power_mean_lies_between_mean_and_max_and_tends_to_each_end():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 1.0, size=(5, 400))
    mean, peak = values.mean(axis=1), values.max(axis=1)
    np.testing.assert_allclose(power_mean(values, 1.0), mean, rtol=1e-12)
    p24 = power_mean(values, 24.0)
    assert np.all(p24 > mean) and np.all(p24 < peak)
    np.testing.assert_allclose(power_mean(values, 1000.0), peak, rtol=0.01)


def test_power_mean_is_scale_equivariant_and_does_not_overflow():
    values = np.array([[1e200, 3e200, 2e200], [0.0, 0.0, 0.0]])
    out = power_mean(values, 24.0)
    assert np.all(np.isfinite(out)) and out[1] == 0.0
    np.testing.assert_allclose(power_mean(values[:1] / 1e200, 24.0) * 1e200, out[:1], rtol=1e-12)


def test_one_strong_patch_and_many_medium_ones_both_raise_the_power_mean():
    """What topk misses on large images: a small defect covers fewer than topk's share."""
    base = np.full((1, 10000), 1.0)
    spot = base.copy()
    spot[0, :5] = 3.0  # 0.05 % of the patches: below a 3 % top-k share
    assert power_mean(spot, 24.0)[0] > 1.5 * power_mean(base, 24.0)[0]
