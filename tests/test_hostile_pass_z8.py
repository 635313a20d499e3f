"""Attacker pass Z8: code execution and writes outside the run dir through hydra.job.env_set's allowlist,
Hydra launcher settings and the python api."""
from conftest import TINY, run_cli


def test_env_set_naming_a_received_run_dir_itself_is_refused(trained, tmp_path):
    """HOLE (low: a library reads planted data files from a received run). ``hydra.job.env_set`` is
    refused for a value inside another run, but ``inside_a_run`` looks only at the path's parents: the run
    dir itself passes (observed: ``+hydra.job.env_set.LC_ALL=<completed run>`` trains and completes; glibc
    then takes the locale files ``<run>/LC_CTYPE``... from the received run in every child process;
    ``PYIMGANO_CACHE=<run>`` passed the env_set check too, stopped only later by cache.dir's own check).
    Expected: refused in one line naming the key."""
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / 'run'}", f"+hydra.job.env_set.LC_ALL={trained}"],
                   timeout=120)
    assert proc.returncode != 0 and "hydra.job.env_set.LC_ALL" in proc.stderr.strip().splitlines()[-1], \
        proc.stderr[-800:]


def test_env_set_value_the_job_cannot_resolve_is_refused_naming_the_key(tmp_path):
    """HOLE (cosmetic). The env_set check resolves a value in an untyped copy of the whole config; Hydra
    resolves it in its typed, hydra-only config. ``${oc.env:UNSET,null}`` (None, refused by Dict[str, str])
    and ``${tag}`` (no ``tag`` outside the hydra node) pass the check, the run dir is claimed and the job
    fails with ``error: omegaconf.errors.InterpolationValidationError: ...`` naming no key. Expected: refused
    before the run, the line naming hydra.job.env_set.TZ (as documented: an unresolvable one is refused)."""
    out = tmp_path / "run"
    proc = run_cli([*TINY, f"hydra.run.dir={out}", "+hydra.job.env_set.TZ=${oc.env:Z8_SURELY_UNSET,null}"],
                   timeout=120)
    assert proc.returncode != 0
    assert "hydra.job.env_set.TZ" in proc.stderr.strip().splitlines()[-1], proc.stderr[-800:]


def test_held_env_set_cache_root_into_a_run_never_writes_there(trained, tmp_path):
    """HELD. ``+hydra.job.env_set.PYIMGANO_CACHE=<completed run>/c`` is refused by the env_set check; set
    to the run dir itself, cache.dir's check in the job refuses it: nothing is written into the run."""
    before = sorted(p.name for p in trained.iterdir())
    for value, out in ((trained / "c", "a"), (trained, "b")):
        proc = run_cli([*TINY, f"hydra.run.dir={tmp_path / out}", f"+hydra.job.env_set.PYIMGANO_CACHE={value}"],
                       timeout=120)
        assert proc.returncode != 0, proc.stderr[-800:]
    assert sorted(p.name for p in trained.iterdir()) == before


def test_held_api_run_output_dir_inside_a_run_is_refused(trained):
    """HELD. ``api.run(output_dir=<completed run>/categories[/new])`` raises UserError naming output_dir."""
    import subprocess
    import sys

    from conftest import REPO, _cli_env

    code = ("from pyimgano_hydra import api\nfrom pyimgano_hydra.errors import UserError\n"
            f"for o in [{str(trained / 'categories')!r}, {str(trained / 'categories' / 'new')!r}]:\n"
            f"    try:\n        api.run({TINY!r}, output_dir=o); print('RAN')\n"
            "    except UserError as e: print('REFUSED', 'output_dir' in str(e))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_cli_env(None), capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split() == ["REFUSED", "True", "REFUSED", "True"], proc.stdout + proc.stderr[-800:]
