"""Pass W2 (lab side): sweeps from handed-over presets, out-of-range config values, dataset
layouts, reports and the api; variants not in the earlier passes."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import TINY, run_cli, start_cli


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _watch(proc, seconds: float, max_mb: float) -> tuple[float, bool]:
    """Peak RSS (MB) of ``proc`` and whether it ended by itself within ``seconds`` (killed past
    ``max_mb`` or the time)."""
    peak, end = 0.0, time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        peak = max(peak, _rss_mb(proc.pid))
        if peak > max_mb:
            break
        time.sleep(0.1)
    ended = proc.poll() is not None
    if not ended:
        proc.kill()
    proc.wait()
    return peak, ended


def test_a_handed_over_preset_sweeping_three_keys_never_materialises_its_billion_jobs(tmp_path):
    """A 150-byte experiment preset (a colleague's config folder, not a run dir) with
    ``hydra.sweeper.params`` of three ``range(0,1000)`` keys: before any job, the sweep-subdir probe
    (``job_dirs._product_jobs``) builds ``list(itertools.product(...))`` of all 10**9 jobs and only
    then keeps the first 2001: 3.8 GB resident in 20 s and still growing (the sweeper itself does the
    same in ``compose.job_overrides``). A sweep of more jobs than can be listed should be refused in one
    line naming hydra.sweeper.params (or the job count) before it eats the machine."""
    exp = tmp_path / "cfg" / "experiment"
    exp.mkdir(parents=True)
    (exp / "big.yaml").write_text("# @package _global_\nhydra:\n  sweeper:\n    params:\n"
                                  "      seed: range(0,1000)\n      dataset.seed: range(0,1000)\n"
                                  "      tag: range(0,1000)\n")
    proc = start_cli(["--multirun", "--config-dir", str(tmp_path / "cfg"), "experiment=big", *TINY,
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    peak, ended = _watch(proc, 20, 1500)
    assert peak < 1500, f"{peak:.0f} MB resident before any job"
    assert ended, "still running after 20 s without a job"
    err = proc.stderr.read()
    assert proc.returncode != 0 and "Traceback" not in err, err[-1500:]


def test_an_optuna_sweep_over_a_wide_integer_range_starts_without_listing_every_value(tmp_path):
    """``hydra/sweeper=optuna_patchcore 'model.num_neighbors=range(1,1000000000)'``: an integer search
    space Optuna samples at no cost (an IntDistribution). Before the first trial the output-subdir
    check (``claim._check_output_subdir`` -> ``job_dirs.swept_values``) lists every value of every
    swept key as a string: 3.7 GB resident in 20 s and growing, no trial started."""
    pytest.importorskip("optuna")
    sweep = tmp_path / "sweep"
    proc = start_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1", *TINY,
                      "model.num_neighbors=range(1,1000000000)", f"hydra.sweep.dir={sweep}"])
    peak, ended = _watch(proc, 25, 1500)
    assert peak < 1500, f"{peak:.0f} MB resident before the first trial"
    started = sweep.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in sweep.iterdir())
    assert ended or started, "no trial started within 25 s"


def _png_folder(folder: Path, n: int, bright: bool, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)
        if bright:
            arr[20:30, 20:30] = 255
        Image.fromarray(arr).save(folder / f"{seed}_{i:03d}.png")


def test_two_abnormal_dirs_with_the_same_folder_name_never_drop_one_silently(tmp_path):
    """``dataset.abnormal_dirs=[lot1/bad,lot2/bad]`` (a list, as the docs allow): each defect type is
    named by the folder's last part, so both are 'bad' and the dict keeps only lot2/bad. lot1's 3
    defect images are never scored: the run completes with test_anomalous=4 instead of 7, no note.
    Either both folders are scored or the run is refused in one line naming dataset.abnormal_dirs."""
    root = tmp_path / "data"
    _png_folder(root / "normal", 12, False, 0)
    _png_folder(root / "lot1" / "bad", 3, True, 1)
    _png_folder(root / "lot2" / "bad", 4, True, 2)
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.normal_dir=normal",
                    "dataset.abnormal_dirs=[lot1/bad,lot2/bad]", "dataset.resize=64", "model=padim",
                    f"hydra.run.dir={run_dir}"], timeout=300)
    if proc.returncode != 0:
        assert "dataset.abnormal_dirs" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    counts = json.loads((run_dir / "report.json").read_text())["categories"]["custom"]["counts"]
    assert counts["test_anomalous"] == 7, counts


def test_one_image_listed_both_normal_and_anomalous_is_named_not_scored_twice(tmp_path):
    """A preset whose ``dataset.abnormal_dirs`` names the normal folder too ({bad: lot/bad, also:
    normal}, with normal_test_dir=normal): each normal image is in the train split, the normal test
    split and the anomalous test split at once. The run completes (test 28 = 12 normal + 16
    anomalous), AUROC computed against contradictory labels, no note. Expected: refused in one line
    naming dataset.abnormal_dirs (or a note that names the overlap). (normal_test_dir=normal is
    refused on its own now: pass X2.)"""
    root = tmp_path / "data"
    _png_folder(root / "normal", 12, False, 0)
    _png_folder(root / "lot" / "bad", 4, True, 2)
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.normal_dir=normal",
                    "dataset.abnormal_dirs={bad: lot/bad, also: normal}",
                    "dataset.resize=64", "model=padim", f"hydra.run.dir={run_dir}"], timeout=300)
    if proc.returncode != 0:
        assert "dataset.abnormal_dirs" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    notes = json.loads((run_dir / "report.json").read_text())["categories"]["custom"]["notes"]
    assert any("abnormal_dirs" in n or "both" in n for n in notes), notes


def _simple_category(root: Path, seed: int, defect: str = "scratch") -> None:
    _png_folder(root / "train" / "normal", 10, False, seed)
    _png_folder(root / "test" / "normal", 3, False, seed + 100)
    _png_folder(root / "test" / defect, 3, True, seed + 200)


def test_a_defect_folder_named_like_mathtext_never_fails_the_run(tmp_path):
    """As below with the defect-type folder ``test/$\\bad$`` of a plain category: the run is recorded
    failed ('ParseFatalException: Unknown symbol: \\bad')."""
    root = tmp_path / "data"
    _simple_category(root / "plain", 0, defect="$\\bad$")
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.resize=64", "model=padim",
                    f"hydra.run.dir={run_dir}"], timeout=300)
    status = json.loads((run_dir / "status.json").read_text())
    assert proc.returncode == 0 and status["status"] == "completed", (status, proc.stderr[-1500:])


def test_a_category_folder_named_like_mathtext_never_fails_the_run(tmp_path):
    """A received dataset (simple folder layout) whose category folder is named ``$\\nosuch$`` beside a
    plain one: both are fitted and scored, then matplotlib parses the name in the score histogram's
    title as mathtext (``Unknown symbol: \\nosuch``) and the whole run is recorded failed, its error
    '\\nosuch' naming neither the folder nor the plot; the plain category's results are lost too."""
    root = tmp_path / "data"
    _simple_category(root / "plain", 0)
    _simple_category(root / "$\\nosuch$", 1)
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.resize=64", "model=padim",
                    f"hydra.run.dir={run_dir}"], timeout=300)
    status = json.loads((run_dir / "status.json").read_text())
    assert proc.returncode == 0 and status["status"] == "completed", (status, proc.stderr[-1500:])
    assert set(json.loads((run_dir / "report.json").read_text())["categories"]) == {"plain", "$\\nosuch$"}


