"""PyOD detectors on pooled deep features: every model= option, any PyOD class, hand-off."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pyimgano_hydra.api import compose_config
from pyimgano_hydra.errors import ConfigError, UserError
from pyimgano_hydra.instantiate import build
from pyimgano_hydra.models.pyod_on_features import PyODOnFeatures
from pyimgano_hydra.schemas import validate

PYOD_OPTIONS = ["ecod", "copod", "iforest", "knn", "lof", "ocsvm", "pca", "hbos", "pyod"]
FAST = ["model.pretrained=false", "model.device=cpu", "model.batch_size=8"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _images(n: int, seed: int, defect: bool = False, size: int = 48) -> np.ndarray:
    """Fine noise texture around mid-grey; defects are a dark square at a random place."""
    rng = np.random.default_rng(seed)
    x = np.clip(128 + rng.normal(0, 12, (n, size, size, 3)), 0, 255).astype(np.uint8)
    if defect:
        for img in x:
            r, c = rng.integers(4, size - 20, 2)
            img[r:r + 16, c:c + 16] = 10
    return x


@pytest.fixture(scope="module")
def data():
    train = _images(10, seed=0)
    test = np.concatenate([_images(4, seed=1), _images(4, seed=2, defect=True)])
    return train, test, np.array([0] * 4 + [1] * 4)


def _fitted(overrides, train):
    """(config, fitted detector) for ``overrides`` on top of the fast settings."""
    if not any(o.startswith("model=") for o in overrides):
        overrides = ["model=ecod", *overrides]
    cfg = compose_config([*overrides, *FAST])
    validate(cfg)
    return cfg, build(cfg.model, "model").fit(train)


@pytest.fixture(scope="module")
def fitted(data):
    """Fitted detectors shared by the tests of this module (read-only use), by option."""
    cache = {}

    def get(option):
        if option not in cache:
            cache[option] = _fitted([f"model={option}"], data[0])
        return cache[option]

    return get


def _ranks_defects_first(scores, labels):
    return scores[labels == 1].min() > scores[labels == 0].max()


@pytest.mark.parametrize("option", PYOD_OPTIONS)
def test_each_option_composes_fits_and_ranks_a_defect_above_normals(option, data, fitted):
    _, test, labels = data
    cfg, detector = fitted(option)
    assert isinstance(detector, PyODOnFeatures) and detector.produces_maps is False
    assert type(detector.detector_).__module__.startswith("pyod.models.")
    assert type(detector.detector_).__name__.lower() == cfg.model.detector._target_.rsplit(".", 1)[-1].lower()
    out = detector.score_maps(test)
    assert out.maps is None and out.scores.shape == (len(test),) and np.isfinite(out.scores).all()
    assert _ranks_defects_first(out.scores, labels), out.scores


def test_any_other_pyod_class_works_from_the_command_line(data):
    train, test, labels = data
    _, detector = _fitted(["model=pyod", "model.detector._target_=pyod.models.kde.KDE",
                           "+model.detector.bandwidth=2.5"], train)
    from pyod.models.kde import KDE

    assert isinstance(detector.detector_, KDE) and detector.detector_.bandwidth == 2.5
    assert _ranks_defects_first(detector.score_maps(test).scores, labels)


def test_present_detector_params_are_overridden_without_plus(data):
    _, detector = _fitted(["model=knn", "model.detector.n_neighbors=3", "model.detector.method=largest"], data[0])
    assert detector.detector_.n_neighbors == 3 and detector.detector_.method == "largest"


def test_too_many_neighbours_for_a_tiny_train_set_are_lowered_with_a_note(data):
    train = data[0]
    with pytest.warns(UserWarning, match="n_neighbors"):
        _, detector = _fitted(["model=lof", "model.detector.n_neighbors=50"], train)
    assert detector.detector_.n_neighbors == len(train) - 1
    assert any("n_neighbors" in note for note in detector.notes_)


def test_unset_random_state_is_fixed_to_the_seed_so_fits_repeat(data):
    train, test, _ = data
    overrides = ["model=pyod", "model.detector._target_=pyod.models.iforest.IForest", "model.seed=3"]
    _, first = _fitted(overrides, train)
    _, second = _fitted(overrides, train)
    assert first.detector_.random_state == 3
    np.testing.assert_array_equal(first.score_maps(test).scores, second.score_maps(test).scores)


@pytest.mark.parametrize("option", ["ecod", "knn"])
def test_scores_do_not_depend_on_how_images_are_batched(option, data, fitted):
    test = data[1]
    _, detector = fitted(option)
    together = detector.score_maps(test).scores
    one_by_one = np.concatenate([detector.score_maps(test[i:i + 1]).scores for i in range(len(test))])
    # Only float32 round-off of the backbone may differ between batch sizes.
    np.testing.assert_allclose(one_by_one, together, rtol=1e-6)


@pytest.mark.parametrize("option", ["ecod", "iforest", "knn", "ocsvm"])
def test_state_round_trip_reproduces_scores(option, data, fitted, tmp_path):
    import torch

    test = data[1]
    cfg, detector = fitted(option)
    state = detector.state_dict()
    json.dumps({k: v for k, v in state.items() if not isinstance(v, torch.Tensor)})  # plain data
    torch.save(state, tmp_path / "model.pt")
    stored = torch.load(tmp_path / "model.pt", weights_only=True)  # no pickled objects
    fresh = build(cfg.model, "model").load_state_dict(stored)
    np.testing.assert_allclose(fresh.score_maps(test).scores, detector.score_maps(test).scores, rtol=1e-6, atol=1e-6)


def test_loading_a_checkpoint_of_another_detector_class_is_refused(fitted):
    _, detector = fitted("knn")
    other = build(compose_config(["model=ecod", *FAST]).model, "model")
    with pytest.raises(UserError, match="model.detector._target_"):
        other.load_state_dict(detector.state_dict())


def test_predict_before_fit_is_a_clear_error(data):
    detector = build(compose_config(["model=ecod", *FAST]).model, "model")
    with pytest.raises(UserError, match="fit"):
        detector.score_maps(data[1])


@pytest.mark.parametrize("override,key", [
    ("model.pooling=sum", "model.pooling"),
    ("model.batch_size=0", "model.batch_size"),
    ("model.detector.n_neighbors=0", "model.detector.n_neighbors"),
    ("model.layers=[]", "model.layers"),
])
def test_out_of_range_values_name_the_key(override, key):
    cfg = compose_config(["model=knn", override])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_a_target_that_is_not_a_pyod_detector_is_refused(data):
    cfg = compose_config(["model=pyod", *FAST, "model.detector._target_=collections.OrderedDict"])
    with pytest.raises(ConfigError, match="not a PyOD detector"):
        build(cfg.model, "model").fit(data[0])


def test_detector_notes_reach_the_category_report(tmp_path):
    from pyimgano_hydra.api import run

    with pytest.warns(UserWarning, match="n_neighbors"):
        report = run(["model=knn", "model.detector.n_neighbors=50", *FAST, "dataset.category=weave",
                      "dataset.limit_train=8", "dataset.limit_test=6"], output_dir=tmp_path / "run")
    notes = report["categories"]["weave"]["notes"]
    assert any("n_neighbors" in n for n in notes), notes
    assert any("produces no anomaly maps" in n for n in notes)


HBOS_IN_A_NEW_PROCESS = """
import json, numpy as np
import pyod.models.hbos as hbos
from pyimgano_hydra.models.pyod_on_features import PyODOnFeatures
model = PyODOnFeatures(detector=hbos.HBOS(n_bins=10))
rng = np.random.default_rng(0)
model._fit_embeddings(rng.normal(size=(30, 8)))
stats = hbos._calculate_outlier_scores.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "scores": model.score_embeddings(rng.normal(size=(5, 8))).tolist()}))
"""


def test_pyod_numba_code_is_compiled_once_and_reused_by_the_next_process(tmp_path):
    """HBOS compiled for seconds in every sweep process; the second process loads numba's cache."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    runs = [json.loads(subprocess.run([sys.executable, "-c", HBOS_IN_A_NEW_PROCESS], env=env, check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1]) for _ in range(2)]
    assert runs[0]["misses"] > 0 and runs[0]["hits"] == 0
    assert runs[1]["hits"] > 0 and runs[1]["misses"] == 0
    assert runs[1]["scores"] == runs[0]["scores"]
    assert any((tmp_path / "numba").rglob("*.nbi"))


