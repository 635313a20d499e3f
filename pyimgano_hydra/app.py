"""One job: categories -> recipe per category -> aggregate -> run directory and summary."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from omegaconf import DictConfig, OmegaConf

import pyimgano_hydra
from pyimgano_hydra.data.loader import loader_setting
from pyimgano_hydra.errors import UserError, console_line
from pyimgano_hydra.features.cache import feature_cache
from pyimgano_hydra.features.precision import autocast_setting
from pyimgano_hydra.files import held_folder, shown
from pyimgano_hydra.instantiate import build, build_detector_factory
from pyimgano_hydra import interrupt
from pyimgano_hydra.interrupt import interrupts_deferred, sigterm_as_interrupt
from pyimgano_hydra.logs import run_log
from pyimgano_hydra import progress
from pyimgano_hydra.recipes.context import CategoryResult, RecipeContext
from pyimgano_hydra.runs.claim import refuse_foreign
from pyimgano_hydra.runs.environment import environment, git_sha
from pyimgano_hydra.runs.layout import SCHEMA_VERSION, RunDir
from pyimgano_hydra.runs.status import COMPLETED, FAILED, INTERRUPTED, RUNNING, running, utc_now, write_status
from pyimgano_hydra.runs.takeover import finished_categories, may_take_over
from pyimgano_hydra.runs.writers import write_json_atomic
from pyimgano_hydra.schemas import refuse_unknown_keys, require_groups, validate
from pyimgano_hydra.sweep.cluster import owner
from pyimgano_hydra.viz.html import write_report_html

log = logging.getLogger(__name__)


def _error_line(exc: BaseException) -> str:
    """An error's first line, a held folder's /proc/self/fd path shown as the user gave it."""
    return shown(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__


def _category_entries(run_dir: RunDir, results: list) -> dict:
    """report.json's ``categories``: each completed category's figures and files."""
    return {r.category: {"metrics": r.metrics, "timings": r.timings, "counts": r.counts, "notes": r.notes,
                         "inspector": _inspector_path(run_dir, r), **_figures(run_dir, r)} for r in results}


def _device_used(model_cfg: DictConfig) -> str | None:
    """The torch device the model's ``device`` resolves to here (None for CPU-only models)."""
    if not isinstance(model_cfg, DictConfig) or "device" not in model_cfg:  # ~model: validate names it
        return None
    from pyimgano_hydra.features.device import resolve_device

    return str(resolve_device(str(model_cfg.device)))


def config_hash(cfg: DictConfig) -> str:
    """What makes two runs the same run: the resolved config but ``cache`` (where features are kept
    changes no result: a run requeued on a node with another $PYIMGANO_CACHE could not resume)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(resolved, dict):
        resolved.pop("cache", None)
    text = OmegaConf.to_yaml(OmegaConf.create(resolved), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def aggregate(results: list[CategoryResult]) -> dict:
    """Mean and std of each metric over categories (NaN-free values only)."""
    keys = sorted({k for r in results for k, v in r.metrics.items() if isinstance(v, (int, float))})
    out = {}
    for key in keys:
        values = np.array([r.metrics.get(key, np.nan) for r in results], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            out[key] = {"mean": float(values.mean()), "std": float(values.std()), "n": int(len(values))}
    return out


SUMMARY_METRICS = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_aupro")


def _cell(value) -> str:
    """A metric for the console: 4 decimals, or '–' when it was not measured."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and np.isfinite(value) else "–"


