"""SIGTERM during a fit or an inference: one line, exit 143, status.json says interrupted."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from pyimgano_hydra.runs.writers import read_json

TESTS = Path(__file__).resolve().parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'conf'}]"
FAST = ["dataset.category=weave", "dataset.limit_train=4", "dataset.limit_test=4", "dataset.resize=64"]
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}


def _as_from_a_terminal() -> None:
    """SIGHUP at its default, as in a shell (the suite may run under ``nohup``, which the app honours)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _terminate_when(args, module, ready: Path, env=None, delay: float = 0.5, signals=(signal.SIGTERM,),
                    poll: float = 0.2) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **ENV, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)
    deadline = time.time() + 300
    while time.time() < deadline and not ready.exists() and proc.poll() is None:
        time.sleep(poll)
    assert ready.exists(), proc.communicate()[1][-2000:]
    time.sleep(delay)
    for signum in signals:
        proc.send_signal(signum)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_one_line_interrupted(proc, status_file: Path, signum: int = signal.SIGTERM) -> None:
    assert proc.returncode == 128 + signum, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: {signal.Signals(signum).name}"), proc.stderr
    assert read_json(status_file)["status"] == "interrupted"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_fit_is_one_line_and_marks_the_run_interrupted(tmp_path, signum):
    """SIGHUP is a closed terminal: it killed the fit silently, status.json left at running."""
    out = tmp_path / "run"
    proc = _terminate_when([SEARCH, "model=sleepy", *FAST, f"hydra.run.dir={out}"], "pyimgano_hydra",
                           out / "config.json", signals=(signum,))
    _assert_one_line_interrupted(proc, out / "status.json", signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_infer_marks_it_interrupted(tmp_path, signum):
    run_dir = tmp_path / "run"
    done = run_cli([SEARCH, "model=sleepy", "model.seconds=0", *FAST, f"hydra.run.dir={run_dir}"], env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "infer"
    images = next(Path(os.environ["PYIMGANO_CACHE"]).rglob("weave/test/good"))
    proc = _terminate_when([f"run_dir={run_dir}", f"input={images}", "trust_targets=true",
                            f"hydra.run.dir={out}"], "pyimgano_hydra.infer", out / "status.json",
                           env={"FAKES_PREDICT_SLEEP": "60"}, signals=(signum,))
    _assert_one_line_interrupted(proc, out / "status.json", signum)


@pytest.mark.parametrize("module", ["pyimgano_hydra", "pyimgano_hydra.infer"])
def test_sigterm_right_after_the_claim_marks_the_run_interrupted(tmp_path, module):
    """Before the job's own handler (Hydra still writing .hydra/): one line, 143, interrupted."""
    out = tmp_path / "run"
    args = ([SEARCH, "model=sleepy", *FAST] if module == "pyimgano_hydra"
            else [f"run_dir={tmp_path}", f"input={tmp_path}"])
    proc = _terminate_when([*args, f"hydra.run.dir={out}"], module, out / ".claim.json", delay=0, poll=0.005)
    _assert_one_line_interrupted(proc, out / "status.json")


def test_two_sigterms_during_fit_still_exit_143_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _terminate_when([SEARCH, "model=sleepy", *FAST, f"hydra.run.dir={out}"], "pyimgano_hydra",
                           out / "config.json", signals=(signal.SIGTERM, signal.SIGTERM))
    _assert_one_line_interrupted(proc, out / "status.json")


def test_a_run_killed_by_sigkill_reads_as_interrupted_not_running(tmp_path):
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.load import load_run
    from pyimgano_hydra.sweep.leaderboard import job_row

    out = tmp_path / "run"
    proc = _terminate_when([SEARCH, "model=sleepy", *FAST, f"hydra.run.dir={out}"], "pyimgano_hydra",
                           out / "config.json", signals=(signal.SIGKILL,))
    assert proc.returncode == -signal.SIGKILL
    assert read_json(out / "status.json")["status"] == "running"  # nothing could record the kill
    with pytest.raises(UserError, match=r"the run is interrupted \(pid \d+ on '.*' stopped without finishing\), "
                                        "not completed") as caught:
        load_run(out)
    assert "\n" not in str(caught.value)
    assert job_row(out, None)["status"] == "interrupted"


def test_a_running_run_whose_process_lives_stays_running(tmp_path):
    from pyimgano_hydra.runs.status import current_state, utc_now

    alive = {"status": "running", "host": __import__("socket").gethostname(), "pid": os.getpid()}
    assert current_state(alive) == "running"
    assert current_state({**alive, "host": "another-host", "updated_utc": utc_now()}) == "running"  # its heartbeat
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert current_state({**alive, "pid": int(gone.stdout)}) == "interrupted"


@pytest.mark.parametrize("pid", [2**31, 2**40, 2**70])
def test_a_status_json_with_an_impossible_pid_is_refused_in_one_line(tmp_path, pid):
    import json
    import socket

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.load import load_run
    from pyimgano_hydra.sweep.leaderboard import job_row

    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "host": socket.gethostname(), "pid": pid}))
    with pytest.raises(UserError, match=r"the run is interrupted\b.*, not completed"):  # no OverflowError
        load_run(tmp_path)
    assert job_row(tmp_path, None)["status"] == "interrupted"


