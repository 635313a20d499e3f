"""Artifacts a colleague can read; names that are not UTF-8 recorded losslessly."""
import json
import os
import stat

import numpy as np

from fakes import PixelZScore
from pyimgano_hydra.inspector import Inspector
from pyimgano_hydra.runs.writers import read_jsonl, write_json_atomic, write_jsonl_atomic


def test_artifacts_get_the_mode_of_a_plain_file_under_the_umask(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    json_file = write_json_atomic(tmp_path / "report.json", {"a": 1})
    detector = PixelZScore().fit(np.zeros((2, 4, 4, 3), np.uint8))
    model = Inspector(detector, image_threshold={"value": 1.0, "provenance": {}}).save(tmp_path / "inspector.pt")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(json_file.stat().st_mode) == expected
    assert stat.S_IMODE(model.stat().st_mode) == expected


def test_undecodable_file_name_round_trips_through_jsonl(tmp_path):
    name = os.fsdecode(b"scratch_\xff\xfe.png")
    path = write_jsonl_atomic(tmp_path / "per_image.jsonl", [{"path": name}])
    json.loads(path.read_bytes().decode("ascii"))  # escaped, still plain JSON
    assert os.fsencode(read_jsonl(path)[0]["path"]) == b"scratch_\xff\xfe.png"
