"""Schemas of the ``model`` group for the PyOD-on-features adapter and the autoencoder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from pyimgano_hydra.errors import check
from pyimgano_hydra.schemas.model import BackboneSchema

GROUP = "model"


@dataclass
class PyODSchema(BackboneSchema):
    """Any PyOD detector on pooled backbone embeddings (image scores only, no maps).

    ``detector`` is an open dict: its ``_target_`` names the PyOD class and every other key
    is passed to that class, so ``+model.detector.<param>=<value>`` sets any PyOD parameter.
    """

    _target_: str = "pyimgano_hydra.models.pyod_on_features.PyODOnFeatures"
    detector: Dict[str, Any] = field(default_factory=lambda: {"_target_": "pyod.models.ecod.ECOD"})
    layers: List[str] = field(default_factory=lambda: ["blocks.4", "blocks.5"])
    pooling: str = "max"  # avg | max | avgmax (both, concatenated); max keeps small defects visible
    standardize: bool = True  # z-score each embedding dimension with train mean/std
    seed: int = 0  # backbone init when pretrained=false; detector random_state when unset

    def __post_init__(self) -> None:
        super().__post_init__()
        target = self.detector.get("_target_") if isinstance(self.detector, dict) else None
        check(isinstance(target, str) and target.count(".") >= 1, "model.detector._target_",
              "must name a PyOD class, e.g. pyod.models.ecod.ECOD")
        check(self.pooling in ("avg", "max", "avgmax"), "model.pooling", "must be avg, max or avgmax")
        check(len(self.layers) >= 1, "model.layers", "must name at least one layer")
        for key in ("n_neighbors", "n_estimators", "n_bins", "n_components"):
            value = self.detector.get(key) if isinstance(self.detector, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                check(value >= 1, f"model.detector.{key}", "must be >= 1")
        nu = self.detector.get("nu") if isinstance(self.detector, dict) else None
        if isinstance(nu, (int, float)) and not isinstance(nu, bool):
            check(0 < nu <= 1, "model.detector.nu", "must be in (0, 1]")


@dataclass
class AutoencoderSchema(BackboneSchema):
    """Convolutional autoencoder trained on normal images; per-pixel reconstruction-error maps.

    The backbone fields (backbone, layers, pretrained, weights_path) matter only for the
    perceptual loss (``perceptual_weight > 0``); ``batch_size`` is the training batch.
    """

    _target_: str = "pyimgano_hydra.models.autoencoder.ConvAutoencoder"
    layers: List[str] = field(default_factory=lambda: ["blocks.0", "blocks.1"])
    pretrained: bool = True
    batch_size: int = 16
    image_size: int = 128  # images are resized to this square for the network
    base_channels: int = 32  # channels after the first down-sampling block (doubles per block)
    depth: int = 4  # down-sampling blocks; image_size must be divisible by 2**depth
    latent_channels: int = 64  # channels of the bottleneck (image_size / 2**depth)²
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.0
    perceptual_weight: float = 0.0  # 0 = pixel MSE only
    smoothing_sigma: float = 2.0  # Gaussian sigma (pixels at image_size) for the error maps
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.depth <= 6, "model.depth", "must be in 1..6")
        check(16 <= self.image_size <= 1024, "model.image_size", "must be in 16..1024")
        check(self.image_size % (2 ** self.depth) == 0, "model.image_size",
              f"must be divisible by 2**model.depth = {2 ** self.depth}")
        check(1 <= self.base_channels <= 512, "model.base_channels", "must be in 1..512")
        check(1 <= self.latent_channels <= 2048, "model.latent_channels", "must be in 1..2048")
        check(1 <= self.epochs <= 10000, "model.epochs", "must be in 1..10000")
        check(0 < self.lr <= 1, "model.lr", "must be in (0, 1]")
        check(0 <= self.weight_decay < 1, "model.weight_decay", "must be in [0, 1)")
        check(0 <= self.perceptual_weight <= 1000, "model.perceptual_weight", "must be in [0, 1000]")
        check(0 <= self.smoothing_sigma <= 64, "model.smoothing_sigma", "must be in [0, 64] (0 = no smoothing)")
        need = ACTIVATION_COPIES * 4 * largest_activation(self.image_size, self.base_channels, self.depth,
                                                           self.latent_channels)
        check(need <= MAX_IMAGE_ACTIVATION_BYTES, "model.image_size",
              f"with base_channels={self.base_channels}, latent_channels={self.latent_channels} and depth="
              f"{self.depth} one image takes {need / 2**30:.1f} GB of activations; at most "
              f"{MAX_IMAGE_ACTIVATION_BYTES / 2**30:.0f} GB: lower image_size or the channels")


ACTIVATION_COPIES = 3  # float32 activations alive at once in the autoencoder (a conv's input, output, blur)
MAX_IMAGE_ACTIVATION_BYTES = 1 << 30  # one image's: a stored inspector is checked alike at load


def largest_activation(image_size: int, base_channels: int, depth: int, latent_channels: int) -> int:
    """Elements of the largest activation of one image in the autoencoder (``models/autoencoder``)."""
    widths = [min(base_channels * 2 ** i, 512) for i in range(depth)]
    sizes = [(image_size >> (i + 1)) ** 2 * w for i, w in enumerate(widths)]  # encoder blocks
    sizes.append((image_size >> depth) ** 2 * max(latent_channels, widths[-1]))  # bottleneck
    outs = list(reversed(widths[:-1])) + [widths[0]]
    c_in = widths[-1]
    for k, out in enumerate(outs, start=1):  # decoder: upsample, then convolutions
        sizes.append((image_size >> (depth - k)) ** 2 * max(c_in, out))
        c_in = out
    return max(sizes)


SCHEMAS = {"pyod": PyODSchema, "autoencoder": AutoencoderSchema}