def test_a_swept_value_like_mathtext_never_leaves_the_leaderboard_chart_stale(tmp_path):
    """``--multirun tag=a,'$\\nosuch$'``: both jobs complete, then the chart's tick label is parsed
    as mathtext, the board's last write stops at leaderboard.png ('could not write the leaderboard
    in <sweep>: ValueError: \\nosuch') and leaderboard.png is left from after job 0 (job 1 unscored)."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", *TINY, f"hydra.sweep.dir={sweep}", "tag=a,'$\\nosuch$'"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    out = proc.stdout + proc.stderr
    assert "could not write the leaderboard" not in out, out[-1500:]
    assert (sweep / "leaderboard.png").stat().st_mtime_ns >= (sweep / "leaderboard.json").stat().st_mtime_ns


def test_training_on_a_received_dataset_never_echoes_escapes_from_a_category_folder_name(tmp_path):
    """infer and export print a stored category name with its control characters escaped
    (pass G); the training app prints a received dataset's category folder name raw in every
    progress line: ``ev\\x1b[31mil\\x1b]0;pwn\\x07`` recolours the terminal and retitles it (9 ESC
    and 9 BEL bytes on the console for one small category)."""
    root = tmp_path / "data"
    _simple_category(root / "ev\x1b[31mil\x1b]0;pwn\x07", 0)
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.resize=64", "model=padim",
                    f"hydra.run.dir={run_dir}"], timeout=300)
    out = proc.stdout + proc.stderr
    assert "\x1b" not in out and "\x07" not in out, out[-800:]


@pytest.mark.parametrize("override", ["model.coreset_ratio=interval(0.3,0.01)",
                                      "model.coreset_ratio=tag(log,interval(0,0.3))"])
def test_a_bad_optuna_search_interval_is_one_line_naming_its_key(tmp_path, override):
    """An Optuna search space with its bounds reversed, or a log interval from 0 (what a preset's
    ``hydra.sweeper.params`` may hold): 'error: ValueError: The `low` value must be smaller than or
    equal to the `high` value (low=0.3, high=0.01).' names no key; with several params the user
    cannot tell which one."""
    pytest.importorskip("optuna")
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1", *TINY, override,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and "model.coreset_ratio" in lines[0], proc.stderr[-1500:]


@pytest.mark.parametrize("folder", ["Good", "Normal"])
def test_a_capitalised_normal_test_folder_is_never_scored_as_a_defect_type(tmp_path, folder):
    """Pass V2 made the simple layout's ``test/good`` normal; ``test/Good`` or ``test/Normal`` (a
    dataset prepared on a case-insensitive disk, where it opens as test/good) is still a defect type:
    its normal images count as anomalous (test_anomalous 6 instead of 3), image AUROC 0.75 against
    wrong labels, no note. Either they count as normal or the run says, naming the folder, how it
    was taken."""
    root = tmp_path / "data"
    _png_folder(root / "plain" / "train" / "normal", 10, False, 0)
    _png_folder(root / "plain" / "test" / folder, 3, False, 100)
    _png_folder(root / "plain" / "test" / "scratch", 3, True, 200)
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=folder", f"dataset.root={root}", "dataset.resize=64", "model=padim",
                    f"hydra.run.dir={run_dir}"], timeout=300)
    if proc.returncode != 0:
        assert f"test/{folder}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        return
    cat = json.loads((run_dir / "report.json").read_text())["categories"]["plain"]
    assert cat["counts"]["test_normal"] == 3 or any(folder in n for n in cat["notes"]), cat["counts"]


def test_a_visa_split_csv_label_spelled_anomalous_is_never_read_as_normal(tmp_path):
    """VisA's split CSV labels rows normal/anomaly; a handed-over CSV spelling the label
    ``anomalous`` (or defect, NG, ko) has every such row taken as normal: the run completes with
    test_anomalous=0 (4 defect images scored as normal test images), every metric '–', and no note
    naming the unknown label. Either they count as anomalous or the run is refused in one line
    naming the CSV and the label."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    rows = ["object,split,label,image,mask"]
    rng = np.random.default_rng(0)
    for kind, n in (("Normal", 14), ("Anomaly", 4)):
        (root / "pcb" / kind).mkdir(parents=True)
        for i in range(n):
            arr = (rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)
            if kind == "Anomaly":
                arr[20:30, 20:30] = 255
            rel = f"pcb/{kind}/{i:03d}.png"
            Image.fromarray(arr).save(root / rel)
            split = "train" if kind == "Normal" and i < 10 else "test"
            rows.append(f"pcb,{split},{'normal' if kind == 'Normal' else 'anomalous'},{rel},")
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    run_dir = tmp_path / "run"
    proc = run_cli(["dataset=visa", f"dataset.root={root}", "dataset.resize=64", "model=padim",
                    f"hydra.run.dir={run_dir}"], timeout=300)
    if proc.returncode != 0:
        assert "1cls.csv" in proc.stderr and "anomalous" in proc.stderr and "Traceback" not in proc.stderr, \
            proc.stderr[-1500:]
        return
    counts = json.loads((run_dir / "report.json").read_text())["categories"]["pcb"]["counts"]
    assert counts["test_anomalous"] == 4, counts


