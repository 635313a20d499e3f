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

from conftest import REPO, TINY, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One completed TINY run, copied by each test that forges a file in it."""
    root = tmp_path_factory.mktemp("trained") / "run"
    proc = run_cli([*TINY, f"hydra.run.dir={root}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def _copy(trained, tmp_path, name="run"):
    run_dir = tmp_path / name
    shutil.copytree(trained, run_dir)
    return run_dir


def _image(trained):
    """Any PNG the run's report points at is fine as infer input; write a tiny one instead."""
    from PIL import Image

    path = trained.parent / "img.png"
    if not path.exists():
        Image.new("RGB", (32, 32), (120, 120, 120)).save(path)
    return path


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
    run_dir = _copy(trained, tmp_path)
    _deflate_bomb(run_dir / "categories" / "weave" / "inspector.pt", 64 << 20)
    proc = run_cli([f"run_dir={run_dir}", f"input={_image(trained)}", f"hydra.run.dir={tmp_path / 'infer'}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert "compressed" in proc.stderr, proc.stderr[-800:]
