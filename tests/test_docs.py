"""The runnable pages run, and what they show as output is what their code prints.

The convention, for every page in ``PAGES``:

* Its ```python blocks run top to bottom in one fresh namespace, as a reader runs them one
  after the other. Other fences never run: ```text, ```bash, and ```py, which is highlighted
  as Python but is not a step of the script (a signature, a sketch).
* A ```text block that is the *next fence* after a ```python block (prose may sit between them,
  another fence may not) is that block's **printed output**: it must equal what the block
  prints to stdout, line by line (trailing spaces and leading or trailing blank lines aside).
  A ```python block followed by no such block is not compared; one that prints nothing must
  not be followed by a ```text block.
* **Sampled numbers.** An HTML comment ``<!-- sampled -->`` between the ```python block and its
  ```text block (invisible on the site) marks every line of the output as sampled;
  ``<!-- sampled: 2, 4-6 -->`` marks those lines only (1 is the block's first line). On a
  sampled line every number (``3``, ``-0.28125``, ``1.81e-07``) matches any number and runs of
  spaces match any run of spaces (table columns move with the width of the numbers); words,
  symbols and the number of lines must still match. Mark only what a run samples or what a
  machine's floating point changes; a format change then still fails.
* ``OUTPUTS_UNCHECKED`` lists the pages that run but whose outputs are not compared yet, each
  with the reason.

To write a page's outputs from its code (after a format change, say), run
``python tests/test_docs.py --write docs/PAGE.md``: it replaces every output block with what its
block prints now (under the test's settings: float32, one thread, ``SCG_VERIFY=1``), keeping
the ``sampled`` comments; ``python tests/test_docs.py docs/PAGE.md`` prints the differences.

The rendered pages have no raw TeX outside math: ``test_no_raw_tex_outside_math`` renders every
page with mkdocs.yml's Markdown extensions and looks for TeX (``^{``, ``\\frac``, ``\\sum``, ...) in
the text outside the arithmatex spans and the code.
"""

import contextlib
import difflib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
PAGES = TUTORIALS + [DOCS / name for name in ("training.md", "rendering.md", "concepts.md",
                                              "check.md")]
OUTPUTS_UNCHECKED = {}
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                   re.MULTILINE | re.DOTALL)
SAMPLED = re.compile(r"<!--\s*sampled(?::\s*(?P<lines>[\d,\s-]+))?\s*-->")
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w])")


@dataclass
class Block:
    """A ```python block of a page, and the output block that follows it (if any)."""

    code: str
    line: int                   # the page's line of the block's first code line
    expected: str = None        # the ```text block's body
    span: tuple = None          # the ```text block's body as (start, end) offsets in the page
    sampled: object = None      # None, "all", or a set of 1-based line numbers


def blocks(text):
    """The page's ```python blocks in order, each with its expected output."""
    fences = list(FENCE.finditer(text))
    out = []
    for i, f in enumerate(fences):
        if f.group("lang") != "python":
            continue
        b = Block(f.group("body"), text.count("\n", 0, f.start("body")) + 1)
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        if nxt is not None and nxt.group("lang") == "text":
            b.expected, b.span = nxt.group("body"), nxt.span("body")
            b.sampled = _sampled(text[f.end():nxt.start()])
        out.append(b)
    return out


def _sampled(between):
    m = SAMPLED.search(between)
    if m is None:
        return None
    if not m.group("lines"):
        return "all"
    lines = set()
    for part in m.group("lines").replace(" ", "").split(","):
        lo, _, hi = part.partition("-")
        lines.update(range(int(lo), int(hi or lo) + 1))
    return lines


def _lines(text):
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _masked(line):
    return re.sub(r"\s+", " ", NUMBER.sub("<number>", line)).strip()


