"""Claim the run dir before Hydra writes into it: a completed run's record never changes.

``ClaimRunDir`` is the first Hydra callback; ``on_run_start`` runs before Hydra creates
``.hydra/*.yaml`` and the job log, so a refused run leaves the directory as it was
(``on_multirun_start`` does the same for the sweep dir before any job starts). The claim
is an exclusive create of ``.claim.json`` (pid, host, time): of two runs started together
into one directory exactly one wins. ``api.run`` claims its ``output_dir`` through the same
``claim_dir`` (a ``UserError``; the callback's ``claim`` turns it into one line and exit 2).
"""
from __future__ import annotations

import json
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pyimgano_hydra import RUN_RECORD_FILES
from pyimgano_hydra.errors import UserError, console_line, refuse
from pyimgano_hydra.files import open_regular
from pyimgano_hydra.interrupt import CLAIMED
from pyimgano_hydra.runs.layout import pin_sweep_dir
from pyimgano_hydra.runs.status import process_start, utc_now
from pyimgano_hydra.sweep.job_dirs import check_subdir, check_swept_interpolations, probe_subdir, swept_values

CLAIM_FILE = ".claim.json"
# Written by an earlier run (this version's or an older one's): the dir is taken.
RUN_MARKERS = (CLAIM_FILE, ".hydra", "status.json", "report.json", "predictions.jsonl", "multirun.yaml")
# Files a run or an inference writes at the top of its dir: no log file may take one's name.
OWN_RECORDS = (*RUN_MARKERS, "config.json", "summary.json", "report.html", "leaderboard.json", "leaderboard.csv")


def inside_a_run(run_dir: Path) -> Path | None:
    """The run dir that holds ``run_dir`` (its ``categories/``, ``.hydra/``...), if any."""
    for parent in run_dir.resolve().parents:
        if holds_a_run(parent):
            return parent
    return None


def holds_a_run(path: Path) -> bool:
    """``path`` holds a run's record (``RUN_RECORD_FILES``: a claim, a status.json or a report.json)."""
    return any(os.path.lexists(path / name) for name in RUN_RECORD_FILES)


def foreign_run(path: Path, own: Path) -> Path | None:
    """The run dir holding ``path`` (itself or a parent) when it is not ``own`` nor a sweep dir
    holding ``own``: where a run must not write its cache, study or launcher files."""
    path = Path(path).expanduser().resolve()  # missing/../<run>: the folders a writer would create
    mine = Path(own).absolute().resolve()
    for candidate in [path, *path.parents]:
        if holds_a_run(candidate):
            return None if candidate == mine or candidate in mine.parents else candidate
    return None


def refuse_foreign(key: str, value: object, own: Path, what: str) -> None:
    """``UserError`` naming ``key`` when the path ``value`` lies in another run dir (``foreign_run``)."""
    outer = foreign_run(Path(str(value)), own)
    if outer is not None:
        raise UserError(f"{key}={value}: lies inside the run dir {outer}; {what} is never written into "
                        f"another run: pick a path outside it")


# Folders a run (or an inference) writes into: one already there is a leftover or a trap.
WRITTEN_FOLDERS = ("categories", "maps", "masks")


def _nothing_to_write_through(run_dir: Path, key: str, resuming: bool = False) -> None:
    """An existing dir taken for a new run holds no symlink or hard-linked file (a ``categories`` link
    into a completed run had the new run overwrite its inspector and report; a ``<job>.log`` link had
    the log appended to any file) and none of the folders a run writes into; an unfinished run
    ``resuming`` may hold those folders, never a link, in ``.hydra/`` neither (Hydra rewrote a
    linked ``.hydra/hydra.yaml`` in place: a completed run's report.json became YAML)."""
    record = run_dir / ".hydra"  # a resumed job's Hydra rewrites its files in place (open "w")
    inner = sorted(record.iterdir()) if resuming and record.is_dir() and not record.is_symlink() else []
    for entry in [*sorted(run_dir.iterdir()), *inner]:
        linked = not entry.is_symlink() and entry.is_file() and entry.stat().st_nlink > 1
        special = not entry.is_symlink() and not entry.is_file() and not entry.is_dir()  # a FIFO: opening it blocks
        if entry.is_symlink() or linked or special or (
                entry.name in WRITTEN_FOLDERS and entry.parent == run_dir and not resuming):
            what = ("a symlink" if entry.is_symlink() else "a hard link" if linked else
                    "not a regular file" if special else "a folder a run writes into")
            name = console_line(str(entry.relative_to(run_dir)))
            raise UserError(f"{key}={console_line(str(run_dir))}: holds {name} ({what}); "
                            f"a new run never writes through or into what is there: pick a new {key}")


def claim(run_dir: Path, config_hash: str | None = None, resumable: bool = True, key: str = "hydra.run.dir",
          empty: bool = False) -> None:
    """``claim_dir`` for a Hydra callback: its refusal is one line on stderr and SystemExit(2)
    (an exception here would be only a warning to Hydra, which then goes on)."""
    try:
        claim_dir(Path(run_dir), config_hash, resumable, key, empty)
    except UserError as exc:
        refuse(str(exc))


