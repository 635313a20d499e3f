"""Attacker pass Z15 (#16): lost / misrecorded runs from odd dataset settings: the folder dataset's
``abnormal_dirs`` mapping (NUL / control characters in a defect name), BTAD categories that fail,
``recipe.calibration=crossfit`` on 2 images, ``dataset.limit_*`` extremes."""
from pathlib import Path

import numpy as np

from conftest import global_preset, run_cli, run_status


def _png(path: Path, defect: bool = False, side: int = 16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    a = (rng.random((side, side, 3)) * 40 + 100).astype("uint8")
    if defect:
        a[4:8, 4:8] = 255
    Image.fromarray(a).save(path)


def _folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for i in range(6):
        _png(root / "train" / "normal" / f"{i}.png")
    for i in range(2):
        _png(root / "test" / "normal" / f"{i}.png")
    for i in range(2):
        _png(root / "test" / "bad" / f"{i}.png", defect=True)
        _png(root / "masks" / f"{i}.png")
    return root


def _btad_root(tmp_path: Path, products=("01",)) -> Path:
    root = tmp_path / "btad"
    for product in products:
        for i in range(6):
            _png(root / product / "train" / "ok" / f"{i:03d}.png")
        for i in range(2):
            _png(root / product / "test" / "ok" / f"{i:03d}.png")
            _png(root / product / "test" / "ko" / f"{i:03d}.png", defect=True)
            _png(root / product / "ground_truth" / "ko" / f"{i:03d}.png")
    return root


# ---- holes ------------------------------------------------------------------------------------------

def test_a_defect_name_holding_a_nul_byte_is_one_line_naming_the_key(tmp_path):
    """HOLE (lost-run, raw error). ``data/folder.py::FolderDataset._mask_for`` builds
    ``mask_dir / <defect name>`` and ``find_mask`` calls ``is_file()`` on it, catching OSError only: a
    defect name (a key of the ``dataset.abnormal_dirs`` mapping, from a received preset) that holds a NUL
    byte raises ``ValueError: embedded null byte`` and the run fails with ``error: job [...]: ValueError:
    embedded null byte`` naming neither the key nor a file. Reproducer: a preset
    ``dataset: {normal_dir: train/normal, abnormal_dirs: {"a\\0b": test/bad}, mask_dir: masks}`` with
    ``dataset=folder``. (A NUL in the folder *value* is already named: ``dataset.abnormal_dirs.ab ...
    does not exist``.) Expected: rc != 0 and one line naming ``dataset.abnormal_dirs``."""
    root = _folder_root(tmp_path)
    run = tmp_path / "run"
    body = ('dataset:\n  normal_dir: train/normal\n  abnormal_dirs: {"a\\0b": test/bad}\n'
            '  mask_dir: masks\n')
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.resize=32", "model=padim",
                    f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}", *global_preset(tmp_path, "nul", body)],
                   timeout=120)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode != 0
    assert "abnormal_dirs" in last and "ValueError" not in last, proc.stderr[-800:]
    assert run_status(run)["status"] == "failed"


# ---- attacks that held ----------------------------------------------------------------------------

def test_held_crossfit_on_two_train_images_completes_and_one_is_refused_by_name(tmp_path):
    """HELD. ``recipe.calibration=crossfit`` with ``dataset.limit_train=2`` (and 10**20 folds)
    completes; with 1 image the run fails with one line, status failed (never left running)."""
    root = _btad_root(tmp_path)
    base = ["dataset=btad", f"dataset.root={root}", "dataset.resize=32", "model=padim",
            f"cache.dir={tmp_path / 'cache'}", "recipe.calibration=crossfit"]
    ok = run_cli([*base, "dataset.limit_train=2", "recipe.calibration_folds=99999999999999999999",
                  f"hydra.run.dir={tmp_path / 'a'}"], timeout=120)
    assert ok.returncode == 0, ok.stderr[-800:]
    assert run_status(tmp_path / "a")["status"] == "completed"
    one = run_cli([*base, "dataset.limit_train=1", f"hydra.run.dir={tmp_path / 'b'}"], timeout=120)
    assert one.returncode != 0 and "Traceback" not in one.stderr
    assert run_status(tmp_path / "b")["status"] == "failed"


def test_held_infer_on_a_category_that_failed_in_training_is_named(tmp_path):
    """HELD. A BTAD run whose product 02 fails (an unreadable test image) keeps 01's results; infer
    with ``category=02`` says it failed in training, in one line."""
    root = _btad_root(tmp_path, ("01", "02"))
    (root / "02" / "test" / "ok" / "000.png").write_bytes(b"garbage")
    run = tmp_path / "run"
    proc = run_cli(["dataset=btad", f"dataset.root={root}", "dataset.resize=32", "model=padim",
                    f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"], timeout=120)
    assert proc.returncode != 0
    assert (run / "categories" / "01").is_dir()
    inf = run_cli([f"run_dir={run}", f"input={root / '01' / 'test' / 'ko'}", "category=02"],
                  module="pyimgano_hydra.infer", timeout=120)
    last = inf.stderr.strip().splitlines()[-1]
    assert inf.returncode != 0 and "02" in last and "failed" in last, inf.stderr[-800:]


def test_held_a_category_name_of_dots_or_an_absolute_path_stays_in_the_run_dir(tmp_path):
    """HELD. ``dataset.name`` from a received preset set to ``../../esc`` or an absolute path: the
    category's files land in ``categories/<sanitised name>-<hash>`` inside the run dir, nothing outside."""
    root = _folder_root(tmp_path)
    for i, name in enumerate(("../../esc", str(tmp_path / "absname"))):
        run = tmp_path / "runs" / f"r{i}"
        body = f'dataset:\n  normal_dir: train/normal\n  abnormal_dirs: {{bad: test/bad}}\n  name: "{name}"\n'
        proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.resize=32", "model=padim",
                        f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
                        *global_preset(tmp_path, f"n{i}", body)], timeout=120)
        assert proc.returncode == 0, proc.stderr[-800:]
        assert len(list((run / "categories").iterdir())) == 1
    assert not (tmp_path / "esc").exists() and not (tmp_path / "absname").exists()
