"""Attacker pass G: hostile run dirs (inspector.pt archives, resumed runs, crafted names) that still
run code, blow up, hang or mis-report."""
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, TINY, copy_run, forge_kept, interrupted_copy, run_cli, small_png






def _deflate_bomb(path, inflated: int) -> None:
    """A torch zip whose one storage is a deflated ``inflated``-byte entry (~1000x smaller on disk),
    plus one extra entry with a malformed extra field: Python's zipfile raises BadZipFile on it
    (``uncompressed_archive`` then takes the file for torch's legacy format and lets it through),
    while torch's reader (miniz) ignores the extra field and inflates the entry."""
    import torch

    buf = io.BytesIO()
    torch.save({"x": torch.empty(inflated, dtype=torch.uint8)}, buf)
    source = zipfile.ZipFile(buf)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if info.filename.endswith("data/0"):
                with out.open(info.filename, "w", force_zip64=True) as handle:
                    chunk = bytes(1 << 20)
                    for _ in range(inflated >> 20):
                        handle.write(chunk)
            else:
                out.writestr(info.filename, source.read(info.filename))
        odd = zipfile.ZipInfo(f"{source.namelist()[0].split('/')[0]}/zzzz")
        odd.extra = b"\x99\x99\xff\x00"  # declares 255 bytes, holds none
        out.writestr(odd, b"")


def test_infer_refuses_a_deflated_inspector_hidden_behind_a_bad_extra_field(trained, tmp_path):
    """inspector.pt = a 64 KB deflated torch zip inflating to 64 MB (scale it: a 20 MB file inflates to
    20 GB and the OOM killer ends infer, no error line). ``uncompressed_archive`` swallows zipfile's
    BadZipFile (one entry with a malformed extra field) as "not a zip, legacy format", torch's own zip
    reader then inflates every entry; the tensors-vs-file-size check only comes after the memory is
    taken. Observed with 1 MB -> 1 GB: infer's max RSS 1.6 GB, then "its tensors hold 1024 MB".
    Expected: refused before torch.load, as a compressed archive (docs/WORKBENCH.md "Trust model")."""
    run_dir = copy_run(trained, tmp_path)
    _deflate_bomb(run_dir / "categories" / "weave" / "inspector.pt", 64 << 20)
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'infer'}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "compressed" in proc.stderr, proc.stderr[-800:]


def _interrupted_copy(trained, tmp_path):
    return interrupted_copy(trained, tmp_path / "run")




def _set_threshold(value):
    def change(record):
        record["threshold"]["value"] = value
    return change


def _drop_threshold_value(record):
    del record["threshold"]["value"]


def _drop_total_s(record):
    del record["timings"]["total_s"]


@pytest.mark.parametrize("change", [_set_threshold("abc"), _drop_threshold_value, _drop_total_s],
                         ids=["threshold-value-str", "threshold-no-value", "timings-no-total_s"])
def test_resumed_run_checks_the_kept_threshold_and_total_time(trained, tmp_path, change):
    """``category_result`` checks ``timings.fit_s`` / ``predict_s`` but not ``threshold.value`` nor
    ``timings.total_s``, which ``summary_table`` formats *after* report.json and status.json
    ``completed`` are written. Observed: status.json "completed", report.json holding the forged
    threshold (infer will trip on it), exit 1 with "error: job [...]: ValueError: Unknown format code
    'g' for object of type 'str'" / "KeyError: 'value'" / "KeyError: 'total_s'", naming neither the
    file nor the key. Expected: the kept report.json refused in one line naming it and the key, and the
    run never recorded as completed."""
    run_dir = _interrupted_copy(trained, tmp_path)
    forged = forge_kept(run_dir, change)
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    status = json.loads((run_dir / "status.json").read_text())["status"]
    assert (proc.returncode == 0) == (status == "completed"), (proc.returncode, status, proc.stderr[-500:])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert str(forged) in proc.stderr, proc.stderr[-500:]


def test_resumed_run_never_echoes_escapes_from_kept_notes(trained, tmp_path):
    """A kept category's ``notes`` are checked to be strings only: ``"\\x1b[2J\\x1b]0;owned\\x07"``
    (clear screen, set the terminal title) reaches the console raw as ``note [weave]: ...``
    (pass F escaped a forged category name, not the notes). Expected: control characters
    escaped or the file refused."""
    run_dir = _interrupted_copy(trained, tmp_path)
    forge_kept(run_dir, lambda record: record.__setitem__("notes", ["\x1b[2J\x1b]0;owned\x07"]))
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    assert "\x1b" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-500:]


