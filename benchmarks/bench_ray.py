"""``pescador_fp.ray.remote`` against ``pf.background`` on the same machine.

Run:  python benchmarks/bench_ray.py            (pip install -e ".[ray]" first)

One local Ray cluster (``ray.init(num_cpus=2)``) and the same pipeline,
``pf.from_iterable(range(...)) | pf.map(fresh_array)``, divided into 2 parts,
through ``background(workers=2)`` and ``ray.remote(workers=2)`` in turn:

A. Throughput at 64 KiB, 1 MiB and 8 MiB float32 items (each a fresh array):
   a measurement opens a fresh iterator, takes 8 items (start-up, every part's
   included, is not counted), then times the next N items (N from a pilot run, about half a
   second). Medians of 5 rounds with min and max, items/s and MiB/s.
   A bare Ray streaming generator (one task yielding the same arrays, no
   pescador_fp) shows what Ray's per-object cost allows on this machine.
B. Time to the first item of a fresh iterator (median of 5): after a pass that
   ran to its end, and after a pass left with ``close()`` (which kills its
   tasks' processes); and the time ``close()`` takes. Also ``remote`` with
   ``resources={"CPU": 0}``, which reserves no placement group.

BLAS/OpenMP thread pools are pinned to one thread before numpy is imported.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _timing import spread, write_json  # noqa: E402

import pescador_fp as pf  # noqa: E402

SIZES = {"64 KiB": 64 * 2**10, "1 MiB": 2**20, "8 MiB": 8 * 2**20}
WORKERS = 2
ROUNDS = 5
TARGET_S = 0.5
WARM = 4 * WORKERS  # items taken before timing: each part has started and sent some


class Fresh:
    """A fresh float32 array of ``nbytes`` per item (the worker's cost of making a batch)."""

    def __init__(self, nbytes: int) -> None:
        self.n = nbytes // 4

    def __call__(self, i: int) -> np.ndarray:
        return np.full(self.n, i, dtype=np.float32)


def pipeline(nbytes: int) -> pf.Stream[Any]:
    return pf.from_iterable(range(10**12)) | pf.map(Fresh(nbytes))


def raw_ray_items(nbytes: int) -> Any:
    """A bare Ray streaming generator (one task, no pescador_fp): what Ray's own per-object cost allows."""
    import ray

    task = ray.remote(_raw_task).options(num_returns="streaming", _generator_backpressure_num_objects=4)
    items = task.remote(nbytes)
    try:
        for ref in items:
            yield ray.get(ref)
    finally:
        ray.cancel(items, force=True)


def _raw_task(nbytes: int) -> Any:
    make = Fresh(nbytes)
    for i in range(10**12):
        yield make(i)


def timed(stream: pf.Stream[Any], n: int) -> float:
    """Seconds for ``n`` items after the first ``WARM`` of a fresh iterator (every part has started)."""
    items = iter(stream)
    try:
        for _ in range(WARM):
            next(items)
        start = time.perf_counter()
        for _ in range(n):
            next(items)
        return time.perf_counter() - start
    finally:
        items.close()


def throughput(contenders: dict[str, Callable[[int], pf.Stream[Any]]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, nbytes in SIZES.items():
        counts = {}
        for name, make in contenders.items():
            pilot = max(8, int(64 * 2**20 / nbytes))
            seconds = timed(make(nbytes), pilot)
            counts[name] = max(8, int(pilot * TARGET_S / seconds))
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(ROUNDS):
            for name, make in contenders.items():
                rates[name].append(counts[name] / timed(make(nbytes), counts[name]))
        results[label] = {}
        for name, values in rates.items():
            s = spread(values)
            mib = nbytes / 2**20
            results[label][name] = {**s, "MiB/s": s["median"] * mib}
            print(
                f"{label:>7}  {name:<22} {s['median']:9.0f} items/s  {s['median'] * mib:8.0f} MiB/s  "
                f"(min {s['min']:.0f}, max {s['max']:.0f})"
            )
        ratio = results[label]["ray.remote"]["median"] / results[label]["background"]["median"]
        results[label]["ratio"] = ratio
        print(f"{label:>7}  ray.remote / background: {ratio:.2f}")
    return results


def first_item(ops: dict[str, pf.Operator[Any, Any]]) -> dict[str, Any]:
    """Time to the first item of a pass that follows a pass run to its end, and of one after a break."""
    results: dict[str, Any] = {}
    short = pf.from_iterable(range(8)) | pf.map(Fresh(2**20))
    for name, op in ops.items():
        ended, broken, closes = [], [], []
        for _ in range(ROUNDS):
            items = iter(short | op)
            start = time.perf_counter()
            next(items)
            ended.append(time.perf_counter() - start)
            for _ in items:
                pass
        for _ in range(ROUNDS):
            items = iter(pipeline(2**20) | op)
            start = time.perf_counter()
            next(items)
            broken.append(time.perf_counter() - start)
            start = time.perf_counter()
            items.close()
            closes.append(time.perf_counter() - start)
        results[name] = {
            "first_after_end_s": statistics.median(ended),
            "first_after_break_s": statistics.median(broken),
            "close_s": statistics.median(closes),
        }
        print(
            f"first item  {name:<34} after a pass that ended {1e3 * statistics.median(ended):7.1f} ms, "
            f"after a break {1e3 * statistics.median(broken):7.1f} ms; "
            f"close {1e3 * statistics.median(closes):5.1f} ms  (medians of {ROUNDS}, 1 MiB items)"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--store-mib", type=int, default=2048, help="Ray's object store (MiB)")
    args = parser.parse_args()

    import ray

    import pescador_fp.ray as pfr

    ray.init(
        num_cpus=WORKERS,
        include_dashboard=False,
        object_store_memory=args.store_mib * 2**20,
        log_to_driver=False,
    )
    contenders: dict[str, Callable[[int], pf.Stream[Any]]] = {
        "background": lambda nbytes: pipeline(nbytes) | pf.background(workers=WORKERS),
        "ray.remote": lambda nbytes: pipeline(nbytes) | pfr.remote(workers=WORKERS),
        "bare Ray generator": lambda nbytes: pf.stream(raw_ray_items, nbytes),
    }
    print(f"Ray {ray.__version__}, {os.cpu_count()} CPUs, workers={WORKERS}")
    firsts = first_item(
        {
            "background": pf.background(workers=WORKERS),
            "ray.remote": pfr.remote(workers=WORKERS),
            "ray.remote, resources={'CPU': 0}": pfr.remote(workers=WORKERS, resources={"CPU": 0}),
        }
    )
    results = {"first_item": firsts, "throughput": throughput(contenders)}
    write_json(args.json, results)
    ray.shutdown()


if __name__ == "__main__":
    main()
