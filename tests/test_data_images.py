"""Image and mask IO: every pixel format loads into the configured mode; bad files name themselves."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pyimgano_hydra.data.images import list_images, load_image, load_mask, mask_size, read_size
from pyimgano_hydra.errors import DataError


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def rgb_array():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_rgb_png_round_trips_in_both_modes(tmp_path, rgb_array):
    path = _save(Image.fromarray(rgb_array), tmp_path / "a.png")
    rgb = load_image(path, input_mode="rgb")
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    np.testing.assert_array_equal(rgb, rgb_array)
    gray = load_image(path, input_mode="gray")
    assert gray.shape == (20, 30, 1)
    expected = np.asarray(Image.fromarray(rgb_array).convert("L"), dtype=np.int16)
    assert np.abs(gray[:, :, 0].astype(np.int16) - expected).max() <= 1


def test_gray_png_loads_as_three_equal_channels(tmp_path):
    arr = np.arange(200, dtype=np.uint8).reshape(10, 20)
    path = _save(Image.fromarray(arr, "L"), tmp_path / "g.png")
    rgb = load_image(path, input_mode="rgb")
    assert rgb.shape == (10, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], arr)
    np.testing.assert_array_equal(load_image(path, input_mode="gray")[:, :, 0], arr)


def test_rgba_drops_alpha_and_keeps_colour(tmp_path, rgb_array):
    alpha = np.zeros(rgb_array.shape[:2], np.uint8)
    rgba = np.dstack([rgb_array, alpha])
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(path), rgb_array)


def test_palette_image_maps_indices_to_colours(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (253 * 3))
    out = load_image(_save(img, tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 0])
    np.testing.assert_array_equal(out[1, 0], [0, 0, 255])


def test_16bit_png_scales_to_8bit(tmp_path):
    arr = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16 bit
    out = load_image(path, input_mode="gray")[:, :, 0]
    np.testing.assert_array_equal(out, [[0, 100], [255, 7]])
    assert load_image(path, input_mode="rgb").shape == (2, 2, 3)


def test_16bit_rgb_png_scales_to_8bit(tmp_path):
    import cv2

    arr = np.zeros((2, 2, 3), np.uint16)
    arr[0, 0] = [257 * 30, 257 * 20, 257 * 10]  # OpenCV writes BGR
    path = tmp_path / "deep_rgb.png"
    cv2.imwrite(str(path), arr)
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    assert out.dtype == np.uint8


def test_one_bit_image_loads(tmp_path):
    arr = np.zeros((8, 8), bool)
    arr[2:4] = True
    out = load_image(_save(Image.fromarray(arr), tmp_path / "b.png"), input_mode="gray")
    assert out[2, 0, 0] == 255 and out[0, 0, 0] == 0


def _exif_rotated_jpeg(path, width=40, height=20, orientation=6):
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 4] = 255  # bright stripe on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_is_applied(tmp_path):
    path = _exif_rotated_jpeg(tmp_path / "rot.jpg")
    out = load_image(path)
    assert out.shape == (40, 20, 3)  # orientation 6: stored 40x20 shows as 20 wide, 40 tall
    assert read_size(path) == (40, 20)
    # rotated 90 degrees clockwise: the stored left stripe is now at the top
    assert out[:5].mean() > 200 and out[-5:].mean() < 50


def test_resize_gives_requested_shape_and_masks_stay_exact(tmp_path, rgb_array):
    path = _save(Image.fromarray(rgb_array), tmp_path / "a.png")
    assert load_image(path, resize=16).shape == (16, 16, 3)
    assert load_image(path, resize=(8, 12), input_mode="gray").shape == (8, 12, 1)
    mask = np.zeros((40, 40), np.uint8)
    mask[:20, :20] = 255
    m = load_mask(_save(Image.fromarray(mask), tmp_path / "m.png"), 10)
    assert m.dtype == bool and m.shape == (10, 10)
    assert m[:5, :5].all() and not m[5:, :].any() and not m[:, 5:].any()


@pytest.mark.parametrize("value", [1, 255, 7])
def test_any_nonzero_mask_pixel_is_defect(tmp_path, value):
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 2] = value
    m = load_mask(_save(Image.fromarray(mask), tmp_path / "m.png"))
    assert m.sum() == 1 and m[1, 2]


def test_colour_mask_counts_any_channel(tmp_path):
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[0, 0, 2] = 128
    assert load_mask(_save(Image.fromarray(mask), tmp_path / "m.png")).sum() == 1


def test_mask_folder_is_the_union(tmp_path):
    folder = tmp_path / "000"
    folder.mkdir()
    a = np.zeros((5, 5), np.uint8)
    b = np.zeros((5, 5), np.uint8)
    a[0, 0] = 255
    b[4, 4] = 1
    _save(Image.fromarray(a), folder / "000.png")
    _save(Image.fromarray(b), folder / "001.png")
    m = load_mask(folder)
    assert m[0, 0] and m[4, 4] and m.sum() == 2
    assert mask_size(folder) == (5, 5)


def test_large_jpeg_loads_at_requested_size(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 150)).save(buf, "JPEG", quality=80)
    path = tmp_path / "huge.jpg"
    path.write_bytes(buf.getvalue())
    out = load_image(path, resize=256)
    assert out.shape == (256, 256, 3)
    assert np.abs(out.astype(int) - [90, 120, 150]).max() <= 3


def test_paths_with_spaces_and_non_ascii(tmp_path, rgb_array):
    folder = tmp_path / "línea 2 · caméra"
    folder.mkdir()
    path = _save(Image.fromarray(rgb_array), folder / "pièce 01.png")
    assert load_image(path).shape == (20, 30, 3)
    assert list_images(folder) == [path]


def _bad_files(tmp_path, rgb_array):
    good_png = io.BytesIO()
    Image.fromarray(rgb_array).save(good_png, "PNG")
    good_jpg = io.BytesIO()
    Image.fromarray(np.tile(rgb_array, (10, 10, 1))).save(good_jpg, "JPEG")
    files = {
        "empty.png": b"",
        "text.png": b"this is not an image\n",
        "truncated.png": good_png.getvalue()[: len(good_png.getvalue()) // 2],
        "truncated.jpg": good_jpg.getvalue()[: len(good_jpg.getvalue()) // 2],
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    return paths


def test_bad_files_raise_one_line_data_error_naming_the_file(tmp_path, rgb_array):
    for path in _bad_files(tmp_path, rgb_array):
        with pytest.raises(DataError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert "on_bad_image" in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="nope_mask.png"):
        load_mask(tmp_path / "nope_mask.png")


def test_list_images_filters_extensions_and_hidden_files(tmp_path, rgb_array):
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png"]
    assert [p.name for p in list_images(tmp_path, [".png"])] == ["b.png"]


def test_a_1_bit_image_and_mask_load_as_their_8_bit_gray_copy(tmp_path):
    bits = np.random.default_rng(0).random((37, 53)) > 0.5
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    image = load_image(tmp_path / "bits.png")
    assert image.shape == (37, 53, 3) and set(np.unique(image)) == {0, 255}
    assert (image[:, :, 0] == np.where(bits, 255, 0)).all()
    assert (load_mask(tmp_path / "bits.png") == bits).all()
