"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import collections
import json
import statistics
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


def spread(values: list[float]) -> dict[str, float]:
    """Min, median and max of ``values``, and max/min (the spread)."""
    ordered = sorted(values)
    low, high = ordered[0], ordered[-1]
    return {
        "min": low,
        "median": statistics.median(ordered),
        "max": high,
        "spread": high / low if low > 0 else float("inf"),
    }


def round_rates(
    runs: dict[str, Callable[[int], float]], counts: dict[str, int], repeats: int
) -> dict[str, list[float]]:
    """Items/s of each contender in each of ``repeats`` rounds, contenders in turn (noise hits all alike).

    ``runs[name](n)`` streams ``n`` items and returns the seconds they took.
    """
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rates[name].append(counts[name] / run(counts[name]))
    return rates