def claim_dir(run_dir: Path, config_hash: str | None = None, resumable: bool = True, key: str = "hydra.run.dir",
              empty: bool = False) -> bool:
    """Create ``run_dir/.claim.json`` exclusively; True when claimed, False when ``run_dir`` holds
    an unfinished ``resumable`` run of this config nobody is writing (``runs/takeover.py``).
    Raises ``UserError`` naming ``key`` if taken, if it is a file, if it lies inside another run
    dir, or if it cannot be created (a dangling symlink, a read-only disk). ``empty`` (a sweep
    dir): Hydra writes each job's ``.hydra/`` before any callback of the job runs (a job dir landing
    on a run already there rewrote its record). An existing dir must hold nothing (a run replaced a
    user's own config.json there)."""
    try:
        return _claim(Path(run_dir), config_hash, resumable, empty, key)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{key}={run_dir}: cannot claim it ({reason}); pick a new {key}") from None


def _claim(run_dir: Path, config_hash: str | None, resumable: bool, empty: bool, key: str) -> bool:
    from pyimgano_hydra.runs.layout import RunDir
    from pyimgano_hydra.runs.takeover import may_take_over

    # what the path will name once written (missing/../<run>: the run, after mkdir makes ``missing``);
    # a link itself stays as given (a dangling one is refused below, never created through)
    if not os.path.islink(run_dir):
        run_dir = Path(os.path.realpath(run_dir))

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{key}={run_dir}: is a file, not a directory; pick a new {key}")
    if resumable and os.path.islink(run_dir):  # a run pins its dir itself: through a link it failed at once
        raise UserError(f"{key}={run_dir}: is a link; name the folder it points to ({os.path.realpath(run_dir)})")
    outer = inside_a_run(run_dir)
    if outer is not None:
        raise UserError(f"{key}={run_dir}: lies inside the run dir {outer}; runs are never written into "
                        f"another run: pick a new {key}")
    taken = next((name for name in RUN_MARKERS if (run_dir / name).exists()), None)
    if taken is None and run_dir.is_dir():
        with os.scandir(run_dir) as entries:
            first = next(entries, None)
        if first is not None:
            why = ("a sweep's job dirs could land on runs already there" if empty else
                   "the run's files (config.json, report.html...) would replace files of the same name")
            raise UserError(f"{key}={console_line(str(run_dir))}: exists and is not empty (it holds "
                            f"{console_line(first.name)}); {why}: pick a new {key}")
    if taken is None and run_dir.is_dir():
        _nothing_to_write_through(run_dir, key)
    if taken is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        now = utc_now()  # made before the claim: a signal right after it finds the run in CLAIMED
        owner = {"pid": os.getpid(), "pid_start": process_start(os.getpid()), "host": socket.gethostname(),
                 "claimed_utc": now, "updated_utc": now, "config_hash": config_hash}
        try:
            fd = os.open(run_dir / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            taken = CLAIM_FILE
        else:
            CLAIMED.append((run_dir, config_hash))
            with os.fdopen(fd, "w") as handle:
                json.dump(owner, handle)
            return True
    # A hash not known before the job (an interpolation only the job resolves) never takes over:
    # Hydra rewrites .hydra/ before the app could compare it (another config's record was rewritten).
    if resumable and config_hash is not None and taken == CLAIM_FILE:
        _record_dead_claim(run_dir, config_hash)
    if resumable and config_hash is not None and may_take_over(RunDir(run_dir), config_hash, key):
        _nothing_to_write_through(run_dir, key, resuming=True)  # its log is appended to, its .hydra rewritten
        _claim_takeover(run_dir, key)
        return False  # may_take_over raises for a run it must not touch
    raise UserError(f"{key}={run_dir}: already holds a run or sweep (it has {taken}); runs are never "
                    f"overwritten: pick a new {key}")


def _record_dead_claim(run_dir: Path, config_hash: str) -> None:
    """A claim of this config whose owner died before its run wrote status.json (killed between the
    claim and the run's start) gets a status.json ``interrupted``, made from the claim alone (every
    contender writes the same bytes, never over a status there): the run is then taken over like any
    interrupted one. A claim of another config, by a live process, or with no status yet but a report
    is left as it is."""
    from pyimgano_hydra.runs.status import INTERRUPTED, owner_gone
    from pyimgano_hydra.runs.trust import read_json_file
    from pyimgano_hydra.runs.writers import to_json, write_bytes_new

    if any(os.path.lexists(run_dir / name) for name in ("status.json", "report.json")):
        return
    try:
        claim = read_json_file(run_dir / CLAIM_FILE)
    except UserError:
        return  # being written this instant, or not ours to read
    if not isinstance(claim, dict) or claim.get("config_hash") != config_hash or not owner_gone(claim):
        return
    record = {"status": INTERRUPTED, "error": "stopped between its claim and its start",
              **{name: claim.get(name) for name in ("pid", "host", "claimed_utc", "config_hash")}}
    write_bytes_new(run_dir / "status.json", (to_json(record) + "\n").encode())


def _claim_takeover(run_dir: Path, key: str) -> None:
    """Of two jobs resuming one interrupted attempt together, exactly one goes on: an exclusive
    create of ``.takeover-<digest of that attempt's status.json>.json`` (both ran the run to the end
    and the second rewrote the first one's completed record); a later attempt has another status.
    A holder that died before its run wrote status.json is passed over by the next name in a chain
    (the digest of the dead holder's file), which every contender computes alike."""
    import hashlib

    from pyimgano_hydra.runs.status import owner_gone
    from pyimgano_hydra.runs.trust import read_json_file

    seed = json.dumps(read_json_file(run_dir / "status.json"), sort_keys=True, default=str)
    for _ in range(64):
        name = f".takeover-{hashlib.sha256(seed.encode()).hexdigest()[:16]}.json"
        try:
            fd = os.open(run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                holder = read_json_file(run_dir / name)
            except UserError:
                holder = None  # being written this instant: alive
            if not isinstance(holder, dict) or not owner_gone(holder):
                break
            seed = name + json.dumps(holder, sort_keys=True, default=str)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "pid_start": process_start(os.getpid()), "host": socket.gethostname(),
                       "updated_utc": utc_now()}, handle)
        return
    raise UserError(f"{key}={run_dir}: its interrupted run is being resumed by another process; "
                    f"runs are never overwritten: pick a new {key}")


