"""Pass U: the sweep leaderboard given a good job dir beside a forged one (shapes not in pass T1:
a job dir that is a link, a hydra.yaml of the wrong shape, a forged sweep.json)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import _cli_env, copy_run


_BOARD = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from pyimgano_hydra.sweep.callbacks import LeaderboardCallback
LeaderboardCallback(lock_timeout_s=5).write(Path(sys.argv[1]), final=True)
"""


def _board(sweep):
    try:
        proc = subprocess.run([sys.executable, "-c", _BOARD, str(sweep)], env=_cli_env(), capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("writing the leaderboard hung for 60 s")
    return proc


# ---- job dir forgeries (job "1" beside a good job "0") ------------------------------------------

def _job_dir_link_outside(sweep, job):
    # job 1 is itself a link to a run dir outside the sweep: every file of it is read through the link
    import shutil

    other = sweep.parent / "elsewhere"
    shutil.move(str(job), str(other))
    os.symlink(other, job)


def _hydra_dir_link_outside(sweep, job):
    import shutil

    other = sweep.parent / "elsewhere_hydra"
    shutil.move(str(job / ".hydra"), str(other))
    os.symlink(other, job / ".hydra")


def _named_job_hydra_yaml_list(sweep, job):
    # a job dir whose name has no number: its number is read from hydra.yaml, here `hydra: [1]`
    (job / ".hydra" / "hydra.yaml").write_text("hydra: [1]\n")
    job.rename(sweep / "named")


def _named_job_hydra_job_string(sweep, job):
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job: x\n")
    job.rename(sweep / "named")


def _report_aggregate_n_huge(sweep, job):
    record = json.loads((job / "report.json").read_text())
    for value in record["aggregate"].values():
        if isinstance(value, dict):
            value["n"] = list(range(200_000))  # a count, carried unchecked into leaderboard.json
    (job / "report.json").write_text(json.dumps(record))


def _report_aggregate_mean_string(sweep, job):
    record = json.loads((job / "report.json").read_text())
    record["aggregate"] = {"image_auroc": {"mean": "1.0", "std": [], "n": {"x": 1}}}
    record["timings"] = ["fit_s", 1]
    (job / "report.json").write_text(json.dumps(record))


def _category_name_with_pipe(sweep, job):
    record = json.loads((job / "report.json").read_text())
    cats = record["categories"]
    entry = next(iter(cats.values()))
    cats["a|b\n| x"] = entry  # a second category: its name goes into the markdown header
    (job / "report.json").write_text(json.dumps(record))


def _overrides_non_utf8(sweep, job):
    (job / ".hydra" / "overrides.yaml").write_bytes(b"- model.tag=\xff\xfe\n")


JOB_FORGES = [_job_dir_link_outside, _hydra_dir_link_outside, _named_job_hydra_yaml_list,
              _named_job_hydra_job_string, _report_aggregate_n_huge, _report_aggregate_mean_string,
              _category_name_with_pipe, _overrides_non_utf8]


@pytest.mark.parametrize("forge", JOB_FORGES, ids=[f.__name__.lstrip("_") for f in JOB_FORGES])
def test_one_forged_job_dir_never_loses_the_board(trained, tmp_path, forge):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    copy_run(trained, sweep, "0")
    forge(sweep, copy_run(trained, sweep, "1"))
    proc = _board(sweep)
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    board_file = sweep / "leaderboard.json"
    assert board_file.is_file(), f"no leaderboard written (rc {proc.returncode}): {proc.stderr[-800:]}"
    assert board_file.stat().st_size < 200_000, f"leaderboard.json is {board_file.stat().st_size} bytes"
    board = json.loads(board_file.read_text())
    rows = {row["name"]: row for row in board["jobs"]}
    assert rows.get("0", {}).get("status") == "completed", rows.keys()
    if forge in (_job_dir_link_outside, _hydra_dir_link_outside):
        # claim 1: no run-dir file is read from outside through a link in it
        assert rows.get("1", {}).get("status") != "completed", rows.get("1")
    if forge is _report_aggregate_mean_string:
        assert rows["1"]["status"] != "completed" or rows["1"]["rank"] is None
    for name in ("leaderboard.csv", "leaderboard.md"):
        assert (sweep / name).is_file(), f"{name} not written: {proc.stderr[-800:]}"
    if forge is _category_name_with_pipe:
        md = (sweep / "leaderboard.md").read_text().splitlines()
        table = [line for line in md if line.startswith("|")]
        widths = {line.replace("\\|", "").count("|") for line in table}
        assert len(widths) == 1 and all(line.startswith("|") for line in md[md.index(table[0]):][:len(table)]), md


# ---- sweep.json forgeries ------------------------------------------------------------------------

SWEEP_FORGES = {
    "list": "[1, 2]",
    "varying_int": json.dumps({"varying": 5}),
    "varying_list_of_lists": json.dumps({"varying": [[1]]}),
    "planned_int": json.dumps({"planned": 5}),
    "planned_items_int": json.dumps({"planned": [1, 2, 3]}),
    "planned_items_dict": json.dumps({"planned": [{"a": 1}]}),
    "planned_huge": json.dumps({"planned": [["model.tag=x"]] * 20_000}),  # a plan of 20,000 jobs: charted within a minute
}


@pytest.mark.parametrize("text", list(SWEEP_FORGES.values()), ids=list(SWEEP_FORGES))
def test_a_forged_sweep_json_never_loses_the_board(trained, tmp_path, text):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    copy_run(trained, sweep, "0")
    (sweep / "sweep.json").write_text(text)
    proc = _board(sweep)
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    if proc.returncode != 0:
        assert "sweep.json" in proc.stderr, proc.stderr[-800:]
    else:
        assert (sweep / "leaderboard.json").is_file(), f"rc 0 and no board: {proc.stderr[-800:]}"
        board = json.loads((sweep / "leaderboard.json").read_text())
        assert {r["name"]: r for r in board["jobs"]}.get("0", {}).get("status") == "completed"
        assert (sweep / "leaderboard.json").stat().st_size < 20_000_000  # a row per planned job, no more


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_sweep_json_fifo_or_device_never_hangs_the_board(trained, tmp_path, kind):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    copy_run(trained, sweep, "0")
    if kind == "fifo":
        os.mkfifo(sweep / "sweep.json")
    else:
        os.symlink("/dev/zero", sweep / "sweep.json")
    proc = _board(sweep)
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert (sweep / "leaderboard.json").is_file() or "sweep.json" in proc.stderr, proc.stderr[-800:]


# ---- masks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [False, True], ids=["rgb48", "rgba64"])
def test_a_16_bit_colour_label_mask_never_reads_as_empty(tmp_path, alpha):
    """Pass T2 made gray 16-bit label masks (values 1..128) count at their own bit depth; a 16-bit
    colour PNG mask of value 1 (cv2.imwrite of a uint16 HxWx3 label image) still reads as all normal:
    Pillow keeps the high byte, so pixel metrics are computed against an empty mask, rc 0."""
    import cv2
    import numpy as np

    from pyimgano_hydra.data.images import load_mask
    from pyimgano_hydra.errors import UserError

    arr = np.zeros((16, 16, 4 if alpha else 3), np.uint16)
    arr[4:8, 4:8, :3] = 1
    if alpha:
        arr[..., 3] = 65535
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), arr)
    try:
        mask = load_mask(path)
    except UserError as exc:  # refusing such a file, naming it, is fine too
        assert "m.png" in str(exc)
        return
    assert int(mask.sum()) == 16, f"{int(mask.sum())} defect pixels, 16 in the file"


