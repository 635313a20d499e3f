"""Attacker pass O1 (line side): received run dirs, exported bundles and image folders handed to
infer / export / score_onnx. Each test fails on the code it was written against and passes once
the hole is closed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY as TINY_ARGS, copy_run, run_cli, small_png, trained_run
from watch_files import _on_first_close

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _changes(run_dir: Path, before: dict):
    after = _snapshot(run_dir)
    return sorted(set(after) - set(before)), sorted(k for k in before if after.get(k) != before[k])


def test_an_export_whose_category_folder_is_swapped_while_its_inspector_loads_never_writes_into_another_run(
        trained, tmp_path):
    """export of run A: export.export_category checks artifacts/ for links (trust.no_links), then loads
    the inspector, and only then pins the category folder (``held_folder(out_dir.parent)``, which
    follows links). The moment A's inspector.pt is closed after reading (inotify), A's category
    folder is renamed away and replaced by a link to completed run B's ``categories/weave``.
    Observed: rc 0, ``artifacts/model.onnx`` and ``export.json`` written into B (a completed run's
    record changed; with B exported before, B's model replaced by A's). Expected: B unchanged; the
    export lands in A's folder it checked (now moved) or stops in one line, rc != 0 (pin the
    category folder before the check, or open it with O_NOFOLLOW relative to a pinned categories/)."""
    run_a = copy_run(trained, tmp_path, "a")
    done = copy_run(trained, tmp_path, "b")
    before = _snapshot(done)
    moved = tmp_path / "moved"

    def swap() -> None:
        os.rename(run_a / "categories" / "weave", moved)
        os.symlink(done / "categories" / "weave", run_a / "categories" / "weave")

    watcher = _on_first_close(run_a / "categories" / "weave" / "inspector.pt", swap)
    try:
        proc = run_cli([f"run_dir={run_a}"], module="pyimgano_hydra.export", timeout=180)
    finally:
        watcher.join(5)
    assert os.path.islink(run_a / "categories" / "weave"), "the swap did not happen"
    added, changed = _changes(done, before)
    assert not added and not changed, (added, changed, proc.returncode, proc.stderr[-300:])
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert proc.returncode != 0 or (moved / "artifacts" / "export.json").is_file(), proc.stderr[-300:]


_FLIP = r'''
import os, sys, threading, time
from pathlib import Path
import torch
run, outside, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
cat = run / "categories" / "weave"
ins = cat / "inspector.pt"
state = torch.load(ins, weights_only=True)
state["image_threshold"]["value"] = 123.0  # the outside file: a valid inspector, its threshold told apart
torch.save(state, outside)
saved = cat.parent / ".saved.pt"
os.link(ins, saved)
from pyimgano_hydra.errors import UserError
from pyimgano_hydra.runs.load import load_run
loaded = load_run(run)
stop = False
def flip():
    while not stop:
        os.symlink(outside, cat / ".l"); os.replace(cat / ".l", ins)
        os.link(saved, cat / ".r"); os.replace(cat / ".r", ins)
threading.Thread(target=flip, daemon=True).start()
hits = refused = ok = 0
start = time.monotonic()
while time.monotonic() - start < seconds and not hits:
    try:
        inspector = loaded.inspector("weave", device="cpu")
    except UserError:
        refused += 1
        continue
    if inspector.image_threshold["value"] == 123.0:
        hits += 1
    else:
        ok += 1
stop = True
print(f"hits={hits} refused={refused} ok={ok}")
'''


def test_an_inspector_link_swapped_in_after_its_confined_check_is_never_read_from_outside(trained, tmp_path):
    """``LoadedRun.inspector`` checks ``categories/<cat>/inspector.pt`` with ``trust.confined`` (by
    name: ``path.resolve()`` inside the run dir), then ``trust.torch_file`` opens it again by name
    with ``open_regular``, which follows a symlink. A run dir whose inspector.pt flips between the
    real file and a symlink to a file outside the run dir (a share the sender still writes to):
    within seconds one load passes the check on the real file and reads the outside file (observed:
    hits=1 of ~100 loads, its threshold 123.0 used). Expected: never (open with O_NOFOLLOW, and the
    folders relative to a descriptor of the run dir, then check that descriptor); refused or the
    run's own file. The same check-then-open-by-name holds for report.json and status.json."""
    run_dir = copy_run(trained, tmp_path)
    script = tmp_path / "flip.py"
    script.write_text(_FLIP)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script), str(run_dir), str(tmp_path / "outside.pt"), "20"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "hits=0" in proc.stdout, proc.stdout


