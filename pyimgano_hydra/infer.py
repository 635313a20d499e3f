"""``python -m pyimgano_hydra.infer run_dir=<dir> input=<file|dir|glob>``: score new images."""
from __future__ import annotations

import glob
import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pyimgano_hydra.console import (one_line_errors, quiet_third_party_logs, refuse_unsafe_arguments,
                                    user_errors_exit)
from pyimgano_hydra.data.images import IMAGE_EXTENSIONS, is_image_file
from pyimgano_hydra.data.loader import checked_workers, loader_setting
from pyimgano_hydra.defects.export import DefectsExporter, require_maps
from pyimgano_hydra.files import glob_parts_match, held_folder, shown, walk
from pyimgano_hydra.defects.pixel_threshold import resolve_pixel_threshold
from pyimgano_hydra.errors import ConfigError, UserError, console_line
from pyimgano_hydra.inspector import RecordOutputs, score_all
from pyimgano_hydra.interrupt import exit_on_interrupt, sigterm_as_interrupt
from pyimgano_hydra.paths import CONFIG_PATH
from pyimgano_hydra.runs.load import load_run
from pyimgano_hydra.runs.status import COMPLETED, FAILED, INTERRUPTED, running, write_status
from pyimgano_hydra.runs.writers import write_json_atomic, write_jsonl_atomic
from pyimgano_hydra.schemas import register_configs
from pyimgano_hydra.schemas.export import RUNTIMES
from pyimgano_hydra.schemas.model import valid_device
from pyimgano_hydra.sweep.cluster import owner

register_configs()

log = logging.getLogger(__name__)


def collect_inputs(spec: str) -> list[Path]:
    """Image files named by a file, a directory (recursively) or a glob pattern, sorted."""
    if not spec.strip():  # Path("") is "."; "input=$IMAGES" with the variable unset named no folder
        raise UserError("input= is empty; pass a file, a folder or a quoted glob")
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in sorted(_walk(path)) if is_image_file(p)]
    else:
        found = [p for p in sorted(_glob(spec)) if is_image_file(p)]
    if not found:
        raise UserError(f"input={spec}: matches no image ({', '.join(IMAGE_EXTENSIONS)}); "
                        "pass a file, a folder or a quoted glob")
    return found


RUN_OR_INFER_DIR = (".claim.json", "status.json", ".hydra")  # a folder of results, not of line images


def _walk(folder: Path) -> list[Path]:
    """Every file below ``folder`` (symlinked and hidden folders not entered); a folder that cannot be listed
    (a path past PATH_MAX, no permission) is named in one warning, the rest are scored."""
    unreadable: list[OSError] = []
    files, skipped = [], []
    for root, dirs, names in walk(folder, onerror=unreadable.append):  # no recursion: any depth
        runs = [d for d in dirs if any(os.path.lexists(os.path.join(root, d, n)) for n in RUN_OR_INFER_DIR)]
        skipped += runs  # an earlier infer's outputs (its masks) under the image folder are no line images
        # hidden folders (.ipynb_checkpoints' copies) are no line images either, as with a ** glob
        dirs[:] = [d for d in dirs if d not in runs and not d.startswith(".")]
        files += [Path(root) / name for name in names]
    if skipped:
        log.info("input=%s: %d run or infer folder(s) inside it not scored, e.g. %s", console_line(str(folder)),
                 len(skipped), console_line(skipped[0]))
    if unreadable:
        first = unreadable[0]
        log.warning("input=%s: %d folder(s) could not be listed, e.g. %s (%s); their images are not scored",
                    console_line(str(folder)), len(unreadable), console_line(str(first.filename)[:200]),
                    first.strerror or type(first).__name__)
    return files


