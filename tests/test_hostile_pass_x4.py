"""Attacker pass X4: image decoding (load_image / load_mask / read_size, headers.png_data_complete
and jpeg_data_complete) and infer's input listing; new variants after W1..W4."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import refused_naming


def _gray_tiff(strips: list[bytes], height: int, rows_per_strip: int, compression: int = 1, width: int = 16) -> bytes:
    """A little-endian 8-bit gray TIFF of ``width`` x ``height`` whose StripOffsets/StripByteCounts
    list exactly ``strips`` (however many RowsPerStrip asks for)."""
    body = b"".join(strips)
    n = len(strips)
    offsets = [8 + sum(len(s) for s in strips[:i]) for i in range(n)]
    arrays_at = 8 + len(body)
    arrays = struct.pack(f"<{n}I", *offsets) + struct.pack(f"<{n}I", *map(len, strips))
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, compression), (262, 3, 1, 1),
            (273, 4, n, arrays_at if n > 1 else offsets[0]), (277, 3, 1, 1), (278, 3, 1, rows_per_strip),
            (279, 4, n, arrays_at + 4 * n if n > 1 else len(strips[0]))]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1
                else struct.pack("<HHII", tag, kind, count, value))
    return b"II*\x00" + struct.pack("<I", arrays_at + len(arrays)) + body + arrays + ifd + b"\x00" * 4


def _texture(height: int = 128, width: int = 128) -> np.ndarray:
    rng = np.random.default_rng(4)
    return (rng.integers(0, 255, (height // 8, width // 8, 3)).repeat(8, 0).repeat(8, 1)).astype(np.uint8)


def test_an_uncompressed_tiff_listing_fewer_strips_than_its_rows_need_is_never_read_with_black_rows(tmp_path):
    """A 16x16 uncompressed gray TIFF of RowsPerStrip 1 (16 strips needed) whose StripOffsets /
    StripByteCounts list only the first 8 (or 1) strips: Pillow's raw path makes one tile per listed
    offset and leaves the other rows black, without a word; load_image returns it, infer scores it.
    The same file deflate-compressed goes through libtiff, which refuses it ('Invalid strip byte
    count 0, strip 8'): the uncompressed one should be refused as well."""
    rows = [bytes([200]) * 16 for _ in range(16)]
    full = tmp_path / "full.tif"
    full.write_bytes(_gray_tiff(rows, 16, 1))
    from pyimgano_hydra.data.images import load_image
    assert (load_image(full) == 200).all()
    for listed in (8, 1):
        path = tmp_path / f"strips{listed}.tif"
        path.write_bytes(_gray_tiff(rows[:listed], 16, 1))
        refused_naming(path, lambda got: f"{int((got[:, :, 0] == 0).all(1).sum())} of 16 rows black")
    path = tmp_path / "rows_per_strip_8.tif"  # RowsPerStrip 8: two strips needed, one listed
    path.write_bytes(_gray_tiff([b"".join(rows[:8])], 16, 8))
    refused_naming(path, lambda got: f"{int((got[:, :, 0] == 0).all(1).sum())} of 16 rows black")


def test_a_planar_rgb_tiff_listing_fewer_planes_than_its_samples_is_never_read_with_a_black_channel(tmp_path):
    """The same with PlanarConfiguration 2: a 16x16 8-bit RGB TIFF of uniform (50, 100, 150), one
    strip a plane, whose StripOffsets list only the R and G planes: it loads as (50, 100, 0)."""
    planes = [bytes([value]) * 256 for value in (50, 100, 150)]
    body = b"".join(planes[:2])
    arrays_at = 8 + len(body)
    arrays = struct.pack("<2I", 8, 8 + 256) + struct.pack("<2I", 256, 256) + struct.pack("<3H", 8, 8, 8) + b"\x00\x00"
    tags = [(256, 3, 1, 16), (257, 3, 1, 16), (258, 3, 3, arrays_at + 16), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 2, arrays_at), (277, 3, 1, 3), (278, 3, 1, 16), (279, 4, 2, arrays_at + 8), (284, 3, 1, 2)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1
                else struct.pack("<HHII", tag, kind, count, value))
    path = tmp_path / "two_planes.tif"
    path.write_bytes(b"II*\x00" + struct.pack("<I", arrays_at + len(arrays)) + body + arrays + ifd + b"\x00" * 4)
    refused_naming(path, lambda got: f"pixel {got[0, 0].tolist()}")


