"""A griffe extension (mkdocs.yml) that shows a docstring's ``>>>`` examples as code on the docs site.

A doctest in a docstring is plain text to Markdown, which joins its lines into a paragraph and reads
``[0, 1]`` as a link; each run of ``>>>`` lines and their output becomes a ```pycon block instead.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """``text`` with each doctest (a ``>>>`` line up to the next blank line) in a ```pycon fence.

    >>> print(fence_doctests("Sum:\\n\\n>>> 1 + 1\\n2\\n\\nThe end."))
    Sum:
    <BLANKLINE>
    ```pycon
    >>> 1 + 1
    2
    ```
    <BLANKLINE>
    The end.
    """
    out: list[str] = []
    indent: str | None = None
    for line in text.split("\n"):
        stripped = line.lstrip()
        if indent is None and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    """Fence the doctests of every docstring that griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
