"""Score images with an exported pyimgano_hydra model: numpy + onnxruntime + Pillow (+ simplejpeg).

    python score_onnx.py <artifacts dir with model.onnx + export.json> <image> [<image> ...]

Prints one JSON line per image: {"image", "score", "pred_label", "threshold", "map_max"}.
Images are resized to ``export.json``'s ``preprocessing.resize`` (box filter when shrinking,
bilinear when enlarging: close to, not bit-identical with, the OpenCV resize of training).
Runs exported with tiling are refused here (``infer runtime=onnxruntime`` tiles them).
The model allocates from one arena of at most $SCORE_ONNX_MAX_MEMORY_GB (default 1 GB).
An image that gets no verdict is named in one line on stderr and skipped (exit code 2 at the end),
as is a PNG or JPEG whose image data ends early (JPEGs are checked when simplejpeg is installed).
"""
import hashlib
import io
import json
import math
import os
import stat
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

try:
    import simplejpeg  # raises the libjpeg warnings Pillow drops
except ImportError:
    simplejpeg = None

# Raster formats only: an EPS named .png would reach Pillow's EPS plugin, which runs Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")


def report(path, problem) -> None:
    """One line naming the file on stderr."""
    if isinstance(problem, Exception):
        problem = f"{type(problem).__name__}: {(str(problem).splitlines() or [''])[0]}"
    print(f"error: {path}: {problem}", file=sys.stderr)


def fail(path, problem) -> None:
    """One line naming the file, exit code 2 (bad input, not a bug)."""
    report(path, problem)
    sys.exit(2)


def read_regular(path: Path, limit: int, follow_links: bool = False) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes: a FIFO is never
    waited on, a link to /dev/zero never read (the artifacts dir is untrusted input).
    ``follow_links``: an image the line names through a link ('latest.png') is read where it points."""
    try:  # an artifacts file itself, never a link (one to another product's export passed its sha256)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW))
    except OSError:
        if os.path.islink(path):
            raise ValueError("a symlink; an artifacts dir's files are read only as plain files") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, over the {limit} this file may have")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1)
    finally:
        os.close(fd)


# Ops with subgraphs: an exported model has none (a forged endless Loop would never return).
CONTROL_FLOW = ("Loop", "If", "Scan", "SequenceMap")
MAX_NODES = 100_000  # an export has a few thousand; 600,000 Identity nodes took 2.4 GB to load
OUTSIDE_ARENA = ("NonZero", "Unique", "Compress", "NonMaxSuppression", "StringNormalizer", "StringSplit",
                 "StringConcat", "RegexFullMatch", "TfIdfVectorizer",
                 # sequences and optionals: each element an OrtValue outside the arena (8M scalars took 3 GB)
                 "SplitToSequence", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase",
                 "SequenceAt", "SequenceLength", "ConcatFromSequence", "Optional", "OptionalGetElement",
                 "OptionalHasElement")  # outputs sized by the data, off the arena
STRING = 8  # TensorProto.STRING
MAX_SIDE = 8192  # pixels per side of an exported model's input (pyimgano_hydra's MAX_SIDE)
FLOAT_COPIES = 8  # float copies of the input image the memory cap must hold at least
MAX_JPEG_SCANS = 100  # as infer (pyimgano_hydra's MAX_JPEG_SCANS)
MAX_RLE_BMP_PIXELS = 16_000_000  # as infer
MAX_TIFF_STRIPS = 200_000  # as infer: Pillow builds one Python tile a strip
MAX_TIFF_TILE_PIXELS = 1 << 20  # as infer: a tile may exceed a small image up to 1024x1024
MAX_TIFF_TAG_VALUES = 196_608  # as infer: a 16-bit ColorMap's length
MAX_PNG_CHUNKS = 100_000  # as infer: Pillow walks each chunk in Python
MAX_GIF_BLOCKS = 100_000  # as infer: extension sub-blocks before the first image
MAX_EXIF_BYTES = 1 << 20  # as infer: Pillow makes an object of each EXIF value
MAX_JPEG_HEADER_SEGMENTS = 1000  # as infer: Pillow keeps each in a Python list
MAX_DECODED_BYTES = 256 << 20  # an image's decoded pixels (infer's default dataset.max_image_megabytes)
MAX_SECONDS = 600  # one image's run; a forged chain of big MatMuls computed for hours


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message's top-level fields (no schema needed)."""
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            size = varint()
            if i + size > len(data):
                raise ValueError("truncated field")
            yield number, wire, data[i:i + size]
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


