"""``background(workers=2) | pescador_fp.torch.tensors()`` against ``DataLoader(num_workers=2)``.

Run:  python benchmarks/bench_torch.py [--repeats 5] [--json out.json]   (pip install -e ".[bench]")

Both sides run the same per-item function (``make_item(i)``: a fresh float32
array of the given size, with a little arithmetic so that the work is real)
over the same indices, in two worker processes, in one run, taking turns:

A. Items: ``pf.from_iterable(range(N)) | pf.map(make_item) | pf.background(workers=2) | tensors()``
   against ``DataLoader(MapItems(N), batch_size=None, num_workers=2)``, at 64 KiB
   and 1 MiB per item. Items per second after the first item (goal: >= 3x at 64 KiB).
B. Batches: the same with ``| pf.batch(64)`` before ``background`` against
   ``DataLoader(MapItems(N), batch_size=64, num_workers=2)`` (its collate stacks
   the batch in the workers), at 16 KiB and 64 KiB per item.
C. Time to the first item / batch of a fresh iterator (workers started anew).

Each figure is the median of ``--repeats`` measurements, with min and max.
BLAS/OpenMP thread pools are pinned to one thread before numpy is imported.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import write_json  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import pescador_fp as pf  # noqa: E402
import pescador_fp.torch as pft  # noqa: E402

KIB = 1024
WORKERS = 2
BATCH = 64
# Bytes one measurement streams, and the fewest items it takes.
BYTES_PER_RUN = 512 * 1024 * KIB
MIN_ITEMS = 200


class MakeItem:
    """A fresh float32 array of ``n_floats`` per index: the per-item function both sides run."""

    def __init__(self, n_floats: int) -> None:
        self.n_floats = n_floats

    def __call__(self, i: int) -> np.ndarray:
        x = np.full(self.n_floats, i % 251, np.float32)
        x *= 0.5
        return x


class MapItems(Dataset[np.ndarray]):
    """The map-style dataset the DataLoader reads: item ``i`` is ``make_item(i)``."""

    def __init__(self, make_item: MakeItem, n: int) -> None:
        self.make_item = make_item
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return self.make_item(i)


def ours(make_item: MakeItem, n: int, batch: int | None) -> Iterator[Any]:
    stream = pf.from_iterable(range(n)) | pf.map(make_item)
    if batch:
        stream = stream | pf.batch(batch)
    return iter(stream | pf.background(workers=WORKERS) | pft.tensors())


def theirs(make_item: MakeItem, n: int, batch: int | None) -> Iterator[Any]:
    # batch_size=None: items one by one (converted to tensors); an int: collated batches
    return iter(DataLoader(MapItems(make_item, n), batch_size=batch, num_workers=WORKERS))


def measure(open_items: Callable[[], Iterator[Any]]) -> tuple[float, float, int]:
    """Seconds to the first item, seconds for the rest, and how many the rest were."""
    start = time.perf_counter()
    items = open_items()
    first = next(items)
    assert isinstance(first, torch.Tensor)
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(1 for _ in items)
    return t_first, time.perf_counter() - start, count


def run_case(name: str, n_floats: int, batch: int | None, repeats: int) -> dict[str, Any]:
    make_item = MakeItem(n_floats)
    n = max(MIN_ITEMS * (batch or 1), BYTES_PER_RUN // (4 * n_floats))
    if batch:
        n -= n % batch
    contenders = {"pescador_fp": ours, "DataLoader": theirs}
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    firsts: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for key, open_items in contenders.items():
            t_first, t_rest, count = measure(lambda o=open_items: o(make_item, n, batch))
            rates[key].append(count * (batch or 1) / t_rest)
            firsts[key].append(t_first)
    result: dict[str, Any] = {"case": name, "items": n}
    for key in contenders:
        result[key] = {
            "items_per_s": statistics.median(rates[key]),
            "items_per_s_min": min(rates[key]),
            "items_per_s_max": max(rates[key]),
            "first_s": statistics.median(firsts[key]),
        }
    result["ratio"] = result["pescador_fp"]["items_per_s"] / result["DataLoader"]["items_per_s"]
    result["first_ratio"] = result["DataLoader"]["first_s"] / result["pescador_fp"]["first_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    cases = [
        ("items 64 KiB", 16 * KIB, None),
        ("items 1 MiB", 256 * KIB, None),
        ("batch(64) of 16 KiB", 4 * KIB, BATCH),
        ("batch(64) of 64 KiB", 16 * KIB, BATCH),
    ]
    print(f"torch {torch.__version__}, {WORKERS} workers each, median of {args.repeats} (min-max)")
    header = f"{'case':<22}{'pescador_fp items/s':>26}{'DataLoader items/s':>26}{'ratio':>8}"
    print(header + f"{'first item: ours':>19}{'theirs':>9}")
    results = []
    for name, n_floats, batch in cases:
        r = run_case(name, n_floats, batch, args.repeats)
        results.append(r)
        ours_, theirs_ = r["pescador_fp"], r["DataLoader"]
        print(
            f"{name:<22}"
            f"{ours_['items_per_s']:>10.0f} ({ours_['items_per_s_min']:.0f}-{ours_['items_per_s_max']:.0f})"
            f"{theirs_['items_per_s']:>10.0f} "
            f"({theirs_['items_per_s_min']:.0f}-{theirs_['items_per_s_max']:.0f})"
            f"{r['ratio']:>7.2f}x"
            f"{ours_['first_s'] * 1e3:>14.1f} ms{theirs_['first_s'] * 1e3:>6.0f} ms",
            flush=True,
        )
    write_json(args.json, results)


if __name__ == "__main__":
    main()
