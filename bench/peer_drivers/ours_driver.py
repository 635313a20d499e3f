"""pyimgano_hydra PatchCore / PaDiM on the bench split, in-process through the config path.

Composes ``dataset=mtd model=<model>`` plus the bench's overrides exactly as the CLI
would, instantiates dataset and detector from it, and times decode+resize+fit and
decode+resize+predict. Run from the repository root with the dev venv's python.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
from _common import Clock, read_job, resize_maps, write_result  # noqa: E402


def main() -> None:
    job = read_job()
    split, side = job["split"], job["resize"]
    warnings.filterwarnings("ignore")
    import numpy as np

    from pyimgano_hydra.api import compose_config
    from pyimgano_hydra.data.sample import Sample
    from pyimgano_hydra.instantiate import build

    import sklearn.covariance  # noqa: F401  libraries load before the clock, as the peer
    import timm  # noqa: F401  drivers import anomalib / pyimgano (and with them timm) first

    cfg = compose_config(job["params"]["overrides"])
    train = [Sample(p, 0, None, "mtd", "good", "train") for p in split["train"]]
    test = [Sample(r["path"], r["label"], r["mask"], "mtd", r["defect"], "test")
            for r in split["test"]]
    clock = Clock()
    with clock("fit"):
        dataset = build(cfg.dataset, "dataset")
        detector = build(cfg.model, "model")
        detector.fit(dataset.load_images(train))
    with clock("test"):
        output = detector.score_maps(dataset.load_images(test))
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    settings = {k: v for k, v in model_cfg.items() if not k.startswith("_")}
    settings["resize"] = int(cfg.dataset.resize)
    maps = None if output.maps is None else resize_maps(list(output.maps), side)
    write_result(job, np.asarray(output.scores), maps, clock, settings, [])


if __name__ == "__main__":
    main()
