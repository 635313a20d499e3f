"""Pass S1: a fresh attacker's pass on the lab side (training runs, sweeps, datasets, the API)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, TINY

_PEAK = """
import sys
from PIL import Image
from pyimgano_hydra.data.images import decoded_megabytes, load_image, load_mask

def kb(field):
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

small = sys.argv[1] + '/small.png'
Image.new('RGB', (64, 64), (9, 9, 9)).save(small)
load_image(small, 64); load_mask(small, 64)
with open('/proc/self/clear_refs', 'w') as refs:  # the peak starts here, not at the forking parent's size
    refs.write('5')
before = kb('VmRSS:')
{call}(sys.argv[2], 64)
grown = (kb('VmHWM:') - before) * 1024
print(grown / (decoded_megabytes(Image.open(sys.argv[2])) * 1e6))
"""


def _memory_per_counted_byte(call: str, path, tmp_path) -> float:
    proc = subprocess.run([sys.executable, "-c", _PEAK.replace("{call}", call), str(tmp_path), str(path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-1500:]
    return float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("call", ["load_image", "load_mask"])
def test_a_1_bit_image_counts_what_its_decoding_takes_like_an_8_bit_one(tmp_path, call):
    """A 1-bit TIFF (group 4) of 13300x13300 is an 11 KB file (ground-truth masks are often 1-bit).
    ``decoded_megabytes`` counted it at 1/8 byte a pixel (22 MB, far under
    dataset.max_image_megabytes=256), but Pillow holds mode "1" at a byte a pixel, as it holds
    8-bit gray: loading it took +883 MB, 40 times what was counted. Memory per counted byte must
    be that of an 8-bit gray image of the same size."""
    from PIL import Image

    one_bit, gray = tmp_path / "bomb.tif", tmp_path / "gray.png"
    Image.new("1", (13300, 13300), 1).save(one_bit, compression="group4")
    Image.new("L", (13300, 13300), 1).save(gray)
    assert one_bit.stat().st_size < 20_000
    ratio_one_bit = _memory_per_counted_byte(call, one_bit, tmp_path)
    ratio_gray = _memory_per_counted_byte(call, gray, tmp_path)
    assert ratio_gray > 0 and ratio_one_bit < 1.5 * ratio_gray, (ratio_one_bit, ratio_gray)


@pytest.mark.parametrize("query", ["?timeout=5", "?check_same_thread=false"])
def test_a_handed_over_optuna_db_named_with_a_url_query_gets_the_same_checks(tmp_path, query):
    """The endless-view optuna.db of pass Q2, named ``sqlite:///<db>?timeout=5``: SQLAlchemy takes
    ``?timeout=5`` as a connect argument and opens ``<db>``, but ``runs/claim.py:sqlite_path`` only
    strips a query in the ``file:`` form, so the checks look at a file named ``optuna.db?timeout=5``
    that does not exist and skip ``_check_study_database``: Optuna then reads the endless view.
    Hole: pyimgano_hydra/runs/claim.py sqlite_path / _check_sweep_files."""
    import sqlite3

    from test_hostile_pass_q2 import VIEWS, _optuna_db, _watched

    db = tmp_path / "optuna.db"
    _optuna_db(db)
    with sqlite3.connect(db) as con:
        for statement in VIEWS["trials"]:
            con.execute(statement)
    rc, err, why = _watched(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                             f"hydra.sweeper.storage='sqlite:///{db}{query}'", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            limit_s=45.0)
    assert not why, f"a {db.stat().st_size}-byte optuna.db named with {query}: {why}"
    assert rc != 0 and "hydra.sweeper.storage" in err and "Traceback" not in err, err[-600:]


def test_a_handed_over_optuna_db_with_many_failed_trials_under_the_row_bound_is_refused_quickly(tmp_path):
    """A 22 MB optuna.db handed over with study ``patchcore`` holding 300,000 FAIL trials (plain
    rows in the ``trials`` table, under ``runs/claim.py:MAX_STUDY_ROWS`` = 1,000,000, no view):
    continuing it never ends (killed after 45 s; 999,000 rows: still running after 90 s) and stderr
    gets a 64 KB SQLAlchemy warning ("too many SQL variables" followed by the whole query with its
    300,000 '?'). The bound lets through studies the sweep cannot load: refuse in one line naming
    hydra.sweeper.storage (a far lower bound), or load it within the time a sweep start takes.
    Hole: pyimgano_hydra/runs/claim.py MAX_STUDY_ROWS / _check_study_database."""
    import sqlite3

    from test_hostile_pass_q2 import _optuna_db, _watched

    db = tmp_path / "optuna.db"
    _optuna_db(db)
    with sqlite3.connect(db) as con:
        con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 300000) "
                    "INSERT INTO trials(trial_id, number, study_id, state, datetime_start, datetime_complete) "
                    "SELECT x, x - 1, 1, 'FAIL', '2026-01-01 00:00:00.000000', '2026-01-01 00:00:01.000000' FROM c")
    rc, err, why = _watched(["--multirun", *TINY, "hydra/sweeper=optuna_patchcore", "hydra.sweeper.n_trials=1",
                             f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            limit_s=45.0)
    assert not why, f"a {db.stat().st_size / 1e6:.0f} MB optuna.db of 300,000 failed trials: {why}; stderr {len(err)} chars"
    assert "Traceback" not in err and len(err) < 20_000, err[:600]
    if rc != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "hydra.sweeper.storage" in lines[0], err[:600]


@pytest.mark.parametrize("url", ["sqlite:///a/b.db?timeout=5", "sqlite+pysqlite:////abs/b.db?check_same_thread=false",
                                 "sqlite:///file:a/b.db?uri=true&mode=rwc", "sqlite:///a/b.db"])
def test_the_storage_checks_look_at_the_file_sqlalchemy_opens(url):
    pytest.importorskip("sqlalchemy")
    from sqlalchemy.engine import make_url

    from pyimgano_hydra.runs.claim import sqlite_path

    assert sqlite_path(url)[1] == make_url(url).database.removeprefix("file:")
