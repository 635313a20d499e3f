"""Every OmegaConf resolver the app uses, registered in one place.

``${pyimgano_job_dir:num,sweep_dir,overrides}`` and ``${pyimgano_pid:}`` name multirun job
folders (``hydra.sweep`` in ``conf/config.yaml``); ``${pyimgano_groups:}`` lists conf/'s
groups in ``--help``.
"""
from __future__ import annotations

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register the app's resolvers (idempotent; entry points call it before composing)."""
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
