"""Detector classes a run dir may name: ours and PyOD's, by exact name, resolved by us.

A stored inspector names its detector class; loading looks the name up here and checks
the class by identity. Nothing from a file is ever imported as a dotted path, except
with ``trust_targets=true`` (custom detectors of a run dir you trust).
"""
from __future__ import annotations

import importlib
from typing import Any

from pyimgano_hydra.errors import UserError

# name -> "module:attribute"; the module strings are ours, never read from a file.
DETECTORS = {
    "PatchCore": "pyimgano_hydra.models.patchcore:PatchCore",
    "PaDiM": "pyimgano_hydra.models.padim:PaDiM",
    "PyODOnFeatures": "pyimgano_hydra.models.pyod_on_features:PyODOnFeatures",
    "ConvAutoencoder": "pyimgano_hydra.models.autoencoder:ConvAutoencoder",
}
PYOD_CLASSES = {
    f"pyod.models.{module}.{cls}": f"pyod.models.{module}:{cls}"
    for module, cls in [("abod", "ABOD"), ("cblof", "CBLOF"), ("cof", "COF"), ("copod", "COPOD"),
                        ("ecod", "ECOD"), ("gmm", "GMM"), ("hbos", "HBOS"), ("iforest", "IForest"),
                        ("inne", "INNE"), ("kde", "KDE"), ("knn", "KNN"), ("lmdd", "LMDD"),
                        ("loda", "LODA"), ("lof", "LOF"), ("mcd", "MCD"), ("ocsvm", "OCSVM"),
                        ("pca", "PCA"), ("qmcd", "QMCD"), ("rod", "ROD"), ("sampling", "Sampling"),
                        ("sod", "SOD")]
}


def _import(spec: str) -> type:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def detector_name(cls: type) -> str:
    """The registry name of a detector class (its dotted path when it is not registered)."""
    for name, spec in DETECTORS.items():
        if _import(spec) is cls:
            return name
    return dotted(cls)


def _custom(name: str, key: str, base: type | None) -> type:
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr) if module else None
    except ImportError as exc:
        raise UserError(f"{key}: {name} cannot be imported ({exc})") from exc
    if not isinstance(cls, type) or (base is not None and not issubclass(cls, base)):
        raise UserError(f"{key}: {name} is not a detector class")
    return cls


def resolve_detector(name: Any, key: str, trust_targets: bool = False) -> type:
    """Our detector class named ``name``; a custom class only with ``trust_targets``."""
    from pyimgano_hydra.models.base import BaseDetector

    if not isinstance(name, str):
        raise UserError(f"{key}: must be a detector name, got {type(name).__name__}")
    if name in DETECTORS:
        cls = _import(DETECTORS[name])
        if detector_name(cls) != name:  # identity check: the name maps back to this very class
            raise UserError(f"{key}: {name} does not resolve to a registered detector")
        return cls
    if trust_targets:
        return _custom(name, key, BaseDetector)
    raise UserError(f"{key}: {name} is not a registered detector ({', '.join(DETECTORS)}); "
                    "pass trust_targets=true only if you trust where this run dir came from")


def resolve_pyod(name: Any, key: str, trust_targets: bool = False) -> type:
    """The PyOD class named exactly ``name`` (e.g. pyod.models.knn.KNN)."""
    if not isinstance(name, str):
        raise UserError(f"{key}: must be a PyOD class name, got {type(name).__name__}")
    if name in PYOD_CLASSES:
        cls = _import(PYOD_CLASSES[name])
        if dotted(cls) != name:
            raise UserError(f"{key}: {name} does not resolve to that PyOD class")
        return cls
    if trust_targets:
        return _custom(name, key, None)
    raise UserError(f"{key}: {name} is not a registered PyOD detector; "
                    "pass trust_targets=true only if you trust where this run dir came from")
