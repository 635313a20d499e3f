"""Pass W4 (lab side): a shared feature cache, a handed-over MLflow store, the python api on
arrays it was not fitted for; variants not in the earlier passes."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, cache_entries, run_cli, scores_as_fresh_after_rewriting


# ---- the feature cache ------------------------------------------------------------------------
def _npy(shape) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


def _zip64_lying(path: Path, members, declared: int = 1 << 60) -> None:
    """A stored zip whose central directory declares each member ``declared`` bytes long (a zip64
    extra field) while it holds 64 bytes of data."""
    out, central = io.BytesIO(), b""
    for name, data in members:
        name, crc, offset = name.encode(), zlib.crc32(data), out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, len(data), len(data), len(name), 0))
        out.write(name + data)
        extra = struct.pack("<HHQ", 1, 8, declared)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, len(data), 0xFFFFFFFF,
                               len(name), len(extra), 0, 0, 0, 0, offset) + name + extra
    start = out.tell()
    out.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0))
    path.write_bytes(out.getvalue())


def _run_with_cache(cache: Path, tmp_path: Path):
    return run_cli([*TINY, f"cache.dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], timeout=300)


def test_a_cache_entry_whose_zip64_size_lies_is_a_miss(warm, tmp_path):
    """One entry of a shared cache replaced by a 400-byte stored zip whose ``blocks.2.npy`` header declares a
    (10**7, 10**6) float32 array and whose central directory (zip64 extra) declares the member 2**60
    bytes long: ``read_entry`` checks the declared array size against ``info.file_size`` (the lie), then
    ``np.load`` allocates it. Observed: the run fails, "error: job [...]: numpy._core._exceptions.
    _ArrayMemoryError: Unable to allocate 36.4 TiB ...", status.json "failed", naming neither the cache nor
    the entry. Expected (docs/WORKBENCH.md: an entry that is not a plain npz is recomputed): a miss."""
    cache = tmp_path / "cache"
    shutil.copytree(warm[0], cache)
    entry = cache_entries(cache)[0]
    entry.unlink()
    _zip64_lying(entry, [("blocks.2.npy", _npy((10**7, 10**6))), ("blocks.4.npy", _npy((112, 8, 8)))])
    proc = _run_with_cache(cache, tmp_path)
    assert proc.returncode == 0 or str(entry) in proc.stderr, proc.stderr[-800:]


@pytest.mark.parametrize("spatial", [1, 0], ids=["1x1", "0x0"])
def test_cache_entries_of_one_wrong_shape_for_every_image_are_not_trusted(warm, tmp_path, spatial):
    """Every entry of a shared cache rewritten with the backbone's layers at (C, 1, 1) (the backbone gives
    (40, 16, 16) and (112, 8, 8)): ``map_images`` compares stored rows only with each other and with rows
    it computes; with every row a hit it computes none, so the wrong shapes go to the detector. Observed:
    exit 0, "completed", image AUROC 0.5000 (1.0000 from the same images extracted afresh), px AUROC
    0.5000, threshold 0; at (C, 0, 0) (a 204 KB cache) the run fails: "error: job [...]: RuntimeError: Expected
    3D or 4D (batch mode) tensor ... but got:[12, 40, 0, 0]", naming no entry; at (C, 300, 300) (1.3 GB of
    entries) it ran past 120 s at 2.6 GB. docs/WORKBENCH.md: "an entry that is not a regular, uncompressed npz of plain
    numbers with the batch's layers and shapes is recomputed". Expected: the same metrics as a fresh
    run, or a refusal naming the cache."""
    cache = tmp_path / "cache"
    shutil.copytree(warm[0], cache)
    scores_as_fresh_after_rewriting(warm, cache, tmp_path, lambda shape: (shape[0], spatial, spatial))


# ---- MLflow: a handed-over store ---------------------------------------------------------------
def test_a_handed_over_mlflow_store_never_writes_artifacts_into_a_completed_run(trained, tmp_path):
    """``outputs/mlruns`` handed over (or shared) with the experiment ``pyimgano_hydra``'s meta.yaml saying
    ``artifact_location: file://<a completed run>/categories``: ``+callbacks=mlflow`` checks where the
    store lies (``foreign_run``), not where the experiment keeps artifacts, and ``log_artifacts`` copies the
    new run dir there. Observed: the completed run gains ``categories/<mlflow run id>/artifacts/`` holding
    another run's report.json, inspector.pt... Expected: a completed run is never written into (not logged,
    with a warning naming the artifact location, as for a store inside a run)."""
    victim = tmp_path / "victim"
    shutil.copytree(trained, victim)
    before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    lab = tmp_path / "lab"
    experiment = lab / "outputs" / "mlruns" / "1"
    experiment.mkdir(parents=True)
    (experiment / "meta.yaml").write_text(
        f"artifact_location: {(victim / 'categories').as_uri()}\ncreation_time: 1796491075140\n"
        "experiment_id: '1'\nlast_update_time: 1796491075140\nlifecycle_stage: active\nname: pyimgano_hydra\n")
    proc = run_cli([*TINY, "+callbacks=mlflow", f"hydra.run.dir={lab / 'run'}"], cwd=lab, timeout=300)
    assert (lab / "run" / "report.json").is_file(), proc.stderr[-800:]
    after = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    assert after == before, sorted(set(after) - set(before))[:5]


# ---- the python api ------------------------------------------------------------------------------
def _good_images(inspector, run_dir: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (run_dir / "categories" / "weave" / "per_image.jsonl").read_text().splitlines()]
    paths = [r["path"] for r in rows if r["label"] == 0 and r["pred_label"] == 0][:2]
    assert len(paths) == 2
    return inspector.load_images(paths)


@pytest.mark.parametrize("change", [lambda x: np.ascontiguousarray(x[:, ::2, ::2]),
                                    lambda x: np.ascontiguousarray(x[:, :1, :1]),
                                    lambda x: np.ascontiguousarray(x[..., :1])],
                         ids=["half-size", "1x1", "one-channel-for-rgb"])
def test_api_never_scores_images_unlike_those_it_was_fitted_on(trained, change):
    """``load_inspector(run).predict(images)`` on uint8 arrays of another size than the run's
    ``preprocessing.resize`` (128: 64x64 or 1x1 given) or with one channel for an ``input_mode: rgb``
    detector: scored as they are. Observed: two good parts predicted [0 0] at 128x128 are [1 1] (scores
    36.9/42.5 vs threshold 12.3 at 64x64; 33.9 at 1x1; 24.9 one-channel): a silent wrong verdict (infer
    resizes its files; the api's arrays are neither resized nor refused, though float, CHW and 4-channel
    arrays are refused). Expected: refused in one line (DataError/UserError), or the same verdict as the
    fitted size."""
    from pyimgano_hydra.api import load_inspector
    from pyimgano_hydra.errors import UserError

    inspector = load_inspector(trained)
    images = _good_images(inspector, trained)
    assert list(inspector.predict(images)) == [0, 0]
    try:
        verdict = inspector.predict(change(images))
    except UserError:
        return
    assert list(verdict) == [0, 0], verdict


def test_api_an_empty_batch_does_not_blame_the_run(trained):
    """``inspector.predict(images[:0])`` (an empty (0, 128, 128, 3) uint8 batch, e.g. a filter that kept
    nothing): "UserError: <run>/categories/weave/inspector.pt: scoring with the stored detector failed
    (ValueError: need at least one array to concatenate)": the stored run is blamed for the caller's empty
    batch. Expected: an empty result, or an error about the batch that does not name inspector.pt."""
    from pyimgano_hydra.api import load_inspector
    from pyimgano_hydra.errors import UserError

    inspector = load_inspector(trained)
    images = _good_images(inspector, trained)
    try:
        verdict = inspector.predict(images[:0])
    except UserError as exc:
        assert "inspector.pt" not in str(exc), str(exc)
        return
    assert len(verdict) == 0


def test_a_fifo_in_a_handed_over_mlflow_store_never_hangs_the_command(tmp_path):
    """``outputs/mlruns/1/meta.yaml`` a FIFO (a handed-over or shared store): the run completes, then
    ``+callbacks=mlflow``'s ``on_job_end`` (``mlflow.set_experiment`` lists the experiments, opening each
    meta.yaml) blocks on it forever. Observed: "run dir: ..." then nothing; killed by ``timeout 60`` ("interrupted:
    SIGTERM; the run had completed"); in a sweep the jobs after the first never start. Expected: the store's
    special file skipped or refused in one line (not logged), the command ends."""
    import subprocess

    lab = tmp_path / "lab"
    (lab / "outputs" / "mlruns" / "1").mkdir(parents=True)
    os.mkfifo(lab / "outputs" / "mlruns" / "1" / "meta.yaml")
    try:
        proc = run_cli([*TINY, "+callbacks=mlflow", f"hydra.run.dir={lab / 'run'}"], cwd=lab, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("the command hung on the FIFO outputs/mlruns/1/meta.yaml after the run completed")
    assert (lab / "run" / "report.json").is_file(), proc.stderr[-800:]


def test_a_percent_encoded_tracking_uri_never_writes_into_a_completed_run(trained, tmp_path):
    """``hydra.callbacks.mlflow.tracking_uri=file:///<parent>/%76ictim/mlruns`` (``%76`` = ``v``; a preset
    or a colleague's command line): ``on_job_end`` checks ``urlparse(uri).path`` undecoded, a folder that does
    not exist, so ``foreign_run`` finds no run; MLflow decodes the URI and creates ``mlruns/`` (experiment,
    run, a copy of the new run dir as artifacts) inside the completed run ``victim``. Expected: the
    decoded path checked as the plain one is ("not logged: ... lies inside the run dir ...")."""
    victim = tmp_path / "victim"
    shutil.copytree(trained, victim)
    before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    uri = (tmp_path / "victim").as_uri().replace("/victim", "/%76ictim") + "/mlruns"
    lab = tmp_path / "lab"
    lab.mkdir()
    proc = run_cli([*TINY, "+callbacks=mlflow", f"hydra.callbacks.mlflow.tracking_uri={uri}",
                    f"hydra.run.dir={lab / 'run'}"], cwd=lab, timeout=300)
    assert (lab / "run" / "report.json").is_file(), proc.stderr[-800:]
    after = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    assert after == before, sorted(set(after) - set(before))[:5]


@pytest.mark.parametrize("max_gb", [1e-10, 1e-300])
def test_a_cache_limit_under_one_byte_is_not_no_limit(tmp_path, max_gb):
    """``cache.max_gb=1e-10`` passes the check (finite, > 0), then ``int(max_gb * 1024**3)`` is 0 and
    ``FeatureCache`` reads a 0 limit as "no limit": the smallest limits give an unbounded cache
    (``1e-9`` gives 1 byte). Expected: refused naming ``cache.max_gb``, or a limit of at most 1 byte."""
    from pyimgano_hydra.errors import UserError
    from pyimgano_hydra.features.cache import open_cache

    try:
        cache = open_cache(dir=tmp_path / "cache", max_gb=max_gb)
    except UserError as exc:
        assert "cache.max_gb" in str(exc)
        return
    assert cache.max_bytes is not None and cache.max_bytes <= 1, cache


def test_an_empty_pyimgano_cache_is_not_the_filesystem_root(monkeypatch):
    """``PYIMGANO_CACHE=`` (set but empty: ``export PYIMGANO_CACHE=$SCRATCH`` with ``$SCRATCH`` unset on a
    node): ``oc.env`` returns "" and the defaults become ``/features`` (cache.dir) and ``/synthetic``
    (the synthetic dataset's root). Observed as root: a TINY run generated the synthetic dataset in
    ``/synthetic`` and completed. Expected: an empty value treated as unset (~/.cache/pyimgano_hydra), or
    refused naming PYIMGANO_CACHE."""
    from pyimgano_hydra.api import compose_config
    from pyimgano_hydra.errors import UserError

    monkeypatch.setenv("PYIMGANO_CACHE", "")
    try:
        cfg = compose_config(["dataset=synthetic"])
        places = [str(cfg.cache.dir), str(cfg.dataset.root)]
    except UserError as exc:
        assert "PYIMGANO_CACHE" in str(exc)
        return
    assert not any(p.startswith(("/features", "/synthetic")) for p in places), places


def test_a_requeued_run_resumes_with_another_cache_folder(tmp_path):
    """A run interrupted on one node, requeued on another whose ``PYIMGANO_CACHE`` differs (node-local
    scratch), same command line and dataset.root: ``config_hash`` hashes the resolved config, ``cache.dir``
    (``$PYIMGANO_CACHE/features``) included, so the requeued job is refused: "error: hydra.run.dir=...:
    already holds a run of another config (unfinished); runs are never overwritten" and the run is never
    finished. The cache is keyed by content (where it lies changes no result). Expected: resumed."""
    from conftest import interrupted_copy

    args = [*TINY, f"dataset.root={os.environ['PYIMGANO_CACHE']}/synthetic"]
    first = run_cli([*args, f"hydra.run.dir={tmp_path / 'done'}"], env={"PYIMGANO_CACHE": str(tmp_path / "node1")})
    assert first.returncode == 0, first.stderr[-800:]
    run_dir = interrupted_copy(tmp_path / "done", tmp_path / "run")
    proc = run_cli([*args, f"hydra.run.dir={run_dir}"], env={"PYIMGANO_CACHE": str(tmp_path / "node2")}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"



# ---- recipe options ------------------------------------------------------------------------------
def test_a_tiling_stride_past_the_tile_is_refused_naming_it(tmp_path):
    """``tiling=tile128 tiling.tile_size=32 tiling.stride=90`` on 128-pixel images: the schema checks only
    ``stride >= 1``; tiles start at 0, 90, 96 and leave pixels 32..90 of each axis in no tile. Observed: the
    run fails after extracting every tile's features: "error: job [...]: ValueError: 'list' argument must
    have no negative elements", naming no key (status.json "failed"). Expected: refused up front in one line
    naming tiling.stride (a stride above tile_size leaves gaps no tile scores), or a run that completes."""
    proc = run_cli([*TINY, "tiling=tile128", "tiling.tile_size=32", "tiling.stride=90",
                    f"hydra.run.dir={tmp_path / 'run'}"], timeout=300)
    # the job line quotes the override itself: the reason after it must name the key
    reason = proc.stderr.split("']:", 1)[-1]
    assert proc.returncode == 0 or "tiling.stride" in reason, proc.stderr[-500:]


# ---- attacks that held ---------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["categories/new", ".", "../fresh/../victim/x"], ids=["inside", "same", "dotdot"])
def test_held_api_run_never_writes_into_a_completed_run(trained, tmp_path, where):
    """``api.run(overrides, output_dir=<completed run>/...)``: refused naming output_dir, record unchanged."""
    from pyimgano_hydra.api import run
    from pyimgano_hydra.errors import UserError

    victim = tmp_path / "victim"
    shutil.copytree(trained, victim)
    before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    with pytest.raises(UserError, match="output_dir"):
        run(TINY, output_dir=os.path.normpath(victim / where) if where != "../fresh/../victim/x" else f"{victim}/../fresh/../victim/x")
    assert sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == before


def test_held_api_arrays_of_other_layouts_score_alike_or_are_refused(trained):
    """Fortran-ordered, read-only, big-endian-uint8 copies score as the plain array; float, uint16, bool,
    CHW, (H, W, 3) without a batch axis, 4-channel and object arrays are refused (DataError)."""
    from pyimgano_hydra.api import load_inspector
    from pyimgano_hydra.errors import DataError

    inspector = load_inspector(trained)
    images = _good_images(inspector, trained)
    base = inspector.decision_function(images)
    readonly = images.copy()
    readonly.setflags(write=False)
    for same in (np.asfortranarray(images), readonly, images.astype(">u1")):
        assert np.allclose(inspector.decision_function(same), base)
    for bad in (images / 255.0, images.astype(np.uint16), images > 127, images.transpose(0, 3, 1, 2), images[0],
                np.concatenate([images, images[..., :1]], -1), images.astype(object)):
        with pytest.raises(DataError):
            inspector.decision_function(bad)


def test_held_a_deleted_experiment_in_a_handed_over_store_keeps_the_run_completed(tmp_path):
    """``outputs/mlruns/1/meta.yaml`` naming ``pyimgano_hydra`` with ``lifecycle_stage: deleted``: MLflow refuses
    the experiment in on_job_end (a warning); the run stays completed, exit 0."""
    lab = tmp_path / "lab"
    (lab / "outputs" / "mlruns" / "1").mkdir(parents=True)
    (lab / "outputs" / "mlruns" / "1" / "meta.yaml").write_text(
        f"artifact_location: {(lab / 'outputs' / 'mlruns' / '1').as_uri()}\ncreation_time: 1\nexperiment_id: '1'\n"
        "last_update_time: 1\nlifecycle_stage: deleted\nname: pyimgano_hydra\n")
    proc = run_cli([*TINY, "+callbacks=mlflow", f"hydra.run.dir={lab / 'run'}"], cwd=lab, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert json.loads((lab / "run" / "status.json").read_text())["status"] == "completed"
