from pathlib import Path

from pyimgano_hydra.reference import generate

REPO = Path(__file__).resolve().parents[1]


def test_cli_reference_is_generated_from_current_schemas():
    current = (REPO / "docs" / "CLI.md").read_text()
    assert current == generate(), "docs/CLI.md is stale: run python -m pyimgano_hydra.reference --write"


def test_reference_lists_every_group_option_and_key():
    text = generate()
    for option in ("dataset=synthetic", "model=patchcore", "recipe=industrial_adapt", "tiling=tile128",
                   "postprocess=default", "defects=default"):
        assert f"`{option}`" in text
    for key in ("dataset.resize", "recipe.calibration_quantile", "defects.pixel_threshold", "tiling.stride"):
        assert f"`{key}`" in text
