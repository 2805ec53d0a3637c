"""The multiplexers against Pescador 3.0's, side by side in one process.

Run:  python benchmarks/bench_mux.py            (pip install -e ".[bench]" first)

100 infinite sources (``def src(i): while True: yield i``), wrapped as
``pf.stream(src, i)`` and ``pescador.Streamer(src, i)``; ``n_active=10`` and
``rate=16`` for the stochastic muxes. Contenders run in turn, several rounds,
and the best time of each is kept. Pescador takes ~10 us per sample, so it
streams fewer samples than we do; the comparison is per sample.

Reports microseconds per sample, the overhead of each multiplexer on top of
pulling from the source generators, and the ratios the mux issue asks for:
  - pf.mux adds at most ~0.5 us/sample and is at least 30x StochasticMux;
  - pf.shuffled_mux is at least 20x ShuffledMux;
  - pf.round_robin is at least as fast as RoundRobinMux.

``--stats-overhead``: the same multiplexers with ``it.stats()``'s counting
(``pescador_fp._stats.ENABLED``) on and off, in turn, each alone and under a
``pf.map``. Target: <= 3 %. Then what counting a stage costs per item, in
process (best of many short runs, steady even on a busy machine): a cheap
stage (one item in ~32 timed) and a slow one (every item timed).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from _timing import best_times, consume, write_json

import pescador_fp as pf

REPEATS = 5
N_SOURCES = 100
N_ACTIVE = 10
RATE = 16

# (pescador_fp name, Pescador class, target speedup of ours over Pescador)
MUXES = [
    ("mux", "StochasticMux", 30.0),
    ("shuffled_mux", "ShuffledMux", 20.0),
    ("round_robin", "RoundRobinMux", 1.0),
]
OVERHEAD_TARGET_US = {"mux": 0.5}


def src(i: int) -> Iterator[int]:
    while True:
        yield i


def ours(n_sources: int) -> dict[str, pf.Stream[int]]:
    sources = [pf.stream(src, i) for i in range(n_sources)]
    return {
        "mux": pf.mux(sources, n_active=N_ACTIVE, rate=RATE, seed=0),
        "shuffled_mux": pf.shuffled_mux(sources, seed=0),
        "round_robin": pf.round_robin(sources),
    }


def theirs(n_sources: int) -> dict[str, Any]:
    import pescador

    streamers = [pescador.Streamer(src, i) for i in range(n_sources)]
    return {
        "mux": pescador.StochasticMux(streamers, n_active=N_ACTIVE, rate=RATE, random_state=0),
        "shuffled_mux": pescador.ShuffledMux(streamers, random_state=0),
        "round_robin": pescador.RoundRobinMux(streamers),
    }


def bench(samples: int, pescador_samples: int, n_sources: int, repeats: int) -> dict[str, Any]:
    mine = ours(n_sources)
    runs: dict[str, Callable[[], None]] = {
        # The sources alone: the cost of resuming a source generator once per sample.
        "sources": lambda: consume(itertools.islice(src(0), samples)),
    }
    for name, stream in mine.items():
        first = list(itertools.islice(stream.iterate(), 1000))
        assert set(first) <= set(range(n_sources)) and len(set(first)) > 1, (name, first[:20])
        runs[f"pf.{name}"] = lambda stream=stream: consume(itertools.islice(stream.iterate(), samples))
    try:
        other = theirs(n_sources)
    except ImportError:
        other = None
    else:
        for name, mux in other.items():
            first = list(mux.iterate(max_iter=1000))
            assert len(first) == 1000 and set(first) <= set(range(n_sources)), (name, first[:20])
            runs[f"pescador.{name}"] = lambda mux=mux: consume(mux.iterate(max_iter=pescador_samples))

    times = best_times(runs, repeats)
    per_sample = {
        name: t / (pescador_samples if name.startswith("pescador.") else samples) * 1e6
        for name, t in times.items()
    }
    result: dict[str, Any] = {
        "sources": n_sources,
        "n_active": N_ACTIVE,
        "rate": RATE,
        "samples": samples,
        "pescador_samples": pescador_samples if other is not None else 0,
        "repeats": repeats,
        "sources_us_per_sample": per_sample["sources"],
    }
    for name, pescador_name, target in MUXES:
        entry: dict[str, Any] = {
            "pf_us_per_sample": per_sample[f"pf.{name}"],
            "pf_overhead_us_per_sample": per_sample[f"pf.{name}"] - per_sample["sources"],
            "pescador_class": pescador_name,
            "target_speedup": target,
        }
        if name in OVERHEAD_TARGET_US:
            entry["target_overhead_us_per_sample"] = OVERHEAD_TARGET_US[name]
        if other is not None:
            theirs_us = per_sample[f"pescador.{name}"]
            entry["pescador_us_per_sample"] = theirs_us
            entry["pescador_overhead_us_per_sample"] = theirs_us - per_sample["sources"]
            entry["speedup_pf_over_pescador"] = theirs_us / per_sample[f"pf.{name}"]
        result[name] = entry
    return result


def stats_overhead(samples: int, n_sources: int, repeats: int) -> dict[str, Any]:
    """Microseconds per sample with the stats counting on and off, rounds in turn."""
    from pescador_fp import _stats

    def switched(stream: pf.Stream[int], on: bool) -> Callable[[], None]:
        def run() -> None:
            _stats.ENABLED = on
            try:
                consume(itertools.islice(stream.iterate(), samples))
            finally:
                _stats.ENABLED = True

        return run

    streams = ours(n_sources)
    streams.update({f"{name} | map": stream | pf.map(abs) for name, stream in list(streams.items())})
    runs = {}
    for name, stream in streams.items():
        runs[f"{name} on"] = switched(stream, True)
        runs[f"{name} off"] = switched(stream, False)
    # Wall time, and this thread's CPU time: on a busy machine the CPU time is the steadier of the two.
    times = best_times(runs, repeats)
    cpu = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.thread_time()
            run()
            cpu[name] = min(cpu[name], time.thread_time() - start)
    return {
        name: {
            "on_us_per_sample": times[f"{name} on"] / samples * 1e6,
            "off_us_per_sample": times[f"{name} off"] / samples * 1e6,
            "overhead": times[f"{name} on"] / times[f"{name} off"] - 1,
            "cpu_overhead": cpu[f"{name} on"] / cpu[f"{name} off"] - 1,
        }
        for name in streams
    }


def counting_cost(samples: int, repeats: int) -> dict[str, float]:
    """Microseconds per item that counting adds to a stage: sampled (cheap items) and every item timed."""
    from pescador_fp import _stats

    def items() -> Iterator[int]:
        return iter(range(samples))

    def counted(exact: bool) -> Callable[[], None]:
        def run() -> None:
            above = _stats._EXACT_ABOVE_S
            _stats._EXACT_ABOVE_S = -1.0 if exact else above
            try:
                consume(_stats.counted(items(), _stats.StageCounts()))
            finally:
                _stats._EXACT_ABOVE_S = above

        return run

    def plain() -> None:
        consume(items())

    times = best_times({"plain": plain, "sampled": counted(False), "exact": counted(True)}, repeats)
    return {
        "sampled_us_per_item": (times["sampled"] - times["plain"]) / samples * 1e6,
        "exact_us_per_item": (times["exact"] - times["plain"]) / samples * 1e6,
    }


def _stats_threshold_us() -> float:
    from pescador_fp import _stats

    return _stats._EXACT_ABOVE_S * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=300_000, help="samples per run for pescador_fp")
    parser.add_argument(
        "--pescador-samples", type=int, default=20_000, help="samples per run for Pescador (it is slow)"
    )
    parser.add_argument("--sources", type=int, default=N_SOURCES)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--stats-overhead", action="store_true", help="only what it.stats() costs")
    args = parser.parse_args()
    if args.stats_overhead:
        overhead = stats_overhead(args.samples, args.sources, args.repeats)
        print(f"it.stats() overhead: best of {args.repeats}, {args.samples:,} samples per run")
        for name, e in overhead.items():
            print(
                f"  pf.{name:<20} on {e['on_us_per_sample']:7.3f}  "
                f"off {e['off_us_per_sample']:7.3f} us/sample   overhead {100 * e['overhead']:5.1f} %"
                f" (CPU time: {100 * e['cpu_overhead']:5.1f} %)"
            )
        cost = counting_cost(100_000, 3 * args.repeats)
        print(
            f"  counting one stage, per item: {cost['sampled_us_per_item']:.3f} us for cheap items "
            f"(sampled), {cost['exact_us_per_item']:.3f} us timing every item (items over "
            f"{_stats_threshold_us():.0f} us)"
        )
        write_json(args.json, {**overhead, "counting": cost})
        return

    r = bench(args.samples, args.pescador_samples, args.sources, args.repeats)
    print(
        f"{r['sources']} infinite sources, n_active={r['n_active']}, rate={r['rate']}; "
        f"best of {r['repeats']}; {r['samples']:,} samples per run for pescador_fp"
        + (f", {r['pescador_samples']:,} for Pescador" if r["pescador_samples"] else "")
    )
    print(f"  sources alone (one generator)       {r['sources_us_per_sample']:8.3f} us/sample")
    for name, pescador_name, target in MUXES:
        e = r[name]
        overhead_target = e.get("target_overhead_us_per_sample")
        print(
            f"  pf.{name:<14}                   {e['pf_us_per_sample']:8.3f} us/sample   "
            f"overhead {e['pf_overhead_us_per_sample']:.3f} us/sample"
            + (f" (target <= {overhead_target})" if overhead_target is not None else "")
        )
        if "pescador_us_per_sample" in e:
            print(
                f"  pescador.{pescador_name:<14}             {e['pescador_us_per_sample']:8.3f} us/sample   "
                f"pescador_fp is {e['speedup_pf_over_pescador']:.1f}x as fast (target >= {target:g})"
            )
    if not r["pescador_samples"]:
        print("  pescador not installed: pip install -e '.[bench]'")
    write_json(args.json, r)


if __name__ == "__main__":
    main()
