"""Image-level term shared by PatchCore and PaDiM: fingerprints, Gaussian, fusion, top-k."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.models.image_level import ImageGaussian, channel_stats, fuse, topk_mean


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
