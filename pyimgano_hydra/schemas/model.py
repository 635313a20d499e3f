"""Schemas of the ``model`` group."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from pyimgano_hydra.errors import check


@dataclass
class BackboneSchema:
    backbone: str = "efficientnet_lite0"
    layers: List[str] = field(default_factory=lambda: ["blocks.2", "blocks.3"])
    pretrained: bool = True
    weights_path: Optional[str] = None
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 16

    def __post_init__(self) -> None:
        check(self.device in ("auto", "cpu", "cuda"), "model.device", "must be auto, cpu or cuda")
        check(self.batch_size >= 1, "model.batch_size", "must be >= 1")


@dataclass
class PatchCoreSchema(BackboneSchema):
    _target_: str = "pyimgano_hydra.models.patchcore.PatchCore"
    neighbourhood: int = 3
    coreset_ratio: float = 0.1
    num_neighbors: int = 9
    smoothing_sigma: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.coreset_ratio <= 1, "model.coreset_ratio", "must be in (0, 1]")
        check(self.neighbourhood >= 1, "model.neighbourhood", "must be >= 1")


SCHEMAS = {"patchcore": PatchCoreSchema}