@pytest.mark.parametrize("override,key", [("~model", "model"), ("~recipe", "recipe"), ("model=null", "model"),
                                          ("dataset=null", "dataset")])
def test_a_deleted_config_group_is_one_line_naming_it(tmp_path, override, key):
    """``~model`` (or a preset deleting its group): the run dir is claimed, then the job fails with
    'TypeError: argument of type 'NoneType' is not iterable' ('~recipe': AttributeError 'NoneType'
    object has no attribute ...), naming no key; the run dir is left failed. ``model=null``: Hydra's
    'Config group override must be a string or a list. Got NoneType' named no group."""
    run_dir = tmp_path / "run"
    plain = [a for a in TINY if not a.startswith("model.")]
    proc = run_cli([*plain, override, f"hydra.run.dir={run_dir}"], timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and "NoneType" not in lines[0] and key in lines[0].split("]:")[-1], proc.stderr[-800:]


# ---- attacks that held ---------------------------------------------------------------------------


def test_held_defect_names_spelled_as_paths_in_a_preset_write_nothing_outside_the_run(tmp_path):
    """A preset naming its ``dataset.abnormal_dirs`` defect types ``../../../<dir>/x`` and an absolute
    path, with overlays and saved maps: every file lands under the run dir."""
    outside = tmp_path / "outside"
    outside.mkdir()
    exp = tmp_path / "cfg" / "experiment"
    exp.mkdir(parents=True)
    up = "../" * (len(tmp_path.parts) + 4)
    (exp / "evil.yaml").write_text("# @package _global_\ndataset:\n  abnormal_dirs:\n"
                                   f"    \"{up}{str(outside).lstrip('/')}/x\": lot1/bad\n"
                                   f"    \"{outside}/abs\": lot2/bad\n")
    root = tmp_path / "data"
    _png_folder(root / "normal", 12, False, 0)
    _png_folder(root / "lot1" / "bad", 3, True, 1)
    _png_folder(root / "lot2" / "bad", 3, True, 2)
    run_dir = tmp_path / "run"
    proc = run_cli(["--config-dir", str(tmp_path / "cfg"), "dataset=folder", "experiment=evil",
                    f"dataset.root={root}", "dataset.normal_dir=normal", "dataset.resize=64", "model=padim",
                    "postprocess.overlays_top_n=4", "postprocess.save_maps=true", f"hydra.run.dir={run_dir}"],
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert list(outside.rglob("*")) == []


def test_held_a_joblib_sweep_on_threads_keeps_each_jobs_record(tmp_path):
    """``hydra/launcher=joblib hydra.launcher.backend=threading``: two jobs in one process at once
    (one HydraConfig, one signal table); each job dir keeps its own overrides, tag and status."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    "hydra.launcher.backend=threading", f"hydra.sweep.dir={sweep}", "tag=a,b"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    for num, tag in ((0, "a"), (1, "b")):
        job = sweep / f"{num}_{tag}"
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        assert json.loads((job / "report.json").read_text())["tag"] == tag
        assert f"tag={tag}" in (job / ".hydra" / "overrides.yaml").read_text()
