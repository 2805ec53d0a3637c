"""Rank sharding: ``shard``, one program's part of a stream divided among several.

``shard(index, count)`` divides its upstream as ``background(workers=count)``
does (the same :func:`~pescador_fp._divide.divide`), and keeps part
``index``: the parts are disjoint and together make the whole stream. Where
the stream divides at a source (a collection, arrays, a mux) the rank runs
only its part. Where nothing divides, ``background`` would have a feeder
process deal the items of the undividable *head*; ranks are separate programs
with no feeder, so each rank runs the head itself with the pass seed and
keeps items ``index, index + count, ...``. That is exact only when every rank
sees the same head items in the same order, so it needs a pass seed
(``iterate(seed=epoch)``, the same on every rank).
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .._check import check_bool, check_int
from .._divide import Plan, divide_ranks, rebuild
from .._seed import SeedContext
from .._stream import Operator, Stream

__all__ = ["shard"]

T = TypeVar("T")

_EQUAL_WAY_OUT = (
    "make every rank's part endless and take the same number of steps on each rank instead: "
    "`stream | pf.shard(rank, world_size) | pf.cycle() | pf.take(steps)` (or a mux with replacement, "
    "which never ends, `| pf.shard(rank, world_size) | pf.take(steps)`)"
)


@dataclass(frozen=True, repr=False, eq=False)
class _InContext(Stream[Any]):
    """(rank) A divided part: ``inner`` run in its part's branch of the seed tree."""

    inner: Stream[Any]
    keys: tuple[int, ...]
    at: int  # the depth of the shard in the pipeline

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.at

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return self.inner._open(ctx.child(*self.keys))

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[Any]:
        return self.inner._open_at(ctx.child(*self.keys), start)

    def _length(self) -> int | None:
        return self.inner._length()

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        # ``background`` over this rank's part divides it again, as a shard of it would.
        sub, weight = _rank_part(self.inner, index, count, self.at)
        if isinstance(sub, _Dealt):
            return None  # background's own feeder deals it
        return _InContext(sub, self.keys, self.at), weight

    def _describe(self) -> str:
        return f"<part of {self.inner!r}>"


@dataclass(frozen=True, repr=False, eq=False)
class _Nothing(Stream[Any]):
    """(rank) A rank that gets no part: the stream divides among fewer parts than ranks."""

    what: str
    at: int

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.at

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return iter(())

    def _length(self) -> int | None:
        return 0

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        return self, 0.0

    def _describe(self) -> str:
        return f"<no part: {self.what}>"


@dataclass(frozen=True, repr=False, eq=False)
class _Given(Stream[Any]):
    """(rank) The items this rank keeps from the head, as a source for the operators above it."""

    items: Iterator[Any]
    at: int
    dealt: tuple[int, int]  # (index, count): the head's items index, index + count, ...

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.at

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return self.items

    def _numbering(self) -> tuple[int, int] | None:
        return self.dealt

    def _describe(self) -> str:
        return "<items of this rank>"


@dataclass(frozen=True, repr=False, eq=False)
class _Dealt(Stream[Any]):
    """(rank) Items ``index, index + count, ...`` of ``undivided`` (run with the pass seed), then ``tail``."""

    undivided: Stream[Any]  # the head that every rank runs
    tail: tuple[Operator[Any, Any], ...]
    index: int
    count: int
    keys: tuple[int, ...]
    at: int

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.at

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        if ctx.root is None:
            raise ValueError(
                f"shard({self.index}, {self.count}): {self.undivided!r} does not divide at a source, so "
                f"every rank runs it and keeps its items {self.index}, {self.index} + {self.count}, ...; "
                "that is exact only when all ranks see the same items in the same order: iterate with "
                "a pass seed that all ranks share, s.iterate(seed=epoch)"
            )
        items = _every(self.undivided._open(ctx), self.index, self.count)
        return rebuild(_Given(items, self.undivided.depth, (self.index, self.count)), self.tail)._open(
            ctx.child(*self.keys)
        )

    def _length(self) -> int | None:
        n = self.undivided._length()
        if n is None:
            return None
        length: int | None = len(range(self.index, n, self.count))
        for op in self.tail:
            if length is None:
                return None
            length = op._output_length(length)
        return length

    def _describe(self) -> str:
        return f"<every {self.count}-th item of {self.undivided!r} from {self.index}>"


def _every(items: Iterator[Any], start: int, step: int) -> Iterator[Any]:
    try:
        yield from itertools.islice(items, start, None, step)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _first(items: Iterator[Any], n: int) -> Iterator[Any]:
    try:
        yield from itertools.islice(items, n)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _rank_part(upstream: Stream[Any], index: int, count: int, at: int) -> tuple[Stream[Any], float | None]:
    """Rank ``index``'s part of ``upstream`` as a stream, and its weight (as ``divide`` gives it)."""
    return _rank_parts(upstream, count, at, (index,))[0]


def _rank_parts(
    upstream: Stream[Any], count: int, at: int, ranks: Sequence[int]
) -> list[tuple[Stream[Any], float | None]]:
    """The parts of ``ranks`` (one division of ``upstream``)."""
    plan, which = divide_ranks(upstream, count)
    return [_part_of(upstream, plan, which[index], index, count, at) for index in ranks]


def _part_of(
    upstream: Stream[Any], plan: Plan, k: int | None, index: int, count: int, at: int
) -> tuple[Stream[Any], float | None]:
    if k is None:
        what = f"{upstream!r} divides among {len(plan.parts)} parts, not {count}"
        return _Nothing(what, at), 0.0
    keys = plan.context(k, SeedContext(None)).path  # the branch that background gives part k
    part = plan.parts[k]
    if plan.head is not None:
        return _Dealt(plan.head, part.ops, index, count, keys, at), None
    assert part.source is not None
    return _InContext(rebuild(part.source, part.ops), keys, at), part.weight


