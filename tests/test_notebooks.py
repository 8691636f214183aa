"""Every committed notebook is stored as one clean, default-budget, top-to-bottom run.

(nbval itself, collecting the ``.ipynb`` files, runs them in the quick budget.)
"""
import json
import re
from pathlib import Path

import pytest

from common.export import MARKER, notebooks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebooks(ROOT)
MAX_BYTES = 1_250_000  # NOTEBOOKS.md: "keep each under about 1 MB"
ALLOWED_METADATA = {"kernelspec", "language_info"}
ALLOWED_CELL_METADATA = {"tags"}


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _text_outputs(cell):
    parts = []
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        parts.append("".join(output.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def _ids(paths):
    return [p.relative_to(ROOT).as_posix() for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_as_one_clean_run(path):
    nb = _load(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook without code"
    empty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and not "".join(c["source"]).strip()]
    assert not empty, f"empty code cells at {empty}: remove them"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"execution counts {counts} are not 1..{len(code)}: run `python -m common.execute {path.relative_to(ROOT)}`")
    errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"stored with error outputs: {errors}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_minimal_metadata_and_size(path):
    nb = _load(path)
    assert set(nb["metadata"]) <= ALLOWED_METADATA, f"notebook metadata {sorted(nb['metadata'])}"
    assert "widgets" not in nb["metadata"]
    for i, cell in enumerate(nb["cells"]):
        assert set(cell.get("metadata", {})) <= ALLOWED_CELL_METADATA, f"cell {i} metadata {cell['metadata']}"
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{size:,} bytes: lower the figures' size or dpi"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_ran_in_the_default_budget_with_the_anatomy(path):
    nb = _load(path)
    header = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and header.startswith("# "), "first cell: a title"
    assert re.search(r"arXiv|doi|\(\d{4}\)|, \d{4}", header), "the header names the papers"
    assert "budget" in header.lower(), "the header says which budget runs"
    setup = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "budget: default" in _text_outputs(setup), (
        "the setup cell must print budget.describe(), and the stored run must be the default budget")
    headings = [line for c in nb["cells"] if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if line.startswith("## ")]
    for needed in ("Exercises", "Summary"):
        assert any(needed in h for h in headings), f"no '## ... {needed}' section"
    sources = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "CVM_QUICK" not in sources, "ask common.budget; do not read CVM_QUICK in a notebook"
    if MARKER in sources:
        assert "assert_same" in sources or "assert_close" in sources, "exported code is checked against a reference"