def _glob(spec: str) -> list[Path]:
    """``glob.glob(spec, recursive=True)``, but ``**`` never follows a symlinked folder (two links
    to ``.`` in the input folder made it walk 2^40 paths: the inference never ended)."""
    if "**" not in spec:
        return [Path(p) for p in glob.glob(spec)]
    parts = Path(spec).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path(".")
    pattern = Path(*parts[first:])
    if pattern.parts[-1] == "**":  # glob.glob's dir/** is every file below dir; pathlib's only its folders
        pattern = pattern / "*"
    if any("**" in part and part != "**" for part in pattern.parts):
        raise UserError(f"input={spec}: Invalid pattern: '**' can only be an entire path component")
    found = []
    for root, dirs, names in walk(base):  # no recursion, as pathlib's ** had (RecursionError at any depth)
        above = Path(root).relative_to(base).parts
        found += [Path(root) / name for name in dirs + names if glob_parts_match(pattern.parts, (*above, name))]
    hidden_ok = any(part.startswith(".") for part in pattern.parts)  # as glob.glob: .x only when asked
    return [p for p in found if hidden_ok or not any(part.startswith(".") for part in p.relative_to(base).parts)]


def defects_settings_for(run_defects: dict | None, cfg_defects: DictConfig, task_overrides: list[str]) -> dict:
    """The run's defects settings, unless ``defects=<preset>`` was given; then ``defects.*`` overrides."""
    if any(o.startswith("defects=") for o in task_overrides):
        return OmegaConf.to_container(cfg_defects, resolve=True)
    settings = dict(run_defects or {"enabled": False})
    for override in task_overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("defects."):
            name = key.split(".", 1)[1]
            settings[name] = OmegaConf.to_container(cfg_defects, resolve=True).get(name)
    return settings


