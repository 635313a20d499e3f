"""docs/BENCHMARKS.md: each bench script owns one section and rewrites only that."""
from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def write_section(title: str, marker: str, text: str, doc_path: Path = DOC) -> None:
    """Put ``text`` into section ``title`` of docs/BENCHMARKS.md between ``marker`` comments,
    replacing what an earlier run wrote there and leaving other sections alone."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc = doc_path.read_text() if doc_path.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        pre, rest = doc.split(begin, 1)
        doc = pre + block + rest.split(end, 1)[1]
    elif title in doc:
        pre, post = doc.split(title, 1)
        doc = pre + title + "\n\n" + block + "\n" + post
    else:
        doc = doc.rstrip() + f"\n\n{title}\n\n{block}\n"
    doc_path.write_text(doc)
