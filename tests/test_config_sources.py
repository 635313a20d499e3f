"""Config sources in a run dir are refused before Hydra composes anything; a user's own are kept."""
import sys

import pytest

from pyimgano_hydra.config_sources import check_config_arguments
from pyimgano_hydra.errors import UserError


@pytest.fixture
def received(tmp_path):
    run = tmp_path / "received"
    (run / ".hydra").mkdir(parents=True)
    (run / "status.json").write_text('{"status": "completed"}')
    return run


@pytest.mark.parametrize("form", ["--config-dir={}", "--config-d={}", "-cd={}", "-cd{}", "--config-path={}/.hydra",
                                  "-cp{}/.hydra", "hydra.searchpath=[file://{}]", "+hydra.searchpath=['{}']"])
def test_a_config_folder_in_a_run_dir_is_refused_in_any_spelling(received, form):
    with pytest.raises(UserError, match="reads a run dir"):
        check_config_arguments(form.format(received).split(" "))


def test_a_flag_value_in_the_next_argument_is_checked(received):
    with pytest.raises(UserError, match="--config-dir"):
        check_config_arguments(["-cd", str(received), "model=padim"])


def test_a_package_search_path_naming_a_run_dir_is_refused(received, monkeypatch):
    monkeypatch.chdir(received.parent)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    with pytest.raises(UserError, match="hydra.searchpath"):
        check_config_arguments(["hydra.searchpath=[pkg://received]"])


@pytest.mark.parametrize("arg", ["experiment=../../x/exp", "+experiment=/abs/exp", "hydra/launcher=../x",
                                 "model=patchcore,../x", "--config-name=../../x/config"])
def test_a_group_option_or_config_name_leaving_the_config_folder_is_refused(arg):
    with pytest.raises(UserError, match="no '..' or absolute|without '..'"):
        check_config_arguments([arg])


def test_own_config_folders_and_plain_paths_pass(tmp_path):
    (tmp_path / "mine").mkdir()
    check_config_arguments(["--config-dir", str(tmp_path / "mine"), f"hydra.searchpath=[file://{tmp_path / 'mine'}]",
                            "experiment=mtd_tuned", "dataset.root=../data", "hydra.run.dir=../out",
                            "model=patchcore,padim", "--multirun"])


@pytest.mark.parametrize("module", ["pyimgano_hydra", "pyimgano_hydra.infer", "pyimgano_hydra.export"])
def test_every_entry_point_refuses_a_config_path_in_a_run_dir_before_composing(received, tmp_path, module):
    """``-cp <run>/.hydra -cn config`` made Hydra compose the run dir's own config (its callbacks and
    ``_target_`` entries instantiated): refused in one line before Hydra starts, nothing written."""
    from conftest import run_cli

    marker = tmp_path / "PWNED"
    (received / ".hydra" / "config.yaml").write_text(
        f"hydra:\n  callbacks:\n    evil:\n      _target_: pathlib.Path.touch\n      self: {marker}\n")
    before = sorted(p.name for p in received.rglob("*"))
    proc = run_cli(["-cp", str(received / ".hydra"), "-cn", "config", f"+run_dir={received}"], module=module,
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]
    assert "--config-path" in proc.stderr and "reads a run dir" in proc.stderr, proc.stderr
    assert not marker.exists() and sorted(p.name for p in received.rglob("*")) == before


def test_a_config_folder_holding_a_run_dir_or_a_link_into_one_is_refused(received, tmp_path):
    """A preset linked to a run dir's YAML, or a received run saved among the presets, would be
    composed through the user's own (trusted) config folder."""
    mine = tmp_path / "mine"
    (mine / "experiment").mkdir(parents=True)
    check_config_arguments(["--config-dir", str(mine)])
    (mine / "experiment" / "x.yaml").symlink_to(received / ".hydra" / "config.yaml")
    with pytest.raises(UserError, match="reads a run dir .*x.yaml"):
        check_config_arguments(["--config-dir", str(mine)])
    (mine / "experiment" / "x.yaml").unlink()
    (mine / "experiment" / "recv").mkdir()
    (mine / "experiment" / "recv" / "report.json").write_text("{}")
    with pytest.raises(UserError, match="reads a run dir .*recv"):
        check_config_arguments([f"hydra.searchpath=[file://{mine}]"])
