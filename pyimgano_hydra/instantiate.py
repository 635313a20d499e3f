"""The one place configs become objects (``_target_``), with readable errors and an allowlist."""
from __future__ import annotations

from typing import Any, Iterable

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf

from pyimgano_hydra.errors import ConfigError, UserError

# Targets a run dir from elsewhere may name without --trust (see infer).
TRUSTED_PREFIXES = ("pyimgano_hydra.", "pyod.", "sklearn.")


def iter_targets(node: Any, key: str = "") -> Iterable[tuple[str, str]]:
    """Yield (config key, target) for every ``_target_`` in a config tree."""
    if isinstance(node, (DictConfig, dict)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for k, v in items:
            sub = f"{key}.{k}" if key else str(k)
            if k == "_target_" and isinstance(v, str):
                yield sub, v
            else:
                yield from iter_targets(v, sub)
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, v in enumerate(node):
            yield from iter_targets(v, f"{key}[{i}]")


def check_targets(node: Any, key: str, allowed_prefixes: Iterable[str] = TRUSTED_PREFIXES) -> None:
    """Refuse any ``_target_`` outside the allowlist (used for run dirs made elsewhere)."""
    allowed = tuple(allowed_prefixes)
    for sub, target in iter_targets(node, key):
        if not target.startswith(allowed):
            raise UserError(
                f"{sub}={target} is not an allowed target (allowed: {', '.join(allowed)}); "
                "pass trust_targets=true only if you trust where this run dir came from"
            )


def build(node: DictConfig | dict, key: str, **kwargs: Any) -> Any:
    """Instantiate ``node`` (its ``_target_``) with plain-Python arguments; errors name ``key``."""
    if isinstance(node, dict):
        node = OmegaConf.create(node)
    target = node.get("_target_")
    if not target:
        raise ConfigError(f"{key}: no _target_ given; pick an option of the '{key.split('.')[0]}' group")
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except UserError:
        raise
    except Exception as exc:  # hydra wraps import and constructor errors alike
        cause = exc.__cause__ or exc
        if isinstance(cause, UserError):
            raise cause
        message = " ".join(line.strip() for line in str(cause).splitlines() if line.strip()) or type(cause).__name__
        raise ConfigError(f"{key}._target_={target}: {message}") from exc


def build_detector_factory(model_cfg: Any, tiling_cfg: Any = None, **params: Any):
    """Zero-arg factory of a fresh detector from ``model`` (``params`` override its keys),
    tiled when ``tiling.enabled``."""
    from pyimgano_hydra.adapt.tiling import maybe_tile

    def make():
        return maybe_tile(lambda: build(model_cfg, "model", **params), tiling_cfg)

    return make
