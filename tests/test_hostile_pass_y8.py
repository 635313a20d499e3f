"""Attacker pass Y8 (#16's fresh pass): code execution and lost runs only (memory blow-ups from a
small file, hangs, records changed)."""
import pytest
from PIL import Image

from conftest import run_cli_measured, traced_peak, trained_run
from pyimgano_hydra.data.images import decoded_megabytes, load_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.mark.parametrize("suffix,transparency", [(".png", 5), (".gif", None)])
def test_a_palette_image_decodes_near_what_the_limit_counts(tmp_path, suffix, transparency):
    """HOLE (lost-run: memory blow-up). dataset.max_image_megabytes counts a palette (P) image at one
    byte a pixel, but _to_uint8 converts it to RGB (RGBA when it has a transparent colour: 4 bytes a
    pixel in Pillow), takes it as an array and copies its first three channels: numpy alone
    allocates 8x the counted bytes (Pillow's converted image comes on top). The same check for
    16-bit/32-bit images (test_hostile_images) holds them under 4x. End to end: a 47 KB palette PNG
    of 13370x13370 with a transparent colour (178 MB counted, under the 256 MB limit) took infer to
    2.57 GB resident (502 MB for a 32x32 image); a 133 KB GIF of the same size to 2.2 GB.
    Expected: arrays under 4x the counted bytes (or the image refused for what it will take)."""
    path = tmp_path / f"pal{suffix}"
    image = Image.new("P", (1500, 1500), 3)
    image.save(path, **({"transparency": transparency} if transparency is not None else {}))
    with Image.open(path) as opened:
        assert opened.mode == "P"
        counted = decoded_megabytes(opened) * 1e6
    out, peak = traced_peak(lambda: load_image(path, 64))
    assert out.shape == (64, 64, 3)
    assert peak < 4 * counted, f"{peak / 1e6:.0f} MB of arrays for {counted / 1e6:.0f} MB counted"


def test_infer_of_a_47_kb_palette_png_never_takes_two_gigabytes(trained, tmp_path):
    """HOLE (lost-run: memory blow-up), end to end: see above. Expected: infer stays under 1.5 GB
    resident (anonymous) or refuses the file in one line."""
    path = tmp_path / "t.png"
    Image.new("P", (13370, 13370), 3).save(path, transparency=5)
    assert path.stat().st_size < 100_000
    proc, peak_kib = run_cli_measured([f"run_dir={trained}", f"input={path}", f"hydra.run.dir={tmp_path / 'out'}"],
                                      cwd=tmp_path, module="pyimgano_hydra.infer")
    assert peak_kib < 1.5 * 1024 * 1024, (f"peak {peak_kib >> 10} MB", proc.stderr[-300:])


def test_held_an_input_folder_with_link_loops_and_odd_names_scores_each_image_once(trained, tmp_path):
    """HELD. An input folder holding a link to itself and one to its parent (a loop), and an image
    whose name holds a byte that is not UTF-8, a newline and an escape sequence: infer completes,
    scores each image once, writes its map and mask inside the output dir."""
    import json
    import os

    from conftest import run_cli

    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (32, 32), (120, 120, 120)).save(images / "b.png")
    Image.new("RGB", (32, 32), (120, 120, 120)).save(images / "a.png")
    os.rename(images / "a.png", os.fsencode(images) + b"/\xff\nx\x1b[31m.png")
    (images / "sub" / "loop").symlink_to("..")
    (images / "self").symlink_to(images)
    out = tmp_path / "out"
    proc = run_cli([f"run_dir={trained}", f"input={images}", f"hydra.run.dir={out}", "defects=default",
                    "defects.pixel_threshold=0.5", "save_maps=true"], module="pyimgano_hydra.infer", timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("score" in r for r in rows)
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000_b.png", "000001_x_31m.png"]
