"""Parsing the untrusted files of a run dir into typed values.

A run dir is handed from the lab to the line: nothing in it is instantiated, imported,
interpolated or unpickled. JSON is parsed with a size and depth limit, the inspector file
with ``torch.load(weights_only=True)``; every value is checked for type and range here,
and every refusal is one line naming the file and key.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, BinaryIO

from pyimgano_hydra.errors import UserError
from pyimgano_hydra.files import open_regular, read_regular, refuse_sparse, shown

MAX_JSON_BYTES = 64 << 20
MAX_JSON_VALUES = 200_000  # containers and list/object entries: a run's report.json holds a few thousand
MAX_DEPTH = 32
PLAIN = (type(None), bool, int, float, str)


def confined(root: Path, relative: str | Path, key: str) -> Path:
    """``root / relative``, refused when it is absolute, climbs with ``..`` or resolves outside
    ``root`` (a symlink out)."""
    rel = Path(relative)
    if "\x00" in str(relative):
        raise UserError(f"{key}: {str(relative)!r} holds a NUL byte; not a path")
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"{key}: {str(relative)!r} must be a path inside the run dir")
    path = root / rel
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except OSError:  # a link loop, or one changing while it is resolved
        inside = False
    if not inside:
        raise UserError(f"{key}: {str(relative)!r} leads outside the run dir (a symlink?); refused")
    return path


def no_links(root: Path, relative: str | Path, what: str) -> Path:
    """``root / relative`` to write into: refused when a component below ``root`` is a symlink
    (a write through one would land outside the run dir, or elsewhere in it)."""
    path = Path(root)
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            raise UserError(f"{path}: a symlink in the run dir; {what} is never written through one")
    return path


def _depth(obj: Any, limit: int, level: int = 0) -> int:
    if level > limit:
        return level
    if isinstance(obj, dict):
        return max([_depth(v, limit, level + 1) for v in obj.values()], default=level)
    if isinstance(obj, (list, tuple)):
        return max([_depth(v, limit, level + 1) for v in obj], default=level)
    return level


def _no_duplicates(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):  # linear: keys.count per key took minutes on 300,000 keys
        seen: set = set()
        raise ValueError(f"duplicate key {next(k for k, _ in pairs if k in seen or seen.add(k))!r}")
    return out


def read_regular_file(path: Path, limit: int = MAX_JSON_BYTES, follow: bool = True) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes; a FIFO,
    device (``/dev/zero``) or directory is refused without blocking or reading it."""
    return read_regular(path, limit, "not a run-dir file", follow=follow)


def read_json_file(path: Path, follow: bool = True) -> Any:
    """A JSON file's value; refused in one line when unreadable, not a regular file, not JSON
    (duplicate keys included), huge or too deep. ``follow=False``: ``path`` may not be a link."""
    path = Path(path)
    try:
        data = read_regular_file(path, follow=follow)  # at most MAX_JSON_BYTES
        # counted before parsing: 64 MB of [{},{},...] became 22 million dicts (2.4 GB)
        if data.count(b"{") + data.count(b"[") + data.count(b",") > MAX_JSON_VALUES:
            raise UserError(f"{shown(str(path))}: holds more than {MAX_JSON_VALUES:,} values; not a run-dir file")
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except FileNotFoundError as exc:
        raise UserError(f"{shown(str(path))}: missing; the run dir is incomplete") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = str(exc) if str(exc).startswith("duplicate key") else type(exc).__name__
        raise UserError(f"{shown(str(path))}: not a readable JSON file ({detail})") from exc
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise UserError(f"{shown(str(path))}: nested deeper than {MAX_DEPTH} levels; not a run-dir file")
    return value


def schema_version(value: Any, where: str) -> int:
    """An integer schema version (not a bool, float or string)."""
    if type(value) is not int:
        raise UserError(f"{where}: schema_version must be an integer, got {value!r}")
    return value


def require(mapping: Any, key: str, types: type | tuple, where: str) -> Any:
    """``mapping[key]`` when it has one of ``types``; one-line refusal otherwise."""
    if not isinstance(mapping, dict):
        raise UserError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        raise UserError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise UserError(f"{where}.{key}: expected {_names(types)}, got {type(value).__name__}")
    return value


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in _tuple(types))


