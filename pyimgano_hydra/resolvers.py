"""Every OmegaConf resolver the app uses, registered in one place.

``${pyimgano_job_dir:num,sweep_dir,overrides}`` and ``${pyimgano_pid:}`` name multirun job
folders (``hydra.sweep`` in ``conf/config.yaml``); ``${pyimgano_groups:}`` lists conf/'s
groups in ``--help``; ``${pyimgano_cache_root:}`` is where caches and generated data go.
"""
from __future__ import annotations

import os

from omegaconf import OmegaConf


def cache_root() -> str:
    """$PYIMGANO_CACHE, else ~/.cache/pyimgano_hydra; an empty variable is unset (``oc.env`` gave "",
    and the defaults under it became /features and /synthetic at the filesystem root)."""
    home = os.environ.get("HOME") or "."
    return os.environ.get("PYIMGANO_CACHE") or f"{home}/.cache/pyimgano_hydra"


def register_cache_root() -> None:
    """``${pyimgano_cache_root:}``, registered by the schemas that default to it (idempotent)."""
    if not OmegaConf.has_resolver("pyimgano_cache_root"):
        OmegaConf.register_new_resolver("pyimgano_cache_root", cache_root)


def register_resolvers() -> None:
    """Register the app's resolvers (idempotent; entry points call it before composing)."""
    register_cache_root()
    from pyimgano_hydra.reference import config_groups_text
    from pyimgano_hydra.sweep.naming import job_dir_resolver

    if not OmegaConf.has_resolver("pyimgano_job_dir"):
        OmegaConf.register_new_resolver("pyimgano_job_dir", job_dir_resolver)
    if not OmegaConf.has_resolver("pyimgano_pid"):
        # Cached: Hydra copies the launching process's resolver cache into every job's
        # config, so all jobs see the launcher's pid (as with ${now:}).
        OmegaConf.register_new_resolver("pyimgano_pid", lambda: os.getpid(), use_cache=True)
    if not OmegaConf.has_resolver("pyimgano_groups"):
        OmegaConf.register_new_resolver("pyimgano_groups", config_groups_text)
