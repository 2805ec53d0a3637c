"""Steps per second of a small jitted training step fed by ``pescador_fp.jax.device_put(prefetch=2)``,
against the same loop fed numpy batches directly (``step(params, batch)`` copies them to the device).

Run:  python benchmarks/bench_jax.py [--repeats 5] [--json out.json]   (pip install -e ".[jax]")

The step is one SGD update of a 1024x256 tanh layer on a (256, 1024) float32
batch (1 MiB). Two feeds, the same stream on both sides, in one run, taking turns:

- ``batches``: ``pf.from_arrays(x) | pf.batch(256)`` (stacking copies 1 MiB a batch);
- ``augmented``: the same with ``| pf.map(augment)`` (a few numpy passes over each batch).

Each figure is the median of ``--repeats`` passes (after a warm-up pass that compiles the step),
with min and max.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _timing import write_json

import pescador_fp as pf
import pescador_fp.jax as pfj

ROWS, FEATURES, HIDDEN, BATCH = 256 * 64, 1024, 256, 256


@jax.jit
def step(w: jax.Array, x: jax.Array) -> jax.Array:
    def loss(w: jax.Array) -> jax.Array:
        return jnp.mean(jnp.tanh(x @ w) ** 2)

    return w - 0.01 * jax.grad(loss)(w)


def augment(batch: np.ndarray) -> np.ndarray:
    out = batch * np.float32(1.1)
    out += np.float32(0.01)
    np.clip(out, -3, 3, out=out)
    return out


def run(w: jax.Array, batches: Iterable[Any]) -> tuple[int, float]:
    start = time.perf_counter()
    steps = 0
    for x in batches:
        w = step(w, x)
        steps += 1
    w.block_until_ready()
    return steps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=(ROWS, FEATURES)).astype(np.float32)
    w = jnp.zeros((FEATURES, HIDDEN), jnp.float32)
    feeds = {
        "batches": pf.from_arrays(x) | pf.batch(BATCH),
        "augmented": pf.from_arrays(x) | pf.batch(BATCH) | pf.map(augment),
    }
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, median of {args.repeats} (min-max), steps/s"
    )
    print(f"{'feed':<12}{'numpy directly':>24}{'device_put(prefetch=2)':>28}{'ratio':>8}")
    results = []
    for name, stream in feeds.items():
        contenders = {"direct": stream, "device_put": pfj.device_put(stream, prefetch=2)}
        rates: dict[str, list[float]] = {k: [] for k in contenders}
        for feed in contenders.values():
            run(w, feed)  # warm-up: compile
        for _ in range(args.repeats):
            for key, feed in contenders.items():
                steps, seconds = run(w, feed)
                rates[key].append(steps / seconds)
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratio = med["device_put"] / med["direct"]
        results.append(
            {"feed": name, **{k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in rates.items()}}
        )
        results[-1]["ratio"] = ratio
        print(
            f"{name:<12}"
            f"{med['direct']:>8.0f} ({min(rates['direct']):.0f}-{max(rates['direct']):.0f})"
            f"{med['device_put']:>16.0f} ({min(rates['device_put']):.0f}-{max(rates['device_put']):.0f})"
            f"{ratio:>12.2f}x",
            flush=True,
        )
    write_json(args.json, results)


if __name__ == "__main__":
    main()
