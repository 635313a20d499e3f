"""conf/defects presets and the schema's range checks."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pyimgano_hydra.errors import ConfigError
from pyimgano_hydra.schemas import register_configs, validate
from pyimgano_hydra.schemas.defects import DefectsSchema

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _compose(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=None, overrides=list(overrides))


@pytest.mark.parametrize("preset, enabled", [("none", False), ("default", True), ("strict", True)])
def test_presets_compose_to_the_schema(preset, enabled):
    cfg = _compose(f"+defects={preset}")
    validate(cfg)
    settings = OmegaConf.to_object(cfg.defects)
    assert isinstance(settings, DefectsSchema) and settings.enabled is enabled


def test_default_resolves_from_normal_pixels_and_strict_is_stricter():
    default = OmegaConf.to_object(_compose("+defects=default").defects)
    strict = OmegaConf.to_object(_compose("+defects=strict").defects)
    assert default.pixel_threshold is None and default.pixel_threshold_strategy == "normal_pixel_quantile"
    assert strict.pixel_normal_quantile > default.pixel_normal_quantile
    assert strict.min_area > default.min_area


def test_command_line_overrides():
    cfg = _compose("+defects=default", "defects.pixel_threshold=0.6", "defects.min_area=20",
                   "defects.roi_xyxy_norm=[0.1,0.1,0.9,0.9]", "defects.mask_format=npy")
    validate(cfg)
    assert (cfg.defects.pixel_threshold, cfg.defects.min_area, cfg.defects.mask_format) == (0.6, 20, "npy")


@pytest.mark.parametrize(
    "override, key",
    [
        ("defects.pixel_threshold=-1", "defects.pixel_threshold"),
        ("defects.pixel_threshold=nan", "defects.pixel_threshold"),
        ("defects.roi_xyxy_norm=[1.2,0,1.5,1]", "defects.roi_xyxy_norm"),
        ("defects.open_ksize=-3", "defects.open_ksize"),
        ("defects.close_ksize=-1", "defects.close_ksize"),
        ("defects.min_area=-5", "defects.min_area"),
        ("defects.max_regions=0", "defects.max_regions"),
        ("defects.pixel_normal_quantile=1.0", "defects.pixel_normal_quantile"),
        ("defects.pixel_threshold_strategy=median", "defects.pixel_threshold_strategy"),
        ("defects.mask_format=jpg", "defects.mask_format"),
    ],
)
def test_bad_values_fail_validation_naming_the_key(override, key):
    cfg = _compose("+defects=default", override)
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        validate(cfg)


def test_non_numeric_threshold_fails_at_compose_naming_the_key():
    with pytest.raises(Exception) as info:
        _compose("+defects=default", "defects.pixel_threshold=abc")
    chain = f"{info.value} {info.value.__cause__}"
    assert "defects.pixel_threshold" in chain


@pytest.mark.parametrize("kwargs, key", [({"pixel_threshold": "abc"}, "pixel_threshold"),
                                         ({"open_ksize": 2.5}, "open_ksize"),
                                         ({"roi_xyxy_norm": [0, 0, 0, 1]}, "roi_xyxy_norm")])
def test_direct_construction_checks_too(kwargs, key):
    with pytest.raises(ConfigError, match=rf"^defects\.{key}: "):
        DefectsSchema(**kwargs)


@pytest.mark.parametrize("key", ["enabled", "fill_holes", "save_masks"])
def test_a_string_for_a_switch_is_refused_naming_the_key(key):
    from pyimgano_hydra.schemas.defects import defects_settings

    with pytest.raises(ConfigError, match=f"defects.{key}: must be true or false"):
        defects_settings({key: "false"})  # a stored "false" read as true before
    assert getattr(defects_settings({key: False}), key) is False
