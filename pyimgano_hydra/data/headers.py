"""Bounded walks over an image file's header before Pillow parses it.

Pillow's parsers keep a Python object for each TIFF strip, tag value, JPEG segment, PNG chunk or
GIF block, and libtiff fills whole declared tiles: a few MB of such structure took seconds and
GBs for a 16x16 image. These walks read only lengths and counts, stop at a fixed limit, and
leave the handle at the start; :func:`check_before_open` refuses what they find, naming the file.
Two more tell a PNG or JPEG whose image data ends early, which Pillow decodes without a word.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import simplejpeg

from pyimgano_hydra.errors import DataError

MAX_TIFF_STRIPS = 200_000  # a 30000-row image of a row a strip, 3 planes apart, has 90,000
MAX_TIFF_TILE_PIXELS = 1 << 20  # a tile may exceed a small image up to 1024x1024 (padding)
MAX_TIFF_TAG_VALUES = 196_608  # a 16-bit ColorMap's 3 x 65536, the longest tag a baseline TIFF has
MAX_JPEG_HEADER_SEGMENTS = 1000  # a camera's file has about 20; an ICC profile adds a few
MAX_PNG_CHUNKS = 100_000  # a 100 MB image in 1 KB IDAT chunks
MAX_GIF_BLOCKS = 100_000  # extension sub-blocks before the first image
MAX_EXIF_BYTES = 1 << 20  # a JPEG's APP1 holds at most 64 KB

_TIFF_OFFSETS = (273, 279, 324, 325)  # StripOffsets/ByteCounts, TileOffsets/ByteCounts: MAX_TIFF_STRIPS
_TIFF_BLOBS = (700, 33723, 34377, 34675, 37724)  # XMP, IPTC, Photoshop, ICC, ImageSourceData: bytes
_TIFF_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}  # integer types
_TIFF_LAYOUT = (256, 257, 258, 262, 284, 322, 323, 339)  # sizes, bits, photometric, planar, tiles, sample format


def check_before_open(path: str | Path, handle: BinaryIO) -> None:
    """Refuse a file whose header Pillow or libtiff would spend far more on than its pixels."""
    head = handle.read(16)
    handle.seek(0)
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        _check_tiff(path, _tiff_tags(handle))
    elif head[:3] == b"\xff\xd8\xff":
        if jpeg_header(handle)[0] > MAX_JPEG_HEADER_SEGMENTS:
            raise DataError(f"{path}: refused: a JPEG of more than {MAX_JPEG_HEADER_SEGMENTS:,} header segments "
                            f"(a camera's file has about 20); re-encode it")
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        chunks, exif = png_chunks(handle)
        if chunks > MAX_PNG_CHUNKS or exif is not None and len(exif) > MAX_EXIF_BYTES:
            raise DataError(f"{path}: refused: a PNG of more than {MAX_PNG_CHUNKS:,} chunks or an EXIF block over "
                            f"{MAX_EXIF_BYTES >> 20} MB; re-encode it")
    elif head[:6] in (b"GIF87a", b"GIF89a") and _gif_blocks(handle) > MAX_GIF_BLOCKS:
        raise DataError(f"{path}: refused: a GIF of more than {MAX_GIF_BLOCKS:,} blocks before its image; "
                        f"re-encode it")


def _tiff_tags(handle: BinaryIO) -> dict[int, tuple[int, int]]:
    """Tag -> (count, first value) of a TIFF's first directory, a repeated tag at its largest of
    each; the value is read only for integer layout tags (0 otherwise)."""
    head = handle.read(16)
    try:
        order, big = ("<" if head[:1] == b"I" else ">"), head[2:4] in (b"+\0", b"\0+")
        count_fmt, entry_size, inline = ("Q", 20, 8) if big else ("H", 12, 4)
        handle.seek(struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0])
        raw = handle.read(struct.calcsize(count_fmt))
        if len(raw) < struct.calcsize(count_fmt):
            return {}  # Pillow names the broken file
        entries = handle.read(min(struct.unpack(order + count_fmt, raw)[0], 65536) * entry_size)
        tags: dict[int, tuple[int, int]] = {}
        for at in range(0, len(entries) - entry_size + 1, entry_size):
            tag, kind = struct.unpack_from(order + "HH", entries, at)
            count = struct.unpack_from(order + ("Q" if big else "I"), entries, at + 4)[0]
            value = 0
            if tag in _TIFF_LAYOUT and kind in _TIFF_FORMATS and count >= 1:
                size = struct.calcsize(_TIFF_FORMATS[kind])
                field = entries[at + 4 + (8 if big else 4):at + entry_size]
                if size * count <= inline:  # the values inside the entry
                    value = struct.unpack_from(order + _TIFF_FORMATS[kind], field)[0]
                else:  # at the offset the entry holds (LONG8 in a classic TIFF, BitsPerSample of RGB)
                    handle.seek(struct.unpack_from(order + ("Q" if big else "I"), field)[0])
                    data = handle.read(size)
                    value = struct.unpack(order + _TIFF_FORMATS[kind], data)[0] if len(data) == size else 0
            old_count, old_value = tags.get(tag, (0, 0))
            tags[tag] = (max(count, old_count), max(value, old_value))
        return tags
    finally:
        handle.seek(0)


def _check_tiff(path: str | Path, tags: dict[int, tuple[int, int]]) -> None:
    def value(tag: int, default: int = 0) -> int:
        return tags[tag][1] if tag in tags else default

    pieces = max((tags[t][0] for t in (273, 324) if t in tags), default=0)
    if pieces > MAX_TIFF_STRIPS:
        raise DataError(f"{path}: refused: a TIFF of {pieces:,} strips or tiles (at most {MAX_TIFF_STRIPS:,}: "
                        f"every one costs the decoder a Python object); re-save it with larger strips, or as PNG")
    long_tag = next((t for t, (count, _) in tags.items() if t not in _TIFF_OFFSETS + _TIFF_BLOBS
                     and count > MAX_TIFF_TAG_VALUES), None)
    if long_tag is not None:
        raise DataError(f"{path}: refused: TIFF tag {long_tag} holds {tags[long_tag][0]:,} values (at most "
                        f"{MAX_TIFF_TAG_VALUES:,}); re-save it")
    tile, image = value(322) * value(323), value(256) * value(257)
    if tile > max(image, MAX_TIFF_TILE_PIXELS):
        raise DataError(f"{path}: refused: a TIFF tile of {value(322)}x{value(323)} pixels for a "
                        f"{value(256)}x{value(257)} image (the decoder fills whole tiles); re-save it with smaller "
                        f"tiles, or as PNG")
    bits = value(258, 1)
    exotic = ("16-bit WhiteIsZero samples (read inverted)" if value(262, 1) == 0 and bits > 8 else
              "signed 8-bit samples (read as unsigned)" if value(339, 1) == 2 and bits == 8 else
              "16-bit samples stored plane by plane (read scrambled)" if value(284, 1) == 2 and bits > 8 else None)
    if exotic:
        raise DataError(f"{path}: refused: a TIFF of {exotic}; re-save it as 8/16-bit BlackIsZero, "
                        f"interleaved, or as PNG")


def jpeg_header(handle: BinaryIO, limit: int = MAX_JPEG_HEADER_SEGMENTS) -> tuple[int, int | None]:
    """(segments and fill bytes before the first scan, counted up to ``limit + 1``; where the
    first scan's marker is, or None)."""
    try:
        handle.seek(2)
        count = 0
        while count <= limit and len(marker := handle.read(2)) == 2 and marker[0] == 0xFF:
            count += 1
            if marker[1] == 0xFF:  # a fill byte
                handle.seek(-1, 1)
            elif marker[1] == 0xDA:
                return count, handle.tell() - 2
            elif marker[1] == 0xD9:
                break
            elif not (0xD0 <= marker[1] <= 0xD7 or marker[1] == 0x01):  # markers with a length
                length = int.from_bytes(handle.read(2), "big")
                if length < 2:
                    break  # Pillow names the broken file
                handle.seek(length - 2, 1)
        return count, None
    finally:
        handle.seek(0)


_SIMPLEJPEG_SPACES = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}  # decoded as is; else RGB
# libjpeg's warnings after which it fills blocks it never read (not "extraneous bytes before marker")
_JPEG_DATA_LOST = ("premature end", "instead of rst", "bad huffman code")


