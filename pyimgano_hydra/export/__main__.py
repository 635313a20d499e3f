"""``python -m pyimgano_hydra.export run_dir=<dir> [category=<name>] [format=onnx]`` (``pyimgano-hydra-export``)."""
from __future__ import annotations


import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pyimgano_hydra.console import (one_line_errors, quiet_third_party_logs, refuse_unsafe_arguments,
                                    user_errors_exit)
from pyimgano_hydra.errors import ConfigError, console_line
from pyimgano_hydra.interrupt import exit_on_interrupt
from pyimgano_hydra.paths import CONFIG_PATH
from pyimgano_hydra.schemas import register_configs
from pyimgano_hydra.schemas.export import ExportSchema

register_configs()


def run_export(settings: ExportSchema) -> list[str]:
    """Export the chosen categories of ``settings.run_dir``; return the written model paths."""
    from pyimgano_hydra.export import export_category
    from pyimgano_hydra.runs.load import load_run

    quiet_third_party_logs()
    loaded = load_run(settings.run_dir)
    if settings.category is not None:
        categories = [loaded.category(settings.category)]
    else:  # every category with a stored inspector
        categories = sorted(name for name, stored in loaded.inspectors.items() if stored)
    written = []
    for category in categories:
        manifest = export_category(settings.run_dir, category, settings.opset)
        path = loaded.run_dir.category(category).onnx_model
        print(console_line(f"{category}: {path} ({manifest.detector}, input {manifest.input_size[0]}x"
                           f"{manifest.input_size[1]}, sha256 {manifest.sha256[:12]})"))
        written.append(str(path))
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def _job(cfg: DictConfig) -> None:
    with user_errors_exit():
        try:
            settings = OmegaConf.to_object(cfg)
        except ConfigError:
            raise
        except Exception as exc:  # omegaconf type errors and missing run_dir
            raise ConfigError(" ".join(str(exc).split("\n")[0].split())) from exc
        run_export(settings)


def main() -> None:
    refuse_unsafe_arguments(sys.argv[1:])
    with exit_on_interrupt("the export", recorded=False), one_line_errors():
        _job()


if __name__ == "__main__":
    main()
