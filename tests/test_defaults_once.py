"""Every default lives once, in the schema: constructors agree with it and the option files
in conf/model/ hold only ``_target_`` and what differs from the schema (or the preset they extend)."""
import importlib
import inspect

import pytest
import yaml
from omegaconf import OmegaConf

from pyimgano_hydra.paths import conf_dir
from pyimgano_hydra.schemas import model, model_zoo

SCHEMAS = {**model.SCHEMAS, **model_zoo.SCHEMAS}
OPTION_FILES = sorted((conf_dir() / "model").glob("*.yaml"))


def _class(target: str) -> type:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_constructor_defaults_equal_schema_defaults(name):
    schema = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[name]))
    cls = _class(schema.pop("_target_"))
    params = inspect.signature(cls.__init__).parameters
    assert set(schema) <= set(params), f"{name}: schema keys the constructor lacks"
    for key, value in schema.items():
        default = params[key].default
        if key == "detector":  # a PyOD object built by Hydra; the schema names the default class
            continue
        default = list(default) if isinstance(default, tuple) else default
        assert default == value, f"{cls.__name__}.{key}: constructor {default!r} != schema {value!r}"


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.stem)
def test_option_files_hold_only_what_differs(path):
    data = yaml.safe_load(path.read_text())
    first = data["defaults"][0]
    if isinstance(first, str):  # a preset extending another option of the group
        base = yaml.safe_load((path.parent / f"{first}.yaml").read_text())
        reference = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[base["defaults"][0]["/schema/model@_here_"]]))
        reference.update({k: v for k, v in base.items() if k != "defaults"})
        assert "_target_" not in data
    else:
        reference = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[first["/schema/model@_here_"]]))
    for key, value in data.items():
        if key not in ("defaults", "_target_"):
            assert reference.get(key) != value, f"{path.name}: {key}={value!r} repeats the default"


def test_the_schema_names_exactly_the_buildable_backbones():
    from pyimgano_hydra.features.backbones import BACKBONES

    assert sorted(BACKBONES) == sorted(model.BACKBONE_NAMES)
