"""Entry-point helpers: Hydra's error reports folded into one line (unless HYDRA_FULL_ERROR=1)."""
from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyimgano_hydra.errors import UserError, console_line, print_error, refuse
from pyimgano_hydra.files import shown

_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
_CHATTY_LOGGERS = ("faiss", "faiss.loader", "timm", "matplotlib", "PIL", "urllib3", "fsspec", "filelock",
                   "git", "numba", "mlflow", "alembic", "optuna")


HYDRA_LOGGING_CHOICES = ("default", "disabled", "none", "hydra_debug")  # Hydra's own: console only


def refuse_unsafe_arguments(argv: list[str]) -> None:
    """Refuse (exit 2) what acts before any check of ours: Hydra's ``--experimental-rerun <file>``
    (or any abbreviation argparse takes, ``--exp=``) unpickles the file, so a run dir's
    ``.hydra/config.pickle`` would run its code; ``hydra.hydra_logging`` handlers open while Hydra
    composes the config (a FileHandler with mode w truncated a completed run's report.json); a
    config folder, search path or group option reading a run dir's YAML."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--e") and "--experimental-rerun".startswith(flag):
            refuse(f"{flag}: loads a pickle, which runs code from the file; re-run with the overrides "
                   "in <run dir>/.hydra/overrides.yaml instead")
        key, _, value = arg.lstrip("+~").partition("=")
        if (key == "hydra.hydra_logging" or key.startswith("hydra.hydra_logging.handlers")
                or key == "hydra/hydra_logging" and value not in HYDRA_LOGGING_CHOICES):
            refuse(f"{key}: Hydra opens its own log handlers before any check, so they could write into a run; "
                   "set file handlers under hydra.job_logging, which is checked")
    from pyimgano_hydra.config_sources import check_config_arguments

    try:  # Hydra instantiates a config's callbacks before any callback of ours could check it
        check_config_arguments(argv)
    except UserError as exc:
        refuse(str(exc))


def quiet_third_party_logs() -> None:
    """Keep libraries' INFO chatter (faiss's CPU-feature probing) out of Hydra's console log."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped_hydra_records() -> None:
    """Hydra's own log lines (the launcher's ``#0 : dataset.category=...``) show control characters
    escaped, as ours do: a swept name from a received preset never drives the terminal."""
    make = logging.getLogRecordFactory()
    if getattr(make, "escapes", False):
        return

    def record(*args, **kwargs) -> logging.LogRecord:
        made = make(*args, **kwargs)
        if made.name.startswith("hydra"):
            text = made.getMessage()
            if _CONTROL.search(text):
                made.msg, made.args = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text), ()
        return made

    record.escapes = True
    logging.setLogRecordFactory(record)


def tolerant_console() -> None:
    """File names that are not UTF-8 print as ``\\xff`` escapes instead of crashing the run; a
    stdout or stderr that cannot be written (its reader went away: ``| head -1``; a full disk:
    ``2>/dev/full``) drops what follows: the console never fails a run nor loses its results."""
    _escaped_hydra_records()
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if not isinstance(sys.stdout, _ReaderMayGo):
        sys.stdout = _ReaderMayGo(sys.stdout)
    if not isinstance(sys.stderr, _ReaderMayGo):
        sys.stderr = _ReaderMayGo(sys.stderr)


class _ReaderMayGo:
    """Console stream proxy: after a failed write (broken pipe, full disk, I/O error) every write is
    dropped, and the descriptor points at /dev/null so that the interpreter's last flush succeeds too."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except OSError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except OSError:
                self._drop()

    def _drop(self) -> None:
        self._gone = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _fold_traceback(text: str) -> str:
    """'Error executing job ... / Traceback ... / Exc: msg' -> one line."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(_HINT)]
    exception = next((line.strip() for line in reversed(lines) if not line.startswith((" ", "\t"))
                      and not line.startswith(("Traceback", "Error executing job"))), "failed")
    job = next((line.strip() for line in lines if line.startswith("Error executing job")), "")
    job = job.replace("Error executing job with overrides: ", "job ")
    return f"error: {job + ': ' if job else ''}{exception}"


def fold_error(text: str) -> str:
    """Hydra's multi-line error report -> 'error: <first line>: <detail>'; an error of ours raised
    inside Hydra's config loading or a launcher's worker, by its own words."""
    text = shown(text)
    line = _fold(text)
    ours = re.findall(r"pyimgano_hydra\.errors\.\w+: (.+)", text)
    if ours and "check full logs" in line:  # submitit's job error: the cause is in its trace
        return console_line("error: " + ours[-1].strip())
    return console_line(re.sub(r"pyimgano_hydra\.errors\.\w+: ", "", line))  # a typed or received name's escapes


