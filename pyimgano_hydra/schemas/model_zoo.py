"""Schemas of the ``model`` group for the PyOD-on-features adapter and the autoencoder."""
from __future__ import annotations

GROUP = "model"
SCHEMAS: dict = {}
