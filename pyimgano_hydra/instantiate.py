"""The one place configs become objects (``_target_``), with readable errors.

Only the user's own composed config is instantiated here; a run dir is never (see
:mod:`pyimgano_hydra.runs.trust`)."""
from __future__ import annotations

from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from pyimgano_hydra.errors import ConfigError, UserError


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