def jpeg_data_complete(handle: BinaryIO, max_bytes: int) -> bool:
    """Whether libjpeg decodes every block of a JPEG from its data. Pillow drops libjpeg's warnings
    ('premature end of data segment': a file cut and closed with EOI) and fills the blocks it
    never read flat grey; simplejpeg raises them (decoded at 1/8 scale, thrown away). A file over
    ``max_bytes``, or one simplejpeg refuses for another reason, counts as complete: Pillow decides."""
    try:
        data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            return True
        try:
            space = simplejpeg.decode_jpeg_header(data)[2]
            simplejpeg.decode_jpeg(data, _SIMPLEJPEG_SPACES.get(space, "RGB"), min_factor=8, strict=True)
        except ValueError as exc:
            return not any(lost in str(exc).lower() for lost in _JPEG_DATA_LOST)
        return True
    finally:
        handle.seek(0)


def jpeg_scans(handle: BinaryIO, limit: int) -> int:
    """Start-of-scan markers from a JPEG's first scan on (an EXIF thumbnail's is not the file's),
    counted up to ``limit + 1`` in blocks read from the open file (entropy-coded 0xFF bytes are
    stuffed as FF 00, so FF DA is always a marker). Read, not mapped: a file cut by the camera
    while mapped killed the process with SIGBUS."""
    _, first = jpeg_header(handle)
    if first is None:
        return 0
    try:
        handle.seek(first)
        count, carry = 0, b""
        while count <= limit and (block := handle.read(1 << 20)):
            data = carry + block
            count += data.count(b"\xff\xda")
            carry = data[-1:]
        return count
    finally:
        handle.seek(0)


