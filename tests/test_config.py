"""Every option of every group composes; bad values fail with the key named."""
from pathlib import Path

import pytest
from conftest import run_cli
from hydra.errors import ConfigCompositionException

from pyimgano_hydra.api import compose_config
from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.paths import conf_dir
from pyimgano_hydra.schemas import GROUPS, validate

OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((conf_dir() / group).glob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    extra = ["dataset.resize=1024"] if group == "tiling" else []  # tiles must fit the images
    cfg = compose_config([f"{group}={option}", *extra])
    validate(cfg)
    node = cfg[group]
    if group in ("dataset", "model", "recipe"):
        assert node._target_.count(".") >= 1, f"{group}={option} needs a _target_"


def test_no_option_named_like_a_yaml_boolean():
    for group, option in OPTIONS:
        assert option.lower() not in {"on", "off", "yes", "no", "true", "false", "y", "n"}, (group, option)


def test_wrong_type_fails_at_compose_naming_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["dataset.resize=abc"])
    assert "dataset.resize" in str(info.value) + str(info.value.__cause__)


def test_unknown_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["model.coreset_ration=0.1"])
    assert "coreset_ration" in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("recipe.calibration_quantile=2", "recipe.calibration_quantile"),
    ("recipe.contamination=0.7", "recipe.contamination"),
    ("model.coreset_ratio=0", "model.coreset_ratio"),
    ("dataset.input_mode=cmyk", "dataset.input_mode"),
    ("recipe.calibration=evil", "recipe.calibration"),
    ("recipe.calibration_folds=1", "recipe.calibration_folds"),
    ("model=padim model.d=0", "model.d"),
    ("+loader.pin_memory=abc", "loader.pin_memory"),  # the run's own nodes hold only their keys
    ("+gpu.autocasts=bf16", "gpu.autocasts"),
    ("+cache.max_size=1", "cache.max_size"),
])
def test_out_of_range_fails_before_work_naming_the_key(override, key):
    cfg = compose_config(override.split())
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_configs_live_in_the_package_and_the_checkout_links_them():
    assert (conf_dir() / "config.yaml").is_file() and conf_dir().parent.name == "pyimgano_hydra"
    top = Path(__file__).resolve().parents[1] / "conf"
    assert top.is_symlink() and top.resolve() == conf_dir()


def test_an_unknown_cache_key_fails_the_run_in_one_line(tmp_path):
    proc = run_cli(["+cache.max_size=1", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cache.max_size: unknown key")
    assert '"failed"' in (tmp_path / "run" / "status.json").read_text()
