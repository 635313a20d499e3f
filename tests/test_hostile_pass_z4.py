"""Attacker pass Z4 (#16): lost / misrecorded runs (disk problems and interruptions mid-run, damaged
Optuna study databases, image decoders' edge cases)."""
from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
import sys

import pytest

from conftest import TINY, _cli_env, run_cli, told_study

# ---- holes ------------------------------------------------------------------------------------------

# Runs the app with the run's final report.json write failing as a full disk makes it fail (ENOSPC); the
# failure-path writes (status.json failed, report.json failed) are left as they are.
_FULL_AT_REPORT = """
import errno, runpy, sys
import pyimgano_hydra.app as app
real = app.write_json_atomic
def write_json_atomic(path, data, *args, **kwargs):
    if str(path).endswith("/report.json") and "categories/" not in str(path) and data.get("status") == "completed":
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real(path, data, *args, **kwargs)
app.write_json_atomic = write_json_atomic
sys.argv = ["pyimgano_hydra", *sys.argv[1:]]
runpy.run_module("pyimgano_hydra", run_name="__main__", alter_sys=True)
"""


def test_a_run_whose_final_report_json_cannot_be_written_is_recorded_failed_not_running(tmp_path):
    """HOLE (lost-run: misrecorded). In ``app.run`` the last ``write_json_atomic(own.report, report)`` and
    ``write_status(own.status, COMPLETED)`` (inside ``interrupts_deferred``) sit after the ``try``/``except
    BaseException`` that records a failure, so an OSError there (the disk fills exactly then, or
    ``report.json`` became a folder mid-run) ends the run rc 1 with its status.json left at
    ``running`` and the error in no file. Seen with the real trigger: ``mkdir <run>/report.json``
    while the run fits -> ``status: running``, stderr ``IsADirectoryError ... report.json``; a
    ``categories/<cat>/inspector.pt`` folder, by contrast, ends ``failed`` with the error recorded.
    Here the final write fails as ENOSPC (deterministic). Expected: rc != 0, one line naming
    report.json, status.json ``failed`` with the error."""
    wrapper = tmp_path / "full_at_report.py"
    wrapper.write_text(_FULL_AT_REPORT)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(wrapper), f"hydra.run.dir={run}", "dataset=synthetic",
                           "dataset.resize=32", *TINY], cwd=tmp_path, env=_cli_env(), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode != 0, proc.stderr[-500:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "report.json" in proc.stderr, proc.stderr[-800:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed", status
    assert "report.json" in status.get("error", ""), status


# ---- held -------------------------------------------------------------------------------------------

def test_held_an_optuna_study_with_a_corrupt_index_page_is_refused_before_the_sweep(tmp_path):
    """HELD. A study made by this Optuna (one told trial) whose ``trial_values`` unique index page has
    an invalid page type: only an indexed read or insert meets it (the sweep would fail at its first
    ``tell``, after the job). The check's row count reads it: one line naming hydra.sweeper.storage."""
    db = told_study(tmp_path / "d.db")
    con = sqlite3.connect(db)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = dict(con.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'index'"))[
        "sqlite_autoindex_trial_values_1"]
    con.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * page_size] = 0x07
    db.write_bytes(bytes(data))
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sw'}",
                    "dataset=synthetic", "dataset.resize=32", *TINY], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]
    assert "hydra.sweeper.storage" in proc.stderr
    assert not (tmp_path / "sw").exists()


def test_held_a_gif_whose_lzw_data_ends_at_once_is_refused_not_loaded_grey(tmp_path):
    """HELD. A 64x64 GIF (named .png: Pillow picks the decoder by content) whose LZW data is clear, three
    pixels and end-of-information: refused as truncated, not loaded with 4093 pixels of palette index 0."""
    from pyimgano_hydra.data.images import load_image
    from pyimgano_hydra.errors import DataError

    def pack(codes, bits=9):
        acc = n = 0
        out = bytearray()
        for code in codes:
            acc |= code << n
            n += bits
            while n >= 8:
                out.append(acc & 255)
                acc, n = acc >> 8, n - 8
        return bytes(out + (bytes([acc]) if n else b""))

    data = pack([256, 255, 255, 255, 257])
    gif = (b"GIF89a" + struct.pack("<HHBBB", 64, 64, 0xF7, 0, 0) + bytes(range(256)) * 3
           + b"\x2c" + struct.pack("<HHHHB", 0, 0, 64, 64, 0) + b"\x08" + bytes([len(data)]) + data + b"\x00\x3b")
    path = tmp_path / "cut.png"
    path.write_bytes(gif)
    with pytest.raises(DataError, match="cut.png"):
        load_image(path)


@pytest.mark.parametrize("body", ["x: " + "[" * 20000 + "]" * 20000, "seed: 1\nseed: 2"])
def test_held_a_deep_or_duplicate_key_preset_is_one_line_naming_it(tmp_path, body):
    """HELD. ``-cd presets experiment=bad``: a flow sequence 20,000 deep, or a duplicate key, is one line
    naming bad.yaml (no RecursionError traceback, no last-one-wins)."""
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "bad.yaml").write_text("# @package _global_\n" + body + "\n")
    proc = run_cli(["-cd", str(tmp_path / "presets"), "experiment=bad", f"hydra.run.dir={tmp_path / 'r'}",
                    "dataset=synthetic", "dataset.resize=32", *TINY], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]
    assert "bad.yaml" in proc.stderr
