"""Atomic artifact writers: write to a temp file in the same folder, then rename.

Artifacts get the mode a plain ``open(path, "w")`` would give (0666 minus the umask), so a
run dir or cache on a shared disk stays readable. File names that are not valid UTF-8
(``os.fsdecode`` turns their bytes into lone surrogates) are written as ``\\udcXX`` JSON
escapes: ``json.load`` + ``os.fsencode`` give back the original bytes.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def clean_floats(obj: Any) -> Any:
    """Replace NaN/inf by None so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    if isinstance(obj, np.floating):
        return clean_floats(float(obj))
    return obj


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text; lone surrogates (undecodable file-name bytes) become ``\\uXXXX`` escapes."""
    text = json.dumps(clean_floats(obj), indent=indent, default=_default, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _temporary_beside(path: Path, data: bytes) -> str:
    """A new file in ``path``'s folder holding ``data``, with a plain file's mode; its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = _temporary_beside(path, data)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None  # a full disk names no file
        raise
    return path


def write_bytes_new(path: str | Path, data: bytes) -> bool:
    """``write_bytes_atomic`` unless ``path`` exists (then False, nothing written): a complete file
    appears under ``path`` or nothing does, and of two writers exactly one wins."""
    path = Path(path)
    tmp = _temporary_beside(path, data)
    try:
        os.link(tmp, path)  # never replaces
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8; a lone surrogate (an undecodable file name) goes back to its original byte."""
    return write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, to_json(obj) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(to_json(r, indent=None) + "\n" for r in records))


def save_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue())


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
