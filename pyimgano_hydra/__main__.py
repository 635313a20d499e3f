"""``python -m pyimgano_hydra`` / ``pyimgano-hydra``: the Hydra app."""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pyimgano_hydra.console import one_line_errors, refuse_unsafe_arguments
from pyimgano_hydra.errors import UserError, print_error
from pyimgano_hydra.interrupt import exit_on_interrupt
from pyimgano_hydra.paths import CONFIG_PATH
from pyimgano_hydra.schemas import register_configs
from pyimgano_hydra.resolvers import register_resolvers

register_resolvers()  # hydra.sweep.dir / subdir and --help use them

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _job(cfg: DictConfig) -> dict:
    from pyimgano_hydra import app

    hc = HydraConfig.get()
    # A job's changes to the environment (PYIMGANO_JOB_NUM, cv2's LD_LIBRARY_PATH) are undone after
    # it: the next job resolves hydra.sweep.dir again, and ${oc.env:...} there moved it out of the
    # claimed sweep dir onto a completed run.
    env = dict(os.environ)
    if hc.mode == RunMode.MULTIRUN:  # model.device=cuda on a multi-GPU box: one GPU per job number
        os.environ["PYIMGANO_JOB_NUM"] = str(hc.job.num)
    try:
        return app.run(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task),
                       choices={k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")})
    except UserError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or hc.mode == RunMode.MULTIRUN:
            raise
        print_error(str(exc))
        sys.exit(exc.exit_code)
    finally:
        if hc.mode == RunMode.MULTIRUN and dict(os.environ) != env:
            os.environ.clear()
            os.environ.update(env)


def main() -> None:
    if "--version" in sys.argv[1:]:
        from pyimgano_hydra import __version__

        print(f"pyimgano_hydra {__version__}")
        return
    refuse_unsafe_arguments(sys.argv[1:])
    with exit_on_interrupt("the run"), one_line_errors():
        _job()


if __name__ == "__main__":
    main()
