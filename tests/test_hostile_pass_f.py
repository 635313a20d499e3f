"""Attacker pass F: hostile run dirs and artifacts that still hang, blow up or mis-report."""
import json
import os
import resource
import subprocess
import sys

import pytest

from conftest import REPO, TINY, interrupted_copy, run_cli

SCORE_ONNX = REPO / "examples" / "score_onnx.py"
MANIFEST = {"tiling": None, "image_threshold": {"value": 1.0}, "sha256": "0" * 64, "channels": 3,
            "input_size": [8, 8]}


def _score_onnx(artifacts, image, tmp_path, timeout=20):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def limit():  # a model.onnx linked to /dev/zero must not take the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run([sys.executable, "-I", str(SCORE_ONNX), str(artifacts), str(image)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp_path, preexec_fn=limit)


def test_score_onnx_never_waits_on_a_fifo_export_json(tmp_path):
    """examples/score_onnx.py on a hostile artifacts dir whose export.json is a FIFO: it blocks forever
    (infer refuses a FIFO in a run dir); expected one line naming the file, exit 2."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    os.mkfifo(artifacts / "export.json")
    (artifacts / "model.onnx").write_bytes(b"x")
    try:
        proc = _score_onnx(artifacts, tmp_path / "img.png", tmp_path, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("score_onnx.py blocked on a FIFO export.json")
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {artifacts / 'export.json'}: "), proc.stderr


def test_score_onnx_refuses_a_model_linked_to_dev_zero(tmp_path):
    """model.onnx -> /dev/zero: read_bytes() reads until memory runs out (MemoryError traceback under a
    limit, the whole machine's memory without one); expected one line naming model.onnx, exit 2."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "export.json").write_text(json.dumps(MANIFEST))
    (artifacts / "model.onnx").symlink_to("/dev/zero")
    proc = _score_onnx(artifacts, tmp_path / "img.png", tmp_path, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {artifacts / 'model.onnx'}: "), proc.stderr


def test_resumed_run_names_a_forged_category_report(tmp_path):
    """A requeued job takes over its own interrupted run dir; a kept category's report.json whose
    ``metrics`` is a list (not an object) ends the run with "AttributeError: 'list' object has no
    attribute 'items'", naming neither the file nor the key; expected the file named (as for a
    report lacking a key: 'delete its category folder to redo the category')."""
    run_dir = _interrupted_copy(tmp_path)
    category = run_dir / "categories" / "weave" / "report.json"
    record = json.loads(category.read_text())
    record["metrics"] = [1, 2]
    category.write_text(json.dumps(record))
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert str(category) in proc.stderr, proc.stderr[-500:]


def _interrupted_copy(tmp_path):
    """A completed TINY run turned back into its own interrupted attempt (what a requeued job finds)."""
    first = tmp_path / "first"
    assert run_cli([*TINY, f"hydra.run.dir={first}"]).returncode == 0
    return interrupted_copy(first, tmp_path / "run")


def test_resumed_run_never_records_a_forged_category_name(tmp_path):
    """A kept category's report.json is trusted field by field: its ``category`` ("../../x" with an
    ANSI escape) becomes the completed run's category key (weave is gone from report.json, its inspector
    path points at a folder that does not exist), the escape reaches the console raw, and a forged
    absolute ``plots`` entry becomes a link to /etc/passwd in report.html."""
    run_dir = _interrupted_copy(tmp_path)
    category = run_dir / "categories" / "weave" / "report.json"
    record = json.loads(category.read_text())
    record["category"] = "../../evil\x1b[31mRED"
    record["plots"] = ["/etc/passwd"]
    category.write_text(json.dumps(record))
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"])
    assert "\x1b[31m" not in proc.stdout + proc.stderr
    if proc.returncode == 0:
        report = json.loads((run_dir / "report.json").read_text())
        assert list(report["categories"]) == ["weave"], list(report["categories"])
        assert "/etc/passwd" not in (run_dir / "report.html").read_text()


def test_app_inside_an_unfinished_run_dir_imports_nothing_from_it(tmp_path):
    """``python -m pyimgano_hydra`` started inside a received *unfinished* run dir (status.json
    interrupted, .hydra/, no report.json, its .claim.json removed) to resume it: the dir is not seen
    as a run dir (``_inside_a_run_dir`` wants .claim.json, or report.json with status.json), the working
    dir stays on sys.path and Hydra imports the dir's ``hydra_plugins/`` (code runs), although the
    takeover check treats the same dir as a run (status.json alone)."""
    run_dir = tmp_path / "received"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted", "config_hash": "0"}))
    marker = tmp_path / "PWNED"
    plugin = run_dir / "hydra_plugins" / "evil"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    proc = run_cli([*TINY, "hydra.run.dir=."], cwd=run_dir)
    assert not marker.exists(), "the run dir's hydra_plugins/ ran"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("fifo", [".hydra/overrides.yaml", "pyimgano_hydra.log"])
def test_resumed_run_never_waits_on_a_fifo(tmp_path, fifo):
    """A requeued job taking over its own interrupted run dir that holds a FIFO (``.hydra/overrides.yaml``,
    which Hydra rewrites, or the run log it appends to): the takeover checks refuse symlinks and hard
    links only, and the job blocks forever opening the FIFO; expected one line naming it, non-zero exit."""
    run_dir = _interrupted_copy(tmp_path)
    (run_dir / fifo).unlink()
    os.mkfifo(run_dir / fifo)
    try:
        proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the resumed run blocked on the FIFO {fifo}")
    assert proc.returncode != 0 and fifo.split("/")[-1] in proc.stderr, proc.stderr