def _fold(text: str) -> str:
    if "Traceback (most recent call last)" in text:
        return _fold_traceback(text)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(_HINT)]
    lines = [line for line in lines if not line.startswith(("object_type=", "Traceback", "File \""))]
    if not lines:
        return "error: failed (set HYDRA_FULL_ERROR=1 for details)"
    head = lines[0][len("error: "):] if lines[0].startswith("error: ") else lines[0]
    head = head.replace("'.:", "':").rstrip(".")
    detail = []
    for line in lines[1:]:
        if line.startswith("Config search path"):
            break
        if not line.startswith(("full_key:", "To append")):
            detail.append(line)
    return "error: " + " ".join([head.rstrip(":") + (":" if detail else "")] + detail)


class _HydraReportCatcher:
    """stderr proxy: holds back what Hydra's ``run_and_report`` writes, passes everything else."""

    def __init__(self, stream):
        self._stream = stream
        self.held: list[str] = []

    @staticmethod
    def _reporting() -> bool:
        """True while Hydra reports an error: its reporter (or a traceback printer it called)
        writes, as opposed to the job itself running inside the reporter's ``try``."""
        frame = sys._getframe(2)  # noqa: SLF001 - identify Hydra's reporter by its frames
        caller = frame.f_code
        if "hydra" in caller.co_filename and caller.co_name in ("run_and_report", "return_value"):
            return True
        while frame is not None:
            if frame.f_code.co_filename.endswith("traceback.py"):
                return True
            frame = frame.f_back
        return False

    def write(self, text: str) -> int:
        if self._reporting():
            self.held.append(text)
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Inside a Hydra job: a UserError prints ``error: …`` and exits with its code (raised under HYDRA_FULL_ERROR=1)."""
    try:
        yield
    except UserError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print_error(str(exc))
        sys.exit(exc.exit_code)


def _record_being_written() -> str:
    """The ``.hydra/`` file Hydra was writing when it failed: the last of its record files (written in
    this order) in the run dir this process claimed last."""
    from pyimgano_hydra.interrupt import CLAIMED

    if not CLAIMED:
        return ".hydra"
    record = Path(CLAIMED[-1][0]) / ".hydra"
    written = [name for name in ("config.yaml", "hydra.yaml", "overrides.yaml") if (record / name).exists()]
    return shown(str(record / written[-1] if written else record))


def _record_unstarted_failure(error: str) -> None:
    """A run (or sweep job) claimed and then failed by Hydra before the app recorded it: status failed."""
    from pyimgano_hydra.interrupt import mark_unstarted_runs
    from pyimgano_hydra.runs.status import FAILED

    mark_unstarted_runs(FAILED, f"failed ({error[:300]})")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Run a Hydra entry point; on failure print one line and exit with the same code."""
    tolerant_console()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        try:
            yield
        except SystemExit as exc:
            if exc.code not in (0, None):
                _record_unstarted_failure(f"exit {exc.code}")
            raise
        except Exception as exc:
            _record_unstarted_failure(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            raise
        return
    real = sys.stderr
    catcher = _HydraReportCatcher(real)
    sys.stderr = catcher
    try:
        yield
    except SystemExit as exc:
        sys.stderr = real
        if catcher.held and exc.code not in (0, None):
            line = fold_error("".join(catcher.held))
            if "Unable to configure" in line:  # logging.config's words: only hydra.job_logging reaches it
                line = line.replace("error: ", "error: hydra.job_logging: ", 1) + "; fix that logging config"
            nulled = [arg.split("=")[0] for arg in sys.argv[1:] if arg.endswith("=null") and "." not in arg]
            if "Config group override must be a string" in line and nulled:  # Hydra's words name no group
                line = f"error: {nulled[0]}=null: pick an option of the {nulled[0]} group (listed by --help)"
            if "_save_config" in "".join(catcher.held) and re.match(r"error: OSError: \[Errno \d+\]", line):
                line = line.replace("error: ", f"error: {_record_being_written()}: ", 1)  # Hydra's words name none
            line = console_line(line)
            print(line, file=real)
            _record_unstarted_failure(line[len("error: "):])
        raise
    finally:
        sys.stderr = real
