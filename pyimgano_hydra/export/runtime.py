"""Scoring through an exported ``model.onnx`` with ONNX Runtime.

:class:`OnnxDetector` is a detector (``score_maps`` on uint8 (N, H, W, C) images) backed by an
ONNX Runtime session, so the inspector's one scoring loop runs it unchanged; with tiling it is
the inner detector of a :class:`TiledOnnx`. :func:`load_exported` reads a category's export
from an untrusted run dir: files only from inside it, ``export.json`` parsed into
:class:`~pyimgano_hydra.schemas.export.ExportManifest`, the model's sha256 checked against it,
models with external data refused; every refusal one line naming the file.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path

import numpy as np

from pyimgano_hydra.adapt.tiling import TiledDetector
from pyimgano_hydra.errors import ConfigError, DataError, UserError
from pyimgano_hydra.files import read_regular
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


def _check_tensors(proto, where: Path, plan_bytes: int | None = None) -> None:
    """Refuse, before ONNX Runtime sees it, a model with a tensor stored outside it (external
    data), a string tensor or any tensor declaring more than ``MAX_TENSOR_BYTES``: initializers and constants by
    their dims, inputs, outputs and intermediate values by their static shapes (with constant
    shape arguments propagated: ``ConstantOfShape`` of a constant [4, 2**30] is 16 GB)."""
    import onnx
    from onnx import SparseTensorProto, TensorProto, ValueInfoProto

    limit = f"more than the {MAX_TENSOR_BYTES >> 30} GB any tensor of an exported model may take"
    for tensor in _messages(proto, TensorProto):
        if tensor.data_type == TensorProto.STRING:  # the characters live outside the capped arena
            raise UserError(f"{where}: refused: string tensor {tensor.name[:80]!r} (an exported model holds numbers only)")
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            raise UserError(f"{where}: refused: it references external data files")
        if _declared_bytes(tensor.dims, tensor.data_type) > MAX_TENSOR_BYTES:
            raise UserError(f"{where}: refused: tensor {tensor.name[:80]!r} declares {list(tensor.dims)[:8]}, {limit}")
    for sparse in _messages(proto, SparseTensorProto):  # densified by ONNX Runtime
        if _declared_bytes(sparse.dims, sparse.values.data_type) > MAX_TENSOR_BYTES:
            raise UserError(f"{where}: refused: sparse tensor {sparse.values.name[:80]!r} declares "
                            f"{list(sparse.dims)[:8]}, {limit}")
    try:
        # constant shape arguments are propagated without data_prop, which held each doubled
        # Concat of a Shape as protobuf dims (22 such nodes: 2.9 GB)
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # an invalid graph: ONNX Runtime refuses it below
        inferred = proto
    sizes = {}
    for value in _messages(inferred, ValueInfoProto):
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type == TensorProto.STRING:
            raise UserError(f"{where}: refused: string tensor {value.name[:80]!r} (an exported model holds numbers only)")
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim]
        sizes[value.name] = _declared_bytes(dims, tensor_type.elem_type)
        if sizes[value.name] > MAX_TENSOR_BYTES:
            raise UserError(f"{where}: refused: value {value.name[:80]!r} has shape {dims[:8]}, {limit}")
    peak = _peak_bytes(inferred.graph, sizes)
    if plan_bytes is not None and peak > plan_bytes:  # three live 1.6 GB values of a tiny model took 5.5 GB
        raise UserError(f"{where}: refused: its values take {peak >> 20} MB at once for one image, over the "
                        f"{plan_bytes >> 20} MB cap; raise onnx_max_memory_gb if the model needs it")


def _peak_bytes(graph, sizes: dict) -> int:
    """The most bytes of values alive at once when the nodes run in order (each freed after its
    last use), from their static sizes: what a run needs at least."""
    last_use = {name: index for index, node in enumerate(graph.node) for name in node.input}
    last_use.update({value.name: len(graph.node) for value in graph.output})
    live = sum(sizes.get(value.name, 0) for value in graph.input)
    peak = live
    for index, node in enumerate(graph.node):
        live += sum(sizes.get(name, 0) for name in node.output)
        peak = max(peak, live)
        live -= sum(sizes.get(name, 0) for name in set(node.input) | set(node.output)
                    if last_use.get(name, index) == index)
    return peak


# Ops with subgraphs (an endless Loop hung infer; SIGTERM could not stop it): export writes none.
CONTROL_FLOW = ("Loop", "If", "Scan", "SequenceMap")
# Ops whose output size comes from the data and is built outside the capped arena (NonZero's indices)
OUTSIDE_ARENA = ("NonZero", "Unique", "Compress", "NonMaxSuppression", "StringNormalizer", "StringSplit",
                 "StringConcat", "RegexFullMatch", "TfIdfVectorizer",
                 # sequences and optionals: each element an OrtValue outside the arena (8M scalars took 3 GB)
                 "SplitToSequence", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase",
                 "SequenceAt", "SequenceLength", "ConcatFromSequence", "Optional", "OptionalGetElement",
                 "OptionalHasElement")
MAX_NODES = 100_000  # an export has a few thousand; 600,000 Identity nodes took 2.4 GB to load
_ARENA: list[int] = []  # ONNX Runtime takes one shared CPU arena per process: its cap, once set


DEFAULT_MEMORY_GB = 4.0  # an exported model's run at most (half the machine where that is less)


def default_memory_gb() -> float:
    """What a model's run may take unless ``onnx_max_memory_gb`` says otherwise: 4 GB, or half of
    this machine's memory where that is less (a 1 KB forged model took 5.5 GB under half of 24 GB)."""
    return min(DEFAULT_MEMORY_GB, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 / 1024**3)


