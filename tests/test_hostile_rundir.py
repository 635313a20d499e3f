"""Run dirs under attack: a completed run's record never changes; one of two racing runs wins."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from pyimgano_hydra.runs.claim import CLAIM_FILE, claim
from pyimgano_hydra.runs.writers import read_json, write_json_atomic

TESTS = Path(__file__).resolve().parent
TINY = [f"hydra.searchpath=[file://{TESTS / 'conf'}]", "model=zscore", "dataset.category=weave",
        "dataset.limit_train=4", "dataset.limit_test=6", "dataset.resize=64"]


def _cli(args, extra_env=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra_env or {})
    return subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    proc = _cli([*TINY, f"hydra.run.dir={out}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return out


def test_rerun_into_a_completed_run_leaves_its_hydra_record_untouched(completed_run):
    before = _snapshot(completed_run)
    proc = _cli([*TINY, "tag=EVIL", f"hydra.run.dir={completed_run}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "already holds a run" in err and str(completed_run) in err, err
    assert _snapshot(completed_run) == before  # .hydra/overrides.yaml still without tag=EVIL


def test_rerun_is_refused_with_full_errors_too(completed_run):
    before = _snapshot(completed_run)
    # Hydra turns a callback's exception into a warning: the refusal must not be one
    proc = _cli([*TINY, f"hydra.run.dir={completed_run}"], extra_env={"HYDRA_FULL_ERROR": "1"})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "already holds a run" in err, err
    assert _snapshot(completed_run) == before


def test_run_dir_of_an_older_version_without_claim_is_refused(tmp_path):
    older = tmp_path / "older"
    write_json_atomic(older / "status.json", {"status": "completed"})
    with pytest.raises(SystemExit) as exc:
        claim(older)
    assert exc.value.code == 2 and not (older / CLAIM_FILE).exists()


def test_empty_existing_dir_is_claimed(tmp_path):
    claim(tmp_path)
    assert read_json(tmp_path / CLAIM_FILE)["pid"] == os.getpid()


def test_two_runs_started_together_into_one_dir_exactly_one_wins(tmp_path):
    out = tmp_path / "run"
    procs = [_cli([*TINY, f"tag=racer{i}", f"hydra.run.dir={out}"]) for i in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    assert read_json(out / "report.json")["tag"] == f"racer{winner}"
    assert f"tag=racer{winner}" in (out / ".hydra" / "overrides.yaml").read_text()
    assert read_json(out / "status.json")["status"] == "completed"


def test_a_second_run_of_one_slurm_allocation_never_takes_over_a_running_one(tmp_path):
    """Pass D: two runs of one config into one dir from one ``salloc`` shell (same SLURM_JOB_ID):
    the second read the first, still running, as its own earlier attempt and ran in the same dir."""
    out = tmp_path / "run"
    env = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "", "SUBMITIT_LOCAL_JOB_ID": ""}
    args = [*[a.replace("model=zscore", "model=sleepy") for a in TINY], "model.seconds=6", f"hydra.run.dir={out}"]
    first = _cli(args, extra_env=env)
    deadline = time.monotonic() + 120
    while not (out / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = _cli(args, extra_env=env)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 2 and err.strip().count("\n") == 0 and "is being written by another process" in err, err
    assert first.wait(timeout=600) == 0
    assert read_json(out / "report.json")["resumed_categories"] == []


def test_rerun_into_a_completed_sweep_is_refused_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    first = _cli(["--multirun", *TINY, f"hydra.sweep.dir={sweep}"])
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    before = _snapshot(sweep)
    again = _cli(["--multirun", *TINY, "tag=EVIL", f"hydra.sweep.dir={sweep}"])
    _, err = again.communicate(timeout=600)
    assert again.returncode == 2 and err.strip().count("\n") == 0 and "already holds a run" in err, err
    assert _snapshot(sweep) == before


def _cli_module(module, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("module,inside", [("pyimgano_hydra", ".hydra"), ("pyimgano_hydra", "categories/weave"),
                                           ("pyimgano_hydra.infer", "categories")])
def test_a_run_dir_inside_a_completed_run_is_refused(completed_run, module, inside):
    before = _snapshot(completed_run)
    args = [*TINY, "tag=EVIL"] if module == "pyimgano_hydra" else [f"run_dir={completed_run}", f"input={completed_run}"]
    proc = _cli_module(module, [*args, f"hydra.run.dir={completed_run / inside}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "lies inside the run dir" in err, err
    assert _snapshot(completed_run) == before


@pytest.mark.parametrize("module,name,target", [("pyimgano_hydra", "categories", "categories"),
                                                 ("pyimgano_hydra", "pyimgano_hydra.log", "pyimgano_hydra.log"),
                                                 ("pyimgano_hydra.infer", "maps", "categories/weave")])
def test_an_existing_dir_with_a_link_into_a_completed_run_is_refused(completed_run, tmp_path, module, name, target):
    """Pass D: hydra.run.dir=<a folder that is no run> whose ``categories`` linked into a completed
    run: the new run overwrote that run's report.json and fitted state; a ``pyimgano_hydra.log``
    link had Hydra append the new log to the linked file (any file the user may write)."""
    import shutil

    done = tmp_path / "done"
    shutil.copytree(completed_run, done, symlinks=True)
    before = _snapshot(done)
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / name).symlink_to(done / target)
    args = [*TINY, "tag=EVIL"] if module == "pyimgano_hydra" else [
        f"run_dir={completed_run}", f"input={completed_run}", "save_maps=true"]
    proc = _cli_module(module, [*args, f"hydra.run.dir={trap}"])
    _, err = proc.communicate(timeout=600)
    # (a linked log is also refused as a log file inside another run, checked first; since pass X3
    # any existing dir that is not empty is refused, naming what it holds)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and (
        f"holds {name} (a symlink)" in err or f"/{name}: lies inside the run dir {done}" in err
        or f"exists and is not empty (it holds {name})" in err), err
    assert _snapshot(done) == before


@pytest.mark.parametrize("inside", ["categories", "categories/weave/plots/new"])
def test_the_api_refuses_an_output_dir_inside_a_completed_run(completed_run, inside):
    """A fourth pass: ``api.run(output_dir=<run>/categories)`` wrote a whole run (.hydra,
    status.json, report.json, categories/...) into a completed run; the CLI refuses it."""
    from pyimgano_hydra.api import run
    from pyimgano_hydra.errors import UserError

    before = _snapshot(completed_run)
    with pytest.raises(UserError, match=f"^output_dir={completed_run / inside}: lies inside the run dir"):
        run([*TINY, "tag=EVIL"], output_dir=completed_run / inside)
    assert _snapshot(completed_run) == before and not (completed_run / inside / ".hydra").exists()


@pytest.mark.parametrize("marker", [CLAIM_FILE, "multirun.yaml"])
def test_the_api_refuses_an_output_dir_that_is_a_sweep_root(tmp_path, marker):
    """A verification pass: ``api.run(output_dir=<completed sweep dir>)`` wrote a whole run
    (.hydra/, status.json, report.json, categories/) into the sweep's root; the CLI refuses it."""
    from pyimgano_hydra.api import run
    from pyimgano_hydra.errors import UserError

    sweep = tmp_path / "sweep"
    (sweep / "0_x").mkdir(parents=True)
    (sweep / marker).write_text("{}\n")
    (sweep / "leaderboard.md").write_text("board\n")
    before = _snapshot(sweep)
    with pytest.raises(UserError, match=f"^output_dir={sweep}: already holds a run or sweep"):
        run([*TINY, "tag=EVIL"], output_dir=sweep)
    assert _snapshot(sweep) == before and not (sweep / ".hydra").exists()


