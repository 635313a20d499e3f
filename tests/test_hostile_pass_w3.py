"""Attacker pass W3 (line side): infer / export / score_onnx.py input images, a received run dir,
output dirs and the line PC's environment; new variants after V1..V3 and W1."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, _cli_env, refused_naming, run_cli, run_score_onnx, small_png


def _tiled_tiff(tile_side: int, variant: str, width: int = 16, height: int = 16) -> bytes:
    """A little-endian RGB TIFF of ``width`` x ``height`` pixels stored as ONE deflated tile of
    ``tile_side`` x ``tile_side`` pixels, TileWidth/TileLength written as libtiff and Pillow read them
    but ``_tiff_tags`` does not: ``sshort``/``slong`` (TIFF types 8/9), ``long8`` (type 16 in a
    classic TIFF, the value at an offset), ``duplicate`` (each tag twice, the huge value first:
    libtiff keeps the first entry, ``_tiff_tags`` the last)."""
    data = zlib.compress(b"\x00" * 64)
    extra_at = 8 + len(data)
    extra = struct.pack("<Q", tile_side) if variant == "long8" else b""
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 2), (277, 3, 1, 3),
            (284, 3, 1, 1), (324, 4, 1, 8), (325, 4, 1, len(data))]
    for tag in (322, 323):
        if variant == "duplicate":
            tags += [(tag, 4, 1, tile_side), (tag, 4, 1, 16)]
        else:
            tags.append((tag, {"sshort": 8, "slong": 9, "long8": 16}[variant], 1,
                         extra_at if variant == "long8" else tile_side))
    tags.sort(key=lambda entry: entry[0])  # stable: a duplicate's huge value stays first
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind in (3, 8)
                else struct.pack("<HHII", tag, kind, count, value))
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", extra_at + len(extra)) + data + extra + ifd


_MEASURED_LOAD = ("import sys\n"
                  "from pyimgano_hydra.data.images import load_image\n"
                  "from pyimgano_hydra.errors import DataError\n"
                  "try: load_image(sys.argv[1], resize=128)\n"
                  "except DataError as exc: print(exc)\n"
                  "print('peak_kb', int(next(line for line in open('/proc/self/status') "
                  "if line.startswith('VmHWM:')).split()[1]))\n")


@pytest.mark.parametrize("variant", ["sshort", "slong", "long8", "duplicate"])
def test_a_tiff_tile_size_libtiff_reads_is_the_one_the_tile_check_reads(tmp_path, variant):
    """W1's tile check (_tiff_tags) reads TileWidth/TileLength only when typed SHORT/LONG (LONG8 in
    a BigTIFF), and keeps the LAST of duplicated entries. The same 158-byte file with the tile size
    typed SLONG or SSHORT, typed LONG8 in a classic TIFF, or given twice (26752 first, 16 second:
    libtiff keeps the first) passes the check, and libtiff fills the whole 26752x26752 tile:
    load_image peaked at 2.1 GB (SSHORT 26000: 2.0 GB), infer at 2.7 GB, score_onnx.py 2.2 GB."""
    side = 26000 if variant == "sshort" else 26752  # SSHORT holds up to 32767
    path = tmp_path / "a.tif"
    path.write_bytes(_tiled_tiff(side, variant))
    proc = subprocess.run([sys.executable, "-c", _MEASURED_LOAD, str(path)], cwd=REPO, env=_cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stdout.split("peak_kb")[-1]) / 1024
    assert peak_mb < 1024, f"decoding a {path.stat().st_size}-byte TIFF peaked at {peak_mb:.0f} MB"
    assert "tile" in proc.stdout, proc.stdout


def test_a_slong_tiled_tiff_is_refused_by_score_onnx_before_libtiff_fills_it(exported, tmp_path):
    """score_onnx.py's tiff_problem has the same gap: 2.2 GB RSS, then 'OSError: decoder error -2'."""
    path = tmp_path / "a.tif"
    path.write_bytes(_tiled_tiff(26752, "slong"))
    artifacts = exported / "categories" / "weave" / "artifacts"
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(REPO / 'examples' / 'score_onnx.py')!r}, {str(artifacts)!r}, {str(path)!r}]\n"
            "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('peak_kb', int(next(line for line in open('/proc/self/status') "
            "if line.startswith('VmHWM:')).split()[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_cli_env(), capture_output=True, text=True,
                          timeout=60)
    peak_mb = int(proc.stdout.split("peak_kb")[-1]) / 1024
    assert peak_mb < 1024, f"score_onnx.py on a 158-byte TIFF peaked at {peak_mb:.0f} MB"
    assert "tile" in proc.stderr, proc.stderr[-2000:]


