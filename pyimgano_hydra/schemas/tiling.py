"""Schemas of the ``tiling`` group."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TilingSchema:
    enabled: bool = False


SCHEMAS = {"tiling": TilingSchema}
