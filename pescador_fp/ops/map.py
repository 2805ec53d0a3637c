"""Per-item operators: ``map``, ``filter`` and ``mapcat``."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import toolz

from .._check import check_callable
from .._seed import SeedContext
from .._stream import Operator, Stream, describe_callable

__all__ = ["filter", "map", "mapcat"]

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True, repr=False)
class _Map(Operator[Any, Any]):
    _splittable = _per_item = _one_to_one = True
    fn: Callable[[Any], Any]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return builtins.map(self.fn, upstream._open(ctx))

    def __repr__(self) -> str:
        return f"map({describe_callable(self.fn)})"


@dataclass(frozen=True, repr=False)
class _Filter(Operator[Any, Any]):
    _splittable = _per_item = True
    pred: Callable[[Any], object]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return builtins.filter(self.pred, upstream._open(ctx))

    def __repr__(self) -> str:
        return f"filter({describe_callable(self.pred)})"


@dataclass(frozen=True, repr=False)
class _Mapcat(Operator[Any, Any]):
    _splittable = _per_item = True
    fn: Callable[[Any], Iterable[Any]]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return iter(toolz.mapcat(self.fn, upstream._open(ctx)))

    def __repr__(self) -> str:
        return f"mapcat({describe_callable(self.fn)})"


def map(fn: Callable[[T], U]) -> Operator[T, U]:
    """Apply ``fn`` to every item.

    >>> import pescador_fp as pf
    >>> list(range(4) | pf.map(lambda x: x * x))
    [0, 1, 4, 9]
    """
    return _Map(check_callable("map", "fn", fn))


def filter(pred: Callable[[T], object]) -> Operator[T, T]:
    """Keep the items for which ``pred(item)`` is true.

    >>> import pescador_fp as pf
    >>> list(range(10) | pf.filter(lambda x: x % 4 == 0))
    [0, 4, 8]
    """
    return _Filter(check_callable("filter", "pred", pred))


def mapcat(fn: Callable[[T], Iterable[U]]) -> Operator[T, U]:
    """Apply ``fn`` to every item and yield the items of the iterables it returns.

    >>> import pescador_fp as pf
    >>> list(["ab", "", "c"] | pf.mapcat(list))
    ['a', 'b', 'c']
    """
    return _Mapcat(check_callable("mapcat", "fn", fn))
