"""Pass X1 (line side): hostile run dirs handed to ``pyimgano_hydra.infer`` / ``.export`` / the api;
variants not in the earlier passes."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import _cli_env, copy_run, small_png


class _HoleWriter:
    """A file-like for ``torch.save`` that turns the one large write (a zero tensor's storage) into
    a hole: the file's apparent size is gigabytes, its blocks on disk a few megabytes."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "wb")
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if len(view) > (64 << 20):
            self.handle.seek(len(view), 1)
        else:
            self.handle.write(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.truncate(self.size)
        self.handle.close()


def _sparse_inspector(path: Path, n_bytes: int) -> None:
    """``path`` (a trained inspector.pt) rewritten with its PaDiM mean replaced by ``n_bytes`` of
    float32 zeros, the zeros a hole in the file (a sparse file: ~20 MB on disk)."""
    import torch

    state = torch.load(path, weights_only=True)
    with tempfile.NamedTemporaryFile(dir=path.parent) as zeros:
        zeros.truncate(n_bytes)
        state["detector"]["state"]["mean"] = torch.from_file(zeros.name, shared=True, size=n_bytes // 4,
                                                             dtype=torch.float32)
        writer = _HoleWriter(path.with_suffix(".tmp"))
        torch.save(state, writer)
        writer.close()
    path.with_suffix(".tmp").replace(path)


@pytest.fixture(scope="module")
def trained_padim(tmp_path_factory):
    """One completed tiny PaDiM run (64 px synthetic images)."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("trained_padim") / "run"
    proc = run_cli(["dataset.category=weave", "dataset.limit_train=12", "dataset.limit_test=12", "model=padim",
                    "dataset.image_size=64", "dataset.resize=64", f"hydra.run.dir={root}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def _infer_measured(run_dir: Path, image: Path, out: Path) -> tuple[int, int, str]:
    """(rc, peak RSS in KiB, stderr) of ``python -m pyimgano_hydra.infer`` in a child of a small wrapper."""
    return _infer_measured_args([f"run_dir={run_dir}", f"input={image}", f"hydra.run.dir={out}"])


def test_a_sparse_inspector_pt_never_blows_up_memory(trained_padim, tmp_path):
    """A run dir of 21 MB on disk whose inspector.pt is a sparse file of 3 GB apparent size (one
    zero-filled tensor stored as a hole; a valid torch zip of stored entries, its tensors no larger
    than the file): infer read it whole before any check (peak RSS 3.8 GB), then refused it. The
    inspector file's size is never bounded nor compared with the blocks it holds. It must be
    refused before torch reads it: rc != 0, one line naming inspector.pt, peak well under 1.5 GB."""
    run_dir = copy_run(trained_padim, tmp_path)
    inspector = run_dir / "categories" / "weave" / "inspector.pt"
    _sparse_inspector(inspector, 3 << 30)
    assert inspector.stat().st_size > (3 << 30) and inspector.stat().st_blocks * 512 < (64 << 20)
    rc, peak_kb, stderr = _infer_measured(run_dir, small_png(trained_padim), tmp_path / "out")
    assert peak_kb < 1_500_000, f"infer peaked at {peak_kb >> 10} MB on a run dir of ~21 MB on disk"
    assert rc != 0 and "inspector.pt" in stderr.strip().splitlines()[-1], stderr[-1500:]


def _infer_measured_args(args: list[str]) -> tuple[int, int, str]:
    """(rc, peak anonymous memory in KiB, stderr) of ``python -m pyimgano_hydra.infer args``."""
    from conftest import run_cli_measured

    proc, peak_kb = run_cli_measured(args, None, timeout=120, module="pyimgano_hydra.infer")
    return proc.returncode, peak_kb, proc.stderr


def test_a_sparse_model_onnx_is_not_read_whole(trained_padim, tmp_path):
    """``runtime=onnxruntime`` on an exported run whose 22 MB model.onnx was grown (truncate, a hole)
    to 2 GB - 1 byte, just under MAX_MODEL_BYTES: infer read all of it and hashed it before refusing
    the sha256 (peak RSS 2.76 GB against 0.92 GB for the real model, 13.5 s against 3.8 s). A file
    whose blocks on disk are a hundredth of its size is no model export wrote: refused before it is
    read (rc != 0, one line naming model.onnx, peak under 1.5 GB)."""
    from conftest import run_cli

    run_dir = copy_run(trained_padim, tmp_path)
    proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = run_dir / "categories" / "weave" / "artifacts" / "model.onnx"
    with open(model, "r+b") as handle:
        handle.truncate((2 << 30) - 1)
    rc, peak_kb, stderr = _infer_measured_args([f"run_dir={run_dir}", f"input={small_png(trained_padim)}",
                                                f"hydra.run.dir={tmp_path / 'out'}", "runtime=onnxruntime"])
    assert peak_kb < 1_500_000, f"infer peaked at {peak_kb >> 10} MB on a sparse model.onnx"
    assert rc != 0 and "model.onnx" in stderr.strip().splitlines()[-1], stderr[-1500:]


def test_an_empty_input_is_refused_not_the_working_dir_scored(trained_padim, tmp_path):
    """``input=`` left empty (``input=$IMAGES`` with the variable unset in a line script) is read as
    ``Path('')`` == ``.``: infer walked the whole working dir and scored every image under it (346
    images in the reproducer, rc 0, "346 images scored"), as if that folder had been asked for. An
    empty input names nothing: rc != 0, one line naming ``input``, no predictions."""
    from PIL import Image

    work = tmp_path / "work"
    (work / "unrelated").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(work / "unrelated" / f"{i}.png")
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={trained_padim}", "input=",
                           f"hydra.run.dir={tmp_path / 'out'}"], cwd=work, env=_cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout[-500:]
    assert "input" in proc.stderr.strip().splitlines()[-1], proc.stderr[-1500:]
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


# -- attacks that held ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["status.json", "report.json", "categories/weave/inspector.pt"])
def test_held_run_dir_files_that_are_char_devices_are_refused_in_one_line(trained_padim, tmp_path, name):
    """A run dir unpacked by root can hold device nodes: status.json, report.json or inspector.pt as
    a character device of /dev/zero (major 1, minor 5) is refused in one line naming it, never read."""
    import os
    import stat

    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    run_dir = copy_run(trained_padim, tmp_path)
    (run_dir / name).unlink()
    os.mknod(run_dir / name, 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                           f"input={small_png(trained_padim)}", f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path,
                          env=_cli_env(), capture_output=True, text=True, timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and Path(name).name in last and "not a regular file" in last, proc.stderr[-1500:]


def test_held_export_replaces_a_fifo_export_json_and_a_hard_linked_model_onnx_without_touching_others(
        trained_padim, tmp_path):
    """artifacts/export.json a FIFO and artifacts/model.onnx a hard link to a file outside the run:
    export neither blocks on the FIFO nor writes through the link (the outside file keeps its bytes)."""
    import os

    from conftest import run_cli

    run_dir = copy_run(trained_padim, tmp_path)
    artifacts = run_dir / "categories" / "weave" / "artifacts"
    artifacts.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    os.link(victim, artifacts / "model.onnx")
    os.mkfifo(artifacts / "export.json")
    proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export", timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert victim.read_text() == "victim\n"
    assert json.loads((artifacts / "export.json").read_text())["category"] == "weave"


def test_held_a_category_named_by_a_lone_surrogate_is_refused_in_one_line(trained_padim, tmp_path):
    """report.json's only category renamed to the JSON escape ``\\ud800`` (a lone surrogate no file
    name can hold): infer refuses in one line, no traceback."""
    run_dir = copy_run(trained_padim, tmp_path)
    report = json.loads((run_dir / "report.json").read_text())
    report["categories"] = {"\ud800": report["categories"]["weave"]}
    (run_dir / "report.json").write_text(json.dumps(report))  # ensure_ascii: written as \ud800
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                           f"input={small_png(trained_padim)}", f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path,
                          env=_cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert len(proc.stderr.strip().splitlines()[-1]) < 500


@pytest.mark.parametrize("args", [["run_dir=null", "input=x.png"], ["run_dir=/nowhere", "input=[a.png,b.png]"]])
def test_a_run_dir_or_input_that_is_no_path_is_named_in_one_line(tmp_path, args):
    """Seen in pass X1: ``run_dir=null`` (or a list) gave one line naming a TypeError, not the key."""
    from conftest import run_cli

    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'out'}"], module="pyimgano_hydra.infer", timeout=120)
    key = args[0].split("=")[0] if "null" in args[0] else "input"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {key}: give a path"), proc.stderr[-500:]
