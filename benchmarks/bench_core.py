"""Per-item operators against a hand-written generator and Pescador 3.0, side by side.

Run:  python benchmarks/bench_core.py            (pip install -e ".[bench]" first)

Reports the best of several repeats per contender and the ratios the core
issue asks for:
  - a map/filter chain costs at most 2x a hand-written generator doing the same work;
  - batch(64) over dict samples is at least as fast as Pescador's buffer_stream;
  - map(fn, rng=True) (a seeded generator per item) costs at most 2 us per item over a plain map.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import numpy as np
from _timing import best_times, consume, write_json

import pescador_fp as pf

REPEATS = 7


def f(x: int) -> int:
    return x * 3 + 1


def p(x: int) -> bool:
    return x % 4 != 0


def g(x: int) -> int:
    return x - 1


def bench_map_filter(n: int) -> dict[str, float]:
    data = list(range(n))

    def hand_written(xs: list[int]) -> Iterable[int]:
        for x in xs:
            y = f(x)
            if p(y):
                yield g(y)

    chain = pf.from_iterable(data) | pf.map(f) | pf.filter(p) | pf.map(g)
    assert list(chain) == list(hand_written(data))
    times = best_times({"hand": lambda: consume(hand_written(data)), "pf": lambda: consume(chain)}, REPEATS)
    hand, ours = times["hand"], times["pf"]
    return {"items": n, "hand_ns": hand / n * 1e9, "pf_ns": ours / n * 1e9, "ratio_pf_over_hand": ours / hand}


def bench_rng_map(n: int) -> dict[str, float]:
    data = list(range(n))
    plain = pf.from_iterable(data) | pf.map(f)
    seeded = pf.from_iterable(data) | pf.map(lambda x, rng: f(x), rng=True)
    assert list(plain) == list(seeded.iterate(seed=0))
    times = best_times(
        {"plain": lambda: consume(plain), "rng": lambda: consume(seeded.iterate(seed=0))}, REPEATS
    )
    plain_ns, rng_ns = times["plain"] / n * 1e9, times["rng"] / n * 1e9
    return {"items": n, "plain_ns": plain_ns, "rng_ns": rng_ns, "overhead_ns": rng_ns - plain_ns}


def bench_batch(n: int, size: int = 64, dim: int = 64) -> dict[str, float]:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(size=dim).astype(np.float32), "y": int(i % 10)} for i in range(n)]
    ours_stream = pf.from_iterable(samples) | pf.batch(size)
    runs = {"pf": lambda: consume(ours_stream)}
    try:
        import pescador
    except ImportError:
        pescador = None
    else:
        first_ours = next(iter(ours_stream))
        first_theirs = next(pescador.buffer_stream(iter(samples), size))
        assert np.array_equal(first_ours["x"], first_theirs["x"])
        runs["pescador"] = lambda: consume(pescador.buffer_stream(iter(samples), size))
    times = best_times(runs, REPEATS)
    batches = n // size
    result: dict[str, float] = {"samples": n, "size": size, "pf_us_per_batch": times["pf"] / batches * 1e6}
    if pescador is not None:
        result["pescador_us_per_batch"] = times["pescador"] / batches * 1e6
        result["speedup_pf_over_pescador"] = times["pescador"] / times["pf"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=64 * 2000)
    parser.add_argument("--rng-items", type=int, default=200_000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    results = {
        "map_filter": bench_map_filter(args.items),
        "batch": bench_batch(args.samples),
        "rng_map": bench_rng_map(args.rng_items),
    }
    mf, b, r = results["map_filter"], results["batch"], results["rng_map"]
    print(f"map|filter|map over {mf['items']:,} ints:")
    print(f"  hand-written generator  {mf['hand_ns']:8.1f} ns/item")
    print(
        f"  pescador_fp             {mf['pf_ns']:8.1f} ns/item   "
        f"ratio {mf['ratio_pf_over_hand']:.2f}x (target <= 2)"
    )
    print(f"batch({b['size']}) over {b['samples']:,} dict samples:")
    print(f"  pescador_fp             {b['pf_us_per_batch']:8.1f} us/batch")
    if "pescador_us_per_batch" in b:
        print(
            f"  pescador buffer_stream  {b['pescador_us_per_batch']:8.1f} us/batch   "
            f"pescador_fp is {b['speedup_pf_over_pescador']:.2f}x as fast (target >= 1)"
        )
    else:
        print("  pescador not installed: pip install -e '.[bench]'")
    print(f"map(fn) vs map(fn, rng=True) over {r['items']:,} ints:")
    print(f"  plain map               {r['plain_ns']:8.1f} ns/item")
    print(
        f"  map(rng=True)           {r['rng_ns']:8.1f} ns/item   "
        f"overhead {r['overhead_ns'] / 1e3:.2f} us/item (target <= 2)"
    )
    write_json(args.json, results)


if __name__ == "__main__":
    main()