def check_ops(model: bytes) -> None:
    """Refuse local functions, control flow (subgraphs), ops outside the standard domain or sized by
    the data outside ONNX Runtime's arena, string tensors and more than MAX_NODES nodes
    (ModelProto.graph 7 / functions 25; GraphProto.node 1 / initializer 5; NodeProto.op_type 4 /
    domain 7 / attribute 5; AttributeProto.name 1 / i 3 / t 5 / sparse_tensor 22 / sparse_tensors 23;
    TensorProto.data_type 2)."""
    nodes = []
    for number, wire, value in _fields(model):
        if number == 25:
            raise ValueError("it defines local functions; an exported model has none")
        if number == 7 and wire == 2:  # protobuf merges repeated graph records: count them all
            for field, _, item in _fields(value):
                if field == 1:
                    nodes.append(item)
                elif field in (5, 15):  # an initializer, a sparse one (values 1, indices 2)
                    for tensor in [item] if field == 5 else [v for n, _, v in _fields(item) if n in (1, 2)]:
                        _check_tensor(tensor)
    if len(nodes) > MAX_NODES:
        raise ValueError(f"{len(nodes)} nodes, more than the {MAX_NODES} an exported model may have")
    for node in nodes:
        fields = list(_fields(node))
        parts = {n: v for n, w, v in fields if w == 2 and n in (4, 7)}
        op, domain = parts.get(4, b"").decode(errors="replace"), parts.get(7, b"").decode(errors="replace")
        attributes = [list(_fields(a)) for n, w, a in fields if n == 5 and w == 2]
        for attribute in attributes:  # a Constant's tensor (t 5, tensors 10)
            for tensor in (v for n, w, v in attribute if n in (5, 10) and w == 2):
                _check_tensor(tensor)
        strings = any(((1, 2, b"to") in attribute and (3, 0, STRING) in attribute)  # a Cast to string
                      or (1, 2, b"value_string") in attribute or (1, 2, b"value_strings") in attribute
                      for attribute in attributes)
        if any(n in (22, 23) for attribute in attributes for n, _, _ in attribute):
            raise ValueError(f"op {op[:40]} holds a sparse tensor attribute (it may name external data); "
                             "an exported model holds none")
        if op in CONTROL_FLOW + OUTSIDE_ARENA or domain not in ("", "ai.onnx") or strings:
            raise ValueError(f"op {domain + '.' if domain else ''}{op[:40]} is not one an exported model uses "
                             "(control flow, custom, string or data-sized output)")


def _check_tensor(tensor: bytes) -> None:
    """No string tensor (TensorProto.data_type 2) and no external data (external_data 13,
    data_location 14): ONNX Runtime reads that from a path relative to the working dir."""
    fields = list(_fields(tensor))
    if (2, 0, STRING) in fields:
        raise ValueError("a string tensor; an exported model holds numbers only")
    if any(n == 13 or (n, w, v) == (14, 0, 1) for n, w, v in fields):
        raise ValueError("a tensor stored as external data (a file beside it); an exported model holds its own")


def memory_cap() -> int:
    """Bytes the model may allocate: $SCORE_ONNX_MAX_MEMORY_GB (default 1), at most half this machine."""
    value = os.environ.get("SCORE_ONNX_MAX_MEMORY_GB", "1")
    try:
        gb = float(value)
        assert math.isfinite(gb) and gb > 0
    except (ValueError, AssertionError):
        fail("SCORE_ONNX_MAX_MEMORY_GB", f"{value!r} is not a positive number of GB")
    return int(min(gb * (1 << 30), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2))