def _noise(side: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_whose_image_data_ends_after_half_its_rows_is_never_read_as_black(tmp_path):
    """A 256x256 RGB PNG whose (complete, CRC-correct) zlib stream holds only 128 rows, then IEND:
    Pillow loads it without a word and the missing rows are black. load_image returns the image,
    infer scores it (anomalous, score 76) and score_onnx.py too; a truncated PNG without IEND is
    refused ("image file is truncated"), this one should be as well."""
    arr = _noise()
    raw = b"".join(b"\x00" + arr[row].tobytes() for row in range(128))
    path = tmp_path / "half.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 256, 256, 8, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    refused_naming(path, lambda loaded: f"rows 128.. are all {loaded[128:].max()}")


def test_a_jpeg_whose_scan_ends_early_before_its_eoi_is_never_read_as_flat_grey(tmp_path):
    """A camera JPEG cut at half its size with the EOI marker (FF D9) appended: libjpeg warns
    'premature end of data segment' (Pillow drops the warning) and fills the rest with flat grey;
    load_image returns it, infer and score_onnx.py score it. The same file cut without the EOI is
    refused ("image file is truncated")."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_noise()).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    refused_naming(path, lambda loaded: f"its bottom rows have std {loaded[200:].std():.1f}")


def _measured_load(path: Path, read_size: bool = False) -> tuple[str, float, float]:
    """load_image (or read_size) of ``path`` in a fresh process: its output, seconds and peak MB."""
    call = "read_size(sys.argv[1])" if read_size else "load_image(sys.argv[1], resize=128)"
    code = ("import sys, time\n"
            "from pyimgano_hydra.data.images import load_image, read_size\n"
            "from pyimgano_hydra.errors import DataError\n"
            "started = time.perf_counter()\n"
            f"try: {call}\n"
            "except DataError as exc: print(exc)\n"
            "print('seconds', time.perf_counter() - started)\n"
            "print('peak_kb', int(next(line for line in open('/proc/self/status') "
            "if line.startswith('VmHWM:')).split()[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, env=_cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds = float(proc.stdout.split("seconds")[-1].split()[0])
    return proc.stdout, seconds, int(proc.stdout.split("peak_kb")[-1]) / 1024


def test_a_gif_of_millions_of_one_byte_comment_blocks_never_balloons_the_decoder(tmp_path):
    """A GIF (any image extension: Pillow picks GIF by content) whose comment extension holds 10
    million one-byte sub-blocks before the image: Pillow keeps each as a bytes object in a list,
    then joins them. The 20 MB file took 917 MB in load_image (a 45 MB one passes 2 GB); the
    JPEG header has a segment limit, a GIF's blocks none."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (16, 16), 1).save(buf, "GIF")
    data = buf.getvalue()
    descriptor = 13 + 3 * 2 ** ((data[10] & 7) + 1)  # header, logical screen, global colour table
    assert data[descriptor:descriptor + 1] == b","
    path = tmp_path / "a.png"
    path.write_bytes(data[:descriptor] + b"!\xfe" + b"\x01a" * 10_000_000 + b"\x00" + data[descriptor:])
    out, seconds, peak_mb = _measured_load(path)
    assert peak_mb < 400, f"decoding a 20 MB GIF peaked at {peak_mb:.0f} MB ({seconds:.1f} s): {out}"


def _tiff_with_rationals(tag: int, count: int) -> bytes:
    """A 16x16 RGB TIFF whose tag ``tag`` is typed RATIONAL with ``count`` values (8 bytes each)."""
    pixels = b"\x80" * (16 * 16 * 3)
    extra = b"\x01\x00\x00\x00\x02\x00\x00\x00" * count
    tags = sorted([(256, 4, 1, 16), (257, 4, 1, 16), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2), (277, 3, 1, 3),
                   (273, 4, 1, 8), (278, 4, 1, 16), (279, 4, 1, len(pixels)), (tag, 5, count, 8 + len(pixels))])
    ifd = struct.pack("<H", len(tags))
    for number, kind, n, value in tags:
        ifd += (struct.pack("<HHIHH", number, kind, n, value, 0) if kind == 3
                else struct.pack("<HHII", number, kind, n, value))
    return b"II*\x00" + struct.pack("<I", 8 + len(pixels) + len(extra)) + pixels + extra + ifd + b"\x00" * 4


