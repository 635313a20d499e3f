"""Matplotlib figures written into run dirs (headless, atomic)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from pyimgano_hydra.runs.writers import write_bytes_atomic


def _save(fig, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


def loss_curve(path: str | Path, epochs: Sequence[int], losses: Sequence[float], title: str) -> Path:
    """Training loss per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(list(epochs), list(losses), marker="o", lw=1.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
