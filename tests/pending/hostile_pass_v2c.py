"""Reproducers of open #16 holes (stop 36), kept out of collection until fixed.

Pass V2 (lab side, second round, after tests/pending/hostile_pass_v2b.py was taken): PaDiM
numeric keys whose bound is checked only after the features were extracted, or not at all."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import pythonpath, run_cli

REPO = Path(__file__).resolve().parents[1]


def _run_measured(args, cwd, timeout=120):
    """``python -m pyimgano_hydra args`` through a wrapper that reports the child's peak RSS (KiB)."""
    wrapper = ("import resource, subprocess, sys\n"
               "p = subprocess.run([sys.executable, '-m', 'pyimgano_hydra', *sys.argv[1:]], capture_output=True, text=True)\n"
               "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
               "sys.stderr.write(p.stderr)\nsys.exit(p.returncode)\n")
    env = {**os.environ, "PYTHONPATH": pythonpath(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-c", wrapper, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, int(proc.stdout or 0)


_PADIM = ["model=padim", "dataset.category=washer", "dataset.resize=64", "dataset.limit_train=1",
          "dataset.limit_test=2"]


def test_a_huge_padim_grid_size_is_refused_before_the_features_are_extracted(tmp_path):
    """``model.grid_size=1000`` passes the schema (only >= 1 is checked); the fit then extracts the
    train features resampled to a 1000x1000 grid (144 channels) before the memory guard
    (``model.max_memory_gb``) refuses the Gaussians: 18.9 GB peak and 63 s for the 40 synthetic train
    images, 2.0 GB for one. The bound is known from the config alone (grid_size² x channels²), so it
    must be refused in ``validate``, before any image or feature, like ``dataset.resize`` past the
    backbone limit (pass V2, first round)."""
    proc, peak_kib = _run_measured([*_PADIM, "model.grid_size=1000", f"hydra.run.dir={tmp_path / 'run'}"],
                                   cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert "model.grid_size" in proc.stderr or "model.d" in proc.stderr, proc.stderr[-1500:]
    assert "fit features" not in proc.stderr, proc.stderr[-1500:]
    assert peak_kib < 1_300_000, f"peak {peak_kib / 1e6:.1f} GB before the refusal"


def test_a_padim_d_below_its_layer_count_is_one_line_naming_the_key(tmp_path):
    """``model.d=1`` passes the schema (d >= 1) with PaDiM's three default layers; the fit then
    fails with torch's ``RuntimeError: Non-empty 4D data tensor expected but got a tensor with
    sizes [2, 0, 4, 4]``, naming no key (``model.d=2`` completes)."""
    proc = run_cli([*_PADIM, "model.d=1", f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert proc.returncode != 0
    assert "error: model.d" in proc.stderr, proc.stderr[-1500:]
    assert "Non-empty 4D" not in proc.stderr, proc.stderr[-1500:]
