"""Attacker pass Z6: code execution and writes outside the run dir through the real commands
(env_set values a library reads as a path to code, received export folders, received run dirs)."""
import shutil
import subprocess

import pytest

from conftest import TINY, run_cli

NO_CC = shutil.which("cc") is None


def _library_that_touches(folder, marker):
    """A shared library whose constructor writes ``marker`` (an attacker ships it prebuilt)."""
    source = folder / "evil.c"
    source.write_text("#include <stdio.h>\n"
                      "__attribute__((constructor)) static void init(void) {\n"
                      f"  FILE *f = fopen(\"{marker}\", \"a\"); if (f) {{ fputs(\"ran\\n\", f); fclose(f); }}\n"
                      "}\nint OSSL_provider_init(void) { return 0; }\n")
    library = folder / "evil.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


@pytest.mark.skipif(NO_CC, reason="needs a C compiler to build the planted library")
def test_a_presets_env_set_openssl_conf_never_loads_a_library_into_the_decode_workers(tmp_path):
    """HOLE (code-exec). A preset's ``hydra.job.env_set.OPENSSL_CONF=<received dataset>/ossl.cnf``
    (not in the env_set blocklist: LD_*, PYTHON*, NUMBA_*, PATH, HOME...) with ``loader.num_workers=2``:
    the decode workers (forkserver, fresh Pythons) import hashlib, OpenSSL reads the named config and
    dlopen()s the provider ``module = <received dataset>/evil.so`` it lists: its constructor runs in
    every worker (observed: the marker written 4 times, the run completes normally). Expected: refused
    (rc != 0, one line naming the env_set key), or the variable kept from child processes; no marker."""
    marker = tmp_path / "MARKER"
    library = _library_that_touches(tmp_path, marker)
    conf = tmp_path / "ossl.cnf"
    conf.write_text("openssl_conf = init\n[init]\nproviders = prov\n[prov]\nevil = evil_sect\n"
                    f"[evil_sect]\nmodule = {library}\nactivate = 1\n")
    proc = run_cli([*TINY, "loader.num_workers=2", f"hydra.run.dir={tmp_path / 'run'}",
                    f"+hydra.job.env_set.OPENSSL_CONF={conf}"], timeout=120)
    assert not marker.exists(), f"OpenSSL loaded the planted library (rc {proc.returncode})"
    assert proc.returncode != 0 and "hydra.job.env_set.OPENSSL_CONF" in proc.stderr.strip().splitlines()[-1], \
        proc.stderr[-800:]


@pytest.mark.skipif(NO_CC, reason="needs a C compiler to build the planted library")
def test_infer_with_an_env_set_openssl_conf_never_loads_a_library_into_the_decode_workers(trained, tmp_path):
    """HOLE (code-exec). The same through ``python -m pyimgano_hydra.infer`` (an infer preset's
    ``+loader.num_workers=2`` and ``hydra.job.env_set.OPENSSL_CONF``): observed, the marker written
    by 12 workers' loads and predictions.jsonl written as usual."""
    marker = tmp_path / "MARKER"
    library = _library_that_touches(tmp_path, marker)
    conf = tmp_path / "ossl.cnf"
    conf.write_text("openssl_conf = init\n[init]\nproviders = prov\n[prov]\nevil = evil_sect\n"
                    f"[evil_sect]\nmodule = {library}\nactivate = 1\n")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (32, 32), (100 + i, 120, 120)).save(images / f"{i}.png")
    proc = run_cli([f"run_dir={trained}", f"input={images}", f"hydra.run.dir={tmp_path / 'out'}",
                    "+loader.num_workers=2", f"+hydra.job.env_set.OPENSSL_CONF={conf}"],
                   module="pyimgano_hydra.infer", timeout=120)
    assert not marker.exists(), f"OpenSSL loaded the planted library (rc {proc.returncode})"
    assert proc.returncode != 0 and "hydra.job.env_set.OPENSSL_CONF" in proc.stderr.strip().splitlines()[-1], \
        proc.stderr[-800:]


@pytest.mark.parametrize("name, how", [("model.onnx", "hardlink"), ("export.json", "hardlink"),
                                       ("model.onnx", "symlink")])
def test_held_export_of_a_received_run_never_writes_through_a_planted_artifacts_file(trained, tmp_path, name, how):
    """HELD. A received run dir's ``categories/weave/artifacts/<name>`` hard-linked to (or a link to) a
    file outside: export replaces the name in the run dir, the outside file keeps its bytes."""
    import os

    from conftest import copy_run

    run = copy_run(trained, tmp_path)
    artifacts = run / "categories" / "weave" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (os.link if how == "hardlink" else os.symlink)(victim, artifacts / name)
    run_cli([f"run_dir={run}"], module="pyimgano_hydra.export", timeout=120)
    assert victim.read_text() == "precious"


def test_held_resuming_a_received_interrupted_run_never_takes_its_hydra_record(trained, tmp_path):
    """HELD. An interrupted run whose ``.hydra/config.yaml`` names ``_target_: os.system`` and whose
    ``hydra.yaml`` sets ``env_set.OPENSSL_CONF``: the resume composes the config from the line and
    rewrites Hydra's record, nothing of the received one is instantiated or set."""
    from conftest import interrupted_copy

    run = interrupted_copy(trained, tmp_path / "run")
    marker = tmp_path / "MARKER"
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace(
        "_target_: pyimgano_hydra.data.synthetic.SyntheticDataset",
        f"_target_: os.system\n  command: touch {marker}"))
    hydra = run / ".hydra" / "hydra.yaml"
    hydra.write_text(hydra.read_text().replace("env_set: {}", f"env_set:\n      OPENSSL_CONF: {tmp_path}/x.cnf"))
    proc = run_cli([*TINY, f"hydra.run.dir={run}"], timeout=120)
    assert not marker.exists()
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "os.system" not in config.read_text() and "OPENSSL_CONF" not in hydra.read_text()
