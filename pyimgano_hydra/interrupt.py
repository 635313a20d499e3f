"""SIGTERM, SIGHUP, Ctrl-C and the other signals that end a process: raised as :class:`Interrupted` inside a run, one line and 128+signal at exit."""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyimgano_hydra.sweep.cluster import under_submitit


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C) during a run; ``signum`` is the signal's number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    def __reduce__(self):  # a joblib worker's job sends it back pickled: by number, not by name
        return (type(self), (self.signum,))


_RAISED = []  # an interrupt was raised: later signals must not break the cleanup that writes status.json
CLAIMED: list = []  # (run dir, config hash) claimed by runs/claim.py in this process
COMPLETED: list = []  # the run of this process (the last one started) was recorded completed
_PENDING: list = []  # signals that arrived inside ``interrupts_deferred``
ON_INTERRUPT: list = []  # callables run once an interrupted run is recorded (a sweep's leaderboard)


def _raise_once(signum, frame):
    if not _RAISED:
        _RAISED.append(signum)
        raise Interrupted(signum)


def mark_unstarted_runs(status: str, why: str) -> None:
    """Runs claimed by this process that never wrote status.json are recorded ``status``: a run
    interrupted or failed (Hydra's job log config) after its claim but before the app started."""
    from pyimgano_hydra.runs.layout import sweep_dir_swapped
    from pyimgano_hydra.runs.status import write_status

    for run_dir, config_hash in CLAIMED:
        if config_hash is None and sweep_dir_swapped(run_dir):  # never through a link to another run
            continue
        path = run_dir / "status.json"
        if not path.exists():
            what = "before it started" if config_hash is not None else "(the sweep; see leaderboard.json)"
            write_status(path, status, error=f"{why} {what}", config_hash=config_hash)
        if config_hash is None:
            mark_unstarted_jobs(run_dir, status, why)


def mark_unstarted_jobs(sweep_dir: Path, status: str, why: str) -> None:
    """The job dirs of ``sweep_dir`` Hydra made (its record written) before the app ran: recorded ``status``."""
    from pyimgano_hydra.runs.status import write_status

    for folder, dirs, _ in _sweep_folders(sweep_dir):
        if folder != sweep_dir and ".hydra" in dirs and not (folder / "status.json").exists():
            write_status(folder / "status.json", status, error=f"{why} before the job started")


def _sweep_folders(sweep_dir: Path, limit: int = 10000) -> Iterator[tuple[Path, list[str], list[str]]]:
    """(folder, its folder names, its file names) for the first ``limit`` folders of a sweep dir,
    not following links nor entering a job's ``categories/``, ``.hydra/`` or ``.submitit/``."""
    from pyimgano_hydra.files import walk

    for count, (folder, dirs, files) in enumerate(walk(sweep_dir)):
        if count >= limit:
            return
        yield Path(folder), list(dirs), files
        dirs[:] = [d for d in dirs if d not in ("categories", ".hydra", ".submitit")]


def _mark_unstarted_run(signum: int) -> None:
    from pyimgano_hydra.runs.status import INTERRUPTED

    mark_unstarted_runs(INTERRUPTED, f"interrupted ({signal.Signals(signum).name})")


def _mark_abandoned_jobs(signum: int, wait_s: float = 5.0, limit: int = 10000) -> None:
    """A sweep stopped in its launching process: the jobs its local workers ran (joblib's loky
    processes are killed without running their handlers) are marked interrupted once their
    process is gone; a job of another host or a live process is left as it is."""
    from pyimgano_hydra.runs.status import INTERRUPTED

    mark_abandoned_jobs(INTERRUPTED, f"interrupted ({signal.Signals(signum).name}): its sweep was stopped",
                        wait_s, limit)


def mark_abandoned_jobs(state: str, why: str, wait_s: float = 5.0, limit: int = 10000) -> None:
    """The jobs of this process's sweeps left ``running`` by a local process that is gone (killed
    loky workers) are recorded ``state`` with ``why``."""
    import os
    import socket
    import time

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.layout import sweep_dir_swapped
    from pyimgano_hydra.runs.status import RUNNING, owner_gone, write_status
    from pyimgano_hydra.runs.trust import read_json_file

    deadline = time.monotonic() + wait_s
    for sweep_dir, config_hash in CLAIMED:
        if config_hash is not None or sweep_dir_swapped(sweep_dir):  # a single run: its own handler marked it
            continue
        for folder, _, files in _sweep_folders(sweep_dir, limit):
            if "status.json" not in files:
                continue
            path = folder / "status.json"
            try:
                record = read_json_file(path)
            except UserError:
                continue
            if not isinstance(record, dict) or record.get("status") != RUNNING or \
                    record.get("host") != socket.gethostname() or record.get("pid") == os.getpid():
                continue
            while not owner_gone(record) and time.monotonic() < deadline:
                time.sleep(0.1)
            if owner_gone(record):
                write_status(path, state, error=why, config_hash=record.get("config_hash"))


