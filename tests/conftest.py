"""Options of this test suite: ``--repeat`` (CI's runs under each start method and transport)."""

from __future__ import annotations

import pytest

#: The parameters by which a test chooses its start method itself.
START_METHOD_PARAMETERS = ("start_method", "method")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--repeat",
        action="store_true",
        help="a repeat of the suite under another PESCADOR_FP_START_METHOD or PESCADOR_FP_TRANSPORT: leave "
        "out the cases that choose their start method themselves (the first run ran each of them)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--repeat"):
        return
    kept, left_out = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        chosen = any(name in params for name in START_METHOD_PARAMETERS)
        (left_out if chosen else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