def _wire_fields(data: bytes):
    """(field number, length-delimited value or None) of a protobuf message's top-level fields."""
    i, end = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < end:
        key = varint()
        wire = key & 7
        if wire == 0:
            varint()
            yield key >> 3, None
        elif wire == 2:
            size = varint()
            yield key >> 3, data[i:i + size]
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


def _graph_nodes(graph: bytes, depth: int = 0) -> int:
    """Nodes of a serialised GraphProto (node 1), with those of subgraphs in node attributes
    (NodeProto.attribute 5; AttributeProto.g 6 / graphs 11)."""
    if depth > 8:
        raise ValueError("subgraphs nested too deep")
    total = 0
    for field, node in _wire_fields(graph):
        if field != 1 or node is None:
            continue
        total += 1
        for number, attribute in _wire_fields(node):
            if number == 5 and attribute is not None:
                total += sum(_graph_nodes(sub, depth + 1) for n, sub in _wire_fields(attribute)
                             if n in (6, 11) and sub is not None)
    return total


def count_nodes(model: bytes) -> int:
    """Nodes of a serialised model (ModelProto.graph 7, repeated records merge; FunctionProto in
    functions 25 holds node 7), subgraphs included, counted on the bytes before protobuf builds
    them (600,000 parsed nodes took 2.7 GB); -1 when it is no protobuf (onnx refuses it next)."""
    try:
        return sum(_graph_nodes(value) if number == 7 else
                   sum(1 for n, _ in _wire_fields(value) if n == 7)
                   for number, value in _wire_fields(model) if number in (7, 25) and value is not None)
    except (IndexError, ValueError):
        return -1


def _check_ops(proto, where: Path) -> None:
    """Only standard-domain ops without subgraphs (no control flow, no local functions), none whose
    output is sized by the data outside ONNX Runtime's arena, and no cast to strings (an Expand of
    a string took 3.7 GB past a 1 GB cap: the characters live outside the arena)."""
    from onnx import GraphProto, TensorProto

    for graph in _messages(proto.graph, GraphProto):
        for node in graph.node:
            if (node.op_type in CONTROL_FLOW + OUTSIDE_ARENA or node.domain not in ("", "ai.onnx")
                    or node.op_type not in _standard_ops()
                    or any(a.name == "to" and a.i == TensorProto.STRING for a in node.attribute)):
                raise UserError(f"{where}: refused: op {node.domain + '.' if node.domain else ''}"
                                f"{node.op_type[:40]} is not one an exported model uses (control flow, "
                                "custom, string or data-sized output)")


@functools.lru_cache(maxsize=1)
def _standard_ops() -> frozenset[str]:
    from onnx import defs

    return frozenset(schema.name for schema in defs.get_all_schemas() if schema.domain == "") - set(CONTROL_FLOW)


