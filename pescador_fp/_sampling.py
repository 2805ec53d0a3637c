"""Weighted sampling: picks in proportion to weights, activation lengths, weighted orders, bulk draws.

Every multiplexer, the ``background`` merge, ``shuffle`` and ``cache`` draw
their random numbers here. A call to a numpy generator costs more than the
use of one number, so numbers are drawn ``DRAWS_PER_CALL`` at a time and
handed out one by one (:class:`BulkDraws`). The order of the draws is part of
the seeded output: changing a size or the order of two draws changes what
every seeded pipeline yields.

This module imports nothing from pescador_fp.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np

__all__ = [
    "BUFFER_DRAWS_PER_CALL",
    "DRAWS_PER_CALL",
    "BulkDraws",
    "Picker",
    "count_sampler",
    "weighted_order",
]

T = TypeVar("T")

#: Random numbers drawn per call to a generator by the multiplexers: a call per
#: item would cost more than the multiplexing itself.
DRAWS_PER_CALL = 4096
#: The same for ``shuffle`` and ``cache``.
BUFFER_DRAWS_PER_CALL = 1024


class BulkDraws(Generic[T]):
    """Values of ``draw(size)``, ``draw(size)``, ... handed out one at a time.

    ``draw(n)`` returns ``n`` values: a list, or a ``zip`` of lists where a
    site draws two numbers per step; it is called only when the previous
    values are used up, so the generator is called exactly as often, and in the
    same order, as by hand. Take values with :meth:`pop`, iterate (the loop
    over the batches runs in C), or loop over :meth:`batches`.

    >>> rng = np.random.default_rng(0)
    >>> draws = BulkDraws(lambda n: rng.integers(0, 10, n).tolist(), size=4)
    >>> [draws.pop() for _ in range(6)] == np.random.default_rng(0).integers(0, 10, 8).tolist()[:6]
    True
    """

    __slots__ = ("buffer", "draw", "size")

    def __init__(self, draw: Callable[[int], Iterable[T]], size: int = DRAWS_PER_CALL) -> None:
        self.draw = draw
        self.size = size
        #: The values drawn and not yet handed out, the next one last.
        self.buffer: list[T] = []

    def pop(self) -> T:
        """The next value; draws ``size`` more when the buffer is empty."""
        if not self.buffer:
            self.buffer = list(self.draw(self.size))[::-1]
        return self.buffer.pop()

    def take(self, n: int) -> list[T]:
        """The next ``n`` values, as ``n`` calls of :meth:`pop` would give them.

        >>> rng = np.random.default_rng(0)
        >>> draws = BulkDraws(lambda n: rng.integers(0, 10, n).tolist(), size=4)
        >>> first = draws.take(6)
        >>> first + [draws.pop()] == np.random.default_rng(0).integers(0, 10, 8).tolist()[:7]
        True
        """
        taken: list[T] = []
        while len(taken) < n:
            if not self.buffer:
                self.buffer = list(self.draw(self.size))[::-1]
            cut = max(0, len(self.buffer) - (n - len(taken)))
            taken += self.buffer[cut:][::-1]
            del self.buffer[cut:]
        return taken

    def clear(self) -> None:
        """Forget the values not yet handed out (what they were drawn for has changed)."""
        self.buffer = []

    def __iter__(self) -> Iterator[T]:
        """Every further value, endlessly: what is left in the buffer first.

        >>> rng = np.random.default_rng(0)
        >>> draws = iter(BulkDraws(lambda n: rng.integers(0, 10, n).tolist(), size=4))
        >>> [next(draws) for _ in range(6)] == np.random.default_rng(0).integers(0, 10, 8).tolist()[:6]
        True
        """
        left, self.buffer = self.buffer[::-1], []
        return itertools.chain(left, itertools.chain.from_iterable(self.batches()))

    def batches(self) -> Iterator[Iterable[T]]:
        """``draw(size)``, ``draw(size)``, ... endlessly, each called when the next is asked for.

        For the hottest loops, which run fastest as a loop over each batch.
        """
        return iter(self._draw_all, None)

    def _draw_all(self) -> Iterable[T]:
        return self.draw(self.size)


class Picker:
    """Draw indices with probability proportional to their weights, in bulk.

    >>> picker = Picker([0.0, 1.0, 4.0], np.random.default_rng(0))
    >>> picks = [picker.pick() for _ in range(4000)]
    >>> picks.count(0), round(picks.count(2) / len(picks), 1)
    (0, 0.8)
    >>> picker.drop(2)
    >>> {picker.pick() for _ in range(100)}
    {1}
    """

    __slots__ = ("cumulative", "draws", "rng", "weights")

    def __init__(self, weights: Sequence[float], rng: np.random.Generator) -> None:
        #: The weight of each index; a dropped one has weight 0.
        self.weights = np.array(weights, dtype=np.float64)
        self.rng = rng
        self.draws: BulkDraws[int] = BulkDraws(self._draw)
        self.cumulative = np.cumsum(self.weights)

    @property
    def any_left(self) -> bool:
        """Whether any index has a positive weight."""
        return bool(self.cumulative[-1] > 0)

    def drop(self, index: int) -> None:
        """Never pick ``index`` again; the picks already drawn are forgotten."""
        self.weights[index] = 0.0
        self.cumulative = np.cumsum(self.weights)
        self.draws.clear()

    def _draw(self, size: int) -> list[int]:
        u = self.rng.random(size) * self.cumulative[-1]
        picks = np.searchsorted(self.cumulative, u, side="right")
        drawn: list[int] = np.minimum(picks, len(self.weights) - 1).tolist()
        return drawn

    def batch(self) -> list[int]:
        """Many picks at once, in order (the buffer of :meth:`pick` is forgotten)."""
        self.draws.clear()
        return self._draw(self.draws.size)

    def pick(self) -> int:
        """One pick, from a buffer refilled in bulk."""
        return self.draws.pop()


def count_sampler(rng: np.random.Generator, dist: str, n_active: int) -> Callable[[float, int], np.ndarray]:
    """A function that draws the numbers of items of ``size`` activations; their mean is exactly ``rate``.

    For ``rate >= 1`` every activation yields at least one item:
    constant: ``rate`` rounded up or down at random (an integer rate is exact);
    poisson: ``1 + Poisson(rate - 1)``; binomial: ``1 + Binomial(N, (rate - 1) / N)``
    with ``N = ceil((rate - 1) * n_active / (n_active - 1))``, Pescador's choice
    of spread without its truncation (``n_active == 1`` falls back to poisson).
    For ``rate < 1`` an activation yields one item with probability ``rate``.

    >>> draw = count_sampler(np.random.default_rng(0), "constant", n_active=4)
    >>> draw(3.0, 5).tolist(), round(float(draw(2.5, 10_000).mean()), 1)
    ([3, 3, 3, 3, 3], 2.5)
    """

    def draw(rate: float, size: int) -> np.ndarray:
        if rate < 1:
            return (rng.random(size) < rate).astype(np.int64)
        extra = rate - 1
        if dist == "constant" or extra == 0:
            whole = math.floor(rate)
            return whole + (rng.random(size) < rate - whole).astype(np.int64)
        if dist == "poisson" or n_active == 1:
            return 1 + rng.poisson(extra, size)
        trials = math.ceil(extra * n_active / (n_active - 1))
        return 1 + rng.binomial(trials, extra / trials, size)

    return draw


def weighted_order(weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """A random order of the indices of positive weight, heavier ones earlier on average.

    >>> sorted(weighted_order([1.0, 0.0, 5.0, 2.0], np.random.default_rng(0)))
    [0, 2, 3]
    """
    w = np.asarray(weights)
    positive = np.flatnonzero(w > 0)
    # Efraimidis-Spirakis: ascending -log(u) / w, in log space so that no weight overflows it.
    keys = np.log(-np.log(rng.random(len(positive)))) - np.log(w[positive])
    order: list[int] = positive[np.argsort(keys, kind="stable")].tolist()
    return order
