"""Attacker pass Y9 (#16, a fresh pass): the lab side (datasets handed over, presets, sweeps, export,
api.load_inspector); code execution and lost runs only."""
from __future__ import annotations

import tracemalloc

import pytest

from conftest import refused_naming  # noqa: F401  (the shared helpers)


# ---- holes ------------------------------------------------------------------------------------------

def test_a_visa_split_csv_within_its_size_limit_never_takes_gigabytes(tmp_path):
    """VisA's ``split_csv/1cls.csv`` is read whole up to ``MAX_CSV_BYTES`` (64 MB), then every row is
    kept as a dict of five strings: a 64 MB CSV of 7.4 million 9-byte rows ``a,x,0,a,`` (it gzips to
    ~70 KB) took ``dataset=visa`` to 3.2 GB resident and 85 s before 'listed twice' refused it
    (reproducer: ``python -c "open('v/split_csv/1cls.csv','w').write('object,split,label,image,mask\\n'
    + 'a,x,0,a,\\n'*7456529)"; mkdir v/a; python -m pyimgano_hydra dataset=visa dataset.root=v``).
    Measured here on a CSV at the limit: it must stay under 2 GB of Python objects and be refused
    naming the file."""
    from pyimgano_hydra.data import visa
    from pyimgano_hydra.errors import DataError

    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    (root / "a").mkdir()
    row = b"a,x,0,a,\n"
    header = b"object,split,label,image,mask\n"
    csv_file = root / "split_csv" / "1cls.csv"
    csv_file.write_bytes(header + row * ((visa.MAX_CSV_BYTES - len(header)) // len(row)))
    dataset = visa.VisaDataset(root=str(root), category="a", resize=32)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as refused:
            dataset.split("a")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(csv_file) in str(refused.value)
    assert peak < 2 * 1024**3, f"a {visa.MAX_CSV_BYTES >> 20} MB 1cls.csv peaked at {peak / 1e6:.0f} MB"


def _study_with_generated_attribute(path, length: int) -> None:
    """An Optuna database (study ``patchcore``, one completed trial) whose trial_system_attributes
    table is re-made with ``value_json`` a VIRTUAL generated column: ``'"' || hex(zeroblob(n)) || '"'``,
    computed each time Optuna reads a trial's attributes; ``n`` is a plain column."""
    import sqlite3

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="patchcore", storage=f"sqlite:///{path}", direction="maximize")
    study.tell(study.ask(), 0.5)
    con = sqlite3.connect(path)
    con.execute("DROP TABLE trial_system_attributes")
    con.execute("CREATE TABLE trial_system_attributes (trial_system_attribute_id INTEGER NOT NULL, trial_id INTEGER, "
                "\"key\" VARCHAR(512), n INTEGER, value_json TEXT GENERATED ALWAYS AS ('\"' || hex(zeroblob(n)) || "
                "'\"') VIRTUAL, PRIMARY KEY (trial_system_attribute_id), UNIQUE (trial_id, \"key\"), "
                "FOREIGN KEY(trial_id) REFERENCES trials (trial_id))")
    for i in range(3):
        con.execute("INSERT INTO trial_system_attributes (trial_system_attribute_id, trial_id, \"key\", n) "
                    "VALUES (?, 1, ?, ?)", (i + 1, f"k{i}", length))
    con.commit()
    con.close()


def test_an_optuna_database_with_a_generated_column_is_refused(tmp_path):
    """``_check_study_database`` admits tables and indexes only (views and triggers are refused) and
    counts rows, but a table may compute a column on every read: a 110 KB optuna.db whose
    trial_system_attributes.value_json is ``GENERATED ALWAYS AS ('"' || hex(zeroblob(n)) || '"')`` with
    n = 400,000,000 in three rows took ``python -m pyimgano_hydra --multirun hydra/sweeper=optuna_patchcore
    hydra.sweeper.n_trials=1 hydra.sweeper.storage=sqlite:///g.db ...`` to 5.3 GB resident (Optuna's
    load_study().trials, json-decoding 800 MB per attribute); a few more rows kill it. Expected: refused in
    one line naming hydra.sweeper.storage (a generated column: PRAGMA table_xinfo hidden 2/3), nothing run."""
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs import claim

    db = tmp_path / "optuna.db"
    _study_with_generated_attribute(db, 1000)  # small here: the check, not the blow-up, is tested
    with pytest.raises(UserError, match="hydra.sweeper.storage"):
        claim._check_study_database(db, f"hydra.sweeper.storage=sqlite:///{db}")


def test_an_optuna_database_with_an_index_on_an_expression_is_refused(tmp_path):
    """The same check admits any index: ``CREATE INDEX ix ON trial_values (length(hex(zeroblob(450000000 +
    trial_id))))`` in a 114 KB optuna.db makes SQLite compute a 900 MB string each time the sweep tells a
    trial's value (2.4 GB resident for one ``study.tell``, seconds each; nesting replace() grows both).
    Expected: an index on an expression (or any index Optuna does not make) refused naming
    hydra.sweeper.storage."""
    import sqlite3

    import optuna

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs import claim

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "optuna.db"
    optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="maximize")
    con = sqlite3.connect(db)
    con.execute("CREATE INDEX ix_boom ON trial_values (length(hex(zeroblob(450000000 + trial_id))))")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="hydra.sweeper.storage"):
        claim._check_study_database(db, f"hydra.sweeper.storage=sqlite:///{db}")


def test_an_optuna_database_with_an_expensive_check_constraint_is_refused(tmp_path):
    """A third spelling of the same: Optuna's own trial_values table re-made with one more
    ``CHECK (length(hex(zeroblob(450000000 + trial_id))) > 0)``: each ``study.tell`` of the sweep took
    2.4 GB and seconds. Refusing generated columns and expression indexes alone misses it; expected: a
    table whose definition is not Optuna's refused naming hydra.sweeper.storage."""
    import sqlite3

    import optuna

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs import claim

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "optuna.db"
    optuna.create_study(study_name="patchcore", storage=f"sqlite:///{db}", direction="maximize")
    con = sqlite3.connect(db)
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'trial_values'").fetchone()[0]
    con.execute("DROP TABLE trial_values")
    con.execute(sql.rstrip().rstrip(")") + ", CHECK (length(hex(zeroblob(450000000 + trial_id))) > 0))")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="hydra.sweeper.storage"):
        claim._check_study_database(db, f"hydra.sweeper.storage=sqlite:///{db}")