@contextmanager
def workers_may_die() -> Iterator[None]:
    """Around a launch: when the launcher's worker processes end under it (SIGKILL, an OOM kill,
    a signal to one loky worker), the jobs they left ``running`` are recorded failed and the
    error is one line naming the launcher."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ not in ("TerminatedWorkerError", "BrokenProcessPool"):
            raise
        from pyimgano_hydra.errors import UserError
        from pyimgano_hydra.runs.status import FAILED

        from pyimgano_hydra.runs.layout import sweep_dir_swapped

        line = " ".join(str(exc).split())[:200]
        mark_abandoned_jobs(FAILED, f"failed: its worker process ended ({line})")
        for sweep_dir, config_hash in CLAIMED:  # a job its worker never started: before the leaderboard reads it
            if config_hash is None and not sweep_dir_swapped(sweep_dir):
                mark_unstarted_jobs(sweep_dir, FAILED, f"failed: its worker process ended ({line})")
        raise UserError(f"hydra.launcher: a worker process ended under the sweep ({line}); the jobs it left "
                        "running are recorded failed") from exc


@contextmanager
def _handling(signums: list[int], handler) -> Iterator[None]:
    """``handler`` for ``signums`` within the block, then the previous ones (main thread only; not
    under submitit, which owns SIGTERM and the requeue signal: see ``sweep/cluster.py``)."""
    if under_submitit():
        yield
        return
    try:
        previous = {signum: signal.signal(signum, handler) for signum in signums}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Signals arriving inside the block (the writes that record a run as finished) take effect at
    its end: a SIGTERM between report.json and status.json left a completed report with a
    ``running`` status, which neither infer nor a resume would take."""
    with _handling([signal.SIGINT, *_caught()], _defer):
        yield
    if _PENDING and not _RAISED:
        _RAISED.append(_PENDING[0])
        raise Interrupted(_PENDING[0])


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM (and SIGHUP...) raises :class:`Interrupted` (main thread only), and
    so does Ctrl-C where Python's own handler has it: once, so that Ctrl-C held down never breaks
    the cleanup that records the run (its status.json was left ``running``)."""
    from pyimgano_hydra import _stop_while_starting

    starting = (signal.default_int_handler, _stop_while_starting)
    ctrl_c = [signal.SIGINT] if signal.getsignal(signal.SIGINT) in starting else []
    if signal.getsignal(signal.SIGTERM) is not _raise_once:  # a new run, not one inside the entry point's
        _RAISED.clear()  # block: an earlier run's interrupt (api.run in a notebook) deafened every later one
        _PENDING.clear()
    with _handling(_caught() + ctrl_c, _raise_once):
        yield


def _defer(signum, frame):
    _PENDING.append(signum)


def _caught() -> list[int]:
    """SIGTERM; SIGHUP (a closed terminal or ssh session) and SIGQUIT (Ctrl-\\, which left
    status.json ``running``) unless ignored (``nohup``); SIGUSR1, SIGUSR2, SIGALRM and SIGXCPU
    (whose default also ends the process) unless some other handler owns them."""
    extra = [getattr(signal, name) for name in ("SIGHUP", "SIGQUIT") if hasattr(signal, name)]
    unowned = [getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGXCPU") if hasattr(signal, name)]
    return ([signal.SIGTERM] + [s for s in extra if signal.getsignal(s) is not signal.SIG_IGN]
            + [s for s in unowned if signal.getsignal(s) in (signal.SIG_DFL, _raise_once, _defer)])


def _sweep_claimed() -> bool:
    from pyimgano_hydra.sweep.naming import read_sweep_file

    return any(config_hash is None and read_sweep_file(folder) is not None for folder, config_hash in CLAIMED)


@contextmanager
def exit_on_interrupt(what: str, recorded: bool = True) -> Iterator[None]:
    """At an entry point: an interrupt prints one line and exits 128 + signal (143, 130);
    ``recorded=False``: ``what`` keeps no status.json (an export)."""
    try:
        with sigterm_as_interrupt():  # from the start: Hydra's setup runs before the job's own handler
            yield
        for signum in [signal.SIGINT, *_caught()]:  # done and recorded: a signal during the interpreter's
            signal.signal(signum, signal.SIG_IGN)   # teardown must not turn it into a death by signal
    except KeyboardInterrupt as exc:
        _RAISED.append(signal.SIGINT)
        for signum in [signal.SIGINT, *_caught()]:  # one line, one exit code, whatever follows
            signal.signal(signum, signal.SIG_IGN)
        signum = getattr(exc, "signum", int(signal.SIGINT))
        _mark_unstarted_run(signum)
        _mark_abandoned_jobs(signum)
        for hook in ON_INTERRUPT:
            try:
                hook()
            except Exception:  # noqa: BLE001 - the one line and the exit code come first
                pass
        if _sweep_claimed():
            what, recorded = "the sweep", True  # its jobs that completed (COMPLETED) keep their records
        done = bool(COMPLETED) and what != "the sweep"
        state = ("had completed (its status.json says so)" if done else
                 "stopped; what it had written is complete, what it had not is absent" if not recorded else
                 "marked interrupted in its status.json" if CLAIMED else "stopped before its dir was made")
        print(f"interrupted: {signal.Signals(signum).name}; {what} {state}", file=sys.stderr)
        sys.exit(128 + signum)
