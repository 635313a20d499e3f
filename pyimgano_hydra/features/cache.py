"""On-disk feature cache shared by jobs: same images + preprocessing + backbone + weights + layers
-> the features the first job extracted.

* Keys are SHA-256 digests of their parts (strings, numbers, bytes, arrays, dicts/lists of
  them); :func:`image_digest` hashes an image's bytes, shape and dtype, and
  :func:`backbone_key_parts` describes a backbone: name, layers, a digest of its loaded
  weights, its preprocessing, device type and torch version. :func:`backbone_key` digests
  them, and leaves a record under ``<dir>/backbones/`` so that a later job with a backbone not
  yet built (``DeferredBackbone``) finds its key without building it.
* One entry = one ``.npz`` file (a dict of arrays) under ``<dir>/<key[:2]>/``, written to a
  temp file in the same folder and renamed into place, so readers never see half a file and
  parallel jobs (joblib workers, SLURM tasks on a shared disk) can share one directory.
* While one process computes a batch's missing features it holds a lock named after that
  batch; a second job asking for the same batch waits, then reads instead of recomputing.
* Size limit: when the cache grows past ``max_bytes``, the least recently used entries (by
  mtime, refreshed on every hit) are deleted down to 90 % of the limit.

Use ``FeatureCache(dir, max_bytes).get_or_compute(key_parts, compute_fn)`` for one value, or
``map_images(images, key_parts, compute_fn)`` for per-image features of a batch. A job turns
the cache on with ``with feature_cache(cfg.cache): ...`` (the ``cache:`` config node);
``features.extract.iter_features`` then reads and fills it through
:func:`cached_backbone_features`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from pyimgano_hydra.errors import UserError, check
from pyimgano_hydra.files import folder_lock, held_folder
from pyimgano_hydra.runs.trust import read_regular_file
from pyimgano_hydra.runs.writers import write_bytes_atomic

log = logging.getLogger(__name__)
ArrayDict = dict[str, np.ndarray]
SINGLE = "__array__"
SUFFIX = ".npz"
LOCK_DIR = ".locks"
BACKBONE_DIR = "backbones"  # <identity digest>.txt: the feature key of a backbone built from it;
#                             <features key>.channels.json: each layer's channels, as first computed
LOCK_STRIPE_CHARS = 3
CACHE_VERSION = 1
MAX_ENTRY_BYTES = 1 << 30
MAX_FEATURE_VALUE = 1e15  # a backbone activation is far smaller; squared and summed it stays in float32


# ---- keys ----------------------------------------------------------------------------
def _feed(h: "hashlib._Hash", part: Any) -> None:
    if isinstance(part, np.ndarray):
        arr = np.ascontiguousarray(part)
        h.update(f"nd{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    elif isinstance(part, (bytes, bytearray, memoryview)):
        h.update(b"b%d:" % len(part))
        h.update(part)
    elif isinstance(part, Mapping):
        h.update(b"{")
        for k in sorted(part, key=str):
            _feed(h, str(k))
            _feed(h, part[k])
        h.update(b"}")
    elif isinstance(part, (list, tuple)):
        h.update(b"[")
        for item in part:
            _feed(h, item)
        h.update(b"]")
    elif hasattr(part, "detach") and hasattr(part, "cpu"):  # a torch tensor
        _feed(h, part.detach().cpu().numpy())
    else:
        text = json.dumps(part, sort_keys=True, default=str)
        h.update(f"s{len(text)}:".encode() + text.encode())


def make_key(*parts: Any) -> str:
    """SHA-256 hex digest of ``parts`` (order matters; dict order does not)."""
    h = hashlib.sha256(f"pyimgano-feature-cache-v{CACHE_VERSION}".encode())
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def image_digest(image: np.ndarray) -> str:
    """Digest of one image's pixels, shape and dtype."""
    return make_key(np.asarray(image))