def summary_table(results: list[CategoryResult]) -> str:
    """Plain-text table: per category AUROCs, threshold and time ('–' = not measured)."""
    head = ["category", "img_AUROC", "img_AP", "F1@thr", "px_AUROC", "AUPRO", "threshold", "fit_s", "total_s"]
    rows = []
    for r in results:
        rows.append([console_line(r.category)] + [_cell(r.metrics.get(k)) for k in SUMMARY_METRICS]
                    + [f"{r.threshold['value']:.4g}", f"{r.timings['fit_s']:.1f}", f"{r.timings['total_s']:.1f}"])
    if len(results) > 1:
        agg = aggregate(results)
        rows.append(["mean"] + [_cell(agg[k]["mean"]) if k in agg else "–" for k in SUMMARY_METRICS]
                    + ["", f"{sum(r.timings['fit_s'] for r in results):.1f}",
                       f"{sum(r.timings['total_s'] for r in results):.1f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _metrics_line(result: CategoryResult) -> str:
    """'image_auroc=0.9712 image_ap=... total_s=12.3' for the log."""
    cells = [f"{k}={_cell(result.metrics[k])}" for k in SUMMARY_METRICS if k in result.metrics]
    return " ".join(cells + [f"total_s={result.timings.get('total_s', 0.0):.1f}"])


def _figures(run_dir: RunDir, result: CategoryResult) -> dict:
    """A category's plots and overlays, as paths relative to the run dir."""
    prefix = run_dir.category(result.category).root.relative_to(run_dir.root)
    return {key: [str(prefix / p) for p in result.extra.get(key, [])] for key in ("plots", "overlays")}


def _inspector_path(run_dir: RunDir, result: CategoryResult) -> str | None:
    """Where the category's inspector is stored, relative to the run dir (None: not saved)."""
    if not result.extra.get("inspector"):
        return None
    return str(run_dir.category(result.category).inspector.relative_to(run_dir.root))


def _record_end(run_dir: RunDir, own: RunDir, pinned: tuple | None, state: str, error: str, **fields) -> bool:
    """Write the run's end state into its own folder; True when its dir is still where it began
    (a moved one gets its status only, and none without a held folder)."""
    if run_dir.identity() == pinned:
        write_status(own.status, state, error=error, **fields)
        return True
    if own is not run_dir:
        try:
            write_status(own.status, state, error=f"{error} (its dir was moved or made a link)", **fields)
        except OSError:
            pass
    return False


class RunDirSwapped(UserError):
    """The run dir (or its categories/) was moved or made a link while the run ran."""


def _cache_settings(cfg: DictConfig, run_dir: RunDir) -> Any:
    """The ``cache:`` node; its dir may not lie in another run dir (the cache's entries, locks and
    backbone records were written into a completed run)."""
    import os

    settings = cfg.get("cache")
    refuse_unknown_keys(settings, "cache")  # opened before validate()
    if isinstance(settings, DictConfig) and settings.get("enabled", True) and settings.get("dir"):
        refuse_foreign("cache.dir", settings.dir, run_dir.root, "the feature cache")
        # the folder checked, not the path: a link re-pointed before the cache opened led elsewhere
        settings = OmegaConf.create(OmegaConf.to_container(settings, resolve=True))
        settings.dir = os.path.realpath(os.path.expanduser(str(settings.dir)))
    return settings


def _plain(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def run(cfg: DictConfig, output_dir: str | Path, overrides: Iterable[str] = (),
        choices: dict | None = None) -> dict:
    """Run one job into ``output_dir``; return report.json's dict.

    ``output_dir`` must not hold an earlier run, except this job's own unfinished one (a
    requeued cluster job): then finished categories are kept and the rest is redone.
    """
    run_dir = RunDir(Path(output_dir))
    interrupt.COMPLETED.clear()  # this run is not recorded completed (yet)
    cfg_hash = config_hash(cfg)
    resuming = may_take_over(run_dir, cfg_hash)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    with run_log(run_dir.root), held_folder(run_dir.root) as own_folder:
        return _run(cfg, run_dir, overrides, choices, cfg_hash, resuming, own_folder)


def _run(cfg: DictConfig, run_dir: RunDir, overrides: Iterable[str], choices: dict | None,
         cfg_hash: str, resuming: bool, own_folder: Path | None = None) -> dict:
    started = time.perf_counter()
    pinned = run_dir.identity()  # where this run writes; a swap for a link later stops it
    # every write goes into the folder held open, never through a path swapped meanwhile (a
    # concurrent sweep job wrote its categories through a sweep dir made a link between checks)
    own = RunDir(own_folder) if own_folder is not None else run_dir

    def still_here() -> None:
        swapped = run_dir.swapped(pinned)
        if swapped:
            raise RunDirSwapped(f"{swapped}; a run never writes through it: start again in a new dir")

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "timestamp_utc": utc_now(),
        "package": "pyimgano_hydra",
        "version": pyimgano_hydra.__version__,
        "git_sha": git_sha(),
        "overrides": list(overrides),
        "choices": dict(choices or {}),
        "config_hash": cfg_hash,
        "tag": cfg.get("tag", ""),
        "status": RUNNING,
    }
    dataset, results = None, []  # what a failed run's record still holds
    first_failure: Exception | None = None  # of a category=all run: it ends the run, after the others ran
    try:
        with running(own.status, started_utc=report["timestamp_utc"], config_hash=cfg_hash, resumed=resuming,
                     **owner()), sigterm_as_interrupt(), feature_cache(_cache_settings(cfg, run_dir)), \
                autocast_setting(OmegaConf.select(cfg, "gpu.autocast", default="none")), \
                loader_setting(OmegaConf.select(cfg, "loader.num_workers"), _device_used(cfg.model) or "cpu"):
            require_groups(cfg)
            validate(cfg)  # range checks, before any work; a failure is recorded in status.json
            still_here()
            write_json_atomic(own.config, OmegaConf.to_container(cfg, resolve=True))
            write_json_atomic(own.environment, environment(device=_device_used(cfg.model)))
            dataset = build(cfg.dataset, "dataset")
            if getattr(dataset, "writes_root", False):  # the synthetic set is generated there
                refuse_foreign("dataset.root", dataset.root, run_dir.root, "a generated dataset")
            recipe = build(cfg.recipe, "recipe")
            categories = dataset.categories()
            run_dir.check_categories(categories)
            preprocessing = {"resize": cfg.dataset.get("resize"),
                             "input_mode": cfg.dataset.get("input_mode", "rgb")}
            done = finished_categories(run_dir, categories) if resuming else {}
            report["resumed_categories"] = sorted(done)
            log.info("run dir: %s (%d categor%s)", run_dir.root, len(categories), "y" if len(categories) == 1 else "ies")
            for index, category in enumerate(categories, 1):
                still_here()
                if category in done:
                    results.append(done[category])
                    log.info("[category %d/%d %s] kept from the interrupted attempt", index, len(categories),
                             console_line(category))
                    continue
                out = own.category(category)
                ctx = RecipeContext(dataset=dataset, category=category,
                                    make_detector=build_detector_factory(cfg.model, cfg.get("tiling")),
                                    out=out, preprocessing=preprocessing,
                                    postprocess=_plain(cfg.get("postprocess")),
                                    defects=_plain(cfg.get("defects")), seed=int(cfg.get("seed", 0)))
                try:
                    with progress.category(index, len(categories), category):
                        result = recipe(ctx)
                except Exception as exc:  # noqa: BLE001 - the others still run; the run ends failed
                    if len(categories) == 1:
                        raise
                    first_failure = first_failure or exc
                    report.setdefault("failed_categories", {})[category] = _error_line(exc)
                    log.error("[category %d/%d %s] failed: %s", index, len(categories), console_line(category),
                              console_line(_error_line(exc)))
                    continue
                still_here()
                write_json_atomic(out.report, result.to_dict())
                results.append(result)
                log.info("[category %d/%d %s] %s", index, len(categories), console_line(category),
                         _metrics_line(result))
            if first_failure is not None:
                raise first_failure
        report.update(
            status=COMPLETED,
            dataset={"target": cfg.dataset._target_, "categories": categories},
            model={"target": cfg.model._target_},
            recipe={"target": cfg.recipe._target_},
            tiling=_plain(cfg.get("tiling")),
            postprocess=_plain(cfg.get("postprocess")),
            defects=_plain(cfg.get("defects")),
            thresholds={r.category: r.threshold for r in results},
            aggregate=aggregate(results),
            categories=_category_entries(run_dir, results),
            skipped_images=list(getattr(dataset, "skipped", [])),
            timings={"total_s": time.perf_counter() - started,
                     "fit_s": sum(r.timings["fit_s"] for r in results),
                     "predict_s": sum(r.timings["predict_s"] for r in results)},
        )
        still_here()
    except (KeyboardInterrupt, SystemExit) as exc:
        # SystemExit: submitit requeued the job (preemption / timeout) and ends this attempt
        reason = f"exit {exc.code}" if isinstance(exc, SystemExit) else (str(exc) or "SIGINT")
        _record_end(run_dir, own, pinned, INTERRUPTED, f"interrupted ({reason})", config_hash=cfg_hash, **owner())
        raise
    except BaseException as exc:
        line = _error_line(exc)
        if _record_end(run_dir, own, pinned, FAILED, line):
            report.update(status=FAILED, error=line, categories=_category_entries(run_dir, results),
                          skipped_images=list(getattr(dataset, "skipped", [])))
            write_json_atomic(own.report, report)
        raise
    with interrupts_deferred():  # both written, or neither: a run is never left half-recorded
        try:
            write_json_atomic(own.report, report)
        except BaseException as exc:  # a full disk, report.json made a folder: the run failed, not running
            with contextlib.suppress(OSError):  # the console line names the first failure
                _record_end(run_dir, own, pinned, FAILED, _error_line(exc))
            raise
        write_status(own.status, COMPLETED)  # report.json is the result; the HTML view cannot lose it
        interrupt.COMPLETED.append(run_dir.root)
    try:
        write_report_html(own.root / "report.html", report,
                          OmegaConf.to_container(cfg, resolve=True))
    except Exception as exc:  # noqa: BLE001
        log.warning("report.html not written (%s: %s); report.json holds the results", type(exc).__name__, exc)
    log.info("%s", summary_table(results))
    for r in results:
        for note in r.notes:
            log.info("note [%s]: %s", console_line(r.category), console_line(note))
    if report["skipped_images"]:
        log.info("skipped %d unreadable image(s) (dataset.on_bad_image=skip); listed under skipped_images in %s",
                 len(report["skipped_images"]), run_dir.report)
    log.info("run dir: %s", run_dir.root)
    return report
