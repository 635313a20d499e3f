"""Multirun support: job-dir naming resolvers and the leaderboard callback.

Importing this package registers the OmegaConf resolvers used by ``hydra.sweep`` in
``conf/config.yaml`` (``pyimgano_job_dir``, ``pyimgano_pid``).
"""
from pyimgano_hydra.resolvers import register_resolvers

register_resolvers()