def test_a_quadratic_memory_detector_refuses_more_training_rows_than_it_can_hold():
    """COF keeps n x n matrices: training refuses past MAX_QUADRATIC_ROWS (a load re-fits the same
    way, so a forged inspector with more stored rows is refused alike), naming the key."""
    from pyod.models.cof import COF

    from pyimgano_hydra.models.pyod_on_features import MAX_QUADRATIC_ROWS

    model = PyODOnFeatures(detector=COF(n_neighbors=5))
    rows = np.random.default_rng(0).normal(size=(MAX_QUADRATIC_ROWS + 1, 2))
    with pytest.raises(UserError, match=r"model\.detector: COF .*dataset\.limit_train"):
        model._fit_embeddings(rows)
    from pyod.models.knn import KNN

    linear = PyODOnFeatures(detector=KNN(n_neighbors=5))  # a k-NN index: no such limit
    linear._fit_embeddings(rows)
    assert linear.score_embeddings(rows[:3]).shape == (3,)


@pytest.mark.parametrize("name, params, dims, key", [
    ("GMM", {"n_components": 2, "n_init": 100, "max_iter": 100}, 4, "n_init"),
    ("LODA", {"n_bins": 2000, "n_random_cuts": 1000}, 4, "n_random_cuts"),
    ("ABOD", {"n_neighbors": 29, "method": "fast"}, 4, "n_neighbors"),
    ("ROD", {}, 64, "embedding size"),
])
def test_a_fit_whose_work_is_past_the_bound_is_refused_at_training_and_within_it_fits(name, params, dims, key):
    """GMM's EM steps, LODA's histograms, ABOD's neighbour pairs and ROD's 3-dimension subspaces grow
    with params, images and embedding size; a load re-fits, so training refuses past the bound in one
    line naming what to lower, and a fit within it goes ahead."""
    from pyimgano_hydra.models.pyod_on_features import FIT_WORK
    from pyimgano_hydra.registry import resolve_pyod

    cls = resolve_pyod(f"pyod.models.{name.lower()}.{name}", "model.detector")
    rng = np.random.default_rng(0)
    if name == "ABOD":  # 30 images x 29² pairs is within; the same k over 3,000 images is not
        big = rng.normal(size=(3000, dims))
    else:
        big = rng.normal(size=(30, dims))
    with pytest.raises(UserError, match=rf"model\.detector: {name} .*{key}"):
        PyODOnFeatures(detector=cls(**params))._fit_embeddings(big)
    small = {k: max(1, v // 100) for k, v in params.items()} if name in ("GMM", "LODA") else params
    model = PyODOnFeatures(detector=cls(**small))
    rows = rng.normal(size=(30, 4))
    model._fit_embeddings(rows)
    assert np.isfinite(model.score_embeddings(rows[:3])).all()
    assert name in FIT_WORK