def test_infer_names_the_live_process_of_a_running_run(tmp_path):
    import json
    import socket

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.load import load_run

    record = {"status": "running", "host": socket.gethostname(), "pid": os.getpid()}
    (tmp_path / "status.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=rf"the run is running \(pid {os.getpid()} on '.*'\), not completed"):
        load_run(tmp_path)


@pytest.mark.parametrize("pid", [0, -1, -2**40, "123", 1.5, None, [1]])
def test_a_running_status_with_a_pid_no_process_can_have_reads_as_interrupted(tmp_path, pid):
    """A third attacker's pass: pid 0 (os.kill(0, 0) signals our own group), a negative or
    non-int pid left the run ``running`` for ever."""
    import socket

    from pyimgano_hydra.runs.status import current_state
    from pyimgano_hydra.sweep.leaderboard import job_row

    record = {"status": "running", "host": socket.gethostname(), "pid": pid}
    assert current_state(record) == "interrupted"
    (tmp_path / "status.json").write_text(__import__("json").dumps(record))
    assert job_row(tmp_path, None)["status"] == "interrupted"


def test_a_reused_pid_is_told_apart_by_its_start_time():
    import socket

    from pyimgano_hydra.runs.status import current_state
    from pyimgano_hydra.sweep.cluster import owner

    mine = owner()
    assert type(mine["pid_start"]) is int
    record = {"status": "running", **mine}
    assert current_state(record) == "running"
    # our parent lives on: a status.json naming its pid with another start time is stale
    reused = {"status": "running", "host": socket.gethostname(), "pid": os.getppid(), "pid_start": mine["pid_start"] + 10**9}
    assert current_state(reused) == "interrupted"
    assert current_state({**record, "pid_start": "abc"}) == "running"  # unknown start: left as written


def test_a_run_under_nohup_keeps_ignoring_sighup():
    from pyimgano_hydra.interrupt import sigterm_as_interrupt

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


def _minutes_ago(minutes: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) - timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


@pytest.mark.parametrize("updated,state", [(0, "running"), (9, "running"), (11, "interrupted"), (None, "interrupted"),
                                           ("abc", "interrupted")])
def test_another_hosts_running_status_reads_by_its_heartbeat(tmp_path, updated, state):
    """A status.json written on another host of a shared disk read as running for ever: its pid
    cannot be checked here. It is running while its heartbeat (updated_utc) is under 10 minutes old."""
    from pyimgano_hydra.runs.status import current_state
    from pyimgano_hydra.sweep.leaderboard import job_row

    record = {"status": "running", "host": "node-17", "pid": os.getpid()}
    if updated is not None:
        record["updated_utc"] = _minutes_ago(updated) if isinstance(updated, int) else updated
    assert current_state(record) == state
    (tmp_path / "status.json").write_text(__import__("json").dumps(record))
    assert job_row(tmp_path, None)["status"] == state


@pytest.mark.parametrize("minutes", [1, 30])
def test_a_run_left_running_on_another_host_is_taken_over_once_its_heartbeat_stops(tmp_path, minutes):
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.claim import claim_dir
    from pyimgano_hydra.runs.writers import write_json_atomic

    write_json_atomic(tmp_path / ".claim.json", {"pid": 1, "host": "node-17"})
    write_json_atomic(tmp_path / "status.json", {"status": "running", "host": "node-17", "pid": 4242,
                                                 "updated_utc": _minutes_ago(minutes), "config_hash": "abc"})
    if minutes == 30:  # its job is gone: the same config finishes it
        assert claim_dir(tmp_path, "abc", key="output_dir") is False
        return
    with pytest.raises(UserError, match=rf"^output_dir={tmp_path}: is being written by another process, "
                                        r"still running \(pid 4242 on 'node-17'\)"):
        claim_dir(tmp_path, "abc", key="output_dir")


def test_a_running_status_keeps_its_heartbeat_until_its_final_state(tmp_path):
    import time

    from pyimgano_hydra.runs.status import COMPLETED, running, write_status
    from pyimgano_hydra.runs.writers import read_json

    path = tmp_path / "status.json"
    with running(path, every=0.05, pid=os.getpid()):
        first = read_json(path)["updated_utc"]
        deadline = time.monotonic() + 10
        while read_json(path)["updated_utc"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_json(path)["updated_utc"] != first and read_json(path)["pid"] == os.getpid()
        write_status(path, COMPLETED)  # the final state, while the heartbeat still runs: never rewritten
        time.sleep(0.3)
        assert read_json(path)["status"] == COMPLETED


_SIGTERM_WHILE_HYDRA_STARTS_JOB_2 = '''
import os, runpy, signal
import hydra.core.utils as hydra_utils

save = hydra_utils._save_config


def save_config(cfg, filename, output_dir):
    if filename == "overrides.yaml" and str(output_dir).endswith("2_2/.hydra"):
        os.kill(os.getpid(), signal.SIGTERM)
    return save(cfg, filename, output_dir)


hydra_utils._save_config = save_config
runpy.run_module("pyimgano_hydra", run_name="__main__")
'''


def test_sigterm_while_hydra_writes_a_job_record_leaves_the_board_agreeing_with_the_job_dirs(tmp_path):
    """SIGTERM between Hydra's writes of job 2's ``.hydra/`` files: the sweep's own launcher wrote the
    final board at once (job 2 ``not_started``) and only then was job 2 recorded ``interrupted``, so the
    board and the job dir disagreed (seen in 1 of ~35 SIGTERMs at random moments)."""
    (tmp_path / "sigterm_at_job_2.py").write_text(_SIGTERM_WHILE_HYDRA_STARTS_JOB_2)
    sweep = tmp_path / "sweep"
    proc = run_cli(["--multirun", *FAST, "seed=0,1,2", f"hydra.sweep.dir={sweep}"], module="sigterm_at_job_2",
                   env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}, timeout=300)
    assert proc.returncode == 143 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert read_json(sweep / "2_2" / "status.json")["status"] == "interrupted"
    rows = {row["job"]: row["status"] for row in read_json(sweep / "leaderboard.json")["jobs"]}
    assert rows == {0: "completed", 1: "completed", 2: "interrupted"}, rows
