"""Loading a finished run directory back, safely (for inference and comparisons)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyimgano_hydra.errors import UserError
from pyimgano_hydra.instantiate import TRUSTED_PREFIXES, check_targets
from pyimgano_hydra.runs.layout import SCHEMA_VERSION, RunDir
from pyimgano_hydra.runs.status import COMPLETED, read_status
from pyimgano_hydra.runs.writers import read_json


@dataclass
class LoadedRun:
    run_dir: RunDir
    report: dict
    infer_config: dict

    def category(self, name: str | None) -> str:
        """The category to use: ``name``, or the run's only one."""
        available = sorted(self.infer_config["categories"])
        if name is None:
            if len(available) == 1:
                return available[0]
            raise UserError(f"category: this run has {len(available)} categories ({', '.join(available)}); pick one with category=<name>")
        if name not in available:
            raise UserError(f"category={name} is not in this run; available: {', '.join(available)}")
        return name


def load_run(path: str | Path, trust_targets: bool = False) -> LoadedRun:
    """Read a completed run dir; refuse unfinished runs, newer schemas and untrusted targets."""
    run_dir = RunDir(Path(path))
    if not run_dir.root.is_dir():
        raise UserError(f"run_dir={path}: no such directory; pass the folder that holds report.json")
    state = read_status(run_dir.status)
    if state != COMPLETED:
        raise UserError(f"run_dir={path}: the run is {state or 'missing status.json'}, not completed; "
                        "only completed runs can be used for inference")
    if not run_dir.infer_config.is_file():
        raise UserError(f"{run_dir.infer_config}: missing; the run dir is incomplete or from an older version")
    report = read_json(run_dir.report)
    infer_config = read_json(run_dir.infer_config)
    version = max(int(report.get("schema_version", 0)), int(infer_config.get("schema_version", 0)))
    if version > SCHEMA_VERSION:
        raise UserError(f"run_dir={path}: schema_version {version} is newer than this pyimgano_hydra "
                        f"understands ({SCHEMA_VERSION}); upgrade pyimgano_hydra")
    if not trust_targets:
        check_targets(infer_config.get("model"), "model", TRUSTED_PREFIXES)
        check_targets(infer_config.get("tiling"), "tiling", TRUSTED_PREFIXES)
    return LoadedRun(run_dir, report, infer_config)
