"""Hydra sweeper plugins of pyimgano_hydra (Hydra only loads plugins from ``hydra_plugins``)."""
