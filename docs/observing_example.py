"""The worked example of docs/observing.md: read it.stats(), find the bottleneck, fix it.

Run:  python docs/observing_example.py

Three pipelines, each run twice: as first written, then with the fix its
stats point to.

1. A cheap step (``scale``) over small arrays, one item per record through
   ``background``: batching before ``background`` fixes it.
2. A step that waits (``fetch``, 1 ms, as reading from a network disk would):
   more workers fix it.
3. A source that stalls now and then (``shards``: 30 ms to open each shard of
   100 items) before a slower consumer, through a small ring: a bigger ring
   fixes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

import pescador_fp as pf


def scale(i: int) -> np.ndarray:
    return np.full(256, i, np.float32) / 255.0


def fetch(i: int) -> np.ndarray:
    time.sleep(0.001)
    return np.full(256, i, np.float32)


def shards(count: int) -> Iterator[np.ndarray]:
    for i in range(count):
        if i % 100 == 0:
            time.sleep(0.03)  # opening the next shard
        yield np.full(4096, i, np.float32)  # 16 KiB


def run(title: str, stream: pf.Stream[np.ndarray], step_s: float = 0.0) -> None:
    it = stream.iterate(seed=0)
    start = time.perf_counter()
    for batch in it:
        float(batch.sum())  # the training step
        if step_s:
            time.sleep(step_s)
    print(f"--- {title}: {time.perf_counter() - start:.2f} s")
    print(it.stats())
    print()


def main() -> None:
    items = pf.from_iterable(range(50_000)) | pf.map(scale)
    run("1a. a cheap map, one item per record", items | pf.background(workers=2) | pf.batch(64))
    run("1b. the same, batched before background", items | pf.batch(64) | pf.background(workers=2))

    items = pf.from_iterable(range(2_000))
    run("2a. a step that waits, one worker", items | pf.map(fetch) | pf.batch(16) | pf.background(workers=1))
    run("2b. the same, four workers", items | pf.map(fetch) | pf.batch(16) | pf.background(workers=4))

    source = pf.stream(shards, 2_000)
    small, large = 2**16, 2**24
    run("3a. a stalling source, a 64 KiB ring", source | pf.background(ring_bytes=small), step_s=0.0005)
    run("3b. the same, a 16 MiB ring", source | pf.background(ring_bytes=large), step_s=0.0005)


if __name__ == "__main__":
    main()