def _equal_length(upstream: Stream[Any], count: int, op: _Shard) -> int:
    """The number of items every rank yields with ``equal=True``: the shortest part's length."""
    parts = [part for part, _ in _rank_parts(upstream, count, 0, range(count))]
    for rank, part in enumerate(parts):
        if isinstance(part, _Nothing):
            raise ValueError(
                f"{op!r}: rank {rank} of {count} gets no part: {part.what} (a mux divides among "
                f"min(count, n_active, number of streams) parts), so equal=True would give every rank "
                f"nothing; use fewer ranks than that, or more streams or a larger n_active"
            )
    lengths: list[int] = []
    for part in parts:
        n = part._length()
        if n is None:
            raise ValueError(
                f"{op!r}: equal=True needs the length of every rank's part, and it cannot be known in "
                f"advance for {upstream!r} (lengths are known for collections, from_arrays, and map, "
                f"tuples, batch, shuffle, take and skip over them); {_EQUAL_WAY_OUT}"
            )
        lengths.append(n)
    shortest = min(lengths)
    if shortest == 0 and max(lengths) > 0:
        raise ValueError(
            f"{op!r}: rank {lengths.index(0)} of {count} gets no items (parts of {lengths} items), so "
            "equal=True would give every rank nothing; use fewer ranks or a longer stream"
        )
    return shortest


@dataclass(frozen=True, repr=False, eq=False)
class _Sharded(Stream[Any]):
    """The stream ``upstream | shard(index, count)``: this rank's part."""

    upstream: Stream[Any]
    op: _Shard

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.upstream.depth + 1

    def _part(self) -> Stream[Any]:
        return _rank_part(self.upstream, self.op.index, self.op.count, self.depth)[0]

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        if self.op.equal:
            n = _equal_length(self.upstream, self.op.count, self.op)
            return _first(self._part()._open(ctx), n)
        return self._part()._open(ctx)

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[Any]:
        if self.op.equal:
            n = _equal_length(self.upstream, self.op.count, self.op)
            return _first(self._part()._open_at(ctx, start), max(0, n - start))
        return self._part()._open_at(ctx, start)

    def _length(self) -> int | None:
        if self.op.equal:
            try:
                return _equal_length(self.upstream, self.op.count, self.op)
            except ValueError:
                return None
        return self._part()._length()

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        if self.op.equal:
            return None  # a fixed count of items: background's feeder deals them
        return self._part()._divide(index, count)

    def _describe(self) -> str:
        return f"{self.upstream!r} | {self.op!r}"


@dataclass(frozen=True, repr=False)
class _Shard(Operator[Any, Any]):
    index: int
    count: int
    equal: bool

    def _apply(self, upstream: Stream[Any]) -> Stream[Any]:
        return _Sharded(upstream, self)

    def _length_after(self, upstream: Stream[Any]) -> int | None:
        return _Sharded(upstream, self)._length()

    def __repr__(self) -> str:
        return f"shard({self.index}, {self.count}{', equal=True' if self.equal else ''})"


def shard(index: int, count: int, *, equal: bool = False) -> Operator[T, T]:
    """Keep part ``index`` of ``count``: this rank's share of the stream, for multi-process training.

    The stream is divided exactly as ``background(workers=count)`` divides
    it, so the ``count`` parts are disjoint and together are the whole
    stream, each item once. Every rank passes the same pass seed
    (``iterate(seed=epoch)``); each part draws its randomness from its own
    child of it, so ranks never repeat each other's order. Where the stream
    divides at a source (a collection, ``from_arrays``, a mux), a rank runs
    only its part; a weighted mux gives each rank a sub-mux of its sources,
    with their weights. Where nothing divides, every rank runs the undividable
    head itself and keeps items ``index, index + count, ...``: that needs a
    pass seed, and a head that gives the same items in the same order in every
    process (not, say, a set of strings under hash randomization).

    ``equal=True``: every rank yields the same number of items in a pass (the
    shortest part's; the rest is dropped), so that distributed steps match.
    The lengths must be known: collections, ``from_arrays``, and ``map``,
    ``tuples`` and ``batch`` over them. Otherwise iteration starts with an
    error; make the parts endless and cut them instead:
    ``| pf.shard(r, w) | pf.cycle() | pf.take(steps)``.

    >>> import pescador_fp as pf
    >>> s = pf.from_iterable(range(10))
    >>> [list(s | pf.shard(r, 3)) for r in range(3)]
    [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    >>> [list(s | pf.shard(r, 3, equal=True)) for r in range(3)]
    [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    >>> pf.shard(2, 2)
    Traceback (most recent call last):
    ...
    ValueError: shard: index must be an integer in [0, count) = [0, 2), got 2

    Raises:
        TypeError, ValueError: when built, for an ``index`` outside
            ``[0, count)``, a ``count`` below 1, or non-integers.
        ValueError: at the start of a pass, with ``equal=True`` where a part's
            length cannot be known or a rank gets nothing, and where the stream
            does not divide at a source and the pass has no seed.
    """
    count = check_int("shard", "count", count, 1)
    value: object = index
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        check_int("shard", "index", value, 0)  # raises the TypeError
    if not 0 <= index < count:
        raise ValueError(f"shard: index must be an integer in [0, count) = [0, {count}), got {index!r}")
    return _Shard(int(index), count, check_bool("shard", "equal", equal))
