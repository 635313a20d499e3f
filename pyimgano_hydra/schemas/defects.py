"""Schemas of the ``defects`` group."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DefectsSchema:
    enabled: bool = False


SCHEMAS = {"defects": DefectsSchema}
