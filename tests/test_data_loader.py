"""Decode workers (data/loader.py): same arrays in the same order as the in-process path; a bad
file is its own error, not a dead loader; ``loader.num_workers`` is validated."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pyimgano_hydra.data.images import load_image
from pyimgano_hydra.data.loader import LoaderSetting, decode_files, loader_setting, stack_images
from pyimgano_hydra.errors import ConfigError, DataError
from pyimgano_hydra.inspector import _decodable


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """7 files of mixed formats and sizes (PNG, JPEG, gray, 16-bit)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        arr = rng.integers(0, 256, (40 + 7 * i, 50 + 3 * i, 3), dtype=np.uint8)
        if i % 3 == 0:
            path = root / f"{i}.jpg"
            Image.fromarray(arr).save(path, quality=90)
        elif i % 3 == 1:
            path = root / f"{i}.png"
            Image.fromarray(arr[:, :, 0]).save(path)
        else:
            path = root / f"{i}.png"
            Image.fromarray(arr[:, :, 0].astype(np.uint16) * 257).save(path)
        paths.append(path)
    return paths


@pytest.mark.filterwarnings("ignore:.*pin_memory")  # no accelerator here: pinning is skipped
@pytest.mark.parametrize("setting", [LoaderSetting(0), LoaderSetting(2), LoaderSetting(2, pin_memory=True)])
@pytest.mark.parametrize("resize,mode", [(32, "rgb"), ((24, 36), "gray")])
def test_workers_give_the_in_process_arrays_in_order(files, setting, resize, mode):
    expected = np.stack([load_image(p, resize, mode) for p in files])
    got = stack_images(files, resize, mode, setting=setting)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_a_corrupt_file_among_good_ones_is_an_error_for_that_file_only(files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"truncated")
    paths = [*files[:3], bad, *files[3:]]
    decoded = decode_files(paths, 32, setting=LoaderSetting(num_workers=2))
    errors = [i for i, value in enumerate(decoded) if isinstance(value, DataError)]
    assert errors == [3] and "bad.png" in str(decoded[3])
    for path, value in zip(files, decoded[:3] + decoded[4:]):
        image, size = load_image(path, 32, return_size=True)
        np.testing.assert_array_equal(value.image, image)
        assert value.original_size == size == Image.open(path).size[::-1]
    with pytest.raises(DataError, match="bad.png"):
        stack_images(paths, 32, setting=LoaderSetting(num_workers=2))


def test_score_all_records_the_corrupt_file_and_keeps_the_others(files, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"truncated")
    items = [{"index": i, "path": str(p)} for i, p in enumerate([files[0], bad, files[1]])]
    unreadable: list = []
    with loader_setting(2):
        [(kept, (images, sizes))] = _decodable(
            items, lambda chunk: stack_images([i["path"] for i in chunk], 32, return_sizes=True), unreadable)
    assert [i["index"] for i in kept] == [0, 2] and images.shape == (2, 32, 32, 3)
    assert sizes == [Image.open(files[0]).size[::-1], Image.open(files[1]).size[::-1]]
    assert len(unreadable) == 1 and "bad.png" in unreadable[0]["error"]


def test_the_setting_is_scoped_and_pins_memory_only_on_cuda():
    from pyimgano_hydra.data.loader import active_loader

    with loader_setting(3, "cuda:0") as setting:
        assert active_loader() == setting == LoaderSetting(3, pin_memory=True)
        with loader_setting(1, "cpu"):
            assert active_loader() == LoaderSetting(1, pin_memory=False)
    assert active_loader() == LoaderSetting()


@pytest.mark.parametrize("value", [-1, "two", True])
def test_bad_num_workers_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"^loader\.num_workers: ") as err:
        with loader_setting(value):
            pass
    assert "\n" not in str(err.value)


def test_negative_num_workers_in_the_run_config_is_refused():
    from pyimgano_hydra.api import compose_config
    from pyimgano_hydra.schemas import validate

    validate(compose_config(["loader.num_workers=2"]))
    with pytest.raises(ConfigError, match=r"^loader\.num_workers: must be >= 0") as err:
        validate(compose_config(["loader.num_workers=-1"]))
    assert "\n" not in str(err.value)


def test_run_and_infer_with_workers_record_the_unreadable_file(tmp_path):
    """End to end: a run with decode workers, then infer on a folder holding one bad file."""
    import shutil
    from pathlib import Path

    from conftest import REPO, pythonpath, run_cli
    from pyimgano_hydra.runs.writers import read_jsonl

    tests = Path(__file__).resolve().parent
    env = {"PYTHONPATH": pythonpath(REPO, tests)}
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, n in (("train/normal", 6), ("test/normal", 3), ("test/scratch", 3)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    run_dir = tmp_path / "run"
    proc = run_cli([f"hydra.searchpath=[file://{tests / 'conf'}]", "model=zscore", "dataset=folder",
                    f"dataset.root={root}", "dataset.resize=64", "loader.num_workers=2",
                    f"hydra.run.dir={run_dir}"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    inputs = tmp_path / "inputs"
    shutil.copytree(root / "test" / "scratch", inputs)
    (inputs / "1.png").write_bytes(b"truncated")
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={run_dir}", f"input={inputs}", "trust_targets=true", "+loader.num_workers=2",
                    f"hydra.run.dir={out}"], module="pyimgano_hydra.infer", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {Path(r["path"]).name: r for r in read_jsonl(out / "predictions.jsonl")}
    assert "1.png" in records["1.png"]["error"] and "score" not in records["1.png"]
    assert "score" in records["0.png"] and "score" in records["2.png"]


def _decode_in_worker(paths):
    return stack_images(paths, 32, setting=LoaderSetting(num_workers=2))


def test_workers_start_inside_a_joblib_worker(files):
    """hydra/launcher=joblib runs jobs in loky workers, whose default context is loky's."""
    from joblib.externals.loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=1)
    got = executor.submit(_decode_in_worker, [str(p) for p in files]).result(timeout=300)
    np.testing.assert_array_equal(got, np.stack([load_image(p, 32) for p in files]))


def test_the_original_size_of_a_rotated_jpeg_decoded_small_is_its_full_oriented_size(tmp_path):
    """A JPEG decoded at 1/8 (draft) and turned by its EXIF orientation: the size recorded for its
    defects is the full frame as shown, (height, width) = (400, 240) for a 240-tall, 400-wide file
    turned a quarter."""
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((240, 400, 3), 128, np.uint8)).save(path, exif=exif)
    image, size = load_image(path, 32, return_size=True)
    assert image.shape == (32, 32, 3) and size == (400, 240)
    [decoded] = decode_files([path], 32)
    assert decoded.original_size == (400, 240)
