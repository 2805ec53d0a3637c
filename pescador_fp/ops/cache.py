"""Stochastic caching: ``cache``."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .._check import check_int, check_probability
from .._sampling import BUFFER_DRAWS_PER_CALL, BulkDraws
from .._seed import Seed, SeedContext, check_seed, seed_argument
from .._stream import Operator, PassIterator, Stream, close_iterator

__all__ = ["cache"]

T = TypeVar("T")


class _CacheIterator(PassIterator):
    """One pass of a cache: ``store`` holds the cached items; ``draws`` picks a slot and a refresh.

    The first ``size`` items fill the store as they pass through; then each
    step draws a slot, replaces its item with the next input with probability
    ``prob`` and yields it. ``_open`` hands out the generator :meth:`items`
    itself, which is faster than a ``__next__`` written in Python.
    """

    __slots__ = ("draws", "prob", "size", "store", "upstream")

    def __init__(self, upstream: Iterator[Any], size: int, prob: float, rng: np.random.Generator) -> None:
        self.upstream = upstream
        self.size = size
        self.prob = prob
        self.store: list[Any] = []
        #: (slot, whether to take a new input into it) for each next step.
        self.draws: BulkDraws[tuple[int, bool]] = BulkDraws(
            lambda n: zip(rng.integers(0, size, n).tolist(), (rng.random(n) <= prob).tolist()),
            BUFFER_DRAWS_PER_CALL,
        )
        super().__init__()

    def items(self) -> Generator[Any, None, None]:
        """The cached items; closes the upstream when it ends or is closed."""
        store, upstream = self.store, self.upstream
        try:
            for item in upstream:  # warm-up: the first `size` items pass through in order
                store.append(item)
                yield item
                if len(store) == self.size:
                    break
            else:
                return
            for draws in self.draws.batches():
                for slot, replace in draws:
                    if replace:
                        try:
                            store[slot] = next(upstream)
                        except StopIteration:
                            return
                    yield store[slot]
        finally:
            close_iterator(upstream)

    def release(self) -> None:
        close_iterator(self.upstream)


@dataclass(frozen=True, repr=False)
class _Cache(Operator[Any, Any]):
    _splittable = True
    n_cache: int
    prob: float
    seed: Seed | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        rng = ctx.generator(self.seed, depth)
        return _CacheIterator(upstream._open(ctx), self.n_cache, self.prob, rng).items()

    def __repr__(self) -> str:
        seed = seed_argument(self.seed)
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
