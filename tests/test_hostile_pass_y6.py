"""Attacker pass Y6: code execution and lost runs through the Hydra config surface a received
preset or sweep config reaches (hydra.* keys, _target_ keys, defaults-list tricks, resolvers, the api)."""
import os

import pytest

from conftest import TINY, copy_run, run_cli


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_job_chdir_with_a_relative_log_file_never_appends_to_a_completed_run(trained, tmp_path):
    """HOLE (lost-run). ``hydra.job.chdir=true`` with a job log named relative to the job's dir
    (``hydra.job_logging.handlers.file.filename=../done/status.json``, as a received preset sets them):
    the log check resolves the name against the launching working dir (nothing there), Hydra then
    changes into the new run dir and opens it from there: the log lines are appended to the completed
    run ``done``'s status.json, which infer then refuses ("not a readable JSON file").
    Expected: refused before Hydra writes anything (rc != 0, one line naming the key), ``done`` unchanged."""
    runs = tmp_path / "runs"
    runs.mkdir()
    done = copy_run(trained, runs, "done")
    before = _files(done)
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli([*TINY, f"hydra.run.dir={runs / 'new'}", "hydra.job.chdir=true",
                    "hydra.job_logging.handlers.file.filename=../done/status.json"], cwd=work)
    assert _files(done) == before, "the completed run's files changed"
    assert proc.returncode != 0 and "filename" in proc.stderr, proc.stderr[-1500:]


def test_a_presets_env_set_never_lets_numba_overwrite_a_completed_runs_file(trained, tmp_path):
    """HOLE (lost-run). A preset's ``hydra.job.env_set.NUMBA_CHROME_TRACE=<done>/status.json`` on a
    PyOD model (``model=hbos``): Hydra sets the variable around the job, pyod (imported by the job)
    imports ``numba.core.event`` which reads it and registers an exit handler that writes its trace
    (``[]``) over the named file: the completed run's status.json is replaced (observed: ``[]``), so
    infer refuses that run. The config-file route (``.numba_config.yaml`` chrome_trace) was closed in
    pass X10/Y1; the environment route a preset reaches was not. Expected: refused (or the variable
    kept from numba), ``done`` unchanged."""
    runs = tmp_path / "runs"
    runs.mkdir()
    done = copy_run(trained, runs, "done")
    before = _files(done)
    args = [a for a in TINY if not a.startswith("model.")]
    run_cli([*args, "model=hbos", f"hydra.run.dir={runs / 'new'}",
             f"+hydra.job.env_set.NUMBA_CHROME_TRACE={done / 'status.json'}"])
    assert _files(done) == before, "the completed run's files changed"