def _task_hash(config: DictConfig) -> str | None:
    """The app's ``config_hash`` of the job config (``config`` without ``hydra``); None when
    it cannot be resolved here (the app then checks it)."""
    from omegaconf import OmegaConf, open_dict

    from pyimgano_hydra.app import config_hash

    try:
        task = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
        with open_dict(task):
            task.pop("hydra", None)
        return config_hash(task)
    except Exception:  # an interpolation that needs the job's runtime
        return None


@contextmanager
def _refused_on_error(key: str) -> Iterator[None]:
    """Any error while checking and claiming is one line and exit 2: Hydra turns a callback's
    exception into a warning and goes on, every check after it skipped (an unresolvable swept value
    skipped the claim of the sweep dir)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a refusal, whatever raised it
        refuse(f"{key}: cannot be checked ({console_line(' '.join(str(exc).split()))[:300]}); fix the command line")


class ClaimRunDir(Callback):
    """Hydra callback: claim ``hydra.run.dir`` (``hydra.sweep.dir``) before anything is written;
    ``resumable=false`` (infer): an unfinished run dir is never taken over either."""

    def __init__(self, resumable: bool = True) -> None:
        self.resumable = resumable

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _refused_on_error("hydra.run.dir"):
            # hydra.run.dir reads ${hydra:runtime.choices...}: set what run_job would set next;
            # ${now:} is cached in ``config``, so run_job resolves the same directory.
            HydraConfig.instance().set_config(config)
            _check_job_name(config)
            _check_config_sources(config)
            _check_output_subdir(config)
            _check_hydra_settings(config, Path(str(config.hydra.run.dir)))
            _check_log_files(config, Path(str(config.hydra.run.dir)), Path(str(config.hydra.run.dir)))
            claim(Path(str(config.hydra.run.dir)), _task_hash(config), self.resumable)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _refused_on_error("hydra.sweep.dir"):
            self._claim_sweep(config)

    def _claim_sweep(self, config: DictConfig) -> None:
        HydraConfig.instance().set_config(config)
        _check_job_name(config)
        check_swept_interpolations(config)
        _check_config_sources(config)
        _check_output_subdir(config)
        _check_hydra_settings(config, Path(str(config.hydra.sweep.dir)) / "0")
        check_subdir(config)
        # never resumable: a sweep root is not a run (an interrupted run dir took a whole sweep in)
        _check_log_files(config, Path(str(config.hydra.sweep.dir)) / "0", Path(str(config.hydra.sweep.dir)), sweep=True)
        _check_sweep_files(config)
        _check_launcher_cwd(config)
        _check_launcher_workers(config)
        claim(Path(str(config.hydra.sweep.dir)), resumable=False, key="hydra.sweep.dir", empty=True)
        pin_sweep_dir(Path(str(config.hydra.sweep.dir)))  # each job's dir name checks it (sweep/naming.py)


class NoHydraRecord(Callback):
    """Hydra callback of export, which claims nothing (it adds to a completed run, from any working
    dir): ``hydra.output_subdir`` stays null (``=<run>/.hydra`` rewrote that run's record)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _refused_on_error("hydra.run.dir"):
            self._check(config)

    def _check(self, config: DictConfig) -> None:
        from omegaconf import OmegaConf

        HydraConfig.instance().set_config(config)
        _check_job_name(config)
        _check_output_subdir(config)
        _check_hydra_settings(config, Path(str(config.hydra.run.dir)))
        run_dir = OmegaConf.select(config, "run_dir", default=None)
        _check_log_files(config, Path(str(config.hydra.run.dir)), Path(str(run_dir)) if run_dir else None)
        for key, filename, path in _log_files(config, Path(str(config.hydra.run.dir))):  # no claim checks them
            if path.is_symlink() or path.is_file() and path.stat().st_nlink > 1:
                refuse(f"{key}={filename}: is a link (or hard-linked); a log is never appended through one: "
                       "remove it, or run export from another folder")
        raw = OmegaConf.to_container(config.hydra, resolve=False).get("output_subdir")
        if raw is not None:
            refuse(f"hydra.output_subdir={raw}: export writes no Hydra record (it may run inside a run dir); "
                    "leave it null")


def _check_config_sources(config: DictConfig) -> None:
    """No config dir or search path in a run dir, also one set inside a config file."""
    from omegaconf import OmegaConf

    from pyimgano_hydra.config_sources import check_composed_sources

    try:
        check_composed_sources(OmegaConf.select(config, "hydra.runtime.config_sources", default=None) or [])
    except UserError as exc:
        refuse(str(exc))


def _check_launcher_workers(config: DictConfig) -> None:
    """joblib's ``n_jobs`` is at most this machine's CPUs (-1: all of them): 64 started 73 processes
    and 4.5 GB for a sweep of two jobs."""
    if "joblib" not in str(config.hydra.launcher.get("_target_", "")).lower():
        return
    value, cpus = config.hydra.launcher.get("n_jobs"), os.cpu_count() or 1
    if type(value) is not int or not (value == -1 or 1 <= value <= cpus):
        refuse(f"hydra.launcher.n_jobs={value}: must be -1 (all {cpus} CPUs) or an int in 1..{cpus}; "
               "more workers than CPUs only multiply the memory")


def _check_launcher_cwd(config: DictConfig) -> None:
    """Ray puts the driver's working dir on each worker's ``sys.path`` (the app drops it from its
    own): started inside a received run dir, its workers imported the run dir's modules; so did a
    ``runtime_env`` whose ``working_dir`` or ``py_modules`` named a run dir."""
    from omegaconf import OmegaConf

    from pyimgano_hydra import _inside_a_run_dir

    target = str(config.hydra.launcher.get("_target_", ""))
    if "ray" not in target.lower():
        return
    if _inside_a_run_dir(os.getcwd()):
        refuse(f"hydra.launcher._target_={target}: started inside the run dir {console_line(os.getcwd())}, whose "
               "modules Ray's workers would import; start the sweep from another folder")
    env = OmegaConf.select(config, "hydra.launcher.ray.init.runtime_env", default=None)
    env = OmegaConf.to_container(env, resolve=True) if OmegaConf.is_config(env) else env
    for key in ("working_dir", "py_modules"):
        values = (env or {}).get(key) if isinstance(env, dict) else None
        for value in values if isinstance(values, list) else [values] if values else []:
            if isinstance(value, str) and _inside_a_run_dir(os.path.realpath(os.path.expanduser(value))):
                refuse(f"hydra.launcher.ray.init.runtime_env.{key}={console_line(value)}: lies in a run dir, "
                       "whose modules Ray's workers would import; name your own code's folder")


SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_path(url: str) -> tuple[str, str | None]:
    """(``sqlite:///`` prefix, database file path) of an SQLAlchemy SQLite URL in any spelling
    (``sqlite+pysqlite:///``, a ``?timeout=5`` query, SQLite's ``file:<path>?uri=true`` form);
    (``""``, None) for another scheme or an in-memory database."""
    database = re.match(r"sqlite(\+\w+)?:///", url)  # sqlite+pysqlite:/// is the same file
    if database is None:
        return "", None
    value = url[database.end():].split("?", 1)[0]  # SQLAlchemy's grammar: the database ends at the first "?"
    value = value.removeprefix("file:")
    return database.group(0), (value if value not in ("", ":memory:") else None)


# the one spelling of a study file whose name the checks read as SQLite, SQLAlchemy and Optuna do
PLAIN_SQLITE = re.compile(r"sqlite(\+pysqlite)?:///(?!file:)[^?#%{}]+")


def _plain_storage(value: object) -> None:
    """``hydra.sweeper.storage`` is an SQLite file named plainly, or another database's URL without
    braces: SQLite decodes ``%XX``, drops a ``#...`` and reads ``file://localhost/`` in a ``file:`` URI,
    Optuna fills ``{SCHEMA_VERSION}``, and a config node builds any storage, so each named another
    file than the one checked (a handed study's trigger then had a pickled sampler state run)."""
    if not isinstance(value, str):
        refuse("hydra.sweeper.storage: give a URL such as sqlite:///<path>/optuna.db, or null; "
               "not a config node")
    if value.strip().lower().startswith("redis"):  # Optuna's RedisStorage unpickles every value it reads
        refuse(f"hydra.sweeper.storage={console_line(value)[:200]}: a Redis study store holds pickles, which Optuna "
               "loads (whoever can write the server runs code in the sweep): use an SQL database URL, e.g. "
               "sqlite:///<path>/optuna.db")
    if "{" in value or "}" in value or value.startswith("sqlite") and not PLAIN_SQLITE.fullmatch(value):
        refuse(f"hydra.sweeper.storage={console_line(value)[:200]}: name the study file plainly, "
               "sqlite:///<path>/optuna.db (no file: URI, query, %, # or braces)")


CMAES_WITH_STORAGE = ("the CMA-ES sampler keeps its state in the study as pickles, which Optuna unpickles at every "
                      "trial (whoever writes the study runs code): use hydra/sweeper/sampler=tpe with a storage, or "
                      "CMA-ES without one (storage=null)")


def _no_pickling_sampler(config: DictConfig, storage: object) -> None:
    """No CMA-ES sampler (anywhere in ``hydra.sweeper.sampler``) with a storage, whatever the sweeper
    (Hydra's own ``hydra/sweeper=optuna`` too): Optuna unpickles the CMA-ES state of the study's newest
    trial at every trial, so whoever else writes the study runs code."""
    from omegaconf import OmegaConf

    sampler = OmegaConf.select(config, "hydra.sweeper.sampler", default=None)
    node = OmegaConf.to_container(sampler, resolve=False) if isinstance(sampler, DictConfig) else sampler

    def targets(value: object) -> Iterator[str]:
        if isinstance(value, dict):
            for name, item in value.items():
                if name == "_target_" and isinstance(item, str):
                    yield item
                yield from targets(item)
        elif isinstance(value, list):
            for item in value:
                yield from targets(item)

    if any("cmaes" in target.lower() for target in targets(node)):
        refuse(f"hydra.sweeper.storage={console_line(str(storage))[:200]}: {CMAES_WITH_STORAGE}")


STUDY_SWEEPER = "hydra_plugins.pyimgano_hydra_sweepers.optuna_study.OptunaStudySweeper"


def _study_sweeper_only(config: DictConfig, storage: object) -> None:
    """A storage only under pyimgano_hydra's study sweeper (``hydra/sweeper=optuna_patchcore``): Hydra's own
    turns every param of a stored trial into a job override, unchecked (a trial another writer of the study
    added, param ``+model.x={_target_: joblib.load, ...}``, loaded a pickle in the job)."""
    from omegaconf import OmegaConf

    target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    if target != STUDY_SWEEPER:
        refuse(f"hydra.sweeper.storage={console_line(str(storage))[:200]}: a stored study's trials become job "
               f"overrides, checked against hydra.sweeper.params only by pyimgano_hydra's study sweeper (this is "
               f"{console_line(str(target))[:100]}): use hydra/sweeper=optuna_patchcore (or a preset built on it) "
               "with a storage")


def _check_sweep_files(config: DictConfig) -> None:
    """What a launcher or sweeper writes besides the job dirs (submitit's job pickles and logs, Ray's
    session tree, an Optuna sqlite study) lies in no other run dir; a study file that exists is a regular sqlite file
    (a FIFO hung the sweep; a run's report.json gave a line naming nothing)."""
    from omegaconf import OmegaConf

    own = Path(str(config.hydra.sweep.dir))
    storage = None
    for key, what in (("hydra.launcher.submitit_folder", "a launcher's job files"),
                      ("hydra.launcher.ray.init._temp_dir", "Ray's session files"),
                      ("hydra.launcher.temp_folder", "joblib's temp folder"),
                      ("hydra.sweeper.storage", "an Optuna study")):
        try:
            value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001 - Hydra's plugin reports its own config
            continue
        if key.endswith("storage") and value is not None:
            _plain_storage(value)
            storage = value
        if not isinstance(value, str):
            continue
        if key.endswith("storage"):
            scheme, value = sqlite_path(value)
            if value is None:
                continue
        # submitit's %j (job id) names folders made later; a study file is opened as written
        path = Path(value if key.endswith("storage") else value.split("%", 1)[0])
        try:
            refuse_foreign(key, value, own, what)
            if key.endswith("storage") and os.path.lexists(path):
                head = _head(path)
                if head and head != SQLITE_MAGIC:
                    raise UserError(f"{key}={scheme}{value}: is not an SQLite database; "
                                    "name a new file or an Optuna study database")
                if head:
                    _check_study_database(path, f"{key}={scheme}{value}")
        except UserError as exc:
            refuse(str(exc) if str(exc).startswith(key) else f"{key}={value}: {exc}")
        except OSError as exc:
            refuse(f"{key}={value}: cannot be read ({exc.strerror or type(exc).__name__})")
    if storage is not None:  # after the study file's own checks, which name what it holds
        _no_pickling_sampler(config, storage)
        _study_sweeper_only(config, storage)


STUDY_TABLES = ("studies", "trials", "trial_params", "trial_values", "trial_intermediate_values",
                "trial_user_attributes", "trial_system_attributes", "study_user_attributes",
                "study_system_attributes", "study_directions")
# rows in all tables of a handed-over Optuna database: 10,000 trials of 10 params (~120,000 rows) load in
# ~6 s on 2 cores; 300,000 failed trials never finished loading
MAX_STUDY_ROWS = 150_000
# and the text they hold: Optuna decodes every JSON value and copies it, ~100 bytes of memory per JSON value
# ('{', '[' or ','); one 30 MB attribute of 10 million empty dicts took 2.3 GB. 10,000 trials of 10 params
# hold ~15 MB, ~700,000 values
MAX_STUDY_TEXT = 32 * 2**20
MAX_STUDY_VALUES = 2_000_000


def _check_study_database(path: Path, where: str) -> None:
    """An Optuna database holds tables only, of bounded size: a view in place of ``trials`` (stored
    in a 110 KB file) made Optuna read rows for ever (20 GB), one in place of ``studies`` hung it."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UserError(f"{where}: not a readable SQLite database ({exc})") from None
    try:
        other = con.execute("SELECT type, name FROM sqlite_master WHERE type NOT IN ('table', 'index')").fetchone()
        if other:
            raise UserError(f"{where}: holds a {other[0]} ({console_line(str(other[1]))[:80]}); an Optuna "
                            "database holds tables only: name a new file or study")
        reference = _optuna_schema()
        for kind, name, table, sql in con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"):
            if reference.get((kind, name)) != (table, " ".join(str(sql).split()) if sql else None):
                raise UserError(f"{where}: its {kind} {console_line(str(name))[:80]} is not as this Optuna makes it "
                                "(a generated column, check or expression index is evaluated on every read; or "
                                "another Optuna version made it): name a new file or study")
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = sum(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                   for table in STUDY_TABLES if table in tables)
        if rows > MAX_STUDY_ROWS:
            raise UserError(f"{where}: its tables hold {rows:,} rows, more than the {MAX_STUDY_ROWS:,} a sweep "
                            "loads in seconds; name a new file or study")
        text, values = _study_text(con, [table for table in STUDY_TABLES if table in tables], where)
        if text > MAX_STUDY_TEXT or values > MAX_STUDY_VALUES:
            raise UserError(f"{where}: its tables hold {text / 2**20:.0f} MB of text, {values:,} JSON values (at "
                            f"most {MAX_STUDY_TEXT // 2**20} MB, {MAX_STUDY_VALUES:,}: Optuna holds each value "
                            "decoded, twice); name a new file or study")
    except sqlite3.Error as exc:
        raise UserError(f"{where}: not a readable SQLite database ({exc})") from None
    finally:
        con.close()


_STORED_AS = {"INTEGER": "'integer'", "FLOAT": "'real', 'integer'"}  # by declared type; any other: text


def _study_text(con, tables: list[str], where: str) -> tuple[int, int]:
    """(characters, JSON values) in every column of ``tables``: a value counted by its ``{``, ``[`` or ``,``.
    A value of another type than its column's is refused (SQLite keeps one: a trial value 'abc' was the
    study's best)."""
    text = values = 0
    for table in tables:  # names from STUDY_TABLES, columns from the schema checked as Optuna's own
        for column, declared in [row[1:3] for row in con.execute(f"PRAGMA table_info({table})")]:
            quoted = '"' + column.replace('"', '""') + '"'
            stripped = f"replace(replace(replace({quoted}, '{{', ''), '[', ''), ',', '')"
            size, count, odd = con.execute(
                f"SELECT total(length({quoted})), total(length({quoted}) - length({stripped})), "
                f"total(typeof({quoted}) NOT IN ('null', {_STORED_AS.get(declared, repr('text'))})) FROM {table}"
            ).fetchone()
            if odd:
                raise UserError(f"{where}: {table}.{column} holds {int(odd):,} value(s) that are not "
                                f"{declared} (as Optuna writes them); name a new file or study")
            text, values = text + int(size), values + int(count)
    return text, values


_OPTUNA_SCHEMA: dict = {}


def _optuna_schema() -> dict:
    """{(type, name): (table, its CREATE statement)} of the tables and indexes this Optuna creates in a
    new SQLite database (made once, in a temporary folder)."""
    if not _OPTUNA_SCHEMA:
        import sqlite3
        import tempfile

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with tempfile.TemporaryDirectory() as folder:
            storage = optuna.storages.RDBStorage(f"sqlite:///{folder}/reference.db")
            storage.engine.dispose()
            con = sqlite3.connect(f"{folder}/reference.db")
            try:
                _OPTUNA_SCHEMA.update({(kind, name): (table, " ".join(sql.split()) if sql else None) for
                                       kind, name, table, sql in con.execute(
                                           "SELECT type, name, tbl_name, sql FROM sqlite_master")})
            finally:
                con.close()
    return _OPTUNA_SCHEMA


def _head(path: Path) -> bytes:
    """The first 16 bytes of a regular file, never blocking on a FIFO."""
    with open_regular(path, "name a new file or an Optuna study database") as handle:
        return handle.read(16)


def _job_probe(config: DictConfig, job_dir: Path) -> DictConfig | None:
    """A copy of ``config`` whose ``hydra.runtime.output_dir`` is ``job_dir``, to resolve what a job
    there resolves (``${hydra:...}`` spelled ``${hydra....}``); None for a config Hydra reports itself."""
    from omegaconf import OmegaConf, open_dict

    try:
        probe = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
        with open_dict(probe):
            probe.hydra.runtime.output_dir = str(job_dir.absolute())
        return probe
    except Exception:  # noqa: BLE001 - Hydra reports a broken config itself
        return None


def _log_files(config: DictConfig, job_dir: Path) -> list[tuple[str, str, Path]]:
    """(key, filename, path) of Hydra's log files (``hydra.job_logging`` / ``hydra.hydra_logging``
    handlers' ``filename``) as a job in ``job_dir`` resolves them."""
    from omegaconf import OmegaConf

    probe = _job_probe(config, job_dir)
    if probe is None:
        return []
    found = []
    chdir = OmegaConf.select(probe, "hydra.job.chdir", default=False) is True
    for section in ("job_logging", "hydra_logging"):
        handlers = OmegaConf.select(probe, f"hydra.{section}.handlers", default=None)
        for name in handlers.keys() if isinstance(handlers, DictConfig) else []:
            key = f"hydra.{section}.handlers.{name}.filename"
            node = handlers[name]
            text = OmegaConf.to_container(node, resolve=False).get("filename") if isinstance(node, DictConfig) else None
            if isinstance(text, str) and "${hydra:" in text:  # the job's HydraConfig: this probe's hydra node
                node.filename = text.replace("${hydra:", "${hydra.")
            try:
                filename = OmegaConf.select(probe, key, default=None, throw_on_resolution_failure=True)
            except Exception as exc:  # noqa: BLE001 - unchecked, it could name any file
                refuse(f"{key}: cannot be resolved before the job starts ({console_line(str(exc))[:200]}); "
                       "name the log file with ${hydra.runtime.output_dir} or a plain path")
            if filename is not None:
                path = Path(str(filename)).expanduser()
                if chdir and not path.is_absolute():  # hydra.job.chdir: the job opens it from its own dir
                    path = job_dir / path
                found.append((key, str(filename), path))
    return found


_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
# what hydra.job.env_set may set: thread counts, device choice, locale, our cache root. Any other variable may
# decide what code a child process loads (PYTHONPATH, LD_PRELOAD, OPENSSL_CONF's provider module in the decode
# workers, NUMBA_CACHE_DIR's pickles, HOME's user site): a list of those was always one short
_SETTABLE_ENV = re.compile(r"(OMP|MKL|OPENBLAS|NUMEXPR|VECLIB_MAXIMUM|BLIS)_NUM_THREADS|CUDA_VISIBLE_DEVICES|"
                           r"CUDA_DEVICE_ORDER|CUBLAS_WORKSPACE_CONFIG|PYTORCH_CUDA_ALLOC_CONF|TOKENIZERS_PARALLELISM|"
                           r"PYTHON(HASHSEED|UNBUFFERED|IOENCODING|FAULTHANDLER|DONTWRITEBYTECODE)|LANG|LC_[A-Z]+|TZ|"
                           r"PYIMGANO_CACHE")


MAX_JOB_NAME_BYTES = 250  # + ".log", Hydra's log file in the run dir: a file name holds 255 bytes


def _check_job_name(config: DictConfig) -> None:
    """``hydra.job.name`` names the job's log file: no NUL, short enough for a file name (a 300-character
    one failed as 'Unable to configure handler', a NUL as 'hydra.run.dir: cannot be checked')."""
    from omegaconf import OmegaConf

    try:
        name = OmegaConf.select(config, "hydra.job.name", default=None)
    except Exception:  # noqa: BLE001 - Hydra reports its own config
        return
    if isinstance(name, str) and ("\x00" in name or "/" in name or len(os.fsencode(name)) > MAX_JOB_NAME_BYTES):
        refuse(f"hydra.job.name={console_line(name)[:80]}: names the job's log file (<name>.log): at most "
               f"{MAX_JOB_NAME_BYTES} bytes, no NUL or '/'")


def _check_hydra_settings(config: DictConfig, job_dir: Path) -> None:
    """Hydra's logging dicts as written, and ``hydra.job.env_set`` as a job in ``job_dir`` sets it
    (``_check_logging``, ``_check_env_set``)."""
    from omegaconf import OmegaConf

    hydra = OmegaConf.to_container(config.hydra, resolve=False)
    _check_logging(hydra)
    _check_env_set(hydra, config, job_dir)


def _check_logging(hydra: dict) -> None:
    """Hydra's logging dicts name their files by ``filename`` only (checked by ``_check_log_files``):
    logging.config's ``.`` properties (``baseFilename``), ``()`` factories of handlers and filters and
    ``cfg://`` / ``ext://`` lookups set a handler's file past that check (a preset appended the log to
    a completed run)."""
    for section in ("job_logging", "hydra_logging"):
        tree = hydra.get(section)
        for key, name, value in _leaves(tree, f"hydra.{section}"):
            if name == "()" and key.startswith(f"hydra.{section}.formatters."):
                continue  # a formatter class (ours: logs.ConsoleFormatter) opens no file
            if name in (".", "()"):
                refuse(f"{key}: logging.config {'properties' if name == '.' else 'factories'} are not taken "
                       "(they could point a log into a run); name a log file with handlers.<name>.filename")
            if isinstance(value, str) and value.startswith(("cfg://", "ext://")) and value not in _STREAMS:
                refuse(f"{key}={value}: only ext://sys.stdout and ext://sys.stderr are taken (a lookup could "
                       "point a log into a run); write the value itself")


def _leaves(tree: Any, key: str) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, its last name, value) of every node below ``tree`` (a plain config tree)."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            yield f"{key}.{name}", name, value
            yield from _leaves(value, f"{key}.{name}")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield f"{key}[{index}]", index, value
            yield from _leaves(value, f"{key}[{index}]")


def _check_env_set(hydra: dict, config: DictConfig, job_dir: Path) -> None:
    """``hydra.job.env_set`` sets only ``_SETTABLE_ENV`` (``PYTHONPATH``, ``LD_PRELOAD``, ``OPENSSL_CONF`` decide
    the code a child process loads): Hydra sets it inside the job, after every check of the working dir and paths
    (a preset's PYTHONPATH into a received run dir ran its sitecustomize.py in the decode workers).
    A value is checked as the job resolves it (an interpolation spelled a path into a run)."""
    from omegaconf import OmegaConf

    env = (hydra.get("job") or {}).get("env_set") or {}
    chdir = (hydra.get("job") or {}).get("chdir") is True
    probe = None
    for name, value in env.items() if isinstance(env, dict) else []:
        key = f"hydra.job.env_set.{console_line(str(name))[:80]}"
        if not _SETTABLE_ENV.fullmatch(str(name)):
            refuse(f"{key}: may decide what code child processes load (PYTHONPATH, LD_*, OPENSSL_CONF, NUMBA_*...); "
                   "a config sets only thread counts, CUDA device settings, locale and PYIMGANO_CACHE: set others "
                   "in the shell that starts the run")
        if isinstance(value, str) and "${" in value:  # Hydra resolves it within its own section, as a string
            probe = probe or _job_probe(OmegaConf.create({"hydra": hydra}), job_dir)
            value = _as_the_job_resolves(probe, name, value, key)
        for part in str(value).split(os.pathsep) if value is not None else []:
            path = Path(part).expanduser()
            path = job_dir / path if chdir and not path.is_absolute() else path  # the job's own folder
            outer = foreign_run(path.absolute(), job_dir) if part else None  # a run dir itself too (LC_ALL=<run>)
            if outer is not None:
                refuse(f"{key}={console_line(str(value))[:200]}: names a path inside the run dir {outer}; "
                       "a library reading it would take files from (or write into) another run")


def _as_the_job_resolves(probe: DictConfig | None, name: str, text: str, key: str) -> str:
    """``hydra.job.env_set.<name>`` (``text``) resolved as the job does; refused when it cannot be."""
    try:
        if probe is None:
            raise ValueError("the config does not compose")
        node = probe.hydra.job.env_set
        node[name] = text.replace("${hydra:", "${hydra.")
        value = node[name]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"it resolves to {type(value).__name__}, not a string")
        return str(value)
    except Exception as exc:  # noqa: BLE001 - unchecked, it could name any file
        refuse(f"{key}: cannot be resolved before the job starts ({console_line(str(exc))[:200]}); "
               "give a plain value")


def _check_log_files(config: DictConfig, job_dir: Path, own: Path | None, sweep: bool = False) -> None:
    """Hydra's log files, as job ``job_dir`` resolves them, lie in no run dir but ``own``:
    =<completed run>/status.json appended log lines to it, and infer then refused that run. In a
    sweep (``own`` its dir) each job's log lies in its own job dir or outside the sweep dir: one
    in ``${hydra.sweep.dir}/0`` had job 1 append its log to job 0's completed config.json."""
    probes = [job_dir, job_dir.parent / "1"] if sweep else [job_dir]
    for probe in probes:
        for key, filename, path in _log_files(config, probe):
            if os.path.lexists(path) and not path.is_symlink() and not path.is_file():  # links: the claim's
                refuse(f"{key}={filename}: is not a regular file (a folder or a FIFO); "
                       f"a log is only ever appended to a file: remove it or pick a new run dir")
            real = Path(os.path.realpath(path))
            if sweep and own is not None and own.resolve() in real.parents and \
                    probe.resolve() not in real.parents:
                refuse(f"{key}={filename}: lies in the sweep dir outside the job's own dir, so every job "
                       "would append to it (or to another job's files); keep it under ${hydra.runtime.output_dir}")
            if real.parent == probe.resolve() and real.name in OWN_RECORDS:
                refuse(f"{key}={filename}: is the run's own {real.name}; a log never replaces a run's record: "
                       "name another file (the default is <run dir>/<job name>.log)")
            outer = inside_a_run(path.absolute())
            mine = own is not None and (outer == own.resolve() or sweep and own.resolve() in (outer or own).parents)
            if outer is None or mine:
                continue  # no run, ``own``, or a run inside the sweep dir ``own`` (the claim refuses it, by name)
            refuse(f"{key}={filename}: lies inside the run dir {outer}; a log is never written into another run")


def _check_output_subdir(config: DictConfig) -> None:
    """``hydra.output_subdir`` (``.hydra``; null: none) is where Hydra writes each run's record, before
    any callback of the job: it must stay inside the run dir (``/<run>/.hydra`` or ``../<run>/.hydra``
    rewrote a completed run's overrides.yaml); ``hydra.job.name`` names the log file in it."""
    from omegaconf import OmegaConf

    name = OmegaConf.select(config, "hydra.job.name", default=None)
    if name is not None and (os.sep in str(name) or (os.altsep or os.sep) in str(name) or str(name) in ("", ".", "..")):
        # <run dir>/<job name>.log: ../<run>/pyimgano_hydra appended this run's log to a completed run's
        refuse(f"hydra.job.name={name}: must be a plain name (it names <run dir>/<name>.log), not a path")
    raw = OmegaConf.to_container(config.hydra, resolve=False).get("output_subdir")
    if raw is None:
        return
    resolved = [probe_subdir(config, key, value, name="hydra.output_subdir") for key, value in swept_values(config)]
    if any(Path(p).is_absolute() or ".." in Path(p).parts for p in [str(raw), *resolved]):
        refuse(f"hydra.output_subdir={raw}: must be a relative folder inside the run dir (default .hydra)")
