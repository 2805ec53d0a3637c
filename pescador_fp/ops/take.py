"""Slicing operators: ``take`` and ``skip``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .._check import check_int
from .._seed import SeedContext
from .._stream import Operator, Stream

__all__ = ["skip", "take"]

T = TypeVar("T")


def _first(items: Iterator[Any], n: int) -> Iterator[Any]:
    try:
        yield from itertools.islice(items, n - 1)  # islice stops before pulling item n+1
        last = next(items, _END)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # release what the upstream holds as soon as the nth item is out, or on an early exit
    if last is not _END:
        yield last


_END = object()


@dataclass(frozen=True, repr=False)
class _Take(Operator[Any, Any]):
    n: int

    def _output_length(self, n: int) -> int | None:
        return min(n, self.n)

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        if self.n == 0:
            return iter(())
        return _first(upstream._open(ctx), self.n)

    def _open_at(self, upstream: Stream[Any], ctx: SeedContext, depth: int, start: int) -> Iterator[Any]:
        if start >= self.n:
            return iter(())
        return _first(upstream._open_at(ctx, start), self.n - start)

    def __repr__(self) -> str:
        return f"take({self.n})"


@dataclass(frozen=True, repr=False)
class _Skip(Operator[Any, Any]):
    n: int

    def _output_length(self, n: int) -> int | None:
        return max(0, n - self.n)

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return itertools.islice(upstream._open(ctx), self.n, None)

    def _open_at(self, upstream: Stream[Any], ctx: SeedContext, depth: int, start: int) -> Iterator[Any]:
        return upstream._open_at(ctx, self.n + start)

    def __repr__(self) -> str:
        return f"skip({self.n})"


def take(n: int) -> Operator[T, T]:
    """Keep the first ``n`` items; item ``n+1`` is never pulled from upstream.

    >>> import pescador_fp as pf
    >>> list(pf.from_iterable(range(10)) | pf.take(3))
    [0, 1, 2]
    """
    return _Take(check_int("take", "n", n, 0))


def skip(n: int) -> Operator[T, T]:
    """Drop the first ``n`` items and keep the rest.

    >>> import pescador_fp as pf
    >>> list(range(5) | pf.skip(3))
    [3, 4]
    """
    return _Skip(check_int("skip", "n", n, 0))
