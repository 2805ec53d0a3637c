"""I/O concurrency: ``pf.map(fn, concurrency=k)`` against a serial map, ``background`` and torchdata.nodes.

Run:  python benchmarks/bench_io.py [--repeats 5] [--gets 200] [--instant 100000] [--json out.json]

Three workloads, each timed ``--repeats`` times, contenders in turn (noise hits all alike):

- ``get``: ``--gets`` items whose call sleeps 20 ms (a simulated GET: the thread waits, the GIL is
  free). Contenders: the serial map, ``background(workers=2)``, ``pf.map(get, concurrency=16)``, the
  same with an ``async def`` call (``asyncio.sleep``), torchdata.nodes
  ``ParallelMapper(method="thread", num_workers=16)``. Goal: concurrency=16 within 1.5x of the
  ideal ``gets * 20 ms / 16``.
- ``fft``: 200 items whose call is ``np.fft.rfft`` of 1 MiB of float64 (numpy releases the GIL
  inside), at concurrency 4 (the machine has 2 cores), against the same contenders.
- ``instant``: ``--instant`` items whose call returns its argument: what a hand-over costs. Goal:
  ``concurrency=8`` costs <= 10 us an item over the plain map; torchdata at 8 threads alongside.

Printed: per workload and contender, min / median / max seconds and the median's ratio to the
goal's reference (the ideal, or pf's concurrent map); torchdata's ratio is to pf's (goal >= 1:
pf at least as fast).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import pescador_fp as pf
from benchmarks._timing import consume, write_json

GET_S = 0.020


def get(i: int) -> int:
    time.sleep(GET_S)
    return i


async def get_async(i: int) -> int:
    await asyncio.sleep(GET_S)
    return i


SIGNAL = np.random.default_rng(0).standard_normal(1 << 17)  # 1 MiB of float64


def fft(i: int) -> float:
    return float(np.abs(np.fft.rfft(SIGNAL)).max()) + i


def instant(i: int) -> int:
    return i


def _torchdata(fn: Callable[[int], Any], n: int, k: int) -> Callable[[], None]:
    from torchdata.nodes import IterableWrapper, Loader, ParallelMapper

    def run() -> None:
        node = ParallelMapper(IterableWrapper(range(n)), map_fn=fn, num_workers=k, method="thread")
        consume(Loader(node))

    return run


def _pf(fn: Callable[[int], Any], n: int, **kwargs: Any) -> Callable[[], None]:
    def run() -> None:
        consume(range(n) | pf.map(fn, **kwargs))

    return run


def _background(fn: Callable[[int], Any], n: int) -> Callable[[], None]:
    def run() -> None:
        consume(range(n) | pf.map(fn) | pf.background(workers=2))

    return run


def _times(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _table(title: str, times: dict[str, list[float]], reference: dict[str, float], unit: float = 1.0) -> None:
    print(f"\n{title}")
    print(f"  {'contender':44s} {'min':>9s} {'median':>9s} {'max':>9s}  ratio")
    for name, values in times.items():
        low, mid, high = min(values), statistics.median(values), max(values)
        ratio = f"{mid / reference[name]:.2f}x {reference_names[name]}" if name in reference else ""
        print(f"  {name:44s} {low * unit:9.3f} {mid * unit:9.3f} {high * unit:9.3f}  {ratio}")


reference_names: dict[str, str] = {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--instant", type=int, default=100_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {}

    n, k = args.gets, 16
    ideal = n * GET_S / k
    runs = {
        "serial map": _pf(get, n),
        "background(workers=2)": _background(get, n),
        f"pf.map(concurrency={k})": _pf(get, n, concurrency=k),
        f"pf.map(async, concurrency={k})": _pf(get_async, n, concurrency=k),
        f"torchdata ParallelMapper(thread, {k})": _torchdata(get, n, k),
    }
    times = results["get"] = _times(runs, args.repeats)
    ours = statistics.median(times[f"pf.map(concurrency={k})"])
    reference = {name: ideal for name in runs}
    reference_names.update(dict.fromkeys(runs, "of ideal"))
    reference[f"torchdata ParallelMapper(thread, {k})"] = ours
    reference_names[f"torchdata ParallelMapper(thread, {k})"] = "of pf (>= 1: pf faster)"
    _table(
        f"get: {n} calls of 20 ms, seconds (ideal {ideal:.3f} s; goal: concurrency={k} <= 1.5x)",
        times,
        reference,
    )

    k = 4
    n = 200
    runs = {
        "serial map": _pf(fft, n),
        "background(workers=2)": _background(fft, n),
        f"pf.map(concurrency={k})": _pf(fft, n, concurrency=k),
        f"torchdata ParallelMapper(thread, {k})": _torchdata(fft, n, k),
    }
    times = results["fft"] = _times(runs, args.repeats)
    ours = statistics.median(times[f"pf.map(concurrency={k})"])
    reference = dict.fromkeys(runs, ours)
    reference_names.update(dict.fromkeys(runs, "of pf concurrency"))
    reference_names[f"torchdata ParallelMapper(thread, {k})"] = "of pf (>= 1: pf faster)"
    _table(f"fft: {n} rfft of 1 MiB, seconds", times, reference)

    n, k = args.instant, 8
    runs = {
        "plain map": _pf(instant, n),
        f"pf.map(concurrency={k})": _pf(instant, n, concurrency=k),
        f"pf.map(concurrency={k}, ordered=False)": _pf(instant, n, concurrency=k, ordered=False),
        f"torchdata ParallelMapper(thread, {k})": _torchdata(instant, n, k),
    }
    times = results["instant"] = _times(runs, args.repeats)
    plain = statistics.median(times["plain map"])
    ours = statistics.median(times[f"pf.map(concurrency={k})"])
    per_item = {name: [t / n for t in values] for name, values in times.items()}
    reference = {f"torchdata ParallelMapper(thread, {k})": ours / n}
    reference_names[f"torchdata ParallelMapper(thread, {k})"] = "of pf (>= 1: pf faster)"
    _table(f"instant: {n} calls, us per item", per_item, reference, unit=1e6)
    over = {name: (statistics.median(values) - plain) / n * 1e6 for name, values in times.items()}
    for name, us in over.items():
        if name != "plain map":
            print(f"  over the plain map: {name}: {us:.2f} us an item (goal for pf <= 10)")
    results["instant_over_plain_us"] = over
    write_json(args.json, results)


if __name__ == "__main__":
    main()
