"""Micro-finetune: train the convolutional autoencoder per category, then the industrial path."""
from __future__ import annotations

from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.recipes.context import RecipeContext
from pyimgano_hydra.recipes.industrial_adapt import IndustrialAdapt
from pyimgano_hydra.viz.plots import loss_curve

AUTOENCODER_TARGET = "pyimgano_hydra.models.autoencoder.ConvAutoencoder"


class MicroFinetuneAutoencoder(IndustrialAdapt):
    """IndustrialAdapt with the autoencoder trained for ``training.epochs`` at ``training.lr``;
    reports the loss per epoch and writes a loss plot next to the checkpoint."""

    def __init__(self, training=None, **kwargs):
        super().__init__(**kwargs)
        self.training = dict(training or {})

    def model_params(self, model_cfg) -> dict:
        target = model_cfg.get("_target_")
        if target != AUTOENCODER_TARGET:
            raise ConfigError(f"recipe=micro_finetune_autoencoder trains an autoencoder: add model=autoencoder "
                              f"(model._target_ is {target})")
        return {k: v for k, v in self.training.items() if v is not None}

    def describe_fit(self, ctx: RecipeContext, detector) -> dict:
        inner = getattr(detector, "detector_", detector)
        history = list(getattr(inner, "history_", []) or [])
        if not history:
            return {"training": {"settings": self.training, "loss": []}}
        plot = loss_curve(ctx.out.root / "loss.png", [h["epoch"] for h in history],
                          [h["loss"] for h in history], f"{ctx.category}: autoencoder training loss")
        return {"training": {"settings": self.training, "loss": history},
                "loss_plot": str(plot.relative_to(ctx.out.root))}
