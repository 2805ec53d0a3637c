"""Every example of the README and the docs pages runs as written: each page in a Python process of its
own, its ```python blocks in order in one namespace, as a reader pastes them into one session that
has run ``import numpy as np`` and ``import pescador_fp as pf`` (the docs' convention).

A block with ``>>>`` is a doctest and its output is checked; any other block is run. The pages are
found by glob (README.md and docs/**/*.md), so a new page is covered as soon as it exists. Two HTML
comments, which Markdown does not show, mark a page:

- ``<!-- not run: why -->`` on the line right before a block leaves that block out: only for an
  illustration that needs the reader's own files or functions, or a cluster;
- ``<!-- needs: torch, ray -->`` anywhere on a page: the page runs only where those frameworks are
  installed (else it is skipped, and under ``PESCADOR_FP_REQUIRE_FRAMEWORKS=1`` it fails).

Run one page by hand: ``python tests/test_readme.py docs/guide.md``.
"""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import need

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(str(path.relative_to(ROOT)) for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r"^```python\n(.*?)^```$", flags=re.S | re.M)
_NOT_RUN = re.compile(r"<!--\s*not run:\s*\S.*?-->\s*$")
_NEEDS = re.compile(r"<!--\s*needs:\s*([\w ,.-]+?)\s*-->")
#: What every page takes as said (the docs' convention, stated in docs/index.md); a page imports the rest.
PRELUDE = "import numpy as np\nimport pescador_fp as pf\n"
_PAGE_TIMEOUT_S = 280  # under the suite's 300 s per test


def blocks(text: str) -> list[tuple[int, str]]:
    """The (first line, code) of each ```python block of a page, less those marked ``<!-- not run: why -->``.

    >>> blocks('<!-- not run: your files -->\\n```python\\nread(f)\\n```\\nand\\n```python\\nx = 1\\n```\\n')
    [(7, 'x = 1\\n')]
    """
    found = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        if not _NOT_RUN.search(before):
            found.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return found


def needs(text: str) -> list[str]:
    """The frameworks a page says it needs (``<!-- needs: torch, ray -->``).

    >>> needs("Some text\\n<!-- needs: torch, keras -->\\n")
    ['torch', 'keras']
    """
    return [name.strip() for match in _NEEDS.finditer(text) for name in match.group(1).split(",")]


def run_page(page: str) -> int:
    """Run the examples of ``page`` in this process; the number of failures (doctest reports printed)."""
    path = ROOT / page
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(PRELUDE, namespace)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    parser = doctest.DocTestParser()
    for line, block in blocks(path.read_text()):
        name = f"{page}, the block at line {line}"
        print(f"--- {name}", flush=True)
        if ">>>" in block:
            runner.run(parser.get_doctest(block, namespace, name, str(path), line - 1), clear_globs=False)
        else:
            exec(compile("\n" * (line - 1) + block, str(path), "exec"), namespace)
    return runner.failures


def test_the_examples_of_every_page_are_collected():
    assert "README.md" in PAGES and "docs/guide.md" in PAGES
    assert all(blocks((ROOT / page).read_text()) for page in ["README.md", "docs/guide.md", "docs/mux.md"])


@pytest.mark.parametrize(
    "page",
    # A page that needs frameworks is marked, so that CI runs it again once it has installed them.
    [pytest.param(p, marks=pytest.mark.frameworks) if needs((ROOT / p).read_text()) else p for p in PAGES],
)
def test_page_examples_run(page):
    need(*needs((ROOT / page).read_text()))
    if not blocks((ROOT / page).read_text()):
        return  # a page without examples
    # Forks after JAX or Ray started their threads warn; a reader's session would only print it.
    command = [sys.executable, "-W", "ignore:os.fork() was called:RuntimeWarning", __file__, page]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=_PAGE_TIMEOUT_S)
    print(result.stdout)
    assert result.returncode == 0, (
        f"an example in {page} failed:\n{result.stdout[-8000:]}{result.stderr[-4000:]}"
    )


if __name__ == "__main__":
    sys.exit(1 if run_page(sys.argv[1]) else 0)
