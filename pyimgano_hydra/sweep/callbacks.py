"""Hydra callback that keeps a multirun's leaderboard up to date at the sweep root.

Registered in ``conf/config.yaml`` under ``hydra.callbacks.leaderboard``. Hydra 1.3's
BasicSweeper re-raises a failed job's exception after its batch, so ``on_multirun_end`` is
never reached when a job failed: the board is therefore rewritten after *every* job
(``on_job_end``, which runs wherever the job ran: in-process, a joblib worker, a SLURM
node) under a file lock at the sweep root, and once more at multirun end when reached.
"""
from __future__ import annotations

import logging
import os
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pyimgano_hydra import interrupt
from pyimgano_hydra.errors import UserError, refuse
from pyimgano_hydra.runs.layout import RunDir, sweep_dir_swapped
from pyimgano_hydra.runs.status import FAILED, write_status
from pyimgano_hydra.sweep.leaderboard import RANKABLE, main_value, write_leaderboard
from pyimgano_hydra.resolvers import register_resolvers
from pyimgano_hydra.sweep.naming import write_sweep_file

try:  # Hydra is always there; keep the class importable without it for docs tools
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)
LOCK_FILE = ".leaderboard.lock"
BASIC_SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                  "hydra_plugins.pyimgano_hydra_sweepers.compose_once.ComposeOnceSweeper")

register_resolvers()


def _is_multirun(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.mode", default="")).endswith("MULTIRUN")


def sweep_root(config: DictConfig) -> Path:
    root = Path(str(config.hydra.sweep.dir))
    if not root.is_absolute():
        root = Path(str(OmegaConf.select(config, "hydra.runtime.cwd", default=".") or ".")) / root
    return root


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides in basic-sweep order (job number = index); None for other sweepers."""
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) not in BASIC_SWEEPERS:
        return None
    try:
        from pyimgano_hydra.sweep.compose import job_overrides

        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        return job_overrides([f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task))
    except Exception:  # e.g. glob() sweeps need the config loader: no plan, rows appear as jobs start
        return None


def _one_line(exc: BaseException) -> str:
    """A user error's own line (it names the key); other errors prefixed by their type."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0] if isinstance(exc, UserError) else f"{type(exc).__name__}: {text.splitlines()[0]}"


class LeaderboardCallback(Callback):
    """Writes ``leaderboard.{csv,md,json,png}`` at the sweep root, ranked by ``metric``: the
    tables after every job, the chart after a job when this process last drew it at least
    ``chart_every_s`` ago (a drawing costs ~0.25 s), and always when the sweep ends.

    With an Optuna sweeper, a completed job's return value (report.json's dict) is replaced
    by its mean ``metric`` so the sweeper gets the float it optimises.
    """

    def __init__(self, metric: str = "image_auroc", chart: bool = True, chart_every_s: float = 30.0,
                 lock_timeout_s: float = 120.0) -> None:
        self.metric = metric
        self.chart = chart
        self.chart_every_s = chart_every_s
        self.lock_timeout_s = lock_timeout_s
        self._charted_at: float | None = None
        self._on_interrupt = None

    # ---- writing -----------------------------------------------------------------------
    def write(self, root: Path, final: bool = False) -> dict | None:
        from pyimgano_hydra.files import folder_lock, held_folder

        swapped = sweep_dir_swapped(root)
        if swapped:
            log.warning("leaderboard not written: %s", swapped)
            return None
        root.mkdir(parents=True, exist_ok=True)
        now = time.monotonic()
        chart = self.chart and (final or self._charted_at is None or now - self._charted_at >= self.chart_every_s)
        try:
            with held_folder(root, follow=False) as held:  # the board goes into the folder checked, not a link
                swapped = sweep_dir_swapped(root)          # put in its place since
                if swapped or (held is not None and not os.path.samestat(os.stat(held), os.stat(root))):
                    log.warning("leaderboard not written: %s", swapped or f"{root} was replaced while the sweep ran")
                    return None
                folder = held if held is not None else root
                with folder_lock(folder, LOCK_FILE, self.lock_timeout_s, follow=True):
                    board = write_leaderboard(folder, self.metric, chart=chart, shown_as=root)
            if chart:
                self._charted_at = now
            return board
        except TimeoutError:
            log.warning("leaderboard lock %s busy for %ss; board not rewritten by this job",
                        root / LOCK_FILE, self.lock_timeout_s)
        except Exception as exc:  # never turn a finished job into a failure because of the board
            log.warning("could not write the leaderboard in %s: %s", root, _one_line(exc))
        return None

    # ---- Hydra hooks -------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.metric not in RANKABLE:
            refuse(f"hydra.callbacks.leaderboard.metric: {self.metric!r} is no metric a run reports; "
                   f"use one of {', '.join(RANKABLE)}")  # Hydra turns a callback's exception into a warning
        root = sweep_root(config)
        root.mkdir(parents=True, exist_ok=True)
        plan = planned_jobs(config)
        record = write_sweep_file(root, config, extra={"planned": plan} if plan is not None else None)
        self._on_interrupt = lambda: self.write(root, final=True)  # the board shows the job stopped
        interrupt.ON_INTERRUPT.append(self._on_interrupt)
        log.info("sweep varies %s; leaderboard: %s", ", ".join(record["varying"]) or "nothing",
                 root / "leaderboard.md")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        job_dir = Path(str(config.hydra.runtime.output_dir))
        status = getattr(getattr(job_return, "status", None), "name", "")
        value = getattr(job_return, "_return_value", None)
        root = sweep_root(config)
        if status == "FAILED" and not sweep_dir_swapped(root) and not RunDir(job_dir).status.exists():
            # the job failed before the app could record it: record it, so every board sees it
            error = _one_line(value) if isinstance(value, BaseException) else "failed"
            write_status(RunDir(job_dir).status, FAILED, error=error)
        if (status == "COMPLETED" and isinstance(value, dict)
                and "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).lower()):
            row = {"aggregate": value.get("aggregate") or {}}
            score = main_value(row, self.metric)
            job_return.return_value = float(score) if score is not None else math.nan
        if status == "FAILED":
            error = _one_line(value) if isinstance(value, BaseException) else "failed"
            log.warning("job %s failed: %s (the other jobs go on; leaderboard: %s)", job_dir.name, error,
                        root / "leaderboard.md")
        self.write(root)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._on_interrupt in interrupt.ON_INTERRUPT:  # a later sweep of this process never rewrites this board
            interrupt.ON_INTERRUPT.remove(self._on_interrupt)
        root = sweep_root(config)
        board = self.write(root, final=True)
        if board:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(board["counts"].items()))
            best = f"{board['best_label']} ({root / board['best']})" if board["best"] else "none"
            log.info("leaderboard (%s): %s; best: %s", counts, root / "leaderboard.md", best)


__all__ = ["LeaderboardCallback", "planned_jobs", "sweep_root"]