def png_chunks(handle: BinaryIO) -> tuple[int, bytes | None]:
    """(chunks walked, up to ``MAX_PNG_CHUNKS + 1``; the eXIf chunk's data, or None) by the chunk
    headers alone (Pillow decodes every pixel to reach an eXIf placed after the image data)."""
    try:
        handle.seek(8)
        count, exif = 0, None
        while count <= MAX_PNG_CHUNKS and len(head := handle.read(8)) == 8:
            count += 1
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf" and exif is None:
                exif = handle.read(min(length, MAX_EXIF_BYTES + 1))
                handle.seek(length - len(exif) + 4, 1)
                continue
            if kind == b"IEND":
                break
            handle.seek(length + 4, 1)  # the data and its CRC
        return count, exif
    finally:
        handle.seek(0)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_data_complete(handle: BinaryIO) -> bool:
    """Whether a PNG's image data inflates to every row its header declares. Pillow decodes a
    complete zlib stream of half the rows without a word and leaves the rest black. Inflated in
    1 MB pieces, counted, never kept; a header or stream Pillow cannot read counts as complete
    (Pillow names that file itself)."""
    try:
        handle.seek(8)
        head = handle.read(8 + 13)
        if len(head) < 21 or head[4:8] != b"IHDR":
            return True
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[8:21])
        if colour not in _PNG_CHANNELS:
            return True
        bits = _PNG_CHANNELS[colour] * depth
        passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
        expected = sum(rows * (1 + (cols * bits + 7) // 8) for x0, y0, dx, dy in passes
                       if (cols := (width - x0 + dx - 1) // dx) and (rows := (height - y0 + dy - 1) // dy))
        handle.seek(4, 1)  # IHDR's CRC
        inflater, inflated, seen = zlib.decompressobj(), 0, 0
        while inflated < expected and seen <= MAX_PNG_CHUNKS and len(chunk := handle.read(8)) == 8:
            seen += 1
            length, kind = struct.unpack(">I4s", chunk)
            if kind != b"IDAT":
                if inflated or kind == b"IEND":
                    break  # the image data is one run of IDAT chunks
                handle.seek(length + 4, 1)
                continue
            data = handle.read(length)
            handle.seek(4, 1)
            while inflated < expected and not inflater.eof:
                piece = inflater.decompress(data, 1 << 20)
                inflated, data = inflated + len(piece), inflater.unconsumed_tail
                if not piece and not data:
                    break  # the next chunk holds the rest
        return inflated >= expected
    except (zlib.error, struct.error):
        return True
    finally:
        handle.seek(0)


def _gif_blocks(handle: BinaryIO) -> int:
    """Extension sub-blocks before a GIF's first image, counted up to ``MAX_GIF_BLOCKS + 1``."""
    try:
        screen = handle.read(13)
        if len(screen) < 13:
            return 0
        if screen[10] & 0x80:  # the global colour table
            handle.seek(3 * 2 ** ((screen[10] & 7) + 1), 1)
        count = 0
        while count <= MAX_GIF_BLOCKS and handle.read(1) == b"!":
            handle.read(1)  # the extension's label
            while count <= MAX_GIF_BLOCKS and (size := handle.read(1)) not in (b"", b"\0"):
                count += 1
                handle.seek(size[0], 1)
        return count
    finally:
        handle.seek(0)
