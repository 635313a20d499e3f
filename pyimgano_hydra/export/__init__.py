"""Export a fitted run to ONNX: ``categories/<cat>/artifacts/{model.onnx, export.json}``.

``export_category(run_dir, category)`` builds the graph of the category's fitted detector
(:mod:`pyimgano_hydra.export.graph`), writes it with ``torch.onnx.export`` and writes
``export.json`` (:class:`~pyimgano_hydra.schemas.export.ExportManifest`): thresholds,
postprocess numbers, tiling, input size, opset, package version and the model's sha256.
:mod:`pyimgano_hydra.export.runtime` scores a run dir through it with ONNX Runtime.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from pathlib import Path

import torch

from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.files import held_folder
from pyimgano_hydra.schemas.export import MANIFEST_FORMAT, MANIFEST_VERSION, MODEL_FILE, OPSET, ExportManifest


def input_size(inspector) -> tuple[int, int]:
    """(height, width) of the graph's input: the tile with tiling, else the run's resize."""
    from pyimgano_hydra.adapt.tiling import TiledDetector

    if isinstance(inspector.detector, TiledDetector):
        return (inspector.detector.tile_size,) * 2
    resize = inspector.preprocessing.get("resize")
    if resize is None:
        raise ConfigError("dataset.resize: the run kept native image sizes; an export needs a fixed input "
                          "size (dataset.resize or tiling)")
    return (resize, resize) if isinstance(resize, int) else tuple(resize)


def onnx_bytes(graph: torch.nn.Module, size: tuple[int, int], channels: int, opset: int) -> bytes:
    """The graph as an ONNX model (batch axis dynamic), serialised."""
    example = torch.zeros(1, channels, *size, dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["score", "map"],
                          dynamic_axes={"images": {0: "batch"}, "score": {0: "batch"}, "map": {0: "batch"}})
    return buffer.getvalue()


def export_inspector(inspector, out_dir: Path, opset: int = OPSET) -> ExportManifest:
    """Write ``model.onnx`` and ``export.json`` of a loaded inspector (detector on the CPU) to ``out_dir``."""
    from pyimgano_hydra import __version__
    from pyimgano_hydra.adapt.tiling import PARAM_NAMES as TILING_PARAMS, TiledDetector
    from pyimgano_hydra.export.graph import build_graph
    from pyimgano_hydra.interrupt import interrupts_deferred
    from pyimgano_hydra.registry import detector_name
    from pyimgano_hydra.runs.writers import write_bytes_atomic, write_json_atomic

    tiled = isinstance(inspector.detector, TiledDetector)
    detector = inspector.detector.detector_ if tiled else inspector.detector
    size = input_size(inspector)
    channels = 1 if inspector.preprocessing.get("input_mode") == "gray" else 3
    model = onnx_bytes(build_graph(detector, size), size, channels, opset)
    manifest = ExportManifest(
        format=MANIFEST_FORMAT, version=MANIFEST_VERSION, package_version=__version__,
        category=inspector.category, detector=detector_name(type(detector)), model_file=MODEL_FILE,
        sha256=hashlib.sha256(model).hexdigest(), opset=opset, input_size=list(size), channels=channels,
        preprocessing=dict(inspector.preprocessing), image_threshold=inspector.image_threshold,
        pixel_threshold=inspector.pixel_threshold,
        postprocess=inspector.postprocessor.state_dict() if inspector.postprocessor is not None else None,
        tiling={k: getattr(inspector.detector, k) for k in TILING_PARAMS} if tiled else None)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # into that folder itself: an artifacts/ made a link while the graph was exported is refused
    with interrupts_deferred(), held_folder(out_dir, follow=False) as held:
        folder = held or Path(out_dir)  # the model and its manifest, both or neither (a lone model fails its sha256)
        write_bytes_atomic(folder / MODEL_FILE, model)
        write_json_atomic(folder / "export.json", dataclasses.asdict(manifest))
    return manifest


def export_category(run_dir: str | Path, category: str, opset: int = OPSET) -> ExportManifest:
    """Export one category of a completed run dir into its ``artifacts/`` folder."""
    from pyimgano_hydra.runs import trust
    from pyimgano_hydra.runs.load import load_run

    loaded = load_run(run_dir)
    root = loaded.run_dir.root
    out_dir = trust.no_links(root, loaded.run_dir.category(category).artifacts.relative_to(root), "an export")
    # read from and written into the one category folder held from the start (one swapped for a
    # link while the inspector loads never leads the export into another run)
    with loaded.category_folder(category) as folder:
        inspector = loaded.inspector(category, device="cpu", folder=folder)
        try:
            return export_inspector(inspector, folder / out_dir.name, opset)
        except OSError as exc:  # artifacts/ a file or a link, model.onnx a folder, a read-only disk
            raise UserError(f"run_dir={run_dir}: cannot write the export into {out_dir} "
                            f"({exc.strerror or type(exc).__name__}); it must be a writable folder") from None
