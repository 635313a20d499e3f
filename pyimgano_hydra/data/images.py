"""Image and mask IO: decode any common file into uint8 HxWxC / bool HxW at a fixed size.

Decoding goes through Pillow (it names truncated and unknown files, applies EXIF
orientation and shrinks large JPEGs while decoding); resizing through OpenCV
(INTER_AREA for images, nearest for masks). A file whose decoded pixels would take more than
``max_megabytes`` (width x height x channels x bytes per channel, read from the header) is
refused before decoding. Data that has no uint8 meaning is refused, never loaded as black:
float images holding NaN/inf, and negative 32-bit int or float values.
"""
from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from pyimgano_hydra import files
from pyimgano_hydra.data import headers
from pyimgano_hydra.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Decoders Pillow may pick by content: those of IMAGE_EXTENSIONS (+ GIF, MPO: renamed camera
# files; recent Pillow reads MPO with JPEG). Never EPS (Pillow runs Ghostscript on it) nor
# the many rarely used parsers: a file's content does not choose the code that reads it.
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin  # noqa: E402,F401
from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: E402,F401  (registers them for formats=)

PILLOW_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "WEBP", "GIF") if f in Image.OPEN)
Size = Union[int, Sequence[int], None]  # side of a square, (height, width), or None = native

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ORIENTED = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],  # as exif_transpose
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
             7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