def run_inference(cfg: DictConfig, output_dir: str | Path, task_overrides: list[str] | None = None) -> dict:
    """Score ``cfg.input`` with the run at ``cfg.run_dir``; write predictions to ``output_dir``."""
    quiet_third_party_logs()
    out = Path(output_dir)
    if (out / "predictions.jsonl").exists() or (out / "status.json").exists():
        raise UserError(f"{out} already holds an inference run; pick a new hydra.run.dir")
    for key in ("run_dir", "input"):  # run_dir=null, input=[a,b]: a path or a glob, as text
        if cfg[key] is None or OmegaConf.is_config(cfg[key]):
            raise ConfigError(f"{key}: give a path{' or a quoted glob' if key == 'input' else ''}, got {cfg[key]!r}")
    if not valid_device(cfg.device):
        raise ConfigError(f"device: {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    runtime = str(cfg.runtime)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and str(cfg.device).startswith("cuda"):
        raise ConfigError(f"runtime=onnxruntime runs on the CPU; drop device={cfg.device} or use runtime=torch")
    for key in ("trust_targets", "save_maps"):  # "trust_targets=no" is the string "no": truthy
        if type(cfg[key]) is not bool:
            raise ConfigError(f"{key}: must be true or false, got {cfg[key]!r}")
    for key, low, high in (("onnx_max_memory_gb", 0.01, 65536), ("onnx_max_seconds", 0.1, 10**6)):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            raise ConfigError(f"{key}: must be a number in {low:g}..{high:g} or null, got {value!r}")
    if type(cfg.batch_size) is not int or not 1 <= cfg.batch_size <= 4096:
        raise ConfigError(f"batch_size: must be an int in 1..4096, got {cfg.batch_size!r}")
    num_workers = checked_workers(OmegaConf.select(cfg, "loader.num_workers"))  # +loader.num_workers=N
    out.mkdir(parents=True, exist_ok=True)
    # writes go to this folder even if out is swapped for a link (also while the run dir loads)
    with held_folder(out) as held:
        started = time.perf_counter()
        here = held or out
        try:  # a run dir or input refused still leaves this dir marked failed
            loaded = load_run(cfg.run_dir)
            category = loaded.category(cfg.category)
            paths = collect_inputs(str(cfg.input))
            with running(here / "status.json", **owner()):  # its heartbeat, until the final state
                with loaded.category_folder(category) as folder:  # every stored file read from it
                    inspector = loaded.inspector(category, trust_targets=bool(cfg.trust_targets), folder=folder,
                                                 device="cpu" if runtime == "onnxruntime" else str(cfg.device))
                    if runtime == "onnxruntime":
                        from pyimgano_hydra.export.runtime import load_exported

                        manifest, inspector.detector = load_exported(
                            loaded.run_dir.root, loaded.run_dir.category(category).root,
                            cfg.get("onnx_max_memory_gb"), cfg.get("onnx_max_seconds"), category=category,
                            folder=folder)
                        if manifest.image_threshold.get("value") != inspector.image_threshold.get("value"):
                            # artifacts/ copied from another fit: its scores against this run's threshold
                            raise UserError(f"{category}: artifacts/export.json holds threshold "
                                            f"{manifest.image_threshold.get('value')}, the run's inspector "
                                            f"{inspector.image_threshold.get('value')}: exported from another fit; "
                                            f"export this run again")
                threshold = inspector.image_threshold
                defects = defects_settings_for(inspector.defects, cfg.defects, task_overrides or [])
                exporter = None
                if defects.get("enabled"):
                    require_maps(inspector.detector)
                    stored = inspector.pixel_threshold or {}
                    pixel_threshold = resolve_pixel_threshold(defects, run_threshold=stored.get("value"),
                                                              run_provenance=stored.get("provenance"))
                    exporter = DefectsExporter(defects, pixel_threshold, here / "masks", here)
                items = [{"index": i, "path": str(p), "category": category} for i, p in enumerate(paths)]
                unreadable: list[dict] = []
                from pyimgano_hydra.features.device import resolve_device

                with loader_setting(num_workers, str(resolve_device(str(cfg.device), key="device"))):
                    records = score_all(inspector, items,
                                        lambda chunk: inspector.load_images([i["path"] for i in chunk], return_sizes=True),
                                        int(cfg.batch_size),
                                        RecordOutputs(root=here, maps_dir=here / "maps" if cfg.save_maps else None,
                                                      exporter=exporter, unreadable=unreadable))
                if not records:
                    raise UserError(f"input={cfg.input}: no image could be read; first: {unreadable[0]['error']}")
                records = sorted(records + unreadable, key=lambda r: r["index"])
                write_jsonl_atomic(here / "predictions.jsonl", records)
                n_anomalous = sum(r.get("pred_label", 0) for r in records)
                summary = {"run_dir": str(loaded.run_dir.root), "category": category, "n_images": len(records),
                           "n_unreadable": len(unreadable), "n_anomalous": n_anomalous, "threshold": threshold,
                           "seconds": time.perf_counter() - started,
                           "defects": None if exporter is None else {
                               "settings": defects, "pixel_threshold": exporter.threshold.value,
                               "pixel_threshold_provenance": exporter.threshold.provenance,
                               "images_with_defects": sum(1 for r in records if r.get("defects", {}).get("n_regions"))}}
                write_json_atomic(here / "summary.json", summary)
            write_status(here / "status.json", COMPLETED)
        except KeyboardInterrupt as exc:
            write_status(here / "status.json", INTERRUPTED, error=f"interrupted ({str(exc) or 'SIGINT'})")
            raise
        except BaseException as exc:
            line = shown(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__  # the path, not /proc/self/fd
            write_status(here / "status.json", FAILED, error=line)
            raise
    n_scored = len(records) - len(unreadable)
    print(console_line(f"{n_scored} images scored with {category} from {loaded.run_dir.root}: "
                       f"{n_anomalous} anomalous, {n_scored - n_anomalous} normal (threshold {threshold['value']:.4g})"
                       + (f"; {len(unreadable)} unreadable (see their error in predictions.jsonl)" if unreadable else "")))
    print(console_line(f"predictions: {out / 'predictions.jsonl'}"))
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="infer")
def _job(cfg: DictConfig) -> dict:
    with user_errors_exit():
        hc = HydraConfig.get()
        with sigterm_as_interrupt():
            return run_inference(cfg, hc.runtime.output_dir, task_overrides=list(hc.overrides.task))


def main() -> None:
    refuse_unsafe_arguments(sys.argv[1:])
    with exit_on_interrupt("the inference run"), one_line_errors():
        _job()


if __name__ == "__main__":
    main()
