"""Micro-finetune: train the convolutional autoencoder per category, then the industrial path."""
from __future__ import annotations

from pyimgano_hydra.adapt.tiling import TiledDetector
from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.models.autoencoder import ConvAutoencoder
from pyimgano_hydra.recipes.context import RecipeContext
from pyimgano_hydra.recipes.industrial_adapt import IndustrialAdapt
from pyimgano_hydra.viz.plots import loss_curve

TRAINING_PARAMS = ("epochs", "lr", "weight_decay", "batch_size", "seed")


def _inner(detector):
    """The detector itself, or the one a tiling wrapper fits per tile."""
    if isinstance(detector, TiledDetector):
        return getattr(detector, "detector_", None) or detector._new_inner()
    return detector


class MicroFinetuneAutoencoder(IndustrialAdapt):
    """IndustrialAdapt with the autoencoder trained as ``model.*`` says (epochs, lr, batch_size);
    reports the loss per epoch and writes a loss plot next to the inspector."""

    def check_detector(self, detector) -> None:
        inner = _inner(detector)
        if not isinstance(inner, ConvAutoencoder):
            raise ConfigError(f"recipe=micro_finetune_autoencoder trains an autoencoder: add model=autoencoder "
                              f"(the model is {type(inner).__name__})")

    def describe_fit(self, ctx: RecipeContext, detector) -> dict:
        inner = _inner(detector)
        settings = {k: getattr(inner, k) for k in TRAINING_PARAMS}
        history = list(getattr(inner, "history_", []) or [])
        if not history:
            return {"training": {"settings": settings, "loss": []}}
        plot = loss_curve(ctx.out.root / "loss.png", [h["epoch"] for h in history],
                          [h["loss"] for h in history], f"{ctx.category}: autoencoder training loss")
        return {"training": {"settings": settings, "loss": history},
                "loss_plot": str(plot.relative_to(ctx.out.root))}