SKIP_ADVICE = ", or set dataset.on_bad_image=skip"  # ends a decode error's line, for a training run
DEFAULT_MAX_IMAGE_MEGABYTES = 256.0  # dataset.max_image_megabytes
MIN_SPARSE_IMAGE_BYTES = 1 << 30  # a sparse image file this long is refused before any walk
MAX_RLE_BMP_PIXELS = 16_000_000  # about 2 s of Pillow's pure-Python RLE decoding
_BMP_RLE = (1, 2)  # BI_RLE8, BI_RLE4
MAX_JPEG_SCANS = 100  # a camera's progressive JPEG has about 10 (djpeg's -maxscans guards the same)
# what Pillow holds a pixel channel in: a 1-bit image takes a byte a pixel, as 8-bit gray does
_BYTES_PER_CHANNEL = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Pillow parsers raise anything on a corrupt file (struct.error from an EXIF block, TypeError
# from a TIFF offset, ...): every one is that file's DataError, never the batch's failure.
_DECODE_ERRORS = (Exception,)


def without_skip_advice(message: str) -> str:
    """A decode error's line for infer, or a run that skips already: no advice to set the key."""
    return message.replace(SKIP_ADVICE, "")


def _hw(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


_CONVERTED_BYTES = {"P": 4, "PA": 4}  # a palette image is used as RGB(A): Pillow holds 4 bytes a pixel


_ROW_BYTES = 16  # Pillow holds a pointer a row, for the decoded image and for its converted copy


def decoded_megabytes(img: Image.Image) -> float:
    """Memory the decoded pixels of an opened (not yet loaded) image take, in MB (a palette image as
    the RGB(A) it is converted to: counted at 1 byte a pixel, a 47 KB PNG took 2.5 GB; and the rows:
    a 1-pixel-wide PNG of 170 million rows took 3.9 GB)."""
    width, height = img.size
    per_pixel = _CONVERTED_BYTES.get(img.mode) or len(img.getbands()) * _BYTES_PER_CHANNEL.get(img.mode, 1)
    return (width * height * per_pixel + height * _ROW_BYTES) / 1e6


def _reason(exc: BaseException) -> str:
    """The first line of a decoder's exception, with its type when that is not an OSError."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, (OSError, ValueError, SyntaxError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_regular(path: str | Path):
    """``path`` opened for reading when it is a regular file: a file swapped for a FIFO after the
    input folder was listed is never waited on."""
    handle = files.open_regular(path, "replace or remove it", DataError)
    try:  # a sparse file is read and walked at its full length (a 32x32 JPEG with a 32 GB hole); a
        # 65 MB BMP copied with its black runs as holes is a fine image
        files.refuse_sparse(handle, path, "replace or remove it", DataError, min_bytes=MIN_SPARSE_IMAGE_BYTES)
    except BaseException:
        handle.close()
        raise
    return handle


def _open_pillow(path: str | Path, handle: BinaryIO, formats: Sequence[str] = PILLOW_FORMATS) -> Image.Image:
    """``Image.open`` of a file whose header Pillow can parse in bounded time and memory."""
    headers.check_before_open(path, handle)
    img = Image.open(handle, formats=formats)
    if len(img.info.get("exif") or b"") > headers.MAX_EXIF_BYTES:  # a PNG or WebP EXIF: 2 million rationals took 5 s
        raise DataError(f"{path}: refused: an EXIF block of {len(img.info['exif']):,} bytes (at most "
                        f"{headers.MAX_EXIF_BYTES:,}); re-save it without its EXIF")
    return img


def _check_decode_work(path: str | Path, img: Image.Image, scans: int) -> None:
    """Files whose decoding takes far longer than their pixels: libjpeg updates every block once a
    scan (a 370 KB file repeating one scan 10,000 times decoded for minutes, deaf to SIGTERM)."""
    if scans > MAX_JPEG_SCANS:
        raise DataError(f"{path}: refused: more than {MAX_JPEG_SCANS} JPEG scans (a camera's file has 1 to "
                        f"about 12); re-encode it")
    if img.format == "BMP" and img.info.get("compression") in _BMP_RLE and \
            img.size[0] * img.size[1] > MAX_RLE_BMP_PIXELS:  # Pillow's RLE decoder: Python, a loop turn a pixel
        raise DataError(f"{path}: refused: a run-length coded BMP of {img.size[0]}x{img.size[1]} pixels (at most "
                        f"{MAX_RLE_BMP_PIXELS:,}: a 1 KB one decoded for 20 s); re-encode it as PNG")


def _check_decode_size(path: str | Path, img: Image.Image, max_megabytes: float | None,
                       held_mb: float = 0.0) -> None:
    """``held_mb``: MB the decoder holds instead, when more than Pillow's pixels (a multi-scan
    JPEG's DCT coefficients, OpenCV's array of a 16-bit colour PNG)."""
    if max_megabytes is None:
        return
    needed = max(decoded_megabytes(img), held_mb)
    if needed > max_megabytes:
        width, height = img.size
        what = "holds" if held_mb > decoded_megabytes(img) else "decodes to"
        raise DataError(f"{path}: refused: {width}x{height} {img.mode} {what} {needed:.0f} MB, over "
                        f"dataset.max_image_megabytes={max_megabytes:g}; shrink the file or raise the limit")


def _cannot_decode(path: str | Path, exc: BaseException) -> DataError:
    return DataError(f"{path}: cannot decode image ({_reason(exc)}); replace or remove the file" + SKIP_ADVICE)


@contextmanager
def _decoding(path: str | Path) -> Iterator[None]:
    """Around opening and decoding ``path``: any decoder failure is one DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # Pillow's one line per broken EXIF tag: 3950 lines
            yield
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DataError:
        raise
    except _DECODE_ERRORS as exc:
        raise _cannot_decode(path, exc) from None


def _pillow_decode(path: str | Path, handle: BinaryIO, draft_to: tuple[int, int] | None,
                   max_megabytes: float | None) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image, EXIF orientation applied, and its full (height, width) (a JPEG may be
    decoded at 1/2..1/8 of it)."""
    img = _open_pillow(path, handle)
    jpeg = img.format in ("JPEG", "MPO")  # an MPO is JPEG with a multi-picture block
    walked = headers.jpeg_scans(handle, MAX_JPEG_SCANS) if jpeg else None
    scans = walked.count if walked else 0
    _check_decode_work(path, img, scans)
    # progressive, or components in separate scans: libjpeg keeps every DCT coefficient of the
    # full-size image (2 bytes each) whatever the draft scale
    multi_scan = jpeg and (bool(img.info.get("progressive")) or scans > 1)
    if max_megabytes is not None and multi_scan:  # a 1 KB one took 1 GB at 1/8
        _check_decode_size(path, img, max_megabytes, held_mb=decoded_megabytes(img) * 2)
    width, height = img.size
    if draft_to is not None and jpeg:
        img.draft(img.mode, (draft_to[1], draft_to[0]))  # decode large JPEGs at 1/2..1/8
    _check_decode_size(path, img, max_megabytes)
    _check_complete(path, img, handle, walked)
    img.load()
    loaded, img = img.size, ImageOps.exif_transpose(img)
    if img.size != loaded:  # turned a quarter
        width, height = height, width
    return img, (height, width)


def _check_complete(path: str | Path, img: Image.Image, handle: BinaryIO,
                    walked: headers.JpegScans | None = None) -> None:
    """Refuse a PNG, JPEG or TIFF whose image data ends before its last row or coefficient (the rest
    would load black, flat grey or blurred); ``walked``: a JPEG's scans."""
    if img.format == "PNG":
        complete = headers.png_data_complete(handle)
    elif walked is not None:
        complete = headers.jpeg_data_complete(handle, walked)
    elif img.format == "TIFF":
        complete = headers.tiff_data_complete(handle, img.tag_v2)
    else:
        return
    if not complete:
        raise DataError(f"{path}: refused: its image data ends before its last row or fails its checksum "
                        "(a cut or broken file); "
                        "replace or remove it" + SKIP_ADVICE)


def _orientation(img: Image.Image, handle: BinaryIO) -> int:
    """The EXIF orientation of an opened, not yet decoded image (1 when absent or unreadable)."""
    try:
        if img.format == "PNG":  # Pillow decodes every pixel to reach chunks after the image data
            with Image.open(io.BytesIO(headers.png_metadata(handle)), formats=("PNG",)) as metadata:
                return int(Image.Image.getexif(metadata).get(0x0112, 1))
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not hide a readable image
        return 1


def read_size(path: str | Path, max_megabytes: float | None = None) -> tuple[int, int]:
    """(height, width) after EXIF orientation, from the header only (cheap); with
    ``max_megabytes``, a file that would decode to more is refused (DataError)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with open_regular(path) as handle, _open_pillow(path, handle) as img:
                _check_decode_size(path, img, max_megabytes)
                width, height = img.size
                orientation = _orientation(img, handle)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DataError:
        raise
    except _DECODE_ERRORS as exc:
        reason = _reason(exc)
        raise DataError(f"{path}: not a readable image ({reason}); replace or remove the file"
                        + SKIP_ADVICE) from None
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return height, width


def _refuse_unmappable(path: str | Path, arr: np.ndarray) -> None:
    """NaN/inf or negative values have no uint8 meaning: refuse rather than load black."""
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: refused: float image holds NaN or inf values; "
                        "write finite values in [0, 1] or [0, 255]")
    if arr.size and arr.min() < 0:
        raise DataError(f"{path}: refused: image holds negative values (min {arr.min():g}); "
                        "write non-negative values (8/16-bit, or float in [0, 1] or [0, 255])")
    if arr.size and arr.max() > 65535:
        raise DataError(f"{path}: refused: image holds values above 65535 (max {arr.max():g}); "
                        "write 8/16-bit values, or float in [0, 1] or [0, 255]")


_UINT16_TO_UINT8 = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)  # == rint(v / 257)


def _to_uint8(img: Image.Image, path: str | Path = "image") -> np.ndarray:
    """Any Pillow mode -> uint8 array HxW (gray) or HxWx3 (colour); alpha is dropped."""
    mode = img.mode
    # In place, no float64 temporaries: memory stays a few times what dataset.max_image_megabytes
    # counts (a 16-bit 11000x11000 PNG took 3.1 GB through float64 copies).
    if mode.startswith("I;16"):  # 0..65535, nothing to refuse; scaled by 65535 -> 255 (rint(v / 257))
        return _UINT16_TO_UINT8[np.asarray(img).astype(np.uint16, copy=False)]
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        _refuse_unmappable(path, arr)
        if mode == "F" and arr.max(initial=0) > 255:  # clipped, it loaded as solid white
            raise DataError(f"{path}: refused: float image holds values above 255 (max {arr.max():g}); float "
                            "images hold [0, 1] or [0, 255]: write 8/16-bit values for other ranges")
        if mode == "I" and arr.max(initial=0) > 255:
            arr /= 257.0  # 16-bit data in a 32-bit image: the same fixed scale
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr *= 255.0
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        return arr.astype(np.uint8)
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    elif mode == "1":  # 0/255 as convert("L") gives, without that second full-size image
        arr = np.array(img, dtype=bool).view(np.uint8)  # raw bytes: 1 or 255 for a set pixel
        np.minimum(arr, 1, out=arr)
        arr *= 255
        return arr
    elif mode == "LA":
        img = img.getchannel("L")
    elif mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def load_image(path: str | Path, resize: Size = None, input_mode: str = "rgb",
               max_megabytes: float | None = DEFAULT_MAX_IMAGE_MEGABYTES, return_size: bool = False):
    """Decode ``path`` into uint8 (H, W, C): C=3 for ``rgb``, C=1 for ``gray``.

    ``resize``: an int (square side), (height, width), or None to keep the native size.
    Gray, RGB, RGBA, palette, 1-bit and 16-bit files and EXIF-rotated JPEGs all load.
    ``max_megabytes``: refuse files whose decoded pixels would take more (None = no limit).
    ``return_size``: also return the file's own (height, width), oriented, as decoded (not
    re-read by name: the file may change afterwards).
    """
    if input_mode not in ("rgb", "gray"):
        raise ValueError(f"input_mode must be rgb or gray, got {input_mode!r}")
    target = _hw(resize)
    with _decoding(path), open_regular(path) as handle:
        img, original_size = _pillow_decode(path, handle, target, max_megabytes)
    try:
        arr = _to_uint8(img, path)
    except DataError:
        raise
    except _DECODE_ERRORS as exc:  # a mode conversion of a corrupt file
        raise _cannot_decode(path, exc) from None
    del img  # the decoded file, no longer needed
    if input_mode == "gray" and arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    if target is not None and arr.shape[:2] != target:  # resized before a gray file becomes 3 channels
        shrink = target[0] * target[1] < arr.shape[0] * arr.shape[1]  # area averaging only when shrinking:
        arr = cv2.resize(arr, (target[1], target[0]),      # upscaled, it copies pixels into blocks
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2) if input_mode == "rgb" else arr[:, :, None]
    arr = np.ascontiguousarray(arr)
    return (arr, original_size) if return_size else arr


def mask_files(path: str | Path) -> list[Path]:
    """The file(s) behind a mask path: the file itself, or every image in a mask folder."""
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: mask folder holds no image files")
        return files
    return [path]


def mask_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a mask file or of every file in a mask folder (which must agree)."""
    files = mask_files(path)
    size_of = lambda f: (_npy_shape(f)[:2] if f.suffix.lower() == ".npy"  # noqa: E731
                         else read_size(f, DEFAULT_MAX_IMAGE_MEGABYTES))
    size = size_of(files[0])
    for f in files[1:]:
        other = size_of(f)
        if other != size:
            raise DataError(f"{f}: mask is {other[1]}x{other[0]} but {files[0].name} in the same "
                            f"folder is {size[1]}x{size[0]}")
    return size


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {2: 3, 4: 4, 6: 4}  # RGB, gray + alpha, RGBA: channels OpenCV decodes them to


