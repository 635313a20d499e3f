"""Schemas of ``python -m pyimgano_hydra.export`` and of the ``export.json`` it writes.

``ExportSchema`` types the CLI config (``conf/export.yaml``); ``ExportManifest`` is the typed
form of ``categories/<cat>/artifacts/export.json``, parsed (never instantiated) by
:func:`ExportManifest.parse` when a run dir is scored through ONNX Runtime.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Optional

from pyimgano_hydra.errors import UserError, check
from pyimgano_hydra.schemas.dataset import MAX_SIDE

FORMATS = ("onnx",)
RUNTIMES = ("torch", "onnxruntime")
MANIFEST_FORMAT = "pyimgano_hydra.export"
MANIFEST_VERSION = 1
MODEL_FILE = "model.onnx"
OPSET = 17  # ONNX opset of exported graphs (opset=...)


@dataclass
class ExportSchema:
    """``python -m pyimgano_hydra.export run_dir=<completed run dir> [format=onnx]``."""

    run_dir: str = MISSING  # completed run dir whose categories are exported
    category: Optional[str] = None  # one category (null: every category with an inspector)
    format: str = "onnx"  # onnx (the only format)
    opset: int = OPSET  # ONNX opset of the written graph

    def __post_init__(self) -> None:
        check(self.format in FORMATS, "format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        check(13 <= self.opset <= 21, "opset", f"{self.opset} is outside 13..21")


@dataclass
class ExportManifest:
    """``export.json``: what a line PC needs next to ``model.onnx`` (inputs uint8 NCHW of
    ``input_size`` after resizing to ``preprocessing.resize``; outputs ``score`` (N,), ``map`` (N, H, W))."""

    format: str
    version: int
    package_version: str
    category: str
    detector: str
    model_file: str
    sha256: str
    opset: int
    input_size: list  # [height, width] of the graph's input (the tile with tiling)
    channels: int  # 1 (gray) or 3 (rgb)
    preprocessing: dict  # {resize, input_mode} as the run loaded images
    image_threshold: dict  # {value, provenance}
    pixel_threshold: Optional[dict] = None
    postprocess: Optional[dict] = None  # the map postprocess settings and fitted low / high
    tiling: Optional[dict] = None  # tiling settings: the graph scores one tile
    outputs: list = field(default_factory=lambda: ["score", "map"])

    @classmethod
    def parse(cls, value: Any, where: str) -> "ExportManifest":
        """Typed manifest from parsed JSON; one-line refusal naming ``where`` and the key."""
        from pyimgano_hydra.runs import trust

        value = trust.plain(value, where)
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a JSON object")
        if value.get("format") != MANIFEST_FORMAT or value.get("version") != MANIFEST_VERSION:
            raise UserError(f"{where}: not a version {MANIFEST_VERSION} pyimgano_hydra export manifest")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}")
        types = {"str": str, "int": int, "list": list, "dict": dict, "Optional[dict]": (dict, type(None))}
        for f in fields(cls):
            if f.name not in value and (f.default is not MISSING or f.default_factory is not MISSING):
                continue
            trust.require(value, f.name, types[str(f.type)], where)
        manifest = cls(**value)
        if manifest.model_file != MODEL_FILE:
            raise UserError(f"{where}: model_file must be {MODEL_FILE!r}, got {manifest.model_file!r}")
        size = manifest.input_size
        if len(size) != 2 or not all(type(v) is int and 1 <= v <= MAX_SIDE for v in size):
            raise UserError(f"{where}: input_size must be [height, width] of ints in 1..{MAX_SIDE}")
        if manifest.channels not in (1, 3):
            raise UserError(f"{where}: channels must be 1 or 3")
        trust.finite(manifest.image_threshold.get("value"), f"{where}: image_threshold.value")
        return manifest


GROUP = "export"
SCHEMAS = {"export": ExportSchema}
