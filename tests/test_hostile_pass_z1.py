"""Attacker pass Z1 (#16): code execution from a received run dir's stored detector spec.

No hole found in this pass; these are attacks that HELD, asserted on the parser of a stored
inspector's ``detector`` block (``inspector._detector_from_state``), in-process and fast.
"""
import sys

import pytest

from pyimgano_hydra.errors import UserError
from pyimgano_hydra.inspector import _detector_from_state

WHERE = "categories/weave/inspector.pt"


def _refused(state, marker_module: str | None = None) -> str:
    before = set(sys.modules)
    with pytest.raises(UserError) as info:
        _detector_from_state(state, WHERE, trust_targets=False)
    if marker_module:
        assert marker_module not in sys.modules or marker_module in before
    line = str(info.value)
    assert "\n" not in line and WHERE in line
    return line


@pytest.mark.parametrize("name", ["PatchC\u043ere",          # Cyrillic o
                                  "Pa\uff24iM",              # fullwidth D
                                  "PatchCore\u200b",         # zero-width space
                                  "pyimgano_hydra.models.patchcore.PatchCore",
                                  "pyimgano_hydra.models.patchcore:PatchCore",
                                  "PatchCore ", "patchcore"])
def test_held_a_lookalike_or_dotted_detector_name_is_refused_without_import(name):
    line = _refused({"detector": {"name": name, "params": {}}})
    assert "not a registered detector" in line


@pytest.mark.parametrize("name", ["pyod.models.knn.KNN\u200b", "pyod.models.kn\u0578.KNN",
                                  "pyod.models.xgbod.XGBOD", "pyod.models.suod.SUOD",
                                  "pyod.models.knn:KNN", "sklearn.neighbors.KNeighborsClassifier",
                                  "pyod.models.knn.KNN.__init__.__globals__"])
def test_held_a_lookalike_or_unregistered_pyod_class_is_refused_without_import(name):
    line = _refused({"detector": {"name": "PyODOnFeatures", "params": {"detector": {"name": name, "params": {}}}}},
                    marker_module="pyod.models.xgbod")
    assert "not a registered PyOD detector" in line


@pytest.mark.parametrize("detector", [
    {"_target_": "os.system", "command": "touch /tmp/z1/pwned"},
    {"name": "pyod.models.knn.KNN", "params": {"metric_params": {"_target_": "os.system"}}},
    {"name": "pyod.models.knn.KNN", "params": {"metric_params": [{"x": [{"_target_": "os.system"}]}]}},
    {"name": "pyod.models.knn.KNN", "params": {"metric": "${oc.env:HOME}"}},
])
def test_held_a_target_or_interpolation_at_any_depth_of_pyod_params_is_refused(detector, tmp_path):
    _refused({"detector": {"name": "PyODOnFeatures", "params": {"detector": detector}}})


def test_held_a_pyod_detector_named_as_a_plain_string_path_is_never_imported():
    """``detector.params.detector`` as the string ``"os.system"`` (not a {name, params} block):
    never resolved as a dotted path (refused as no PyOD detector, in one line)."""
    with pytest.raises(UserError) as info:
        _detector_from_state({"detector": {"name": "PyODOnFeatures", "params": {"detector": "os.system"}}},
                             WHERE, trust_targets=False).fit  # noqa: B018 - building alone must refuse or stay inert
    assert "\n" not in str(info.value)