def module_digest(module: Any) -> str:
    """Digest of a torch module's parameters and buffers (names, shapes, dtypes, values)."""
    import torch

    arrays = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu()
        arrays[name] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return make_key(arrays)


# ---- the cache -----------------------------------------------------------------------
def _as_dict(value: np.ndarray | Mapping[str, np.ndarray]) -> ArrayDict:
    if isinstance(value, Mapping):
        return {str(k): np.asarray(v) for k, v in value.items()}
    return {SINGLE: np.asarray(value)}


def _from_dict(arrays: ArrayDict) -> np.ndarray | ArrayDict:
    return arrays[SINGLE] if set(arrays) == {SINGLE} else arrays


_ENTRY_FOLDER = re.compile("[0-9a-f]{2}")
_ENTRY_KEY = re.compile("[0-9a-f]{64}")


def read_entry(path: Path) -> ArrayDict | None:
    """The arrays of an entry as ``put`` writes it (a regular file holding a stored npz of plain
    numeric arrays whose headers fit the bytes present), else None: the cache dir may be shared,
    so a FIFO, a bomb, a pickle or a short file is a miss, never a hang or a crash."""
    try:
        data = read_regular_file(path, MAX_ENTRY_BYTES)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                    return None
                with archive.open(info) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(member)
                # the bytes present, not only the size the zip claims (a zip64 extra said 2**60: 36 TiB allocated)
                if dtype.hasobject or dtype.kind not in "biuf" or \
                        int(np.prod(shape, dtype=object)) * dtype.itemsize > min(info.file_size, len(data)):
                    return None
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (UserError, OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError,
            MemoryError):
        return None  # RuntimeError: an entry flagged encrypted; NotImplementedError: an unknown zip feature


def _signature(arrays: ArrayDict) -> tuple:
    return tuple(sorted((name, arr.shape, arr.dtype.str) for name, arr in arrays.items()))


