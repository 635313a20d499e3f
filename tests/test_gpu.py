"""The GPU path, checked on the CPU through the same kernels; CUDA parity where a GPU is visible."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pyimgano_hydra import app
from pyimgano_hydra.schemas import validate
from pyimgano_hydra.api import compose_config
from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.features.device import job_gpu_index, resolve_device
from pyimgano_hydra.models.kernels import nearest_bank_entries, upsample_and_smooth
from pyimgano_hydra.runs.writers import read_json, read_jsonl
from pyimgano_hydra.smoothing import gaussian_blur, gaussian_blur_torch

from conftest import TINY, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0, 8.0])
@pytest.mark.parametrize("shape", [(3, 128, 96), (2, 37, 61), (1, 9, 9)])
def test_torch_blur_matches_opencv(sigma, shape):
    maps = (np.random.default_rng(0).random(shape) * 10).astype(np.float32)
    expected = gaussian_blur(maps, sigma)
    got = gaussian_blur_torch(torch.from_numpy(maps), sigma).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    assert not np.allclose(expected, maps)  # the blur did something


def test_nearest_bank_search_is_exact_in_chunks():
    rng = np.random.default_rng(1)
    bank, queries = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(23, 8)).astype(np.float32)
    bank_t = torch.from_numpy(bank)
    dist, idx = nearest_bank_entries(torch.from_numpy(queries), bank_t, (bank_t * bank_t).sum(1), rows=7)
    full = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    np.testing.assert_array_equal(idx, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), atol=1e-4)


def test_maps_are_upsampled_then_smoothed_on_their_device():
    grid = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    maps = upsample_and_smooth(grid, (32, 32), 2.0)
    assert maps.shape == (1, 32, 32) and maps.dtype == np.float32
    up = torch.nn.functional.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(maps, gaussian_blur(up.numpy(), 2.0))


@pytest.mark.parametrize("device, passes", [("cuda", [8, 8]), ("cpu", [8, 3])])
def test_a_short_batch_runs_at_full_size_on_a_gpu_only(device, passes):
    """GPU passes keep one batch shape (a new one costs cuDNN plan building); results are cut back."""
    from pyimgano_hydra.features import iter_features

    seen = []

    class Recorder:
        layers = ["out"]

        def __init__(self):
            self.device = torch.device(device)

        def preprocess(self, images):
            return images.float()

        def __call__(self, x):
            seen.append(len(x))
            return {"out": x.mean(dim=(1, 2, 3))[:, None, None, None] * torch.ones(len(x), 2, 1, 1)}

    images = np.random.default_rng(0).integers(0, 255, size=(11, 4, 4, 3), dtype=np.uint8)
    out = [f["out"] for f in iter_features(Recorder(), images, batch_size=8)]
    assert seen == passes and [len(o) for o in out] == [8, 3]
    np.testing.assert_allclose(torch.cat(out)[:, 0, 0, 0].numpy(), images.reshape(11, -1).mean(1))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda0"])
def test_a_bad_device_names_the_key(device):
    with pytest.raises(ConfigError, match="model.device"):
        validate(compose_config([f"model.device={device}"]))
    with pytest.raises(ConfigError, match="model.device"):
        resolve_device(device)


def test_cuda_n_is_accepted_by_the_schema_and_refused_without_a_gpu():
    validate(compose_config(["model.device=cuda:1"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU is visible"):
            resolve_device("cuda:1")
    assert resolve_device("cpu").type == "cpu"


def test_each_job_picks_its_gpu_by_rank(monkeypatch):
    for name in ("LOCAL_RANK", "SLURM_LOCALID", "SUBMITIT_LOCAL_LOCALID", "PYIMGANO_JOB_NUM"):
        monkeypatch.delenv(name, raising=False)
    assert job_gpu_index(4) == 0
    monkeypatch.setenv("PYIMGANO_JOB_NUM", "6")  # joblib / basic launcher: the sweep's job number
    assert job_gpu_index(4) == 2
    monkeypatch.setenv("SLURM_LOCALID", "1")  # a launcher's local rank wins
    assert job_gpu_index(4) == 1 and job_gpu_index(1) == 0


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "run"
    app.run(compose_config([*TINY, "model.device=cpu"]), out)
    return out


def test_environment_records_the_device_used_and_gpu_facts(cpu_run):
    env = read_json(cpu_run / "environment.json")
    assert env["device"] == "cpu"
    assert {"cuda_available", "cuda_version", "cudnn_version", "gpus"} <= set(env["gpu"])


def test_a_run_fitted_on_a_gpu_scores_on_a_cpu_only_machine(cpu_run, tmp_path):
    """The stored device is a record: ``infer`` (device=auto) scores anywhere, same scores."""
    import shutil

    run = tmp_path / "fitted_on_cuda"
    shutil.copytree(cpu_run, run)
    stored = run / "categories" / "weave" / "inspector.pt"
    state = torch.load(stored, weights_only=True)
    state["detector"]["params"]["device"] = "cuda"  # as written by a run fitted with model.device=cuda
    torch.save(state, stored)
    records = read_jsonl(run / "categories" / "weave" / "per_image.jsonl")
    folder = Path(records[0]["path"]).parents[1]
    out = tmp_path / "infer"
    cpu_only = {"CUDA_VISIBLE_DEVICES": ""}  # the line PC: device=auto finds no GPU
    proc = run_cli([f"run_dir={run}", f"input={folder}", f"hydra.run.dir={out}"], module="pyimgano_hydra.infer",
                   env=cpu_only)
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = {r["path"]: r["score"] for r in read_jsonl(out / "predictions.jsonl")}
    for r in records:
        assert predicted[r["path"]] == pytest.approx(r["score"], abs=1e-4)
    bad = run_cli([f"run_dir={run}", f"input={folder}", f"hydra.run.dir={tmp_path / 'bad'}", "device=gpu"],
                  module="pyimgano_hydra.infer", env=cpu_only)
    assert bad.returncode != 0 and "device: 'gpu'" in bad.stderr


@cuda
@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_gpu_fit_and_predict_match_the_cpu(model, tmp_path):
    scores = {}
    tiny = [o for o in TINY if o.startswith("dataset.") or model == "patchcore"]
    for device in ("cpu", "cuda"):
        app.run(compose_config([*tiny, f"model={model}", f"model.device={device}"]), tmp_path / device)
        scores[device] = [r["score"] for r in read_jsonl(tmp_path / device / "categories" / "weave" / "per_image.jsonl")]
        assert read_json(tmp_path / device / "environment.json")["device"].startswith(device)
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], rtol=1e-4, atol=1e-4)


@cuda
def test_gpu_blur_and_search_match_the_cpu():
    maps = (np.random.default_rng(0).random((2, 128, 128)) * 10).astype(np.float32)
    got = gaussian_blur_torch(torch.from_numpy(maps).cuda(), 4.0).cpu().numpy()
    assert np.abs(got - gaussian_blur(maps, 4.0)).max() <= 1e-5
    rng = np.random.default_rng(1)
    bank, queries = torch.from_numpy(rng.normal(size=(500, 64)).astype(np.float32)), torch.from_numpy(
        rng.normal(size=(300, 64)).astype(np.float32))
    cpu = nearest_bank_entries(queries, bank, (bank * bank).sum(1))
    bank_g = bank.cuda()
    gpu = nearest_bank_entries(queries, bank_g, (bank_g * bank_g).sum(1))
    np.testing.assert_array_equal(gpu[1], cpu[1])
    np.testing.assert_allclose(gpu[0], cpu[0], atol=1e-4)


def _features(backbone, images, autocast: str) -> dict:
    from pyimgano_hydra.features import iter_features
    from pyimgano_hydra.features.precision import autocast_setting

    with autocast_setting(autocast):
        return next(iter_features(backbone, images, batch_size=len(images)))


def test_autocast_runs_the_backbone_in_bf16_and_hands_back_float32():
    from pyimgano_hydra.features import build_backbone

    backbone = build_backbone("resnet18", ["layer2"], pretrained=False, device="cpu")
    images = np.random.default_rng(0).integers(0, 255, size=(2, 64, 64, 3), dtype=np.uint8)
    full, half = _features(backbone, images, "none")["layer2"], _features(backbone, images, "bf16")["layer2"]
    assert half.dtype == torch.float32
    assert not torch.equal(full, half) and torch.allclose(full, half, rtol=0.1, atol=0.1)
    with pytest.raises(ConfigError, match="gpu.autocast"):
        _features(backbone, images, "int8")


@cuda
@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_gpu_autocast_keeps_the_scores_close(autocast, tmp_path):
    """Reduced precision moves scores a little (bf16 keeps 8 mantissa bits), not the ranking."""
    scores, auroc = {}, {}
    for name in ("none", autocast):
        app.run(compose_config([*TINY, "model.device=cuda", f"gpu.autocast={name}"]), tmp_path / name)
        scores[name] = np.array([r["score"] for r in read_jsonl(tmp_path / name / "categories" / "weave" / "per_image.jsonl")])
        auroc[name] = read_json(tmp_path / name / "report.json")["aggregate"]["image_auroc"]["mean"]
    assert not np.array_equal(scores[autocast], scores["none"])  # autocast was on
    assert np.median(np.abs(scores[autocast] / scores["none"] - 1)) <= 0.02
    assert abs(auroc[autocast] - auroc["none"]) <= 0.05


def test_autocast_applies_only_inside_its_block():
    from pyimgano_hydra.features.precision import active_autocast, autocast_setting, backbone_autocast

    cpu = torch.device("cpu")
    assert active_autocast() == "none" and not isinstance(backbone_autocast(cpu), torch.autocast)
    with pytest.raises(RuntimeError):
        with autocast_setting("bf16"):
            assert isinstance(backbone_autocast(cpu), torch.autocast)
            raise RuntimeError("a failed job")
    assert active_autocast() == "none"
