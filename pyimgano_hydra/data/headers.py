"""Bounded walks over an image file's header before Pillow parses it.

Pillow's parsers keep a Python object for each TIFF strip, tag value, JPEG segment, PNG chunk or
GIF block, and libtiff fills whole declared tiles: a few MB of such structure took seconds and
GBs for a 16x16 image. These walks read only lengths and counts, stop at a fixed limit, and
leave the handle at the start; :func:`check_before_open` refuses what they find, naming the file.
Two more tell a PNG or JPEG whose image data ends early, which Pillow decodes without a word.
"""
from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

import simplejpeg

from pyimgano_hydra.errors import DataError

MAX_TIFF_STRIPS = 200_000  # a 30000-row image of a row a strip, 3 planes apart, has 90,000
MAX_TIFF_TILE_PIXELS = 1 << 20  # a tile may exceed a small image up to 1024x1024 (padding)
MAX_TIFF_TAG_VALUES = 196_608  # a 16-bit ColorMap's 3 x 65536, the longest tag a baseline TIFF has
MAX_JPEG_HEADER_SEGMENTS = 1000  # a camera's file has about 20; an ICC profile adds a few
MAX_PNG_CHUNKS = 100_000  # a 100 MB image in 1 KB IDAT chunks
MAX_PNG_METADATA_BYTES = 16 << 20  # text and eXIf chunks; a photo editor writes KBs
MAX_GIF_BLOCKS = 100_000  # extension sub-blocks before the first image
MAX_EXIF_BYTES = 1 << 20  # a JPEG's APP1 holds at most 64 KB

_PNG_METADATA = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")  # where Pillow finds EXIF and XMP
_TIFF_OFFSETS = (273, 279, 324, 325)  # StripOffsets/ByteCounts, TileOffsets/ByteCounts: MAX_TIFF_STRIPS
_TIFF_BLOBS = (700, 33723, 34377, 34675, 37724)  # XMP, IPTC, Photoshop, ICC, ImageSourceData: bytes
_TIFF_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}  # integer types
_TIFF_LAYOUT = (256, 257, 258, 262, 277, 278, 284, 322, 323, 339)  # sizes, bits, photometric, samples, rows a strip,
#                                                                   planar, tiles, sample format


