"""Resuming a pass mid-epoch: how big a state is, what ``state()`` costs, and how long a resumed pass
takes to give its first batch, against a fresh pass and against replaying the consumed batches.

Run:  python benchmarks/bench_resume.py [--sources 3000] [--rows 64] [--workers 2] [--repeats 5]

The pipeline is the one of issue 12::

    pf.mux(sources, n_active=32, mode="exhaustive", seed=0) | pf.shuffle(1024) | pf.batch(64)
        | pf.background(workers=2)

over ``--sources`` ``from_arrays`` sources, each ``--rows`` rows of 1 KiB (256 float32) cut from one
memory-mapped file (so workers map the file instead of receiving copies). One pass is every row
once: ``sources * rows / 64`` batches. The state is taken after half of them.

Printed (medians over ``--repeats``, with min and max):
- ``first batch, fresh``: ``iterate(seed)`` and the first ``next`` of a fresh pass;
- ``first batch, resumed``: ``iterate(seed, state=...)`` and its first ``next`` (goal: < 2x fresh);
- ``replay``: what resuming by replaying costs, a fresh pass dropping the consumed batches;
- ``state()``: the call's time (goal <= 1 ms) and the JSON size (goal <= 16 KiB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np

import pescador_fp as pf


def _summary(values: list[float]) -> str:
    low, mid, high = min(values) * 1e3, statistics.median(values) * 1e3, max(values) * 1e3
    return f"median {mid:8.1f} ms  (min {low:.1f}, max {high:.1f})"


def _first(stream: pf.Stream[Any], seed: int, state: dict[str, Any] | None = None) -> tuple[float, Any]:
    start = time.perf_counter()
    it = stream.iterate(seed=seed, state=state)
    first = next(it)
    seconds = time.perf_counter() - start
    it.close()
    return seconds, first


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="0: no background")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "rows.npy")
        rows = np.lib.format.open_memmap(path, "w+", np.float32, (args.sources * args.rows, 256))
        rows[:] = np.arange(len(rows), dtype=np.float32)[:, None]
        rows.flush()
        del rows
        data = np.load(path, mmap_mode="r")
        sources = [pf.from_arrays(data[i * args.rows : (i + 1) * args.rows]) for i in range(args.sources)]
        train = pf.mux(sources, n_active=32, mode="exhaustive", seed=0) | pf.shuffle(1024) | pf.batch(64)
        if args.workers:
            train = train | pf.background(workers=args.workers)
        batches = args.sources * args.rows // 64
        middle = batches // 2

        it = train.iterate(seed=1)
        consumed = list(itertools.islice(it, middle))
        timings = []
        for _ in range(200):
            start = time.perf_counter()
            state = it.state()
            timings.append(time.perf_counter() - start)
        expected = next(it)
        it.close()
        del consumed
        text = json.dumps(state)

        fresh, resumed, replay = [], [], []
        for _ in range(args.repeats):
            fresh.append(_first(train, 1)[0])
            seconds, first = _first(train, 1, json.loads(text))
            resumed.append(seconds)
            assert np.array_equal(first, expected), "the resumed pass gave another batch"
            start = time.perf_counter()
            it = train.iterate(seed=1)
            next(itertools.islice(it, middle, middle), None)
            next(it)
            replay.append(time.perf_counter() - start)
            it.close()

    print(f"{train!r}")
    print(f"{batches} batches of 64 x 1 KiB per pass; state taken after {middle}")
    print(f"state(): median {statistics.median(timings) * 1e6:.0f} us, {len(text)} bytes as JSON")
    print(f"first batch, fresh:   {_summary(fresh)}")
    print(f"first batch, resumed: {_summary(resumed)}")
    print(f"replay to the middle: {_summary(replay)}")
    ratio = statistics.median(resumed) / statistics.median(fresh)
    saved = statistics.median(replay) / statistics.median(resumed)
    print(f"resumed / fresh: {ratio:.2f}x (goal < 2x); replay / resumed: {saved:.0f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "state_bytes": len(text),
                    "state_seconds": statistics.median(timings),
                    "fresh": fresh,
                    "resumed": resumed,
                    "replay": replay,
                },
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
