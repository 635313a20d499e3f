"""Pass X6 (lab mishaps): a dataset folder that changes while the run reads it, a category=all run
with one broken category, a full disk, two infers into one dir."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli

TESTS = Path(__file__).resolve().parent

# A detector that changes the dataset folder from inside fit: after the dataset was listed (and its
# files checked), before the test split is loaded: what a lab colleague tidying the folder does.
MUTATING = '''
import os
from pathlib import Path

from fakes import PixelZScore


class Mutating(PixelZScore):
    def fit(self, images):
        for path in filter(None, os.environ.get("X6_DELETE", "").split(os.pathsep)):
            Path(path).unlink()
        for path in filter(None, os.environ.get("X6_JUNK", "").split(os.pathsep)):
            Path(path).write_bytes(b"not an image any more")
        return super().fit(images)
'''


def _folder_dataset(root: Path) -> Path:
    """train/normal (6), test/normal (3), test/scratch (3) 32x32 with masks in ground_truth/scratch."""
    rng = np.random.default_rng(0)
    for split, n in (("train/normal", 6), ("test/normal", 3), ("test/scratch", 3)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(100, 140, (32, 32, 3), dtype=np.uint8)
            if "scratch" in split:
                mask = np.zeros((32, 32), np.uint8)
                mask[5:15, 5:15] = 255
                image[mask > 0] = 255
                (root / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "ground_truth" / "scratch" / f"{i}_mask.png")
            Image.fromarray(image).save(root / split / f"{i}.png")
    return root


def _mutating_env(tmp_path: Path, **changes: list) -> tuple[dict, str]:
    code = tmp_path / "code"
    (code / "model").mkdir(parents=True)
    (code / "x6fakes.py").write_text(MUTATING)
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mutating.yaml").write_text("_target_: x6fakes.Mutating\neps: 1.0\n")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), str(code)])}
    for key, paths in changes.items():
        env[key] = os.pathsep.join(map(str, paths))
    return env, f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


@pytest.mark.parametrize("change", ["junk_test_image", "deleted_test_image", "deleted_mask"])
def test_a_file_that_goes_bad_mid_run_is_skipped_under_on_bad_image_skip(tmp_path, change):
    """With ``dataset.on_bad_image=skip`` a test image that is unreadable when the run starts is
    skipped and listed under skipped_images (the run completes). The same file going bad while the run
    reads the folder (replaced by junk, deleted, or its mask deleted, after the listing and before the
    test split loads) fails the whole run: rc 2, status failed, no result, and for the junk case the
    error even says "or set dataset.on_bad_image=skip", which is already set. One file changing under
    a skip run must be skipped and recorded as at listing time, not lose the run."""
    root = _folder_dataset(tmp_path / "data")
    target = {"junk_test_image": ("X6_JUNK", root / "test/scratch/1.png"),
              "deleted_test_image": ("X6_DELETE", root / "test/normal/1.png"),
              "deleted_mask": ("X6_DELETE", root / "ground_truth/scratch/1_mask.png")}[change]
    env, search = _mutating_env(tmp_path, **{target[0]: [target[1]]})
    out = tmp_path / "run"
    proc = run_cli([search, "model=mutating", "dataset=folder", f"dataset.root={root}", "dataset.resize=32",
                    "dataset.on_bad_image=skip", "postprocess.save_maps=true", "defects=default",
                    f"hydra.run.dir={out}"], env=env, timeout=300)
    assert not target[1].exists() or target[1].read_bytes().startswith(b"not an image")  # it did change
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    report = json.loads((out / "report.json").read_text())
    assert any(str(target[1].name) in s["path"] or target[1].name in s.get("reason", "")
               for s in report["skipped_images"]), report["skipped_images"]
    # the outputs on disk are those of the recorded images (a map written before its mask went bad stayed)
    records = [json.loads(line) for path in out.rglob("per_image.jsonl") for line in path.read_text().splitlines()]
    written = {str(p.relative_to(path.parent)) for path in out.rglob("per_image.jsonl")
               for p in path.parent.rglob("*") if p.is_file() and p.parent.name in ("maps", "masks")}
    recorded = {value for r in records for value in ((r.get("anomaly_map") or {}).get("path"),
                                                     (r.get("defects") or {}).get("mask")) if value}
    assert written == recorded and any(p.endswith('.npy') for p in recorded), (written, recorded)


def _mvtec(root: Path, category: str, n_train: int = 4) -> None:
    rng = np.random.default_rng(len(category))
    for split, n in (("train/good", n_train), ("test/good", 2), ("test/crack", 2)):
        (root / category / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(100, 140, (32, 32, 3), dtype=np.uint8)).save(
                root / category / split / f"{i:03d}.png")
    (root / category / "ground_truth" / "crack").mkdir(parents=True)
    for i in range(2):
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(root / category / "ground_truth" / "crack" / f"{i:03d}_mask.png")


@pytest.fixture(scope="module")
def one_broken_category(tmp_path_factory):
    """category=all over a, b, c where b has an empty train/good: the run and its record."""
    tmp = tmp_path_factory.mktemp("all")
    root = tmp / "data"
    for category, n_train in (("a", 4), ("b", 0), ("c", 4)):
        _mvtec(root, category, n_train)
    out = tmp / "run"
    proc = run_cli([f"hydra.searchpath=[file://{TESTS / 'conf'}]", "model=zscore", "dataset=mvtec",
                    f"dataset.root={root}", "dataset.resize=32", f"hydra.run.dir={out}"],
                   env={"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}, timeout=300)
    return proc, out


def test_a_failed_category_all_run_records_the_categories_it_completed(one_broken_category):
    """category=all, category b broken (empty train split): a completes and categories/a/report.json
    is written, then the run fails at b. The failed run's report.json holds no `categories` at all
    (a's metrics are missing from the run's record), and the failed dir can't be resumed (a rerun
    into it is refused: "already holds a run (failed)"): a's finished work is lost from the record.
    The run's report.json must list every category it completed."""
    proc, out = one_broken_category
    assert (out / "categories" / "a" / "report.json").is_file(), proc.stderr[-1500:]
    report = json.loads((out / "report.json").read_text())
    assert "a" in (report.get("categories") or {}), sorted(report)