ESCAPE_NAME = "\x1b[2J\x1b]0;owned\x07weave"


def _renamed_category(trained, tmp_path, name):
    """A completed run whose only category is called ``name`` (report.json key and the inspector's
    ``category`` both: what a crafted run dir holds; infer checks that the two agree)."""
    import torch

    run_dir = copy_run(trained, tmp_path)
    inspector = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(inspector, weights_only=True)
    state["category"] = name
    torch.save(state, inspector)
    report = json.loads((run_dir / "report.json").read_text())
    report["categories"] = {name: report["categories"]["weave"]}
    report["thresholds"] = {name: report["thresholds"]["weave"]}
    (run_dir / "report.json").write_text(json.dumps(report))
    return run_dir


@pytest.mark.parametrize("module", ["pyimgano_hydra.infer", "pyimgano_hydra.export"])
def test_infer_and_export_never_echo_escapes_from_a_category_name(trained, tmp_path, module):
    """A run dir whose only category is named ``"\\x1b[2J\\x1b]0;owned\\x07weave"``: infer prints
    "1 images scored with <ESC>[2J<ESC>]0;owned<BEL>weave from ..." and export "<ESC>[2J...weave: .../model.onnx"
    raw (clear screen, set the terminal title); load.py escapes names only in its error lines. Expected:
    control characters escaped (or the name refused) on every console line."""
    run_dir = _renamed_category(trained, tmp_path, ESCAPE_NAME)
    args = [f"run_dir={run_dir}"]
    if module.endswith("infer"):
        args += [f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'infer'}"]
    proc = run_cli(args, module=module, timeout=300)
    assert "\x1b" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-500:]


def test_resumed_run_never_waits_on_a_fifo_category_folder(trained, tmp_path):
    """A requeued job taking over its own interrupted run whose ``categories/weave`` is a FIFO (not a
    folder): ``finished_categories`` finds no readable report.json in it, takes it for a half-written
    category and calls ``shutil.rmtree`` on it, which opens the FIFO without O_NONBLOCK and blocks
    forever (the takeover checks refuse special files at the top and in .hydra/, not under
    categories/). Expected: one line naming it, non-zero exit, no hang; the run still interrupted."""
    run_dir = _interrupted_copy(trained, tmp_path)
    folder = run_dir / "categories" / "weave"
    shutil.rmtree(folder)
    os.mkfifo(folder)
    try:
        proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the resumed run blocked on the FIFO categories/weave")
    assert proc.returncode != 0 and str(folder) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("resume", [True, False], ids=["resumed", "new-dir"])
def test_a_log_file_that_is_a_folder_is_named(trained, tmp_path, resume):
    """The run dir holds a *folder* named ``pyimgano_hydra.log`` (the job log Hydra's file handler
    appends to): the special-file check passes folders, and the run ends with "error: ValueError:
    Unable to configure handler 'file'" naming neither the file nor a key. Expected: one line naming
    pyimgano_hydra.log (as for a FIFO there, tests/test_hostile_pass_f.py)."""
    if resume:
        run_dir = _interrupted_copy(trained, tmp_path)
        (run_dir / "pyimgano_hydra.log").unlink()
    else:
        run_dir = tmp_path / "new"
        run_dir.mkdir()
    (run_dir / "pyimgano_hydra.log").mkdir()
    proc = run_cli([*TINY, f"hydra.run.dir={run_dir}"], timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert "pyimgano_hydra.log" in proc.stderr, proc.stderr[-500:]


def test_score_onnx_refuses_a_nan_threshold(trained, tmp_path):
    """examples/score_onnx.py reads export.json's ``image_threshold.value`` with ``float()``: a ``NaN``
    there (json accepts it; the sha256 covers model.onnx only) makes every ``score > threshold`` false,
    so every image is printed ``"pred_label": 0`` with ``"threshold": NaN`` and exit 0: a silent wrong
    result. ``infer runtime=onnxruntime`` on the same file refuses it ("must be finite, got nan").
    Expected: one line naming export.json, non-zero exit."""
    run_dir = copy_run(trained, tmp_path)
    proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export", timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
    artifacts = run_dir / "categories" / "weave" / "artifacts"
    manifest = json.loads((artifacts / "export.json").read_text())
    manifest["image_threshold"]["value"] = float("nan")
    (artifacts / "export.json").write_text(json.dumps(manifest))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(REPO / "examples" / "score_onnx.py"), str(artifacts),
                           str(small_png(trained))], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode != 0 and str(artifacts / "export.json") in proc.stderr, (proc.stdout, proc.stderr[-500:])