def _open_mask(path: Path) -> Image.Image | np.ndarray:
    """A mask file decoded once; a 16-bit colour PNG (which Pillow reads as its high bytes only, so
    a label of value 1 read as empty) by OpenCV as its uint16 array, after the header's size check."""
    with _decoding(path), open_regular(path) as handle:
        header = handle.read(26)  # signature, IHDR length and type, width, height, bit depth, colour type
        handle.seek(0)
        if not (len(header) == 26 and header[:8] == _PNG_SIGNATURE and header[24] == 16
                and header[25] in _PNG_COLOUR_TYPES):
            return _pillow_decode(path, handle, None, DEFAULT_MAX_IMAGE_MEGABYTES)[0]
        img = _open_pillow(path, handle, ("PNG",))
        width, height = img.size
        _check_decode_size(path, img, DEFAULT_MAX_IMAGE_MEGABYTES,  # OpenCV's array: 2 bytes a channel
                           held_mb=width * height * 2 * _PNG_COLOUR_TYPES[header[25]] / 1e6)
        orientation = _orientation(img, handle)
        _check_complete(path, img, handle)
        data = np.frombuffer(handle.read(), np.uint8)
    try:
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # ignores EXIF orientation: turned as Pillow turns an image
    except cv2.error:
        arr = None
    if arr is None or arr.ndim != 3:
        raise DataError(f"{path}: cannot decode 16-bit colour mask; replace or remove the file")
    arr = _ORIENTED.get(orientation, lambda a: a)(arr)
    if arr.shape[2] == 4 and arr[:, :, 3].min() != arr[:, :, 3].max():  # as _defect_pixels reads alpha
        return np.ascontiguousarray(arr[:, :, 3:])
    return np.ascontiguousarray(arr[:, :, :3])


