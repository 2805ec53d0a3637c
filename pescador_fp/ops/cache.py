"""Stochastic caching: ``cache``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .._check import check_int, check_probability
from .._seed import Seed, SeedContext, check_seed
from .._stream import Operator, Stream

__all__ = ["cache"]

T = TypeVar("T")
_DRAWS_PER_CALL = 1024


def _cached(items: Iterator[Any], size: int, prob: float, rng: np.random.Generator) -> Iterator[Any]:
    store: list[Any] = []
    for item in items:  # warm-up: the first `size` items pass through in order
        store.append(item)
        yield item
        if len(store) == size:
            break
    else:
        return
    while True:
        slots = rng.integers(0, size, _DRAWS_PER_CALL).tolist()
        fresh = (rng.random(_DRAWS_PER_CALL) <= prob).tolist()
        for slot, replace in zip(slots, fresh):
            if replace:
                try:
                    store[slot] = next(items)
                except StopIteration:
                    return
            yield store[slot]


@dataclass(frozen=True, repr=False)
class _Cache(Operator[Any, Any]):
    _splittable = True
    n_cache: int
    prob: float
    seed: Seed | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        rng = ctx.generator(self.seed, depth)
        return _cached(upstream._open(ctx), self.n_cache, self.prob, rng)

    def __repr__(self) -> str:
        seed = "" if self.seed is None else f", seed={self.seed!r}"
        return f"cache({self.n_cache}, prob={self.prob!r}{seed})"


def cache(n_cache: int, prob: float = 0.5, seed: Seed | None = None) -> Operator[T, T]:
    """Serve items from a cache of ``n_cache``, taking a new one with probability ``prob``.

    Pescador's stochastic cache: the first ``n_cache`` items pass through in
    order and fill the cache; then each step picks a random slot, replaces it
    with the next input with probability ``prob``, and yields it. The stream
    ends when it needs a new input and the upstream has ended. Cached items
    are over-represented, so use it where items are costly to make.

    >>> import pescador_fp as pf
    >>> s = range(100) | pf.cache(8, prob=0.25, seed=0)
    >>> out = list(s)
    >>> out[:8], len(out) > 100, set(out) <= set(range(100))
    ([0, 1, 2, 3, 4, 5, 6, 7], True, True)
    """
    return _Cache(
        check_int("cache", "n_cache", n_cache, 1),
        check_probability("cache", "prob", prob),
        check_seed("cache: seed", seed),
    )
