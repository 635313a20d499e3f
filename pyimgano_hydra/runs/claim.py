"""Claim the run dir before Hydra writes into it: a completed run's record never changes.

``ClaimRunDir`` is the first Hydra callback; ``on_run_start`` runs before Hydra creates
``.hydra/*.yaml`` and the job log, so a refused run leaves the directory as it was
(``on_multirun_start`` does the same for the sweep dir before any job starts). The claim
is an exclusive create of ``.claim.json`` (pid, host, time): of two runs started together
into one directory exactly one wins.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pyimgano_hydra.runs.status import utc_now

CLAIM_FILE = ".claim.json"
# Written by an earlier run (this version's or an older one's): the dir is taken.
RUN_MARKERS = (CLAIM_FILE, ".hydra", "status.json", "report.json", "predictions.jsonl", "multirun.yaml")


def may_take_over(run_dir: Path) -> bool:
    """Whether a run may continue in ``run_dir`` though it is claimed: an unfinished run that
    nobody is writing (a requeued or re-started job); the app then checks it is the same
    config (``runs/takeover.py``) and keeps its finished categories."""
    from pyimgano_hydra.runs.layout import RunDir
    from pyimgano_hydra.runs.takeover import abandoned

    return abandoned(RunDir(Path(run_dir)))


def claim(run_dir: Path) -> None:
    """Create ``run_dir/.claim.json`` exclusively; SystemExit(2) with one line if taken."""
    run_dir = Path(run_dir)
    taken = next((name for name in RUN_MARKERS if (run_dir / name).exists()), None)
    if taken is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(run_dir / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            taken = CLAIM_FILE
        else:
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "claimed_utc": utc_now()}, handle)
            return
    if may_take_over(run_dir):
        return
    message = (f"{run_dir} already holds a run or sweep (it has {taken}); runs are never overwritten: "
               "pick a new hydra.run.dir (hydra.sweep.dir)")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)  # not an exception: Hydra turns a callback's exceptions into warnings


class ClaimRunDir(Callback):
    """Hydra callback: claim ``hydra.run.dir`` (``hydra.sweep.dir``) before anything is written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # hydra.run.dir reads ${hydra:runtime.choices...}: set what run_job would set next;
        # ${now:} is cached in ``config``, so run_job resolves the same directory.
        HydraConfig.instance().set_config(config)
        claim(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        claim(Path(str(config.hydra.sweep.dir)))
