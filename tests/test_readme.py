"""The examples in the README and the docs pages run as written, in order, sharing one namespace
per page as a reader's session would."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    "README.md",
    "docs/mux.md",
    "docs/background.md",
    "docs/migrating.md",
    "docs/resume.md",
    "docs/io.md",
]


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page):
    # A block right after a "<!-- not run" comment is an illustration that needs outside files.
    blocks = re.findall(r"(?<!-->\n)```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {}
    exec("import itertools\nimport numpy as np\nimport pescador_fp as pf", namespace)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    parser = doctest.DocTestParser()
    for index, block in enumerate(blocks):
        name = f"{page} block {index}"
        if ">>>" not in block:
            exec(compile(block, name, "exec"), namespace)
            continue
        runner.run(parser.get_doctest(block, namespace, name, str(ROOT / page), 0), clear_globs=False)
    assert runner.failures == 0, f"an example in {page} failed; pytest -s shows the doctest report"
