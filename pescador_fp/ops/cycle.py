"""Repetition: ``cycle``."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .._check import check_int
from .._seed import SeedContext
from .._stream import NOTHING, Operator, PassIterator, Stream, close_iterator

__all__ = ["cycle"]

T = TypeVar("T")


class _CycleIterator(PassIterator):
    """One pass of a cycle: ``passes`` passes of the upstream started, the last one open as ``current``.

    ``_open`` hands out the generator :meth:`items` itself, which is faster
    than a ``__next__`` written in Python.
    """

    __slots__ = ("ctx", "current", "passes", "times", "upstream")

    def __init__(self, upstream: Stream[Any], ctx: SeedContext, times: int | None) -> None:
        self.upstream = upstream
        self.ctx = ctx
        self.times = times
        self.passes = 0
        self.current: Iterator[Any] = iter(())
        super().__init__()

    def items(self) -> Generator[Any, None, None]:
        """The items of every pass; closes the open pass when it ends or is closed."""
        try:
            while self.times is None or self.passes < self.times:
                # Each repetition is a branch of its own, so random operators upstream
                # draw a new, reproducible order every time round.
                self.current = current = self.upstream._open(self.ctx.child(self.passes))
                self.passes += 1
                first = next(current, NOTHING)
                if first is NOTHING:
                    return  # an empty upstream ends the cycle instead of spinning
                yield first
                yield from current
        finally:
            close_iterator(self.current)

    def release(self) -> None:
        close_iterator(self.current)


@dataclass(frozen=True, repr=False)
class _Cycle(Operator[Any, Any]):
    _splittable = _reopens_upstream = True
    times: int | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _CycleIterator(upstream, ctx, self.times).items()

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
