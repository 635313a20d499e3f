"""Schemas of the ``postprocess`` group."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PostprocessSchema:
    enabled: bool = True


SCHEMAS = {"postprocess": PostprocessSchema}