def _infer_swapping(run_dir, image, out, watched, folder, target, tmp_path):
    """infer of ``image`` with ``run_dir`` into ``out``; the moment ``watched`` is first closed after
    reading, ``folder`` is renamed away and replaced by a link to ``target``."""
    def swap() -> None:
        os.rename(folder, tmp_path / "moved")
        os.symlink(target, folder)

    watcher = _on_first_close(watched, swap)
    try:
        proc = run_cli([f"run_dir={run_dir}", f"input={image}", f"hydra.run.dir={out}"],
                       module="pyimgano_hydra.infer", timeout=180)
    finally:
        watcher.join(5)
    assert os.path.islink(folder), "the swap did not happen"
    return proc


def test_an_infer_output_dir_swapped_while_the_run_dir_loads_never_writes_into_a_completed_run(trained, tmp_path):
    """infer into a new ``hydra.run.dir``: Hydra's claim makes it, ``run_inference`` checks it holds no
    status.json, reads the received run (load_run), and only then pins the output dir with
    ``held_folder(out)``, which follows links. The moment the received run's report.json is closed
    after reading (inotify), the new output dir is renamed away and replaced by a link to a completed
    run. Observed: infer's status.json / predictions.jsonl / summary.json written into the completed
    run (its status.json replaced). Expected: the completed run unchanged (the output dir pinned when
    claimed, or opened with O_NOFOLLOW and checked to be the claimed one), one line, rc != 0, or
    infer finishing in the folder it made."""
    received = copy_run(trained, tmp_path, "received")
    done = copy_run(trained, tmp_path, "done")
    before = _snapshot(done)
    new = tmp_path / "new"
    proc = _infer_swapping(received, small_png(trained), new, received / "report.json", new, done, tmp_path)
    added, changed = _changes(done, before)
    assert not added and not changed, (added, changed, proc.returncode, proc.stderr[-300:])
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    run_dir = copy_run(trained, tmp_path_factory.mktemp("exported"))
    proc = run_cli([f"run_dir={run_dir}"], module="pyimgano_hydra.export", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


_FLIP_FIFO = r'''
import os, sys, threading, time
from pathlib import Path
run, seconds = Path(sys.argv[1]), float(sys.argv[2])
cat = run / "categories" / "weave"
model = cat / "artifacts" / "model.onnx"
saved = cat / ".saved.onnx"
os.link(model, saved)
from pyimgano_hydra.errors import UserError
from pyimgano_hydra.export.runtime import read_export
stop = False
def flip():
    while not stop:
        os.mkfifo(cat / ".f"); os.replace(cat / ".f", model)
        os.link(saved, cat / ".r"); os.replace(cat / ".r", model)
threading.Thread(target=flip, daemon=True).start()
read = refused = 0
start = time.monotonic()
while time.monotonic() - start < seconds:
    try:
        read_export(run, cat, "weave")
        read += 1
    except UserError:
        refused += 1
stop = True
print(f"no hang: read={read} refused={refused}", flush=True)
'''


def test_infer_onnxruntime_never_waits_on_a_model_onnx_swapped_for_a_fifo_after_its_check(exported, tmp_path):
    """``export.runtime.read_export`` checks ``artifacts/model.onnx`` by name (``is_file``, ``stat``)
    and then reads it again by name (``Path.read_bytes``, a blocking open). A model.onnx that a
    sender keeps swapping between the real file and a FIFO (rename): one read passes the check on
    the real file and opens the FIFO, and blocks forever (observed: the loop of loads never ends;
    killed after 40 s). The inspector got one descriptor for check and read (trust.torch_file);
    the exported model did not. Expected: every load reads the bytes checked or is refused in one
    line; no hang."""
    run_dir = copy_run(exported, tmp_path)
    script = tmp_path / "flip_fifo.py"
    script.write_text(_FLIP_FIFO)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run([sys.executable, str(script), str(run_dir), "8"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("read_export hung on model.onnx swapped for a FIFO after its is_file check")
    assert "no hang" in proc.stdout, (proc.stdout, proc.stderr[-800:])


@pytest.fixture(scope="module")
def other_exported(tmp_path_factory):
    """A second completed, exported run of the same category, fitted on fewer images."""
    root = tmp_path_factory.mktemp("other") / "run"
    proc = run_cli([*[a for a in TINY_ARGS if not a.startswith("dataset.limit_train")], "dataset.limit_train=6",
                    f"hydra.run.dir={root}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli([f"run_dir={root}"], module="pyimgano_hydra.export", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_infer_onnxruntime_never_scores_another_fits_export_against_this_runs_threshold(trained, other_exported,
                                                                                     tmp_path):
    """A run dir whose ``categories/weave/artifacts/`` (model.onnx + export.json, sha256 matching
    each other) come from another fit of the same category (a bundle put together by hand, a stale
    export copied over). ``infer runtime=onnxruntime`` takes the scores from that model and the
    threshold, postprocess and preprocessing from this run's inspector.pt; nothing ties the two
    (export.json's own image_threshold, 10.81 here, is never compared with the inspector's 12.30).
    Observed: rc 0, scores of the other fit (56.05 where runtime=torch gives 55.03) judged against
    this run's threshold, no warning. Expected: refused in one line naming export.json (its
    thresholds / postprocess / preprocessing / detector state differ from inspector.pt's), or the
    verdict made with the export's own threshold."""
    run_dir = copy_run(trained, tmp_path)
    ours = run_dir / "categories" / "weave" / "artifacts"
    import shutil

    shutil.rmtree(ours, ignore_errors=True)
    shutil.copytree(other_exported / "categories" / "weave" / "artifacts", ours)
    manifest = json.loads((ours / "export.json").read_text())
    out = tmp_path / "out"
    proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained)}", "runtime=onnxruntime",
                    f"hydra.run.dir={out}"], module="pyimgano_hydra.infer", timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    if proc.returncode == 0:
        record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
        assert record["threshold"] == pytest.approx(manifest["image_threshold"]["value"]), \
            (record, manifest["image_threshold"])
    else:
        assert "export.json" in proc.stderr or "model.onnx" in proc.stderr, proc.stderr[-500:]


@pytest.fixture(scope="module")
def trained_lof(tmp_path_factory):
    return trained_run(tmp_path_factory, model="lof")


def test_a_pyod_inspector_with_in_range_loda_params_never_takes_gigabytes_to_load(trained_lof, tmp_path):
    """A PyODOnFeatures inspector (the run's own 12 training embeddings) re-signed as
    ``pyod.models.loda.LODA`` (a registry class) with ``n_bins=10000, n_random_cuts=10000``: both
    pass ``trust.bounded_ints`` (-1..10,000) and the schema check. Loading re-fits LODA, which
    allocates and fills two 10,000 x 10,000 float64 arrays (histograms and limits: 1.6 GB) on a
    file of a few KB. Expected: refused before fitting (the re-fit's size bounded, not each int
    alone) or memory under 1.5 GB."""
    import torch

    from forged_onnx import max_rss_mb

    run_dir = copy_run(trained_lof, tmp_path)
    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    loda = {"contamination": 0.1, "n_bins": 10000, "n_random_cuts": 10000}
    state["detector"]["params"]["detector"] = {"name": "pyod.models.loda.LODA", "params": loda}
    state["detector"]["state"].update(detector_class="pyod.models.loda.LODA", detector_params=loda)
    torch.save(state, path)
    rc, stderr, rss = max_rss_mb([sys.executable, "-m", "pyimgano_hydra.infer", f"run_dir={run_dir}",
                                  f"input={small_png(trained_lof)}", f"hydra.run.dir={tmp_path / 'out'}"], timeout=120)
    assert rss < 1536, f"infer took {rss} MB (rc {rc}) for a {path.stat().st_size >> 10} KB inspector: {stderr[-300:]}"
    assert "Traceback" not in stderr, stderr[-500:]


def test_a_pyod_inspector_with_in_range_gmm_params_never_hangs_infer(trained_lof, tmp_path):
    """A PyODOnFeatures inspector re-signed as ``pyod.models.gmm.GMM`` with ``n_init=10000,
    max_iter=10000, tol=0.0``: ints within ``bounded_ints``' -1..10,000, a float no check bounds.
    Loading re-fits GMM: up to 10^8 EM iterations on 12 embeddings (tol 0 never converges).
    Observed: infer still running after 60 s (status.json ``running``). Expected: refused before
    fitting in one line naming the inspector (the re-fit's cost bounded), or done within seconds."""
    import torch

    run_dir = copy_run(trained_lof, tmp_path)
    path = run_dir / "categories" / "weave" / "inspector.pt"
    state = torch.load(path, weights_only=True)
    gmm = {"contamination": 0.1, "n_components": 1, "n_init": 10000, "max_iter": 10000, "tol": 0.0}
    state["detector"]["params"]["detector"] = {"name": "pyod.models.gmm.GMM", "params": gmm}
    state["detector"]["state"].update(detector_class="pyod.models.gmm.GMM", detector_params=gmm)
    torch.save(state, path)
    out = tmp_path / "out"
    try:
        proc = run_cli([f"run_dir={run_dir}", f"input={small_png(trained_lof)}", f"hydra.run.dir={out}"],
                       module="pyimgano_hydra.infer", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("infer still re-fitting a stored GMM after 60 s")
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]


def test_infer_run_twice_in_an_image_folder_never_scores_its_own_earlier_masks(trained, tmp_path):
    """The line's routine: ``cd /line/images && pyimgano-hydra-infer run_dir=... input=. defects=default``,
    twice. The first writes ``outputs/infer/<date>/<time>/masks/*.png`` under the image folder (the
    default ``hydra.run.dir`` is relative to the working dir); the second walks ``.`` recursively
    (infer._walk skips nothing) and scores the first one's defect masks as line images. Observed:
    rc 0, "12 images scored ... 11 anomalous" for a folder of 6 parts, the masks' verdicts in
    predictions.jsonl and summary.json. Expected: folders that are infer or run dirs (status.json,
    .hydra/) are not input; the second run scores the 6 parts."""
    import shutil

    line = tmp_path / "line"
    line.mkdir()
    records = [json.loads(r) for r in (trained / "categories" / "weave" / "per_image.jsonl").read_text().splitlines()]
    for record in records[:3] + records[-3:]:
        source = Path(record["path"])
        shutil.copy(source, line / f"{source.parent.name}_{source.name}")
    args = [f"run_dir={trained}", "input=.", "defects=default", "defects.pixel_threshold=5.0"]
    first = run_cli([*args, "hydra.run.dir=outputs/infer/first"], cwd=line, module="pyimgano_hydra.infer", timeout=180)
    assert first.returncode == 0, first.stderr[-500:]
    assert list((line / "outputs" / "infer" / "first").rglob("*.png")), "the first run wrote no mask"
    second = run_cli([*args, "hydra.run.dir=outputs/infer/second"], cwd=line, module="pyimgano_hydra.infer",
                     timeout=180)
    assert second.returncode == 0, second.stderr[-500:]
    summary = json.loads((line / "outputs" / "infer" / "second" / "summary.json").read_text())
    assert summary["n_images"] == 6, (summary["n_images"], second.stdout[-300:])



_FLIP_WEIGHTS = r'''
import os, sys, threading, time
from pathlib import Path
base = Path(sys.argv[1]); seconds = float(sys.argv[2])
run = base / "run"; cat = run / "categories" / "weave"
cat.mkdir(parents=True)
(cat / "backbone_weights.pt").write_bytes(b"inside")
outside = base / "outside"; outside.mkdir()
(outside / "backbone_weights.pt").write_bytes(b"outside")
away = run / "categories" / ".away"
from pyimgano_hydra.errors import UserError
from pyimgano_hydra.inspector import _stored_weights
from pyimgano_hydra.runs.layout import RunDir
from pyimgano_hydra.runs.load import LoadedRun
from pyimgano_hydra.files import KeptFolder
loaded = LoadedRun(RunDir(run), {}, {"weave": "categories/weave/inspector.pt"}, KeptFolder(run))
stop = False
def flip():  # the category folder, then a link out in its place, then the folder again
    while not stop:
        os.rename(cat, away); os.symlink(str(outside), cat)
        os.unlink(cat); os.rename(away, cat)
threading.Thread(target=flip, daemon=True).start()
hits = refused = ok = 0
start = time.monotonic()
while time.monotonic() - start < seconds and not hits:
    try:
        with loaded.category_folder("weave") as folder:
            held = _stored_weights("backbone_weights.pt", str(cat / "inspector.pt"), folder, False)
    except UserError:
        refused += 1
        continue
    data = open(held, "rb").read()
    hits += data == b"outside"
    ok += data == b"inside"
stop = True
print(f"hits={hits} refused={refused} ok={ok}")
'''


def test_stored_backbone_weights_are_never_read_from_outside_through_a_category_folder_link(tmp_path):
    """``inspector._stored_weights`` checks ``categories/<cat>/backbone_weights.pt`` by name
    (``trust.confined`` resolves it inside the run dir, ``is_symlink``/``is_file``), then
    ``files.held_file`` opens ``weights.absolute()`` with O_NOFOLLOW, which guards the last
    component only. A run dir whose category folder is a link that the sender keeps flipping between
    a folder inside the run dir and one outside it: within seconds one call holds the outside file
    open (observed: hits=1, refused=0; the backbone is then built from those bytes). refused=0: the
    check is anchored at the category folder itself (``Inspector.load`` passes ``Path(path).parent``),
    which ``confined`` resolves through the same link, so a category folder swapped for a link out
    after inspector.pt was read (e.g. on its close) is never refused at all. Expected: never (each component opened O_NOFOLLOW from a descriptor of the run dir,
    or the held descriptor checked to be the file that was confined)."""
    script = tmp_path / "flip_weights.py"
    script.write_text(_FLIP_WEIGHTS)
    base = tmp_path / "base"
    base.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(base), "10"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "hits=0" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    """A completed run fitted with ``model.weights_path`` (its copy: categories/weave/backbone_weights.*)."""
    from pyimgano_hydra.features.backbones import BACKBONES

    weights = next(p for p in BACKBONES["efficientnet_lite0"]().weights() if p.is_file())
    root = tmp_path_factory.mktemp("trained_weights") / "run"
    proc = run_cli([*TINY_ARGS, f"model.weights_path={weights}", f"hydra.run.dir={root}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_infer_never_builds_the_backbone_from_weights_outside_the_run_dir_after_a_category_folder_swap(
        trained_weights, tmp_path):
    """End to end: infer on a run fitted with ``model.weights_path``. The moment its inspector.pt is
    closed after reading (inotify), ``categories/weave`` is renamed away and replaced by a link to a
    folder outside the run dir whose ``backbone_weights.pth`` holds other weights (every tensor
    halved). ``_stored_weights`` checks the weights relative to the (now linked) category folder, so
    nothing refuses: observed rc 0 and other scores than the run's own (the backbone built from the
    outside file). Expected: the run's own weights or a one-line refusal, rc != 0."""
    import shutil

    import torch

    baseline_out = tmp_path / "baseline"
    image = small_png(trained_weights)
    proc = run_cli([f"run_dir={trained_weights}", f"input={image}", f"hydra.run.dir={baseline_out}"],
                   module="pyimgano_hydra.infer", timeout=180)
    assert proc.returncode == 0, proc.stderr[-500:]
    baseline = json.loads((baseline_out / "predictions.jsonl").read_text().splitlines()[0])["score"]

    run_dir = copy_run(trained_weights, tmp_path)
    category = run_dir / "categories" / "weave"
    outside = tmp_path / "outside"
    shutil.copytree(category, outside)
    stored = next(outside.glob("backbone_weights.*"))
    state = torch.load(stored, weights_only=True)
    torch.save({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, stored)

    out = tmp_path / "out"
    proc = _infer_swapping(run_dir, image, out, category / "inspector.pt", category, outside, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    if proc.returncode == 0:
        score = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["score"]
        assert score == pytest.approx(baseline, rel=1e-6), (score, baseline)


@pytest.mark.parametrize("module", ["pyimgano_hydra.infer", "pyimgano_hydra.export"])
def test_ctrl_c_held_down_while_the_command_starts_is_one_line(trained, tmp_path, module):
    """An operator starts infer / export and holds Ctrl-C at once (SIGINT every 2 ms from 0.2 s on,
    while the command still imports torch and registers its configs). The one-interrupt handling
    (interrupt.exit_on_interrupt / sigterm_as_interrupt) is installed only in ``main()``, after the
    module's imports and ``register_configs()``: observed rc -2 (death by SIGINT) and a
    KeyboardInterrupt traceback from the imports, then more from the interpreter's teardown
    (weakref finalizers in torch/library.py). Expected: one line, rc 130, no traceback (the package's
    ``__init__``, which runs first, could take SIGINT)."""
    import time

    run_dir = copy_run(trained, tmp_path)
    args = [f"run_dir={run_dir}"]
    if module.endswith("infer"):
        args += [f"input={small_png(trained)}", f"hydra.run.dir={tmp_path / 'out'}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from conftest import hold_ctrl_c

    try:
        time.sleep(0.2)
        err = hold_ctrl_c(proc, times=3000)
    finally:
        proc.kill()
    assert "Traceback" not in err and proc.returncode == 130, (proc.returncode, err[-600:])
