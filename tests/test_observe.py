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
    for expected in ("[category 1/1 weave] fit features 10/10 img in ", "[category 1/1 weave] test 12/12 img in ",
                     "image_auroc=", "img_AUROC", f"run dir: {out}"):
        assert expected in log, expected
    assert "[DEBUG] - image threshold" in log  # hydra.verbose=pyimgano_hydra
    assert "[PIL" not in log and "[matplotlib" not in log
    assert "img_AUROC" in proc.stdout and f"run dir: {out}" in proc.stdout


def test_api_run_writes_the_log(tmp_path):
    from pyimgano_hydra.api import run

    out = tmp_path / "api"
    run([*TINY, "recipe.save_checkpoint=false"], output_dir=out)
    log = (out / "pyimgano_hydra.log").read_text()
    assert "[category 1/1 weave] test 12/12 img" in log and f"run dir: {out}" in log
    assert not logging.getLogger("pyimgano_hydra").handlers  # detached after the run
