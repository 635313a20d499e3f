"""Scoring through an exported ``model.onnx`` with ONNX Runtime.

:class:`OnnxDetector` is a detector (``score_maps`` on uint8 (N, H, W, C) images) backed by an
ONNX Runtime session, so the inspector's one scoring loop runs it unchanged; with tiling it is
the inner detector of a :class:`TiledOnnx`. :func:`load_exported` reads a category's export
from an untrusted run dir: files only from inside it, ``export.json`` parsed into
:class:`~pyimgano_hydra.schemas.export.ExportManifest`, the model's sha256 checked against it,
models with external data refused; every refusal one line naming the file.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from pyimgano_hydra.adapt.tiling import TiledDetector
from pyimgano_hydra.errors import ConfigError, DataError, UserError
from pyimgano_hydra.models.base import BaseDetector, DetectorOutput
from pyimgano_hydra.schemas.export import ExportManifest

MAX_MODEL_BYTES = 2 << 30  # ONNX protobufs stop at 2 GB
MAX_TENSOR_BYTES = MAX_MODEL_BYTES  # no tensor may declare more than a model file can hold


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError("runtime=onnxruntime: onnxruntime is not installed; "
                          "pip install 'pyimgano_hydra[onnx]'") from exc
    return onnxruntime


def _messages(message, kind):
    """Every ``kind`` message inside ``message`` (``message`` too): initializers, node attributes
    (a ``Constant``), subgraphs, sparse tensors and functions alike."""
    from google.protobuf.message import Message

    if isinstance(message, kind):
        yield message
    for field, value in message.ListFields():
        if field.message_type is not None:  # a message or a repeated one
            for item in [value] if isinstance(value, Message) else value:
                yield from _messages(item, kind)


def _declared_bytes(dims, elem_type: int) -> int:
    """What a tensor of these dims and ONNX element type takes, as declared (unknown dims: 1)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        itemsize = tensor_dtype_to_np_dtype(elem_type).itemsize
    except Exception:  # an undefined or unknown element type
        itemsize = 1
    return math.prod(abs(int(d)) for d in dims) * itemsize


def _check_tensors(proto, where: Path) -> None:
    """Refuse, before ONNX Runtime sees it, a model with a tensor stored outside it (external
    data) or any tensor declaring more than ``MAX_TENSOR_BYTES``: initializers and constants by
    their dims, inputs, outputs and intermediate values by their static shapes (with constant
    shape arguments propagated: ``ConstantOfShape`` of a constant [4, 2**30] is 16 GB)."""
    import onnx
    from onnx import SparseTensorProto, TensorProto, ValueInfoProto

    limit = f"more than the {MAX_TENSOR_BYTES >> 30} GB any tensor of an exported model may take"
    for tensor in _messages(proto, TensorProto):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            raise UserError(f"{where}: refused: it references external data files")
        if _declared_bytes(tensor.dims, tensor.data_type) > MAX_TENSOR_BYTES:
            raise UserError(f"{where}: refused: tensor {tensor.name[:80]!r} declares {list(tensor.dims)[:8]}, {limit}")
    for sparse in _messages(proto, SparseTensorProto):  # densified by ONNX Runtime
        if _declared_bytes(sparse.dims, sparse.values.data_type) > MAX_TENSOR_BYTES:
            raise UserError(f"{where}: refused: sparse tensor {sparse.values.name[:80]!r} declares "
                            f"{list(sparse.dims)[:8]}, {limit}")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # an invalid graph: ONNX Runtime refuses it below
        inferred = proto
    for value in _messages(inferred, ValueInfoProto):
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim]
        if _declared_bytes(dims, tensor_type.elem_type) > MAX_TENSOR_BYTES:
            raise UserError(f"{where}: refused: value {value.name[:80]!r} has shape {dims[:8]}, {limit}")


def _session(model: bytes, where: Path):
    """An ONNX Runtime CPU session over ``model``; refused when it is not a self-contained ONNX
    model of sane tensor sizes (checked before onnxruntime is imported)."""
    try:
        import onnx

        proto = onnx.load_from_string(model)
    except Exception as exc:  # protobuf decode errors
        message = " ".join(str(exc).split())[:160]
        raise UserError(f"{where}: not a loadable ONNX model ({type(exc).__name__}: {message})") from exc
    _check_tensors(proto, where)  # external data: read from a path relative to the working dir
    ort = _onnxruntime()
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except UserError:
        raise
    except Exception as exc:  # protobuf decode errors, invalid graphs
        message = " ".join(str(exc).split())[:160]
        raise UserError(f"{where}: not a loadable ONNX model ({type(exc).__name__}: {message})") from exc


