"""The README's examples run as written, in order, sharing one namespace as a reader's session would."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    parser = doctest.DocTestParser()
    for index, block in enumerate(blocks):
        if ">>>" not in block:
            exec(compile(block, f"README.md block {index}", "exec"), namespace)
            continue
        runner.run(
            parser.get_doctest(block, namespace, f"README block {index}", str(README), 0), clear_globs=False
        )
    assert runner.failures == 0, "a README example failed; pytest -s shows the doctest report"
