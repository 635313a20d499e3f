"""Attacker pass Z13 (#16): the shared feature cache (and the shared synthetic-dataset cache) as an attack
vector: pickled npz members, lock files that are FIFOs or links, broken side records."""
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from conftest import TINY, pickle_that_touches, run_cli


# ---- holes ------------------------------------------------------------------------------------------

def test_a_shared_caches_deeply_nested_channels_record_counts_as_none(warm, tmp_path):
    """HOLE (lost-run). ``features/cache.py::_layer_channels`` reads ``backbones/<key>.channels.json``
    (4 KB at most) and catches UserError, OSError and ValueError; ``[`` x 4000 makes ``json.loads`` raise
    RecursionError (a RuntimeError), which escapes: every run on that shared cache fails at its first
    batch with ``error: job [...]: RecursionError: maximum recursion depth exceeded while decoding a JSON
    array`` naming no file (status failed). Reproducer: after one run with ``cache.dir=C``,
    ``python -c "import glob; open(glob.glob('C/backbones/*.channels.json')[0],'w').write('['*4000)"``,
    then the same run again. Expected (docstring: "a broken record counts as none"): the record is
    ignored, features recomputed, the run completes."""
    cache = tmp_path / "cache"
    shutil.copytree(warm[0], cache)
    records = sorted((cache / "backbones").glob("*.channels.json"))
    assert records
    for record in records:
        record.write_text("[" * 4000)
    proc = run_cli([*TINY, f"cache.dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert (tmp_path / "run" / "report.json").is_file()


def test_a_shared_synthetic_caches_deeply_nested_stamp_counts_as_stale(tmp_path):
    """HOLE (lost-run, demo data). ``data/synthetic.py::ensure_generated.complete`` reads the stamp
    ``<PYIMGANO_CACHE>/synthetic/<key>/pyimgano_synthetic.json`` ("the cache may be shared") and catches
    OSError, ValueError and UserError only: a stamp of ``[`` x 4000 raises RecursionError and the run fails
    with ``error: job [...]: RecursionError: ...`` naming no file. Reproducer: overwrite the stamp in
    ``$PYIMGANO_CACHE/synthetic/v2_s128_n40-12-4/`` with ``'[' * 4000`` and run
    ``python -m pyimgano_hydra dataset.category=weave``. Expected: the stamp counts as stale (the dataset
    is regenerated) and the run completes, or one line naming the stamp file."""
    from pyimgano_hydra.data.synthetic import GENERATOR_VERSION, STAMP_FILE

    env = {"PYIMGANO_CACHE": str(tmp_path / "pc")}
    folder = tmp_path / "pc" / "synthetic" / f"v{GENERATOR_VERSION}_s128_n40-12-4"  # the default dataset's
    folder.mkdir(parents=True)
    (folder / STAMP_FILE).write_text("[" * 4000)
    proc = run_cli([*TINY, "cache.enabled=false", f"hydra.run.dir={tmp_path / 'r2'}"], env=env, timeout=120)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == 0 or ("pyimgano_synthetic.json" in last and "RecursionError" not in last), \
        proc.stderr[-800:]


# ---- attacks that held ----------------------------------------------------------------------------

def test_held_a_shared_cache_entry_with_a_pickled_member_is_a_miss_and_runs_nothing(tmp_path):
    """HELD. A cache entry (stored npz) whose member is an object array (a pickle that touches a marker),
    or a raw pickle named ``x.npy``: ``read_entry`` returns None (recomputed), nothing is unpickled."""
    from pyimgano_hydra.features.cache import FeatureCache

    marker = tmp_path / "MARK"
    raw = tmp_path / "p.pkl"
    pickle_that_touches(raw, marker)

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    obj = io.BytesIO()
    np.save(obj, np.array([Touch()], dtype=object), allow_pickle=True)
    cache = FeatureCache(tmp_path / "cache")
    for i, member in enumerate((obj.getvalue(), raw.read_bytes())):
        key = f"{i:02x}" * 32
        path = cache.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("layer1.npy", member)
        assert cache.get(key) is None
    assert not marker.exists()


def test_held_a_lock_file_that_is_a_fifo_or_a_link_is_never_waited_on_nor_written(tmp_path):
    """HELD. ``.locks/<stripe>.lock`` planted as a FIFO, a symlink or a hard link to a file outside: the
    cache turns itself off (no hang, the value is computed), the linked file keeps its bytes."""
    from pyimgano_hydra.features.cache import LOCK_STRIPE_CHARS, FeatureCache, make_key

    victim = tmp_path / "victim"
    victim.write_text("precious")
    for how in ("fifo", "symlink", "hardlink"):
        cache = FeatureCache(tmp_path / how, lock_timeout_s=5)
        key = make_key(["z13", how])
        locks = Path(cache.root) / ".locks"
        locks.mkdir(parents=True)
        lock = locks / f"{key[:LOCK_STRIPE_CHARS]}.lock"
        {"fifo": os.mkfifo, "symlink": lambda p: os.symlink(victim, p), "hardlink": lambda p: os.link(victim, p)}[how](lock)
        value = cache.get_or_compute(["z13", how], lambda: np.ones(2, np.float32))
        assert np.array_equal(value, np.ones(2, np.float32))
        assert victim.read_text() == "precious"
