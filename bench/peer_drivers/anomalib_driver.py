"""anomalib 2.x PatchCore / PaDiM on the bench split, the way its docs run them.

Folder datamodule over a folder of symlinks that holds exactly the bench split
(train/good, test/good, test/<defect>), Engine.fit then Engine.predict, CPU, one
process (num_workers=0). The backbone is handed to anomalib as an ``nn.Module`` with the
same offline ImageNet weights as ours (anomalib's own pretrained path downloads), so the
same layers can be named. anomalib's post-processor, evaluator and visualizer are off:
the bench scores raw outputs with one shared metric implementation.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Clock, lite0_into_timm, read_job, resize_maps, write_result  # noqa: E402


def link_split(split: dict, root: Path) -> dict[str, int]:
    """Symlink the split into an anomalib Folder layout; map each link (and target) to its index."""
    index: dict[str, int] = {}
    for i, path in enumerate(split["train"]):
        link = root / "train" / "good" / f"{i:05d}_{Path(path).name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    for i, rec in enumerate(split["test"]):
        sub = "good" if rec["label"] == 0 else rec["defect"]
        link = root / "test" / sub / f"{i:05d}_{Path(rec['path']).name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(rec["path"])
        index[str(link)] = i
        index[str(link.resolve())] = i
    return index


def static_same_padding(net, side: int):
    """Swap timm's dynamic 'same'-padding convs for ZeroPad2d + Conv2d fixed for ``side``.

    anomalib traces an ``nn.Module`` backbone with torch.fx, which cannot trace timm's
    shape-dependent padding. At one input size the padding is constant, so the swap is
    exact (checked on a random input).
    """
    import torch
    from torch import nn

    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:
        return net
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=name: sizes.__setitem__(n, a[0].shape[-2:]))
             for name, m in net.named_modules() if isinstance(m, Conv2dSame)]
    probe = torch.randn(1, 3, side, side)
    with torch.no_grad():
        reference = net(probe)
    for h in hooks:
        h.remove()
    for name, (ih, iw) in sizes.items():
        conv = net.get_submodule(name)
        ph = get_same_padding(ih, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = get_same_padding(iw, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                          conv.dilation, conv.groups, conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, nn.Sequential(
            nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), plain))
    with torch.no_grad():
        if not torch.allclose(net(probe), reference, atol=1e-4):
            raise SystemExit("static padding changed the backbone's output")
    return net


def build_backbone(params: dict, side: int):
    """timm tf_efficientnet_lite0 or a torchvision net, with the offline weights loaded."""
    import torch

    name, weights = params["backbone"], params.get("weights_path")
    if name == "efficientnet_lite0":
        import timm

        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if params["pretrained"]:
            lite0_into_timm(net, weights)
        net = static_same_padding(net.eval(), side)
    else:
        import torchvision.models as tvm

        net = getattr(tvm, name)(weights=None)
        if params["pretrained"]:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    # frozen, as anomalib freezes a backbone it builds from a name; a module passed in keeps
    # requires_grad, and the coreset loop then holds one autograd graph per pick (24 GB OOM seen)
    return net.eval().requires_grad_(False)


def allocation_free_coreset_updates() -> None:
    """anomalib's greedy coreset allocates a (patches × dims) temporary per pick. In two of
    three runs here glibc's heap then grew by that much per pick (~470 → ~50 picks/s, OOM
    kill at 24 GB; MALLOC_MMAP_THRESHOLD_=1048576 avoided it at ~64 picks/s). Same
    arithmetic, same picks, into buffers reused across picks: no growth, full speed."""
    import torch
    from anomalib.models.components.sampling import k_center_greedy

    def update_distances(self, cluster_center) -> None:
        if cluster_center is None:
            return
        center = self.features[cluster_center].squeeze()
        if getattr(self, "_diff", None) is None or self._diff.shape != self.features.shape:
            self._diff = torch.empty_like(self.features)
            self._dist = torch.empty(len(self.features), 1, dtype=self.features.dtype)
        torch.sub(self.features, center, out=self._diff)
        torch.linalg.vector_norm(self._diff, ord=2, dim=1, keepdim=True, out=self._dist)
        if self.min_distances is None:
            self.min_distances = self._dist.clone()
        else:
            torch.minimum(self.min_distances, self._dist, out=self.min_distances)

    k_center_greedy.KCenterGreedy.update_distances = update_distances
    k_center_greedy.KCenterGreedy.select_coreset_idxs = torch.no_grad()(
        k_center_greedy.KCenterGreedy.select_coreset_idxs)


def main() -> None:
    job = read_job()
    params, split, side = job["params"], job["split"], job["resize"]
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore

    torch.manual_seed(job["seed"])
    allocation_free_coreset_updates()
    out = Path(job["out_dir"])
    data_root = out / "folder"
    index = link_split(split, data_root)
    defects = sorted({r["defect"] for r in split["test"] if r["label"] == 1})
    notes: list[str] = []
    clock = Clock()

    with clock("fit"):
        backbone = build_backbone(params, side)
        common = dict(backbone=backbone, layers=list(params["layers"]), pre_trained=False,
                      post_processor=False, evaluator=False, visualizer=False)
        if job["model"] == "patchcore":
            pre = Patchcore.configure_pre_processor(image_size=(side, side))
            model = Patchcore(coreset_sampling_ratio=params["coreset_ratio"],
                              num_neighbors=params["num_neighbors"], pre_processor=pre, **common)
        else:
            pre = Padim.configure_pre_processor(image_size=(side, side))
            model = Padim(n_features=params["n_features"], pre_processor=pre, **common)
        datamodule = Folder(
            name="mtd", root=data_root, normal_dir="train/good",
            abnormal_dir=[f"test/{d}" for d in defects], normal_test_dir="test/good",
            train_batch_size=params.get("batch_size", 32),
            eval_batch_size=params.get("batch_size", 32), num_workers=0,
            test_split_mode="from_dir", val_split_mode="same_as_test", seed=job["seed"])
        engine = Engine(accelerator="cpu", devices=1, default_root_dir=out / "anomalib_results",
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)  # no validation pass: its scores are not used
        engine.fit(model=model, datamodule=datamodule)

    with clock("test"):
        batches = engine.predict(model=model, datamodule=datamodule)

    n = len(split["test"])
    scores = np.full(n, np.nan)
    maps: list = [None] * n
    for batch in batches:
        for path, score, amap in zip(batch.image_path, batch.pred_score, batch.anomaly_map):
            i = index.get(str(path), index.get(str(Path(path).resolve())))
            scores[i] = float(score)
            maps[i] = amap.detach().cpu().numpy()
    if any(m is None for m in maps):
        raise SystemExit(f"anomalib returned {sum(m is not None for m in maps)} of {n} test images")
    feat = model.model.feature_extractor
    settings = {
        "backbone": params["backbone"], "layers": list(feat.layers),
        "pretrained": params["pretrained"], "resize": side,
        "batch_size": params.get("batch_size", 32),
    }
    if job["model"] == "patchcore":
        settings |= {"coreset_ratio": params["coreset_ratio"],
                     "num_neighbors": params["num_neighbors"],
                     "memory_bank": int(model.model.memory_bank.shape[0])}
    else:
        settings |= {"n_features": params["n_features"]}
    write_result(job, scores, resize_maps(maps, side), clock, settings, notes)


if __name__ == "__main__":
    main()
