"""Python API: compose a config from overrides and run it from code.

    from pyimgano_hydra.api import compose_config, run
    report = run(["dataset.category=weave", "model.coreset_ratio=0.05"])

    from pyimgano_hydra.api import load_inspector
    inspector = load_inspector(run_dir, "weave")
    labels = inspector.predict(inspector.load_images(["part.png"]))   # 0 normal / 1 anomalous
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

from pyimgano_hydra.paths import CONFIG_MODULE
from pyimgano_hydra.runs.layout import RunDir
from pyimgano_hydra.runs.writers import write_text_atomic
from pyimgano_hydra.schemas import register_configs


def compose_with_choices(overrides: Sequence[str] = (), config_name: str = "config") -> tuple[DictConfig, dict]:
    """The composed config (hydra node removed) and the chosen option of each group."""
    register_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="api"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if not k.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config the CLI would run with these overrides (no job started)."""
    return compose_with_choices(overrides, config_name)[0]


def default_run_dir(choices: dict, base: str | Path = "outputs/runs") -> Path:
    """Same naming as the CLI: <date>/<time with microseconds>_<recipe>_<dataset>_<model>."""
    now = datetime.now()
    name = f"{now:%H-%M-%S-%f}_{choices.get('recipe')}_{choices.get('dataset')}_{choices.get('model')}"
    return Path(base) / f"{now:%Y-%m-%d}" / name


def run(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> dict:
    """Compose and run one job; returns report.json's content."""
    from pyimgano_hydra import app

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.claim import CLAIM_FILE, inside_a_run

    cfg, choices = compose_with_choices(overrides)
    out = Path(output_dir) if output_dir else default_run_dir(choices)
    outer = inside_a_run(out)
    if outer is not None:  # as the CLI's claim: a completed run never gains another run's files
        raise UserError(f"output_dir={out}: lies inside the run dir {outer}; runs are never written into "
                        "another run: pick a new output_dir")
    taken = next((name for name in (CLAIM_FILE, "multirun.yaml") if (out / name).exists()), None)
    if taken and not RunDir(out).status.exists():  # a sweep root, or a CLI run not yet started
        raise UserError(f"output_dir={out}: already holds a run or sweep (it has {taken}); runs are never "
                        "overwritten: pick a new output_dir")
    _write_hydra_dir(out, cfg, overrides)
    return app.run(cfg, out, overrides=list(overrides), choices=choices)


def _write_hydra_dir(out: Path, cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``.hydra/config.yaml`` and ``overrides.yaml`` as the CLI leaves them (never over a run)."""
    hydra_dir = out / ".hydra"
    if hydra_dir.exists() or RunDir(out).status.exists() or RunDir(out).report.exists():
        return  # app.run refuses a used dir; nothing of the earlier run is touched
    write_text_atomic(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text_atomic(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))


def load_inspector(run_dir: str | Path, category: str | None = None, trust_targets: bool = False,
                   device: str = "auto"):
    """The fitted :class:`~pyimgano_hydra.inspector.Inspector` of ``category`` in a completed run
    dir (the run's only category when None), on ``device``; parsed and checked like ``infer`` does."""
    from pyimgano_hydra.runs.load import load_run

    loaded = load_run(run_dir)
    return loaded.inspector(loaded.category(category), trust_targets=trust_targets, device=device)
