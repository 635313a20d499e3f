"""Magnetic Tile Defects (MTD) as a preset over :class:`FolderDataset`.

Published layout: ``MT_Free/Imgs/*.jpg`` (normal) and ``MT_<Defect>/Imgs/*.jpg`` with a
same-stem ``.png`` mask beside each image. Normal images are split train/test 80/20 by
``seed``; the whole set is one category, ``mtd``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from pyimgano_hydra.data.folder import FolderDataset
from pyimgano_hydra.errors import DataError

MTD_DEFECTS = {
    "blowhole": "MT_Blowhole/Imgs",
    "break": "MT_Break/Imgs",
    "crack": "MT_Crack/Imgs",
    "fray": "MT_Fray/Imgs",
    "uneven": "MT_Uneven/Imgs",
}


class MTDDataset(FolderDataset):
    """MTD with its published folder names as defaults."""

    layout = "mtd"
    expected_layout = ("<root>/MT_Free/Imgs/*.jpg, <root>/MT_<Defect>/Imgs/*.jpg with "
                       "<stem>.png masks beside the images (Blowhole, Break, Crack, Fray, Uneven)")

    def __init__(self, root: str, category: Any = "all", resize: int | None = 256,
                 input_mode: str = "rgb", limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, on_bad_image: str = "error",
                 name: str = "mtd", normal_dir: str | None = "MT_Free/Imgs",
                 abnormal_dirs: Sequence[str] | Mapping[str, str] | None = None,
                 normal_test_dir: str | None = None, mask_dir: str | None = None,
                 masks_beside_images: bool = True, mask_suffix: str = "",
                 mask_ext: str | None = ".png", extensions: Sequence[str] | None = (".jpg",),
                 test_ratio: float = 0.2, **extra: Any) -> None:
        super().__init__(root, category, resize, input_mode, limit_train, limit_test, seed,
                         on_bad_image, name, normal_dir,
                         dict(MTD_DEFECTS) if abnormal_dirs is None else abnormal_dirs,
                         normal_test_dir, mask_dir, masks_beside_images, mask_suffix, mask_ext,
                         extensions, test_ratio, **extra)

    def _check_root(self) -> None:
        super()._check_root()
        if not (self.root_path / str(self.normal_dir)).is_dir():
            raise DataError(f"dataset.root {self.root}: {self.normal_dir} not found; expected "
                            f"the MTD layout: {self.expected_layout}")
