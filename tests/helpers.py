"""Test helpers: comparing samples with arrays, sources that record what was pulled, our own /dev/shm,
frameworks that a test needs."""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pescador_fp as pf


def same(a: Any, b: Any) -> bool:
    """Deep equality for samples: dicts, tuples, lists and arrays (dtype and shape included)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    return bool(a == b)


def same_items(xs: list[Any], ys: list[Any]) -> bool:
    return len(xs) == len(ys) and all(map(same, xs, ys))


class Recorder:
    """A source that remembers how many items each pass pulled and whether it was closed."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.pulled: list[int] = []
        self.closed = 0

    def _items(self) -> Iterator[int]:
        self.pulled.append(0)
        i = 0
        try:
            while self.n is None or i < self.n:
                self.pulled[-1] += 1
                yield i
                i += 1
        finally:
            self.closed += 1

    def stream(self) -> pf.Stream[int]:
        return pf.stream(self._items)


def own_shm_entries() -> list[str]:
    """The shared-memory names this test process made (rings are named after the consumer's pid).

    Other processes on the machine may leave entries of their own in /dev/shm;
    a test checks only its own.
    """
    from pescador_fp._ipc.ring import NAME_PREFIX, SHM_DIR

    mine = f"{NAME_PREFIX}{os.getpid()}_"
    try:
        return sorted(f for f in os.listdir(SHM_DIR) if f.startswith(mine))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def nothing_left_behind(deadline_s: float = 3.0) -> Iterator[None]:
    """Around a test: afterwards no child process of this one and no new shared memory of its own."""
    before = own_shm_entries()
    yield
    end = time.monotonic() + deadline_s
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.02)
    assert multiprocessing.active_children() == []
    assert own_shm_entries() == before


ROOT = Path(__file__).resolve().parent.parent


def pytest_in_child(args: list[str], env: Mapping[str, str], timeout: float) -> None:
    """Run ``pytest args`` in a child process with ``env`` (a framework that must not be imported in this
    one) and fail with the end of its output if it fails."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    result = subprocess.run(command, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-10_000:] + result.stderr[-3_000:]


#: Set by CI (.ci/run), which installs every framework: there a test whose framework is missing fails.
REQUIRE_FRAMEWORKS = "PESCADOR_FP_REQUIRE_FRAMEWORKS"
_EXTRA = {
    "torch": "torch",
    "jax": "jax",
    "keras": "keras",
    "ray": "ray",
    "tqdm": "progress",
    "IPython": "progress",
    "ipywidgets": "progress",
}


def missing(*frameworks: str) -> list[str]:
    """The frameworks among ``frameworks`` that are not installed (looked up, never imported)."""
    return [name for name in frameworks if importlib.util.find_spec(name) is None]


def need(*frameworks: str) -> None:
    """Skip the calling test (or test module) where one of ``frameworks`` is not installed, saying which
    extra installs it; where ``PESCADOR_FP_REQUIRE_FRAMEWORKS=1`` (CI) that is a failure instead."""
    absent = missing(*frameworks)
    if not absent:
        return
    extras = ",".join(dict.fromkeys(_EXTRA.get(name, name) for name in absent))
    message = f"needs {' and '.join(absent)}, not installed here (pip install -e '.[{extras}]')"
    if os.environ.get(REQUIRE_FRAMEWORKS) == "1":
        pytest.fail(f"{message}; {REQUIRE_FRAMEWORKS}=1 requires every framework", pytrace=False)
    pytest.skip(message, allow_module_level=True)