def mismatch(block, printed):
    """None when ``printed`` is the block's expected output, else a diff to show."""
    want, got = _lines(block.expected), _lines(printed)
    same = len(want) == len(got) and all(
        w == g or ((block.sampled == "all" or (block.sampled and k in block.sampled))
                   and _masked(w) == _masked(g))
        for k, (w, g) in enumerate(zip(want, got), start=1))
    if same:
        return None
    return "\n".join(difflib.unified_diff(want, got, "shown on the page", "printed now",
                                          lineterm=""))


def run_page(page):
    """Run the page's blocks in order; returns [(block, what it printed)]."""
    matplotlib.use("Agg")                   # no display; only matters if a page plots
    torch.set_default_dtype(torch.float32)  # as a reader runs it (conftest restores float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # small models: one thread is fastest, and robust
    namespace = {"__name__": "__main__"}    # to a busy machine; a fresh namespace per page
    results = []
    try:
        for b in blocks(page.read_text(encoding="utf-8")):
            code = compile("\n" * (b.line - 1) + b.code, str(page), "exec")  # page line numbers
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
            results.append((b, printed.getvalue()))
    finally:
        torch.set_num_threads(threads)
    return results


def test_there_are_runnable_pages():
    assert TUTORIALS, "docs/tutorials/*.md not found"
    for page in PAGES:
        assert blocks(page.read_text(encoding="utf-8")), f"{page.name} has no ```python block"
    assert set(OUTPUTS_UNCHECKED) <= {p.name for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
@pytest.mark.slow
def test_page_runs_and_shows_what_it_prints(page):
    failures = []
    for b, printed in run_page(page):
        if page.name in OUTPUTS_UNCHECKED:
            continue
        if b.expected is None:
            continue
        diff = mismatch(b, printed)
        if diff:
            failures.append(f"{page.name}:{b.line}: the output shown is not what the block "
                            f"prints\n{diff}")
    assert not failures, "\n\n".join(failures) + (
        f"\n\n(python tests/test_docs.py --write {page.relative_to(ROOT)} rewrites the outputs)")


def test_cli_page_lists_models_as_scg_models_does():
    """docs/cli.md shows part of `scg models`: each line it shows is one the command prints."""
    from scg.cli import main

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    shown = page.split("## `scg models`", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["models"]) == 0
    assert _lines(shown) and set(_lines(shown)) <= set(_lines(printed.getvalue()))



def test_cli_page_shows_what_scg_check_order_2_prints():
    """docs/cli.md's `scg check ipd --order 2` is what the command prints (rounding-level
    relative errors, like 1.6e-15, masked: they differ between machines' BLAS)."""
    from scg.cli import main

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    shown = page.split("$ scg check ipd --order 2\n", 1)[1].split("```", 1)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["check", "ipd", "--order", "2"]) == 0
    tiny = re.compile(r"\b\d(\.\d+)?e-1\d\b|(?<=\s)0(?=\s)")
    want, got = ([tiny.sub("~0", line) for line in _lines(t)] for t in (shown, printed.getvalue()))
    assert want == got and any(line.startswith("hessian A") for line in got)

# ---- the runner's own conventions ----------------------------------------------------------
RUNNER_PAGE = """Text.

```python
print("loss", 0.25)
print("shape", (2, 3))
```

Prose between a block and its output is fine.
<!-- sampled: 1 -->

```text
loss 0.125
shape (2, 3)
```

```python
x = 1
```

```bash
echo not an output
```
"""


def test_output_blocks_pair_with_their_python_block():
    first, second = blocks(RUNNER_PAGE)
    assert first.expected.splitlines() == ["loss 0.125", "shape (2, 3)"]
    assert first.sampled == {1} and first.line == 4
    assert second.expected is None                    # a ```bash block is not an output
    assert mismatch(first, "loss 0.28125\nshape (2, 3)\n") is None
    assert mismatch(first, "loss 0.28125\nshape (2, 4)\n")        # line 2 is not sampled
    assert mismatch(first, "loss: 0.28125\nshape (2, 3)\n")       # words still count
    assert mismatch(first, "loss 0.28125\n")                      # and the number of lines


