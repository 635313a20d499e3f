"""Schema of the primary config's own keys (``seed``, ``tag``, ``cache``); the groups stay open."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

CACHE_DIR = "${oc.env:PYIMGANO_CACHE,${oc.env:HOME,.}/.cache/pyimgano_hydra}/features"


@dataclass
class CacheSchema:
    """On-disk feature cache shared by jobs with the same images, preprocessing, backbone,
    weights and layers (see docs/SWEEPS.md); LRU entries are evicted past ``max_gb``."""

    enabled: bool = True  # false: extract features afresh in every job
    dir: str = CACHE_DIR  # $PYIMGANO_CACHE/features, else ~/.cache/pyimgano_hydra/features
    max_gb: Optional[float] = 4.0  # least recently used entries evicted past this; null = no bound


@dataclass
class RunSchema:
    seed: int = 0  # seed of the recipe's random choices (splits, sampling)
    tag: str = ""  # free-form label carried into the report (e.g. a ticket or line id)
    cache: CacheSchema = field(default_factory=CacheSchema)
    # the groups, typed by their own schemas
    dataset: Any = None
    model: Any = None
    recipe: Any = None
    tiling: Any = None
    postprocess: Any = None
    defects: Any = None


GROUP = "run"
SCHEMAS = {"app": RunSchema}
