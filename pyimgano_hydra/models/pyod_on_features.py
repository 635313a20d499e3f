"""Any PyOD detector on pooled deep features: one adapter, image-level scores, no maps.

``PyODOnFeatures(detector=<PyOD object>, backbone=..., layers=...)`` embeds each image as
the per-layer global pooling of backbone feature maps (``pooling``: avg, max or both),
optionally z-scores each dimension with train statistics, and fits a clone of the PyOD
detector on the training embeddings. Scores are PyOD's ``decision_function``.

Config (Hydra builds the nested ``_target_`` first, so ``detector`` arrives as an object)::

    detector: {_target_: pyod.models.knn.KNN, n_neighbors: 5}

Two PyOD behaviours are handled here:

* Small training sets: ``n_neighbors`` larger than ``n_train - 1`` is clamped (with a
  warning and a note in ``notes_``) instead of failing inside scikit-learn.
* Batch dependence: ECOD and COPOD score a batch together with the training set, so one
  image's score would depend on which images share its batch. ``fit`` probes for this and,
  where found, scores test images one at a time (``scores_each_row_``), so a score never
  depends on batching (the hand-off parity requirement).

Hand-off: ``state_dict()`` is tensors + JSON data (safe for ``torch.load(weights_only=True)``)
— the training embeddings, the standardiser statistics and the detector's class name and
parameters; no PyOD object is pickled. ``load_state_dict`` re-fits a
clone of the configured detector on the stored embeddings. This is deterministic because
a detector's ``random_state`` left unset is fixed to ``seed`` at fit time.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from typing import Any, Callable

import numpy as np

from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.models.base import BackboneMixin, BaseDetector, DetectorOutput
from pyimgano_hydra.workers import bounded_jobs, without_working_dir

log = logging.getLogger(__name__)

STATE_VERSION = 1
POOLINGS = {"avg": ("mean",), "max": ("max",), "avgmax": ("mean", "max")}  # model.pooling → spatial stats


def class_path(obj: Any) -> str:
    """``module.Class`` of an object (the ``_target_`` that builds it)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _json_params(detector: Any) -> dict[str, Any]:
    """The detector's constructor params, checked to be JSON-able (plain data only)."""
    params = detector.get_params(deep=False)
    try:
        return json.loads(json.dumps(params))
    except TypeError as exc:
        bad = [k for k, v in params.items() if not _is_json(v)]
        raise UserError(
            f"model.detector: {class_path(detector)} params {bad} are objects, not plain data, "
            f"so this detector cannot be saved; pass plain values for them"
        ) from exc