def _defect_pixels(mask: Image.Image | np.ndarray, path: Path) -> np.ndarray:
    """bool (H, W): non-zero pixels of one mask file, at its own bit depth (a 16-bit label mask of
    value 1 scaled to 8 bits read as empty); in a mask with an alpha channel or a palette with
    transparency that is not uniform, its visible pixels (a defect drawn in the alpha channel alone
    read as empty). A grey or RGB mask's one transparent colour (tRNS) is ignored: its values are the
    mask (white made transparent read the background as the defect)."""
    if isinstance(mask, Image.Image) and (mask.mode in ("PA", "LA", "RGBA")
                                          or mask.mode == "P" and "transparency" in mask.info):
        alpha = np.asarray(mask.convert("RGBA").getchannel("A") if mask.mode not in ("LA", "RGBA")
                           else mask.getchannel("A"))
        if alpha.min() != alpha.max():  # drawn on a transparent layer: what is visible is the defect
            return alpha != 0
    if isinstance(mask, Image.Image) and (mask.mode in ("I", "F") or mask.mode.startswith("I;16")):
        mask = np.asarray(mask)
    if isinstance(mask, np.ndarray) and mask.dtype.kind == "f" and not np.isfinite(mask).all():  # .npy too
        raise DataError(f"{path}: refused: float mask holds NaN or inf values; write 0 for normal pixels")
    arr = mask if isinstance(mask, np.ndarray) else _to_uint8(mask, path)
    return arr.any(axis=2) if arr.ndim == 3 else arr != 0


