"""Attacker pass Y3: the line side (infer / export / api) given a received run dir and line images:
values inside inspector.pt accepted but scoring silently wrong, and inputs that are not images."""
import json
import os
import shutil

import pytest

from conftest import copy_run, forge_inspector, run_cli, small_png, trained  # noqa: F401 - trained is a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _infer(run_dir, image_input, out):
    return run_cli([f"run_dir={run_dir}", f"input={image_input}", f"hydra.run.dir={out}"],
                   module="pyimgano_hydra.infer", timeout=300)


def _refused_naming_inspector(proc, out):
    assert proc.returncode != 0, ("scored anyway: " + proc.stdout[-300:])
    last = proc.stderr.strip().splitlines()[-1]
    assert "inspector.pt" in last and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert not (out / "predictions.jsonl").exists()


def _resize_64(state):
    state["preprocessing"]["resize"] = 64


def _tile_64(state):
    state["tiling"] = {"tile_size": 64, "stride": 64}
    state["detector"]["state"] = {"inner": state["detector"]["state"]}


@pytest.mark.parametrize("change", [_resize_64, _tile_64], ids=["resize", "tiling"])
def test_resize_that_contradicts_stored_feature_shape_is_refused(trained, tmp_path, change):
    """HOLE (wrong-result). A received inspector.pt whose ``preprocessing.resize`` was changed (128 -> 64)
    while its PatchCore state keeps ``feature_shape`` [16, 16] (the feature grid of a 128-pixel image):
    infer, export and the api decode the line images at 64 and score their 8x8 feature grid against a
    memory bank built at 128. Observed: rc 0, the 12 good test images of the synthetic weave all called
    anomalous (scores ~50 vs threshold 12.3; 3/12 with the true file). ``feature_shape`` is stored but
    never compared with the grid the images give (a forged [3, 5] is accepted too). Variant: a
    ``tiling`` {tile_size: 64, stride: 64} added to the untiled fit (state wrapped as {"inner": ...}):
    64-pixel tiles scored against the 128-pixel bank, also 12/12 good images anomalous. Expected: rc != 0,
    one line naming inspector.pt (preprocessing.resize / feature_shape disagree)."""
    run_dir = copy_run(trained, tmp_path)
    forge_inspector(run_dir, change)
    out = tmp_path / "infer"
    proc = _infer(run_dir, small_png(trained), out)
    _refused_naming_inspector(proc, out)


def test_global_weight_without_a_stored_gaussian_is_refused(trained, tmp_path):
    """HOLE (wrong-result). ``detector.params.global_weight`` 1.0 in a PatchCore inspector whose state holds
    no ``global_mean`` / ``global_precision``: accepted, and the image-level Gaussian term the params
    ask for is silently dropped (scores byte-identical to global_weight 0). The params no longer
    describe what scores. (The reverse, a stored Gaussian with global_weight 0 and a 3-dim mean, fails
    at scoring with "TypeError: unsupported operand type(s) for -: 'NoneType' and 'float'".)
    Expected: rc != 0, one line naming inspector.pt (global_weight without its Gaussian)."""
    run_dir = copy_run(trained, tmp_path)
    forge_inspector(run_dir, lambda s: s["detector"]["params"].__setitem__("global_weight", 1.0))
    out = tmp_path / "infer"
    proc = _infer(run_dir, small_png(trained), out)
    _refused_naming_inspector(proc, out)


def test_inspector_threshold_that_disagrees_with_report_json_is_refused(trained, tmp_path):
    """HOLE (wrong-result). categories/weave/inspector.pt replaced by one whose image_threshold is 20.0
    while the category's report.json (its threshold, its metrics) says 12.30: infer serves the
    inspector's 20 without a word (observed: rc 0, the 12 good test images 0 anomalous; with a
    genuine copy 3/12), and export writes 20 into export.json. infer already refuses artifacts/
    whose export.json threshold disagrees with the inspector ("exported from another fit"), but not
    an inspector that disagrees with the run's own record. Expected: rc != 0, one line naming
    inspector.pt or report.json (threshold 20 vs 12.3: from another fit)."""
    run_dir = copy_run(trained, tmp_path)
    forge_inspector(run_dir, lambda s: s["image_threshold"].__setitem__("value", 20.0))
    out = tmp_path / "infer"
    proc = _infer(run_dir, small_png(trained), out)
    assert proc.returncode != 0, ("scored anyway: " + proc.stdout[-300:])
    last = proc.stderr.strip().splitlines()[-1]
    assert ("inspector.pt" in last or "report.json" in last) and "Traceback" not in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("kind", ["fifo", "link_to_device"])
def test_special_file_named_like_an_image_in_the_input_folder_is_named(trained, tmp_path, kind):
    """HOLE (wrong-result, silent skip). A line folder holding ``a.png`` that is a FIFO (or a link to
    /dev/zero) beside a real ``b.png``: ``is_image_file`` drops it (not ``is_file``, not a dangling
    link), and infer reports "1 images scored" without a word about a.png; a broken link is kept
    so that loading it names it, a special file is not. Expected: a.png named (a warning or an error
    record in predictions.jsonl), never waited on."""
    images = tmp_path / "line"
    images.mkdir()
    shutil.copy(small_png(trained), images / "b.png")
    if kind == "fifo":
        os.mkfifo(images / "a.png")
    else:
        os.symlink("/dev/zero", images / "a.png")
    out = tmp_path / "infer"
    proc = _infer(trained, images, out)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()] \
        if (out / "predictions.jsonl").exists() else []
    named = "a.png" in proc.stdout + proc.stderr or any(r["path"].endswith("a.png") for r in records)
    assert named, (proc.returncode, proc.stdout[-300:], proc.stderr[-300:])


def test_held_proc_file_as_input_is_named(trained, tmp_path):
    """HELD. input=/proc/self/environ (a regular file by stat): one line naming it, rc != 0."""
    out = tmp_path / "infer"
    proc = _infer(trained, "/proc/self/environ", out)
    assert proc.returncode != 0 and "/proc/self/environ" in proc.stderr.strip().splitlines()[-1]


def test_held_forged_params_out_of_range_are_refused(trained, tmp_path):
    """HELD. topk_ratio 0 / smoothing_sigma 1e6 / power_mean_p 1e6 stored in inspector.pt: refused naming the key."""
    run_dir = copy_run(trained, tmp_path)
    forge_inspector(run_dir, lambda s: s["detector"]["params"].__setitem__("smoothing_sigma", 1e6))
    out = tmp_path / "infer"
    proc = _infer(run_dir, small_png(trained), out)
    _refused_naming_inspector(proc, out)
    assert "smoothing_sigma" in proc.stderr


def test_a_stored_layer_the_backbone_lacks_is_named_in_the_inspector(trained, tmp_path):
    """A received inspector.pt whose ``detector.params.layers`` names a layer its backbone lacks failed at
    the first batch as ``model.layers: ...``, a key of the user's config, not of the file. Expected: one
    line naming inspector.pt."""
    run_dir = copy_run(trained, tmp_path)
    forge_inspector(run_dir, lambda s: s["detector"]["params"].__setitem__("layers", ["blocks.9"]))
    out = tmp_path / "infer"
    proc = _infer(run_dir, small_png(trained), out)
    _refused_naming_inspector(proc, out)
    assert "model.layers" in proc.stderr.strip().splitlines()[-1]
