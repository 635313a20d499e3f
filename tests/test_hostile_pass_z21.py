"""Attacker pass Z21 (#16): received dataset folders and line images with unusual but plausible
content (long names, camera records beside images, cut or zero-filled image data). No hole found:
every test here is a HELD attack and passes on the current code."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from pyimgano_hydra.data.images import load_image
from pyimgano_hydra.errors import DataError


def _gradient(rows_vary: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(30, 220, 64).astype(np.uint8)
    a = np.zeros((64, 64, 3), np.uint8)
    a[:] = ramp[:, None, None] if rows_vary else ramp[None, :, None]
    return a + rng.integers(0, 20, (64, 64, 3)).astype(np.uint8)


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"])
def test_held_a_tiff_whose_strip_data_is_zero_filled_is_refused_not_loaded_black(tmp_path, compression):
    """HELD. A TIFF whose single strip keeps its length but has its last 70% zero-filled (a copy
    cut by a line PC and padded): refused in one line naming the file, never loaded half black."""
    path = tmp_path / "a.tif"
    Image.fromarray(_gradient()).save(path, compression=compression)
    with Image.open(path) as im:
        offset, count = im.tag_v2[273][0], im.tag_v2[279][0]
    data = bytearray(path.read_bytes())
    data[offset + int(count * 0.3):offset + count] = bytes(offset + count - (offset + int(count * 0.3)))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="bad.tif"):
        load_image(bad)


def test_held_a_gif_whose_lzw_data_ends_early_with_a_proper_trailer_is_refused(tmp_path):
    """HELD. A GIF whose image data sub-blocks stop after a third of the LZW stream, closed by a
    block terminator and a trailer (well-formed framing, missing rows): refused, naming the file."""
    path = tmp_path / "g.gif"
    Image.fromarray(_gradient(rows_vary=True)).save(path)
    b = path.read_bytes()
    i = 13 + (3 * 2 ** ((b[10] & 7) + 1) if b[10] & 0x80 else 0)
    while b[i] == 0x21:
        i += 2
        while b[i]:
            i += b[i] + 1
        i += 1
    assert b[i] == 0x2C
    flags = b[i + 9]
    i += 10 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0) + 1
    blocks, j = [], i
    while b[j]:
        blocks.append(b[j + 1:j + 1 + b[j]])
        j += b[j] + 1
    data = b"".join(blocks)
    cut = data[:len(data) // 3]
    framed = b"".join(bytes([len(cut[k:k + 255])]) + cut[k:k + 255] for k in range(0, len(cut), 255))
    bad = tmp_path / "cut.gif"
    bad.write_bytes(b[:i] + framed + b"\x00\x3b")
    with pytest.raises(DataError, match="cut.gif"):
        load_image(bad)


def test_held_a_received_dataset_with_250_byte_category_defect_and_image_names_trains(tmp_path):
    """HELD. A received simple-layout dataset whose category folder, defect folder and image names are
    each ~250 bytes (near NAME_MAX; the run writes categories/<category>/ and per-image records):
    the run completes, status completed, the category's report.json (in a folder named by a cut
    and hashed name) records the full category name."""
    cat, defect = "c" * 250, "d" * 250
    root = tmp_path / "ds" / cat
    for sub in ("train/normal", "test/good", f"test/{defect}"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(6):
        Image.fromarray(rng.integers(100, 140, (32, 32, 3)).astype(np.uint8)).save(root / "train/normal" / f"{k}.png")
    for k in range(2):
        Image.fromarray(rng.integers(100, 140, (32, 32, 3)).astype(np.uint8)).save(root / "test/good" / f"{k}.png")
        bad = rng.integers(100, 140, (32, 32, 3)).astype(np.uint8)
        bad[8:20, 8:20] = 255
        Image.fromarray(bad).save(root / "test" / defect / ("i" * 240 + f"{k}.png"))
    out = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={tmp_path / 'ds'}", "dataset.resize=32", "model.coreset_ratio=0.2",
                    f"hydra.run.dir={out}", f"cache.dir={tmp_path / 'cache'}"], env={"OMP_NUM_THREADS": "1"},
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    reports = list((out / "categories").glob("*/report.json"))  # a long name is cut + hashed (safe_name)
    assert len(reports) == 1 and json.loads(reports[0].read_text())["category"] == cat
    assert "Traceback" not in proc.stderr
