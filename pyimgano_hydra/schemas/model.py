"""Schemas of the ``model`` group: the backbone fields, PatchCore and PaDiM."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

from pyimgano_hydra.errors import check
from pyimgano_hydra.schemas.postprocess import MAX_SIGMA

MAX_EPS = 1000.0  # covariance regulariser: 1e60 made every score 0, recorded completed
MAX_GLOBAL_WEIGHT = 100.0  # weight x log(distance): far past any useful fusion, never past float64

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")  # model.device, infer's device


def valid_device(device: str) -> bool:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether that GPU exists is checked at use)."""
    return bool(DEVICE_PATTERN.match(str(device)))

IMAGE_NORMS = ("none", "standardize")
BACKBONE_NAMES = ("efficientnet_lite0", "resnet18", "wide_resnet50_2", "mobilenet_v2", "efficientnet_b0")


@dataclass
class BackboneSchema:
    backbone: str = "efficientnet_lite0"
    layers: List[str] = field(default_factory=lambda: ["blocks.2", "blocks.3"])
    pretrained: bool = True
    weights_path: Optional[str] = None  # a local state_dict file; wins over pretrained
    device: str = "auto"  # auto | cpu | cuda | cuda:N (cuda: one GPU per job by rank; see features/device.py)
    batch_size: int = 16

    def __post_init__(self) -> None:
        check(self.backbone in BACKBONE_NAMES, "model.backbone", f"must be one of {', '.join(BACKBONE_NAMES)}")
        check(len(self.layers) >= 1, "model.layers", "must name at least one layer")
        check(valid_device(self.device), "model.device", "must be auto, cpu, cuda or cuda:N")
        check(self.batch_size >= 1, "model.batch_size", "must be >= 1")


@dataclass
class PatchCoreSchema(BackboneSchema):
    _target_: str = "pyimgano_hydra.models.patchcore.PatchCore"
    layers: List[str] = field(default_factory=lambda: ["blocks.2", "blocks.4"])
    neighbourhood: int = 3  # local average-pool window over each feature map
    neighbourhood_pad: str = "zeros"  # zeros (padding counts in the average) | exclude (in-image cells only)
    embed_dim: Optional[int] = None  # average channels down to this many; null keeps all
    coreset_ratio: float = 0.1  # memory bank = this share of all training patches
    coreset_max_size: Optional[int] = 20000  # cap on bank rows (keeps fit and search fast); null = none
    projection_dim: int = 128  # random projection used only to pick the coreset
    num_neighbors: int = 9  # k of PatchCore's image-score reweighting; 1 turns it off
    image_score: str = "power_mean"  # power_mean (of all patches) | topk (mean of the top patches) | max (reweighted max patch) | map_max
    topk_ratio: float = 0.03  # share of patches averaged when image_score=topk
    power_mean_p: float = 24.0  # order of the power mean when image_score=power_mean (1 = mean; larger → max)
    smoothing_sigma: float = 4.0  # Gaussian blur of the map, in input pixels; 0 = off
    image_norm: str = "none"  # none | standardize (each image to a fixed intensity mean/std)
    global_weight: float = 0.0  # > 0 adds log(image-level Mahalanobis) × weight to image scores
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.coreset_ratio <= 1, "model.coreset_ratio", "must be in (0, 1]")
        check(self.coreset_max_size is None or self.coreset_max_size >= 1, "model.coreset_max_size", "must be >= 1 or null")
        check(self.neighbourhood >= 1, "model.neighbourhood", "must be >= 1")
        check(self.neighbourhood_pad in ("zeros", "exclude"), "model.neighbourhood_pad", "must be zeros or exclude")
        check(self.embed_dim is None or self.embed_dim >= 1, "model.embed_dim", "must be >= 1 or null")
        check(self.projection_dim >= 0, "model.projection_dim", "must be >= 0 (0 = no projection)")
        check(self.num_neighbors >= 1, "model.num_neighbors", "must be >= 1")
        check(self.image_score in ("power_mean", "max", "topk", "map_max"), "model.image_score", "must be power_mean, max, topk or map_max")
        check(0 < self.topk_ratio <= 1, "model.topk_ratio", "must be in (0, 1]")
        check(1 <= self.power_mean_p <= 1000, "model.power_mean_p", "must be in [1, 1000]")
        check(0 <= self.smoothing_sigma <= MAX_SIGMA, "model.smoothing_sigma", f"must be in 0..{MAX_SIGMA} (0 = off)")
        check(self.image_norm in IMAGE_NORMS, "model.image_norm", "must be none or standardize")
        check(0 <= self.global_weight <= MAX_GLOBAL_WEIGHT, "model.global_weight",
              f"must be in 0..{MAX_GLOBAL_WEIGHT:g} (0 = off)")


@dataclass
class PaDiMSchema(BackboneSchema):
    _target_: str = "pyimgano_hydra.models.padim.PaDiM"
    layers: List[str] = field(default_factory=lambda: ["blocks.1", "blocks.2", "blocks.3"])
    d: Optional[int] = None  # channels kept: null = all of the layers' channels; N = a seeded random subset of N
    grid_size: Optional[int] = None  # positions per side of the Gaussian grid; null = finest layer
    eps: float = 0.01  # covariance regulariser eps * I
    smoothing_sigma: float = 4.0
    max_memory_gb: float = 4.0  # refuse up front when the Gaussians would need more
    image_norm: str = "none"  # none | standardize
    image_score: str = "topk"  # topk (mean of the top topk_ratio map pixels) | max (map max)
    topk_ratio: float = 0.01  # share of map pixels averaged when image_score=topk
    global_weight: float = 0.0  # > 0 adds log(image-level Mahalanobis) × weight to image scores
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.d is None or self.d >= 1, "model.d", "must be >= 1 or null (all channels)")
        check(self.image_score in ("max", "topk"), "model.image_score", "must be max or topk")
        check(0 < self.topk_ratio <= 1, "model.topk_ratio", "must be in (0, 1]")
        check(0 <= self.global_weight <= MAX_GLOBAL_WEIGHT, "model.global_weight",
              f"must be in 0..{MAX_GLOBAL_WEIGHT:g} (0 = off)")
        check(self.grid_size is None or self.grid_size >= 1, "model.grid_size", "must be >= 1 or null")
        check(0 < self.eps <= MAX_EPS, "model.eps", f"must be in (0, {MAX_EPS:g}]")
        check(0 <= self.smoothing_sigma <= MAX_SIGMA, "model.smoothing_sigma", f"must be in 0..{MAX_SIGMA} (0 = off)")
        check(self.max_memory_gb > 0, "model.max_memory_gb", "must be > 0")
        check(self.image_norm in IMAGE_NORMS, "model.image_norm", "must be none or standardize")


SCHEMAS = {"patchcore": PatchCoreSchema, "padim": PaDiMSchema}
