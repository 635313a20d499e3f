"""Attacker pass Z7 (#16): lost / misrecorded runs and silent wrong results -- resumed runs with forged
kept numbers, Optuna study databases, infer file names, odd image shapes."""
from __future__ import annotations

import json

import pytest

from conftest import TINY, forge_kept, interrupted_copy, run_cli


def _status(run_dir):
    return json.loads((run_dir / "status.json").read_text())["status"]


def _forge_out_of_range(record):
    record["metrics"].update(image_auroc=5.0, image_ap=-7.0, n_normal=-3)


def test_resumed_run_never_records_kept_metrics_outside_their_range(trained, tmp_path):
    """HOLE (wrong-result). An interrupted run re-run with its config takes over the kept category;
    its report.json has ``metrics.image_auroc = 5.0``, ``image_ap = -7.0``, ``n_normal = -3`` (finite
    numbers, so ``category_result`` passes them). Observed: rc 0, status completed, the new report.json
    records ``categories.weave.metrics.image_auroc = 5.0`` and ``aggregate.image_auroc.mean = 5.0``
    (``image_ap`` -7.0, ``n_normal`` -3) as if computed -- no AUROC/AP can leave [0, 1], no count is
    negative (an unknown metric name, ``made_up_metric``, is kept and aggregated alike).
    Expected: the kept report.json refused in one line naming it (or the category redone); never a
    completed report with an AUROC of 5."""
    run_dir = interrupted_copy(trained, tmp_path / "run")
    forged = forge_kept(run_dir, _forge_out_of_range)
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    report = run_dir / "report.json"
    if report.exists() and json.loads(report.read_text()).get("status") == "completed":
        record = json.loads(report.read_text())
        metrics = record["categories"]["weave"]["metrics"]
        assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["image_ap"] <= 1.0, metrics
        assert metrics["n_normal"] >= 0, metrics
        assert record["aggregate"]["image_auroc"]["mean"] <= 1.0, record["aggregate"]["image_auroc"]
    else:
        assert proc.returncode != 0 and str(forged) in proc.stderr, (proc.returncode, proc.stderr[-500:])
        assert _status(run_dir) != "completed"


def _tall_png(path, rows: int) -> None:
    """A 1 x ``rows`` 8-bit gray PNG written row by row (each row: filter byte 0, one pixel)."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(6)
    block = b"".join(b"\x00" + bytes([i % 251]) for i in range(1_000_000))
    data = b"".join([comp.compress(block) for _ in range(rows // 1_000_000)] + [comp.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, rows, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_a_one_pixel_wide_png_within_the_megabyte_limit_never_takes_gigabytes(trained, tmp_path):
    """HOLE (memory blow-up). A 1.5 MB PNG of 1 x 170,000,000 gray pixels: 170 MB by
    ``decoded_megabytes`` (under the default ``dataset.max_image_megabytes=256`` and Pillow's
    179 M-pixel bomb limit), so infer decodes it. Pillow keeps a pointer per row (8 bytes a row, more
    than the pixel itself) and converting it copies that again: observed peak RSS 3.85 GB
    (``/usr/bin/time -v``; 1.3 GB for a 40x40 image, 1.3 GB for a 8000x7500 gray image of as many
    megabytes' worth up to 60 M pixels, 1.9 GB for 1 x 60 M), rc 0 after 13 s. Expected: an image
    this thin counted by what its decode takes (rows x 8 bytes more) and refused in one line naming the
    file, or decoded within ~2 GB."""
    import subprocess
    import sys

    from conftest import _cli_env

    folder = tmp_path / "in"
    folder.mkdir()
    _tall_png(folder / "tall.png", 170_000_000)
    assert (folder / "tall.png").stat().st_size < 3_000_000
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr); print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "pyimgano_hydra.infer",
                           f"run_dir={trained}", f"input={folder}", f"hydra.run.dir={tmp_path / 'inf'}"],
                          cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=180)
    rc, peak_kib = (int(v) for v in proc.stdout.split()[-2:])
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert rc != 0 or peak_kib < 2_500_000, (rc, peak_kib, proc.stderr[-300:])
    if rc != 0:
        assert "tall.png" in proc.stderr, proc.stderr[-500:]


# ---- held -------------------------------------------------------------------------------------------

def test_held_an_optuna_study_stored_with_the_other_direction_is_refused(tmp_path):
    """HELD. ``hydra.sweeper.storage`` names a study ``patchcore`` stored with direction MINIMIZE (one
    trial, value 0.01) while the preset maximizes: refused before any job in one line naming
    hydra.sweeper.storage; no optimization_results.yaml (a minimised best never reported)."""
    optuna = pytest.importorskip("optuna")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "d.db"
    study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="minimize")
    study.tell(study.ask(), 0.01)
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sw'}",
                    "dataset=synthetic", "dataset.resize=32", *TINY], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]
    assert "hydra.sweeper.storage" in proc.stderr and "direction" in proc.stderr
    assert not (tmp_path / "sw" / "optimization_results.yaml").exists()


@pytest.mark.parametrize("forge", [lambda r: r["metrics"].update(made_up_metric=0.5),
                                   lambda r: r["metrics"].update(n_anomalous=2.5),
                                   lambda r: r["counts"].update(test=10**15)], ids=["unknown", "fraction", "count"])
def test_resumed_run_refuses_a_kept_metric_it_never_records(trained, tmp_path, forge):
    run_dir = interrupted_copy(trained, tmp_path / "run")
    forged = forge_kept(run_dir, forge)
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    assert proc.returncode != 0 and str(forged) in proc.stderr.strip().splitlines()[-1], proc.stderr[-500:]
    assert _status(run_dir) != "completed"
