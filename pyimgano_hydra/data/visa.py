"""VisA: the official ``split_csv/1cls.csv`` (object, split, label, image, mask) under root.

Images live under ``<cat>/Data/Images/{Normal,Anomaly}``, masks under
``<cat>/Data/Masks/Anomaly`` (0/1 or 0/255: any non-zero pixel is defect); CSV paths are
relative to root.
"""
from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath
from typing import Any

from pyimgano_hydra.data.base import ImageDataset
from pyimgano_hydra.data.sample import ANOMALOUS, NORMAL, CategorySplit, Sample
from pyimgano_hydra.errors import DataError
from pyimgano_hydra.files import read_text

VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
# label spellings, lower case; any other label is refused (an unknown one read as normal hid every defect)
ANOMALOUS_LABELS = ("anomaly", "anomalous", "abnormal", "bad", "defect", "defective", "ng", "ko", "1")
NORMAL_LABELS = ("normal", "good", "ok", "0")
MAX_CSV_BYTES = 64 << 20  # VisA's own 1cls.csv is ~1 MB
MAX_CSV_ROWS = 200_000  # and ~10,800 rows


class VisaDataset(ImageDataset):
    """VisA as downloaded, split by its official 1-class CSV."""

    layout = "visa"
    known_categories = VISA_CATEGORIES
    expected_layout = ("<root>/split_csv/1cls.csv (object,split,label,image,mask), "
                       "<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG, "
                       "<root>/<category>/Data/Masks/Anomaly/*.png")

    def __init__(self, root: str, category: Any = "all", resize: int | None = 256,
                 input_mode: str = "rgb", limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, on_bad_image: str = "error",
                 split_csv: str = "split_csv/1cls.csv", **extra: Any) -> None:
        super().__init__(root, category, resize, input_mode, limit_train, limit_test, seed,
                         on_bad_image, **extra)
        self.split_csv = split_csv
        self._rows: list[dict] | None = None

    def rows(self) -> list[dict]:
        """The CSV rows (read once)."""
        if self._rows is None:
            path = self.root_path / self.split_csv
            if not path.is_file():
                raise DataError(f"{path}: VisA split CSV not found; expected the visa layout: "
                                f"{self.expected_layout}")
            advice = f"expected VisA's split CSV with the header {','.join(CSV_COLUMNS)}"
            text = read_text(path, MAX_CSV_BYTES, advice, DataError, encoding="utf-8-sig")
            reader = csv.DictReader(io.StringIO(text, newline=""))
            try:
                header = [h.strip() for h in (reader.fieldnames or [])]
                missing = [c for c in CSV_COLUMNS if c not in header]
                if missing:
                    raise DataError(f"{path}: missing column(s) {', '.join(missing)}; {advice}")
                rows = []
                for row in reader:  # a row is a dict of strings: 64 MB of tiny rows took 3.2 GB
                    if len(rows) >= MAX_CSV_ROWS:
                        raise DataError(f"{path}: more than {MAX_CSV_ROWS:,} rows (VisA's own has about 10,000); "
                                        f"{advice}")
                    rows.append({k.strip(): (v or "").strip() for k, v in row.items()
                                 if k and k.strip() in CSV_COLUMNS})
                self._rows = rows
            except csv.Error as exc:
                raise DataError(f"{path}: not a readable CSV (line {reader.line_num}: {exc}); {advice}") from None
        return self._rows

    def discover(self) -> list[str]:
        names = dict.fromkeys(r["object"] for r in self.rows())
        return sorted(n for n in names if (self.root_path / n).is_dir())

    def collect(self, category: str) -> CategorySplit:
        train: list[Sample] = []
        test: list[Sample] = []
        for r in self.rows():
            if r["object"] != category:
                continue
            path = self._under_root(r["image"], "image")
            anomalous = self._anomalous(r["label"])
            if r["split"].lower() == "train":
                if not anomalous:
                    train.append(Sample(path, NORMAL, None, category, "good", "train"))
                continue
            if anomalous:
                mask = self._under_root(r["mask"], "mask") if r["mask"] else None
                test.append(Sample(path, ANOMALOUS, mask, category, "anomaly", "test"))
            else:
                test.append(Sample(path, NORMAL, None, category, "good", "test"))
        return CategorySplit(category, train, test)

    def _anomalous(self, label: str) -> bool:
        if label.lower() in ANOMALOUS_LABELS:
            return True
        if label.lower() in NORMAL_LABELS:
            return False
        raise DataError(f"{self.root_path / self.split_csv}: label {label[:100]!r} is neither normal "
                        f"({', '.join(NORMAL_LABELS)}) nor anomalous ({', '.join(ANOMALOUS_LABELS)}); "
                        f"fix the label column")

    def _under_root(self, entry: str, column: str) -> str:
        """A CSV entry as a path under root; an absolute one or one through ``..`` is refused (a
        handed-over CSV must not point the run at files outside the dataset)."""
        parts = PurePosixPath(entry.replace("\\", "/")).parts
        if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0] or "\x00" in entry:
            raise DataError(f"{self.root_path / self.split_csv}: {column} entry {entry[:200]!r} is not a path "
                            f"under the dataset root; write it relative to {self.root_path}")
        path = self.root_path / entry
        if column == "mask" and path.is_dir():  # a folder is a LOCO mask (every file in it): 100% defect here
            raise DataError(f"{self.root_path / self.split_csv}: mask entry {entry[:200]!r} is a folder; a VisA "
                            "mask is one image file")
        return str(path)

    def train_dir_hint(self, category: str) -> str:
        return f"{self.root_path / self.split_csv} (rows of {category} with split=train)"

    def mask_hint(self, sample: Sample) -> str:
        return f"a mask column entry in {self.root_path / self.split_csv}"
