"""Feature cache: reuse across calls and processes, keys that change with every input, size limit."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.runs.writers import read_jsonl
from pyimgano_hydra.features.cache import FeatureCache, active_cache, feature_cache, make_key, open_cache


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


def _features(images: np.ndarray) -> dict[str, np.ndarray]:
    """A deterministic stand-in for a backbone: two 'layers' per image."""
    x = images.astype(np.float32) / 255.0
    return {"layer1": x.mean(axis=-1), "layer2": x.reshape(len(x), -1).sum(axis=1, keepdims=True)}


class Counting:
    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, images):
        self.calls.append(len(images))
        return _features(images)


def test_get_or_compute_computes_once_then_reads(tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}

    first = cache.get_or_compute(["backbone", "layer"], compute)
    second = FeatureCache(tmp_path).get_or_compute(["backbone", "layer"], compute)  # a new job, same dir
    assert len(calls) == 1
    np.testing.assert_array_equal(first["a"], second["a"])


def test_single_array_round_trips(tmp_path):
    cache = FeatureCache(tmp_path)
    value = np.linspace(0, 1, 5, dtype=np.float32)
    out = cache.get_or_compute("k", lambda: value)
    again = cache.get_or_compute("k", lambda: pytest.fail("should be cached"))
    assert isinstance(again, np.ndarray) and again.dtype == np.float32
    np.testing.assert_array_equal(out, again)


def test_map_images_reads_hits_and_computes_only_missing_rows(tmp_path):
    cache = FeatureCache(tmp_path)
    images = _images(6)
    compute = Counting()
    parts = {"backbone": "lite0", "layers": ["blocks.2"], "weights": "w1", "preprocess": "imagenet"}
    cache.map_images(images[:4], parts, compute)
    out = cache.map_images(images, parts, compute)  # 4 cached + 2 new, in a new order below
    assert compute.calls == [4, 2]
    expected = _features(images)
    for name in expected:
        np.testing.assert_allclose(out[name], expected[name])
    shuffled = images[[5, 0, 3]]
    out = cache.map_images(shuffled, parts, compute)
    assert compute.calls == [4, 2]
    np.testing.assert_allclose(out["layer1"], _features(shuffled)["layer1"])


@pytest.mark.parametrize("change", ["image", "backbone", "layers", "weights", "preprocess"])
def test_any_change_of_key_part_misses(tmp_path, change):
    cache = FeatureCache(tmp_path)
    images = _images(3)
    parts = {"backbone": "lite0", "layers": ["blocks.2"], "weights": "w1", "preprocess": "imagenet"}
    compute = Counting()
    cache.map_images(images, parts, compute)
    if change == "image":
        images = images.copy()
        images[1, 0, 0, 0] ^= 1
        expected_calls = [3, 1]
    else:
        parts = dict(parts, **{change: ["blocks.3"] if change == "layers" else "other"})
        expected_calls = [3, 3]
    cache.map_images(images, parts, compute)
    assert compute.calls == expected_calls


def test_disabled_cache_always_computes_and_writes_nothing(tmp_path):
    cache = FeatureCache(tmp_path / "c", enabled=False)
    compute = Counting()
    cache.map_images(_images(2), "parts", compute)
    cache.map_images(_images(2), "parts", compute)
    assert compute.calls == [2, 2]
    assert not (tmp_path / "c").exists()


def test_cache_is_active_only_inside_its_block_and_blocks_nest(tmp_path):
    assert active_cache() is None
    with feature_cache({"enabled": True, "dir": str(tmp_path / "a"), "max_gb": 0.5}) as outer:
        assert active_cache() is outer and outer.max_bytes == int(0.5 * 1024**3)
        with feature_cache({"enabled": False}):
            assert active_cache() is None
        with feature_cache(None):
            assert active_cache() is None
        assert active_cache() is outer
    assert active_cache() is None


def test_a_thread_does_not_see_another_threads_cache(tmp_path):
    import threading

    seen, entered, release = {}, threading.Event(), threading.Event()

    def job():
        with feature_cache({"enabled": True, "dir": str(tmp_path)}) as cache:
            seen["inside"] = active_cache() is cache
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=job)
    worker.start()
    entered.wait(10)
    seen["main"] = active_cache()
    release.set()
    worker.join()
    assert seen == {"inside": True, "main": None}


def test_a_detector_outside_any_block_extracts_afresh(tmp_path):
    from pyimgano_hydra.features import build_backbone, iter_features

    backbone = build_backbone("efficientnet_lite0", ["blocks.2"], device="cpu")
    images = _images(2, seed=1).repeat(4, axis=1).repeat(4, axis=2)
    with feature_cache({"enabled": True, "dir": str(tmp_path)}) as cache:
        list(iter_features(backbone, images, batch_size=2))
        assert cache.misses == 2
    list(iter_features(backbone, images, batch_size=2))  # outside: neither read nor written
    assert (cache.hits, cache.misses) == (0, 2)


@pytest.mark.parametrize("kwargs,key", [({"max_gb": -1}, "cache.max_gb"), ({"dir": ""}, "cache.dir"),
                                         ({"enabled": "yes"}, "cache.enabled")])
def test_bad_cache_settings_name_the_key(tmp_path, kwargs, key):
    with pytest.raises(ConfigError) as info:
        open_cache(**{"enabled": True, "dir": tmp_path, "max_gb": 1.0, **kwargs})
    assert str(info.value).startswith(key)


def test_size_limit_evicts_least_recently_used(tmp_path):
    entry = np.zeros(1000, dtype=np.float64)  # ~8 KB per entry
    cache = FeatureCache(tmp_path, max_bytes=None)
    for i in range(10):
        cache.put(make_key(i), entry)
        os.utime(cache.path(make_key(i)), (1000 + i, 1000 + i))  # entry i used at time 1000 + i
    assert cache.get(make_key(0)) is not None  # a hit refreshes entry 0: now the most recent
    one = cache.path(make_key(1)).stat().st_size
    freed = cache.evict(max_bytes=5 * one)
    assert freed > 0 and cache.size_bytes() <= 5 * one
    assert cache.get(make_key(0)) is not None  # recently used: kept
    assert cache.get(make_key(1)) is None  # oldest: gone
    assert cache.get(make_key(9)) is not None


def test_puts_past_the_limit_trigger_eviction(tmp_path):
    entry = np.zeros(1000, dtype=np.float64)
    cache = FeatureCache(tmp_path, max_bytes=40_000)
    for i in range(20):
        cache.put(make_key(i), entry)
    assert cache.size_bytes() <= 40_000
    assert cache.get(make_key(19)) is not None


def test_corrupt_entry_is_a_miss_and_gets_rewritten(tmp_path):
    cache = FeatureCache(tmp_path)
    key = make_key("x")
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"not an npz")
    assert cache.get(key) is None
    value = cache.get_or_compute("x", lambda: np.ones(3))
    np.testing.assert_array_equal(cache.get(key), value)


def test_backbone_key_changes_with_weights_and_layers():
    from pyimgano_hydra.features import build_backbone
    from pyimgano_hydra.features.cache import backbone_key_parts

    a = build_backbone("efficientnet_lite0", ["blocks.2"], device="cpu")
    same = build_backbone("efficientnet_lite0", ["blocks.2"], device="cpu")
    other_weights = build_backbone("efficientnet_lite0", ["blocks.2"], pretrained=False, device="cpu")
    other_layers = build_backbone("efficientnet_lite0", ["blocks.3"], device="cpu")
    key = make_key(backbone_key_parts(a))
    assert make_key(backbone_key_parts(same)) == key
    assert make_key(backbone_key_parts(other_weights)) != key
    assert make_key(backbone_key_parts(other_layers)) != key


def _parallel_job(args):
    root, log = args
    images = _images(5, seed=1)

    def slow_compute(batch):
        with open(log, "a") as handle:
            handle.write(f"{len(batch)}\n")
        import time

        time.sleep(0.5)
        return _features(batch)

    out = FeatureCache(root).map_images(images, {"backbone": "b"}, slow_compute)
    return float(out["layer2"].sum())


def test_parallel_jobs_share_one_computation(tmp_path):
    log = tmp_path / "computed.txt"
    with ProcessPoolExecutor(max_workers=3) as pool:
        sums = list(pool.map(_parallel_job, [(str(tmp_path / "cache"), str(log))] * 3))
    assert len(set(sums)) == 1
    assert log.read_text().split() == ["5"]  # one job computed, the others waited and read
    leftovers = [p for p in Path(tmp_path / "cache").rglob("*.tmp")]
    assert leftovers == []


# ---- wired into real jobs ------------------------------------------------------------------
TINY_JOB = ["dataset.category=weave", "dataset.limit_train=8", "dataset.limit_test=8", "model.device=cpu"]


def _count_backbone_images(monkeypatch) -> list[int]:
    from pyimgano_hydra.features.backbones import Backbone

    seen: list[int] = []
    forward = Backbone.forward

    def counting(self, x):
        seen.append(int(x.shape[0]))
        return forward(self, x)

    monkeypatch.setattr(Backbone, "forward", counting)
    return seen


def test_jobs_sharing_backbone_and_data_reuse_features(tmp_path, monkeypatch):
    from pyimgano_hydra.api import run

    seen = _count_backbone_images(monkeypatch)
    cache = [f"cache.dir={tmp_path / 'features'}"]
    first = run(["model=ecod", *TINY_JOB, *cache], output_dir=tmp_path / "r1")
    extracted = sum(seen)
    assert extracted > 0
    entries = len(FeatureCache(tmp_path / "features").entries())
    second = run(["model=knn", *TINY_JOB, *cache], output_dir=tmp_path / "r2")  # same backbone and layers
    assert sum(seen) == extracted  # nothing extracted again
    assert len(FeatureCache(tmp_path / "features").entries()) == entries
    off = run(["model=ecod", *TINY_JOB, *cache, "cache.enabled=false"], output_dir=tmp_path / "r3")
    assert sum(seen) > extracted
    assert off["aggregate"]["image_auroc"] == first["aggregate"]["image_auroc"]
    scores = [[r["score"] for r in read_jsonl(tmp_path / run / "categories" / "weave" / "per_image.jsonl")]
              for run in ("r1", "r3")]
    assert scores[0] == scores[1]  # bit-identical with and without the cache
    assert second["status"] == "completed" and active_cache() is None  # the job's cache is not left on


def test_cached_features_are_bit_identical_to_fresh_ones(tmp_path):
    import torch

    from pyimgano_hydra.features import build_backbone, iter_features

    backbone = build_backbone("efficientnet_lite0", ["blocks.2", "blocks.4"], device="cpu")
    images = _images(5, seed=3).repeat(8, axis=1).repeat(8, axis=2)  # 64 x 64
    fresh = list(iter_features(backbone, images, batch_size=4))
    with feature_cache({"enabled": True, "dir": str(tmp_path), "max_gb": 1}):
        cold = list(iter_features(backbone, images, batch_size=4))
        warm = list(iter_features(backbone, images, batch_size=4))
    for ref, a, b in zip(fresh, cold, warm):
        for layer in ref:
            for got in (a[layer], b[layer]):
                assert torch.equal(got, ref[layer]) and got.stride() == ref[layer].stride()
                assert torch.equal(got.mean(dim=(2, 3)), ref[layer].mean(dim=(2, 3)))


def test_a_warm_cache_serves_features_without_building_the_backbone(tmp_path):
    import torch

    from pyimgano_hydra.features import iter_features
    from pyimgano_hydra.features.backbones import deferred_backbone

    images = _images(5, seed=4).repeat(8, axis=1).repeat(8, axis=2)
    settings = {"enabled": True, "dir": str(tmp_path), "max_gb": 1}
    first = deferred_backbone("efficientnet_lite0", ["blocks.2"], device="cpu")
    with feature_cache(settings):
        cold = list(iter_features(first, images, batch_size=4))
    assert first.built
    later = deferred_backbone("efficientnet_lite0", ["blocks.2"], device="cpu")  # the next job's backbone
    with feature_cache(settings):
        warm = list(iter_features(later, images, batch_size=4))
    assert not later.built  # every feature came from the cache
    for a, b in zip(cold, warm):
        assert torch.equal(a["blocks.2"], b["blocks.2"])
    with feature_cache(settings):
        list(iter_features(later, _images(2, seed=9).repeat(8, axis=1).repeat(8, axis=2)))
    assert later.built  # new images: built then


def _replace_keeping_size_and_mtime(weights: Path) -> None:
    """Other weights of the same network put in place of ``weights`` with its old mtime (tar, cp -p)."""
    import torch

    from pyimgano_hydra.features import BACKBONES

    before = os.stat(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        torch.save(BACKBONES["efficientnet_lite0"]().build().state_dict(), weights)
    assert os.stat(weights).st_size == before.st_size
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("change", ["weights replaced, same size and mtime", "corrupt record"])
def test_a_backbone_whose_record_does_not_hold_is_built(tmp_path, change):
    import torch

    from pyimgano_hydra.features import BACKBONES, iter_features
    from pyimgano_hydra.features.backbones import deferred_backbone
    from pyimgano_hydra.features.cache import BACKBONE_DIR

    weights = tmp_path / "w.pt"
    torch.save(BACKBONES["efficientnet_lite0"]().build().state_dict(), weights)
    images = _images(3, seed=5).repeat(8, axis=1).repeat(8, axis=2)
    settings = {"enabled": True, "dir": str(tmp_path / "cache"), "max_gb": 1}

    def backbone():
        return deferred_backbone("efficientnet_lite0", ["blocks.2"], weights_path=str(weights), device="cpu")

    with feature_cache(settings):
        list(iter_features(backbone(), images))
    if change.startswith("weights replaced"):
        _replace_keeping_size_and_mtime(weights)
    else:
        (record,) = (tmp_path / "cache" / BACKBONE_DIR).glob("*.txt")
        record.write_text("not a key")
    again = backbone()
    with feature_cache(settings):
        list(iter_features(again, images))
    assert again.built


def test_cache_disabled_writes_nothing(tmp_path):
    from pyimgano_hydra.api import run

    run(["model=ecod", *TINY_JOB, f"cache.dir={tmp_path / 'features'}", "cache.enabled=false"],
        output_dir=tmp_path / "r")
    assert not (tmp_path / "features").exists()


def test_the_next_job_in_a_process_reuses_the_built_backbone(tmp_path):
    """A sweep's jobs in one process build a backbone once; other weights or seed build anew."""
    import torch

    from pyimgano_hydra.features import BACKBONES
    from pyimgano_hydra.features.backbones import deferred_backbone

    weights = tmp_path / "w.pt"
    torch.save(BACKBONES["efficientnet_lite0"]().build().state_dict(), weights)

    def job(**kwargs):
        backbone = deferred_backbone("efficientnet_lite0", ["blocks.2"], device="cpu", **kwargs)
        return backbone.resolve()

    first = job(weights_path=str(weights))
    assert job(weights_path=str(weights)) is first
    assert job(weights_path=str(weights), image_norm="standardize") is not first
    os.utime(weights, ns=(os.stat(weights).st_atime_ns, os.stat(weights).st_mtime_ns + 10**9))
    assert job(weights_path=str(weights)) is first  # touched, same content: the same network
    _replace_keeping_size_and_mtime(weights)
    rebuilt = job(weights_path=str(weights))
    assert rebuilt is not first and job(weights_path=str(weights)) is rebuilt
    random = job(pretrained=False, seed=1)
    assert job(pretrained=False, seed=2) is not random and job(pretrained=False, seed=1) is random


