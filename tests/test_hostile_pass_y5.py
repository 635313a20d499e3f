"""Pass Y5: results received in bulk (sweep dirs, their leaderboards and charts, report.html,
logs) and what reads them; variants not in the earlier passes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from test_hostile_pass_w2 import _simple_category

ESC_NAME = "ev\x1b]0;pwn\x07\x1b[2Jil"
HTML_NAME = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def hostile_sweep(tmp_path_factory) -> Path:
    """A one-job sweep over a received dataset (category=all) whose category folders are named
    ``ev<ESC>]0;pwn<BEL><ESC>[2Jil`` and ``<img src=x onerror=alert(1)>``."""
    tmp = tmp_path_factory.mktemp("y5sweep")
    root = tmp / "data"
    _simple_category(root / ESC_NAME, 0)
    _simple_category(root / HTML_NAME, 1)
    sweep = tmp / "sweep"
    proc = run_cli(["--multirun", "dataset=folder", f"dataset.root={root}", "dataset.category=all",
                    "dataset.resize=64", "model=padim", "seed=1", f"hydra.sweep.dir={sweep}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "\x1b" not in proc.stdout + proc.stderr  # the console escapes them (pass W2)
    return sweep


@pytest.mark.parametrize("name", ["leaderboard.md", "leaderboard.csv"])
def test_leaderboard_tables_never_hold_terminal_escapes_from_a_category_folder_name(hostile_sweep, name):
    """HOLE: the console, the run log, report.html and leaderboard.json escape a category folder's
    control characters, but leaderboard.md and leaderboard.csv write ``<category> image_auroc``
    (and ``<category>/<metric>`` columns) raw: ``cat leaderboard.md`` (the file the sweep's last
    line points to) clears the screen and retitles the terminal. Expected: control characters
    escaped there as on the console."""
    text = (hostile_sweep / name).read_text(encoding="utf-8", errors="surrogateescape")
    assert "\x1b" not in text and "\x07" not in text, repr(text[:600])


def test_leaderboard_md_never_holds_raw_html_from_a_category_folder_name(hostile_sweep):
    """HOLE (cosmetic unless the .md is rendered with raw HTML on, as mkdocs/Jupyter/most static
    site generators do): a category folder ``<img src=x onerror=alert(1)>`` lands in
    leaderboard.md's header verbatim, a script in a browser that renders it. report.html escapes
    the same name. Expected: ``<`` escaped (``&lt;`` or ``\\<``) in leaderboard.md."""
    text = (hostile_sweep / "leaderboard.md").read_text(encoding="utf-8", errors="surrogateescape")
    assert HTML_NAME not in text, text[:600]


def test_report_html_and_run_log_of_the_hostile_sweep_hold(hostile_sweep):
    """HELD: report.html escapes the HTML name (no raw ``<img``; its ESC is raw but inert in a
    browser), the job's log has no ESC/BEL."""
    job = next(p for p in hostile_sweep.iterdir() if (p / "report.html").is_file())
    page = (job / "report.html").read_text(encoding="utf-8", errors="surrogateescape")
    assert HTML_NAME not in page and "&lt;img src=x onerror" in page
    log = (job / "pyimgano_hydra.log").read_text(encoding="utf-8", errors="surrogateescape")
    assert "\x1b" not in log and "\x07" not in log


def _forged_job(root: Path, name: str, aggregate: dict) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=7\n")
    (job / "status.json").write_text(json.dumps({"status": "completed"}))
    (job / "report.json").write_text(json.dumps({
        "status": "completed", "categories": {"weave": {"metrics": {"image_auroc": 0.9}}},
        "aggregate": {"image_auroc": aggregate}}))


@pytest.mark.parametrize("std", [-0.5, 1e308], ids=["negative", "huge"])
def test_one_job_with_an_odd_std_never_loses_the_sweep_chart(tmp_path, std):
    """HOLE (chart only): a job dir whose report.json aggregate has ``std`` -0.5 or 1e308 (finite,
    so ``_number`` keeps it) makes chart_png raise ('xerr' must not contain negative values /
    Axis limits cannot be NaN or Inf): write_leaderboard raises after the tables, the callback
    logs 'could not write the leaderboard' after every job and leaderboard.png is never drawn for
    any job of the sweep. Expected: the chart drawn (odd std clamped or ignored)."""
    from pyimgano_hydra.sweep.leaderboard import write_leaderboard

    sweep = tmp_path / "sweep"
    _forged_job(sweep, "0_good", {"mean": 0.8, "std": 0.01, "n": 1})
    _forged_job(sweep, "1_odd", {"mean": 0.9, "std": std, "n": 1})
    write_leaderboard(sweep)
    assert (sweep / "leaderboard.png").is_file()


@pytest.mark.parametrize("where", ["command-line", "config-dir"])
def test_hydra_errors_never_echo_terminal_escapes(tmp_path, where):
    """HOLE: Hydra's own error report is folded into one line by console.fold_error, which never
    escapes control characters (console_line does elsewhere). An input path taken from a received
    folder (``input=$(ls -d /recv/*)``) holding ``<ESC>]0;pwn<BEL>`` prints
    'error: LexerNoViableAltException: input=/...<ESC>]0;pwn<BEL>...' raw; a received preset
    (``--config-dir recv experiment=evil`` whose defaults name ``model: "\\e]0;pwn\\a\\e[2J"``) prints
    "error: In 'config': Could not find 'model/<ESC>]0;pwn<BEL><ESC>[2J'" raw: the terminal is
    retitled and cleared. Expected: one line, control characters escaped."""
    if where == "command-line":
        args = [f"run_dir={tmp_path / 'run'}", f"input={tmp_path}/a\x1b]0;pwn\x07b.png"]
        proc = run_cli(args, module="pyimgano_hydra.infer", timeout=120)
    else:
        recv = tmp_path / "recv" / "experiment"
        recv.mkdir(parents=True)
        (recv / "evil.yaml").write_text('# @package _global_\ndefaults:\n  - override /model: "\\e]0;pwn\\a\\e[2J"\n')
        proc = run_cli(["--config-dir", str(tmp_path / "recv"), "experiment=evil",
                        f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    out = proc.stdout + proc.stderr
    assert "\x1b" not in out and "\x07" not in out, repr(out[-600:])


@pytest.fixture(scope="module")
def preset_sweep(tmp_path_factory):
    """A received sweep preset (``--config-dir recv experiment=evil``) whose
    ``hydra.sweeper.params`` sweep a category named ``we<ESC>]0;pwn<BEL>ave``."""
    tmp = tmp_path_factory.mktemp("y5preset")
    recv = tmp / "recv" / "experiment"
    recv.mkdir(parents=True)
    (recv / "evil.yaml").write_text('# @package _global_\nhydra:\n  sweeper:\n    params:\n'
                                    '      dataset.category: "\\"we\\e]0;pwn\\aave\\""\n')
    sweep = tmp / "sweep"
    proc = run_cli(["--multirun", "--config-dir", str(tmp / "recv"), "experiment=evil", "model=padim",
                    f"hydra.sweep.dir={sweep}"], timeout=120)
    return proc, sweep


def test_sweep_chart_never_echoes_escapes_of_a_swept_value(preset_sweep):
    """HOLE: chart_png draws job_label() (the swept values) without plots.shown(): matplotlib warns
    'UserWarning: Glyph 27 (<ESC>) missing from font(s)' and 'Glyph 7 (<BEL>)' on stderr, each
    control byte raw (four warnings for one job). Expected: labels escaped as in the run's plots."""
    proc, _ = preset_sweep
    bad = [line for line in (proc.stdout + proc.stderr).splitlines() if "Glyph" in line]
    assert not bad, bad


def test_sweep_console_never_echoes_escapes_of_a_swept_value(preset_sweep):
    """HOLE: the same sweep prints Hydra's launcher line '[HYDRA] #0 : dataset.category="we<ESC>]0;pwn<BEL>ave"
    ...' raw (Hydra's own logger; hydra_logging has no escaping formatter as job_logging has), besides
    the Glyph warnings above; our own lines escape it. Expected: no ESC/BEL on the console."""
    proc, _ = preset_sweep
    out = proc.stdout + proc.stderr
    assert "\x1b" not in out and "\x07" not in out, [line for line in out.splitlines() if "\x1b" in line]


def test_sweep_best_line_never_echoes_escapes_of_a_received_category(tmp_path):
    """HOLE: a received dataset whose category folder is ``ev<ESC>]0;pwn<BEL>ave``, swept by a received
    preset (``hydra.sweeper.params: {dataset.category: '"ev\\e]0;pwn\\aave"'}``): the job completes
    and LeaderboardCallback.on_multirun_end logs '[HYDRA] leaderboard (1 completed): ...; best: #0
    dataset.category="ev<ESC>]0;pwn<BEL>ave" (...)' raw: at multirun end the launcher's logger is
    Hydra's (no ConsoleFormatter), and best_label is not console_line'd. Expected: escaped."""
    root = tmp_path / "data"
    _simple_category(root / "ev\x1b]0;pwn\x07ave", 0)
    recv = tmp_path / "recv" / "experiment"
    recv.mkdir(parents=True)
    (recv / "evil.yaml").write_text('# @package _global_\nhydra:\n  sweeper:\n    params:\n'
                                    '      dataset.category: "\\"ev\\e]0;pwn\\aave\\""\n')
    proc = run_cli(["--multirun", "--config-dir", str(tmp_path / "recv"), "experiment=evil", "model=padim",
                    "dataset=folder", f"dataset.root={root}", "dataset.resize=64",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-800:]
    best = [line for line in (proc.stdout + proc.stderr).splitlines() if "best:" in line]
    assert best and not any("\x1b" in line or "\x07" in line for line in best), best


def test_leaderboard_csv_guards_formula_category_names_and_plain_text_chart(tmp_path):
    """HELD: category names ``=HYPERLINK(...)`` / ``@SUM(1)`` start no formula in leaderboard.csv (an
    apostrophe is put first); a swept value ``$\\nosuch$`` is drawn as text in leaderboard.png."""
    import csv
    import io

    from pyimgano_hydra.sweep.leaderboard import write_leaderboard

    sweep = tmp_path / "sweep"
    job = sweep / "0_a"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text('- "model=$\\\\nosuch$"\n')
    (job / "status.json").write_text(json.dumps({"status": "completed"}))
    cats = {c: {"metrics": {"image_auroc": 0.9}} for c in ['=HYPERLINK("http://x","a")', "@SUM(1)", "plain"]}
    (job / "report.json").write_text(json.dumps({"status": "completed", "categories": cats,
                                                 "aggregate": {"image_auroc": {"mean": 0.9, "std": 0.0, "n": 3}}}))
    write_leaderboard(sweep)
    rows = list(csv.reader(io.StringIO((sweep / "leaderboard.csv").read_text())))
    assert not [cell for row in rows for cell in row if cell[:1] in ("=", "@", "+", "-")]
    assert (sweep / "leaderboard.png").stat().st_size > 0