def is_finite_number(value: Any) -> bool:
    """A finite int or float: not a bool, not NaN/inf, not an int past the float range."""
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an int past the float range
        return False


def finite(value: Any, where: str) -> float:
    """``value`` as a float when it is a finite int or float (``is_finite_number``)."""
    if not is_finite_number(value):
        raise UserError(f"{where}: must be a finite number, got {repr(value)[:40]}")
    return float(value)


def plain(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` when made of None/bool/int/float/str, lists and string-keyed dicts only; no
    ``_target_`` and no ``${...}`` interpolation (nothing from a file is resolved)."""
    if depth > MAX_DEPTH:
        raise UserError(f"{where}: nested too deep")
    if isinstance(value, str):
        if "${" in value:
            raise UserError(f"{where}: interpolations are not allowed in a run dir ({value[:40]!r})")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: must be finite, got {value}")
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{where}: keys must be strings")
            if k == "_target_":
                raise UserError(f"{where}._target_: not allowed in a run dir (classes come from the registry)")
            out[k] = plain(v, f"{where}.{k}", depth + 1)
        return out
    raise UserError(f"{where}: {type(value).__name__} is not a plain value")


def params_for(cls: type, params: Any, where: str) -> dict:
    """Constructor params of ``cls``: plain values, every name one of its ``__init__`` params."""
    params = plain(params, where)
    if not isinstance(params, dict):
        raise UserError(f"{where}: expected a mapping of parameters")
    signature = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.values())
    unknown = sorted(set(params) - set(signature) - {"self"})
    if unknown and not accepts_any:
        raise UserError(f"{where}.{unknown[0]}: {cls.__name__} has no such parameter")
    return params


MAX_STORED_INT = 10_000  # n_estimators, n_neighbors, n_iter... of a stored PyOD detector
SEED_KEYS = ("random_state", "seed")


def bounded_ints(params: dict, where: str) -> dict:
    """``params`` when every int in it (but a seed) lies in -1..MAX_STORED_INT: a stored
    ``n_estimators=10**9`` would re-fit for hours on load."""
    for key, value in params.items():
        if key in SEED_KEYS:
            continue
        if type(value) is int and not -1 <= value <= MAX_STORED_INT:
            raise UserError(f"{where}.{key}: {str(value)[:24]} is out of range (-1..{MAX_STORED_INT}) for a stored detector")
        if isinstance(value, dict):
            bounded_ints(value, f"{where}.{key}")
    return params


def check_against_schema(cls: type, params: dict, where: str) -> None:
    """Type and range checks of the config schema whose ``_target_`` is ``cls`` (if any)."""
    from omegaconf import OmegaConf

    from pyimgano_hydra.schemas import schema_for

    schema = schema_for(cls)
    if schema is None:
        return
    try:
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), params))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from exc
    except Exception as exc:  # omegaconf type errors
        raise UserError(f"{where}: {str(exc).splitlines()[0]}") from exc


def _stored_entries_only(handle: BinaryIO, where: str) -> None:
    """Refuse a torch zip file with compressed entries: ``torch.save`` stores every entry as is,
    and a deflated one is a decompression bomb (a 1 MB file inflating to gigabytes)."""
    import zipfile

    magic, size = handle.read(4), os.fstat(handle.fileno()).st_size
    handle.seek(0)
    try:
        with zipfile.ZipFile(handle) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        if magic == b"PK\x03\x04":  # torch reads it as a zip (its own reader): so must we
            raise UserError(f"{where}: refused: a zip archive Python's zipfile cannot read, so it cannot "
                            "be checked for compressed entries (a decompression bomb?)") from None
        return  # not a zip file (torch's legacy format): torch.load reads or refuses it
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or sum(e.file_size for e in entries) > size:
        raise UserError(f"{where}: refused: compressed entries (torch.save never writes them; "
                        "a decompression bomb?)")
    if not _one_central_directory(handle):
        raise UserError(f"{where}: refused: its zip directory is not where its end record says (a second "
                        "directory for torch's reader? torch.save never writes one)")


def _one_central_directory(handle: BinaryIO) -> bool:
    """The central directory zipfile read (just before the end record) is the one the end record
    (and a ZIP64 locator) points at, as torch's reader follows it: a file with two directories
    showed zipfile stored entries and torch a deflated bomb."""
    import struct
    import zipfile

    end = zipfile._EndRecData(handle)
    if end is None:
        return False
    location, size_cd, offset_cd = end[zipfile._ECD_LOCATION], end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
    if end[zipfile._ECD_SIGNATURE] != zipfile.stringEndArchive64:
        return offset_cd + size_cd == location
    record = location - zipfile.sizeEndCentDir64Locator - zipfile.sizeEndCentDir64  # where zipfile read it
    handle.seek(location - zipfile.sizeEndCentDir64Locator)
    locator = handle.read(zipfile.sizeEndCentDir64Locator)
    signature, _, located, _ = struct.unpack(zipfile.structEndArchive64Locator, locator)
    return signature == zipfile.stringEndArchive64Locator and located == record and offset_cd + size_cd == record


def torch_file(path: Path, key: str | None = None, follow: bool = True) -> tuple[Any, int]:
    """(``torch.load(weights_only=True)`` of ``path``, its size), read through ONE open descriptor of
    a regular file: the bytes checked for compressed entries are the bytes torch reads (a FIFO or
    a bomb renamed over the file after a check by name hung infer). Torch's own errors pass.
    ``follow=False``: ``path`` may not be a link."""
    import torch

    where = f"{key + ': ' if key else ''}{shown(str(path))}"
    with open_regular(path, "not a run-dir file", follow=follow) as handle:
        refuse_sparse(handle, where, "copy the run dir whole (cp --sparse=never)")
        _stored_entries_only(handle, where)
        handle.seek(0)
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing
            warnings.simplefilter("ignore")
            return torch.load(handle, map_location="cpu", weights_only=True), os.fstat(handle.fileno()).st_size


def load_weights(path: Path, follow: bool = True, shown_as: str | None = None) -> dict:
    """A torch file of tensors and plain containers (``weights_only=True``); pickled objects refused.
    Errors name ``shown_as`` (default: ``path``)."""
    name = shown_as or shown(str(path))
    if not os.path.lexists(path):
        raise UserError(f"{name}: missing; the run dir is incomplete (was it saved with recipe.save_checkpoint=true?)")
    try:
        payload, size = torch_file(path, follow=follow)
    except UserError:
        raise
    except pickle.UnpicklingError as exc:
        raise UserError(f"{name}: refused: it holds pickled objects, not just tensors and plain data") from exc
    except Exception as exc:  # corrupt / not a torch file
        raise UserError(f"{name}: not a readable torch file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict):
        raise UserError(f"{name}: expected a mapping at the top level")
    bounded_payload(payload, name, size)
    return payload


MAX_NODES = 1_000_000  # containers and values walked in one stored file (an inspector holds a few hundred)


def bounded_payload(payload: Any, path: str | Path, file_size: int) -> None:
    """Refuse a loaded torch payload that is far larger than its file: a pickle naming one list
    2**30 times through shared references (walking it never ends), or tensors whose elements
    outnumber the bytes stored for them (a stride-0 view of one float as a 15 GB matrix)."""
    import torch

    stack, nodes, tensor_bytes = [payload], 0, 0
    while stack:
        value = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise UserError(f"{path}: refused: holds more than {MAX_NODES} values (shared references?); "
                            "not a file training writes")
        if isinstance(value, torch.Tensor):
            if value.is_complex() or value.is_quantized or value.is_nested or value.layout != torch.strided:
                raise UserError(f"{path}: refused: holds a {value.dtype} tensor of layout {value.layout}; "
                                "training writes dense real tensors only")
            tensor_bytes += value.numel() * value.element_size()
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(value)
    if tensor_bytes > 2 * file_size + (1 << 20):
        raise UserError(f"{path}: refused: its tensors hold {tensor_bytes >> 20} MB in a {file_size >> 10} KB file "
                        "(strided or shared views; not a file training writes)")
