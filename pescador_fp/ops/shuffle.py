"""Buffer shuffling: ``shuffle``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .._check import check_int
from .._seed import Seed, SeedContext, check_seed
from .._stream import Operator, Stream

__all__ = ["shuffle"]

T = TypeVar("T")

# Buffer slots drawn per call to the generator: one call per item would cost
# more than the shuffle itself.
_DRAWS_PER_CALL = 1024


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    buffer = list(itertools.islice(items, size))
    if len(buffer) == size:
        draws: list[int] = []
        k = 0
        for item in items:
            if k == len(draws):
                draws, k = rng.integers(0, size, _DRAWS_PER_CALL).tolist(), 0
            slot = draws[k]
            k += 1
            out, buffer[slot] = buffer[slot], item
            yield out
    rng.shuffle(buffer)
    yield from buffer


@dataclass(frozen=True, repr=False)
class _Shuffle(Operator[Any, Any]):
    _splittable = True
    buffer_size: int
    seed: Seed | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _shuffled(upstream._open(ctx), self.buffer_size, ctx.generator(self.seed, depth))

    def __repr__(self) -> str:
        seed = "" if self.seed is None else f", seed={self.seed!r}"
        return f"shuffle({self.buffer_size}{seed})"


def shuffle(buffer_size: int, seed: Seed | None = None) -> Operator[T, T]:
    """Shuffle through a buffer of ``buffer_size`` items.

    Each output item is drawn at random from the buffer and replaced by the
    next input; at the end the buffer is emptied in random order, so a finite
    stream comes out as a permutation of itself. A buffer at least as large as
    the stream gives a uniform shuffle.

    >>> import pescador_fp as pf
    >>> s = range(10) | pf.shuffle(4, seed=0)
    >>> sorted(s) == list(range(10)), list(s) == list(s)
    (True, True)
    """
    return _Shuffle(check_int("shuffle", "buffer_size", buffer_size, 1), check_seed("shuffle: seed", seed))