@pytest.mark.parametrize("tag,read_size,count", [(274, False, 1_000_000), (282, True, 2_000_000)],
                         ids=["orientation", "xresolution"])
def test_a_tiff_tag_of_a_million_rationals_never_stalls_the_decoder(tmp_path, tag, read_size, count):
    """Pillow turns every value of a RATIONAL tag it reads into an IFDRational object (Python, a
    Fraction each): a 16 MB 16x16 TIFF whose Orientation (274, read by exif_transpose) holds 2
    million rationals took 13 s and 393 MB in load_image (infer: 20 s instead of 5.6 s; score_onnx.py
    9.7 s); XResolution (282, read at open) 6 s and 375 MB in read_size. The time and memory grow
    with the file (about 0.8 s and 25 MB a MB); the header's layout check should refuse a layout
    or resolution tag with more values than it can have, as it refuses millions of strips."""
    path = tmp_path / "a.tif"
    path.write_bytes(_tiff_with_rationals(tag, count))
    out, seconds, peak_mb = _measured_load(path, read_size=read_size)
    assert seconds < 2.5, f"a {count * 8 >> 20} MB 16x16 TIFF took {seconds:.1f} s ({peak_mb:.0f} MB): {out}"


@pytest.mark.parametrize("where", ["before_idat", "after_idat"])
def test_a_png_of_millions_of_empty_chunks_is_refused_before_pillow_walks_them(tmp_path, where):
    """A 16x16 PNG padded with 1.7 million empty private chunks (12 bytes each, CRC-correct; 20 MB):
    Pillow walks every chunk in Python, before the image data at open and after it at load.
    load_image took 5.2 s and 248 MB (0.2 s for the bare file), score_onnx.py 4.5 s; infer opens
    it twice. The JPEG twin (millions of empty APP markers) is refused from the header
    (MAX_JPEG_HEADER_SEGMENTS); a PNG's chunks have no such limit."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, "PNG")
    data = buf.getvalue()
    at = 8 + 25 if where == "before_idat" else data.rfind(b"IEND") - 4
    path = tmp_path / "a.png"
    path.write_bytes(data[:at] + _png_chunk(b"abCd", b"") * 1_700_000 + data[at:])
    out, seconds, peak_mb = _measured_load(path)
    assert seconds < 2.0, f"a 20 MB 16x16 PNG took {seconds:.1f} s ({peak_mb:.0f} MB): {out}"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_exif_block_of_millions_of_orientation_rationals_never_stalls_the_decoder(tmp_path, fmt):
    """The EXIF twin of the TIFF tag: a 16x16 PNG (eXIf chunk) or WebP (EXIF chunk; neither is
    held to a JPEG APP1's 64 KB) whose EXIF Orientation is typed RATIONAL with 2 million values
    (16 MB): exif_transpose turns each into an IFDRational. load_image took 4.9 s and 406 MB for
    either (0.2 s for the bare file); it grows with the block (no MAX_EXIF_BYTES at load)."""
    from PIL import Image

    count = 2_000_000
    exif = (b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 274, 5, count, 26) + struct.pack("<I", 0)
            + b"\x01\x00\x00\x00\x02\x00\x00\x00" * count)
    buf = io.BytesIO()
    path = tmp_path / f"a.{fmt.lower()}"
    if fmt == "PNG":
        Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, "PNG")
        data = buf.getvalue()
        path.write_bytes(data[:33] + _png_chunk(b"eXIf", exif) + data[33:])
    else:
        Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, "WEBP", exif=b"Exif\x00\x00" + exif)
        path.write_bytes(buf.getvalue())
    out, seconds, peak_mb = _measured_load(path)
    assert seconds < 2.0, f"a 16 MB 16x16 {fmt} took {seconds:.1f} s ({peak_mb:.0f} MB): {out}"


def _gray_tiff(bits: int, photometric: int, pixels: bytes, sample_format: int = 1, side: int = 16) -> bytes:
    """An uncompressed one-strip gray TIFF of ``side`` x ``side`` pixels."""
    tags = sorted([(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, bits), (259, 3, 1, 1), (262, 3, 1, photometric),
                   (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, len(pixels)),
                   (339, 3, 1, sample_format)])
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3
                else struct.pack("<HHII", tag, kind, count, value))
    return b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + ifd + b"\x00" * 4


def test_a_16_bit_white_is_zero_tiff_is_never_read_inverted(tmp_path):
    """PhotometricInterpretation 0 (WhiteIsZero, as X-ray detectors write): the 8-bit file of
    value 20 loads as 235 (inverted, right); its 16-bit twin (20*257) loads as 20, i.e. the whole
    image is silently scored as its negative (Pillow's I;16 mode ignores the photometric)."""
    from pyimgano_hydra.data.images import load_image

    path8, path16 = tmp_path / "a8.tif", tmp_path / "a16.tif"
    path8.write_bytes(_gray_tiff(8, 0, np.full((16, 16), 20, np.uint8).tobytes()))
    path16.write_bytes(_gray_tiff(16, 0, np.full((16, 16), 20 * 257, "<u2").tobytes()))
    assert int(load_image(path8)[0, 0, 0]) == 235
    try:
        value = int(load_image(path16)[0, 0, 0])
    except Exception as exc:  # refused is fine too, as one line naming the file
        assert "a16.tif" in str(exc)
        return
    assert value == 235, f"a 16-bit WhiteIsZero TIFF read as {value}, its 8-bit twin as 235"


def test_a_signed_8_bit_tiff_with_negative_values_is_refused_like_a_16_bit_one(tmp_path):
    """SampleFormat 2 (signed): a 16-bit file of -100 is refused ("image holds negative values");
    the 8-bit one loads, -100 read as 156 (its two's-complement byte): a silent wrong image."""
    from pyimgano_hydra.data.images import load_image
    from pyimgano_hydra.errors import DataError

    path16, path8 = tmp_path / "s16.tif", tmp_path / "s8.tif"
    path16.write_bytes(_gray_tiff(16, 1, np.full((16, 16), -100, "<i2").tobytes(), sample_format=2))
    path8.write_bytes(_gray_tiff(8, 1, np.full((16, 16), -100, np.int8).tobytes(), sample_format=2))
    with pytest.raises(DataError, match="negative"):
        load_image(path16)
    try:
        value = int(load_image(path8)[0, 0, 0])
    except DataError as exc:
        assert "s8.tif" in str(exc)
        return
    pytest.fail(f"a signed 8-bit TIFF of -100 loaded as {value}")


def _rgb16_tiff(pixels: np.ndarray, planar: bool) -> bytes:
    """An uncompressed little-endian 16-bit RGB TIFF of ``pixels`` (H, W, 3) uint16, its samples
    interleaved (one strip) or planar (PlanarConfiguration 2: one strip a channel)."""
    height, width, _ = pixels.shape
    strips = [pixels[..., c].astype("<u2").tobytes() for c in range(3)] if planar else [pixels.astype("<u2").tobytes()]
    body = b"".join(strips)
    n = len(strips)
    arrays_at = 8 + len(body)
    offsets = [8 + sum(len(s) for s in strips[:i]) for i in range(n)]
    arrays = (struct.pack(f"<{n}I", *offsets) + struct.pack(f"<{n}I", *map(len, strips))
              + struct.pack("<3H", 16, 16, 16) + b"\x00\x00")
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, arrays_at + 8 * n), (259, 3, 1, 1),
            (262, 3, 1, 2), (277, 3, 1, 3), (278, 4, 1, height), (284, 3, 1, 2 if planar else 1)]
    tags += ([(273, 4, n, arrays_at), (279, 4, n, arrays_at + 4 * n)] if n > 1
             else [(273, 4, 1, offsets[0]), (279, 4, 1, len(strips[0]))])
    tags.sort(key=lambda entry: entry[0])
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1
                else struct.pack("<HHII", tag, kind, count, value))
    return b"II*\x00" + struct.pack("<I", arrays_at + len(arrays)) + body + arrays + ifd + b"\x00" * 4