class FeatureCache:
    """A directory of feature entries with atomic writes, batch locks and LRU-ish eviction."""

    def __init__(self, root: str | Path, max_bytes: int | float | None = 2 * 1024**3,
                 enabled: bool = True, lock_timeout_s: float = 900.0) -> None:
        self.root = Path(root)
        self.name = Path(root)  # for messages: ``root`` is the held folder inside ``held()``
        self._real_root = os.path.realpath(self.root)  # a folder above it swapped for a link later: off
        self.max_bytes = int(max_bytes) if max_bytes else None
        self.enabled = bool(enabled)
        self.lock_timeout_s = lock_timeout_s
        self.hits = 0
        self.misses = 0
        self._written_since_check = 0
        self._held = False

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"FeatureCache({str(self.name)!r}, max_bytes={self.max_bytes}, {state})"

    # -- paths and locks
    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def _off(self, exc: OSError) -> None:
        """A cache that cannot be written (a full or read-only disk) turns off: the run goes on
        extracting features afresh; the cache is never what loses a run."""
        if self.enabled:
            log.warning("feature cache %s turned off for this run (%s)", self.name, exc)
        self.enabled = False

    @contextmanager
    def held(self) -> Iterator[None]:
        """Work inside the root folder itself for the block, held open: a folder above it swapped
        for a link meanwhile changes nothing (a lock file was created behind such a link). A root
        that cannot be made turns the cache off."""
        with ExitStack() as stack:
            folder = None
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                # every folder from / down, none a link: the root was resolved when the cache was
                # opened, so a folder above it swapped for a link since then is refused, not followed
                folder = stack.enter_context(held_folder(os.path.relpath(self._real_root, os.sep), below=os.sep))
            except OSError as exc:
                self._off(exc)
            if folder is not None:
                self.root, self._held = folder, True
            try:
                yield
            finally:  # used after the block (a late writer) it would be by name: off instead
                self.root, self._held, self.enabled = self.name, False, False

    def own_folder(self, folder: Path) -> bool:
        """``folder`` (an entry folder, ``.locks``, ``backbones``) and the (resolved) root are the
        cache's own, not symlinks: a prepared cache linked its folders into a completed run, and
        entries were written there. A linked one turns the cache off (``_off``)."""
        if self._held:  # the root is the folder held open, whatever its path leads to now
            linked = folder if folder.is_symlink() else None
        else:
            linked = next((f for f in (self.root, folder) if f.is_symlink()), None)
            if linked is None and os.path.realpath(self.root) != self._real_root:
                linked = f"a folder above {self.root}"
        if linked is not None:
            self._off(OSError(f"{linked} is a symlink; the cache writes only into its own folders"))
            return False
        return True

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """Hold the key stripe's lock; when it cannot be created the cache turns off (``_off``)."""
        with ExitStack() as stack:
            try:
                stack.enter_context(self._lock(key))
            except OSError as exc:
                self._off(exc)
            yield

    def _lock(self, key: str):
        """A lock file per key stripe (4096 at most, so lock files never pile up); OSError when it
        cannot be made, on entering."""
        folder = self.root / LOCK_DIR
        if not self.own_folder(folder):
            raise OSError(f"{folder} is a symlink")
        folder.mkdir(parents=True, exist_ok=True)
        return folder_lock(folder, f"{key[:LOCK_STRIPE_CHARS]}.lock", self.lock_timeout_s)

    # -- single entries
    def get(self, key: str) -> np.ndarray | ArrayDict | None:
        """The stored value, or None (a miss, a disabled cache, or an unreadable entry)."""
        if not self.enabled:
            return None
        path = self.path(key)
        arrays = read_entry(path)
        if arrays is None:
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return _from_dict(arrays)

    def put(self, key: str, value: np.ndarray | Mapping[str, np.ndarray]) -> None:
        """Store ``value`` (an array or a dict of arrays) under ``key`` (atomic; last writer wins)."""
        if not self.enabled:
            return
        buffer = io.BytesIO()
        np.savez(buffer, **_as_dict(value))
        data = buffer.getvalue()
        if not self.own_folder(self.path(key).parent):
            return
        try:
            write_bytes_atomic(self.path(key), data)
            self._written_since_check += len(data)
            if self.max_bytes and self._written_since_check >= max(self.max_bytes // 20, 1):
                self.evict()
        except OSError as exc:
            self._off(exc)

    def get_or_compute(self, key_parts: Any, compute_fn: Callable[[], Any]) -> Any:
        """The cached value for ``make_key(key_parts)``, computing and storing it on a miss."""
        if not self.enabled:
            return compute_fn()
        key = make_key(key_parts)
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return value
        with self._locked(key):
            value = self.get(key)  # another job may have written it while we waited
            if value is not None:
                self.hits += 1
                return value
            self.misses += 1
            value = compute_fn()
            self.put(key, value)
        return value

    # -- per-image batches
    def map_images(self, images: np.ndarray, key_parts: Any,
                   compute_fn: Callable[[np.ndarray], np.ndarray | Mapping[str, np.ndarray]],
                   valid: Callable[[ArrayDict], bool] = lambda arrays: True) -> np.ndarray | ArrayDict:
        """Per-image features of ``images`` (N, ...): cached rows are read, the rest computed in
        one ``compute_fn(images[missing])`` call (returning an array or a dict of arrays with a
        leading axis of len(missing)) and stored one entry per image. A stored row that fails
        ``valid``, or whose names, shapes and dtypes differ from the other rows, is recomputed."""
        if not self.enabled or len(images) == 0:
            return compute_fn(images)
        prefix = make_key(key_parts)
        keys = [make_key(prefix, image_digest(img)) for img in images]
        found: dict[int, ArrayDict] = {}
        computed_rows: set[int] = set()

        def read_all(indices: Iterable[int]) -> None:
            for i in indices:
                value = self.get(keys[i])
                if value is not None and valid(_as_dict(value)):
                    found[i] = _as_dict(value)
            if len({_signature(v) for v in found.values()}) > 1:  # rows of one batch agree
                for i in set(found) - computed_rows:
                    del found[i]

        def compute(indices: list[int]) -> None:
            computed = _as_dict(compute_fn(images[indices]))
            for row, i in enumerate(indices):
                found[i] = {name: np.ascontiguousarray(arr[row]) for name, arr in computed.items()}
                computed_rows.add(i)
                self.put(keys[i], found[i])

        read_all(range(len(images)))
        missing = [i for i in range(len(images)) if i not in found]
        if missing:
            with self._locked(make_key(prefix, [keys[i] for i in missing])):
                read_all(missing)
                missing = [i for i in range(len(images)) if i not in found]
                if missing:
                    compute(missing)
                    truth = _signature(found[missing[0]])
                    stale = [i for i in found if _signature(found[i]) != truth]
                    if stale:  # stored rows unlike what the backbone gives: redo them
                        compute(stale)
                        missing += stale
        self.misses += len(missing)
        self.hits += len(images) - len(missing)
        names = list(found[0])
        stacked = {name: np.stack([found[i][name] for i in range(len(images))]) for name in names}
        return _from_dict(stacked)

    # -- size management
    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, mtime) of every entry: ``<2 hex>/<64 hex key>.npz`` only, so that eviction
        never deletes what is not ours (cache.dir=<a data folder> evicted its masks/*.npz)."""
        out = []
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            if not _ENTRY_FOLDER.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
                continue
            for path in folder.glob(f"{folder.name}*{SUFFIX}"):
                if not _ENTRY_KEY.fullmatch(path.name[:-len(SUFFIX)]) or path.is_symlink():
                    continue
                try:
                    stat = path.stat()
                except OSError:  # evicted by another process meanwhile
                    continue
                out.append((path, stat.st_size, stat.st_mtime))
        return out

    def size_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, max_bytes: int | None = None) -> int:
        """Delete least recently used entries until the cache is under 90 % of ``max_bytes``;
        return the bytes freed. Parallel evictions are serialised by a lock."""
        self._written_since_check = 0
        limit = max_bytes if max_bytes is not None else self.max_bytes
        if not limit:
            return 0
        with self._lock("evict-all"):
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            if total <= limit:
                return 0
            target = int(limit * 0.9)
            freed = 0
            for path, size, _ in sorted(entries, key=lambda e: e[2]):
                if total - freed <= target:
                    break
                try:
                    path.unlink()
                    freed += size
                except OSError:
                    pass
            return freed

    def clear(self) -> None:
        """Delete every entry (locks stay)."""
        for path, _, _ in self.entries():
            try:
                path.unlink()
            except OSError:
                pass


# ---- the cache a job uses (opened from the ``cache:`` config node) ------------------------
# A context variable, set only inside ``with feature_cache(...)``: a detector called outside
# such a block never touches a cache, and concurrent contexts (threads, tasks) do not mix.
_ACTIVE: ContextVar[FeatureCache | None] = ContextVar("pyimgano_feature_cache", default=None)


def open_cache(enabled: bool = True, dir: str | Path | None = None, max_gb: float | None = 4.0) -> FeatureCache | None:
    """The cache a ``cache:`` node describes (checked key by key), or None when it is off."""
    check(isinstance(enabled, bool), "cache.enabled", "must be true or false")
    check(max_gb is None or (isinstance(max_gb, (int, float)) and 0 < max_gb < float("inf")), "cache.max_gb",
          "must be a finite positive number of GB or null (no limit)")
    if not enabled:
        return None
    check(bool(dir), "cache.dir", "must name a folder (or set cache.enabled=false)")
    # resolved once: a shared cache.dir link re-pointed at a completed run while the run ran wrote into it
    root = Path(os.path.realpath(Path(str(dir)).expanduser()))
    return FeatureCache(root, max_bytes=max(1, int(max_gb * 1024**3)) if max_gb else None)  # 1e-10 GB: not "no limit"


def active_cache() -> FeatureCache | None:
    """The cache of the enclosing ``feature_cache`` block, or None."""
    return _ACTIVE.get()


# ---- glue for features/extract.py ------------------------------------------------------
def backbone_key_parts(backbone: Any) -> dict:
    """What a backbone's features depend on besides the image: name, layers, weights (digest of
    the loaded, BatchNorm-folded network), preprocessing (its constants and code), device type
    and torch version. Memoised on the backbone object."""
    parts = getattr(backbone, "_feature_cache_parts", None)
    if parts is None:
        import torch

        preprocess = type(backbone).preprocess.__code__
        parts = {
            "backbone": backbone.name,
            "layers": list(backbone.layers),
            "weights": module_digest(backbone.net),
            "preprocess": {"mean": backbone.mean.detach().cpu().numpy(), "std": backbone.std.detach().cpu().numpy(),
                           "code": preprocess.co_code, "consts": repr(preprocess.co_consts)},
            "device": backbone.device.type,
            "torch": torch.__version__,
        }
        backbone._feature_cache_parts = parts
    return parts


def backbone_key(cache: FeatureCache | None, backbone: Any) -> str:
    """Digest of :func:`backbone_key_parts`. A deferred backbone not yet built takes it from the
    record its first build left in ``cache`` (keyed on its ``identity``), and is built only when
    there is none."""
    key = getattr(backbone, "_feature_cache_key", None)
    if key is not None:
        return key
    identity = getattr(backbone, "identity", None)
    record = cache.root / BACKBONE_DIR / f"{make_key(identity)}.txt" if cache is not None and identity else None
    if record is not None and not backbone.built:
        try:
            key = read_regular_file(record, 1024).decode("ascii").strip()
        except (UserError, OSError, ValueError):
            key = None
        if key is not None and len(key) == 64 and all(c in "0123456789abcdef" for c in key):
            backbone._feature_cache_key = key
            return key
    built = backbone.resolve() if hasattr(backbone, "resolve") else backbone
    key = make_key(backbone_key_parts(built))
    if record is not None and cache.enabled and cache.own_folder(record.parent):
        try:
            write_bytes_atomic(record, key.encode("ascii"))
        except OSError as exc:  # a full or read-only cache disk
            cache._off(exc)
    backbone._feature_cache_key = key
    return key


def _plausible_map(shape: tuple, height: int, width: int) -> bool:
    """A stored layer map (C, h, w) a backbone can give for (height, width) images: h and w the
    image's sides over one stride of 1..32 (a shared cache whose every entry held (C, 1, 1) maps, or
    0x0 ones, was trusted because its rows agreed with each other; the backbone is not built to
    ask it, so a warm cache stays cheap)."""
    return len(shape) == 3 and shape[0] >= 1 and any(
        shape[1:] == (-(-height // stride), -(-width // stride)) for stride in (1, 2, 4, 8, 16, 32))


def _plausible_values(array: np.ndarray) -> bool:
    """Finite features of a size a backbone gives (one NaN, or a 3e38 that overflows later, in a
    shared entry failed the whole run naming nothing)."""
    return bool(np.isfinite(array).all()) and (array.size == 0 or float(np.abs(array).max()) < MAX_FEATURE_VALUE)


def cached_backbone_features(cache: FeatureCache, backbone: Any, chunk: np.ndarray, batch_size: int | None = None) -> dict:
    """``backbone(backbone.preprocess(chunk))`` through the cache: ``{layer: tensor}`` on the
    backbone's device, one cache entry per image (missing ones computed in passes of
    ``batch_size`` images on a GPU, see ``forward_images``)."""
    import torch

    from pyimgano_hydra.features.backbones import forward_images

    def compute(images: np.ndarray) -> ArrayDict:
        feats = forward_images(backbone, images, batch_size or len(chunk))
        return {layer: (v.float() if v.dtype in (torch.bfloat16, torch.float16) else v).cpu().numpy()
                for layer, v in feats.items()}

    def as_output(array: np.ndarray):
        tensor = torch.from_numpy(array).to(backbone.device)
        # the backbone runs channels_last, so its maps come out that way; keep that layout, or
        # reductions over them (pooling) would sum in another order and differ in the last bit
        return tensor.contiguous(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor

    from pyimgano_hydra.features.precision import active_autocast

    parts = backbone_key(cache, backbone)
    if active_autocast() != "none":  # half-precision features are other features
        parts = [parts, active_autocast()]
    layers = set(backbone.layers)
    height, width = chunk.shape[1:3]
    channels = _layer_channels(cache, parts)

    def compute_and_record(images: np.ndarray) -> ArrayDict:
        computed = compute(images)
        _record_layer_channels(cache, parts, channels, {name: int(v.shape[1]) for name, v in computed.items()})
        return computed

    arrays = cache.map_images(chunk, parts, compute_and_record, valid=lambda stored: set(stored) == layers and all(
        v.dtype == np.float32 and _plausible_map(v.shape, height, width) and _plausible_values(v)
        and channels.get(name, v.shape[0]) == v.shape[0] for name, v in stored.items()))
    return {layer: as_output(arrays[layer]) for layer in backbone.layers}


_CHANNELS: dict[tuple[str, str], dict[str, int]] = {}  # (cache dir, features key) -> {layer: channels}


def _channels_record(cache: FeatureCache, parts: Any) -> Path:
    return cache.root / BACKBONE_DIR / f"{make_key(parts)}.channels.json"


def _layer_channels(cache: FeatureCache, parts: Any) -> dict[str, int]:
    """The channels of each layer the first computed batch of these features gave, as recorded in the
    cache (entries of one channel at the right map size, every image a hit, scored AUROC 0.5); {} when
    none is recorded. Memoised per process; a broken record counts as none."""
    memo = (str(cache.root), make_key(parts))
    if memo not in _CHANNELS:
        try:
            record = json.loads(read_regular_file(_channels_record(cache, parts), 4096))
        except (UserError, OSError, ValueError, RecursionError):  # RecursionError: '[' nested 4,000 deep
            record = None
        valid = isinstance(record, dict) and all(
            isinstance(k, str) and type(v) is int and v >= 1 for k, v in record.items())
        _CHANNELS[memo] = dict(record) if valid else {}
    return _CHANNELS[memo]


def _record_layer_channels(cache: FeatureCache, parts: Any, known: dict[str, int], found: dict[str, int]) -> None:
    """Keep ``found`` (what the backbone just gave) as these features' channels, in ``known`` and on disk."""
    if known == found:
        return
    known.clear()
    known.update(found)
    record = _channels_record(cache, parts)
    if cache.enabled and cache.own_folder(record.parent):
        try:
            write_bytes_atomic(record, json.dumps(found, sort_keys=True).encode())
        except OSError as exc:  # a full or read-only cache disk
            cache._off(exc)


@contextmanager
def feature_cache(settings: Any):
    """Use the cache described by a ``cache:`` config node (or dict; None = off) for feature
    extraction inside the block (this context only), then restore the enclosing one."""
    if settings is not None and not isinstance(settings, Mapping):
        from omegaconf import OmegaConf

        settings = OmegaConf.to_container(settings, resolve=True)
    cache = open_cache(**(dict(settings) if settings else {"enabled": False}))
    token = _ACTIVE.set(cache)
    try:
        if cache is None:
            yield cache
        else:
            with cache.held():
                yield cache
    finally:
        if cache is not None and (cache.hits or cache.misses):
            log.info("feature cache %s: %d images read, %d extracted", cache.root, cache.hits, cache.misses)
        _ACTIVE.reset(token)


__all__ = ["FeatureCache", "make_key", "image_digest", "module_digest", "open_cache", "active_cache",
           "feature_cache", "backbone_key_parts", "backbone_key", "cached_backbone_features"]
