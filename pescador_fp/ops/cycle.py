"""Repetition: ``cycle``."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .._check import check_int
from .._seed import SeedContext
from .._stream import Operator, Stream

__all__ = ["cycle"]

T = TypeVar("T")
_NOTHING = object()


def _repeat(upstream: Stream[Any], ctx: SeedContext, times: int | None) -> Iterator[Any]:
    passes: Iterable[int] = itertools.count() if times is None else range(times)
    for k in passes:
        # Each repetition is a branch of its own, so random operators upstream
        # draw a new, reproducible order every time round.
        items = upstream._open(ctx.child(k))
        first = next(items, _NOTHING)
        if first is _NOTHING:
            return  # an empty upstream ends the cycle instead of spinning
        yield first
        yield from items


@dataclass(frozen=True, repr=False)
class _Cycle(Operator[Any, Any]):
    _splittable = _reopens_upstream = True
    times: int | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _repeat(upstream, ctx, self.times)

    def __repr__(self) -> str:
        return "cycle()" if self.times is None else f"cycle({self.times})"


def cycle(times: int | None = None) -> Operator[T, T]:
    """Restart the upstream ``times`` passes (``None``: forever).

    Each pass is a fresh iteration of the upstream, and random operators
    upstream reshuffle every pass. An upstream that yields nothing ends the
    cycle.

    >>> import pescador_fp as pf
    >>> list("ab" | pf.cycle(3))
    ['a', 'b', 'a', 'b', 'a', 'b']
    >>> list([] | pf.cycle())
    []
    """
    return _Cycle(None if times is None else check_int("cycle", "times", times, 0))