@pytest.mark.parametrize("module", ["pyimgano_hydra", "pyimgano_hydra.infer"])
def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, module):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    args = TINY if module == "pyimgano_hydra" else ["run_dir=/nowhere", "input=/nowhere"]
    proc = _cli_module(module, [*args, f"hydra.run.dir={target}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "is a file, not a directory" in err, err
    assert target.read_text() == "keep me"


def test_an_interrupted_run_of_another_config_keeps_its_hydra_record(completed_run, tmp_path):
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(completed_run, unfinished)
    (unfinished / "report.json").unlink()
    write_json_atomic(unfinished / "status.json", {"status": "interrupted", "config_hash": "0" * 16})
    before = _snapshot(unfinished)
    proc = _cli([*TINY, "tag=EVIL", f"hydra.run.dir={unfinished}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "already holds a run" in err, err
    assert _snapshot(unfinished) == before  # .hydra/overrides.yaml still without tag=EVIL


@pytest.mark.parametrize("args", [["tag=${hydra:job.override_dirname}"], ["--multirun", "seed=1,2"]])
def test_an_interrupted_run_takes_in_no_config_whose_hash_is_unknown_nor_a_sweep(completed_run, tmp_path, args):
    """Pass D: tag=${hydra:job.override_dirname} cannot be hashed before the job, and an unknown
    hash let any config take an interrupted run over: Hydra rewrote its .hydra/ before the app
    refused. As hydra.sweep.dir, the same run took a whole sweep in (two runs inside it)."""
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(completed_run, unfinished)
    (unfinished / "report.json").unlink()
    write_json_atomic(unfinished / "status.json", {"status": "interrupted", "config_hash": "0" * 16})
    before = _snapshot(unfinished)
    key = "hydra.sweep.dir" if "--multirun" in args else "hydra.run.dir"
    proc = _cli([*args, *TINY, f"{key}={unfinished}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "already holds a run" in err, err
    assert _snapshot(unfinished) == before


def test_a_job_dirs_overrides_yaml_is_read_without_resolving(tmp_path, monkeypatch):
    from pyimgano_hydra.sweep.leaderboard import _read_overrides

    monkeypatch.setenv("PYIMGANO_SECRET", "s3cret")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- tag=${oc.env:PYIMGANO_SECRET}\n- seed=1\n")
    assert _read_overrides(tmp_path)[0] == ["tag=${oc.env:PYIMGANO_SECRET}", "seed=1"]


@pytest.mark.parametrize("subdir", ["same", "/abs_${hydra.job.num}", "${hydra.job.num}/../same",
                                    "hydra.job.num", "${oc.select:hydra.job.num_x,same}"])  # pass D: shared
def test_a_sweep_subdir_that_jobs_could_share_is_refused_before_any_job(tmp_path, subdir):
    """A third pass: hydra.sweep.subdir=same made job 2 rewrite job 1's finished .hydra/ record
    (its overrides.yaml said seed=2, its report.json seed=1): Hydra writes .hydra/ before any
    callback of the job runs."""
    sweep = tmp_path / "sweep"
    subdir = subdir.replace("/abs_", f"{tmp_path}/abs_")
    proc = _cli(["--multirun", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", f"hydra.sweep.subdir={subdir}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "hydra.sweep.subdir=" in err, err
    assert not sweep.exists() and not list(tmp_path.glob("abs_*"))


@pytest.mark.parametrize("sweeps,expected", [(["tag=a1,b,a", "seed=1,2,3,4"], "jobs 0 and 10 would share"),
                                             (["tag='',0/"], "job 1's dir 0/1 lies inside job 0's")])
def test_a_sweep_subdir_that_two_job_numbers_share_is_refused_before_any_job(tmp_path, sweeps, expected):
    """Pass D: ``${tag}${hydra.job.num}`` with tag=a1,b,a and 4 seeds made jobs 0 and 10 both
    ``a10``: job 10 rewrote job 0's finished .hydra/ (overrides tag=a seed=3, report tag=a1 seed=1);
    with tag='',0/ job 1 ran inside job 0's run dir."""
    sweep = tmp_path / "sweep"
    proc = _cli(["--multirun", *TINY, *sweeps, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${tag}${hydra.job.num}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and expected in err, err
    assert not sweep.exists()


@pytest.mark.parametrize("subdir", ["${hydra.job.override_dirname}${hydra.job.num}",
                                    "${hydra:job.override_dirname}${hydra.job.num}"])
def test_a_sweep_subdir_of_each_jobs_override_dirname_is_probed_per_job(tmp_path, subdir):
    """Pass E: the probe read the sweep's override_dirname for every job: tag=x1,...,x gave jobs 0
    and 10 one dir (``...tag=x10``) unseen, and job 10 rewrote job 0's finished .hydra/."""
    sweep = tmp_path / "sweep"
    proc = _cli(["--multirun", *TINY, "tag=x1,b,c,d,e,f,g,h,i,j,x", f"hydra.sweep.dir={sweep}",
                 f"hydra.sweep.subdir={subdir}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "jobs 0 and 10 would share" in err, err
    assert not sweep.exists()


def test_a_sweep_too_large_to_probe_needs_a_subdir_numbered_first(tmp_path):
    """Pass E: only the first 2000 jobs were probed: ${tag}${hydra.job.num} with tag=a200,a over 4000
    jobs put jobs 0 and 2000 both in a2000, unseen (job 2000 would rewrite job 0's .hydra/)."""
    sweep = tmp_path / "sweep"
    proc = _cli(["--multirun", *TINY, "tag=a200,a", "seed=range(0,40)", "dataset.limit_test=range(1,51)",
                 f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${tag}${hydra.job.num}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "more than 2000 jobs must start" in err, err
    assert not sweep.exists()


def test_a_sweep_into_a_folder_holding_a_completed_run_leaves_it_untouched(completed_run, tmp_path):
    """A verification pass: hydra.sweep.dir=<folder without markers> with
    hydra.sweep.subdir=run${hydra.job.num} landed job 0 on a completed run already in that
    folder; Hydra rewrote its .hydra/hydra.yaml and log before the job refused, and the
    leaderboard listed the old run as the sweep's result."""
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(completed_run, sweep / "run0", symlinks=True)
    before = _snapshot(sweep)
    proc = _cli(["--multirun", *TINY, "tag=EVIL", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=run${hydra.job.num}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "not empty" in err, err
    assert _snapshot(sweep) == before


@pytest.mark.parametrize("extra", [["hydra.sweep.subdir=${hydra.runtime.cwd}/run${hydra.job.num}"],
                                   ["tag=y,x/../../run0", "hydra.sweep.subdir=${hydra.job.num}_${tag}"]])
def test_a_sweep_subdir_made_absolute_by_an_interpolation_is_refused(completed_run, tmp_path, extra):
    """A verification pass: hydra.sweep.subdir=${hydra.runtime.cwd}/run${hydra.job.num} passed the
    text check (relative, names the job) and put job 0 on a completed run in the working dir:
    Hydra rewrote its .hydra/overrides.yaml (tag=EVIL) before the job refused."""
    import shutil

    cwd = tmp_path / "cwd"
    shutil.copytree(completed_run, cwd / "run0", symlinks=True)
    before = _snapshot(cwd)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    env.pop("HYDRA_FULL_ERROR", None)
    sweep = cwd / "sweep" if "tag=" in extra[0] else tmp_path / "sweep"  # sweep/0_x/../../run0 is cwd/run0
    proc = subprocess.run([sys.executable, "-m", "pyimgano_hydra", "--multirun", *TINY,
                           *(["tag=EVIL"] if "tag=" not in extra[0] else []), f"hydra.sweep.dir={sweep}", *extra],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "hydra.sweep.subdir=" in proc.stderr, proc.stderr
    assert _snapshot(cwd) == before


def test_a_sweep_dir_read_from_the_environment_stays_put_across_jobs(completed_run, tmp_path):
    """Pass D: hydra.sweep.dir=<dir>/e${oc.env:PYIMGANO_JOB_NUM,x} is resolved again for every job,
    and job 0 set that variable: job 1 left the claimed sweep dir for <dir>/e0 and Hydra rewrote a
    completed run there (its .hydra/overrides.yaml said seed=2)."""
    import shutil

    shutil.copytree(completed_run, tmp_path / "e0" / "1_s2", symlinks=True)
    before = _snapshot(tmp_path / "e0")
    proc = _cli(["--multirun", *TINY, "seed=1,2", f"hydra.sweep.dir={tmp_path}/e${{oc.env:PYIMGANO_JOB_NUM,x}}",
                 "hydra.sweep.subdir=${hydra.job.num}_s${seed}"], extra_env={"PYIMGANO_JOB_NUM": ""})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert _snapshot(tmp_path / "e0") == before
    assert (tmp_path / "e" / "0_s1" / "report.json").is_file() and (tmp_path / "e" / "1_s2" / "report.json").is_file()


def test_a_sweep_subdir_naming_the_job_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(["--multirun", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}_s${seed}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert read_json(sweep / "0_s1" / "report.json")["overrides"][-1] == "seed=1"
    assert (sweep / "1_s2" / ".hydra" / "overrides.yaml").read_text().strip().endswith("seed=2")


@pytest.mark.parametrize("module", ["pyimgano_hydra", "pyimgano_hydra.infer", "--multirun"])
def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path, module):
    """A third pass: a dangling symlink as the run dir made the claim raise; Hydra printed it as
    a warning (two lines), went on, and failed with a raw FileExistsError."""
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "deeper")
    key = "hydra.sweep.dir" if module == "--multirun" else "hydra.run.dir"
    if module == "pyimgano_hydra.infer":
        proc = _cli_module(module, ["run_dir=/nowhere", "input=/nowhere", f"{key}={dangling}"])
    else:
        proc = _cli([*([module] if module == "--multirun" else []), *TINY, f"{key}={dangling}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0, err
    assert err.startswith((f"error: {key}={dangling}: cannot claim it (File exists)",  # a training run's dir
                           f"error: {key}={dangling}: is a link; name the folder")), err  # may not be a link
    assert not (tmp_path / "nowhere").exists()


RACER = """
import sys, time
from pyimgano_hydra.api import run
from pyimgano_hydra.errors import UserError
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
try:
    run(sys.argv[3:], output_dir=sys.argv[2])
except UserError as exc:
    print(exc)
    sys.exit(2)
"""


def test_two_api_runs_started_together_into_one_output_dir_exactly_one_wins(tmp_path):
    """api.run checked the dir, then wrote: two runs started together both ran into one dir."""
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    start = str(time.time() + 8)  # both imported by then: they claim together
    procs = [subprocess.Popen([sys.executable, "-c", RACER, start, str(out), *TINY, f"tag=racer{i}"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser = results[1 - winner][1]
    assert loser.startswith(f"output_dir={out}: ") and loser.count("\n") == 1, loser
    assert read_json(out / "report.json")["tag"] == f"racer{winner}"
    assert f"tag=racer{winner}" in (out / ".hydra" / "overrides.yaml").read_text()
    assert read_json(out / "status.json")["status"] == "completed"


def test_the_api_refuses_a_completed_run_and_resumes_its_own_interrupted_one(completed_run, tmp_path):
    """As the CLI: a completed run is refused naming output_dir; this config's interrupted run is finished."""
    import shutil

    from pyimgano_hydra.api import run
    from pyimgano_hydra.errors import UserError

    before = _snapshot(completed_run)
    with pytest.raises(UserError, match=rf"^output_dir={completed_run}: already holds a run \(completed\)"):
        run([*TINY, "tag=EVIL"], output_dir=completed_run)
    assert _snapshot(completed_run) == before
    unfinished = tmp_path / "unfinished"
    shutil.copytree(completed_run, unfinished)
    config_hash = read_json(unfinished / "report.json")["config_hash"]
    (unfinished / "report.json").unlink()
    write_json_atomic(unfinished / "status.json", {"status": "interrupted", "config_hash": config_hash})
    with pytest.raises(UserError, match=f"^output_dir={unfinished}: already holds a run of another config"):
        run([*TINY, "tag=EVIL"], output_dir=unfinished)
    assert run(TINY, output_dir=unfinished)["resumed_categories"] == ["weave"]
    assert "tag=EVIL" not in (unfinished / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("module,flag", [("pyimgano_hydra", "--experimental-rerun"), ("pyimgano_hydra.infer", "--exp="),
                                         ("pyimgano_hydra.export", "--experimental-re")])
def test_a_run_dirs_config_pickle_is_never_rerun(tmp_path, module, flag):
    """Pass D: Hydra's ``--experimental-rerun <run dir>/.hydra/config.pickle`` (any abbreviation)
    unpickled the file: a shipped run dir ran its code on all three entry points."""
    import pickle

    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pickled = tmp_path / "run" / ".hydra" / "config.pickle"
    pickled.parent.mkdir(parents=True)
    pickled.write_bytes(pickle.dumps(Evil()))
    args = [flag + str(pickled)] if flag.endswith("=") else [flag, str(pickled)]
    proc = _cli_module(module, args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "loads a pickle" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("module,override", [
    ("pyimgano_hydra", "hydra.output_subdir={done}/.hydra"),
    ("pyimgano_hydra.infer", "hydra.output_subdir=../done/.hydra"),
    ("--multirun", "hydra.output_subdir=${{tag}}/.hydra"),
    ("pyimgano_hydra", "hydra.job.name=../done/pyimgano_hydra"),
    ("pyimgano_hydra.export", "hydra.output_subdir={done}/.hydra"),
    ("pyimgano_hydra.export", "hydra.output_subdir=.hydra"),
    ("pyimgano_hydra", "hydra.job_logging.handlers.file.filename={done}/status.json"),
    ("--multirun", "hydra.job_logging.handlers.file.filename={done}/status.json"),
    ("pyimgano_hydra.infer", "hydra.job_logging.handlers.file.filename={done}/report.json")])
def test_hydras_record_and_log_stay_inside_the_new_run(completed_run, tmp_path, module, override):
    """Pass D: hydra.output_subdir=<completed run>/.hydra (absolute, ``..``, or a swept value) had Hydra
    rewrite that run's overrides.yaml; hydra.job.name=../<run>/pyimgano_hydra appended to its log.
    Export (run dir: the working dir) wrote its record into the run it exports. A log file named
    <completed run>/status.json got log lines appended: infer then refused that run."""
    import shutil

    done = tmp_path / "done"
    shutil.copytree(completed_run, done, symlinks=True)
    before = _snapshot(done)
    override = override.format(done=done)
    if module == "pyimgano_hydra.infer":
        args = [f"run_dir={completed_run}", f"input={completed_run}", f"hydra.run.dir={tmp_path / 'new'}", override]
        proc = _cli_module(module, args)
    elif module == "pyimgano_hydra.export":  # run.dir is the working dir, here the completed run itself
        proc = _cli_module(module, [f"run_dir={done}", f"hydra.run.dir={done}", override])
    elif module == "--multirun":
        proc = _cli(["--multirun", *TINY, "tag=a,../../done", f"hydra.sweep.dir={tmp_path / 'sweep'}", override])
    else:
        proc = _cli([*TINY, "tag=EVIL", f"hydra.run.dir={tmp_path / 'new'}", override])
    _, err = proc.communicate(timeout=600)
    key = override.split("=", 1)[0]
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and err.startswith(f"error: {key}="), err
    assert _snapshot(done) == before


@pytest.mark.parametrize("name", ["..", ".", "..."])
def test_a_category_named_with_dots_gets_its_own_folder(tmp_path, name):
    """Pass D: dataset=folder dataset.name=.. wrote the category's report, inspector and plots into
    the run root (categories/..); a resume then clears a half-done category with rmtree."""
    from pyimgano_hydra.runs.layout import RunDir

    folder = RunDir(tmp_path).category(name).root
    assert folder.parent == tmp_path / "categories" and folder.resolve().parent == (tmp_path / "categories").resolve()
    assert folder.name.startswith(name + "-")


def test_an_optuna_trial_never_lands_in_an_earlier_trials_dir():
    """Pass D: sampled values in hydra.sweep.subdir (``${tag}${hydra.job.num}`` with tag sampled
    from a1, a) can give trials 0 and 10 one dir (``a10``); the launcher wrapper refuses the later."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from pyimgano_hydra.sweep.optuna import BudgetLauncher

    config = OmegaConf.create({"tag": "", "hydra": {"sweep": {"subdir": "${tag}${hydra.job.num}"},
                                                    "job": {"num": 0, "id": "0"}, "overrides": {"task": []}}})
    launched = []
    inner = SimpleNamespace(launch=lambda jobs, initial_job_idx: launched.append(initial_job_idx) or [])
    launcher = BudgetLauncher(inner, SimpleNamespace(config=config, n_trials=20), 1.0)
    launcher.launch([["tag=a1"]], initial_job_idx=0)
    launcher.launch([[f"tag=b{i}"] for i in range(9)], initial_job_idx=1)
    with pytest.raises(SystemExit) as exc:
        launcher.launch([["tag=a"]], initial_job_idx=10)
    assert exc.value.code == 2 and launched == [0, 1]


def test_an_unfinished_run_with_a_symlink_is_not_resumed(tmp_path):
    """Pass D: a resumed run appends to its ``pyimgano_hydra.log``; linked to any file, Hydra wrote
    the log there."""
    run = tmp_path / "run"
    write_json_atomic(run / "status.json", {"status": "interrupted", "config_hash": "h" * 16})
    (run / CLAIM_FILE).write_text("{}")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "pyimgano_hydra.log").symlink_to(victim)
    with pytest.raises(SystemExit) as exc:
        claim(run, config_hash="h" * 16)
    assert exc.value.code == 2 and victim.read_text() == "keep me"
    (run / "pyimgano_hydra.log").unlink()
    claim(run, config_hash="h" * 16)  # the same unfinished run without the link resumes


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_a_resumed_run_never_rewrites_a_linked_hydra_record(completed_run, tmp_path, link):
    """Pass E: Hydra rewrites a resumed run's ``.hydra/*.yaml`` in place (open "w"); an interrupted
    run whose ``.hydra/hydra.yaml`` linked to a completed run's report.json turned it into YAML."""
    unfinished = tmp_path / "unfinished"
    config_hash = read_json(completed_run / "report.json")["config_hash"]
    write_json_atomic(unfinished / "status.json", {"status": "interrupted", "config_hash": config_hash})
    (unfinished / CLAIM_FILE).write_text("{}")
    (unfinished / ".hydra").mkdir()
    target, victim = unfinished / ".hydra" / "hydra.yaml", completed_run / "report.json"
    target.symlink_to(victim) if link == "symlink" else os.link(victim, target)
    before = _snapshot(completed_run)
    proc = _cli([*TINY, f"hydra.run.dir={unfinished}"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and f"(a {link})" in err, err
    assert _snapshot(completed_run) == before


def test_two_jobs_resuming_one_interrupted_run_together_exactly_one_goes_on(tmp_path):
    """Pass E: both resumers of one interrupted attempt took it over (two CLI runs started together
    both ran to the end; the second rewrote the first one's completed report)."""
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.claim import claim_dir

    run = tmp_path / "run"
    write_json_atomic(run / "status.json", {"status": "interrupted", "config_hash": "h" * 16})
    (run / CLAIM_FILE).write_text("{}")
    assert claim_dir(run, config_hash="h" * 16) is False  # the first one resumes it
    with pytest.raises(UserError, match=f"^hydra.run.dir={run}: its interrupted run is being resumed by another"):
        claim_dir(run, config_hash="h" * 16)
    write_json_atomic(run / "status.json", {"status": "interrupted", "config_hash": "h" * 16, "pid": 7})
    assert claim_dir(run, config_hash="h" * 16) is False  # that attempt interrupted in turn: resumed again


def test_a_fifo_named_model_onnx_is_refused_without_blocking(tmp_path):
    """Pass E: infer runtime=onnxruntime read ``artifacts/model.onnx`` with read_bytes; a FIFO of a
    hostile run dir held it until killed."""
    import json

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.export.runtime import read_export

    artifacts = tmp_path / "run" / "categories" / "weave" / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / "export.json").write_text(json.dumps({
        "format": "pyimgano_hydra.export", "version": 1, "package_version": "x", "category": "weave",
        "detector": "d", "model_file": "model.onnx", "sha256": "0" * 64, "opset": 17, "input_size": [64, 64],
        "channels": 3, "preprocessing": {}, "image_threshold": {"value": 1.0, "provenance": None}}))
    os.mkfifo(artifacts / "model.onnx")
    with pytest.raises(UserError, match="model.onnx: not a regular file"):
        read_export(tmp_path / "run", artifacts.parent)


def test_a_resume_whose_holder_died_before_writing_status_is_resumed_again(tmp_path):
    """The takeover claim of a job killed between its claim and its first status.json write
    does not keep the run from being resumed (by exactly one job)."""
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.claim import claim_dir

    run = tmp_path / "run"
    write_json_atomic(run / "status.json", {"status": "interrupted", "config_hash": "h" * 16})
    (run / CLAIM_FILE).write_text("{}")
    assert claim_dir(run, config_hash="h" * 16) is False
    (takeover,) = run.glob(".takeover-*.json")
    write_json_atomic(takeover, {**read_json(takeover), "pid": 2**31 - 1})  # no such process: gone
    assert claim_dir(run, config_hash="h" * 16) is False
    with pytest.raises(UserError, match="being resumed by another"):
        claim_dir(run, config_hash="h" * 16)


def test_a_joblib_sweep_started_inside_a_run_dir_imports_nothing_from_it(completed_run, tmp_path):
    """Pass E: under the console script (``-P`` here: no working dir on sys.path), joblib's loky
    started its resource tracker (``python -c``) and workers (``python -m``) with the run dir first
    on sys.path: the run dir's ``joblib/`` ran."""
    import shutil

    hostile = tmp_path / "received"
    shutil.copytree(completed_run, hostile)
    marker = tmp_path / "MARKER"
    (hostile / "joblib").mkdir()
    (hostile / "joblib" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    env.pop("PYTHONSAFEPATH", None)
    proc = subprocess.run([sys.executable, "-P", "-m", "pyimgano_hydra", "--multirun", *TINY, "seed=1,2",
                           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=hostile, env=env, capture_output=True, text=True, timeout=600)
    assert not marker.exists(), proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_existing_dir_with_a_hard_linked_log_is_refused(tmp_path):
    """Pass E: a new run appended its log to ``pyimgano_hydra.log``, a hard link to a completed
    run's report.json (the symlink was refused, the hard link was not)."""
    victim = tmp_path / "report.json"
    victim.write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim, run / "pyimgano_hydra.log")
    with pytest.raises(SystemExit) as exc:
        claim(run)
    assert exc.value.code == 2 and not (run / CLAIM_FILE).exists()


@pytest.mark.parametrize("kind", ["complex", "sparse"])
def test_an_inspector_tensor_of_a_kind_training_never_writes_is_refused(tmp_path, kind):
    """A complex memory bank scored (its imaginary part dropped with a raw ComplexWarning on the
    console); a sparse one is no file training writes either: refused, naming the file."""
    import torch

    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.runs.trust import load_weights

    bank = torch.ones(4, 3)
    path = tmp_path / "inspector.pt"
    torch.save({"memory_bank": bank.to(torch.complex64) if kind == "complex" else bank.to_sparse()}, path)
    with pytest.raises(UserError, match=r"inspector\.pt: refused: .*dense real tensors"):
        load_weights(path)
