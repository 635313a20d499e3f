"""Schemas of the ``recipe`` group."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pyimgano_hydra.errors import check


@dataclass
class IndustrialAdaptSchema:
    _target_: str = "pyimgano_hydra.recipes.industrial_adapt.IndustrialAdapt"
    contamination: Optional[float] = None  # expected anomaly share in train; threshold quantile = 1 - c
    calibration_quantile: Optional[float] = None  # overrides contamination; default 0.995
    calibration: str = "refit"  # refit | crossfit | holdout: which unseen normal scores set the threshold (README)
    calibration_folds: int = 5  # crossfit: number of fold models (every train image scored once)
    calibration_holdout: float = 0.2  # holdout, refit: share of train/good held out to score
    pro_fpr_limit: float = 0.3
    predict_batch_size: int = 32
    save_checkpoint: bool = True  # the fitted inspector as categories/<cat>/inspector.pt (needed by infer)

    def __post_init__(self) -> None:
        c, q = self.contamination, self.calibration_quantile
        check(c is None or 0 < c <= 0.5, "recipe.contamination", "must be in (0, 0.5] or null")
        check(q is None or 0 < q < 1, "recipe.calibration_quantile", "must be in (0, 1) or null")
        check(self.calibration in ("crossfit", "refit", "holdout"), "recipe.calibration",
              "must be crossfit, refit or holdout")
        check(self.calibration_folds >= 2, "recipe.calibration_folds", "must be >= 2")
        check(0 <= self.calibration_holdout < 1, "recipe.calibration_holdout", "must be in [0, 1)")
        check(0 < self.pro_fpr_limit <= 1, "recipe.pro_fpr_limit", "must be in (0, 1]")
        check(self.predict_batch_size >= 1, "recipe.predict_batch_size", "must be >= 1")


@dataclass
class MicroFinetuneSchema(IndustrialAdaptSchema):
    """Training settings live on the model (model.epochs, model.lr, model.batch_size, model.seed)."""

    _target_: str = "pyimgano_hydra.recipes.micro_finetune_autoencoder.MicroFinetuneAutoencoder"
    calibration: str = "holdout"  # one training run, not folds + 1


SCHEMAS = {"industrial_adapt": IndustrialAdaptSchema, "micro_finetune_autoencoder": MicroFinetuneSchema}