def test_sampled_lines_mask_numbers_and_column_widths():
    b = Block("", 1, "total     1.000000    1.81e-07    0.1275\n", sampled="all")
    assert mismatch(b, "total     1.000000    2.5e-07     0.12751\n") is None
    assert mismatch(b, "total     1.000000    2.5e-07\n")
    assert _sampled("<!-- sampled: 2, 4-5 -->") == {2, 4, 5}


# ---- no raw TeX on the rendered pages ------------------------------------------------------
TEX = re.compile(r"\^\{|\\(?:frac|mathrm|mathbb|sum|nabla|gamma|theta|log|bot|text)\b")


class _Prose(HTMLParser):
    """The text of a rendered page outside math (arithmatex spans) and code."""

    SKIP = {"code", "pre", "script", "style"}

    def __init__(self):
        super().__init__()
        self.depth, self.stack, self.text = 0, [], []

    def handle_starttag(self, tag, attrs):
        skip = tag in self.SKIP or "arithmatex" in (dict(attrs).get("class") or "")
        if tag in ("br", "hr", "img", "input", "meta", "link"):
            return
        self.stack.append(skip)
        self.depth += skip

    def handle_endtag(self, tag):
        if tag in ("br", "hr", "img", "input", "meta", "link") or not self.stack:
            return
        self.depth -= self.stack.pop()

    def handle_data(self, data):
        if not self.depth:
            self.text.append(data)


def _markdown():
    import markdown
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    names, options = [], {}
    for ext in config["markdown_extensions"]:
        name, opts = next(iter(ext.items())) if isinstance(ext, dict) else (ext, None)
        names.append(name)
        if opts:
            options[name] = opts
    return markdown.Markdown(extensions=names, extension_configs=options)


def raw_tex(text, md=None):
    """The lines of a page's rendered prose (outside math and code) that hold raw TeX."""
    md = md or _markdown()
    parser = _Prose()
    parser.feed(md.reset().convert(text))
    prose = "".join(parser.text)
    return [line.strip() for line in prose.splitlines() if TEX.search(line)]


def test_no_raw_tex_outside_math():
    pytest.importorskip("markdown")
    md = _markdown()
    assert raw_tex("the factor γ^{t_s} and $\\gamma^{t_s}$", md) == ["the factor γ^{t_s} and"]
    assert raw_tex("$$\n\\frac{a}{b}\n$$\n\nand `x_{t-1}`", md) == []
    found = {}
    for page in sorted(DOCS.rglob("*.md")):
        lines = raw_tex(page.read_text(encoding="utf-8"), md)
        if lines:
            found[str(page.relative_to(DOCS))] = lines
    assert not found, f"raw TeX outside math (write it as $...$, or as `code`): {found}"


def test_site_builds_strict(tmp_path):
    """The site builds with mkdocs.yml's strict checks, and serves MathJax itself (~10 s)."""
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "site" / "concepts" / "index.html").read_text(encoding="utf-8")
    assert "javascripts/mathjax/tex-chtml.js" in page and "unpkg.com" not in page


# ---- writing the outputs from the code -----------------------------------------------------
def _write(page):
    """Replace the page's output blocks with what their blocks print now."""
    text = page.read_text(encoding="utf-8")
    edits = [(b.span, printed) for b, printed in run_page(page) if b.span is not None]
    for (start, end), printed in sorted(edits, reverse=True):
        body = "\n".join(_lines(printed))
        text = text[:start] + (body + "\n" if body else "") + text[end:]
    page.write_text(text, encoding="utf-8")


def _main(argv):
    os.environ.setdefault("SCG_VERIFY", "1")       # as conftest.py sets it for the suite
    import pyro

    write = "--write" in argv
    bad = 0
    for name in [a for a in argv if a != "--write"]:
        page = Path(name).resolve()
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        if write:
            _write(page)
            print(f"wrote the outputs of {name}")
            continue
        for b, printed in run_page(page):
            diff = b.expected is not None and mismatch(b, printed)
            if diff:
                bad += 1
                print(f"{name}:{b.line}\n{diff}\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
