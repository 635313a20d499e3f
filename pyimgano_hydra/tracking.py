"""Experiment tracking: a Hydra callback that mirrors each finished job into MLflow.

It reads what the job wrote (report.json, config.json) rather than live objects, so failed
and interrupted jobs are logged too, and nothing runs inside the job itself.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pyimgano_hydra.errors import UserError
from pyimgano_hydra.runs.layout import RunDir
from pyimgano_hydra.runs.writers import read_json

log = logging.getLogger(__name__)
MAX_PARAM_CHARS = 500


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """{'model.coreset_ratio': '0.1', ...} from nested dicts and lists."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return {prefix: str(node)[:MAX_PARAM_CHARS]}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def report_metrics(report: dict) -> dict[str, float]:
    """Finite numbers only: per category '<category>/<metric>', and the mean over categories."""
    out = {f"{name}/{key}": float(value) for name, cat in (report.get("categories") or {}).items()
           for key, value in (cat.get("metrics") or {}).items() if isinstance(value, (int, float))}
    out.update({key: float(stat["mean"]) for key, stat in (report.get("aggregate") or {}).items()
                if isinstance(stat, dict) and isinstance(stat.get("mean"), (int, float))})
    out.update({f"time/{key}": float(value) for key, value in (report.get("timings") or {}).items()
                if isinstance(value, (int, float))})
    return {k.replace("@", "_"): v for k, v in out.items() if math.isfinite(v)}


def _file_path(uri: str) -> str:
    """The path of a ``file:`` URI as MLflow opens it: percent-decoded (``%76ictim`` is ``victim``)."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path)


def _odd_store_file(store: Path) -> Path | None:
    """An experiment record of a file store (``<store>/<id>/meta.yaml``) that is not a regular file."""
    import itertools
    import stat

    for meta in itertools.islice(itertools.chain(store.glob("*/meta.yaml"), store.glob(".trash/*/meta.yaml")), 10_000):
        if not stat.S_ISREG(meta.lstat().st_mode):
            return meta
    return None


class MlflowCallback(Callback):
    """One MLflow run per job (``+callbacks=mlflow``, settings in conf/callbacks/mlflow.yaml)."""

    def __init__(self, tracking_uri: str | None, experiment: str, artifacts: bool) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifacts = artifacts

    def _mlflow(self):
        try:
            import mlflow
        except ImportError as exc:
            raise UserError("+callbacks=mlflow needs MLflow: pip install 'pyimgano_hydra[mlflow]'") from exc
        uri = self.tracking_uri or Path("outputs/mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store behind an opt-in; it is our offline default
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(self.experiment)
        return mlflow

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        from pyimgano_hydra.runs.claim import foreign_run, sqlite_path

        run_dir = RunDir(Path(config.hydra.runtime.output_dir))
        uri = self.tracking_uri or Path("outputs/mlruns").resolve().as_uri()
        database = sqlite_path(uri)[1]
        # what MLflow writes: a file store, an sqlite file, and a database store's default artifact
        # root ./mlruns (started inside a completed run, log_artifacts copied the new run into it)
        store = (_file_path(uri) if uri.startswith("file:") else database if database is not None
                 else uri if "://" not in uri else None)
        places = [Path(store)] if store else []
        if database is not None or uri.startswith(("postgresql", "mysql", "mssql")):
            places.append(Path("mlruns").absolute())
        outer = next(((p, o) for p in places if (o := foreign_run(p, run_dir.root)) is not None), None)
        if outer is not None:
            log.warning("mlflow: not logged: %s lies inside the run dir %s, which a run never writes into; set "
                        "hydra.callbacks.mlflow.tracking_uri (and start from a folder of your own)", *outer)
            return
        odd = _odd_store_file(Path(store)) if uri.startswith("file:") and store else None
        if odd is not None:  # a FIFO as an experiment's meta.yaml: MLflow blocked on it forever
            log.warning("mlflow: not logged: %s in the store is not a regular file; set "
                        "hydra.callbacks.mlflow.tracking_uri to a store of your own", odd)
            return
        mlflow = self._mlflow()
        report = read_json(run_dir.report) if run_dir.report.is_file() else {}
        params = flatten(read_json(run_dir.config)) if run_dir.config.is_file() else {}
        with mlflow.start_run(run_name=run_dir.root.name) as run:
            mlflow.set_tags({"status": str(report.get("status", "unknown")), "run_dir": str(run_dir.root),
                             "overrides": " ".join(report.get("overrides", []))[:MAX_PARAM_CHARS]})
            if params:
                mlflow.log_params(params)
            metrics = report_metrics(report)
            if metrics:
                mlflow.log_metrics(metrics)
            target = _file_path(run.info.artifact_uri) if run.info.artifact_uri.startswith("file:") else None
            inside = target and (foreign_run(Path(target), run_dir.root) is not None
                                 or Path(target).resolve().is_relative_to(run_dir.root.resolve()))
            if self.artifacts and inside:  # an experiment's artifact_location set in a handed-over store
                log.warning("mlflow: artifacts not logged: the experiment's artifact location %s lies inside a "
                            "run dir; use an experiment of your own", target)
            elif self.artifacts:
                mlflow.log_artifacts(str(run_dir.root))
        log.info("mlflow: run %s in %s (experiment %s)", run.info.run_id, mlflow.get_tracking_uri(), self.experiment)