def omp_threads() -> int:
    """The outer level of ``OMP_NUM_THREADS`` ("4,2": 4 threads, 2 in nested regions) up to the
    CPUs (100000 took 17 GB), or 0 (the runtime's default) when unset or not a positive number:
    never the model's fault."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return min(int(first), os.cpu_count() or 1) if first.isdigit() and int(first) > 0 else 0


def _capped_options(ort, max_memory_gb: float):
    """Session options whose allocations come from one CPU arena capped at ``max_memory_gb`` (a
    1 KB model's ``ConstantOfShape`` sized by pixel values took 3.8 GB), quiet (one error line)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = omp_threads()
    options.log_severity_level = 4
    if not _ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(int(max_memory_gb * 1024**3), -1, -1, -1))
        _ARENA.append(int(max_memory_gb * 1024**3))
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def _session(model: bytes, where: Path, max_memory_gb: float | None = None):
    """An ONNX Runtime CPU session over ``model``; refused when it is not a self-contained ONNX
    model of standard ops and sane tensor sizes (checked before onnxruntime is imported)."""
    nodes = count_nodes(model)
    if nodes > MAX_NODES:  # before parsing: 600,000 parsed nodes took 2.7 GB
        raise UserError(f"{where}: refused: {nodes} nodes, more than the {MAX_NODES} an exported model may have")
    try:
        import onnx

        proto = onnx.load_from_string(model)
    except Exception as exc:  # protobuf decode errors
        message = " ".join(str(exc).split())[:160]
        raise UserError(f"{where}: not a loadable ONNX model ({type(exc).__name__}: {message})") from exc
    cap_gb = max_memory_gb or default_memory_gb()
    _check_tensors(proto, where, int(cap_gb * 1024**3))  # external data: read from a path relative to the working dir
    _check_ops(proto, where)
    ort = _onnxruntime()
    try:
        options = _capped_options(ort, cap_gb)
        # no constant folding: folding a forged chain of constant MatMuls ran at load, where no signal stops it
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["ConstantFolding"])
    except UserError:
        raise
    except Exception as exc:  # protobuf decode errors, invalid graphs
        message = " ".join(str(exc).split())[:160]
        raise UserError(f"{where}: not a loadable ONNX model ({type(exc).__name__}: {message})") from exc


class OnnxDetector(BaseDetector):
    """A detector whose ``score_maps`` runs an exported graph (uint8 NCHW in, score and map out)."""

    produces_maps = True
    fitted_attribute = "session_"

    def __init__(self, *, input_size: tuple[int, int] = (0, 0), where: str = "model.onnx",
                 max_seconds: float | None = None) -> None:
        self.input_size = input_size
        self.where = where
        self.max_seconds = max_seconds

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
        score, maps = interruptible_run(self.session_, {"images": batch}, self.where, self.max_seconds)
        n, height, width = batch.shape[0], batch.shape[2], batch.shape[3]
        if np.asarray(score).dtype.kind not in "fiu" or np.asarray(maps).dtype.kind not in "fiu":
            raise UserError(f"{self.where}: returned {np.asarray(score).dtype} scores / {np.asarray(maps).dtype} "
                            "maps; refused (an exported model returns numbers)")
        if np.shape(score) != (n,) or np.shape(maps) != (n, height, width):
            raise UserError(f"{self.where}: returned scores {np.shape(score)} and maps {np.shape(maps)} for "
                            f"{n} images of {height}x{width}; refused (not an exported model's outputs)")
        if not (np.isfinite(score).all() and np.isfinite(maps).all()):
            raise UserError(f"{self.where}: returned a NaN or infinite score or map; refused (no verdict "
                            "without a number)")
        return DetectorOutput(scores=score.astype(np.float64), maps=maps.astype(np.float32, copy=False))


