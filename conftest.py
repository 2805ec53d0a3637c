"""Doctests of the framework adapters run only where their framework is installed (CI installs all)."""

from __future__ import annotations

import importlib.util
import os

collect_ignore = [
    f"pescador_fp/{name}.py" for name in ("torch", "jax", "keras") if importlib.util.find_spec(name) is None
]

# Keras 3 runs its tests on JAX (CPU); set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")