def _forge_entry(path: Path, kind: str) -> None:
    import io
    import zipfile

    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "compressed":
        np.savez_compressed(path, layer1=np.zeros((8, 8), np.float32), layer2=np.zeros(1, np.float32))
    elif kind == "object":
        np.savez(path, layer1=np.array([{"a": 1}], dtype=object), layer2=np.zeros(1, np.float32))
    elif kind == "short":  # a header declaring far more data than the member holds
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (1 << 20, 1 << 20)})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("layer1.npy", header.getvalue() + bytes(64))


@pytest.mark.parametrize("kind", ["fifo", "compressed", "object", "short"])
def test_a_forged_entry_is_a_miss_and_gets_recomputed(tmp_path, kind):
    """A shared cache dir may hold anything: a FIFO is not waited on, a deflated, pickled or
    short npz is not inflated, unpickled or allocated; each is recomputed like a missing row."""
    images = _images(4)
    cache = FeatureCache(tmp_path)
    cache.map_images(images, "k", _features)
    entry = sorted(cache.root.glob("[0-9a-f][0-9a-f]/*.npz"))[0]
    _forge_entry(entry, kind)
    counting = Counting()
    out = cache.map_images(images, "k", counting)
    assert counting.calls == [1]
    np.testing.assert_array_equal(out["layer1"], _features(images)["layer1"])