def load_mask(path: str | Path, size: Size = None) -> np.ndarray:
    """Decode a ground-truth mask into bool (H, W): any non-zero pixel is defect.

    ``path`` may be a folder of masks (MVTec LOCO): their union is returned; a ``.npy`` file
    (as written by ``defects.io.save_mask``) is read as an array. Colour masks
    count a pixel as defect when any colour channel is non-zero; resizing uses nearest
    neighbour so the mask stays exact.
    """
    mask = None
    for f in mask_files(path):
        part = _defect_pixels(_load_npy(f) if f.suffix.lower() == ".npy" else _open_mask(f), f)
        if mask is not None and part.shape != mask.shape:
            raise DataError(f"{f}: mask size {part.shape[1]}x{part.shape[0]} differs from the "
                            f"other masks in {path}")
        mask = part if mask is None else mask | part
    target = _hw(size)
    if target is not None and mask.shape != target:
        mask = cv2.resize(mask.astype(np.uint8), (target[1], target[0]),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


_NPY_FIX = "write a 2-D (H, W) or 3-D (H, W, C) numeric array (defects.io.save_mask does)"


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape a ``.npy`` mask declares, checked from its header before any data is read: a
    non-empty 2-D (H, W) or 3-D (H, W, C <= 4) numeric array of at most
    ``DEFAULT_MAX_IMAGE_MEGABYTES`` that the file is long enough to hold."""
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    try:
        with open_regular(path) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            room = path.stat().st_size - handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable .npy mask ({_reason(exc)}); {_NPY_FIX}") from None
    # (64, 64, 3e7): the height and width of its image, 114 GiB to load (MemoryError ended the run)
    if dtype.kind not in "biuf" or len(shape) not in (2, 3) or 0 in shape or len(shape) == 3 and shape[2] > 4:
        raise DataError(f"{path}: refused: a .npy mask of shape {tuple(shape)} and dtype {dtype}; {_NPY_FIX}")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize > room:
        raise DataError(f"{path}: refused: its header declares {tuple(shape)} {dtype}, more than the file "
                        f"holds; {_NPY_FIX}")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize > DEFAULT_MAX_IMAGE_MEGABYTES * 2**20:
        raise DataError(f"{path}: refused: its header declares {tuple(shape)} {dtype}, more than "
                        f"{DEFAULT_MAX_IMAGE_MEGABYTES:g} MB; {_NPY_FIX}")
    return tuple(shape)


def _load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` mask, header checked first (``_npy_shape``); never a pickle."""
    _npy_shape(path)
    try:
        with open_regular(path) as handle:  # swapped for a FIFO since its header was read: not waited on
            return np.load(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy mask ({_reason(exc)}); {_NPY_FIX}") from None


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 gray (H, W) / (H, W, 1) or RGB (H, W, 3) as PNG (any path characters)."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fast, lossless
    if not ok:
        raise DataError(f"{path}: cannot encode PNG")
    Path(path).write_bytes(buf.tobytes())


def is_image_file(path: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """An image by its name: anything but a folder (a link that leads nowhere, a FIFO or a device is
    kept, so that loading it names it, never dropped without a word)."""
    return (not path.is_dir() and path.suffix.lower() in extensions
            and not path.name.startswith("."))


def list_images(folder: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    return sorted(p for p in folder.iterdir() if is_image_file(p, exts))
