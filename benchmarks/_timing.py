"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterable
from typing import Any


def consume(items: Iterable[Any]) -> None:
    """Pull every item, keeping none."""
    collections.deque(items, maxlen=0)


def best_times(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """The best wall time of each contender, running them in turn so that noise hits all alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def write_json(path: str | None, results: object) -> None:
    """Write the results to ``path`` as JSON, if a path was given."""
    if path:
        with open(path, "w") as out:
            json.dump(results, out, indent=2)
