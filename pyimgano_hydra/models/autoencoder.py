"""Convolutional autoencoder trained on normal images; reconstruction-error anomaly maps.

Images are resized to ``image_size``² and scaled to [0, 1]; ``depth`` stride-2 blocks
(``base_channels`` doubling per block) lead to a ``latent_channels`` bottleneck, mirrored
by an up-sampling decoder with a sigmoid output. Training minimises the pixel MSE, plus
``perceptual_weight`` × the MSE between early backbone features of the input and of the
reconstruction, relative to the features' mean square and averaged over layers (the
backbone is frozen; ``layers`` picks its early layers).

Map = per-pixel squared error (mean over channels), Gaussian-smoothed with
``smoothing_sigma`` (pixels at ``image_size``), resized back to the input size.
Score = the map's maximum. Each image is scored on its own (no batch statistics), so
scores do not depend on batching.

``history_`` holds one ``{"epoch", "loss", "seconds"}`` dict per epoch. Training is
deterministic for a ``seed`` on CPU (seeded init, seeded shuffling, no dropout).
``state_dict()`` = network tensors + plain params, loadable with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from pyimgano_hydra.errors import DataError, UserError
from pyimgano_hydra.models.base import BaseDetector, DetectorOutput
from pyimgano_hydra.smoothing import gaussian_blur

STATE_VERSION = 1
SCORING_BYTES = 512 << 20  # activations of the images scored in one forward pass


def _network(in_channels: int, base_channels: int, depth: int, latent_channels: int):
    """Encoder–decoder ``nn.Sequential`` for inputs divisible by ``2**depth``."""
    from torch import nn

    def act() -> nn.Module:
        return nn.LeakyReLU(0.2, inplace=True)

    widths = [min(base_channels * 2 ** i, 512) for i in range(depth)]
    enc: list[nn.Module] = []
    c_in = in_channels
    for width in widths:
        enc += [nn.Conv2d(c_in, width, 4, stride=2, padding=1), act(),
                nn.Conv2d(width, width, 3, padding=1), act()]
        c_in = width
    enc += [nn.Conv2d(c_in, latent_channels, 1)]
    dec: list[nn.Module] = [nn.Conv2d(latent_channels, c_in, 1), act()]
    for out in list(reversed(widths[:-1])) + [widths[0]]:
        dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, out, 3, padding=1), act(),
                nn.Conv2d(out, out, 3, padding=1), act()]
        c_in = out
    dec += [nn.Conv2d(c_in, in_channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(nn.Sequential(*enc), nn.Sequential(*dec))


class ConvAutoencoder(BaseDetector):
    """Convolutional autoencoder; map = smoothed squared reconstruction error, score = max."""

    produces_maps = True
    fitted_attribute = "net_"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | tuple[str, ...] = ("blocks.0", "blocks.1"),
        pretrained: bool = True,
        weights_path: str | None = None,
        device: str = "auto",
        batch_size: int = 16,
        image_size: int = 128,
        base_channels: int = 32,
        depth: int = 4,
        latent_channels: int = 64,
        epochs: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        perceptual_weight: float = 0.0,
        smoothing_sigma: float = 2.0,
        seed: int = 0,
    ):
        self.backbone = backbone
        self.layers = layers
        self.pretrained = pretrained
        self.weights_path = weights_path
        self.device = device
        self.batch_size = batch_size
        self.image_size = image_size
        self.base_channels = base_channels
        self.depth = depth
        self.latent_channels = latent_channels
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.perceptual_weight = perceptual_weight
        self.smoothing_sigma = smoothing_sigma
        self.seed = seed

    # ------------------------------------------------------------------ helpers
    def _torch_device(self):
        from pyimgano_hydra.features import resolve_device

        return resolve_device(self.device)

    def _to_input(self, images: np.ndarray):
        """uint8 (N, H, W, C) → float (N, C, S, S) in [0, 1] on the model's device."""
        import torch
        import torch.nn.functional as F

        if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] in (1, 3)
                and images.dtype == np.uint8):
            raise DataError(f"images: expected a uint8 array (N, H, W, 1|3), got "
                            f"{getattr(images, 'dtype', None)} {getattr(images, 'shape', None)}")
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device_).permute(0, 3, 1, 2).float() / 255.0
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def _perceptual_net(self):
        if self.perceptual_weight <= 0:
            return None
        from pyimgano_hydra.features import build_backbone

        return build_backbone(self.backbone, list(self.layers), pretrained=self.pretrained,
                              weights_path=self.weights_path, device=self.device, seed=self.seed)

    def _features(self, net, x):
        """Backbone features of a [0, 1] batch, with gradients (for the perceptual loss)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return net((x - net.mean) / net.std)

    # ------------------------------------------------------------------ fit
    def fit(self, images: np.ndarray) -> "ConvAutoencoder":
        import torch

        from pyimgano_hydra.progress import stage

        self._check_params()
        if len(images) < 1:
            raise DataError("images: the autoencoder needs at least one training image")
        self.device_ = self._torch_device()
        self.in_channels_ = int(images.shape[-1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net_ = _network(self.in_channels_, self.base_channels, self.depth,
                                 self.latent_channels).to(self.device_)
        feature_net = self._perceptual_net()
        optimiser = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        order_rng = np.random.default_rng(self.seed)
        self.history_: list[dict[str, float]] = []
        self.net_.train()
        with stage("train autoencoder", total=self.epochs, unit="epoch") as bar:
            for epoch in range(1, self.epochs + 1):
                start, total, seen = time.perf_counter(), 0.0, 0
                order = order_rng.permutation(len(images))
                for first in range(0, len(images), self.batch_size):
                    x = self._to_input(images[np.sort(order[first:first + self.batch_size])])
                    recon = self.net_(x)
                    loss = torch.mean((recon - x) ** 2)
                    if feature_net is not None:
                        with torch.no_grad():
                            target = self._features(feature_net, x)
                        produced = self._features(feature_net, recon)
                        loss = loss + self.perceptual_weight * sum(  # scale-free: relative feature error
                            torch.mean((produced[k] - target[k]) ** 2) / (torch.mean(target[k] ** 2) + 1e-8)
                            for k in target) / len(target)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    total += float(loss.detach()) * len(x)
                    seen += len(x)
                self.history_.append({"epoch": epoch, "loss": total / seen,
                                      "seconds": round(time.perf_counter() - start, 3)})
                bar.update(1)
                bar.set_postfix(loss=f"{total / seen:.4g}")
        self.net_.eval()
        return self

    # ------------------------------------------------------------------ predict
    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        import torch
        import torch.nn.functional as F

        self._check_fitted()
        if int(images.shape[-1]) != self.in_channels_:
            raise DataError(f"images: model was trained on {self.in_channels_}-channel images, "
                            f"got {images.shape[-1]}; use the same dataset.input_mode")
        height, width = images.shape[1:3]
        scores, maps = [], []
        from pyimgano_hydra.schemas.model_zoo import ACTIVATION_COPIES, largest_activation

        per_image = ACTIVATION_COPIES * 4 * largest_activation(self.image_size, self.base_channels, self.depth,
                                                               self.latent_channels)
        chunk = max(1, min(int(self.batch_size), SCORING_BYTES // per_image))  # memory, not batch_size, decides
        with torch.inference_mode():
            for first in range(0, len(images), chunk):
                x = self._to_input(images[first:first + chunk])
                error = ((self.net_(x) - x) ** 2).mean(dim=1, keepdim=True)
                error = torch.from_numpy(gaussian_blur(error[:, 0].float().cpu().numpy(), self.smoothing_sigma))[:, None]
                scores.append(error.flatten(1).amax(dim=1).double().cpu().numpy())
                if (height, width) != tuple(error.shape[-2:]):
                    error = F.interpolate(error, size=(height, width), mode="bilinear", align_corners=False)
                maps.append(error[:, 0].float().cpu().numpy())
        return DetectorOutput(scores=np.concatenate(scores), maps=np.concatenate(maps).astype(np.float32))

    # ------------------------------------------------------------------ hand-off
    def state_dict(self) -> dict[str, Any]:
        """Network tensors (CPU) + plain data; safe for ``torch.load(weights_only=True)``."""
        self._check_fitted()
        return {
            "state_version": STATE_VERSION,
            "in_channels": self.in_channels_,
            "history": [dict(row) for row in self.history_],
            "net": {k: v.detach().cpu().clone() for k, v in self.net_.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> "ConvAutoencoder":
        """Rebuild the network (this object's shape params) and load the stored tensors."""
        version = int(state.get("state_version", -1))
        if version != STATE_VERSION:
            raise UserError(f"ConvAutoencoder checkpoint: state_version {version}, expected {STATE_VERSION}")
        self.device_ = self._torch_device()
        self.in_channels_ = int(state["in_channels"])
        if self.in_channels_ not in (1, 3):  # a stored 10**6 built a 3.7 GB network before any tensor was read
            raise ValueError(f"in_channels must be 1 (gray) or 3 (rgb), got {str(state['in_channels'])[:24]}")
        self.net_ = _network(self.in_channels_, self.base_channels, self.depth, self.latent_channels)
        self.net_.load_state_dict(state["net"])
        self.net_.to(self.device_).eval()
        self.history_ = [dict(row) for row in state.get("history", [])]
        return self
