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
    with pytest.raises(UserError, match="lies in a run dir"):
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