def check_before_open(path: str | Path, handle: BinaryIO) -> None:
    """Refuse a file whose header Pillow or libtiff would spend far more on than its pixels."""
    head = handle.read(16)
    handle.seek(0)
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        _check_tiff(path, _tiff_tags(handle))
    elif head[:3] == b"\xff\xd8\xff":
        if jpeg_header(handle).segments > MAX_JPEG_HEADER_SEGMENTS:
            raise DataError(f"{path}: refused: a JPEG of more than {MAX_JPEG_HEADER_SEGMENTS:,} header segments "
                            f"(a camera's file has about 20); re-encode it")
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        chunks, exif, metadata, problem = png_chunks(handle)
        if problem:
            raise DataError(f"{path}: refused: a PNG of {problem} (part of it would load black); re-encode it")
        if chunks > MAX_PNG_CHUNKS or exif > MAX_EXIF_BYTES or metadata > MAX_PNG_METADATA_BYTES:
            raise DataError(f"{path}: refused: a PNG of more than {MAX_PNG_CHUNKS:,} chunks, an EXIF block over "
                            f"{MAX_EXIF_BYTES >> 20} MB or text over {MAX_PNG_METADATA_BYTES >> 20} MB; re-encode it")
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
    width, height, planes = value(256), value(257), value(277, 1) if value(284, 1) == 2 else 1
    if 324 in tags and value(322) and value(323):  # tiled: a piece per tile per plane
        needed = -(-width // value(322)) * -(-height // value(323)) * planes
    else:
        needed = -(-height // (value(278) or height or 1)) * planes if 273 in tags else 0
    if pieces < needed:  # Pillow decodes the pieces listed and leaves the rest black
        raise DataError(f"{path}: refused: a TIFF listing {pieces:,} strips or tiles where its size needs {needed:,} "
                        f"(the rest would load black); re-save it")
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


class JpegHeader(NamedTuple):
    segments: int  # segments, fill and stray bytes before the first scan, counted up to limit + 1
    first_scan: int | None  # where the first scan's marker is; None when there is none
    components: tuple[int, ...]  # the frame's component ids (none for a lossless frame)
    stray: tuple[tuple[int, int], ...]  # (start, end) of bytes between segments that libjpeg skips


_JPEG_DCT_FRAMES = {0xC0, 0xC1, 0xC2, 0xC5, 0xC6, 0xC9, 0xCA, 0xCD, 0xCE}  # SOFn with DCT coefficients
_JPEG_LOSSLESS_FRAMES = {0xC3, 0xC7, 0xCB, 0xCF}


def jpeg_header(handle: BinaryIO, limit: int = MAX_JPEG_HEADER_SEGMENTS) -> JpegHeader:
    """The segments of a JPEG before its first scan, walked as libjpeg does (stray bytes between
    segments skipped, each run counted as a segment)."""
    try:
        handle.seek(2)
        count, components, stray = 0, (), []
        while count <= limit and len(marker := handle.read(2)) == 2:
            count += 1
            if marker[0] != 0xFF:  # stray bytes: libjpeg warns and skips to the next 0xFF
                start = stop = handle.tell() - 2
                handle.seek(start)
                while (block := handle.read(1 << 16)) and (found := block.find(b"\xff")) < 0:
                    stop += len(block)
                if not block:
                    break
                stray.append((start, stop + found))
                handle.seek(stop + found)
            elif marker[1] == 0xFF:  # a fill byte
                handle.seek(-1, 1)
            elif marker[1] == 0xDA:
                return JpegHeader(count, handle.tell() - 2, components, tuple(stray))
            elif marker[1] == 0xD9:
                break
            elif not (0xD0 <= marker[1] <= 0xD7 or marker[1] == 0x01):  # markers with a length
                length = int.from_bytes(handle.read(2), "big")
                if length < 2:
                    break  # Pillow names the broken file
                payload = handle.read(length - 2) if marker[1] in _JPEG_DCT_FRAMES else b""
                if marker[1] in _JPEG_DCT_FRAMES and len(payload) >= 6:
                    components = tuple(payload[6:6 + 3 * payload[5]:3])
                elif marker[1] in _JPEG_LOSSLESS_FRAMES:
                    components = ()
                handle.seek(length - 2 - len(payload), 1)
        return JpegHeader(count, None, components, tuple(stray))
    finally:
        handle.seek(0)


class JpegScans(NamedTuple):
    count: int  # start-of-scan markers from the first scan to the image's EOI, up to limit + 1
    end: int | None  # just past that EOI; None when the file ends first
    uncovered: bool  # a component's DCT coefficient is in no scan (a progressive file cut between scans)
    header: JpegHeader


_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in scan data: not a stuffed byte, RSTn or fill


def jpeg_scans(handle: BinaryIO, limit: int) -> JpegScans:
    """The scans of a JPEG's first image, walked segment by segment from its first scan to its EOI
    (what follows, a phone's video, or an MPO's next image, is not counted). Read in blocks, not
    mapped: a file cut by the camera while mapped killed the process with SIGBUS."""
    header = jpeg_header(handle)
    if header.first_scan is None:
        return JpegScans(0, None, False, header)
    try:
        pos, count, covered = header.first_scan, 0, {c: set() for c in header.components}
        while count <= limit:
            handle.seek(pos)
            block = handle.read(1 << 18)
            if (found := _JPEG_MARKER.search(block)) is None:
                if len(block) < 2:
                    break
                pos += len(block) - 1
                continue
            at, kind = pos + found.start(), block[found.start() + 1]
            if kind == 0xD9:
                return JpegScans(count, at + 2, any(len(ks) < 64 for ks in covered.values()), header)
            if kind in (0x01, 0xD8):  # no length
                pos = at + 2
                continue
            handle.seek(at + 2)
            length = int.from_bytes(handle.read(2), "big")
            if kind == 0xDA:
                count += 1
                scan = handle.read(max(length - 2, 0))  # Ns, Ns x (component, tables), Ss, Se, Ah/Al
                if scan and len(scan) >= 3 + 2 * scan[0]:
                    for component in scan[1:1 + 2 * scan[0]:2]:
                        if component in covered:
                            covered[component].update(range(scan[1 + 2 * scan[0]], min(scan[2 + 2 * scan[0]], 63) + 1))
            pos = at + 2 + max(length, 0)
        return JpegScans(count, None, False, header)
    finally:
        handle.seek(0)


_SIMPLEJPEG_SPACES = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}  # decoded as is; else RGB
# libjpeg's warnings after which it fills blocks it never read (not "extraneous bytes before marker")
_JPEG_DATA_LOST = ("premature end", "instead of rst", "bad huffman code")


def jpeg_data_complete(handle: BinaryIO, scans: JpegScans) -> bool:
    """Whether libjpeg decodes every block of a JPEG's first image from its data. Pillow drops
    libjpeg's warnings ('premature end of data segment': a file cut and closed with EOI) and fills
    the blocks it never read flat grey; simplejpeg raises them (decoded at 1/8 scale, thrown away;
    stray bytes between header segments left out, or their warning would come first). A file
    without an EOI counts as complete: Pillow names it truncated."""
    if scans.uncovered:
        return False
    if scans.end is None:
        return True
    try:
        data = handle.read(scans.end)
        for start, stop in reversed(scans.header.stray):
            data = data[:start] + data[stop:]
        try:
            space = simplejpeg.decode_jpeg_header(data)[2]
            simplejpeg.decode_jpeg(data, _SIMPLEJPEG_SPACES.get(space, "RGB"), min_height=1, min_width=1,
                                   min_factor=8, strict=True)
        except ValueError as exc:
            return not any(lost in str(exc).lower() for lost in _JPEG_DATA_LOST)
        return True
    finally:
        handle.seek(0)


def png_chunks(handle: BinaryIO) -> tuple[int, int, int, str | None]:
    """(chunks walked, up to ``MAX_PNG_CHUNKS + 1``; the largest eXIf chunk's bytes; the bytes of
    every text and eXIf chunk; why Pillow would decode less than the header's image, or None) by
    the chunk headers alone."""
    try:
        handle.seek(8)
        count, exif, metadata, size, problem, seen_data = 0, 0, 0, None, None, False
        while count <= MAX_PNG_CHUNKS and len(head := handle.read(8)) == 8:
            count += 1
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                break
            exif = max(exif, length) if kind == b"eXIf" else exif
            metadata += length if kind in _PNG_METADATA else 0
            seen_data = seen_data or kind == b"IDAT"
            if kind == b"IHDR":  # Pillow takes the last one, and decodes the first's rows into it
                problem = "two IHDR chunks" if size is not None else problem
                size = handle.read(8)
                handle.seek(length - len(size), 1)
            elif kind == b"fcTL" and not seen_data:  # the image is then a frame: only its box is decoded
                frame = handle.read(20)
                if len(frame) < 20 or frame[4:12] != size or frame[12:20] != bytes(8):
                    problem = problem or "an animation frame before the image data smaller than the image"
                handle.seek(length - len(frame), 1)
            else:
                handle.seek(length, 1)
            handle.seek(4, 1)  # the CRC
        return count, exif, metadata, problem
    finally:
        handle.seek(0)


def png_metadata(handle: BinaryIO) -> bytes:
    """A PNG of the file's IHDR, its text and eXIf chunks in their order wherever they lie, and an
    empty IDAT: Pillow's ``getexif`` of it is the orientation ``exif_transpose`` applies after
    decoding (the last eXIf, else an XMP ``tiff:Orientation``), read without decoding a pixel.
    Call after :func:`check_before_open`, which bounds the chunks and their bytes."""
    try:
        handle.seek(8)
        kept = [b"\x89PNG\r\n\x1a\n"]
        for _ in range(MAX_PNG_CHUNKS):
            head = handle.read(8)
            if len(head) < 8 or head[4:8] == b"IEND":
                break
            length = struct.unpack(">I", head[:4])[0]
            if head[4:8] == b"IHDR" or head[4:8] in _PNG_METADATA:
                kept.append(head + handle.read(length + 4))
            else:
                handle.seek(length + 4, 1)
        return b"".join(kept) + struct.pack(">I4sI", 0, b"IDAT", zlib.crc32(b"IDAT"))
    finally:
        handle.seek(0)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_data_complete(handle: BinaryIO) -> bool:
    """Whether a PNG's image data is intact (each IDAT chunk's CRC) and inflates to every row its
    header declares. Pillow decodes a complete zlib stream of half the rows without a word and leaves
    the rest black, and skips the CRC of image data. Read and inflated in 1 MB pieces, counted, never
    kept; a header Pillow cannot read counts as complete (Pillow names that file itself)."""
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
        while seen <= MAX_PNG_CHUNKS and len(chunk := handle.read(8)) == 8:
            seen += 1
            length, kind = struct.unpack(">I4s", chunk)
            if kind != b"IDAT":
                if inflated or kind == b"IEND":
                    break  # the image data is one run of IDAT chunks
                handle.seek(length + 4, 1)
                continue
            crc, left = zlib.crc32(kind), length  # Pillow skips the CRC of image data: a flipped byte
            while left:  # read in 1 MB pieces: a length is only what the chunk claims
                data = handle.read(min(left, 1 << 20))
                if not data:
                    return False  # cut inside its image data
                left -= len(data)
                crc = zlib.crc32(data, crc)
                while data and inflated < expected and not inflater.eof:
                    piece = inflater.decompress(data, 1 << 20)
                    inflated, data = inflated + len(piece), inflater.unconsumed_tail
            stored = handle.read(4)
            if len(stored) < 4 or struct.unpack(">I", stored)[0] != crc:
                return False  # a corrupt byte decoded to another image without a word
            while inflated < expected and not inflater.eof and (piece := inflater.decompress(b"", 1 << 20)):
                inflated += len(piece)  # what zlib still holds
        return inflated >= expected
    except zlib.error:
        return False  # a broken stream: Pillow stopped before the error, once it had its rows
    except struct.error:
        return True
    finally:
        handle.seek(0)


_TIFF_DEFLATE = (8, 32946)  # Adobe and old-style deflate
_TIFF_JPEG = 7


def _first(tags, tag: int, default: int) -> int:
    value = tags.get(tag, default)
    return int(value[0] if isinstance(value, tuple) and value else value if not isinstance(value, tuple) else default)


def tiff_data_complete(handle: BinaryIO, tags) -> bool:
    """Whether each deflate strip or tile of a TIFF is one whole zlib stream (its checksum included)
    of every byte its rows need, and each JPEG one ends at its EOI: libtiff only warns on stderr of a broken one and
    Pillow loads the rows after it flat (``tags``: Pillow's ``tag_v2`` of the first frame). Other
    compressions count as complete. Read and inflated in 1 MB pieces, never kept."""
    compression = _first(tags, 259, 1)
    if compression not in _TIFF_DEFLATE + (_TIFF_JPEG,):
        return True
    tiled = 324 in tags
    offsets, counts = (tags.get(324), tags.get(325)) if tiled else (tags.get(273), tags.get(279))
    if not offsets or not counts or len(offsets) != len(counts):
        return True  # Pillow refuses it itself
    offsets = offsets if isinstance(offsets, tuple) else (offsets,)
    counts = counts if isinstance(counts, tuple) else (counts,)
    width, height = _first(tags, 256, 0), _first(tags, 257, 0)
    samples, bits = _first(tags, 277, 1), _first(tags, 258, 1)
    if _first(tags, 284, 1) == 2:  # a plane a strip
        samples = 1
    try:
        for index, (offset, count) in enumerate(zip(offsets, counts)):
            if compression == _TIFF_JPEG:
                handle.seek(max(offset, offset + count - 64))
                if not handle.read(min(count, 64)).rstrip(b"\0").endswith(b"\xff\xd9"):
                    return False  # cut short: libjpeg's 'premature end' never reaches Pillow
                continue
            if tiled:
                needed = _first(tags, 323, 0) * ((_first(tags, 322, 0) * samples * bits + 7) // 8)
            else:
                rows_each = _first(tags, 278, height) or height
                strips = -(-height // rows_each)
                rows = min(rows_each, height - (index % max(strips, 1)) * rows_each)
                needed = max(rows, 0) * ((width * samples * bits + 7) // 8)
            # to the stream's end: zeros after a cut decode as rows of one value; its Adler-32 tells
            handle.seek(offset)
            inflater, inflated, left, most = zlib.decompressobj(), 0, count, needed + (1 << 20)
            while left and inflated <= most and not inflater.eof:
                data = handle.read(min(left, 1 << 20))
                if not data:
                    return False  # the file ends inside the strip
                left -= len(data)
                while data and inflated <= most and not inflater.eof:
                    piece = inflater.decompress(data, 1 << 20)
                    inflated, data = inflated + len(piece), inflater.unconsumed_tail
            while inflated <= most and not inflater.eof and (piece := inflater.decompress(b"", 1 << 20)):
                inflated += len(piece)
            if not inflater.eof or not needed <= inflated <= most:
                return False
        return True
    except zlib.error:
        return False
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
