"""Attacker pass Z17 (#16): lost / misrecorded runs: a dataset image replaced between the listing and
the test, control characters / NUL / long values in config keys that become paths or names
(``dataset.root``, ``hydra.job.name``, export's ``category=``), MTD odd mask names, a run's parent
swapped for a link, export while infer reads the run."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO, _cli_env, global_preset, run_cli, run_status


def _png(path: Path, defect: bool = False, size=(32, 32), mask: bool = False) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if mask:
        a = np.zeros(size, "uint8")
        a[4:8, 4:8] = 255
    else:
        rng = np.random.default_rng(len(str(path)))
        a = (rng.random((*size, 3)) * 40 + 100).astype("uint8")
        if defect:
            a[4:8, 4:8] = 255
    Image.fromarray(a).save(path)


def _mvtec_root(tmp_path: Path) -> Path:
    root = tmp_path / "mv"
    cat = root / "weave"
    for i in range(8):
        _png(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        _png(cat / "test" / "good" / f"{i:03d}.png")
    for i in range(2):
        _png(cat / "test" / "crack" / f"{i:03d}.png", defect=True)
        _png(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask=True)
    return root


def _mtd_root(tmp_path: Path) -> Path:
    root = tmp_path / "mtd"
    for i in range(10):
        _png(root / "MT_Free" / "Imgs" / f"f{i}.jpg")
    for d in ("Blowhole", "Break", "Crack", "Fray", "Uneven"):
        for i in range(2):
            _png(root / f"MT_{d}" / "Imgs" / f"{d}{i}.jpg", defect=True)
            _png(root / f"MT_{d}" / "Imgs" / f"{d}{i}.png", mask=True)
    return root


def _last(proc) -> str:
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


# ---- holes ------------------------------------------------------------------------------------------

def test_a_test_image_replaced_by_another_size_after_the_listing_is_not_scored_against_the_old_mask(tmp_path):
    """HOLE (wrong-result). ``data/base.py::_checked`` compares each test image's size with its mask's
    from the file headers when the category is listed; the image itself is decoded later, for the test.
    An image replaced in between (a dataset folder being synced / rewritten while the run trains) by one
    of another size is scored as it is now, and its pixel metrics are computed against the mask of the
    old image, resized: the run completes (rc 0, ``completed``) with metrics nobody can trust, where the
    same files on disk before the run are refused in one line (``mask is 32x32 but its image ... is
    96x40``). Reproducer: dataset=mvtec, model=padim, dataset.resize=32; replace
    ``weave/test/crack/000.png`` by a 96x40 PNG once the console shows ``load train``. Expected: the
    size is checked on the decoded image too: rc != 0 naming the image or its mask (or the image
    skipped with on_bad_image=skip), never a completed run scored against the wrong mask."""
    from PIL import Image

    root = _mvtec_root(tmp_path)
    run = tmp_path / "run"
    target = root / "weave" / "test" / "crack" / "000.png"
    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", "dataset=mvtec", f"dataset.root={root}",
                             "dataset.category=weave", "dataset.resize=32", "model=padim",
                             f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
                            cwd=REPO, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, swapped = [], False
    for line in proc.stdout:
        lines.append(line)
        if not swapped and "load train" in line:
            tmp = target.with_name(".new.png")
            Image.open(target).convert("RGB").resize((96, 40)).save(tmp)
            os.replace(tmp, target)
            swapped = True
    proc.wait(timeout=120)
    assert swapped, "".join(lines[-20:])
    last = lines[-1].strip() if lines else ""
    assert proc.returncode != 0 and ("000.png" in last or "000_mask.png" in last), \
        f"rc={proc.returncode} status={run_status(run)['status']}: {''.join(lines[-4:])}"
    assert run_status(run)["status"] == "failed"


def test_a_dataset_root_with_a_terminal_escape_from_a_preset_is_shown_escaped(tmp_path):
    """HOLE (cosmetic, terminal injection). A received preset setting ``dataset.root`` (or
    ``dataset.mask_dir``, ``dataset.normal_test_dir``...) to a path holding an escape sequence gets
    ``error: dataset.root /x/m\\x1b]0;pwn\\x07td does not exist ...`` printed with the raw ESC / BEL
    (the terminal retitles itself, ``\\x1b[2J`` clears it); status.json and the log escape it, and the
    console escapes category and file names elsewhere (passes W2, Y5). Same for the raw NUL of
    ``dataset.root: "/tmp/a\\0b"``. Expected: the line shows them escaped, as ``console_line`` does."""
    run = tmp_path / "run"
    bad = f"{tmp_path}/m\\x1b]0;pwn\\x07td"
    proc = run_cli(["dataset=mtd", "dataset.resize=32", "model=padim", f"cache.dir={tmp_path / 'cache'}",
                    f"hydra.run.dir={run}", *global_preset(tmp_path, "esc", f'dataset: {{root: "{bad}"}}\n')],
                   timeout=120)
    assert proc.returncode != 0
    assert "dataset.root" in _last(proc)
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr, repr(_last(proc)[:300])


def test_export_category_with_a_terminal_escape_from_a_preset_is_shown_escaped(tmp_path):
    """HOLE (cosmetic, terminal injection). ``runs/load.py`` refuses an unknown ``category=`` with
    ``category={name} is not in this run``, the name printed raw: a preset (``hydra.searchpath`` of a
    received config folder) with ``category: "wea\\x1b[2Jve"`` clears the operator's terminal when
    ``python -m pyimgano_hydra.export`` (or ``.infer``) refuses it; a NUL is printed raw too.
    Expected: the name shown escaped (``console_line``)."""
    run = tmp_path / "run"
    proc = run_cli(["dataset=mvtec", f"dataset.root={_mvtec_root(tmp_path)}", "dataset.resize=32", "model=padim",
                    f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-600:]
    proc = run_cli([f"run_dir={run}", *global_preset(tmp_path, "esc", 'category: "wea\\x1b[2Jve"\n')],
                   module="pyimgano_hydra.export", timeout=120)
    assert proc.returncode != 0
    assert "category" in _last(proc)
    assert "\x1b" not in proc.stderr, repr(_last(proc)[:300])


def test_a_job_name_too_long_for_a_file_name_is_one_line_naming_hydra_job_name(tmp_path):
    """HOLE (cosmetic, error names the wrong key). ``hydra.job.name`` names ``<run dir>/<name>.log``;
    a 300-character name (a received preset) fails with ``error: hydra.job_logging: ValueError: Unable
    to configure handler 'file'; fix that logging config``: the key it names is not the one set and the
    cause (file name too long) is lost. Likewise ``hydra.job.name: "a\\0b"`` is refused as
    ``hydra.run.dir: cannot be checked (embedded null byte)``. Expected: rc != 0 and one line naming
    ``hydra.job.name``."""
    run = tmp_path / "run"
    proc = run_cli(["dataset=mtd", f"dataset.root={_mtd_root(tmp_path)}", "dataset.resize=32", "model=padim",
                    f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
                    *global_preset(tmp_path, "long", "hydra: {job: {name: " + "j" * 300 + "}}\n")], timeout=120)
    assert proc.returncode != 0
    assert "hydra.job.name" in _last(proc), _last(proc)[:300]


def test_a_job_name_holding_a_nul_byte_is_refused_naming_hydra_job_name(tmp_path):
    """HOLE (cosmetic, error names the wrong key): see above; ``hydra.job.name: "a\\0b"`` from a preset
    is refused as ``hydra.run.dir: cannot be checked (embedded null byte); fix the command line``."""
    run = tmp_path / "run"
    proc = run_cli(["dataset=mtd", f"dataset.root={_mtd_root(tmp_path)}", "dataset.resize=32", "model=padim",
                    f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
                    *global_preset(tmp_path, "nul", 'hydra: {job: {name: "a\\0b"}}\n')], timeout=120)
    assert proc.returncode != 0
    assert "hydra.job.name" in _last(proc), _last(proc)[:300]


# ---- held -------------------------------------------------------------------------------------------

def test_held_an_mtd_mask_that_is_a_folder_or_a_device_link_is_refused_naming_it(tmp_path):
    """HELD: MTD masks beside the images: ``Crack0.png`` a folder -> the image ``has no ground-truth
    mask``; a link to /dev/zero -> ``not a regular file``; both one line, the run ``failed``."""
    root = _mtd_root(tmp_path)
    mask = root / "MT_Crack" / "Imgs" / "Crack0.png"
    mask.unlink()
    mask.symlink_to("/dev/zero")
    run = tmp_path / "run"
    proc = run_cli(["dataset=mtd", f"dataset.root={root}", "dataset.resize=32", "model=padim",
                    f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"], timeout=120)
    assert proc.returncode != 0 and "Crack0.png" in _last(proc), proc.stderr[-600:]
    assert run_status(run)["status"] == "failed"


def test_held_a_dataset_name_holding_a_nul_byte_gives_a_usable_run(tmp_path):
    """HELD: ``dataset.name: "m\\0td"`` (mtd/folder layouts) completes with a sanitized category folder
    (``categories/m_td-<hash>``) that infer and export both find by the recorded name."""
    run = tmp_path / "run"
    root = _mtd_root(tmp_path)
    proc = run_cli(["dataset=mtd", f"dataset.root={root}", "dataset.resize=32", "model=padim",
                    f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
                    *global_preset(tmp_path, "nul", 'dataset: {name: "m\\0td"}\n')], timeout=120)
    assert proc.returncode == 0, proc.stderr[-600:]
    assert all("\0" not in p.name for p in (run / "categories").iterdir())
    proc = run_cli([f"run_dir={run}", f"input={root / 'MT_Free' / 'Imgs' / 'f0.jpg'}",
                    f"hydra.run.dir={tmp_path / 'inf'}"], module="pyimgano_hydra.infer", timeout=120)
    assert proc.returncode == 0, proc.stderr[-600:]
    assert run_status(tmp_path / "inf")["status"] == "completed"
