"""``pf.background`` against memcpy and the other ways to stream from a worker process.

Run:  python benchmarks/bench_background.py         (pip install -e ".[bench]" torch first)

Everything runs in one process, one run; contenders take turns, several
rounds, and the best time of each is kept. A measurement opens a fresh
iterator, takes one item (so that worker start-up is never counted), then
times the next N items; N is picked from a short pilot run so that each
measurement lasts about half a second.

A. Transport alone: the worker yields ONE preallocated float32 array again and
   again. Single-thread ``np.copyto`` of the same size (the limit) against
   ``pf.stream(...) | pf.background()``, owned (the default: arrays in shared
   memory blocks) and with ``copy=True``.
   Target: >= 50 % of memcpy bandwidth at 1 MiB.
B. A realistic worker that makes a fresh array per item (``np.full``), against
   Pescador 3.0's ``ZMQStreamer`` (which needs dict items: ``{"x": array}``),
   a torch ``DataLoader(IterableDataset, batch_size=None, num_workers=1)``
   (items come out as tensors converted from the numpy arrays) and a
   ``multiprocessing.Queue`` fed by one producer process.
   Targets: at 1 MiB >= 10x ZMQStreamer and >= 10x the DataLoader (items/s);
   at 1 KiB >= 5x ZMQStreamer.
C. Time to the first item of a fresh ``background`` iterator under each start
   method (median of several tries; forkserver's first try, which starts the
   server, is shown apart), and the time to close it again.
D. Scaling: a CPU-bound pure-Python ``pf.map`` (~1.5 ms per item) over
   ``pf.from_iterable(range(N))`` through ``background(workers=1)`` and
   ``workers=2``. Target: >= 1.7x on a 2-core machine.

F. (``--breakdown``) Where the time goes, per item, for a reused 1 MiB array,
   fresh 1 MiB and fresh 1 KiB arrays (and the producer alone): each side's
   CPU time, page faults, sleeps and preemptions, from getrusage, over a pass
   of N items less one of N/4.

G. (``--goals``) The goals of issues 13 and 21: items/s of each contender as
   min/median/max over ``--repeats`` rounds, contenders in turn, ratios of
   medians, and the spread (max/min) of ours; then the consumer's CPU per
   batch (``time.thread_time`` of the training thread) for
   ``from_iterable | shuffle(1024) | map(row + 1) | batch(64) | background(workers=2)``
   at 128 KiB, 1 MiB and 9 MiB batches (issue 21: <= 20 us each).

I. (``--threshold``) Where arrays should switch from the ring (copied out) to
   pool blocks (owned): for a reused array of 4 KiB to 256 KiB, items/s and
   the consumer's CPU per item (``time.thread_time``) with every array in a
   block against every array in the ring, rounds interleaved.

H. (``--stats-overhead``) What ``it.stats()`` costs, at 64 KiB items: the same
   runs with ``pescador_fp._stats.ENABLED`` on and off, in turn. Off stops the
   per-stage counting; background's per-worker counters (a few integer
   operations per item) stay on in both. Target: <= 3 %.

BLAS/OpenMP thread pools are pinned to one thread before numpy is imported.
"""

from __future__ import annotations

import os

for _variable in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _timing import consume, round_rates, spread, write_json  # noqa: E402

import pescador_fp as pf  # noqa: E402
from pescador_fp._ipc.ring import NAME_PREFIX, SHM_DIR  # noqa: E402
from pescador_fp._ipc.workers import default_start_method  # noqa: E402

KIB = 1024
MIB = 1024 * 1024
SIZES = [KIB, 64 * KIB, MIB, 16 * MIB]
FLOAT = np.dtype(np.float32).itemsize
# An upper bound on the bytes one measurement streams (peers may buffer all of them).
MAX_BYTES_PER_RUN = 8 * 1024 * MIB
QUEUE_MAXSIZE = 8
BATCH = 64
BATCH_SAMPLE_FLOATS = 16 * KIB // FLOAT

# A measurement: stream ``n`` items after the first, return the seconds they took.
Measure = Callable[[int], float]


# ---------------------------------------------------------------- workers (module level for spawn)


def same_items(n_floats: int, count: int) -> Iterator[np.ndarray]:
    """``count`` times the same preallocated array: the transport alone."""
    x = np.ones(n_floats, np.float32)
    for _ in range(count):
        yield x


def fresh_items(n_floats: int, count: int) -> Iterator[np.ndarray]:
    """A fresh array per item, as a realistic worker makes them."""
    for i in range(count):
        yield np.full(n_floats, i, np.float32)


def fresh_dicts(n_floats: int, count: int) -> Iterator[dict[str, np.ndarray]]:
    """The same for Pescador's ZMQStreamer, which only sends dicts of arrays."""
    for i in range(count):
        yield {"x": np.full(n_floats, i, np.float32)}


def queue_producer(queue: Any, n_floats: int, count: int) -> None:
    for item in fresh_items(n_floats, count):
        queue.put(item)
    queue.put(None)


def do_nothing() -> None:
    pass


def burn(i: int, loops: int) -> int:
    """About ``loops`` * 50 ns of pure-Python work (no BLAS, no GIL release); returns ``i``."""
    total = 0
    for k in range(loops):
        total += k * k ^ i
    return i if total >= 0 else -1


def sample_16k(i: int) -> np.ndarray:
    """A cheap map: a fresh 16 KiB sample."""
    return np.full(BATCH_SAMPLE_FLOATS, i, np.float32)


def burned_sample_16k(i: int, loops: int) -> np.ndarray:
    """A CPU-bound map: pure-Python work, then a fresh 16 KiB sample."""
    return sample_16k(burn(i, loops))