def test_one_broken_category_never_stops_the_others_of_a_category_all_run(one_broken_category):
    """category=all over a, b (broken: empty train split), c: the run stops at b, c is never fitted
    or evaluated. One broken category must not lose the others: c runs and is recorded, the run ends
    failed (or completed with b named as failed) with b's error line."""
    proc, out = one_broken_category
    assert proc.returncode != 0
    assert "b" in proc.stderr.strip().splitlines()[-1]
    assert (out / "categories" / "c" / "report.json").is_file(), proc.stderr[-1500:]


def test_a_full_disk_during_infer_records_the_real_path_in_status(tmp_path, trained):
    """infer under a file-size limit (a full disk) fails writing its maps: the console line names
    <out>/maps/000000_0.npy, but status.json, the record, names '/proc/self/fd/N/maps/...' (the held
    folder's descriptor, meaningless once the process is gone). The record must name the real file."""
    run_dir = trained
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    script = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); "
              "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "sys.argv = ['infer', *sys.argv[1:]]; runpy.run_module('pyimgano_hydra.infer', run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-c", script, f"run_dir={run_dir}", f"input={images}", "save_maps=true",
                           f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed"
    assert "/proc/self/fd" not in status["error"], status["error"]
    assert str(out) in status["error"], status["error"]


# ---- attacks that held ----

def test_held_two_infers_into_one_output_dir_at_once_exactly_one_writes(tmp_path, trained):
    """Two infers started together into one hydra.run.dir: one completes, the other is refused in one
    line naming the dir; the predictions are the completed one's, whole."""
    run_dir = trained
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 50 * i, np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "same"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    procs = [subprocess.Popen([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}", f"input={images}",
                               f"hydra.run.dir={out}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(err for rc, err in results if rc != 0)
    assert "Traceback" not in refused and str(out) in refused.strip().splitlines()[-1]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("module", ["pyimgano_hydra", "pyimgano_hydra.infer", "pyimgano_hydra.export"])
def test_an_unresolvable_interpolation_in_hydra_run_dir_is_one_line_naming_the_key(tmp_path, module):
    """An output dir typed with a shell-style variable (``hydra.run.dir='/data/runs/${LINE}'``, no
    sweep) ends in a raw 40-line omegaconf traceback (InterpolationKeyError ... full_key:
    hydra.run.dir) from all three entry points; nothing is created. It must be one line naming
    hydra.run.dir. (Possibly the same root as the known swept-interpolation issue, but no --multirun.)"""
    args = {"pyimgano_hydra": ["dataset.category=weave"],
            "pyimgano_hydra.infer": [f"run_dir={tmp_path}", f"input={tmp_path}"],
            "pyimgano_hydra.export": [f"run_dir={tmp_path}"]}[module]
    proc = run_cli([*args, f"hydra.run.dir={tmp_path}/out_${{nope}}"], module=module, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert "hydra.run.dir" in proc.stderr.strip().splitlines()[-1], proc.stderr[-500:]


def test_an_unreadable_infer_image_is_never_told_to_set_a_training_key(tmp_path, trained):
    """infer on a folder with one junk .png: the image gets its error record and the rest are scored
    (held), but the warning and the record say "replace or remove the file, or set
    dataset.on_bad_image=skip", a training key infer neither has nor needs (it already skips).
    Cosmetic: the advice must fit the command that gave it."""
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(images / "good.png")
    (images / "junk.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = run_cli([f"run_dir={trained}", f"input={images}", f"hydra.run.dir={out}"], module="pyimgano_hydra.infer",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    error = next(r["error"] for r in records if "error" in r)
    assert "junk.png" in error
    assert "on_bad_image" not in error and "on_bad_image" not in proc.stderr, error


@pytest.mark.parametrize("name", ["we ird,dir", "o=2", "o'4", "o%5"])
def test_held_infer_into_an_output_dir_with_unusual_characters_completes(tmp_path, trained, name):
    """hydra.run.dir with a space, comma, '=', quote or '%' (quoted for Hydra's grammar): the infer
    completes and writes its record there, nowhere else."""
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(images / "a.png")
    out = tmp_path / "outs" / name
    quoted = '"' + str(out) + '"' if "'" in name else "'" + str(out) + "'"
    proc = run_cli([f"run_dir={trained}", f"input={images}", f"hydra.run.dir={quoted}"], module="pyimgano_hydra.infer",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert os.listdir(tmp_path / "outs") == [name]


def test_a_run_whose_every_test_image_is_skipped_says_no_test_image_was_evaluated(tmp_path):
    """Seen in pass X6: every test image unreadable under skip: the run completed with test=0 and null
    metrics, its only note "no ground-truth masks in the test split" (the masks exist)."""
    root = _folder_dataset(tmp_path / "data")
    for image in (root / "test").rglob("*.png"):
        image.write_bytes(b"not an image")
    out = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.resize=32", "model=padim",
                    "dataset.on_bad_image=skip", f"hydra.run.dir={out}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    category = json.loads((out / "report.json").read_text())["categories"]["custom"]
    assert category["counts"]["test"] == 0
    assert any("no test image was evaluated" in note for note in category["notes"]), category["notes"]
    assert not any("ground-truth masks" in note for note in category["notes"]), category["notes"]