def test_a_progressive_jpeg_cut_after_a_scan_and_closed_with_eoi_is_never_read_blurred(tmp_path):
    """A progressive JPEG (Pillow's 10-scan script) cut right after its first scan (DC only, at
    half precision) with an EOI appended: libjpeg decodes it without a warning, so
    jpeg_data_complete passes it, and Pillow loads 8x8 flat blocks at a coarse DC: every detail
    of the image gone (the cut camera file 'closed with EOI' that d278168 refuses for a baseline
    JPEG). The same cut without EOI is refused ('premature end'). A file whose scans do not bring
    every coefficient of every component down to Al=0 (or, sequential, leave a component out)
    should be refused naming it."""
    from PIL import Image

    arr = _texture()
    arr[::2] //= 2  # detail inside each 8x8 block
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, progressive=True)
    data = buf.getvalue()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    path = tmp_path / "cut_after_scan_1.jpg"
    path.write_bytes(data[:second_scan] + b"\xff\xd9")
    refused_naming(path, lambda got: f"mean abs error {np.abs(got.astype(int) - arr).mean():.1f} "
                                      f"(the full file: {np.abs(np.asarray(Image.open(io.BytesIO(data))).astype(int) - arr).mean():.1f})")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("frame", ["top", "bottom"])
def test_a_png_whose_fctl_declares_half_the_image_is_never_read_with_black_rows(tmp_path, frame):
    """A 16x16 gray PNG whose (complete, CRC-correct) IDAT holds all 16 rows, preceded by an APNG
    fcTL chunk (sequence 0, no acTL needed) declaring a 16x8 frame at y=0 or y=8: Pillow decodes
    the IDAT into that box only and leaves the other 8 rows black, without a word.
    png_data_complete counts the IDAT's 16 rows against IHDR's and passes it. load_image returns
    it (and load_mask would read half a defect mask as empty)."""
    arr = np.full((16, 16), 200, np.uint8)
    raw = b"".join(b"\x00" + arr[row].tobytes() for row in range(16))
    fctl = struct.pack(">IIIIIHHBB", 0, 16, 8, 0, 0 if frame == "top" else 8, 1, 10, 0, 0)
    path = tmp_path / f"fctl_{frame}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
                     + _png_chunk(b"fcTL", fctl) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    refused_naming(path, lambda got: f"{int((got[:, :, 0] == 0).all(1).sum())} of 16 rows black")


