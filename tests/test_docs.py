"""The tutorials run: each page's ```python blocks, concatenated, execute top to bottom."""

import re
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks(page):
    """The page's ```python blocks as one script (other fences, e.g. ```text, are output)."""
    return "\n".join(BLOCK.findall(page.read_text(encoding="utf-8")))


def test_there_are_tutorials():
    assert TUTORIALS, "docs/tutorials/*.md not found"
    for page in TUTORIALS:
        assert python_blocks(page).strip(), f"{page.name} has no ```python block"


@pytest.mark.parametrize("page", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(page):
    matplotlib.use("Agg")                   # no display; only matters if a page plots
    torch.set_default_dtype(torch.float32)  # as a reader runs it (conftest restores float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # small models: one thread is fastest, and robust
    try:                                    # to a busy machine
        code = compile(python_blocks(page), str(page), "exec")
        exec(code, {"__name__": "__main__"})  # a fresh namespace per page
    finally:
        torch.set_num_threads(threads)