def session_options(cap: int):
    """Quiet options whose allocations come from one CPU arena capped at ``cap`` bytes (a forged
    model could otherwise size a tensor from pixel values)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(cap, -1, -1, -1))
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all different (with two, a check and a use could read different ones)."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _typed(value, types: tuple, key: str):
    """``value`` when it is one of ``types`` and not a bool (JSON true is no number)."""
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"{key}: expected {' or '.join(t.__name__ for t in types)}, got {value!r}")
    return value


def load(artifacts: Path):
    try:
        manifest = json.loads(read_regular(artifacts / "export.json", 1 << 20), object_pairs_hook=_unique_keys)
        tiled = manifest["tiling"] is not None
        threshold = float(_typed(manifest["image_threshold"]["value"], (int, float), "image_threshold.value"))
        expected, channels = manifest["sha256"], _typed(manifest["channels"], (int,), "channels")
        size = [_typed(n, (int,), "input_size") for n in manifest["input_size"]]
    except Exception as exc:  # missing, not JSON, lacking a key, a duplicate key, a wrong type
        fail(artifacts / "export.json", exc)
    if not math.isfinite(threshold):
        fail(artifacts / "export.json", f"image_threshold.value {threshold} is not a finite number")
    if channels not in (1, 3) or len(size) != 2 or not all(1 <= n <= MAX_SIDE for n in size):
        fail(artifacts / "export.json", f"channels {channels} / input_size {size}: expected 1 or 3 / two sizes in "
                                        f"1..{MAX_SIDE}")
    cap = memory_cap()
    if FLOAT_COPIES * 4 * channels * size[0] * size[1] > cap:  # a model holds a few float copies of its input
        fail(artifacts / "export.json", f"input_size {size}: {FLOAT_COPIES} float copies of such an image exceed "
                                        f"the {cap / (1 << 30):.2g} GB memory cap; raise SCORE_ONNX_MAX_MEMORY_GB")
    try:
        model = read_regular(artifacts / "model.onnx", 2 << 30)  # ONNX protobufs stop at 2 GB
    except (OSError, ValueError) as exc:
        fail(artifacts / "model.onnx", exc)
    if hashlib.sha256(model).hexdigest() != expected:
        fail(artifacts / "model.onnx", "sha256 does not match export.json")
    if tiled:
        fail(artifacts, "this run was exported with tiling; score it with pyimgano_hydra infer runtime=onnxruntime")
    try:
        check_ops(model)
        session = ort.InferenceSession(model, session_options(cap), providers=["CPUExecutionProvider"],
                                       disabled_optimizers=["ConstantFolding"])  # folding runs at load, unstoppable
    except Exception as exc:
        fail(artifacts / "model.onnx", exc)
    inputs = session.get_inputs()
    if [i.name for i in inputs] != ["images"]:
        fail(artifacts / "model.onnx", f"inputs {[i.name for i in inputs]}: an exported model takes one input, images")
    declared = inputs[0].shape
    if list(declared[1:]) != [channels, *size]:
        fail(artifacts / "export.json", f"channels {channels} / input_size {size} do not match the model's "
                                        f"input {declared}")
    return manifest, threshold, session


def tiff_problem(data: bytes):
    """Why Pillow or libtiff would spend far more on a TIFF than its pixels (None if not a TIFF or
    fine), as infer checks: millions of strips or tiles, a tag of too many values, a tile far larger
    than the image (a repeated tag counted at its largest, as libtiff may read either)."""
    import struct

    if len(data) < 16 or data[:4] not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return None
    order, big = ("<" if data[:1] == b"I" else ">"), data[2:4] in (b"+\0", b"\0+")
    at = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count_fmt, size, inline = ("Q", 20, 8) if big else ("H", 12, 4)
    if at + struct.calcsize(count_fmt) > len(data):
        return None
    count = min(struct.unpack_from(order + count_fmt, data, at)[0], 65536)
    first, tags = at + struct.calcsize(count_fmt), {}
    formats = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}
    for e in range(first, min(first + count * size, len(data) - size + 1), size):
        tag, kind = struct.unpack_from(order + "HH", data, e)
        n = struct.unpack_from(order + ("Q" if big else "I"), data, e + 4)[0]
        value, field = 0, e + (12 if big else 8)
        if kind in formats and n >= 1:
            where = field if struct.calcsize(formats[kind]) * n <= inline else \
                struct.unpack_from(order + ("Q" if big else "I"), data, field)[0]
            if where + struct.calcsize(formats[kind]) <= len(data):
                value = struct.unpack_from(order + formats[kind], data, where)[0]
        old = tags.get(tag, (0, 0))
        tags[tag] = (max(n, old[0]), max(value, old[1]))
    if max(tags.get(273, (0, 0))[0], tags.get(324, (0, 0))[0]) > MAX_TIFF_STRIPS:
        return f"a TIFF of more than {MAX_TIFF_STRIPS:,} strips or tiles"
    if any(n > MAX_TIFF_TAG_VALUES for tag, (n, _) in tags.items()
           if tag not in (273, 279, 324, 325, 700, 33723, 34377, 34675, 37724)):
        return f"a TIFF tag of more than {MAX_TIFF_TAG_VALUES:,} values"
    tile = tags.get(322, (0, 0))[1] * tags.get(323, (0, 0))[1]
    if tile > max(tags.get(256, (0, 0))[1] * tags.get(257, (0, 0))[1], MAX_TIFF_TILE_PIXELS):
        return "a TIFF tile far larger than its image (the decoder fills whole tiles)"
    return None


def jpeg_header(data: bytes):
    """(segments and fill bytes of a JPEG before its first scan, counted up to the limit + 1; where
    its first scan starts, or None)."""
    if data[:3] != b"\xff\xd8\xff":
        return 0, None
    count, at = 0, 2
    while count <= MAX_JPEG_HEADER_SEGMENTS and at + 2 <= len(data) and data[at] == 0xFF:
        count, marker = count + 1, data[at + 1]
        if marker == 0xFF:
            at += 1
        elif marker == 0xDA:
            return count, at
        elif marker == 0xD9:
            break
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:
            at += 2
        else:
            length = int.from_bytes(data[at + 2:at + 4], "big")
            if length < 2:
                break
            at += 2 + length
    return count, None


def chunk_problem(data: bytes):
    """Why Pillow would walk a PNG's chunks or a GIF's blocks for far longer than its pixels (None if fine)."""
    import struct

    count, at = 0, 8
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        while count <= MAX_PNG_CHUNKS and at + 8 <= len(data):
            length, kind = struct.unpack_from(">I4s", data, at)
            count, at = count + 1, at + 12 + length
            if kind == b"eXIf" and length > MAX_EXIF_BYTES:
                return f"an EXIF block over {MAX_EXIF_BYTES >> 20} MB"
            if kind == b"IEND":
                break
        return f"a PNG of more than {MAX_PNG_CHUNKS:,} chunks" if count > MAX_PNG_CHUNKS else None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) > 13:
        at = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
        while count <= MAX_GIF_BLOCKS and data[at:at + 1] == b"!":
            at += 2  # the introducer and the extension's label
            while count <= MAX_GIF_BLOCKS and at < len(data) and data[at]:
                count, at = count + 1, at + 1 + data[at]
            at += 1
        return f"a GIF of more than {MAX_GIF_BLOCKS:,} blocks before its image" if count > MAX_GIF_BLOCKS else None
    return None


def cut_problem(data: bytes, width: int, height: int):
    """Why Pillow would load a PNG or JPEG black or flat grey below some row (None if fine): its
    image data ends early, which Pillow decodes without a word (infer refuses these too)."""
    import struct

    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33:
        depth, colour, interlace = data[24], data[25], data[28]
        bits = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 0) * depth
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                  (0, 1, 1, 2)) if interlace else ((0, 0, 1, 1),)
        expected = sum(rows * (1 + (cols * bits + 7) // 8) for x0, y0, dx, dy in passes
                       if (cols := (width - x0 + dx - 1) // dx) and (rows := (height - y0 + dy - 1) // dy))
        inflater, inflated, at = zlib.decompressobj(), 0, 8
        try:
            while at + 8 <= len(data):
                length, kind = struct.unpack_from(">I4s", data, at)
                if kind == b"IEND" or inflated and kind != b"IDAT":
                    break  # the image data is one run of IDAT chunks
                piece = data[at + 8:at + 8 + length] if kind == b"IDAT" else b""
                stored = data[at + 8 + length:at + 12 + length]
                crc = zlib.crc32(piece, zlib.crc32(kind))
                if kind == b"IDAT" and (len(stored) < 4 or struct.unpack(">I", stored)[0] != crc):
                    return "its image data fails its checksum (a cut or broken file)"  # Pillow skips that CRC
                while kind == b"IDAT" and inflated < expected and not inflater.eof:
                    out = inflater.decompress(piece, 1 << 20)
                    inflated, piece = inflated + len(out), inflater.unconsumed_tail
                    if not out and not piece:
                        break  # the next chunk holds the rest
                at += 12 + length
        except zlib.error:
            return "its image data is a broken stream"  # Pillow stops before the error once it has its rows
        return None if inflated >= expected or not bits else "its image data ends before its last row"
    if data[:3] == b"\xff\xd8\xff" and simplejpeg is not None:
        try:
            space = simplejpeg.decode_jpeg_header(data)[2]
            first_scan = jpeg_header(data)[1]  # not an EXIF thumbnail's
            end = data.find(b"\xff\xd9", first_scan) if first_scan is not None else -1  # no video after it
            simplejpeg.decode_jpeg(data[:end + 2] if end >= 0 else data,
                                   {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(space, "RGB"),
                                   min_height=1, min_width=1, min_factor=8, strict=True)
        except ValueError as exc:
            if any(lost in str(exc).lower() for lost in ("premature end", "instead of rst", "bad huffman code")):
                return f"its image data ends early ({exc})"
    return None


def read_image(path: Path, manifest: dict) -> np.ndarray:
    """uint8 (1, C, H, W) at the model's input size."""
    with warnings.catch_warnings():  # Pillow warns of big images (checked below) and once per broken EXIF tag
        warnings.simplefilter("ignore")
        data = read_regular(path, 512 << 20, follow_links=True)  # a FIFO or device behind it: refused
        if problem := tiff_problem(data) or chunk_problem(data):  # Pillow's parsing alone took seconds and GBs
            raise ValueError(problem)
        segments, first_scan = jpeg_header(data)
        # from the first scan (not an EXIF thumbnail's) to its EOI (not a phone's video after it)
        end = data.find(b"\xff\xd9", first_scan) if first_scan is not None else -1
        scans = data.count(b"\xff\xda", first_scan, end if end >= 0 else len(data)) if first_scan is not None else 0
        if segments > MAX_JPEG_HEADER_SEGMENTS:  # 10 MB of them took 381 MB in Pillow
            raise ValueError(f"a JPEG of more than {MAX_JPEG_HEADER_SEGMENTS:,} header segments")
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        if len(image.info.get("exif") or b"") > MAX_EXIF_BYTES:  # a WebP's EXIF: 2 million rationals took 5 s
            raise ValueError(f"an EXIF block over {MAX_EXIF_BYTES >> 20} MB")
        if image.format in ("JPEG", "MPO") and scans > MAX_JPEG_SCANS:  # minutes of decoding
            raise ValueError(f"more than {MAX_JPEG_SCANS} JPEG scans (a camera's file has 1 to about 12)")
        if image.format == "BMP" and image.info.get("compression") in (1, 2) and \
                image.size[0] * image.size[1] > MAX_RLE_BMP_PIXELS:  # Pillow decodes RLE in Python
            raise ValueError(f"a run-length coded BMP of more than {MAX_RLE_BMP_PIXELS:,} pixels")
        depth = 2 if "16" in image.mode else 4 if image.mode in ("I", "F") else 1
        decoded = image.size[0] * image.size[1] * max(len(image.getbands()), 3) * depth
        if image.format in ("JPEG", "MPO") and (image.info.get("progressive") or scans > 1):
            # libjpeg keeps every DCT coefficient of a multi-scan file (2 bytes each), as infer counts
            decoded = max(decoded, image.size[0] * image.size[1] * len(image.getbands()) * 2)
        if decoded > MAX_DECODED_BYTES:  # from the header, as infer's dataset.max_image_megabytes
            raise ValueError(f"{image.size[0]}x{image.size[1]} {image.mode} decodes to {decoded >> 20} MB, "
                             f"over {MAX_DECODED_BYTES >> 20} MB")
        if problem := cut_problem(data, *image.size):
            raise ValueError(problem)
        image = ImageOps.exif_transpose(image)  # as training and infer see it
    if image.mode.startswith("I;16"):  # 16-bit: 0..65535 -> rint(v / 257), as infer maps it
        image = Image.fromarray(((np.asarray(image, dtype=np.uint32) + 128) // 257).astype(np.uint8))
    elif image.mode in ("I", "F"):  # as infer maps them: F in [0, 1] x 255, 16-bit data in I / 257
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError("holds NaN, infinite, negative or over-65535 values: no verdict (infer refuses it too)")
        if image.mode == "I" and values.max(initial=0) > 255:
            values /= 257.0
        elif image.mode == "F" and values.max(initial=0) <= 1.0:
            values *= 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    image = image.convert("L" if manifest["channels"] == 1 else "RGB")
    height, width = manifest["input_size"]
    if image.size != (width, height):
        shrink = width * height < image.size[0] * image.size[1]
        image = image.resize((width, height), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        fail("usage", "python score_onnx.py <artifacts dir with model.onnx + export.json> <image> [<image> ...]")
    manifest, threshold, session = load(Path(argv[0]))
    failed = 0
    for name in argv[1:]:  # one bad image is named and skipped; the others are still scored
        try:
            print(json.dumps(score(Path(argv[0]), name, manifest, threshold, session)))
        except ImageFailed as exc:
            report(*exc.args)
            failed += 1
    if failed:
        sys.exit(2)


class ImageFailed(Exception):
    """(path, problem) of one image that got no verdict."""


def score(artifacts: Path, name: str, manifest: dict, threshold: float, session) -> dict:
    """One image's JSON record; ``ImageFailed`` naming the image or the model."""
    model_path = artifacts / "model.onnx"
    try:
        image = read_image(Path(name), manifest)
    except Exception as exc:  # unreadable image
        raise ImageFailed(name, exc) from None
    options = ort.RunOptions()
    timer = threading.Timer(MAX_SECONDS, lambda: setattr(options, "terminate", True))
    timer.start()
    try:
        score, anomaly_map = session.run(["score", "map"], {"images": image}, options)
    except Exception as exc:  # a model that does not fit export.json, over the memory cap or time
        raise ImageFailed(model_path, exc) from None
    finally:
        timer.cancel()
    if np.asarray(score).dtype.kind not in "fiu" or np.asarray(anomaly_map).dtype.kind not in "fiu":
        raise ImageFailed(model_path, "returned a score or map that is not numbers")
    if np.shape(score) != (1,) or np.shape(anomaly_map) != (1, *image.shape[2:]):
        raise ImageFailed(model_path, f"returned score {np.shape(score)} / map {np.shape(anomaly_map)} "
                                      "for one image; not an exported model's outputs")
    if not (np.isfinite(score).all() and np.isfinite(anomaly_map).all()):
        raise ImageFailed(model_path, f"returned a NaN or infinite score or map for {name}; no verdict")
    return {"image": name, "score": float(score[0]), "pred_label": int(score[0] > threshold),
            "threshold": threshold, "map_max": float(anomaly_map[0].max())}


if __name__ == "__main__":
    main(sys.argv[1:])
