"""The fitted inspector of one category and the one loop that turns images into records.

``Inspector`` holds what fitting produced — the detector, the map postprocessor, the image
threshold and the pixel threshold (each with provenance) — plus the preprocessing and the
defects settings it was calibrated with. ``score_batch(images)`` is the only place scores
become predictions; :func:`score_all` is the only loop over images, used by the recipe,
``infer``, overlays and the Python API (:func:`pyimgano_hydra.api.load_inspector`).

It is stored once per category as ``categories/<cat>/inspector.pt``: tensors and plain
data only (``torch.load(weights_only=True)``), the detector named by the registry, its
params plain values; loading parses and checks every field (:mod:`pyimgano_hydra.runs.trust`).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pyimgano_hydra.errors import ConfigError, UserError, console_line
from pyimgano_hydra.files import held_file, shown
from pyimgano_hydra.runs import trust
from pyimgano_hydra.schemas.dataset import MAX_SIDE
from pyimgano_hydra.schemas.defects import MAX_MAP_VALUE

FORMAT = "pyimgano_hydra.inspector"
VERSION = 1
STATE_KEYS = ("format", "version", "category", "detector", "tiling", "postprocess", "image_threshold",
              "pixel_threshold", "preprocessing", "defects")
INPUT_MODES = ("rgb", "gray")
WEIGHTS_STEM = "backbone_weights"  # a fitted run's copy of model.weights_path, beside inspector.pt
_STATE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError)


def to_saveable(obj: Any, key: str = "inspector") -> Any:
    """``obj`` with arrays as tensors and numpy scalars as Python numbers (``weights_only`` safe)."""
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {str(k): to_saveable(v, f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_saveable(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{key}: {type(obj).__name__} cannot be saved (tensors, arrays, plain data only)")


def _plain_params(obj: Any) -> dict:
    """An estimator's constructor params as plain values (a PyOD object as name + params)."""
    from pyimgano_hydra.registry import dotted

    out = {}
    for name, value in obj.get_params(deep=False).items():
        if isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "get_params") and hasattr(value, "decision_function"):
            value = {"name": dotted(type(value)), "params": _plain_params(value)}
        out[name] = value
    return out


@dataclass
class Batch:
    """``score_batch`` output: one record per image and the postprocessed maps (or None)."""

    records: list[dict]
    maps: Optional[np.ndarray]