def test_a_npy_float_mask_with_nan_is_refused_like_a_tiff_one(tmp_path):
    """A float TIFF mask holding NaN is refused; the same values in a .npy mask count NaN as defect."""
    import numpy as np

    from pyimgano_hydra.data.images import load_mask
    from pyimgano_hydra.errors import UserError

    arr = np.zeros((16, 16), np.float32)
    arr[0, 0] = np.nan
    arr[4:8, 4:8] = 1.0
    np.save(tmp_path / "m.npy", arr)
    with pytest.raises(UserError, match="m.npy"):
        load_mask(tmp_path / "m.npy")


@pytest.mark.parametrize("ext", [".png", None], ids=["ext_png", "ext_null"])
def test_masks_beside_images_with_an_empty_suffix_never_scores_a_mask_as_an_image(tmp_path, ext):
    """``dataset.mask_suffix=''``: ``a.png`` beside ``a.jpg`` is both a test image of its own and
    a.jpg's mask (and a.jpg is a.png's mask), with no error: the test set and masks are silently wrong."""
    import numpy as np
    from PIL import Image

    from pyimgano_hydra.data.folder import FolderDataset
    from pyimgano_hydra.errors import UserError

    base = tmp_path / "root" / "cat"
    (base / "train" / "normal").mkdir(parents=True)
    (base / "test" / "crack").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(base / "train" / "normal" / f"{i}.png")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(base / "test" / "crack" / "a.jpg")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(base / "test" / "crack" / "a.png")
    try:
        ds = FolderDataset(str(tmp_path / "root"), category="cat", masks_beside_images=True, mask_suffix="",
                           mask_ext=ext)
        split = ds.collect("cat")
    except UserError:
        return  # refusing an empty mask_suffix is the fix
    test = {os.path.basename(s.path): s.mask_path and os.path.basename(s.mask_path) for s in split.test}
    assert test == {"a.jpg": "a.png"}, test
