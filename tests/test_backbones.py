"""Backbones: offline weights, clear errors, layer outputs, batched extraction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pyimgano_hydra.errors import ConfigError, DataError, UserError
from pyimgano_hydra.features import (
    BACKBONES,
    build_backbone,
    extract_features,
    iter_features,
    pooled_embedding,
)


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0", pretrained=True, device="cpu")


def _images(n: int = 3, size: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gives_its_default_layers(name):
    backbone = build_backbone(name, pretrained=False, device="cpu")
    feats = extract_features(backbone, _images(2, 64), batch_size=2)
    assert list(feats) == backbone.layers
    for value in feats.values():
        assert value.dtype == torch.float32 and value.shape[0] == 2
        assert value.shape[2] < 64 and value.shape[3] < 64


def test_pretrained_lite0_weights_are_imagenet_weights(lite0):
    """The offline file maps onto timm's layout: a cat photo is classified as a cat."""
    from skimage import data

    image = torch.from_numpy(data.chelsea()).unsqueeze(0)
    x = torch.nn.functional.interpolate(
        lite0.preprocess(image).contiguous(), size=(224, 224), mode="bilinear", antialias=True
    )
    with torch.inference_mode():
        top = lite0.net(x).argmax(1).item()
    assert 281 <= top <= 285  # ImageNet domestic-cat classes


def test_missing_torchvision_weights_name_cache_path_and_weights_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as info:
        build_backbone("resnet18", pretrained=True, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-") in message
    assert "model.weights_path" in message


def _random_state_dict(name: str, seed: int) -> dict:
    from pyimgano_hydra.features.backbones import BACKBONES as specs

    torch.manual_seed(seed)
    return specs[name]().build().state_dict()


def _same_features(a, b) -> bool:
    images = _images(2, 64)
    fa, fb = extract_features(a, images), extract_features(b, images)
    return all(torch.allclose(fa[k], fb[k], rtol=1e-4, atol=1e-5) for k in fa)


def test_weights_found_in_hub_cache_are_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(_random_state_dict("resnet18", 7), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    loaded = build_backbone("resnet18", pretrained=True, device="cpu")
    assert _same_features(loaded, build_backbone("resnet18", pretrained=False, seed=7, device="cpu"))
    assert not _same_features(loaded, build_backbone("resnet18", pretrained=False, seed=8, device="cpu"))


def test_weights_path_loads_a_local_file_and_rejects_a_wrong_one(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save({"state_dict": _random_state_dict("resnet18", 3)}, path)
    loaded = build_backbone("resnet18", weights_path=str(path), device="cpu")
    assert _same_features(loaded, build_backbone("resnet18", pretrained=False, seed=3, device="cpu"))

    with pytest.raises(UserError, match="model.weights_path"):
        build_backbone("mobilenet_v2", weights_path=str(path), device="cpu")
    with pytest.raises(UserError, match="model.weights_path"):
        build_backbone("resnet18", weights_path=str(tmp_path / "absent.pt"), device="cpu")


def test_random_weights_are_deterministic_for_a_seed():
    a = build_backbone("resnet18", pretrained=False, seed=1, device="cpu")
    b = build_backbone("resnet18", pretrained=False, seed=1, device="cpu")
    c = build_backbone("resnet18", pretrained=False, seed=2, device="cpu")
    assert _same_features(a, b)
    assert not _same_features(a, c)


def test_unknown_backbone_layer_and_device_are_config_errors():
    with pytest.raises(ConfigError, match="model.backbone"):
        build_backbone("vgg99", pretrained=False)
    with pytest.raises(ConfigError, match="model.layers.*layer2"):
        build_backbone("resnet18", layers=["layer9"], pretrained=False)
    with pytest.raises(ConfigError, match="model.device"):
        build_backbone("resnet18", pretrained=False, device="tpu")


def test_gray_input_equals_rgb_with_repeated_channel(lite0):
    gray = _images(2, 64, channels=1)
    rgb = np.repeat(gray, 3, axis=-1)
    a = extract_features(lite0, gray)
    b = extract_features(lite0, rgb)
    for layer in lite0.layers:
        torch.testing.assert_close(a[layer], b[layer])


def test_batching_does_not_change_features(lite0):
    images = _images(5, 64)
    one = extract_features(lite0, images, batch_size=5)
    many = extract_features(lite0, images, batch_size=2)
    for layer in lite0.layers:
        torch.testing.assert_close(one[layer], many[layer], rtol=1e-4, atol=1e-4)
    chunks = list(iter_features(lite0, images, batch_size=2))
    assert [c[lite0.layers[0]].shape[0] for c in chunks] == [2, 2, 1]


def test_pooled_embedding_is_one_row_per_image(lite0):
    emb = pooled_embedding(lite0, _images(4, 64))
    assert emb.shape == (4, sum(lite0.channels().values())) and emb.dtype == np.float32


def test_bad_images_are_data_errors(lite0):
    with pytest.raises(DataError, match="uint8"):
        extract_features(lite0, _images(1, 64).astype(np.float32))
    with pytest.raises(DataError, match="shape"):
        extract_features(lite0, np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_batchnorm_folding_keeps_outputs(name):
    """Folding BatchNorm into convolutions must not change what the layers output."""
    from pyimgano_hydra.features.backbones import BACKBONES as specs, fold_batchnorm

    torch.manual_seed(0)
    net = specs[name]().build().eval()
    for module in net.modules():  # non-trivial statistics, so the fold has work to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = net(x)
        folded = fold_batchnorm(net)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-3, atol=1e-3)


def test_pooled_embedding_stats_are_channel_means_and_stds(lite0):
    images = _images(3, 64)
    feats = extract_features(lite0, images)
    emb = pooled_embedding(lite0, images, stats=("mean", "std"))
    first = feats[lite0.layers[0]]
    c = first.shape[1]
    np.testing.assert_allclose(emb[:, :c], first.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb[:, c : 2 * c], first.std(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="model.pooling:"):
        pooled_embedding(lite0, images, stats=("median",))


def test_standardize_removes_exposure_differences():
    """Two exposures of the same scene give the same features with image_norm=standardize."""
    backbone = build_backbone("efficientnet_lite0", pretrained=True, device="cpu", image_norm="standardize")
    base = _images(2, 64).astype(np.float32) * 0.5 + 40
    dark, bright = base.astype(np.uint8), (base * 1.3 + 10).astype(np.uint8)  # stays below 255
    a, b = extract_features(backbone, dark), extract_features(backbone, bright)
    plain = build_backbone("efficientnet_lite0", pretrained=True, device="cpu")
    c, d = extract_features(plain, dark), extract_features(plain, bright)
    for layer in backbone.layers:
        gap_standardized = (a[layer] - b[layer]).abs().mean() / a[layer].abs().mean()
        gap_plain = (c[layer] - d[layer]).abs().mean() / c[layer].abs().mean()
        assert gap_standardized < 0.05 < gap_plain
    with pytest.raises(ConfigError, match="model.image_norm"):
        build_backbone("resnet18", pretrained=False, image_norm="clahe")