def test_an_uncompressed_planar_16_bit_rgb_tiff_reads_as_its_interleaved_twin(tmp_path):
    """PlanarConfiguration 2 (one plane a channel, as scientific cameras and ImageJ write) with
    16-bit samples, uncompressed: Pillow reads each plane with the 8-bit rawmode 'R'/'G'/'B', so
    the image is built from the first half of each plane's bytes, low and high bytes mixed:
    a uniform (10, 120, 230) image (x256 + 77) loads as (77, 77, 77). The interleaved file and the
    deflated planar one load right. Silent: infer scores a garbled image."""
    from pyimgano_hydra.data.images import load_image
    from pyimgano_hydra.errors import DataError

    pixels = np.random.default_rng(0).integers(0, 65535, (16, 16, 3)).astype(np.uint16)
    chunky, planar = tmp_path / "chunky.tif", tmp_path / "planar.tif"
    chunky.write_bytes(_rgb16_tiff(pixels, planar=False))
    planar.write_bytes(_rgb16_tiff(pixels, planar=True))
    expected = load_image(chunky)
    assert np.abs(expected.astype(int) - ((pixels.astype(int) + 128) // 257)).max() <= 1
    try:
        got = load_image(planar)
    except DataError as exc:
        assert "planar.tif" in str(exc)
        return
    assert np.array_equal(got, expected), f"planar 16-bit read differs by up to {np.abs(got.astype(int) - expected).max()}"


def _exif_with_thumbnail() -> bytes:
    """An EXIF APP1 payload whose IFD1 holds a 160x120 baseline JPEG thumbnail, as cameras write."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (160, 120), (50, 90, 130)).save(buf, "JPEG")
    thumb = buf.getvalue()
    ifd1 = (struct.pack("<H", 2) + struct.pack("<HHII", 513, 4, 1, 44) + struct.pack("<HHII", 514, 4, 1, len(thumb))
            + struct.pack("<I", 0))
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<IHI", 8, 0, 14) + ifd1 + thumb


def test_a_baseline_camera_jpeg_with_an_exif_thumbnail_is_not_counted_as_multi_scan(tmp_path):
    """_jpeg_scans counts FF DA in the whole file, the EXIF thumbnail's scan included: a baseline
    camera JPEG with a thumbnail counts 2 scans, is taken for multi-scan, and is held to 2 bytes a
    pixel a channel at full size, though it decodes drafted. A 46 MP (8200x5600) baseline camera
    JPEG with its thumbnail was refused ("holds 276 MB, over dataset.max_image_megabytes=256"); the
    same file without the thumbnail loads. Shown here at 1000x1000 with max_megabytes=4."""
    from PIL import Image

    from pyimgano_hydra.data.images import load_image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8))
    plain, camera = tmp_path / "plain.jpg", tmp_path / "camera.jpg"
    img.save(plain, "JPEG", quality=80)
    img.save(camera, "JPEG", quality=80, exif=_exif_with_thumbnail())
    assert not Image.open(camera).info.get("progressive")
    assert load_image(plain, resize=256, max_megabytes=4).shape == (256, 256, 3)
    assert load_image(camera, resize=256, max_megabytes=4).shape == (256, 256, 3)


_TRUNCATED_WHILE_MAPPED = (
    "import mmap, os, runpy, sys\n"
    "real = mmap.mmap\n"
    "def mapped_then_cut(fileno, *args, **kwargs):\n"
    "    data = real(fileno, *args, **kwargs)\n"
    "    if os.fstat(fileno).st_size > 50 << 20:\n"
    "        os.truncate(os.readlink(f'/proc/self/fd/{fileno}'), 4096)  # the camera rewrites it in place\n"
    "    return data\n"
    "mmap.mmap = mapped_then_cut\n"
    "sys.argv = ['infer', *sys.argv[1:]]\n"
    "runpy.run_module('pyimgano_hydra.infer', run_name='__main__')\n")


def test_a_jpeg_truncated_while_its_scans_are_counted_never_kills_the_inference(exported, tmp_path):
    """_jpeg_scans mmaps the whole JPEG and searches it for FF DA. A camera rewriting the file in
    place (truncate, then write) while infer scans it makes the pages past the new end fault:
    SIGBUS kills the process (exit 135), no Python handler runs; status.json stays 'running', no
    predictions for the other images. Reproduced without hooks: infer on a folder of 2 TIFFs and a
    300 MB JPEG that a shell loop truncated to 1000 bytes and extended again: rc 135 on the first
    try. Here the truncation is made to land right after the mmap."""
    from PIL import Image

    folder = tmp_path / "line"
    folder.mkdir()
    Image.new("RGB", (32, 32), (120, 120, 120)).save(folder / "a.png")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    with open(folder / "b.jpg", "wb") as handle:  # bytes after EOI are ignored by Pillow
        handle.write(buf.getvalue())
        handle.truncate(64 << 20 | 1)  # sparse: no disk
    out = tmp_path / "infer"
    proc = subprocess.run([sys.executable, "-c", _TRUNCATED_WHILE_MAPPED, f"run_dir={exported}", f"input={folder}",
                           f"hydra.run.dir={out}"], cwd=tmp_path, env=_cli_env(), capture_output=True, text=True,
                          timeout=120)
    status = json.loads((out / "status.json").read_text())["status"]
    assert proc.returncode in (0, 2), f"rc={proc.returncode}, status {status}: {proc.stderr[-1500:]}"
    assert status != "running"
    assert "a.png" in (out / "predictions.jsonl").read_text()


def _tree(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


def test_held_infer_output_dir_reached_through_a_symlinked_parent_never_writes_into_the_run(exported, tmp_path):
    """hydra.run.dir=<link to the run's categories>/new (or hydra.job_logging's file there) is
    refused in one line naming the key, and the completed run is unchanged."""
    before = _tree(exported)
    link = tmp_path / "cat"
    link.symlink_to(exported / "categories")
    for extra in ([f"hydra.run.dir={link}/new"],
                  [f"hydra.run.dir={tmp_path}/out", f"hydra.job_logging.handlers.file.filename={link}/weave/report.json"]):
        proc = run_cli([f"run_dir={exported}", f"input={small_png(exported)}", *extra], module="pyimgano_hydra.infer",
                       timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and "hydra." in proc.stderr, proc.stderr
    assert _tree(exported) == before


def test_held_infer_onnxruntime_under_pythonwarnings_error_and_optimize_completes(exported, tmp_path):
    """A line PC with PYTHONWARNINGS=error and PYTHONOPTIMIZE=2 (asserts and docstrings gone)."""
    out = tmp_path / "infer"
    proc = run_cli([f"run_dir={exported}", f"input={small_png(exported)}", "runtime=onnxruntime",
                    f"hydra.run.dir={out}"], module="pyimgano_hydra.infer",
                   env={"PYTHONWARNINGS": "error", "PYTHONOPTIMIZE": "2"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"


def test_score_onnx_refuses_the_png_gif_and_exif_padding_infer_refuses_and_scores_the_rest(exported, tmp_path):
    """score_onnx.py on the line PC: the 20 MB PNG of empty chunks took 4.5 s there; the GIF of
    comment blocks and the WebP of a 16 MB EXIF block are the same padding. Each is one line naming
    it; a plain PNG and GIF score."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, "PNG")
    data = buf.getvalue()
    chunks = tmp_path / "chunks.png"
    chunks.write_bytes(data[:33] + _png_chunk(b"abCd", b"") * 150_000 + data[33:])
    buf = io.BytesIO()
    Image.new("P", (16, 16), 1).save(buf, "GIF")
    gif = buf.getvalue()
    descriptor = 13 + 3 * 2 ** ((gif[10] & 7) + 1)
    blocks = tmp_path / "blocks.gif"
    blocks.write_bytes(gif[:descriptor] + b"!\xfe" + b"\x01a" * 150_000 + b"\x00" + gif[descriptor:])
    plain_gif = tmp_path / "plain.gif"
    plain_gif.write_bytes(gif)
    exif = tmp_path / "exif.webp"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(exif, "WEBP", exif=b"Exif\x00\x00II*\x00" + b"\x00" * (2 << 20))
    proc = run_score_onnx(exported, chunks, blocks, exif, small_png(exported), plain_gif)
    assert proc.returncode == 2, proc.stderr[-1500:]
    errors = proc.stderr.strip().splitlines()
    assert [next(name for name in ("chunks.png", "blocks.gif", "exif.webp") if name in line) for line in errors] == \
        ["chunks.png", "blocks.gif", "exif.webp"], errors
    assert [json.loads(line)["image"] for line in proc.stdout.splitlines()] == [str(small_png(exported)),
                                                                                 str(plain_gif)]
