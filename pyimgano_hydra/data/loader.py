"""Decode and resize image batches with a ``torch.utils.data.DataLoader`` (``loader.num_workers``).

Each file goes through :func:`~pyimgano_hydra.data.images.load_image`, in the main process
(``num_workers=0``) or in worker processes, so the arrays are the same bit for bit, in the
order given. A file that fails to decode comes back as its :class:`DataError` (one per file),
never as a dead worker: callers raise it or record it. ``pin_memory`` is used only when the
job's device is CUDA. The active setting is a context (:func:`loader_setting`), like
``gpu.autocast``: ``app`` sets it from the run config, ``infer`` from its own.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence, Union

import numpy as np

from pyimgano_hydra.data.images import DEFAULT_MAX_IMAGE_MEGABYTES, Size, load_image
from pyimgano_hydra.errors import DataError, check
from pyimgano_hydra.workers import without_working_dir


class Decoded(NamedTuple):
    """One decoded file: its uint8 (H, W, C) array and its own (height, width), oriented."""

    image: np.ndarray
    original_size: tuple[int, int]


@dataclass(frozen=True)
class LoaderSetting:
    """How batches are decoded: worker processes and whether to pin host memory."""

    num_workers: int = 0
    pin_memory: bool = False


_ACTIVE: ContextVar[LoaderSetting] = ContextVar("pyimgano_loader", default=LoaderSetting())


def active_loader() -> LoaderSetting:
    return _ACTIVE.get()


def checked_workers(value) -> int:
    """``loader.num_workers`` as an int >= 0 (None: 0), else a ConfigError naming the key."""
    value = 0 if value is None else value
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
          "loader.num_workers", f"must be an integer >= 0, got {value!r}")
    return value


@contextmanager
def loader_setting(num_workers: int | None, device: str = "cpu") -> Iterator[LoaderSetting]:
    """Decode with ``num_workers`` processes inside the block; pin memory when ``device`` is CUDA."""
    setting = LoaderSetting(checked_workers(num_workers), pin_memory=str(device).startswith("cuda"))
    token = _ACTIVE.set(setting)
    try:
        yield setting
    finally:
        _ACTIVE.reset(token)


class _DecodeFiles:
    """Map-style dataset: item ``i`` is ``(i, (uint8 array, original (height, width)))`` or
    ``(i, error message)``."""

    def __init__(self, paths: Sequence[Union[str, Path]], resize: Size, input_mode: str,
                 max_megabytes: float | None, as_tensor: bool = False) -> None:
        self.paths = [str(p) for p in paths]
        self.resize, self.input_mode, self.max_megabytes = resize, input_mode, max_megabytes
        self.as_tensor = as_tensor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            arr, size = load_image(self.paths[index], self.resize, self.input_mode, self.max_megabytes,
                                   return_size=True)
        except DataError as exc:
            return index, str(exc)
        if not self.as_tensor:
            return index, (arr, size)
        import torch

        return index, (torch.from_numpy(np.require(arr, requirements="W")), size)  # a tensor, so it can be pinned


def _one_thread_per_worker(_: int) -> None:
    import cv2
    import torch

    cv2.setNumThreads(1)  # workers already run in parallel: no nested thread pools
    torch.set_num_threads(1)


def _start_method(multiprocessing) -> str:
    """forkserver where there is one: a child forked from a process whose OpenCV/torch thread
    pools already ran can deadlock. Inside a joblib (loky) worker, whose default context is
    loky's (which forkserver children cannot re-create), fork."""
    methods = multiprocessing.get_all_start_methods()
    if multiprocessing.get_start_method(allow_none=True) == "loky" and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _as_is(batch):
    return batch


def decode_files(paths: Sequence[Union[str, Path]], resize: Size = None, input_mode: str = "rgb",
                 max_megabytes: float | None = DEFAULT_MAX_IMAGE_MEGABYTES,
                 setting: LoaderSetting | None = None) -> list[Union[Decoded, DataError]]:
    """One :class:`Decoded` or one DataError per path, in the order of ``paths``."""
    setting = setting or active_loader()
    workers = min(setting.num_workers, len(paths))
    files = _DecodeFiles(paths, resize, input_mode, max_megabytes, as_tensor=workers > 1 and setting.pin_memory)
    if workers == 0 or len(paths) == 1:  # no workers, or one file: no process is worth starting
        items = (files[i] for i in range(len(files)))
    else:
        import multiprocessing

        from torch.utils.data import DataLoader

        start = _start_method(multiprocessing)
        items = DataLoader(files, batch_size=None, shuffle=False, num_workers=workers,
                           collate_fn=_as_is, pin_memory=setting.pin_memory,
                           worker_init_fn=_one_thread_per_worker,
                           multiprocessing_context=multiprocessing.get_context(start))
    out: list = [None] * len(files)
    with without_working_dir():  # the workers start as the loop begins
        decoded = list(items)
    for index, value in decoded:
        if isinstance(value, str):
            out[index] = DataError(value)
        else:
            image, size = value
            out[index] = Decoded(image if isinstance(image, np.ndarray) else image.numpy(),
                                 (int(size[0]), int(size[1])))
    return out


def stack_images(paths: Sequence[Union[str, Path]], resize: Size = None, input_mode: str = "rgb",
                 max_megabytes: float | None = DEFAULT_MAX_IMAGE_MEGABYTES,
                 setting: LoaderSetting | None = None, return_sizes: bool = False):
    """uint8 (N, H, W, C) of ``paths``; raises the first file's DataError, or one naming a
    file whose size differs from the first file's. ``return_sizes``: also each file's
    (height, width) as decoded."""
    decoded = decode_files(paths, resize, input_mode, max_megabytes, setting)
    for value in decoded:
        if isinstance(value, DataError):
            raise value
    sizes = [value.original_size for value in decoded]
    if not decoded:
        channels = 3 if input_mode == "rgb" else 1
        side = resize if isinstance(resize, int) else 0
        empty = np.zeros((0, side, side, channels), np.uint8)
        return (empty, sizes) if return_sizes else empty
    first = decoded[0].image
    out = np.empty((len(decoded),) + first.shape, np.uint8)
    for i, (path, img) in enumerate(zip(paths, (value.image for value in decoded))):
        if img.shape != first.shape:
            raise DataError(f"{path}: size {img.shape[1]}x{img.shape[0]} differs from "
                            f"{paths[0]} ({first.shape[1]}x{first.shape[0]}); set dataset.resize to a size")
        out[i] = img
    return (out, sizes) if return_sizes else out
