"""Pass T1: the receiving side. infer given stored postprocess numbers that are finite as Python
floats but not once they meet the float32 maths that uses them; the sweep leaderboard (the batch
reader of run dirs) given one forged job dir beside a good one; score_onnx.py given an export.json
threshold that infer refuses."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import copy_run, forge_inspector, run_cli, small_png, trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory, export=True)


def _postprocess_past_float32(state):
    # finite float64 numbers (trust.finite passes them) that overflow np.float32 in transform():
    # (map - (-inf)) / inf is NaN for every pixel
    state["postprocess"]["low"] = -1e39
    state["postprocess"]["high"] = 1e39


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_infer_never_saves_nan_maps_from_a_postprocess_range_past_float32(trained, tmp_path, runtime):
    run_dir = copy_run(trained, tmp_path)
    forge_inspector(run_dir, _postprocess_past_float32)
    out = tmp_path / "out"
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", "save_maps=true", f"runtime={runtime}",
                    f"hydra.run.dir={out}"], module="pyimgano_hydra.infer", timeout=300)
    maps = sorted((out / "maps").glob("*.npy")) if (out / "maps").is_dir() else []
    nan_maps = [m.name for m in maps if not np.isfinite(np.load(m)).all()]
    if proc.returncode == 0:  # a completed infer must not hand over NaN maps as its results
        assert not nan_maps, f"rc 0 with NaN anomaly maps saved: {nan_maps}"
    else:
        assert "inspector.pt" in proc.stderr and "postprocess" in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert "RuntimeWarning" not in proc.stderr, proc.stderr[-1500:]


def test_infer_with_defects_names_the_inspector_for_a_postprocess_range_past_float32(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    forge_inspector(run_dir, _postprocess_past_float32)
    out = tmp_path / "out"
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", "defects=default",
                    "defects.pixel_threshold=0.6", f"hydra.run.dir={out}"], module="pyimgano_hydra.infer",
                   timeout=300)
    assert proc.returncode != 0
    # the stored number is at fault, not "the detector output": the line names the file and key
    assert "inspector.pt" in proc.stderr and "postprocess" in proc.stderr, proc.stderr[-1500:]


# ---- the sweep leaderboard: one forged job dir in a sweep folder --------------------------------

_BOARD = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway read stops here, not the box
from pyimgano_hydra.sweep.callbacks import LeaderboardCallback
LeaderboardCallback(lock_timeout_s=5).write(Path(sys.argv[1]), final=True)
"""


def _forge_report_categories_list(job):
    record = json.loads((job / "report.json").read_text())
    record["categories"] = list(record["categories"])  # a list where training writes a dict
    (job / "report.json").write_text(json.dumps(record))


def _forge_status_fifo(job):
    import os

    (job / "status.json").unlink()
    os.mkfifo(job / "status.json")  # nobody ever writes it: open() waits forever


def _forge_status_dev_zero(job):
    import os

    (job / "status.json").unlink()
    os.symlink("/dev/zero", job / "status.json")  # json.load reads without end


def _forge_overrides_alias_bomb(job):
    # 384 bytes of YAML anchors: 10**8 list items once OmegaConf expands the aliases
    lines = ['- &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"- &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    (job / ".hydra" / "overrides.yaml").write_text("\n".join(lines) + "\n")


def _forge_failed_status_error_not_a_string(job):
    # a failed job whose error is a mapping: to_markdown slices it ("(row['error'] or '')[:160]")
    (job / "status.json").write_text(json.dumps({"status": "failed", "error": {"line": "x"}}))


def _forge_overrides_long_value(job):
    # a 1.5 MB override: the chart lays it out as a bar label (300 KB took 24 s, 1.5 MB over a minute)
    (job / ".hydra" / "overrides.yaml").write_text("- model.tag=" + "W" * 1_500_000 + "\n")


def _forge_links_outside(job):
    # status.json and report.json: links to another run's files, outside the sweep (claim 1: no file
    # from outside a run dir through a link in it); the board listed job 1 as a completed result
    import os
    import shutil

    other = job.parent.parent / "elsewhere"
    shutil.copytree(job, other)
    for name in ("status.json", "report.json"):
        (job / name).unlink()
        os.symlink(other / name, job / name)


@pytest.mark.parametrize("forge", [_forge_links_outside, _forge_report_categories_list, _forge_status_fifo, _forge_status_dev_zero,
                                   _forge_overrides_alias_bomb, _forge_failed_status_error_not_a_string,
                                   _forge_overrides_long_value],
                         ids=["links_outside", "report_categories_list", "status_fifo", "status_dev_zero", "overrides_alias_bomb",
                              "status_error_mapping", "overrides_long_value"])
def test_one_forged_job_dir_never_loses_the_sweep_leaderboard(trained, tmp_path, forge):
    """A sweep folder with a good completed job ``0`` and a forged job dir ``1`` (a copied-in run dir):
    the board is written within a minute, in bounded memory, and job 0's row is in it; the forged
    job gets a row of its own (failed / unreadable), not the whole board."""
    import subprocess
    import sys

    from conftest import _cli_env

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    copy_run(trained, sweep, "0")
    forge(copy_run(trained, sweep, "1"))
    try:
        proc = subprocess.run([sys.executable, "-c", _BOARD, str(sweep)], env=_cli_env(), capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("writing the leaderboard hung for 60 s on job 1's files")
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    board_file = sweep / "leaderboard.json"
    assert board_file.is_file(), f"no leaderboard written (rc {proc.returncode}): {proc.stderr[-800:]}"
    board = json.loads(board_file.read_text())
    rows = {row["name"]: row for row in board["jobs"]}
    assert rows.get("0", {}).get("status") == "completed", rows.keys()
    assert "1" in rows, rows.keys()
    if forge is _forge_overrides_long_value:  # a run's own files with one long override: a result, labelled short
        assert len(board["best_label"] or "") <= 200 and all(len(r["name"] or "") < 200 for r in board["jobs"])
    else:
        assert rows["1"]["status"] != "completed", rows.get("1")
    for name in ("leaderboard.csv", "leaderboard.md"):  # the whole board, not only its first file
        assert (sweep / name).is_file(), f"{name} not written: {proc.stderr[-800:]}"


def _duplicate_threshold(text):
    return text[:-1] + ', "image_threshold": {"value": 1e300, "provenance": null}}'


def _threshold_true(text):
    record = json.loads(text)
    record["image_threshold"]["value"] = True  # float(True) == 1.0: every image anomalous
    return json.dumps(record)


@pytest.mark.parametrize("forge", [_duplicate_threshold, _threshold_true], ids=["duplicate_key", "bool_value"])
def test_score_onnx_refuses_an_export_json_threshold_infer_refuses(trained, tmp_path, forge):
    """export.json with ``image_threshold`` twice, or its value ``true``: infer (runtime=onnxruntime)
    refuses the file (bad JSON / not the run's threshold); score_onnx.py took the last one (or 1.0)
    and gave a verdict with rc 0."""
    import subprocess
    import sys

    from conftest import REPO

    run_dir = copy_run(trained, tmp_path)
    artifacts = run_dir / "categories" / "weave" / "artifacts"
    text = (artifacts / "export.json").read_text().rstrip()
    assert text.endswith("}")
    (artifacts / "export.json").write_text(forge(text))
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "score_onnx.py"), str(artifacts),
                           str(small_png(trained))], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "export.json" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
