"""pyimgano 0.9.x PatchCore / PaDiM on the bench split, through its model classes.

PatchCore: ``vision_patchcore_lite_map`` — the pyimgano PatchCore that takes any
torchvision backbone and input size (``vision_patchcore`` is fixed to WideResNet50 /
ResNet50 at 224 px, whose ImageNet weights are not available offline here). Backbone
MobileNetV2 with torchvision's ImageNet file from the hub cache (TORCH_HOME set by the
bench). PaDiM: ``vision_padim`` (ResNet18 / ResNet50 only, layer2+layer3; no offline
weights for them, so random weights). Images go in as file paths; pyimgano decodes them.
Scores come from ``decision_function``, maps from ``get_anomaly_map`` (a second pass:
pyimgano has no call that returns both).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Clock, read_job, resize_maps, write_result  # noqa: E402


def main() -> None:
    job = read_job()
    params, split, side = job["params"], job["split"], job["resize"]
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.manual_seed(job["seed"])
    train = list(split["train"])
    test = [r["path"] for r in split["test"]]
    notes: list[str] = []
    clock = Clock()

    with clock("fit"):
        if job["model"] == "patchcore":
            from pyimgano.features.torchvision_conv_patch_embedder import (
                TorchvisionConvPatchEmbedder,
            )
            from pyimgano.models.patchcore_lite_map import VisionPatchCoreLiteMap
            from torchvision import transforms as T

            embedder = TorchvisionConvPatchEmbedder(
                backbone=params["backbone"], node=params["node"],
                pretrained=params["pretrained"], device="cpu", image_size=side)
            embedder._ensure_ready()
            if params["pretrained"]:
                # With pretrained weights pyimgano swaps in the weights' own transform
                # (resize 232, centre crop 224), which crops the part edges away and
                # misaligns maps with masks; use its plain transform at the bench size.
                embedder._transform = T.Compose([
                    T.Resize((side, side)), T.ToTensor(),
                    T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])
                notes.append("embedder transform set to resize-only at the bench size "
                             "(pyimgano's pretrained path would centre-crop to 224)")
            model = VisionPatchCoreLiteMap(
                embedder=embedder, pretrained=params["pretrained"],
                coreset_sampling_ratio=params["coreset_ratio"], n_neighbors=1,
                random_seed=job["seed"])
            settings = {"backbone": params["backbone"], "layers": [params["node"]],
                        "pretrained": params["pretrained"], "resize": side,
                        "coreset_ratio": params["coreset_ratio"],
                        "coreset": "random subsample (lite_map has no greedy coreset)",
                        "model_name": "vision_patchcore_lite_map"}
        else:
            from pyimgano.models.padim import VisionPaDiM

            model = VisionPaDiM(backbone=params["backbone"], d_reduced=params["n_features"],
                                image_size=side, pretrained=params["pretrained"],
                                device="cpu", random_state=job["seed"])
            settings = {"backbone": params["backbone"], "layers": ["layer2", "layer3"],
                        "pretrained": params["pretrained"], "resize": side,
                        "n_features": params["n_features"],
                        "reduction": "Gaussian random projection", "model_name": "vision_padim"}
        model.fit(train)

    with clock("test_scores"):
        scores = model.decision_function(test)
    with clock("test_maps"):
        maps = [model.get_anomaly_map(p) for p in test]
    clock.spans["test"] = clock.spans["test_scores"] + clock.spans["test_maps"]
    write_result(job, np.asarray(scores), resize_maps(maps, side), clock, settings, notes)


if __name__ == "__main__":
    main()
