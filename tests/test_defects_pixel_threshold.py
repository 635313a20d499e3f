"""Pixel-threshold resolution order and provenance."""
import numpy as np
import pytest

from pyimgano_hydra.defects.pixel_threshold import NormalPixelSample, normal_pixel_quantile, resolve_pixel_threshold
from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.schemas.defects import DefectsSchema


def _maps(n=3, size=10, seed=0):
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


def _never_called():
    raise AssertionError("normal maps must not be computed when a threshold is already known")


def test_explicit_value_wins_over_run_and_maps():
    got = resolve_pixel_threshold(DefectsSchema(pixel_threshold=0.7), run_threshold=0.3, normal_maps=_never_called)
    assert got.value == 0.7 and got.provenance == {"source": "explicit"}


def test_run_value_comes_next_and_carries_its_provenance():
    stored = {"source": "normal_pixel_quantile", "q": 0.99, "n_pixels": 1000}
    got = resolve_pixel_threshold(DefectsSchema(), run_threshold=0.3, run_provenance=stored, normal_maps=_never_called)
    assert got.value == 0.3
    assert got.provenance == {"source": "run", "run_provenance": stored}
    assert got.to_record() == {"pixel_threshold": 0.3, "pixel_threshold_provenance": got.provenance}


def test_normal_pixel_quantile_records_q_and_pixel_count():
    maps = _maps()
    got = resolve_pixel_threshold({"pixel_normal_quantile": 0.9}, normal_maps=lambda: maps)
    assert got.value == pytest.approx(float(np.quantile(maps, 0.9)))
    assert got.provenance["source"] == "normal_pixel_quantile"
    assert got.provenance["q"] == 0.9 and got.provenance["n_pixels"] == 300 == got.provenance["n_sampled"]


def test_quantile_counts_only_roi_pixels():
    maps = _maps()
    got = resolve_pixel_threshold({"pixel_normal_quantile": 0.5, "roi_xyxy_norm": [0, 0, 0.5, 0.5]}, normal_maps=maps)
    assert got.provenance["n_pixels"] == 3 * 25
    assert got.value == pytest.approx(float(np.quantile(maps[:, :5, :5], 0.5)))


def test_quantile_streams_batches_and_bounds_memory():
    maps = _maps(n=40, size=50, seed=1)  # 100,000 pixels, uniform in [0, 1)
    whole = normal_pixel_quantile(maps, 0.9)
    batched = normal_pixel_quantile((maps[i : i + 7] for i in range(0, 40, 7)), 0.9)
    assert batched.value == whole.value  # exact while everything fits
    capped = normal_pixel_quantile((maps[i : i + 7] for i in range(0, 40, 7)), 0.9, max_pixels=20_000)
    assert capped.provenance["n_pixels"] == 100_000 and capped.provenance["n_sampled"] == 20_000
    assert capped.value == pytest.approx(whole.value, abs=0.01)


def test_sample_is_a_subset_of_the_data():
    sample = NormalPixelSample(max_pixels=50, seed=3)
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    sample.update(values[:4]).update(values[4:])
    assert sample.n_pixels == 1000 and sample.n_sampled == 50
    assert 0 <= sample.quantile(0.0) and sample.quantile(1.0) <= 999


@pytest.mark.parametrize(
    "settings, maps",
    [(DefectsSchema(), None), (DefectsSchema(pixel_threshold_strategy="fixed"), np.zeros((1, 4, 4)))],
)
def test_no_source_is_one_line_naming_the_three_ways(settings, maps):
    with pytest.raises(ConfigError) as info:
        resolve_pixel_threshold(settings, normal_maps=maps)
    message = str(info.value)
    assert "\n" not in message and message.startswith("defects.pixel_threshold: ")
    for way in ("defects.pixel_threshold=", "run", "normal_pixel_quantile"):
        assert way in message


def test_bad_run_value_is_rejected():
    with pytest.raises(ConfigError, match="stored with the run"):
        resolve_pixel_threshold(DefectsSchema(), run_threshold=float("nan"))