def test_stored_rows_unlike_fresh_ones_are_recomputed(tmp_path):
    """Rows whose layers or shapes differ from the rest of the batch are not stacked with them:
    the batch is recomputed and the odd entry rewritten."""
    images = _images(4)
    cache = FeatureCache(tmp_path)
    cache.map_images(images, "k", _features)
    entries = sorted(cache.root.glob("[0-9a-f][0-9a-f]/*.npz"))
    np.savez(entries[0], layer1=np.zeros((2, 2), np.float32), layer2=np.zeros(1, np.float32))
    entries[1].unlink()
    counting = Counting()
    out = cache.map_images(images, "k", counting)
    np.testing.assert_array_equal(out["layer1"], _features(images)["layer1"])
    done = list(counting.calls)
    assert cache.map_images(images, "k", counting)["layer1"].shape == (4, 8, 8)
    assert counting.calls == done


def test_stored_rows_that_agree_but_differ_from_a_computed_row_are_redone(tmp_path):
    images = _images(4)
    cache = FeatureCache(tmp_path)
    cache.map_images(images, "k", _features)
    entries = sorted(cache.root.glob("[0-9a-f][0-9a-f]/*.npz"))
    for entry in entries[:3]:
        np.savez(entry, layer1=np.zeros((2, 2), np.float32), layer2=np.zeros(1, np.float32))
    entries[3].unlink()
    out = cache.map_images(images, "k", _features)
    np.testing.assert_array_equal(out["layer1"], _features(images)["layer1"])
