"""Schema of the primary config's own keys (``seed``, ``tag``, ``cache``, ``gpu``, ``loader``); the groups stay open."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pyimgano_hydra.errors import check
from pyimgano_hydra.resolvers import register_cache_root

CACHE_DIR = "${pyimgano_cache_root:}/features"
register_cache_root()  # wherever this schema is composed, its default resolves


@dataclass
class CacheSchema:
    """On-disk feature cache shared by jobs with the same images, preprocessing, backbone,
    weights and layers (see docs/SWEEPS.md); LRU entries are evicted past ``max_gb``."""

    enabled: bool = True  # false: extract features afresh in every job
    dir: str = CACHE_DIR  # $PYIMGANO_CACHE/features, else ~/.cache/pyimgano_hydra/features
    max_gb: Optional[float] = 4.0  # least recently used entries evicted past this; null = no bound


@dataclass
class GpuSchema:
    """Backbone precision on a GPU: ``torch.autocast`` (docs/SWEEPS.md, "GPU")."""

    autocast: str = "none"  # none (float32) | bf16 | fp16; scores move in the 3rd-4th digit; CPU: bf16 only

    def __post_init__(self) -> None:
        check(self.autocast in ("none", "bf16", "fp16"), "gpu.autocast", "must be none, bf16 or fp16")


@dataclass
class LoaderSchema:
    """Image decoding (pyimgano_hydra/data/loader.py; docs/SWEEPS.md, "Decode workers")."""

    num_workers: int = 0  # DataLoader worker processes that decode and resize; 0 = in the main process

    def __post_init__(self) -> None:
        check(self.num_workers >= 0, "loader.num_workers", f"must be >= 0, got {self.num_workers}")


@dataclass
class RunSchema:
    seed: int = 0  # seed of the recipe's random choices (splits, sampling)
    tag: str = ""  # free-form label carried into the report (e.g. a ticket or line id)
    cache: CacheSchema = field(default_factory=CacheSchema)
    gpu: GpuSchema = field(default_factory=GpuSchema)
    loader: LoaderSchema = field(default_factory=LoaderSchema)
    # the groups, typed by their own schemas
    dataset: Any = None
    model: Any = None
    recipe: Any = None
    tiling: Any = None
    postprocess: Any = None
    defects: Any = None


GROUP = "run"
SCHEMAS = {"app": RunSchema}
