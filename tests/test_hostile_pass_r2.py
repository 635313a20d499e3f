"""Pass R2: a command started with a standard stream closed (``>&-``, ``2>&-``, ``<&-``: cron,
daemons, a detached shell) runs to the end, and no print lands in a file it opened."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY, _cli_env, small_png


def _closed(fds):
    def close():
        for fd in fds:
            os.close(fd)
    return close


def _run_closed(args, fds, module="pyimgano_hydra"):
    """``python -m module args`` with descriptors ``fds`` closed in the child; (rc, stdout, stderr)
    read through the descriptors that stay open (closed ones read as '')."""
    proc = subprocess.run([sys.executable, "-m", module, *args], env=_cli_env(), text=True, timeout=600,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=_closed(fds))
    return proc.returncode, proc.stdout, proc.stderr


def _assert_completed(run_dir):
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed", status
    report = json.loads((run_dir / "report.json").read_text())  # valid JSON: no print went into it
    assert "weave" in report["categories"]


@pytest.mark.parametrize("fds", [(1,), (2,), (0, 1, 2)], ids=["stdout", "stderr", "all"])
def test_training_with_a_closed_stream_completes(tmp_path, fds):
    run_dir = tmp_path / "run"
    rc, out, err = _run_closed([*TINY, f"hydra.run.dir={run_dir}"], fds)
    assert rc == 0, err[-2000:]
    assert "Traceback" not in err
    _assert_completed(run_dir)
    if 1 not in fds:
        assert f"run dir: {run_dir}" in out


def test_infer_with_stdout_closed_writes_its_predictions(trained, tmp_path):
    out = tmp_path / "infer"
    rc, _, err = _run_closed([f"run_dir={trained}", f"input={small_png(trained)}", f"hydra.run.dir={out}"],
                             (1,), module="pyimgano_hydra.infer")
    assert rc == 0, err[-2000:]
    assert "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "score" in json.loads(lines[0])


def test_a_failing_run_with_stderr_closed_exits_non_zero_and_is_marked(tmp_path):
    run_dir = tmp_path / "run"
    rc, _, _ = _run_closed([*TINY, "dataset.root=/nonexistent/folder", "dataset=folder",
                            f"hydra.run.dir={run_dir}"], (2,))
    assert rc != 0
    if (run_dir / "status.json").exists():
        assert json.loads((run_dir / "status.json").read_text())["status"] != "running"