def interruptible_run(session, feeds: dict, where: str, max_seconds: float | None = None) -> list:
    """``session.run`` in a worker thread: the main thread stays free for SIGTERM and Ctrl-C, which
    stop the run (``RunOptions.terminate``; inside ONNX Runtime no Python handler runs), as does
    ``max_seconds`` (a forged chain of big MatMuls computed for hours). Its failures (a memory cap
    hit) are one line naming the model."""
    import threading
    import time

    run_options = _onnxruntime().RunOptions()
    result: dict = {}

    def work() -> None:
        try:
            result["outputs"] = session.run(["score", "map"], feeds, run_options)
        except Exception as exc:  # noqa: BLE001 - reported below, in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=work, name="onnxruntime-run", daemon=True)
    deadline = time.monotonic() + max_seconds if max_seconds else math.inf
    thread.start()
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.2)
    except BaseException:
        run_options.terminate = True
        thread.join(10)
        raise
    if thread.is_alive():
        run_options.terminate = True
        thread.join(10)
        raise UserError(f"{where}: one batch ran longer than onnx_max_seconds={max_seconds:g}; stopped "
                        "(raise it for a model that needs it)")
    if "error" in result:
        message = " ".join(str(result["error"]).split())
        hint = "; raise onnx_max_memory_gb if the model needs it" if "Available memory" in message else ""
        raise UserError(f"{where}: ONNX Runtime failed ({message[-200:]}){hint}") from result["error"]
    return result["outputs"]


class TiledOnnx(TiledDetector):
    """Tiling around an :class:`OnnxDetector`; an image smaller than one tile is refused."""

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        height, width = np.asarray(images).shape[1:3]
        if min(height, width) < self.tile_size:
            raise DataError(f"{self.detector_.where}: a {width}x{height} image is smaller than the "
                            f"{self.tile_size}-pixel tile the model was exported for")
        return super().score_maps(images)


def read_export(run_root: Path, category_dir: Path, category: str | None = None,
                folder: Path | None = None) -> tuple[ExportManifest, bytes]:
    """A category's manifest and verified model bytes, read from inside ``run_root`` only; the
    manifest must name ``category`` (when given). ``folder``: the category folder, held (see
    ``LoadedRun.category_folder``); else held here, reached from ``run_root`` with no link."""
    from contextlib import ExitStack

    from pyimgano_hydra.files import held_run_folder
    from pyimgano_hydra.runs import trust
    from pyimgano_hydra.runs.layout import category_dir_name
    from pyimgano_hydra.schemas.export import MODEL_FILE

    relative = category_dir.relative_to(run_root) / "artifacts"
    manifest_path = trust.confined(run_root, relative / "export.json", "export.json")
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: missing; export the run first: "
                        f"python -m pyimgano_hydra.export run_dir={run_root}")
    with ExitStack() as stack:
        # every read from this folder, reached with no link on the way
        artifacts = stack.enter_context(held_run_folder("artifacts", folder, manifest_path.parent) if folder is not None
                                        else held_run_folder(relative, run_root, manifest_path.parent))
        manifest = ExportManifest.parse(trust.read_json_file(artifacts / "export.json", follow=False),
                                        str(manifest_path))
        if category_dir_name(manifest.category) != category_dir.name or category not in (None, manifest.category):
            raise UserError(f"{manifest_path}: holds category {manifest.category!r}, not "
                            f"{category if category is not None else category_dir.name!r}")
        model_path = trust.confined(run_root, relative / MODEL_FILE, str(manifest_path) + ": model_file")
        try:  # one non-blocking open: a FIFO swapped in after a check by name held infer forever
            model = read_regular(artifacts / MODEL_FILE, MAX_MODEL_BYTES, "not an exported model", follow=False)
        except OSError as exc:
            raise UserError(f"{model_path}: unreadable ({type(exc).__name__})") from exc
    if hashlib.sha256(model).hexdigest() != manifest.sha256:
        raise UserError(f"{model_path}: sha256 does not match {manifest_path.name}; refused (corrupt or replaced)")
    return manifest, model


def load_exported(run_root: Path, category_dir: Path, max_memory_gb: float | None = None,
                  max_seconds: float | None = None, category: str | None = None,
                  folder: Path | None = None) -> tuple[ExportManifest, BaseDetector]:
    """The manifest and an ONNX-backed detector (tiled as at fit) for one exported category; its
    runs take at most ``max_memory_gb`` (None: ``default_memory_gb()``) and ``max_seconds``
    a batch (None: no limit); ``folder`` as in :func:`read_export`."""
    manifest, model = read_export(run_root, category_dir, category, folder)
    where = category_dir / "artifacts" / manifest.model_file
    session = _session(model, where, max_memory_gb)
    detector = OnnxDetector(input_size=tuple(manifest.input_size), where=str(where),
                            max_seconds=max_seconds).with_session(session)
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
