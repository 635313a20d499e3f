"""Pass V2 (lab side, second round): PaDiM numeric keys whose bound was checked only after the
features were extracted, or not at all."""
from __future__ import annotations

import json

from conftest import run_cli, run_cli_measured

_PADIM = ["model=padim", "dataset.category=washer", "dataset.resize=64", "dataset.limit_train=2",
          "dataset.limit_test=2"]


def test_a_huge_padim_grid_size_is_refused_before_the_features_are_extracted(tmp_path):
    """``model.grid_size=1000`` passed the schema (only >= 1 was checked); the fit extracted the
    train features resampled to a 1000x1000 grid (144 channels) before the memory guard
    (``model.max_memory_gb``) refused the Gaussians: 18.9 GB peak and 63 s for the 40 synthetic
    train images, 2.0 GB for one. The need is known once the channels are chosen: refused then,
    naming model.grid_size, before any feature."""
    proc, peak_kib = run_cli_measured([*_PADIM, "model.grid_size=1000", f"hydra.run.dir={tmp_path / 'run'}"],
                                      cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert "error: model.grid_size" in proc.stderr and "model.max_memory_gb" in proc.stderr, proc.stderr[-1500:]
    assert "fit features" not in proc.stderr, proc.stderr[-1500:]
    assert peak_kib < 1_300_000, f"peak {peak_kib / 1e6:.1f} GB before the refusal"


def test_a_padim_d_below_its_layer_count_scores_with_the_layers_it_kept(tmp_path):
    """``model.d=1`` with PaDiM's three layers keeps one channel of one layer: the fit failed with
    torch's ``RuntimeError: Non-empty 4D data tensor expected but got a tensor with sizes
    [2, 0, 4, 4]``, naming no key. A layer none of whose channels is kept now adds nothing."""
    run = tmp_path / "run"
    proc = run_cli([*_PADIM, "model.d=1", f"hydra.run.dir={run}"], timeout=180)
    assert proc.returncode == 0, proc.stderr[-1500:]
    lines = (run / "categories" / "washer" / "per_image.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 and all(isinstance(r["score"], float) for r in records)


def test_padim_gaussians_too_big_for_the_image_size_are_refused_before_the_features(tmp_path):
    """``dataset.resize=2048`` (allowed without tiling) and every channel: the Gaussians need ~65 GB.
    The memory guard refused them only on the first extracted batch, ~2 GB in; the grid follows
    from the image size and the backbone's finest stride, so the refusal comes before any feature."""
    proc, peak_kib = run_cli_measured([*_PADIM, "dataset.resize=2048", f"hydra.run.dir={tmp_path / 'run'}"],
                                      cwd=tmp_path, timeout=180)
    assert proc.returncode != 0
    assert "error: model.d: a Gaussian on 262144 positions" in proc.stderr, proc.stderr[-1500:]
    assert "fit features" not in proc.stderr, proc.stderr[-1500:]
    assert peak_kib < 1_300_000, f"peak {peak_kib / 1e6:.1f} GB before the refusal"