class FreshArrays:
    """A torch IterableDataset (made a subclass when torch is there) of fresh arrays."""

    def __init__(self, n_floats: int, count: int) -> None:
        self.n_floats = n_floats
        self.count = count

    def __iter__(self) -> Iterator[np.ndarray]:
        return fresh_items(self.n_floats, self.count)


# ---------------------------------------------------------------- measuring


def iterator_measure(open_items: Callable[[int], Iterator[Any]]) -> Measure:
    """Time ``n`` items of an iterator over exactly ``n + 1`` items, after its first one."""

    def measure(n: int) -> float:
        items = open_items(n + 1)
        try:
            next(items)  # worker start-up is not counted
            start = time.perf_counter()
            for _ in range(n):
                next(items)
            elapsed = time.perf_counter() - start
            for _ in items:  # the end of the stream: the worker stops by itself
                pass
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        return elapsed

    return measure


def memcpy_measure(nbytes: int) -> Measure:
    source = np.ones(nbytes // FLOAT, np.float32)
    destination = np.empty_like(source)
    np.copyto(destination, source)  # fault the pages in

    def measure(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            np.copyto(destination, source)
        return time.perf_counter() - start

    return measure


def pick_items(measure: Measure, nbytes: int, target_s: float) -> int:
    """How many items make one measurement last about ``target_s``: from a short pilot run."""
    cap = max(5, MAX_BYTES_PER_RUN // nbytes)
    pilot = max(2, min(500, 2 * MIB // nbytes))
    while True:
        elapsed = measure(pilot)
        if elapsed >= target_s / 5 or pilot >= cap:
            break
        pilot = min(cap, pilot * 4)
    rate = pilot / max(elapsed, 1e-9)
    return int(min(cap, max(5, rate * target_s)))


def best_rates(
    runs: dict[str, Measure], nbytes: int, target_s: float, repeats: int
) -> dict[str, dict[str, float]]:
    """Items/s and MiB/s of each contender: best of ``repeats`` rounds, contenders in turn."""
    counts = {name: pick_items(run, nbytes, target_s) for name, run in runs.items()}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run(counts[name]))
    return {
        name: {
            "items": counts[name],
            "seconds": best[name],
            "items_per_s": counts[name] / best[name],
            "mib_per_s": counts[name] * nbytes / MIB / best[name],
        }
        for name in runs
    }


def size_name(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes >= MIB else f"{nbytes // KIB} KiB"


def verdict(value: float, target: float) -> str:
    return "MET" if value >= target else "NOT MET"


# ---------------------------------------------------------------- A. transport alone


def background_items(
    source: Callable[[int, int], Iterator[Any]], n_floats: int, **options: Any
) -> Callable[[int], Iterator[Any]]:
    def open_items(count: int) -> Iterator[Any]:
        return iter(pf.stream(source, n_floats, count) | pf.background(**options))

    return open_items


def bench_transport(target_s: float, repeats: int) -> dict[str, Any]:
    results = {}
    for nbytes in SIZES:
        n_floats = nbytes // FLOAT
        runs = {
            "memcpy": memcpy_measure(nbytes),
            "background": iterator_measure(background_items(same_items, n_floats)),
            "background_copy": iterator_measure(background_items(same_items, n_floats, copy=True)),
        }
        rates = best_rates(runs, nbytes, target_s, repeats)
        for name in ("background", "background_copy"):
            rates[name]["fraction_of_memcpy"] = rates[name]["mib_per_s"] / rates["memcpy"]["mib_per_s"]
        results[size_name(nbytes)] = rates
    return results


def print_transport(results: dict[str, Any]) -> None:
    print("A. Transport alone (the worker yields one preallocated float32 array again and again)")
    print(
        f"  {'size':>6}  {'memcpy MiB/s':>12}  {'own MiB/s':>10} {'items/s':>9} {'%memcpy':>7}"
        f"  {'copy=True MiB/s':>15} {'items/s':>9} {'%memcpy':>7}"
    )
    for size, r in results.items():
        m, c, z = r["memcpy"], r["background"], r["background_copy"]
        print(
            f"  {size:>6}  {m['mib_per_s']:12.0f}  {c['mib_per_s']:10.0f} {c['items_per_s']:9.0f} "
            f"{c['fraction_of_memcpy']:7.0%}  {z['mib_per_s']:15.0f} {z['items_per_s']:9.0f} "
            f"{z['fraction_of_memcpy']:7.0%}"
        )
    at = results["1 MiB"]
    for label, key in (("owned", "background"), ("copy=True", "background_copy")):
        fraction = at[key]["fraction_of_memcpy"]
        print(
            f"  1 MiB, {label:<9}: {fraction:5.1%} of memcpy bandwidth "
            f"(target >= 50%): {verdict(fraction, 0.5)}"
        )


# ---------------------------------------------------------------- B. against the peers


def zmq_items(n_floats: int) -> Callable[[int], Iterator[Any]] | None:
    try:
        import pescador
    except ImportError:
        return None

    def open_items(count: int) -> Iterator[Any]:
        return pescador.ZMQStreamer(pescador.Streamer(fresh_dicts, n_floats, count)).iterate()

    return open_items


def torch_items(n_floats: int) -> Callable[[int], Iterator[Any]] | None:
    try:
        from torch.utils.data import DataLoader, IterableDataset
    except ImportError:
        return None
    dataset_class = type("FreshArrayDataset", (FreshArrays, IterableDataset), {})

    def open_items(count: int) -> Iterator[Any]:
        loader = DataLoader(dataset_class(n_floats, count), batch_size=None, num_workers=1)
        return iter(loader)

    return open_items


def queue_items(n_floats: int) -> Callable[[int], Iterator[Any]]:
    def open_items(count: int) -> Iterator[Any]:
        context = multiprocessing.get_context(default_start_method())
        queue = context.Queue(maxsize=QUEUE_MAXSIZE)
        process = context.Process(target=queue_producer, args=(queue, n_floats, count), daemon=True)
        process.start()
        try:
            while (item := queue.get()) is not None:
                yield item
        finally:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join()
            queue.close()

    return open_items


def inline_items(n_floats: int) -> Callable[[int], Iterator[Any]]:
    def open_items(count: int) -> Iterator[Any]:
        return fresh_items(n_floats, count)

    return open_items


PEERS = {
    "zmq": "pescador ZMQStreamer",
    "torch": "torch DataLoader(nw=1)",
    "queue": "multiprocessing.Queue",
}
OURS = {"background": "pf.background", "background_copy": "pf.background copy=True"}
REFERENCE = {"inline": "np.full in-process (ref.)"}
LABELS = {**OURS, **PEERS, **REFERENCE}


def check_first(open_items: Callable[[int], Iterator[Any]], n_floats: int) -> None:
    """Each contender's items must be the worker's arrays (of value 0, 1, ...)."""
    items = open_items(2)
    try:
        for i, item in enumerate(items):
            if isinstance(item, dict):
                item = item["x"]
            array = np.asarray(item)
            assert array.shape == (n_floats,) and array.dtype == np.float32, (array.shape, array.dtype)
            assert float(array[0]) == i and float(array[-1]) == i, (i, array[:3])
            del item, array
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def bench_peers(target_s: float, repeats: int) -> tuple[dict[str, Any], list[str]]:
    results = {}
    skipped = []
    for nbytes in SIZES:
        n_floats = nbytes // FLOAT
        openers: dict[str, Callable[[int], Iterator[Any]] | None] = {
            "background": background_items(fresh_items, n_floats),
            "background_copy": background_items(fresh_items, n_floats, copy=True),
            "zmq": zmq_items(n_floats),
            "torch": torch_items(n_floats),
            "queue": queue_items(n_floats),
            "inline": inline_items(n_floats),
        }
        runs = {}
        for name, open_items in openers.items():
            if open_items is None:
                if name not in skipped:
                    skipped.append(name)
                continue
            check_first(open_items, n_floats)
            runs[name] = iterator_measure(open_items)
        rates = best_rates(runs, nbytes, target_s, repeats)
        for ours in OURS:
            for peer in (*PEERS, *REFERENCE):
                if peer in rates:
                    rates[ours][f"over_{peer}"] = rates[ours]["items_per_s"] / rates[peer]["items_per_s"]
        results[size_name(nbytes)] = rates
    return results, skipped


def print_peers(results: dict[str, Any], skipped: list[str]) -> None:
    print("B. A fresh array per item (np.full), pf.background against the peers")
    for name in skipped:
        hint = {"zmq": "pip install pescador==3.0.0 pyzmq", "torch": "pip install torch"}[name]
        print(f"  skipped {LABELS[name]}: not installed ({hint})")
    print(
        f"  {'size':>6}  {'contender':<26} {'items':>7} {'items/s':>10} {'MiB/s':>8}"
        f"  {'own/peer':>9} {'copy=True/peer':>14}"
    )
    for size, rates in results.items():
        for name, r in rates.items():
            ratios = ""
            if name not in OURS:
                ratios = (
                    f"  {rates['background'][f'over_{name}']:8.1f}x "
                    f"{rates['background_copy'][f'over_{name}']:13.1f}x"
                )
            print(
                f"  {size:>6}  {LABELS[name]:<26} {r['items']:7d} {r['items_per_s']:10.0f} "
                f"{r['mib_per_s']:8.0f}{ratios}"
            )
    targets = [("1 MiB", "zmq", 10.0), ("1 MiB", "torch", 10.0), ("1 KiB", "zmq", 5.0)]
    for size, peer, target in targets:
        if f"over_{peer}" not in results[size]["background"]:
            print(f"  {size}: >= {target:g}x {LABELS[peer]}: not measured (skipped)")
            continue
        copy = results[size]["background"][f"over_{peer}"]
        zero = results[size]["background_copy"][f"over_{peer}"]
        print(
            f"  {size}: pf.background / {LABELS[peer]} = {copy:.1f}x owned ({verdict(copy, target)}), "
            f"{zero:.1f}x copy=True ({verdict(zero, target)}); target >= {target:g}x items/s"
        )


# ---------------------------------------------------------------- C. time to the first item


def bench_first_item(tries: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    methods = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]
    for method in methods:
        stream = pf.stream(same_items, KIB // FLOAT, 10**12) | pf.background(start_method=method)
        firsts, closes = [], []
        for _ in range(tries + (method == "forkserver")):
            start = time.perf_counter()
            items = iter(stream)
            next(items)
            firsts.append(time.perf_counter() - start)
            start = time.perf_counter()
            items.close()
            closes.append(time.perf_counter() - start)
        # The floor: a bare multiprocessing.Process of this method, started and joined.
        context = multiprocessing.get_context(method)
        bare = []
        for _ in range(tries):
            start = time.perf_counter()
            process = context.Process(target=do_nothing)
            process.start()
            process.join()
            bare.append(time.perf_counter() - start)
        entry = {"tries_s": firsts, "close_s": closes, "bare_process_median_s": statistics.median(bare)}
        if method == "forkserver":  # the first try starts the fork server
            entry["cold_s"] = firsts[0]
            firsts, closes = firsts[1:], closes[1:]
        entry["median_s"] = statistics.median(firsts)
        entry["close_median_s"] = statistics.median(closes)
        results[method] = entry
    return results


def print_first_item(results: dict[str, Any], tries: int) -> None:
    print(f"C. Time to the first item of a fresh background iterator (median of {tries}), and to close it")
    print(
        f"  {'method':<11} {'first item ms':>13} {'min':>7} {'max':>7} {'close ms':>9}"
        f"  {'bare Process start+join ms':>26}"
    )
    for method, r in results.items():
        tries_s = r["tries_s"][1:] if "cold_s" in r else r["tries_s"]
        print(
            f"  {method:<11} {r['median_s'] * 1e3:13.1f} {min(tries_s) * 1e3:7.1f} "
            f"{max(tries_s) * 1e3:7.1f} {r['close_median_s'] * 1e3:9.1f}"
            f"  {r['bare_process_median_s'] * 1e3:26.1f}"
        )
        if "cold_s" in r:
            print(f"  {'':<11} (first try, which starts the fork server: {r['cold_s'] * 1e3:.1f} ms)")


# ---------------------------------------------------------------- D. scaling


def calibrate_loops(seconds: float) -> int:
    loops = 20_000
    best = min(_timed(burn, 0, loops) for _ in range(5))
    return max(1000, int(loops * seconds / best))


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_scaling(target_s: float, repeats: int) -> dict[str, Any]:
    loops = calibrate_loops(1.5e-3)
    cost = min(_timed(burn, 0, loops) for _ in range(5))
    work = functools.partial(burn, loops=loops)
    n = max(20, int(target_s / cost))

    def open_with(workers: int | None) -> Callable[[int], Iterator[Any]]:
        def open_items(count: int) -> Iterator[Any]:
            stream = pf.from_iterable(range(count)) | pf.map(work)
            if workers is not None:
                stream = stream | pf.background(workers=workers)
            return iter(stream)

        return open_items

    def open_pool(processes: int) -> Callable[[int], Iterator[Any]]:
        """The reference: ``multiprocessing.Pool.imap`` (it also tells how free the CPUs are)."""

        def open_items(count: int) -> Iterator[Any]:
            pool = multiprocessing.get_context(default_start_method()).Pool(processes)
            try:
                yield from pool.imap(work, range(count), chunksize=1)
            finally:
                pool.terminate()
                pool.join()

        return open_items

    # Every item comes out once, in order.
    assert list(open_with(2)(21)) == list(range(21))
    runs = {
        "inline": iterator_measure(open_with(None)),
        "workers_1": iterator_measure(open_with(1)),
        "workers_2": iterator_measure(open_with(2)),
        "pool_1": iterator_measure(open_pool(1)),
        "pool_2": iterator_measure(open_pool(2)),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run(n))
    rates = {name: n / best[name] for name in runs}
    return {
        "items": n,
        "ms_per_item": 1e3 / rates["inline"],
        "calibrated_ms_per_item": cost * 1e3,
        "items_per_s": rates,
        "ratio_2_over_1": rates["workers_2"] / rates["workers_1"],
        "ratio_1_over_inline": rates["workers_1"] / rates["inline"],
        "pool_ratio_2_over_1": rates["pool_2"] / rates["pool_1"],
        "cpus": os.cpu_count(),
    }


def print_scaling(r: dict[str, Any]) -> None:
    print(
        f"D. Scaling: pure-Python pf.map at {r['ms_per_item']:.2f} ms/item over {r['items']} items "
        f"({r['cpus']} CPUs)"
    )
    rates = r["items_per_s"]
    print(f"  in-process (no background)   {rates['inline']:8.1f} items/s")
    print(
        f"  background(workers=1)        {rates['workers_1']:8.1f} items/s   "
        f"{r['ratio_1_over_inline']:.2f}x in-process"
    )
    print(
        f"  background(workers=2)        {rates['workers_2']:8.1f} items/s   "
        f"{r['ratio_2_over_1']:.2f}x workers=1 (target >= 1.7x): {verdict(r['ratio_2_over_1'], 1.7)}"
    )
    print(f"  reference: multiprocessing.Pool(1).imap {rates['pool_1']:8.1f} items/s")
    print(
        f"  reference: multiprocessing.Pool(2).imap {rates['pool_2']:8.1f} items/s   "
        f"{r['pool_ratio_2_over_1']:.2f}x Pool(1) (what the machine gives now)"
    )


# ---------------------------------------------------------------- E. transports and start methods


def bench_transports_and_starts(tries: int) -> dict[str, Any]:
    """Each shared-memory transport's throughput (1 KiB and 1 MiB, transport alone and fresh
    arrays; median, min and max of ``tries`` runs of about 0.3 s), and the time to the first
    item of a fresh pass under each start method (median of ``tries`` passes, after one that
    starts the fork server)."""
    from pescador_fp._ipc.ring import TRANSPORT_VARIABLE, TRANSPORTS

    results: dict[str, Any] = {"throughput": {}, "first_item": {}}
    before = os.environ.get(TRANSPORT_VARIABLE)
    try:
        for transport in TRANSPORTS:
            os.environ[TRANSPORT_VARIABLE] = transport
            for nbytes in (KIB, MIB):
                for source in (same_items, fresh_items):
                    measure = iterator_measure(background_items(source, nbytes // FLOAT))
                    count = pick_items(measure, nbytes, 0.3)
                    rates = sorted(count / measure(count) for _ in range(tries))
                    key = f"{transport} {size_name(nbytes)} {source.__name__}"
                    results["throughput"][key] = {
                        "median_items_per_s": statistics.median(rates),
                        "min_items_per_s": rates[0],
                        "max_items_per_s": rates[-1],
                        "median_mib_per_s": statistics.median(rates) * nbytes / MIB,
                    }
                    print(
                        f"  {key:<32} {statistics.median(rates):>10.0f} items/s "
                        f"(min {rates[0]:.0f}, max {rates[-1]:.0f}), "
                        f"{statistics.median(rates) * nbytes / MIB:8.0f} MiB/s"
                    )
            for method in multiprocessing.get_all_start_methods():
                stream = pf.stream(same_items, KIB // FLOAT, 10**12) | pf.background(start_method=method)
                firsts = []
                for _ in range(tries + 1):
                    start = time.perf_counter()
                    items = iter(stream)
                    next(items)
                    firsts.append(time.perf_counter() - start)
                    items.close()
                entry = {"first_s": firsts[0], "median_s": statistics.median(firsts[1:])}
                results["first_item"][f"{transport} {method}"] = entry
                print(
                    f"  {transport} {method:<10} first item: median {entry['median_s'] * 1e3:7.1f} ms "
                    f"(min {min(firsts[1:]) * 1e3:.1f}, max {max(firsts[1:]) * 1e3:.1f}; "
                    f"first pass {firsts[0] * 1e3:.1f} ms)"
                )
    finally:
        if before is None:
            os.environ.pop(TRANSPORT_VARIABLE, None)
        else:
            os.environ[TRANSPORT_VARIABLE] = before
    return results


# ---------------------------------------------------------------- F. where the time goes, per item

# Counters of a process, from getrusage: CPU seconds (user, system), minor page faults,
# voluntary context switches (it went to sleep) and involuntary ones (it was preempted).
COUNTERS = ("user_s", "system_s", "page_faults", "sleeps", "preempted")


def _counters(who: str) -> list[float]:
    import resource  # POSIX only

    r = resource.getrusage(getattr(resource, who))
    return [r.ru_utime, r.ru_stime, r.ru_minflt, r.ru_nvcsw, r.ru_nivcsw]


def _pass_counters(open_items: Callable[[int], Iterator[Any]], count: int) -> list[float]:
    """Wall seconds, then the consumer's counters and the workers' (ended and joined), for one pass."""
    self_before = _counters("RUSAGE_SELF")
    children_before = _counters("RUSAGE_CHILDREN")
    start = time.perf_counter()
    consume(open_items(count))
    wall = time.perf_counter() - start
    consumer = [a - b for a, b in zip(_counters("RUSAGE_SELF"), self_before)]
    workers = [a - b for a, b in zip(_counters("RUSAGE_CHILDREN"), children_before)]
    return [wall, *consumer, *workers]


def breakdown_cases() -> dict[str, tuple[Callable[[int], Iterator[Any]], int]]:
    """The three cases of issue 13, and the producer alone: (open items, items per pass)."""
    return {
        "reused 1 MiB": (background_items(same_items, MIB // FLOAT), 1600),
        "fresh 1 MiB: producer alone": (inline_items(MIB // FLOAT), 1600),
        "fresh 1 MiB": (background_items(fresh_items, MIB // FLOAT), 1600),
        "fresh 1 KiB: producer alone": (inline_items(KIB // FLOAT), 200_000),
        "fresh 1 KiB": (background_items(fresh_items, KIB // FLOAT), 200_000),
    }


def bench_breakdown(repeats: int) -> dict[str, Any]:
    """Per item, for each case: wall time, and each side's CPU time, page faults and context switches.

    Counted with getrusage over a pass of N items and one of N/4 (medians of
    ``repeats`` each); the difference over 3N/4 items leaves out start-up and
    shutdown. CPU time and page faults say what each side does per item and
    hardly change with other work on the machine; wall time does.
    """
    results: dict[str, Any] = {}
    for case, (open_items, count) in breakdown_cases().items():
        consume(open_items(count // 10))  # warm up: imports, the first pages of the rings
        short, full = [], []
        for _ in range(repeats):
            short.append(_pass_counters(open_items, count // 4))
            full.append(_pass_counters(open_items, count))
        per_item = [
            (statistics.median(f) - statistics.median(s)) / (count - count // 4)
            for f, s in zip(zip(*full), zip(*short))
        ]
        wall, consumer, workers = per_item[0], per_item[1:6], per_item[6:]
        results[case] = {
            "wall_us": wall * 1e6,
            "consumer": {k: v * 1e6 if k.endswith("_s") else v for k, v in zip(COUNTERS, consumer)},
            "worker": {k: v * 1e6 if k.endswith("_s") else v for k, v in zip(COUNTERS, workers)},
        }
        for side in ("consumer", "worker"):
            entry = results[case][side]
            entry["cpu_us"] = entry.pop("user_s") + entry.pop("system_s")
    return results


def print_breakdown(results: dict[str, Any]) -> None:
    print("F. Per item: wall time; each side's CPU time, page faults, sleeps and preemptions (getrusage)")
    print(
        f"  {'case':<28} {'wall us':>8} | {'consumer cpu us':>15} {'faults':>6} {'sleeps':>6} {'preempt':>7}"
        f" | {'worker cpu us':>13} {'faults':>6} {'sleeps':>6} {'preempt':>7}"
    )
    for case, r in results.items():
        c, w = r["consumer"], r["worker"]
        print(
            f"  {case:<28} {r['wall_us']:8.2f} | {c['cpu_us']:15.2f} {c['page_faults']:6.2f} "
            f"{c['sleeps']:6.2f} {c['preempted']:7.2f} | {w['cpu_us']:13.2f} {w['page_faults']:6.2f} "
            f"{w['sleeps']:6.2f} {w['preempted']:7.2f}"
        )


# ---------------------------------------------------------------- G. the goals, min/median/max


def batch_items(map_fn: Callable[[int], Any], **options: Any) -> Callable[[int], Iterator[Any]]:
    """``from_iterable(range) | map(map_fn) | batch(64)``, with ``background(**options)`` if any given."""

    def open_items(count: int) -> Iterator[Any]:
        # Spare samples: with several workers, each drops its own last partial batch.
        stream = pf.from_iterable(range((count + 3) * BATCH)) | pf.map(map_fn) | pf.batch(BATCH)
        if options:
            stream = stream | pf.background(**options)
        return iter(stream)

    return open_items


def goal_cases() -> dict[str, tuple[int, dict[str, Measure], list[tuple[str, str, float]]]]:
    """Each case: bytes per item, its contenders, and its goals as (ours, reference, ratio)."""
    cases: dict[str, tuple[int, dict[str, Measure], list[tuple[str, str, float]]]] = {}
    only = os.environ.get("BENCH_GOALS_ONLY")
    n = MIB // FLOAT
    cases["transport 1 MiB"] = (
        MIB,
        {"memcpy": memcpy_measure(MIB), "background": iterator_measure(background_items(same_items, n))},
        [("background", "memcpy", 0.8)],
    )
    for nbytes, zmq_goal, inline_goal in ((MIB, 6.0, 0.45), (KIB, 5.0, 0.5)):
        n = nbytes // FLOAT
        runs = {
            "inline": iterator_measure(inline_items(n)),
            "background": iterator_measure(background_items(fresh_items, n)),
        }
        goals = [("background", "inline", inline_goal)]
        zmq = zmq_items(n)
        if zmq is not None:
            runs["zmq"] = iterator_measure(zmq)
            goals.append(("background", "zmq", zmq_goal))
        cases[f"fresh {size_name(nbytes)}"] = (nbytes, runs, goals)
    cases["map|batch(64), cheap map"] = (
        BATCH * 16 * KIB,
        {
            "inline": iterator_measure(batch_items(sample_16k)),
            "background": iterator_measure(batch_items(sample_16k, workers=1)),
        },
        [("background", "inline", 0.95)],
    )
    work = functools.partial(burned_sample_16k, loops=calibrate_loops(50e-6))
    cases["map|batch(64), CPU-bound map"] = (
        BATCH * 16 * KIB,
        {
            "inline": iterator_measure(batch_items(work)),
            "workers_1": iterator_measure(batch_items(work, workers=1)),
            "workers_2": iterator_measure(batch_items(work, workers=2)),
        },
        [("workers_2", "inline", 1.7)],
    )
    return {k: v for k, v in cases.items() if not only or only in k}


def bench_goals(target_s: float, repeats: int) -> dict[str, Any]:
    """Every contender of every case, ``repeats`` rounds in turn: items/s as min/median/max."""
    results: dict[str, Any] = {}
    for case, (nbytes, runs, goals) in goal_cases().items():
        counts = {name: pick_items(run, nbytes, target_s) for name, run in runs.items()}
        rates = round_rates(runs, counts, repeats)
        entry: dict[str, Any] = {
            "bytes_per_item": nbytes,
            "items_per_s": {k: spread(v) for k, v in rates.items()},
        }
        entry["goals"] = [
            {
                "ours": ours,
                "reference": ref,
                "target": target,
                "ratio": entry["items_per_s"][ours]["median"] / entry["items_per_s"][ref]["median"],
            }
            for ours, ref, target in goals
        ]
        results[case] = entry
        print_goal_case(case, entry)
    ours = [
        e["items_per_s"]["background"]["spread"] for e in results.values() if "background" in e["items_per_s"]
    ]
    if ours:
        print(
            f"  spread (max/min) of pf.background's rounds: worst {max(ours):.2f} "
            f"(target <= 1.5 on a quiet machine): {'MET' if max(ours) <= 1.5 else 'NOT MET'}"
        )
    return results


@functools.lru_cache(maxsize=4)
def _rows(per_sample: int) -> np.ndarray:
    """256 rows of ``per_sample`` bytes: the data set of the consumer-CPU pipeline (made in each worker)."""
    return np.random.default_rng(0).integers(0, 200, (256, per_sample), dtype=np.uint8)


def row_plus_one(per_sample: int, i: int) -> np.ndarray:
    return _rows(per_sample)[i % 256] + 1


CONSUMER_BATCHES = {"128 KiB": 128 * KIB, "1 MiB": MIB, "9 MiB": 224 * 224 * 3 * BATCH}


def consumer_cpu_once(nbytes: int, batches: int, **options: Any) -> tuple[float, float]:
    """(batches/s, the consumer thread's CPU seconds per batch) over ``batches`` after 5 unmeasured."""
    per_sample = nbytes // BATCH
    stream = (
        pf.from_iterable(range((batches + 8) * BATCH * 2))
        | pf.shuffle(1024)
        | pf.map(functools.partial(row_plus_one, per_sample))
        | pf.batch(BATCH)
        | pf.background(workers=2, **options)
    )
    items = iter(stream)
    try:
        for _ in range(5):
            next(items)
        start, cpu = time.perf_counter(), time.thread_time()
        for _ in range(batches):
            batch = next(items)
            del batch
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - start
    finally:
        items.close()
    return batches / wall, cpu / batches


def bench_consumer_cpu(repeats: int) -> dict[str, Any]:
    """The training thread's CPU per batch, owned (default) and copy=True, rounds interleaved."""
    results: dict[str, Any] = {}
    print(
        "  consumer CPU per batch: from_iterable | shuffle(1024) | map(row + 1) | batch(64) "
        "| background(workers=2)"
    )
    for name, nbytes in CONSUMER_BATCHES.items():
        batches = max(20, min(2000, 256 * MIB // nbytes))
        runs: dict[str, list[tuple[float, float]]] = {"owned": [], "copy=True": []}
        for _ in range(repeats):
            runs["owned"].append(consumer_cpu_once(nbytes, batches))
            runs["copy=True"].append(consumer_cpu_once(nbytes, batches, copy=True))
        entry = {}
        for label, got in runs.items():
            cpu = spread([c * 1e6 for _, c in got])
            rate = spread([r for r, _ in got])
            entry[label] = {"consumer_us_per_batch": cpu, "batches_per_s": rate}
            print(
                f"    {name:>7} {label:<9} consumer CPU us/batch min {cpu['min']:8.1f} "
                f"median {cpu['median']:8.1f} max {cpu['max']:8.1f}   "
                f"batches/s median {rate['median']:8.0f} (max/min {rate['spread']:.2f})"
            )
        median = entry["owned"]["consumer_us_per_batch"]["median"]
        print(
            f"    {name:>7} owned: {median:.1f} us per batch (target <= 20 us): "
            f"{'MET' if median <= 20 else 'NOT MET'}"
        )
        results[name] = entry
    return results


def print_goal_case(case: str, entry: dict[str, Any]) -> None:
    nbytes = entry["bytes_per_item"]
    print(f"  {case} ({size_name(nbytes)} per item)")
    for name, s in entry["items_per_s"].items():
        mib = nbytes / MIB
        print(
            f"    {name:<12} items/s min {s['min']:10.0f}  median {s['median']:10.0f}  max {s['max']:10.0f}"
            f"  (median {s['median'] * mib:7.0f} MiB/s, max/min {s['spread']:.2f})"
        )
    for goal in entry["goals"]:
        ratio, target = goal["ratio"], goal["target"]
        print(
            f"    {goal['ours']} / {goal['reference']} = {ratio:.2f}x (medians; target >= {target:g}x): "
            f"{verdict(ratio, target)}"
        )


# ---------------------------------------------------------------- main


# ---------------------------------------------------------------- H. what stats cost


def identity(x: Any) -> Any:
    return x


def bench_stats_overhead(target_s: float, repeats: int) -> dict[str, Any]:
    """Items/s at 64 KiB with the per-stage counting on and off, rounds in turn."""
    from pescador_fp import _stats

    def switched(measure: Measure, on: bool) -> Measure:
        def run(n: int) -> float:
            _stats.ENABLED = on
            try:
                return measure(n)
            finally:
                _stats.ENABLED = True

        return run

    n_floats = 64 * KIB // FLOAT

    def mapped(count: int) -> Iterator[Any]:
        return iter(pf.stream(fresh_items, n_floats, count) | pf.background() | pf.map(identity))

    cases = {
        "one array again (A)": background_items(same_items, n_floats),
        "fresh arrays (B)": background_items(fresh_items, n_floats),
        "fresh arrays | background | map": mapped,
    }
    results = {}
    for case, open_items in cases.items():
        measure = iterator_measure(open_items)
        count = pick_items(measure, 64 * KIB, target_s)
        # Wall time, and the consumer's CPU time (steadier on a busy machine: the counting is its work).
        runs = {"on": switched(measure, True), "off": switched(measure, False)}
        cpu = consumer_cpu_measure(open_items)
        runs |= {"on, CPU": switched(cpu, True), "off, CPU": switched(cpu, False)}
        rates = round_rates(runs, dict.fromkeys(runs, count), repeats)
        medians = {name: statistics.median(r) for name, r in rates.items()}
        results[case] = {
            "on": spread(rates["on"]),
            "off": spread(rates["off"]),
            "overhead": 1 - medians["on"] / medians["off"],
            "overhead_best": 1 - max(rates["on"]) / max(rates["off"]),
            "cpu_overhead": medians["off, CPU"] / medians["on, CPU"] - 1,
        }
    return results


def consumer_cpu_measure(open_items: Callable[[int], Iterator[Any]]) -> Measure:
    """Like :func:`iterator_measure`, but the consumer thread's CPU time for the ``n`` items."""

    def measure(n: int) -> float:
        items = open_items(n + 1)
        try:
            next(items)
            start = time.thread_time()
            for _ in range(n):
                next(items)
            return time.thread_time() - start
        finally:
            for _ in items:
                pass
            close = getattr(items, "close", None)
            if close is not None:
                close()

    return measure


def print_stats_overhead(results: dict[str, Any], repeats: int) -> None:
    print(f"H. it.stats() overhead at 64 KiB: items/s, median of {repeats} rounds (on / off, in turn)")
    for case, r in results.items():
        print(
            f"  {case:<34} on {r['on']['median']:9.0f}   off {r['off']['median']:9.0f}   "
            f"overhead {100 * r['overhead']:5.1f} %   {verdict(-r['overhead'], -0.03)} (<= 3 %); "
            f"best rounds {100 * r['overhead_best']:5.1f} %; "
            f"consumer CPU time {100 * r['cpu_overhead']:+5.1f} %"
        )


def leftovers() -> dict[str, Any]:
    """Shared memory and processes this run left behind (rings are named after the consumer's pid)."""
    ours = f"{NAME_PREFIX}{os.getpid()}_"
    names = sorted(os.listdir(SHM_DIR))
    return {
        "shm_ours": [n for n in names if n.startswith(ours)],
        "shm_others": [n for n in names if n.startswith(NAME_PREFIX) and not n.startswith(ours)],
        "children": [p.name for p in multiprocessing.active_children()],
    }


# ---------------------------------------------------------------- I. the block threshold


def threshold_once(nbytes: int, blocks: bool, count: int) -> tuple[float, float]:
    """(items/s, consumer CPU us per item) for a reused array of ``nbytes``: blocks, or the ring."""
    from pescador_fp._ipc import codec, pool

    pool.BLOCK_MIN = codec.BLOCK_MIN = 4096 if blocks else 2**62  # read by the worker: fork inherits it
    try:
        items = background_items(same_items, nbytes // FLOAT, start_method="fork")(count + 50)
        for _ in range(50):
            next(items)
        start, cpu = time.perf_counter(), time.thread_time()
        for _ in range(count):
            next(items)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
        items.close()
    finally:
        pool.BLOCK_MIN = codec.BLOCK_MIN = 64 * KIB
    return count / wall, cpu / count * 1e6


def bench_threshold(repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for nbytes in (4 * KIB, 16 * KIB, 32 * KIB, 64 * KIB, 128 * KIB, 256 * KIB):
        count = max(1000, min(8000, 128 * MIB // nbytes))
        runs: dict[str, list[tuple[float, float]]] = {"ring": [], "block": []}
        for _ in range(repeats):
            for name in runs:
                runs[name].append(threshold_once(nbytes, name == "block", count))
        entry = {
            name: {"items_per_s": spread([r for r, _ in got]), "consumer_us": spread([c for _, c in got])}
            for name, got in runs.items()
        }
        results[size_name(nbytes)] = entry
        print(
            f"  {size_name(nbytes):>7}  "
            + "  |  ".join(
                f"{name}: items/s median {e['items_per_s']['median']:8.0f}, "
                f"consumer us/item median {e['consumer_us']['median']:6.1f} "
                f"[{e['consumer_us']['min']:.1f}-{e['consumer_us']['max']:.1f}]"
                for name, e in entry.items()
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter measurements, fewer rounds")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--transports", action="store_true", help="only E: each transport's throughput and first-item time"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="only F: per item, each side's CPU time, page faults and context switches",
    )
    parser.add_argument(
        "--goals",
        action="store_true",
        help="only G: the issue's goals, items/s as min/median/max over --repeats rounds",
    )
    parser.add_argument(
        "--stats-overhead", action="store_true", help="only H: what it.stats() costs at 64 KiB"
    )
    parser.add_argument(
        "--threshold", action="store_true", help="only I: ring copies against pool blocks, 4 to 256 KiB"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="rounds for --goals and --stats-overhead (default 7)"
    )
    args = parser.parse_args()
    if args.threshold:
        print(f"I. Ring or blocks, {args.repeats} rounds; load average {os.getloadavg()[0]:.2f}")
        write_json(args.json, bench_threshold(args.repeats))
        print(f"load average now {os.getloadavg()[0]:.2f}")
        return
    if args.stats_overhead:
        print(f"load average {os.getloadavg()[0]:.2f}, CPUs {os.cpu_count()}")
        overhead = bench_stats_overhead(0.3, args.repeats)
        print_stats_overhead(overhead, args.repeats)
        write_json(args.json, overhead)
        return
    if args.breakdown:
        print(
            f"load average {os.getloadavg()[0]:.2f}, CPUs {os.cpu_count()}, "
            f"start method {default_start_method()}"
        )
        breakdown = bench_breakdown(args.repeats)
        print_breakdown(breakdown)
        print(f"load average now {os.getloadavg()[0]:.2f}")
        write_json(args.json, breakdown)
        return
    if args.goals:
        print(
            f"G. Goals: {args.repeats} rounds, contenders in turn, ~0.3 s per measurement; "
            f"load average {os.getloadavg()[0]:.2f}, CPUs {os.cpu_count()}"
        )
        goals = bench_goals(0.3, args.repeats)
        if not os.environ.get("BENCH_GOALS_ONLY") or "consumer" in os.environ["BENCH_GOALS_ONLY"]:
            goals["consumer CPU per batch"] = bench_consumer_cpu(args.repeats)
        print(f"load average now {os.getloadavg()[0]:.2f}")
        write_json(args.json, goals)
        return
    if args.transports:
        print("E. Shared-memory transports and start methods (medians of 7 runs)")
        transports = bench_transports_and_starts(7)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(transports, out, indent=2)
        return
    target_s = 0.15 if args.quick else 0.5
    repeats = 1 if args.quick else 3
    tries = 3 if args.quick else 7

    started = time.perf_counter()
    print(
        f"default start method: {default_start_method()} "
        f"(threads: {threading.active_count()}, CPUs: {os.cpu_count()}); "
        f"best of {repeats} round(s), ~{target_s} s per measurement; "
        f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews the numbers)"
    )
    transport = bench_transport(target_s, repeats)
    print_transport(transport)
    peers, skipped = bench_peers(target_s, repeats)
    print_peers(peers, skipped)
    first = bench_first_item(tries)
    print_first_item(first, tries)
    # More rounds here: the best round is the one least disturbed by other work on the machine.
    scaling = bench_scaling(2.5 * target_s, repeats + 2)
    print_scaling(scaling)

    left = leftovers()
    if left["shm_ours"] or left["children"]:
        print(f"LEFT BEHIND: shared memory {left['shm_ours']}, processes {left['children']}")
    else:
        print(f"clean: no {NAME_PREFIX}{os.getpid()}_* left in {SHM_DIR}, no worker process alive")
    if left["shm_others"]:
        print(f"  (other processes' rings in {SHM_DIR}: {left['shm_others']})")
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s, load average now {os.getloadavg()[0]:.2f}")

    if args.json:
        results = {
            "transport": transport,
            "peers": peers,
            "skipped": skipped,
            "first_item": first,
            "scaling": scaling,
            "leftovers": left,
            "seconds": elapsed,
            "load_average_end": os.getloadavg(),
        }
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
