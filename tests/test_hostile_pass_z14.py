"""Attacker pass Z14 (#16): code execution from data the user did not write -- a shared Optuna
study store, received run dirs and exports (ONNX), masks and config files."""
from __future__ import annotations

import textwrap

from conftest import REPO, TINY, pythonpath, run_cli

# Stand-in for redis-py talking to a shared Redis server (a colleague's study store): every value the
# server holds is what that colleague wrote -- here a pickle that writes a marker when unpickled.
# Nothing in this module runs the marker itself (pickle.dumps only calls __reduce__).
_FAKE_REDIS = textwrap.dedent('''
    import os, pickle

    __version__ = "5.0.0"


    class _Payload:
        def __reduce__(self):
            return (os.system, ("touch " + os.environ["Z14_MARK"],))


    PAYLOAD = pickle.dumps(_Payload())


    class WatchError(Exception):
        pass


    class Redis:
        @classmethod
        def from_url(cls, url, **kwargs):
            return cls()

        def exists(self, *keys):
            return 1

        def get(self, key):
            return PAYLOAD

        def lrange(self, *args):
            return [PAYLOAD]

        def __getattr__(self, name):
            return lambda *args, **kwargs: PAYLOAD
''')


def test_a_redis_study_store_never_unpickles_what_a_colleague_stored(tmp_path):
    """HOLE (code-exec). ``hydra.sweeper.storage=redis://<shared host>/0`` passes the storage check
    (``_plain_storage`` refuses only odd sqlite spellings and braces) and Optuna 2.10's
    ``get_storage`` builds a ``RedisStorage`` for any ``redis`` URL, which ``pickle.loads`` every
    value it reads (study id, directions, trials): whoever can write to the shared Redis (a colleague
    sharing the study, as with a handed optuna.db) runs code in the sweep before any job. Observed:
    the marker is written, then a one-line error. Expected: the storage is refused (only SQLite /
    SQL databases, whose values Optuna stores as JSON) in one line naming hydra.sweeper.storage, and
    nothing is unpickled."""
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "redis.py").write_text(_FAKE_REDIS)
    mark = tmp_path / "marker"
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli(["--multirun", "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                    "hydra.sweeper.storage=redis://colleague.example:6379/0",
                    f"hydra.sweep.dir={tmp_path / 'sw'}", f"cache.dir={tmp_path / 'cache'}",
                    "dataset=synthetic", "dataset.resize=32", *TINY], cwd=work, timeout=180,
                   env={"PYTHONPATH": pythonpath(REPO, fake), "Z14_MARK": str(mark), "OMP_NUM_THREADS": "1"})
    assert not mark.exists(), "a pickle from the shared Redis study store ran: " + proc.stderr[-400:]
    assert proc.returncode != 0, proc.stderr[-500:]
    assert "hydra.sweeper.storage" in proc.stderr.strip().splitlines()[-1], proc.stderr[-500:]


def test_held_a_forged_model_calling_a_recursive_local_function_is_refused_in_one_line(tmp_path):
    """HELD. A received export's ``model.onnx`` whose graph calls a model-local function that calls
    itself (shape inference runs before the op check): refused in one line naming the file, before
    ONNX Runtime sees it -- no recursion crash, no hang."""
    import pytest

    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.export.runtime import _session

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    body = [helper.make_node("f", ["x"], ["y"], domain="local")]
    function = helper.make_function("local", "f", ["x"], ["y"], body, opsets)
    graph = helper.make_graph(list(body), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    where = tmp_path / "categories" / "weave" / "artifacts" / "model.onnx"
    with pytest.raises(UserError) as caught:
        _session(model.SerializeToString(), where, 0.5)
    assert str(where) in str(caught.value) and len(str(caught.value).splitlines()) == 1
