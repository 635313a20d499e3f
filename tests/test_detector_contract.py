"""One contract for every detector option in conf/model/ and its tiled variant: the
scikit-learn / PyOD estimator protocol, batch-independent scores, seeded refits, a state
round trip through the stored inspector (weights_only) and one not-fitted error."""
import inspect

import numpy as np
import pytest
from sklearn.base import clone

from _texture import textures
from pyimgano_hydra.api import compose_config
from pyimgano_hydra.inspector import Inspector
from pyimgano_hydra.instantiate import build_detector_factory
from pyimgano_hydra.models.base import BaseDetector, NotFittedError
from pyimgano_hydra.paths import conf_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
SMALL = {"autoencoder": ["model.epochs=1", "model.image_size=32", "model.depth=2", "model.base_channels=8",
                         "model.latent_channels=8"],
         "padim": ["model.d=16"], "padim_mtd": ["model.d=16"]}
TILING = {"enabled": True, "tile_size": 32, "stride": 32}


@pytest.fixture(scope="module")
def data():
    return textures(6, size=64, seed=0), np.concatenate([textures(2, size=64, seed=1),
                                                         textures(2, size=64, seed=2, defect=True)])


def _make(option: str, tiled: bool) -> BaseDetector:
    cfg = compose_config([f"model={option}", "model.device=cpu", "model.batch_size=4", *SMALL.get(option, [])])
    return build_detector_factory(cfg.model, TILING if tiled else None)()


@pytest.fixture(scope="module")
def fitted(data):
    cache = {}

    def get(option, tiled):
        if (option, tiled) not in cache:
            detector = _make(option, tiled)
            assert detector.fit(data[0]) is detector  # fit returns self
            cache[option, tiled] = detector
        return cache[option, tiled]

    return get


CASES = [pytest.param(o, t, id=f"{o}{'-tiled' if t else ''}") for o in OPTIONS for t in (False, True)]


@pytest.mark.parametrize("option,tiled", CASES)
def test_estimator_protocol(option, tiled, fitted, data):
    detector = fitted(option, tiled)
    params = detector.get_params(deep=False)
    names = [p for p in inspect.signature(type(detector).__init__).parameters if p != "self"]
    assert sorted(params) == sorted(names)
    copy = clone(detector)
    assert type(copy) is type(detector) and not copy.__sklearn_is_fitted__()
    assert copy.set_params(seed=3) is copy and copy.seed == 3
    with pytest.raises(NotFittedError, match="is not fitted; call fit"):
        copy.decision_function(data[1])


@pytest.mark.parametrize("option,tiled", CASES)
def test_shapes_dtypes_and_batch_independence(option, tiled, fitted, data):
    detector, test = fitted(option, tiled), data[1]
    out = detector.score_maps(test)
    assert out.scores.shape == (len(test),) and out.scores.dtype == np.float64
    assert np.all(np.isfinite(out.scores))
    if detector.produces_maps:
        assert out.maps.shape == (len(test), 64, 64) and out.maps.dtype == np.float32
    else:
        assert out.maps is None
    np.testing.assert_allclose(detector.decision_function(test), out.scores)
    one_by_one = np.concatenate([detector.decision_function(test[i:i + 1]) for i in range(len(test))])
    np.testing.assert_allclose(one_by_one, out.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("option,tiled", CASES)
def test_same_seed_same_model_and_state_round_trip(option, tiled, fitted, data, tmp_path):
    detector, test = fitted(option, tiled), data[1]
    expected = detector.decision_function(test)
    refit = clone(detector).fit(data[0])
    np.testing.assert_allclose(refit.decision_function(test), expected, rtol=1e-5, atol=1e-6)
    inspector = Inspector(detector, image_threshold={"value": float(np.median(expected)), "provenance": {}},
                          preprocessing={"resize": 64, "input_mode": "rgb"}, category="c")
    loaded = Inspector.load(inspector.save(tmp_path / "inspector.pt"))  # registry names only, weights_only
    assert type(loaded.detector) is type(detector)
    np.testing.assert_allclose(loaded.decision_function(test), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(test), inspector.predict(test))
    assert set(loaded.predict(test)) <= {0, 1}
