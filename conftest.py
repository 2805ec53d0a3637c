"""Doctests of the framework adapters run only where their framework is installed (CI installs all), and
those that import JAX only in the child pytest that tests/test_jax.py and tests/test_keras.py start."""

from __future__ import annotations

import importlib.util
import os

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
