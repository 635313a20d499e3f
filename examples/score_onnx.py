"""Score images with an exported pyimgano_hydra model: numpy + onnxruntime + Pillow only.

    python score_onnx.py <artifacts dir with model.onnx + export.json> <image> [<image> ...]

Prints one JSON line per image: {"image", "score", "pred_label", "threshold", "map_max"}.
Images are resized to ``export.json``'s ``preprocessing.resize`` (box filter when shrinking,
bilinear when enlarging: close to, not bit-identical with, the OpenCV resize of training).
Runs exported with tiling are refused here (``infer runtime=onnxruntime`` tiles them).
"""
import hashlib
import json
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

# Raster formats only: an EPS named .png would reach Pillow's EPS plugin, which runs Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")


def fail(path, problem) -> None:
    """One line naming the file, exit code 2 (bad input, not a bug)."""
    if isinstance(problem, Exception):
        problem = f"{type(problem).__name__}: {(str(problem).splitlines() or [''])[0]}"
    print(f"error: {path}: {problem}", file=sys.stderr)
    sys.exit(2)


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes: a FIFO is never
    waited on, a link to /dev/zero never read (the artifacts dir is untrusted input)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
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


def load(artifacts: Path):
    try:
        manifest = json.loads(read_regular(artifacts / "export.json", 1 << 20))
        tiled, threshold = manifest["tiling"] is not None, float(manifest["image_threshold"]["value"])
        expected, channels, size = manifest["sha256"], int(manifest["channels"]), [int(n) for n in manifest["input_size"]]
    except Exception as exc:  # missing, not JSON, lacking a key
        fail(artifacts / "export.json", exc)
    if not math.isfinite(threshold):
        fail(artifacts / "export.json", f"image_threshold.value {threshold} is not a finite number")
    if channels not in (1, 3) or len(size) != 2 or not all(1 <= n <= 16384 for n in size):
        fail(artifacts / "export.json", f"channels {channels} / input_size {size}: expected 1 or 3 / two sizes in 1..16384")
    try:
        model = read_regular(artifacts / "model.onnx", 2 << 30)  # ONNX protobufs stop at 2 GB
    except (OSError, ValueError) as exc:
        fail(artifacts / "model.onnx", exc)
    if hashlib.sha256(model).hexdigest() != expected:
        fail(artifacts / "model.onnx", "sha256 does not match export.json")
    if tiled:
        fail(artifacts, "this run was exported with tiling; score it with pyimgano_hydra infer runtime=onnxruntime")
    try:
        return manifest, threshold, ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:
        fail(artifacts / "model.onnx", exc)


def read_image(path: Path, manifest: dict) -> np.ndarray:
    """uint8 (1, C, H, W) at the model's input size."""
    image = Image.open(path, formats=IMAGE_FORMATS)
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
    for name in argv[1:]:
        try:
            score, anomaly_map = session.run(["score", "map"], {"images": read_image(Path(name), manifest)})
        except Exception as exc:  # unreadable image, a model that does not fit export.json
            fail(name, exc)
        print(json.dumps({"image": name, "score": float(score[0]), "pred_label": int(score[0] > threshold),
                          "threshold": threshold, "map_max": float(anomaly_map[0].max())}))


if __name__ == "__main__":
    main(sys.argv[1:])
