"""docs/ARCHITECTURE.md's examples run as written (in order, one namespace)."""
import re

from conftest import REPO


def test_architecture_examples_run():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "architecture_doc"}
    for block in blocks:
        exec(compile(block, "docs/ARCHITECTURE.md", "exec"), namespace)
    assert namespace["inspector"].category == "demo"
