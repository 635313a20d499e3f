"""Matplotlib figures written into run dirs (headless, atomic)."""
from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from pyimgano_hydra.errors import console_line
from pyimgano_hydra.runs.writers import write_bytes_atomic


def shown(text: str) -> str:
    """``text`` printable by a font: an undecodable file-name byte (a lone surrogate) as ``\\xff``,
    control characters (ESC, BEL of a folder name) escaped."""
    return console_line(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


def plain_text(draw):
    """``draw`` with mathtext off: a folder or swept value named ``$\\nosuch$`` is a name, not a
    formula (matplotlib failed the whole run on it, its results lost)."""
    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        _pyplot()  # first: its one-off reset of a working dir's matplotlibrc must outlive the context
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def _save(fig, path: str | Path) -> Path:
    # Folder-derived names (category in titles, defect types on ticks) pass through shown() where
    # they are drawn; walking every artist of the figure for it cost ~40 ms a figure.
    buffer = io.BytesIO()  # zlib level 1: a quarter less time a figure than the default 6, files ~5 % larger
    fig.savefig(buffer, format="png", dpi=110, pil_kwargs={"compress_level": 1})
    return write_bytes_atomic(path, buffer.getvalue())


def _shorten(text: str, chars: int) -> str:
    """``text`` cut in the middle to at most ``chars`` characters."""
    if len(text) <= chars:
        return text
    head = (chars - 1) // 2
    return f"{text[:head]}…{text[len(text) - (chars - 1 - head):]}"


def _figure(size: tuple[float, float], title: str, ncols: int = 1, left: float = 0.8, right: float = 0.2):
    """Axes with margins fixed in inches, so one draw makes the file (cropping to the drawn
    artists drew every figure twice), and one title line, shortened to the width."""
    width, height = size
    fig, axes = _pyplot().subplots(1, ncols, figsize=size)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=0.6 / height, top=1 - 0.45 / height,
                        wspace=0.9 / (width / ncols))
    fig.suptitle(_shorten(title, int(width / 0.11)), y=1 - 0.08 / height, va="top")  # ~0.11 in a 12 pt character
    return fig, axes


@plain_text
def loss_curve(path: str | Path, epochs: Sequence[int], losses: Sequence[float], title: str) -> Path:
    """Training loss per epoch."""
    fig, ax = _figure((5, 3.2), shown(title))
    ax.plot(list(epochs), list(losses), marker="o", lw=1.5)
    ax.set(xlabel="epoch", ylabel="training loss")
    ax.grid(alpha=0.3)
    return _write(fig, Path(path))


_RC_RESET: list = []


def _pyplot():
    import os

    import matplotlib

    if os.path.dirname(os.path.abspath(matplotlib.matplotlib_fname())) == os.getcwd() and not _RC_RESET:
        # a matplotlibrc of the working dir (a dataset folder) is no setting of ours: text.usetex
        # without LaTeX failed a whole training run at its plots
        matplotlib.rcdefaults()
        _RC_RESET.append(True)
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _write(fig, path: Path) -> Path:
    try:
        return _save(fig, path)
    finally:
        _pyplot().close(fig)


@plain_text
def roc_pr_curves(path: str | Path, labels: np.ndarray, scores: np.ndarray, title: str) -> Path:
    """ROC and precision-recall curves side by side, AUROC / AP in the legends."""
    title = shown(title)
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig, (roc, pr) = _figure((9, 3.8), f"{title}: ROC and precision-recall", ncols=2)
    fpr, tpr, _ = roc_curve(labels, scores)
    roc.plot(fpr, tpr, lw=1.8, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
    roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="chance")
    roc.set(xlabel="false positive rate", ylabel="true positive rate")
    precision, recall, _ = precision_recall_curve(labels, scores)
    pr.plot(recall, precision, lw=1.8, label=f"AP {average_precision_score(labels, scores):.3f}")
    pr.axhline(float(np.mean(labels)), ls="--", c="grey", lw=0.8, label="anomaly rate")
    pr.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc else "lower left")
    return _write(fig, Path(path))


@plain_text
def score_histogram(path: str | Path, labels: np.ndarray, scores: np.ndarray, threshold: float,
                    title: str) -> Path:
    """Score histograms of normal vs anomalous test images with the image threshold drawn."""
    title = shown(title)
    fig, ax = _figure((6, 3.6), f"{title}: scores")
    bins = np.histogram_bin_edges(np.append(scores, threshold), bins=30)
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        chosen = scores[labels == value]
        if len(chosen):
            ax.hist(chosen, bins=bins, alpha=0.55, color=colour, histtype="stepfilled",
                    label=f"{name} (n={len(chosen)})")
    ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="image score", ylabel="test images")
    ax.legend()
    ax.grid(alpha=0.3)
    return _write(fig, Path(path))


@plain_text
def defect_type_bars(path: str | Path, by_type: dict, title: str) -> Path:
    """Image AUROC of each defect type against the normal test images."""
    title = shown(title)
    names = sorted(by_type, key=lambda k: by_type[k]["image_auroc"])
    values = [by_type[k]["image_auroc"] for k in names]
    ticks = [f"{_shorten(shown(k), 32)} (n={by_type[k]['n']})" for k in names]
    left = 0.3 + 0.075 * max(map(len, ticks))  # ~0.075 in a 10 pt character
    fig, ax = _figure((4.6 + left, 0.4 * len(names) + 1.4), f"{title}: per defect type", left=left, right=0.55)
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)), ticks)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.3f}", va="center", fontsize=8)
    low = min(values)
    ax.set_xlim(max(0.0, low - 0.1 * (1.02 - low) - 0.02), 1.02)
    ax.set(xlabel="image AUROC vs normal images")
    ax.grid(alpha=0.3, axis="x")
    return _write(fig, Path(path))


@plain_text
def category_plots(plot_dir: str | Path, category: str, labels: np.ndarray, scores: np.ndarray,
                   threshold: float, by_type: dict) -> list[Path]:
    """A category's plots/: curves and defect-type bars need both classes in the test split."""
    plot_dir = Path(plot_dir)
    known = labels >= 0
    labels, scores = labels[known], np.asarray(scores, np.float64)[known]
    paths = [score_histogram(plot_dir / "score_histogram.png", labels, scores, threshold, category)]
    if len(set(labels.tolist())) == 2:
        paths.insert(0, roc_pr_curves(plot_dir / "roc_pr.png", labels, scores, category))
        finite = {k: v for k, v in by_type.items() if np.isfinite(v.get("image_auroc", np.nan))}
        if finite:
            paths.append(defect_type_bars(plot_dir / "defect_types.png", finite, category))
    return paths
