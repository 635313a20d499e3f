"""Attacker pass P1: line side (infer / export / api / score_onnx on a received run dir)."""
import sys

import pytest

from conftest import copy_run, small_png
from forged_onnx import max_rss_mb


def _many_empty_objects(path, size=64 << 20):
    """A JSON list of ~22 million empty objects: 64 MB (the read limit), a few hundred KB zipped."""
    n = size // 3 - 10
    path.write_text("[" + "{}," * (n - 1) + "{}]")


@pytest.mark.parametrize("name", ["status.json", "report.json"])
@pytest.mark.parametrize("module", ["pyimgano_hydra.infer", "pyimgano_hydra.export"])
def test_a_json_file_of_millions_of_empty_objects_stays_within_memory(trained, tmp_path, name, module):
    """Every run-dir JSON file is read whole up to 64 MB and parsed into Python objects before any
    check: ``[{},{},...]`` turns 64 MB into ~22 million dicts (and _depth's list per level), over 2 GB
    of RSS and ~20 s before a one-line refusal (status.json: 2.4 GB measured). A file that size is
    nothing a run writes; the read limit (or the parse) must keep a forged one small."""
    run_dir = copy_run(trained, tmp_path)
    _many_empty_objects(run_dir / name)
    args = [f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'out'}"]
    if module.endswith("infer"):
        args.append(f"input={small_png(trained)}")
    rc, err, peak_mb = max_rss_mb([sys.executable, "-m", module, *args], timeout=120)
    assert rc != 0 and "Traceback" not in err, err[-2000:]
    assert name in err.strip().splitlines()[-1], err[-2000:]
    assert peak_mb < 1500, f"{module} on a 64 MB {name}: peak RSS {peak_mb} MB"


def _deep_folder(root, depth=1100):
    """``root`` with ``top.png`` and ``a/a/.../a/bottom.png`` ``depth`` folders down (2 bytes a level:
    within PATH_MAX, built relative to the working dir as a tar or rsync would)."""
    import os

    root.mkdir()
    here = os.getcwd()
    try:
        os.chdir(root)
        for _ in range(depth):
            os.mkdir("a")
            os.chdir("a")
    finally:
        os.chdir(here)
    return root


def _remove_deep(top):
    """Remove ``top`` whatever its depth, without recursion (shutil.rmtree and pytest's tmp cleanup
    recurse per level on Python 3.11 and would fail on the folder this test builds)."""
    import os

    here = os.getcwd()
    try:
        os.chdir(top)
        depth = 0
        while True:
            sub = None
            for entry in os.scandir("."):
                if entry.is_dir(follow_symlinks=False):
                    sub = entry.name
                    break
                os.unlink(entry.name)
            if sub:
                os.chdir(sub)
                depth += 1
            elif depth:
                name = os.path.basename(os.getcwd())
                os.chdir("..")
                depth -= 1
                os.rmdir(name)
            else:
                break
    finally:
        os.chdir(here)
    os.rmdir(top)


@pytest.mark.parametrize("spec", ["{d}", "{d}/**/*.png"])
def test_a_deeply_nested_input_folder_keeps_the_other_images(trained, tmp_path, spec):
    """An input folder holding ~1100 nested folders (a tar from the line's file share) makes
    infer.collect_inputs fail as a whole: os.walk (infer._walk) and pathlib's ``**`` glob (infer._glob)
    recurse once per level on Python 3.11 and raise RecursionError, so the run ends failed with
    "job [...]: RecursionError: maximum recursion depth exceeded", naming no folder, and top.png,
    a plain image beside it, is never scored. Promise: one bad folder is named in a warning, the
    other images are scored."""
    import json
    import shutil
    import subprocess

    from conftest import run_cli

    folder = _deep_folder(tmp_path / "line")
    shutil.copy(small_png(trained), folder / "top.png")
    out = tmp_path / "out"
    try:
        proc = run_cli([f"run_dir={trained}", "input=" + spec.format(d=folder), f"hydra.run.dir={out}"],
                       module="pyimgano_hydra.infer", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("infer on a deeply nested input folder did not end within 120 s")
    finally:
        _remove_deep(folder)
    assert "RecursionError" not in proc.stderr, proc.stderr[-1500:]
    assert proc.returncode == 0, proc.stderr[-1500:]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert any(r["path"].endswith("top.png") and "score" in r for r in records), records