def _project_with_a_received_run(trained, tmp_path):
    """A project folder (the working dir) holding a received run dir that ships a package ``evil``
    whose ``__init__.py`` writes a marker."""
    proj = tmp_path / "proj"
    proj.mkdir()
    recv = copy_run(trained, proj, "recv")
    (recv / "evil").mkdir()
    marker = tmp_path / "MARKER"
    (recv / "evil" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return proj, marker


def test_a_presets_search_path_never_imports_a_package_from_a_received_run_dir(trained, tmp_path):
    """HOLE (code-exec). A primary preset of the user's folder (``-cd presets -cn mine``) holding
    ``hydra.searchpath: [pkg://recv.evil]``, where ``recv`` is a received run dir in the working dir
    (kept on ``sys.path`` by ``python -m``): the search path is checked only after composing
    (check_composed_sources), and Hydra's ``pkg://`` source (and hydra_guard's own
    ``importlib.resources.files``) imports the package on the way: the run dir's ``evil/__init__.py``
    runs (marker written), then the command is refused. The same entry on the command line is refused
    before any import (held). Expected: refused, no marker."""
    proj, marker = _project_with_a_received_run(trained, tmp_path)
    presets = proj / "presets"
    presets.mkdir()
    (presets / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nhydra:\n  searchpath: [pkg://recv.evil]\n")
    proc = run_cli(["-cd", "presets", "-cn", "mine", *TINY, f"hydra.run.dir={tmp_path / 'new'}"], cwd=proj)
    assert proc.returncode != 0
    assert not marker.exists(), "the received run dir's package was imported"


def test_api_compose_config_never_imports_a_package_from_a_received_run_dir(trained, tmp_path):
    """HOLE (code-exec). ``compose_config(["hydra.searchpath=[pkg://recv.evil]"])`` (overrides read from
    a file) in a script run from the project folder: compose_config never runs check_config_arguments
    (api.run does), Hydra imports ``recv.evil`` from the received run dir (marker written) and only
    then is the search path refused. Expected: UserError naming the search path, no marker."""
    import subprocess
    import sys

    from conftest import _cli_env

    proj, marker = _project_with_a_received_run(trained, tmp_path)
    code = ("from pyimgano_hydra.api import compose_config\n"
            "try:\n    compose_config(['hydra.searchpath=[pkg://recv.evil]'])\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=proj, env=_cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert "UserError" in proc.stdout, proc.stdout + proc.stderr[-1500:]
    assert not marker.exists(), "the received run dir's package was imported"


def test_held_the_command_lines_search_path_into_a_received_run_dir_imports_nothing(trained, tmp_path):
    """HELD. ``python -m pyimgano_hydra hydra.searchpath=[pkg://recv.evil]``: refused before any import."""
    proj, marker = _project_with_a_received_run(trained, tmp_path)
    proc = run_cli(["hydra.searchpath=[pkg://recv.evil]", *TINY, f"hydra.run.dir={tmp_path / 'new'}"], cwd=proj)
    assert proc.returncode != 0 and "hydra.searchpath" in proc.stderr
    assert not marker.exists()


def test_a_log_file_named_through_the_hydra_resolver_never_appends_to_a_completed_run(trained, tmp_path):
    """HOLE (lost-run). ``hydra.job_logging.handlers.file.filename=${hydra:runtime.output_dir}/../done/status.json``:
    when the claim checks the log files, ``${hydra:runtime.output_dir}`` cannot be resolved yet (the
    ``hydra:`` resolver reads HydraConfig, not the probe whose output_dir _log_files sets), the name is
    skipped as "an interpolation only the job can resolve", and the job then appends its log to the
    completed run's status.json. Expected: refused (rc != 0), ``done`` unchanged."""
    runs = tmp_path / "runs"
    runs.mkdir()
    done = copy_run(trained, runs, "done")
    before = _files(done)
    proc = run_cli([*TINY, f"hydra.run.dir={runs / 'new'}",
                    "hydra.job_logging.handlers.file.filename=${hydra:runtime.output_dir}/../done/status.json"])
    assert _files(done) == before, "the completed run's files changed"
    assert proc.returncode != 0


def test_a_presets_env_set_never_points_numbas_cache_at_a_received_run_dir(trained, tmp_path):
    """HOLE (code-exec). ``+hydra.job.env_set.NUMBA_CACHE_DIR=<received run dir>`` on a PyOD model
    (``model=hbos``): pyod_on_features.keep_compiled_code enables numba's cache inside the job, where
    Hydra has set the variable, so numba looks up HBOS's compiled code in the received run dir and
    ``pickle.load``s its index file (``models_<hash>/hbos._calculate_outlier_scores-<line>.py311.nbi``):
    a pickle shipped there runs (marker written by ``os.system``). ``cache.dir`` inside another run
    is refused; this cache is not. Expected: refused (or numba's cache kept out of the run dir), no marker."""
    import pickle
    import sys

    import pyod.models.hbos as hbos
    from numba.core.caching import _CacheLocator

    recv = copy_run(trained, tmp_path, "recv")
    fn = hbos._calculate_outlier_scores.py_func
    folder = recv / _CacheLocator.get_suitable_cache_subpath(hbos.__file__)
    folder.mkdir(parents=True)
    marker = tmp_path / "MARKER"

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    index = f"hbos.{fn.__qualname__}-{fn.__code__.co_firstlineno}.py{sys.version_info[0]}{sys.version_info[1]}.nbi"
    (folder / index).write_bytes(pickle.dumps(Touch()))
    args = [a for a in TINY if not a.startswith("model.")]
    run_cli([*args, "model=hbos", f"hydra.run.dir={tmp_path / 'new'}", f"+hydra.job.env_set.NUMBA_CACHE_DIR={recv}"])
    assert not marker.exists(), "numba unpickled an index file from the received run dir"


def test_a_small_preset_of_yaml_aliases_is_refused_in_one_line_not_expanded(tmp_path):
    """HOLE (lost-run / memory). A 480-byte preset (``-cd presets experiment=bomb``) of 8 levels of
    YAML aliases (10 items each: 10**8 list items once OmegaConf expands them): observed 3.7 GB
    resident under ``ulimit -v 4000000``, no line printed, and the command did not stop on SIGTERM from
    ``timeout 90`` for minutes. Pass T1 bounded this for a run dir's overrides.yaml (the board), not for
    configs Hydra composes. Expected: one line naming experiment/bomb.yaml, within seconds, in
    bounded memory (here: under a 2 GB address-space limit)."""
    import resource
    import signal
    import subprocess
    import sys

    from conftest import _cli_env

    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    lines = ["# @package _global_", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    (presets / "bomb.yaml").write_text("\n".join(lines) + "\n")

    def limit():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    proc = subprocess.Popen([sys.executable, "-m", "pyimgano_hydra", "-cd", str(tmp_path / "presets"),
                             "experiment=bomb", f"hydra.run.dir={tmp_path / 'new'}"], env=_cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a 480-byte preset kept the command busy for over 20 s")
    assert proc.returncode != 0 and "bomb.yaml" in err.strip().splitlines()[-1], err[-1500:]
    assert "Traceback" not in err