def _array(value: Any) -> np.ndarray:
    """A stored tensor (or array) as a numpy array."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def keep_compiled_code(detector: Any) -> None:
    """Have numba keep on disk what it compiles for a PyOD detector's module, as its own
    ``cache=True`` does (HBOS spent ~2.5 s compiling in every new process; a cached load is
    ~0.1 s). The cache sits where numba puts it: next to PyOD's source, else the user's cache
    dir, or ``NUMBA_CACHE_DIR``. Where numba cannot cache, the code compiles as before."""
    module = sys.modules.get(type(detector).__module__)
    if module is None or not module.__name__.startswith("pyod.") or module.__name__ in _CACHING_MODULES:
        return
    _CACHING_MODULES.add(module.__name__)
    try:
        from numba.core.registry import CPUDispatcher
    except ImportError:
        return
    for value in list(vars(module).values()):
        if isinstance(value, CPUDispatcher) and value.stats.cache_path is None:
            try:
                value.enable_caching()
            except Exception as exc:  # no writable cache location: compile per process
                log.debug("numba cache off for %s: %s", value.py_func.__qualname__, exc)


_CACHING_MODULES: set[str] = set()


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


# PyOD classes whose fit holds n x n matrices, and the training rows they may take (n² x 8 B, a few copies)
QUADRATIC_MEMORY = ("COF", "LOCI", "SOD", "SOS", "RGraph")
MAX_QUADRATIC_ROWS = 5000
def _samples(value: Any, rows: int, auto: int) -> int:
    """Training rows a tree-ensemble estimator draws (``max_samples``: "auto", a fraction or a count)."""
    if type(value) is int:
        return min(value, rows)
    if type(value) is float:
        return max(1, int(value * rows))
    return min(auto, rows)


def _int(value: Any) -> int:
    return value if type(value) is int and value > 0 else 1


# PyOD fits whose work or memory grows with params, training images (n) and embedding size (d):
# (what to lower, the work, its bound: about half a minute or a few hundred MB on one core). A
# load re-fits, so the same bound holds at training and at load: a stored GMM(n_init=max_iter=
# 10000, tol=0) ran for hours, a LODA(10000, 10000) took 2.5 GB, ROD on 64 dims took 108 s for 12
# images, IForest(10000, max_samples=10000) 3.8 GB, KNN(n_neighbors=10000) 3.5 GB.
FIT_WORK: dict[str, Callable[[dict, int, int], tuple[str, int, int]]] = {
    "GMM": lambda p, n, d: ("n_components x n_init x max_iter",
                            _int(p["n_components"]) * _int(p["n_init"]) * _int(p["max_iter"]), 10_000),
    "LODA": lambda p, n, d: ("n_bins x n_random_cuts", _int(p["n_bins"]) * _int(p["n_random_cuts"]), 1_000_000),
    "LMDD": lambda p, n, d: ("n_iter x images", _int(p["n_iter"]) * n, 100_000),
    "ABOD": lambda p, n, d: (("images x n_neighbors²", n * _int(p["n_neighbors"]) ** 2, 2_000_000)
                             if p.get("method") == "fast" else ("images³ (method=default; use fast)", n ** 3, 2_000_000)),
    "ROD": lambda p, n, d: ("images x C(embedding size, 3)", n * math.comb(d, 3), 100_000),
    "IForest": lambda p, n, d: ("n_estimators x max_samples",
                                _int(p["n_estimators"]) * _samples(p.get("max_samples"), n, 256), 2_000_000),
    "INNE": lambda p, n, d: ("n_estimators x max_samples²",
                             _int(p["n_estimators"]) * _samples(p.get("max_samples"), n, 8) ** 2, 10_000_000),
    "KNN": lambda p, n, d: ("images x n_neighbors", n * _int(p["n_neighbors"]), 10_000_000),
    "LOF": lambda p, n, d: ("images x n_neighbors", n * _int(p["n_neighbors"]), 10_000_000),
    "CBLOF": lambda p, n, d: ("images x n_clusters", n * _int(p["n_clusters"]), 10_000_000),
    "OCSVM": lambda p, n, d: ("images²", n * n, 50_000_000),
}


def _check_fit_work(detector: Any, rows: int, dims: int) -> None:
    """Training and a load (which re-fits) refuse alike a fit whose work is past its bound."""
    name = type(detector).__name__
    if name not in FIT_WORK:
        return
    what, work, bound = FIT_WORK[name](detector.get_params(deep=False), rows, dims)
    if work > bound:
        raise UserError(f"model.detector: {name} fits {rows} training images of size {dims}: {what} = {work:,}; "
                        f"at most {bound:,} (a load re-fits it): lower these params or dataset.limit_train")


class PyODOnFeatures(BackboneMixin, BaseDetector):
    """A PyOD detector fitted on pooled backbone embeddings (image-level; no maps)."""

    produces_maps = False
    fitted_attribute = "detector_"

    def __init__(
        self,
        *,
        detector: Any = None,
        backbone: str = "efficientnet_lite0",
        layers: list[str] | tuple[str, ...] = ("blocks.4", "blocks.5"),
        pretrained: bool = True,
        weights_path: str | None = None,
        device: str = "auto",
        batch_size: int = 16,
        pooling: str = "max",
        standardize: bool = True,
        seed: int = 0,
    ):
        self.detector = detector
        self.backbone = backbone
        self.layers = layers
        self.pretrained = pretrained
        self.weights_path = weights_path
        self.device = device
        self.batch_size = batch_size
        self.pooling = pooling
        self.standardize = standardize
        self.seed = seed

    # ------------------------------------------------------------------ embedding
    def embed(self, images: np.ndarray, desc: str = "embedding") -> np.ndarray:
        """(N, D) float32 pooled embeddings, before standardisation."""
        from pyimgano_hydra.features import pooled_embedding

        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling: {self.pooling!r} is not avg, max or avgmax")
        return pooled_embedding(self._backbone(), images, self.batch_size, desc, stats=POOLINGS[self.pooling])

    def _standardized(self, emb: np.ndarray) -> np.ndarray:
        if not self.standardize:
            return emb.astype(np.float64)
        return (emb.astype(np.float64) - self.mean_) / self.scale_

    # ------------------------------------------------------------------ fit / predict
    def _prototype(self) -> Any:
        """The configured PyOD object (or one built from a ``{_target_: ...}`` dict)."""
        det = self.detector
        if det is None:
            raise ConfigError("model.detector: no PyOD detector given; set model.detector._target_")
        if isinstance(det, dict):
            from hydra.utils import instantiate

            det = instantiate(det)
        if not (hasattr(det, "fit") and hasattr(det, "decision_function") and hasattr(det, "get_params")):
            raise ConfigError(
                f"model.detector: {class_path(det)} is not a PyOD detector "
                f"(needs fit, decision_function, get_params)"
            )
        return det

    def _configured_clone(self, params: dict[str, Any] | None, n_train: int) -> Any:
        from sklearn.base import clone

        detector = clone(self._prototype())
        if params is not None:
            detector.set_params(**params)
        own = detector.get_params(deep=False)
        if "n_jobs" in own and bounded_jobs(own["n_jobs"]) != own["n_jobs"]:
            detector.set_params(n_jobs=bounded_jobs(own["n_jobs"]))
        if params is not None:
            return detector
        if "random_state" in own and own["random_state"] is None:
            detector.set_params(random_state=int(self.seed))
        k = own.get("n_neighbors")
        if isinstance(k, int) and k > n_train - 1:
            if n_train < 2:
                raise ConfigError(
                    f"model.detector.n_neighbors: {class_path(detector)} needs at least 2 training "
                    f"images, got {n_train}"
                )
            note = (f"model.detector.n_neighbors={k} lowered to {n_train - 1}: "
                    f"only {n_train} training images")
            warnings.warn(note, stacklevel=3)
            self.notes_.append(note)
            detector.set_params(n_neighbors=n_train - 1)
        return detector

    def _fit_embeddings(self, train_emb: np.ndarray, params: dict[str, Any] | None = None,
                        stats: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.train_embeddings_ = np.asarray(train_emb, dtype=np.float32)
        name = type(self._prototype()).__name__
        if name in QUADRATIC_MEMORY and len(self.train_embeddings_) > MAX_QUADRATIC_ROWS:
            # training and a load (which re-fits) refuse alike: 58 KB of stored rows took 3.7 GB in COF
            raise UserError(f"model.detector: {name} holds a {len(self.train_embeddings_)}² distance matrix; at most "
                            f"{MAX_QUADRATIC_ROWS} training images (set dataset.limit_train, or use KNN / LOF)")
        if stats is None:
            x = self.train_embeddings_.astype(np.float64)
            mean, scale = x.mean(axis=0), x.std(axis=0)
            scale[scale < 1e-12] = 1.0  # constant dimensions stay as they are (like scikit-learn)
            stats = (mean, scale)
        self.mean_, self.scale_ = (np.asarray(a, dtype=np.float64) for a in stats)
        z = self._standardized(self.train_embeddings_)
        self.detector_ = self._configured_clone(params, len(z))
        _check_fit_work(self.detector_, *z.shape)
        keep_compiled_code(self.detector_)
        try:
            with without_working_dir(leave_it=True):
                self.detector_.fit(z)
        except ValueError as exc:
            message = " ".join(str(exc).split())
            raise UserError(
                f"model.detector: {class_path(self.detector_)} could not fit {len(z)} training "
                f"embeddings of size {z.shape[1]}: {message}"
            ) from exc
        self.scores_each_row_ = not self._batch_independent(z)

    def _batch_independent(self, z: np.ndarray) -> bool:
        """Does scoring rows together give the same scores as scoring them one by one?"""
        rng = np.random.default_rng(self.seed)
        probe = z[: min(len(z), 3)] + rng.normal(0.0, 0.5, size=(min(len(z), 3), z.shape[1]))
        probe = np.concatenate([probe, probe + 3.0])
        with without_working_dir(leave_it=True):
            together = np.asarray(self.detector_.decision_function(probe), dtype=np.float64)
            single = np.array([self.detector_.decision_function(row[None])[0] for row in probe], dtype=np.float64)
        return bool(np.allclose(together, single, rtol=1e-9, atol=1e-9))

    def fit(self, images: np.ndarray) -> "PyODOnFeatures":
        self.notes_: list[str] = []
        self._fit_embeddings(self.embed(images, desc="fit features"))
        return self

    def score_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """float64 (N,) PyOD scores of raw embeddings (higher = more anomalous)."""
        self._check_fitted()
        z = self._standardized(np.asarray(emb, dtype=np.float32))
        with without_working_dir(leave_it=True):
            if self.scores_each_row_:
                return np.array([self.detector_.decision_function(row[None])[0] for row in z], dtype=np.float64)
            return np.asarray(self.detector_.decision_function(z), dtype=np.float64)

    def score_maps(self, images: np.ndarray) -> DetectorOutput:
        self._check_fitted()
        return DetectorOutput(scores=self.score_embeddings(self.embed(images, desc="features")), maps=None)

    # ------------------------------------------------------------------ hand-off
    def state_dict(self) -> dict[str, Any]:
        """Tensors + JSON data (``torch.load(weights_only=True)`` safe): training embeddings,
        standardiser statistics, the detector's class name and constructor params."""
        import torch

        self._check_fitted()
        return {
            "state_version": STATE_VERSION,
            "detector_class": class_path(self.detector_),
            "detector_params": _json_params(self.detector_),
            "train_embeddings": torch.from_numpy(self.train_embeddings_.copy()),
            "mean": torch.from_numpy(self.mean_.copy()),
            "scale": torch.from_numpy(self.scale_.copy()),
            "notes": list(self.notes_),
        }

    def load_state_dict(self, state: dict[str, Any]) -> "PyODOnFeatures":
        """Re-fit the configured detector class on the stored embeddings (deterministic)."""
        version = int(state.get("state_version", -1))
        if version != STATE_VERSION:
            raise UserError(f"PyODOnFeatures checkpoint: state_version {version}, expected {STATE_VERSION}")
        expected = class_path(self._prototype())
        if state["detector_class"] != expected:
            raise UserError(
                f"model.detector._target_: checkpoint holds {state['detector_class']}, "
                f"config builds {expected}; use the run's own model config"
            )
        from pyimgano_hydra.runs.trust import bounded_ints, params_for

        params = bounded_ints(params_for(type(self._prototype()), state["detector_params"], "detector_params"),
                              "detector_params")
        self.notes_ = [str(note) for note in state.get("notes", [])]
        self._fit_embeddings(_array(state["train_embeddings"]), params=params,
                             stats=(_array(state["mean"]), _array(state["scale"])))
        return self
