"""The generated API reference is current."""

from __future__ import annotations

import runpy
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_api_reference_is_up_to_date():
    render = runpy.run_path(str(DOCS / "make_api.py"))["render"]
    assert (DOCS / "api.md").read_text() == render(), "run: python docs/make_api.py"
