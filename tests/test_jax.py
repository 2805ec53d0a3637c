"""pescador_fp.jax: the cases are in tests/jax_cases.py, run here in a pytest process of their own.

JAX starts threads of its own as soon as it is imported, and a fork after that
(a background worker, a DataLoader worker) makes JAX warn of a possible
deadlock; under ``filterwarnings = error`` that would fail tests that have
nothing to do with JAX. So the JAX and Keras tests, and the doctests of
``pescador_fp/jax.py``, run in a child pytest, and the main test process never
imports JAX. In the child, forks made by code that does not use JAX (the
torch DataLoader of the docs' examples, background workers) are allowed.
"""

from __future__ import annotations

import os

import pytest
from helpers import need, pytest_in_child

CHILD_ENV = "PESCADOR_FP_FRAMEWORK_CHILD"

need("jax")


@pytest.mark.timeout(900)
def test_jax_cases_pass_in_a_process_of_their_own():
    fork_warning = ["-W", "ignore:os.fork() was called:RuntimeWarning"]
    args = [*fork_warning, "tests/jax_cases.py", "pescador_fp/jax.py"]
    pytest_in_child(args, {**os.environ, CHILD_ENV: "1"}, timeout=840)
