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
from pyimgano_hydra.runs.writers import write_text_atomic
from pyimgano_hydra.schemas import register_configs


def compose_with_choices(overrides: Sequence[str] = (), config_name: str = "config") -> tuple[DictConfig, dict]:
    """The composed config (hydra node removed) and the chosen option of each group; ``UserError``
    when a config source lies in a run dir."""
    from pyimgano_hydra import _no_imports_from_a_run_dir
    from pyimgano_hydra.config_sources import check_composed_sources
    from pyimgano_hydra.hydra_guard import guard_hydra

    from pyimgano_hydra.config_sources import check_config_arguments

    _no_imports_from_a_run_dir()  # again: a notebook may have changed into a run dir since its import
    check_config_arguments(list(overrides))  # a search path into a run dir, before Hydra imports a pkg:// package
    register_configs()
    guard_hydra()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="api"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    check_composed_sources(OmegaConf.to_container(cfg.hydra.runtime.config_sources))
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
    """Compose and run one job; returns report.json's content. ``output_dir`` is claimed as the
    CLI claims ``hydra.run.dir`` (``runs/claim.py``): ``UserError`` naming it if it is taken."""
    from pyimgano_hydra import _no_imports_from_a_run_dir

    _no_imports_from_a_run_dir()  # before the app's imports (torch...): never from a run dir changed into
    from pyimgano_hydra import app
    from pyimgano_hydra.runs.claim import claim_dir

    cfg, choices = compose_with_choices(overrides)
    out = Path(output_dir) if output_dir else default_run_dir(choices)
    if claim_dir(out, app.config_hash(cfg), key="output_dir"):  # False: this config's unfinished run, resumed
        _write_hydra_dir(out, cfg, overrides)
    return app.run(cfg, out, overrides=list(overrides), choices=choices)


def _write_hydra_dir(out: Path, cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``.hydra/config.yaml`` and ``overrides.yaml`` as the CLI leaves them."""
    write_text_atomic(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text_atomic(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))


def load_inspector(run_dir: str | Path, category: str | None = None, trust_targets: bool = False,
                   device: str = "auto"):
    """The fitted :class:`~pyimgano_hydra.inspector.Inspector` of ``category`` in a completed run
    dir (the run's only category when None), on ``device``; parsed and checked like ``infer`` does."""
    from pyimgano_hydra import _no_imports_from_a_run_dir

    _no_imports_from_a_run_dir()  # the first load imports torch, cv2...: never from a run dir changed into
    from pyimgano_hydra.runs.load import load_run

    loaded = load_run(run_dir)
    return loaded.inspector(loaded.category(category), trust_targets=trust_targets, device=device)
