"""Seeing a run: the run log, stage progress, plots, report.html (real CLI and API runs)."""
import io
import json
import logging

import pytest

from conftest import TINY, run_cli
from pyimgano_hydra import progress

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One small run with overlays and defects, our DEBUG lines switched on."""
    out = tmp_path_factory.mktemp("observe") / "run"
    proc = run_cli([*TINY, "postprocess=inspect", "defects=default", "hydra.verbose=pyimgano_hydra",
                    f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_stage_bar_names_category_and_stage_and_logs_one_line(monkeypatch, caplog):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    caplog.set_level(logging.INFO, logger="pyimgano_hydra")
    with progress.category(2, 15, "brick"), progress.stage("features", total=80) as bar:
        for _ in range(5):
            bar.update(16)
            with progress.stage("inner chunk", total=16) as inner:  # nested: no second bar
                inner.update(16)
    shown = terminal.getvalue()
    assert "[category 2/15 brick] features" in shown and "/80" in shown
    assert "inner chunk" not in shown
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("[category 2/15 brick] features 80/80 img in ") for line in lines), lines
    assert not any("inner chunk" in line for line in lines)


def test_stage_without_terminal_writes_no_bar(monkeypatch, caplog):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    caplog.set_level(logging.INFO, logger="pyimgano_hydra")
    with progress.stage("test", total=3) as bar:
        bar.update(3)
    assert pipe.getvalue() == ""
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["test 3/3 img"]


def test_cli_log_holds_console_lines_and_our_debug_only(cli_run):
    out, proc = cli_run
    log = (out / "pyimgano_hydra.log").read_text()
    assert not (out / "__main__.log").exists()
    # TINY: 12 train images, all in the kept model (refit calibration); 12 test images
    for expected in ("[category 1/1 weave] fit features 12/12 img in ", "[category 1/1 weave] test 12/12 img in ",
                     "image_auroc=", "img_AUROC", f"run dir: {out}"):
        assert expected in log, expected
    assert "[DEBUG] - image threshold" in log and "[DEBUG] - patchcore memory bank" in log  # hydra.verbose
    assert "[PIL" not in log and "[matplotlib" not in log
    assert "img_AUROC" in proc.stdout and f"run dir: {out}" in proc.stdout


def test_api_run_writes_the_log(tmp_path):
    from pyimgano_hydra.api import run

    out = tmp_path / "api"
    run([*TINY, "recipe.save_checkpoint=false"], output_dir=out)
    log = (out / "pyimgano_hydra.log").read_text()
    assert "[category 1/1 weave] test 12/12 img" in log and f"run dir: {out}" in log
    assert not logging.getLogger("pyimgano_hydra").handlers  # detached after the run
    from omegaconf import OmegaConf

    assert OmegaConf.load(out / ".hydra" / "config.yaml").dataset.category == "weave"
    assert list(OmegaConf.load(out / ".hydra" / "overrides.yaml"))[-1] == "recipe.save_checkpoint=false"


def test_category_plots_are_written_and_referenced(cli_run):
    out, _ = cli_run
    report = json.loads((out / "report.json").read_text())
    weave = report["categories"]["weave"]
    assert weave["plots"] == ["categories/weave/plots/roc_pr.png", "categories/weave/plots/score_histogram.png",
                              "categories/weave/plots/defect_types.png"]
    assert len(weave["overlays"]) == 12 and weave["overlays"][0].startswith("categories/weave/overlays/top01_")
    import cv2

    for rel in weave["plots"] + weave["overlays"]:
        image = cv2.imread(str(out / rel))
        assert image is not None and image.shape[0] > 100, rel


_CHECK = """<script>window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  document.body.setAttribute('data-images', document.images.length);
  document.body.setAttribute('data-broken', bad.join(' ') || 'none');
});</script>"""


def _browser():
    import shutil

    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _load_in_browser(browser, page, *extra):
    import re
    import subprocess

    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--virtual-time-budget=10000", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    images = re.search(r'data-images="(\d+)"', proc.stdout)
    broken = re.search(r'data-broken="([^"]*)"', proc.stdout)
    return proc, (int(images.group(1)) if images else None), (broken.group(1) if broken else None)


def test_report_html_loads_every_image_in_a_real_browser(cli_run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium here (.ci/run installs it with apt-get where it can)")
    out, _ = cli_run
    page = (out / "report.html").read_text()
    assert "<table>" in page and "weave" in page and "image AUROC" in page and "defects:" in page  # config
    check = out / "check_report.html"  # same folder: the report's relative links resolve
    check.write_text(page.replace("</body>", _CHECK + "</body>"))
    proc, images, broken = _load_in_browser(browser, check, "--dump-dom")
    assert images == 3 + 6 and broken == "none", proc.stderr[-2000:]  # plots + top overlays
    broken_page = out / "check_broken.html"  # the check itself notices a missing image
    broken_page.write_text(page.replace("</body>", '<img src="missing.png">' + _CHECK + "</body>"))
    assert _load_in_browser(browser, broken_page, "--dump-dom")[2] == "missing.png"
    shot = tmp_path / "report.png"
    _load_in_browser(browser, out / "report.html", f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_sweep_chart_zooms_on_the_values_and_labels_jobs_key_value():
    from pyimgano_hydra.sweep.chart import zoomed_limits
    from pyimgano_hydra.sweep.leaderboard import job_label

    left, right = zoomed_limits([0.914, 0.971], [0.0, 0.0])
    assert 0.85 < left < 0.914 and 0.971 < right <= 1.0
    assert job_label({"job": 1, "varying": {"model": "padim", "tiling": "tile128"}, "overrides": []}) == \
        "#1 model=padim tiling=tile128"


def test_mlflow_callback_logs_one_run_per_sweep_job(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    store = (tmp_path / "mlruns").as_uri()
    proc = run_cli(["--multirun", *TINY, "recipe.save_checkpoint=false", "seed=0,1", "+callbacks=mlflow",
                    f"hydra.callbacks.mlflow.tracking_uri={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "; best: #" in proc.stdout + proc.stderr and "seed=" in (proc.stdout + proc.stderr).split("; best: #")[1]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the file store back
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["pyimgano_hydra"], output_format="list")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.data.params["model._target_"] for r in runs} == {"pyimgano_hydra.models.patchcore.PatchCore"}
    for run in runs:
        assert 0.5 <= run.data.metrics["weave/image_auroc"] <= 1.0 and "image_auroc" in run.data.metrics
        assert run.data.tags["status"] == "completed"
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert {"report.json", "report.html", "pyimgano_hydra.log"} <= names


def test_folder_dataset_with_absolute_dirs_needs_no_root(tmp_path):
    from pyimgano_hydra.data.folder import FolderDataset
    from pyimgano_hydra.errors import DataError

    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    absolute = FolderDataset(root=str(tmp_path / "missing"), normal_dir=str(tmp_path / "good"),
                             abnormal_dirs=[str(tmp_path / "bad")])
    assert absolute.categories() == ["custom"]
    relative = FolderDataset(root=str(tmp_path / "missing"), normal_dir="good", abnormal_dirs=["bad"])
    with pytest.raises(DataError, match="dataset.root"):
        relative.categories()


def test_threshold_note_when_f1_at_threshold_trails_the_best():
    from pyimgano_hydra.recipes.calibration import threshold_notes

    conservative = {"image_f1": 0.55, "image_f1_max": 0.87, "image_fpr": 0.0, "image_tpr": 0.38,
                    "image_f1_max_threshold": 0.42}
    (note,) = threshold_notes(conservative)
    assert "conservative" in note and "TPR 0.38" in note and "recipe.calibration_quantile" in note
    assert threshold_notes({**conservative, "image_f1": 0.85}) == []


def test_tile_covering_the_whole_image_leaves_a_note():
    import numpy as np

    from fakes import PixelZScore
    from pyimgano_hydra.adapt.tiling import TiledDetector

    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    whole = TiledDetector(PixelZScore(), tile_size=64, stride=64).fit(images)
    assert any("covers the whole 64x64 image" in n for n in whole.notes_)
    assert TiledDetector(PixelZScore(), tile_size=32, stride=32).fit(images).notes_ == []


def test_overlays_asked_of_a_map_less_model_leave_a_note(tmp_path):
    from omegaconf import OmegaConf

    from pyimgano_hydra import app
    from pyimgano_hydra.api import compose_with_choices

    cfg, choices = compose_with_choices([*TINY, "postprocess=inspect", "recipe.save_checkpoint=false"])
    cfg.model = OmegaConf.create({"_target_": "fakes.ScoresOnly"})
    report = app.run(cfg, tmp_path / "run", choices=choices)
    notes = report["categories"]["weave"]["notes"]
    assert any("no overlays written" in n for n in notes), notes
    assert report["categories"]["weave"]["overlays"] == [] and report["categories"]["weave"]["plots"]


def test_plots_draw_an_undecodable_category_or_defect_name(tmp_path):
    import numpy as np

    from pyimgano_hydra.viz.plots import category_plots

    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    by_type = {"cr\udcffck": {"image_auroc": 1.0, "n": 2}}
    paths = category_plots(tmp_path, "bad\udcffname", labels, scores, 0.5, by_type)
    assert sorted(p.name for p in paths) == ["defect_types.png", "roc_pr.png", "score_histogram.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_plots_of_very_long_names_keep_their_size_and_show_both_ends(tmp_path):
    """A 300-character category or defect-type folder name is shortened in the middle: the
    figure keeps its size (it grew to fit the text) and the name's start and end stay readable."""
    import numpy as np
    from PIL import Image

    from pyimgano_hydra.viz.plots import _shorten, category_plots

    long_name = "line3_" + "x" * 288 + "_left"
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    short = category_plots(tmp_path / "short", "weave", labels, scores, 0.5, {"crack": {"image_auroc": 1.0, "n": 2}})
    long = category_plots(tmp_path / "long", long_name, labels, scores, 0.5,
                          {long_name: {"image_auroc": 1.0, "n": 2}})
    for a, b in zip(short, long):
        (wa, ha), (wb, hb) = Image.open(a).size, Image.open(b).size
        assert hb == ha and wb <= wa + 250, (b.name, (wa, ha), (wb, hb))
    cut = _shorten(long_name, 40)
    assert len(cut) == 40 and cut.startswith("line3_") and cut.endswith("_left") and "…" in cut
    assert _shorten("weave", 40) == "weave"
