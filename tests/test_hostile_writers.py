"""Artifacts a colleague can read; names that are not UTF-8 recorded losslessly."""
import json
import os
import stat

import numpy as np

from fakes import PixelZScore
from pyimgano_hydra.inspector import Inspector
from pyimgano_hydra.runs.writers import read_jsonl, write_json_atomic, write_jsonl_atomic


def test_artifacts_get_the_mode_of_a_plain_file_under_the_umask(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    json_file = write_json_atomic(tmp_path / "report.json", {"a": 1})
    detector = PixelZScore().fit(np.zeros((2, 4, 4, 3), np.uint8))
    model = Inspector(detector, image_threshold={"value": 1.0, "provenance": {}}).save(tmp_path / "inspector.pt")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(json_file.stat().st_mode) == expected
    assert stat.S_IMODE(model.stat().st_mode) == expected


def test_undecodable_file_name_round_trips_through_jsonl(tmp_path):
    name = os.fsdecode(b"scratch_\xff\xfe.png")
    path = write_jsonl_atomic(tmp_path / "per_image.jsonl", [{"path": name}])
    json.loads(path.read_bytes().decode("ascii"))  # escaped, still plain JSON
    assert os.fsencode(read_jsonl(path)[0]["path"]) == b"scratch_\xff\xfe.png"


def test_a_full_cache_disk_turns_the_cache_off_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    """A third pass: cache.dir on a full disk failed the whole run with a raw 'OSError: [Errno 28]
    No space left on device' naming no file, after the fit; the cache is only an optimisation."""
    import errno

    from pyimgano_hydra.features import cache as cache_module
    from pyimgano_hydra.features.cache import FeatureCache

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "write_bytes_atomic", full)
    cache = FeatureCache(tmp_path / "cache")
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    out = cache.map_images(images, {"k": 1}, lambda x: x.reshape(len(x), -1).astype(np.float32))
    assert out.shape == (2, 48) and not cache.enabled
    assert cache.get_or_compute({"k": 2}, lambda: np.ones(3)).tolist() == [1, 1, 1]
    assert "feature cache" in caplog.text and "turned off" in caplog.text


def test_a_cache_dir_that_cannot_be_created_turns_the_cache_off(tmp_path):
    """cache.dir on a read-only disk (here: under a file) failed the run with a raw OSError."""
    from pyimgano_hydra.features.cache import FeatureCache

    (tmp_path / "file").write_text("x")
    cache = FeatureCache(tmp_path / "file" / "cache")
    images = np.zeros((2, 4, 4, 3), np.uint8)
    assert cache.map_images(images, {"k": 1}, lambda x: x.reshape(len(x), -1)).shape == (2, 48)
    assert cache.get_or_compute({"k": 2}, lambda: 7) == 7 and not cache.enabled


def test_a_backbone_record_that_cannot_be_written_turns_the_cache_off(tmp_path):
    """The backbone record under <cache>/backbones/ is written like any entry: a cache dir that
    cannot be created must not fail the extraction."""
    from pyimgano_hydra.features import iter_features
    from pyimgano_hydra.features.backbones import deferred_backbone
    from pyimgano_hydra.features.cache import feature_cache

    (tmp_path / "file").write_text("x")
    images = np.zeros((2, 64, 64, 3), np.uint8)
    with feature_cache({"enabled": True, "dir": str(tmp_path / "file" / "cache"), "max_gb": 1}) as cache:
        feats = list(iter_features(deferred_backbone("efficientnet_lite0", ["blocks.2"], device="cpu"), images))
    assert feats[0]["blocks.2"].shape[0] == 2 and not cache.enabled


def test_cache_eviction_deletes_only_its_own_entries(tmp_path):
    """Pass D: cache.dir=<a data folder> with cache.max_gb small: eviction deleted the folder's own
    masks/*.npz (any ``*/*.npz`` counted as an entry)."""
    import numpy as np

    from pyimgano_hydra.features.cache import FeatureCache, make_key

    (tmp_path / "masks").mkdir()
    (tmp_path / "ab").mkdir()
    np.savez(tmp_path / "masks" / "gt_0001.npz", a=np.zeros(1000))
    np.savez(tmp_path / "ab" / "abc.npz", a=np.zeros(1000))
    cache = FeatureCache(tmp_path, max_bytes=None)
    cache.put(make_key("x"), np.zeros(1000))
    assert cache.evict(max_bytes=100) > 0 and cache.get(make_key("x")) is None
    assert (tmp_path / "masks" / "gt_0001.npz").is_file() and (tmp_path / "ab" / "abc.npz").is_file()
