"""Doctests of the framework adapters run only where their framework is installed (CI installs all), and
those that import JAX only in the child pytest that tests/test_jax.py and tests/test_keras.py start;
``--repeat``, for CI's runs under each start method and transport."""

from __future__ import annotations

import importlib.util
import os

import pytest

collect_ignore = [
    f"pescador_fp/{name}.py" for name in ("torch", "jax", "keras") if importlib.util.find_spec(name) is None
]
# JAX (under keras too) runs in a child pytest of its own (tests/test_jax.py says why): the main test
# process never imports it.
if os.environ.get("PESCADOR_FP_FRAMEWORK_CHILD") != "1":
    collect_ignore += [
        "pescador_fp/jax.py",
        "pescador_fp/keras.py",
        "tests/jax_cases.py",
        "tests/keras_cases.py",
    ]

# Keras 3 runs its tests on JAX (CPU), and JAX sees 4 CPU devices for the sharding tests; set before
# anything imports keras or jax.
os.environ.setdefault("KERAS_BACKEND", "jax")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
# The Ray cases run in a child pytest of their own (tests/test_ray.py says why): the main test process
# never imports Ray, not even to collect doctests from tests/ray_cases.py.
if os.environ.get("PESCADOR_FP_RAY_CHILD") != "1":
    collect_ignore += ["tests/ray_cases.py"]

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