def test_a_cut_jpeg_closed_with_eoi_is_refused_whatever_trails_the_eoi(tmp_path):
    """The cut-and-closed baseline JPEG that d278168 refuses, followed by 17 MB of zeros after its
    EOI (phones append a motion-photo video or a vendor trailer there; Pillow ignores anything
    after EOI): jpeg_data_complete counts a file over height x width x 8 + 16 MB as complete
    without decoding it, so this 64x64 one loads with its bottom half flat grey (std 0.0)."""
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = tmp_path / "cut_with_trailer.jpg"
    path.write_bytes(data[:len(data) // 2] + b"\xff\xd9" + b"\x00" * (17 << 20))
    refused_naming(path, lambda got: f"its bottom rows have std {got[48:].std():.1f}")


def _peak_mb_of(code: str, *args: str) -> tuple[str, float]:
    """Run ``code`` in a fresh interpreter: (its stdout, its peak resident MB)."""
    import subprocess
    import sys

    from conftest import REPO, _cli_env

    code += ("\nprint('peak_kb', int(next(line for line in open('/proc/self/status') "
             "if line.startswith('VmHWM:')).split()[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=_cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, int(proc.stdout.split("peak_kb")[-1]) / 1024


def test_a_700_byte_jpeg_declaring_13000x13000_is_checked_at_one_eighth_not_decoded_whole(tmp_path):
    """jpeg_data_complete calls simplejpeg.decode_jpeg(..., min_factor=8) meaning a 1/8-scale
    decode, but simplejpeg scales only when min_height/min_width are given: it decodes at full size.
    A 691-byte baseline JPEG whose SOF declares 13000x13000 (under Pillow's bomb limit; infer's
    draft to 1/8 passes the 256 MB check) makes load_image(resize=64) allocate a 507 MB array
    (peak ~545 MB, against ~50 MB once refused) before refusing it; every real JPEG is decoded
    once more at full size."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (13000).to_bytes(2, "big") * 2
    path = tmp_path / "declares_13000.jpg"
    path.write_bytes(bytes(data))
    out, peak = _peak_mb_of("import sys\nfrom pyimgano_hydra.data.images import load_image\n"
                            "from pyimgano_hydra.errors import DataError\n"
                            "try: load_image(sys.argv[1], resize=64)\nexcept DataError as exc: print(exc)\n", str(path))
    assert "declares_13000.jpg" in out
    assert peak < 250, f"peak {peak:.0f} MB for a {len(data)}-byte file"


def test_a_png_with_a_second_ihdr_is_never_read_with_black_rows(tmp_path):
    """A gray PNG of two IHDR chunks, 16x8 then 16x16, and a complete zlib stream of 8 rows:
    png_data_complete counts the rows against the FIRST IHDR (8: complete), Pillow sizes the image
    by the LAST (16) and leaves rows 8..15 black without a word. A PNG of more than one IHDR is
    broken: it should be refused naming it."""
    arr = np.full((8, 16), 200, np.uint8)
    raw = b"".join(b"\x00" + arr[row].tobytes() for row in range(8))
    path = tmp_path / "two_ihdr.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 8, 8, 0, 0, 0, 0))
                     + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    refused_naming(path, lambda got: f"{got.shape[0]} rows, {int((got[:, :, 0] == 0).all(1).sum())} of them black")


_ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _packed(values: np.ndarray, depth: int) -> bytes:
    if depth == 16:
        return values.astype(">u2").tobytes()
    if depth == 8:
        return values.astype(np.uint8).tobytes()
    bits = "".join(format(int(v), f"0{depth}b") for v in values.reshape(-1))
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def test_held_interlaced_and_sub_byte_pngs_of_odd_sizes_are_never_refused_as_cut(tmp_path):
    """Adam7-interlaced and plain PNGs of 1/2/4/8/16-bit gray, palette, RGB, gray+alpha and RGBA at
    sizes where some passes are empty (1x1, 1x5, 5x1, 7x9, 9x17, 13x3), written pixel by pixel
    (each pass's pixels listed, not computed by formula): png_data_complete passes every one and
    load_image loads it."""
    from pyimgano_hydra.data import headers
    from pyimgano_hydra.data.images import load_image

    rng = np.random.default_rng(7)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
    for height, width in ((1, 1), (1, 5), (5, 1), (7, 9), (9, 17), (13, 3)):
        for depth, colour in ((1, 0), (2, 0), (4, 0), (16, 0), (1, 3), (2, 3), (4, 3), (8, 3), (16, 2), (8, 4), (16, 6)):
            for interlace in (0, 1):
                shape = (height, width) if channels[colour] == 1 else (height, width, channels[colour])
                img = rng.integers(0, 2 ** depth, shape)
                raw = b""
                for x0, y0, dx, dy in (_ADAM7_PASSES if interlace else ((0, 0, 1, 1),)):
                    for y in range(y0, height, dy):
                        if x0 < width:
                            raw += b"\x00" + _packed(img[y, x0::dx], depth)
                plte = _png_chunk(b"PLTE", bytes(i % 256 for i in range(3 * 2 ** depth))) if colour == 3 else b""
                data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour,
                                                                            0, 0, interlace))
                        + plte + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
                assert headers.png_data_complete(io.BytesIO(data)), (height, width, depth, colour, interlace)
                path = tmp_path / "odd.png"
                path.write_bytes(data)
                assert load_image(path).shape == (height, width, 3)


def test_held_cmyk_gray_and_restart_interval_jpegs_load_whole_and_are_refused_cut(tmp_path):
    """CMYK (Adobe), gray, 4:4:4 and restart-interval (every block / every row) baseline JPEGs:
    each loads whole, with 7 KB of trailing bytes after its EOI, and with a second JPEG appended;
    each cut at two thirds and closed with EOI is refused naming it."""
    from PIL import Image

    from pyimgano_hydra.data.images import load_image

    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    for n, (mode, options) in enumerate((("CMYK", {}), ("L", {}), ("RGB", {"subsampling": 0}),
                                         ("RGB", {"restart_marker_blocks": 1}), ("RGB", {"restart_marker_rows": 1}))):
        buf = io.BytesIO()
        Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=90, **options)
        data = buf.getvalue()
        for tail in (b"", b"garbage" * 1000, data):
            path = tmp_path / f"whole{n}.jpg"
            path.write_bytes(data + tail)
            assert load_image(path)[48:].std() > 20
        path = tmp_path / f"cut{n}.jpg"
        path.write_bytes(data[:len(data) * 2 // 3] + b"\xff\xd9")
        refused_naming(path, lambda got: f"its bottom rows have std {got[48:].std():.1f}")


def test_a_cut_jpeg_with_a_harmless_header_warning_first_is_still_refused(tmp_path):
    """simplejpeg's strict decode raises on libjpeg's FIRST warning. Five padding bytes before the
    SOF marker (cameras and editors leave such padding; libjpeg: '5 extraneous bytes before marker
    0xc0', harmless, and not in _JPEG_DATA_LOST) make that the first one, so the 'premature end of
    data segment' that follows is never seen: the cut-and-closed JPEG that d278168 refuses loads
    again with its bottom half flat grey (std 0.0)."""
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    sof = data.index(b"\xff\xc0")
    data = data[:sof] + b"\x00" * 5 + data[sof:]
    sos = data.index(b"\xff\xda")
    path = tmp_path / "padded_cut.jpg"
    path.write_bytes(data[:sos + (len(data) - sos) // 2] + b"\xff\xd9")
    refused_naming(path, lambda got: f"its bottom rows have std {got[48:].std():.1f}")


def test_a_jpeg_in_tiff_whose_strip_ends_early_is_never_read_flat_grey(tmp_path):
    """A 64x64 RGB TIFF of compression 7 (JPEG, as Pillow/libtiff write it: one strip) whose
    StripByteCounts is halved: libtiff hands libjpeg half the strip, libjpeg warns 'premature end'
    to libtiff's warning handler only, and the image loads with its bottom half flat grey (std 0.0)
    without a word: the JPEG-in-TIFF twin of the cut JPEG that d278168 refuses."""
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF", compression="jpeg", quality=90)
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        tag, kind, count, value = struct.unpack_from("<HHII", data, at)
        if tag == 279:
            assert kind == 4 and count == 1
            struct.pack_into("<I", data, at + 8, value // 2)
    path = tmp_path / "jpeg_strip_half.tif"
    path.write_bytes(bytes(data))
    refused_naming(path, lambda got: f"its bottom rows have std {got[48:].std():.1f}")


def test_a_motion_photo_jpeg_with_a_video_after_its_eoi_loads(tmp_path):
    """Phones (Samsung / Google 'motion photo') append a few MB of MP4 video after a JPEG's EOI; the
    JPEG itself is a baseline 640x480 of one scan. jpeg_scans counts every FF DA byte pair from the
    first scan to the end of the FILE, and 10 MB of compressed video holds ~150 of them by chance
    (1 in 65,536 byte pairs): load_image refuses the real camera file as 'more than 100 JPEG scans
    ... re-encode it'. Pillow reads nothing after EOI; the scan count should stop there."""
    from PIL import Image

    from pyimgano_hydra.data.images import load_image

    arr = np.random.default_rng(0).integers(0, 255, (480, 640, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    video = np.random.default_rng(1).integers(0, 256, 10 << 20, dtype=np.uint8).tobytes()
    assert video.count(b"\xff\xda") > 100
    path = tmp_path / "motion_photo.jpg"
    path.write_bytes(buf.getvalue() + video)
    assert load_image(path, resize=64).shape == (64, 64, 3)


def test_held_infer_glob_listing_matches_glob_glob_without_duplicates(tmp_path, monkeypatch):
    """collect_inputs' own '**' walk lists what glob.glob(recursive=True) lists (hidden folders only
    when named, brackets as classes, '..' and './' in the pattern), without the duplicates glob.glob
    gives for 'a/**/**/*.png'."""
    import glob

    from pyimgano_hydra.data.images import is_image_file
    from pyimgano_hydra.infer import collect_inputs

    monkeypatch.chdir(tmp_path)
    for name in ("imgs/x.png", "imgs/a/y.png", "imgs/a/b/z.png", "imgs/c/w.PNG", "imgs/.h/h.png", "imgs/.dot.png",
                 "imgs/a/sp ace.png", "imgs/a/[br].png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    for spec in ("imgs/**/*.png", "imgs/**", "imgs/*/*.png", "imgs/**/b/*.png", "**/*.png", "imgs/**/*.[pP][nN][gG]",
                 "imgs/a/[[]br].png", "imgs/**/.h/*.png", "./imgs/**/*.png", "imgs/a/../**/*.png", "imgs/**/**/*.png"):
        expected = sorted({str(Path(p)) for p in glob.glob(spec, recursive=True) if is_image_file(Path(p))})
        assert sorted(map(str, collect_inputs(spec))) == expected, spec