class OnnxDetector(BaseDetector):
    """A detector whose ``score_maps`` runs an exported graph (uint8 NCHW in, score and map out)."""

    produces_maps = True
    fitted_attribute = "session_"

    def __init__(self, *, input_size: tuple[int, int] = (0, 0), where: str = "model.onnx") -> None:
        self.input_size = input_size
        self.where = where

    def with_session(self, session) -> "OnnxDetector":
        self.session_ = session
        return self

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        self._check_fitted()
        images = np.asarray(images)
        if tuple(images.shape[1:3]) != tuple(self.input_size):
            raise DataError(f"{self.where}: expects {self.input_size[0]}x{self.input_size[1]} images, "
                            f"got {images.shape[1]}x{images.shape[2]}")
        batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.uint8)
        score, maps = self.session_.run(["score", "map"], {"images": batch})
        return DetectorOutput(scores=score.astype(np.float64), maps=maps.astype(np.float32, copy=False))


class TiledOnnx(TiledDetector):
    """Tiling around an :class:`OnnxDetector`; an image smaller than one tile is refused."""

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        height, width = np.asarray(images).shape[1:3]
        if min(height, width) < self.tile_size:
            raise DataError(f"{self.detector_.where}: a {width}x{height} image is smaller than the "
                            f"{self.tile_size}-pixel tile the model was exported for")
        return super().score_maps(images)


def read_export(run_root: Path, category_dir: Path) -> tuple[ExportManifest, bytes]:
    """A category's manifest and verified model bytes, read from inside ``run_root`` only."""
    from pyimgano_hydra.runs import trust
    from pyimgano_hydra.runs.layout import category_dir_name
    from pyimgano_hydra.schemas.export import MODEL_FILE

    relative = category_dir.relative_to(run_root) / "artifacts"
    manifest_path = trust.confined(run_root, relative / "export.json", "export.json")
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: missing; export the run first: "
                        f"python -m pyimgano_hydra.export run_dir={run_root}")
    manifest = ExportManifest.parse(trust.read_json_file(manifest_path), str(manifest_path))
    if category_dir_name(manifest.category) != category_dir.name:
        raise UserError(f"{manifest_path}: holds category {manifest.category!r}, not {category_dir.name!r}")
    model_path = trust.confined(run_root, relative / MODEL_FILE, str(manifest_path) + ": model_file")
    try:
        if not model_path.is_file():  # a FIFO named model.onnx held infer forever in read_bytes
            raise UserError(f"{model_path}: not a regular file; not an exported model")
        if model_path.stat().st_size > MAX_MODEL_BYTES:
            raise UserError(f"{model_path}: larger than 2 GB; not an exported model")
        model = model_path.read_bytes()
    except OSError as exc:
        raise UserError(f"{model_path}: unreadable ({type(exc).__name__})") from exc
    if hashlib.sha256(model).hexdigest() != manifest.sha256:
        raise UserError(f"{model_path}: sha256 does not match {manifest_path.name}; refused (corrupt or replaced)")
    return manifest, model


def load_exported(run_root: Path, category_dir: Path) -> tuple[ExportManifest, BaseDetector]:
    """The manifest and an ONNX-backed detector (tiled as at fit) for one exported category."""
    manifest, model = read_export(run_root, category_dir)
    where = category_dir / "artifacts" / manifest.model_file
    detector = OnnxDetector(input_size=tuple(manifest.input_size), where=str(where)).with_session(_session(model, where))
    if manifest.tiling is None:
        return manifest, detector
    from pyimgano_hydra.adapt.tiling import PARAM_NAMES

    unknown = sorted(set(manifest.tiling) - set(PARAM_NAMES))
    if unknown:
        raise UserError(f"{category_dir / 'artifacts' / 'export.json'}: tiling.{unknown[0]} is not a tiling setting")
    tiled = TiledOnnx(detector, **manifest.tiling)
    tiled._check_params()
    tiled.detector_ = detector
    return manifest, tiled
