"""Buffer shuffling: ``shuffle``."""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .._check import check_int
from .._sampling import BUFFER_DRAWS_PER_CALL, BulkDraws
from .._seed import Seed, SeedContext, check_seed, seed_argument
from .._stream import Operator, PassIterator, Stream, close_iterator, drop

__all__ = ["shuffle"]

T = TypeVar("T")


class _ShuffleIterator(PassIterator):
    """One pass of a shuffle: ``buffer`` holds ``size`` items; each new input takes a random one's place.

    The item it replaces comes out; when the upstream ends, the buffer comes
    out in random order. ``_open`` hands out the generator :meth:`items`
    itself, which is faster than a ``__next__`` written in Python.
    """

    __slots__ = ("buffer", "draws", "filled", "rng", "size", "upstream")

    def __init__(self, upstream: Iterator[Any], size: int, rng: np.random.Generator) -> None:
        self.upstream = upstream
        self.size = size
        self.rng = rng
        self.buffer: list[Any] = []
        #: The buffer holds ``size`` items and takes each new input in a drawn slot (a resumed pass).
        self.filled = False
        #: The buffer slot that each next input goes to.
        self.draws: BulkDraws[int] = BulkDraws(
            lambda n: rng.integers(0, size, n).tolist(), BUFFER_DRAWS_PER_CALL
        )
        super().__init__()

    def items(self) -> Generator[Any, None, None]:
        """The shuffled items; closes the upstream when it ends or is closed."""
        buffer, upstream = self.buffer, self.upstream
        try:
            if not self.filled:
                buffer.extend(itertools.islice(upstream, self.size))
            if len(buffer) == self.size:
                for item, slot in zip(upstream, self.draws):
                    out, buffer[slot] = buffer[slot], item
                    yield out
            self.rng.shuffle(buffer)
            buffer.reverse()  # the rest comes out in shuffled order, from the end of the buffer
            while buffer:
                yield buffer.pop()
        finally:
            close_iterator(upstream)

    def release(self) -> None:
        close_iterator(self.upstream)

    def resume(self, upstream: Stream[Any], ctx: SeedContext, start: int) -> bool:
        """Stand where ``start`` items have come out, if that is before the upstream ends.

        The draws are made again without the items: each slot's input is
        numbered, so after ``start`` outputs the buffer holds inputs ``lo``
        and later ones; those are read again from the upstream (from input
        ``lo`` on), and the pass goes on from there. ``False``: the upstream
        ended before (its last ``size`` items are the caller's to replay).
        """
        size = self.size
        inputs = list(range(size))  # the input that each slot holds: the last one drawn into it
        for t, slot in enumerate(self.draws.take(start), size):
            inputs[slot] = t
        lo, stop = min(inputs), size + start
        slot_of = {t: k for k, t in enumerate(inputs)}
        items = upstream._open_at(ctx, lo)
        buffer: list[Any] = [None] * size
        for t, item in zip(range(lo, stop), items):
            k = slot_of.get(t)
            if k is not None:
                buffer[k] = item
            if t == stop - 1:
                self.buffer, self.upstream, self.filled = buffer, items, True
                return True
        close_iterator(items)
        return False


@dataclass(frozen=True, repr=False)
class _Shuffle(Operator[Any, Any]):
    _keeps_length = True  # a permutation of its input
    _splittable = True
    buffer_size: int
    seed: Seed | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        rng = ctx.generator(self.seed, depth)
        return _ShuffleIterator(upstream._open(ctx), self.buffer_size, rng).items()

    def _open_at(self, upstream: Stream[Any], ctx: SeedContext, depth: int, start: int) -> Iterator[Any]:
        if start:
            shuffled = _ShuffleIterator(iter(()), self.buffer_size, ctx.generator(self.seed, depth))
            if shuffled.resume(upstream, ctx, start):
                return shuffled.items()
        return drop(self._open(upstream, ctx, depth), start)  # near the end of a finite upstream: replay

    def __repr__(self) -> str:
        seed = seed_argument(self.seed)
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
