"""The runnable pages run: each page's ```python blocks, concatenated, execute top to bottom
(the tutorials, and the reference pages whose examples say they run)."""

import re
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
PAGES = TUTORIALS + [ROOT / "docs" / name for name in ("training.md", "rendering.md")]
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks(page):
    """The page's ```python blocks as one script (other fences, e.g. ```text, are output)."""
    return "\n".join(BLOCK.findall(page.read_text(encoding="utf-8")))


def test_there_are_runnable_pages():
    assert TUTORIALS, "docs/tutorials/*.md not found"
    for page in PAGES:
        assert python_blocks(page).strip(), f"{page.name} has no ```python block"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs(page):
    matplotlib.use("Agg")                   # no display; only matters if a page plots
    torch.set_default_dtype(torch.float32)  # as a reader runs it (conftest restores float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # small models: one thread is fastest, and robust
    try:                                    # to a busy machine
        code = compile(python_blocks(page), str(page), "exec")
        exec(code, {"__name__": "__main__"})  # a fresh namespace per page
    finally:
        torch.set_num_threads(threads)
