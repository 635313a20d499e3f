"""Typed schemas behind every config group, registered in Hydra's ConfigStore.

Each group file in ``conf/<group>/`` starts with
``defaults: [{/schema/<group>@_here_: <schema name>}, _self_]`` so a wrong type fails at
compose time; ``__post_init__`` range checks run in :func:`pyimgano_hydra.schemas.validate`
before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pyimgano_hydra.errors import ConfigError

_REGISTERED = False
GROUPS = ("dataset", "model", "recipe", "tiling", "postprocess", "defects")
REQUIRED_GROUPS = ("dataset", "model", "recipe")  # a run has nothing to do without one of these


def register_configs() -> None:
    """Store every schema under ``schema/<group>/<name>`` (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from pyimgano_hydra.schemas import dataset, defects, export, model, model_zoo, postprocess, recipe, run, tiling

    cs = ConfigStore.instance()
    for module in (dataset, model, model_zoo, recipe, tiling, postprocess, defects, run, export):
        group = getattr(module, "GROUP", module.__name__.rsplit(".", 1)[-1])
        for name, node in module.SCHEMAS.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    _REGISTERED = True


def schema_for(cls: type):
    """The ``model`` schema dataclass whose ``_target_`` is ``cls`` (None when there is none)."""
    from pyimgano_hydra.schemas import model, model_zoo

    path = f"{cls.__module__}.{cls.__qualname__}"
    for schema in (*model.SCHEMAS.values(), *model_zoo.SCHEMAS.values()):
        if getattr(schema, "_target_", None) == path:
            return schema
    return None


def require_groups(cfg: DictConfig) -> None:
    """A run's config holds each of ``REQUIRED_GROUPS`` (``~model`` or ``model=null`` failed later on
    a NoneType, naming no key)."""
    for group in REQUIRED_GROUPS:
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"{group}: deleted or null; pick an option of the {group} group ({group}=<option>, "
                              f"listed by --help)")


def validate(cfg: DictConfig) -> None:
    """Run each group's range checks (dataclass ``__post_init__``) and refuse any non-finite
    number; raise ConfigError naming the key."""
    for group in (*GROUPS, "gpu", "loader"):  # gpu, loader: top-level nodes with their own range checks
        node = cfg.get(group)
        if node is None or OmegaConf.get_type(node) in (dict, None):
            continue
        try:
            OmegaConf.to_object(node)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc).splitlines()[0]) from exc
    for own in ("gpu", "loader", "cache"):
        refuse_unknown_keys(cfg.get(own), own)
    _check_values(OmegaConf.to_container(cfg, resolve=True), "")
    _check_across_groups(cfg)


def refuse_unknown_keys(node: Any, key: str) -> None:
    """The run's own nodes (``cache``, ``gpu``, ``loader``) hold only their schema's keys
    (``+loader.pin_memory=abc`` was kept and ignored)."""
    if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
        known = {f.name for f in dataclasses.fields(OmegaConf.get_type(node))}
        unknown = sorted(str(k) for k in node.keys() if k not in known)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0][:80]}: unknown key; known keys: {', '.join(sorted(known))}")


SEED_KEYS = ("seed", "random_state")  # in any group: numpy and torch take 0 .. 2**32 - 1 alike


def _check_values(node: Any, key: str) -> None:
    """nan/inf never make sense as a setting (a bound, a weight, a ratio): refuse them all; a seed
    anywhere is an integer numpy and torch both take (a negative one failed deep in the fit)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}: must be a finite number, got {node}")
    if key.rpartition(".")[2] in SEED_KEYS and node is not None and (
            isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < 2**32):
        raise ConfigError(f"{key}: must be an integer in 0..{2**32 - 1}, got {node!r}")
    if isinstance(node, dict):
        for name, value in node.items():
            _check_values(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_values(value, f"{key}[{i}]")


def _check_across_groups(cfg: DictConfig) -> None:
    tiling, dataset = cfg.get("tiling") or {}, cfg.get("dataset") or {}
    resize, tile = dataset.get("resize"), tiling.get("tile_size")
    if tiling.get("enabled") and resize is not None and tile is not None and tile > resize:
        raise ConfigError(f"tiling.tile_size: {tile} is larger than the images (dataset.resize={resize}); "
                          "use a smaller tile, or dataset.resize=null to tile the original images")
    model = cfg.get("model") or {}
    if not tiling.get("enabled") and model.get("backbone") is not None and resize is not None:
        from pyimgano_hydra.features.extract import MAX_FEATURE_PIXELS

        if resize * resize > MAX_FEATURE_PIXELS:  # checked at extraction too, after every image was loaded
            raise ConfigError(f"dataset.resize: {resize}x{resize} images through a backbone take gigabytes each; at "
                              f"most {MAX_FEATURE_PIXELS:,} pixels (2048x2048): set a smaller dataset.resize, or tiling")