class Inspector:
    """A fitted detector with its map postprocessor and thresholds; 0/1 ``predict`` like PyOD."""

    def __init__(self, detector, postprocessor=None, image_threshold: dict | None = None,
                 pixel_threshold: dict | None = None, preprocessing: dict | None = None,
                 defects: dict | None = None, category: str = "") -> None:
        self.detector = detector
        self.postprocessor = postprocessor
        self.image_threshold = image_threshold or {"value": float("inf"), "provenance": {}}
        self.pixel_threshold = pixel_threshold
        self.preprocessing = preprocessing or {"resize": None, "input_mode": "rgb"}
        self.defects = defects
        self.category = category
        self.source: str | None = None  # the inspector file it was loaded from (named in scoring errors)

    @property
    def threshold_(self) -> float:
        return float(self.image_threshold["value"])

    @property
    def produces_maps(self) -> bool:
        return bool(getattr(self.detector, "produces_maps", False))

    def load_images(self, paths: list, return_sizes: bool = False):
        """Decode image files with the preprocessing the detector was fitted with (``return_sizes``:
        also each file's own (height, width), as decoded)."""
        from pyimgano_hydra.data.loader import stack_images

        prep = self.preprocessing
        return stack_images(paths, prep.get("resize"), prep.get("input_mode", "rgb"), return_sizes=return_sizes)

    def _check_like_fitted(self, images: np.ndarray) -> None:
        """Arrays of the size and channels the detector was fitted on (the api's arrays are neither
        resized nor converted: 64x64 arrays for a 128 fit were scored, good parts called anomalous)."""
        from pyimgano_hydra.data.images import _hw
        from pyimgano_hydra.errors import DataError

        shape = tuple(getattr(images, "shape", ()))
        size = _hw(self.preprocessing.get("resize"))
        channels = 1 if self.preprocessing.get("input_mode", "rgb") == "gray" else 3
        if len(shape) == 4 and ((size is not None and shape[1:3] != size) or shape[3] != channels):
            want = f"{size[0]}x{size[1]}x{channels}" if size is not None else f"HxWx{channels}"
            raise DataError(f"images of {shape[1]}x{shape[2]}x{shape[3]}: the detector was fitted on {want} "
                            f"(preprocessing); decode files with inspector.load_images, or resize to that")

    def score_maps(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(N,) float64 scores and postprocessed (N, H, W) float32 maps (None without maps)."""
        self._check_like_fitted(images)
        if len(images) == 0:
            return np.zeros(0), (np.zeros((0, *images.shape[1:3]), np.float32) if self.produces_maps else None)
        out = self._stored(self.detector.score_maps, images)
        maps = out.maps
        if maps is not None and self.postprocessor is not None:
            maps = self.postprocessor.transform(maps)
        return np.asarray(out.scores, np.float64).reshape(-1), maps

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        self._check_like_fitted(images)
        if len(images) == 0:
            return np.zeros(0)
        return np.asarray(self._stored(self.detector.decision_function, images), np.float64).reshape(-1)

    def _stored(self, score: Callable, images: np.ndarray):
        """``score(images)``; for a loaded inspector a failure inside the detector (a stored state
        that does not fit its backbone) or a non-finite output is one line naming the file."""
        try:
            out = score(images)
        except ConfigError as exc:  # a stored setting checked at first use (model.layers vs the backbone)
            if self.source is None or not str(exc).startswith("model."):
                raise
            raise UserError(f"{self.source}: stored detector setting {exc}; use the file the training run "
                            "wrote") from exc
        except UserError:
            raise
        except _STATE_ERRORS as exc:
            if self.source is None:
                raise
            message = " ".join(str(exc).split())[:200]
            raise UserError(f"{self.source}: scoring with the stored detector failed "
                            f"({type(exc).__name__}: {message})") from exc
        values = [getattr(out, "scores", out), getattr(out, "maps", None)]
        if self.source is not None and not all(v is None or np.isfinite(v).all() for v in values):
            # a finite memory bank of 3e38 overflowed the distances: a NaN score was called normal
            raise UserError(f"{self.source}: the stored detector returned a NaN or infinite score or map; "
                            "refused (no verdict without a number)")
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        """0 (normal) / 1 (anomalous) per image: score above the image threshold."""
        return (self.decision_function(images) > self.threshold_).astype(int)

    def score_batch(self, images: np.ndarray) -> Batch:
        """Records ``{score, pred_label, threshold}`` and maps for a batch of images."""
        scores, maps = self.score_maps(images)
        value = self.threshold_
        records = [{"score": float(s), "pred_label": int(s > value), "threshold": value} for s in scores]
        return Batch(records, maps)

    # -- hand-off ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Versioned, tensors and plain data only; the same layout (``STATE_KEYS``) for every detector."""
        from pyimgano_hydra.adapt.tiling import PARAM_NAMES as TILING_PARAMS, TiledDetector
        from pyimgano_hydra.registry import detector_name

        tiled = isinstance(self.detector, TiledDetector)
        inner = self.detector.detector_ if tiled else self.detector
        return {
            "format": FORMAT, "version": VERSION, "category": self.category,
            "detector": {"name": detector_name(type(inner)), "params": _plain_params(inner),
                         "state": self.detector.state_dict()},
            "tiling": {k: getattr(self.detector, k) for k in TILING_PARAMS} if tiled else None,
            "postprocess": self.postprocessor.state_dict() if self.postprocessor is not None else None,
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "preprocessing": self.preprocessing,
            "defects": {k: v for k, v in (self.defects or {}).items() if k != "_target_"} or None,
        }

    def save(self, path: Path) -> Path:
        import torch

        from pyimgano_hydra.runs.writers import write_bytes_atomic

        state = self.state_dict()
        params = state["detector"]["params"]
        if params.get("weights_path"):  # the run dir carries its backbone weights: infer reads only inside it
            source = Path(str(params["weights_path"])).expanduser()
            stored, data = Path(path).parent / f"{WEIGHTS_STEM}{source.suffix or '.pt'}", source.read_bytes()
            if not _link_to_sibling_copy(stored, data):
                write_bytes_atomic(stored, data)
            params["weights_path"] = stored.name
        buffer = io.BytesIO()
        torch.save(to_saveable(state), buffer)
        return write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, trust_targets: bool = False, device: str | None = None,
             shown_as: Path | None = None) -> "Inspector":
        """Parse a stored inspector (``weights_only``, ``path`` itself not a link); one-line refusal
        naming ``shown_as`` (default ``path``). ``device`` replaces the device it was fitted on (a
        record, never a requirement)."""
        where = str(shown_as or path)
        state = trust.load_weights(Path(path), follow=False, shown_as=where)
        inspector = cls.from_state(state, where, trust_targets, device, Path(path).parent)
        inspector.source = where
        return inspector

    @classmethod
    def from_state(cls, state: Any, where: str = "inspector", trust_targets: bool = False,
                   device: str | None = None, folder: Path | None = None) -> "Inspector":
        """Parse ``state``; a stored backbone ``weights_path`` must name a file in ``folder`` (the
        inspector's own folder) unless ``trust_targets``."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"{where}: not a pyimgano_hydra inspector file")
        version = state.get("version")
        if type(version) is not int or version != VERSION:
            raise UserError(f"{where}: inspector version {version!r} is not {VERSION}; re-run the training "
                            "with this pyimgano_hydra")
        unknown = sorted(str(k) for k in state if k not in STATE_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0][:80]!r} (an inspector holds only "
                            f"{', '.join(STATE_KEYS)}); use the file the training run wrote")
        detector = _detector_from_state(state, where, trust_targets, device, folder)
        postprocessor = None
        if state.get("postprocess") is not None:
            from pyimgano_hydra.adapt.postprocess import MapPostprocessor

            pp = trust.plain(trust.require(state, "postprocess", dict, where), f"{where}: postprocess")
            for key in ("low", "high", "sigma", "percentile", "percentile_low"):
                if key in ("low", "high") or key in pp:
                    trust.finite(pp.get(key), f"{where}: postprocess.{key}")
            for key in ("enabled", "clip"):
                if key in pp and type(pp[key]) is not bool:
                    raise UserError(f"{where}: postprocess.{key}: must be true or false, got {pp[key]!r}")
            if "normalize" in pp and not isinstance(pp["normalize"], str):
                raise UserError(f"{where}: postprocess.normalize: must be a string")
            if pp["low"] > pp["high"]:
                raise UserError(f"{where}: postprocess.low {pp['low']} is above postprocess.high {pp['high']}")
            if not float(pp["high"]) - float(pp["low"]) <= MAX_MAP_VALUE:  # maps are float32: NaN maps past it
                raise UserError(f"{where}: postprocess.low/high {pp['low']:g}..{pp['high']:g} span more than float32 "
                                f"maps hold ({MAX_MAP_VALUE:.3g}); use the file the training run wrote")
            try:
                postprocessor = MapPostprocessor().load_state_dict(pp)
            except UserError as exc:
                raise UserError(f"{where}: postprocess: {exc}") from exc
        return cls(detector, postprocessor,
                   image_threshold=_threshold(trust.require(state, "image_threshold", dict, where),
                                              f"{where}: image_threshold"),
                   pixel_threshold=(None if state.get("pixel_threshold") is None else
                                    _threshold(state["pixel_threshold"], f"{where}: pixel_threshold")),
                   preprocessing=_preprocessing(trust.require(state, "preprocessing", dict, where), where),
                   defects=_defects(state.get("defects"), where),
                   category=trust.require(state, "category", str, where))


def _link_to_sibling_copy(target: Path, data: bytes) -> bool:
    """Hard-link ``target`` (``categories/<cat>/backbone_weights.*``) to another category's
    identical copy in the same run: one copy on disk per run dir, while each category folder
    still holds its weights as a regular file (infer reads them only beside the inspector)."""
    if target.parent.parent.name != "categories":
        return False
    for other in sorted(target.parent.parent.glob(f"*/{target.name}")):
        if other.parent == target.parent or other.is_symlink() or not other.is_file() \
                or other.stat().st_size != len(data) or other.read_bytes() != data:
            continue
        temporary = target.with_name(f".{target.name}.link.tmp")
        try:
            temporary.unlink(missing_ok=True)
            os.link(other, temporary)
            os.replace(temporary, target)
            return True
        except OSError:  # no hard links on this file system: a copy
            temporary.unlink(missing_ok=True)
            return False
    return False


def _threshold(value: Any, where: str) -> dict:
    value = trust.plain(value, where)
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping")
    return {"value": trust.finite(value.get("value"), f"{where}.value"),
            "provenance": trust.require(value, "provenance", (dict, type(None)), where)}


def _preprocessing(value: dict, where: str) -> dict:
    resize = value.get("resize")
    sides = [resize] if type(resize) is int else resize if isinstance(resize, list) and len(resize) == 2 else None
    if resize is not None and not (sides and all(type(v) is int and 1 <= v <= MAX_SIDE for v in sides)):
        raise UserError(f"{where}: preprocessing.resize must be null, an int or [height, width] in 1..{MAX_SIDE}")
    mode = value.get("input_mode", "rgb")
    if mode not in INPUT_MODES:
        raise UserError(f"{where}: preprocessing.input_mode must be one of {', '.join(INPUT_MODES)}")
    return {"resize": resize, "input_mode": mode}


def _defects(value: Any, where: str) -> dict | None:
    if value is None:
        return None
    from pyimgano_hydra.schemas.defects import defects_settings

    value = trust.plain(value, f"{where}: defects")
    try:
        defects_settings(value)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from exc
    return value


def _stored_weights(stored: str, where: str, folder: Path | None, trust_targets: bool) -> str:
    """The backbone weights file a stored ``weights_path`` names: a regular file in ``folder``
    (the inspector's own), or with ``trust_targets`` any path (a relative one from ``folder``)."""
    key = f"{where}: detector.params.weights_path (model.weights_path)"
    if trust_targets:
        path = Path(stored).expanduser()
        return str(path if path.is_absolute() or folder is None else folder / path)
    if folder is None:
        raise UserError(f"{key}: a stored weights file is read only from the inspector's folder")
    hint = f"a run reads its weights only beside {Path(where).name} (trust_targets=true reads any path)"
    if "\x00" in stored or stored in ("", ".", "..") or Path(stored).name != stored:
        raise UserError(f"{key}: {console_line(stored)[:200]!r} is not a file name beside {Path(where).name}; {hint}")
    weights = folder / stored
    if weights.is_symlink() or not weights.is_file():
        raise UserError(f"{key}: {stored!r} is not a regular file in {shown(str(folder))}; {hint}")
    # absolute (a run-dir folder named ~ became the home folder), and held open: the backbone reads
    # it at its first batch, by then a link swapped in must not lead out of the run dir; ``folder``
    # is the held category folder (a link swapped in for it never leads elsewhere)
    return held_file(weights.absolute(), hint, UserError)


def _detector_from_state(state: dict, where: str, trust_targets: bool, device: str | None = None,
                         folder: Path | None = None):
    from pyimgano_hydra.adapt.tiling import PARAM_NAMES as TILING_PARAMS, TiledDetector
    from pyimgano_hydra.models.pyod_on_features import PyODOnFeatures
    from pyimgano_hydra.registry import resolve_detector, resolve_pyod

    spec = trust.require(state, "detector", dict, where)
    cls = resolve_detector(spec.get("name"), f"{where}: detector.name", trust_targets)
    params = trust.params_for(cls, spec.get("params", {}), f"{where}: detector.params")
    schema_params = dict(params)
    if cls is PyODOnFeatures and isinstance(params.get("detector"), dict):
        inner = params["detector"]
        pyod_cls = resolve_pyod(inner.get("name"), f"{where}: detector.params.detector.name", trust_targets)
        pyod_params = trust.bounded_ints(trust.params_for(pyod_cls, inner.get("params", {}),
                                                          f"{where}: detector.params.detector.params"),
                                         f"{where}: detector.params.detector.params")
        schema_params["detector"] = {"_target_": inner["name"], **pyod_params}
        params["detector"] = pyod_cls(**pyod_params)
    trust.check_against_schema(cls, schema_params, f"{where}: detector.params")
    if params.get("weights_path"):
        params["weights_path"] = _stored_weights(str(params["weights_path"]), where, folder, trust_targets)
    if device is not None and "device" in params:
        params["device"] = device
    tiling = state.get("tiling")
    try:
        if tiling is not None:
            tiling = trust.plain(tiling, f"{where}: tiling")
            unknown = sorted(set(tiling) - set(TILING_PARAMS)) if isinstance(tiling, dict) else ["?"]
            if unknown:
                raise UserError(f"{where}: tiling.{unknown[0]} is not a tiling setting")
            detector = TiledDetector(lambda: cls(**params), **tiling)
        else:
            detector = cls(**params)
        return detector.load_state_dict(trust.require(spec, "state", dict, where))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from exc
    except _STATE_ERRORS as exc:
        message = " ".join(str(exc).split())[:200]
        raise UserError(f"{where}: the detector state does not fit {spec.get('name')} "
                        f"({type(exc).__name__}: {message})") from exc


# -- the one scoring loop ------------------------------------------------------------------
@dataclass
class RecordOutputs:
    """Where ``score_all`` writes: map files under ``maps_dir`` (when set), defect masks through
    ``exporter``; record paths are relative to ``root``. ``load_masks(items)`` gives ground-truth
    masks (recipe only) and ``on_batch(items, maps, masks)`` sees each batch (pixel metrics).
    With ``unreadable`` set, an undecodable image becomes ``{**item, error}`` there (and a
    warning line) instead of failing the batch."""

    root: Path
    maps_dir: Optional[Path] = None
    exporter: Any = None
    load_masks: Optional[Callable[[list[dict]], np.ndarray]] = None
    on_batch: Optional[Callable[[list[dict], np.ndarray, Optional[np.ndarray]], None]] = None
    unreadable: Optional[list[dict]] = None  # set: an image that fails to decode becomes an error record here


def record_stem(index: int, path: str) -> str:
    """File stem of an image's map / mask / overlay: zero-padded index + safe image stem, cut
    to 100 characters (a 250-byte image name made the map's temp file name too long for the
    file system; the index keeps stems unique)."""
    from pyimgano_hydra.runs.layout import safe_name

    return f"{index:06d}_{safe_name(Path(path).stem)[:100]}"


Sizes = list[tuple[int, int]]
LoadImages = Callable[[list[dict]], tuple[np.ndarray, Sizes]]  # items -> images and each file's (height, width)


def _decodable(chunk: list[dict], load_images: LoadImages,
               unreadable: list[dict]) -> list[tuple[list[dict], tuple[np.ndarray, Sizes]]]:
    """The items of ``chunk`` that decode and their images and sizes, one group per image size
    (largest group first: a run that keeps native sizes may meet an odd-sized image); the others
    go to ``unreadable``."""
    import sys

    from pyimgano_hydra.data.images import without_skip_advice
    from pyimgano_hydra.errors import DataError

    try:
        return [(chunk, load_images(chunk))]  # the whole batch at once (decode workers); else file by file
    except DataError:
        pass
    by_shape: dict[tuple, list] = {}
    for item in chunk:
        try:
            images, sizes = load_images([item])
        except DataError as exc:
            error = without_skip_advice(str(exc))  # an unreadable image is its record, already
            unreadable.append({**item, "error": error})
            print(f"warning: {console_line(error)}", file=sys.stderr)
            continue
        by_shape.setdefault(images[0].shape, []).append((item, images[0], sizes[0]))
    groups = sorted(by_shape.values(), key=len, reverse=True)  # stable: a tie keeps the first seen
    return [([item for item, _, _ in group], (np.stack([image for _, image, _ in group]), [s for _, _, s in group]))
            for group in groups]


def _odd_size_failed(chunk: list[dict], exc: Exception, unreadable: list[dict]) -> None:
    """Images of a size the stored detector cannot score become error records, not a failed run."""
    import sys

    for item in chunk:
        error = f"{item['path']}: {exc}"
        unreadable.append({**item, "error": error})
        print(f"warning: {console_line(error)}", file=sys.stderr)


def score_all(inspector: Inspector, items: list[dict], load_images: LoadImages,
              batch_size: int, outputs: RecordOutputs,
              advance: Optional[Callable[[int], None]] = None) -> list[dict]:
    """Score ``items`` (dicts with at least ``index`` and ``path``) batch by batch; return one
    record per item: the item's keys + score, pred_label, threshold [+ anomaly_map, defects].
    No map is held beyond its batch; ``advance(n)`` is told each batch's size (a progress bar)."""
    records: list[dict] = []
    for start in range(0, len(items), batch_size):
        whole = items[start:start + batch_size]
        if outputs.unreadable is None:
            groups = [(whole, load_images(whole))]
        else:
            groups = _decodable(whole, load_images, outputs.unreadable)
        for rank, (chunk, (images, sizes)) in enumerate(groups):
            try:
                batch = inspector.score_batch(images)
            except UserError as exc:
                if rank == 0:
                    raise
                _odd_size_failed(chunk, exc, outputs.unreadable)
                continue
            records.extend(_records(chunk, batch, sizes, outputs))
        if advance is not None:
            advance(len(whole))
    return records


def _records(chunk: list[dict], batch: Batch, sizes: Sizes, outputs: RecordOutputs) -> list[dict]:
    """One scored batch's records, its maps and defect masks written (``sizes``: each image's own
    (height, width) as it was decoded)."""
    from pyimgano_hydra.runs.writers import save_npy_atomic

    records: list[dict] = []
    maps = batch.maps
    masks = outputs.load_masks(chunk) if outputs.load_masks is not None and maps is not None else None
    if outputs.on_batch is not None and maps is not None:
        outputs.on_batch(chunk, maps, masks)
    for j, (item, scored) in enumerate(zip(chunk, batch.records)):
        record = {**item, **scored}
        stem = record_stem(item["index"], item["path"])
        if maps is not None and outputs.maps_dir is not None:
            path = save_npy_atomic(outputs.maps_dir / f"{stem}.npy", maps[j])
            record["anomaly_map"] = {"path": str(path.relative_to(outputs.root)),
                                     "shape": list(maps[j].shape), "dtype": str(maps[j].dtype)}
        if maps is not None and outputs.exporter is not None:
            record["defects"] = outputs.exporter(
                stem, maps[j], sizes[j], gt_mask=None if masks is None else masks[j],
                label=item.get("label"))
        records.append(record)
    return records
