"""Per-item operators: ``map``, ``filter`` and ``mapcat``; with ``rng=True``, a seeded generator per item.

With ``rng=True`` each item gets its own random numbers: item ``k`` (counted
at the operator's input) draws from a Philox generator whose key comes from
the seed tree (pass root, the operator's ``seed``, its branch path and
depth) and whose counter starts at ``(0, 0, k, 0)``, so that items' streams
never overlap. One generator per pass is set to each item's state in turn
(constructing one per item would cost ~9 µs). ``k`` is the item's place in
the *undivided* stream where the stream below says it (``Stream._numbering``:
a collection or ``from_arrays`` divided among workers or ranks, with only
one-to-one operators between), and the branch path then leaves out the keys
that dividing added; elsewhere items are counted in their part.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .._check import check_bool, check_callable
from .._seed import Seed, SeedContext, check_seed, seed_argument
from .._stream import Operator, Stream, describe_callable
from ._concurrent import concurrent
from ._items import ItemRandomness, stopped_error

__all__ = ["filter", "map", "mapcat"]

T = TypeVar("T")
U = TypeVar("U")


# The per-item loops are generators, not builtins.map/filter, which take a
# StopIteration from fn for the end of their input. A generator calls a Python
# function inline, so it costs a few ns per item more than builtins.map (~20 ns
# for a C function such as abs); the try costs nothing until it catches. The
# input's own end never reaches the except: the for loop takes it.


def _calls(op: Operator[Any, Any], fn: Callable[[Any], U], items: Iterator[Any]) -> Iterator[U]:
    try:
        for item in items:
            yield fn(item)
    except StopIteration as stop:
        raise stopped_error(op, fn) from stop


def _iterators(
    op: Operator[Any, Any], fn: Callable[[Any], Iterable[U]], items: Iterator[Any]
) -> Iterator[Iterator[U]]:
    # iter() here, inside the guard: a StopIteration from the result's __iter__ would otherwise leave
    # chain.from_iterable, which the loop above it takes for the end of the stream.
    try:
        for item in items:
            yield iter(fn(item))
    except StopIteration as stop:
        raise stopped_error(op, fn) from stop


def _kept(op: Operator[Any, Any], pred: Callable[[Any], object], items: Iterator[T]) -> Iterator[T]:
    try:
        for item in items:
            if pred(item):
                yield item
    except StopIteration as stop:
        raise stopped_error(op, pred) from stop


@dataclass(frozen=True, repr=False)
class _Map(Operator[Any, Any]):
    _splittable = _per_item = _one_to_one = True
    fn: Callable[[Any], Any]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _calls(self, self.fn, upstream._open(ctx))

    def __repr__(self) -> str:
        return f"map({describe_callable(self.fn)})"


@dataclass(frozen=True, repr=False)
class _Filter(Operator[Any, Any]):
    _splittable = _per_item = True
    pred: Callable[[Any], object]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _kept(self, self.pred, upstream._open(ctx))

    def __repr__(self) -> str:
        return f"filter({describe_callable(self.pred)})"


@dataclass(frozen=True, repr=False)
class _Mapcat(Operator[Any, Any]):
    _splittable = _per_item = True
    fn: Callable[[Any], Iterable[Any]]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        # only the calls go through the generator: the outputs flow through C
        return itertools.chain.from_iterable(_iterators(self, self.fn, upstream._open(ctx)))

    def __repr__(self) -> str:
        return f"mapcat({describe_callable(self.fn)})"


def _random_map(op: _RandomMap, items: Iterator[Any], r: ItemRandomness) -> Iterator[Any]:
    fn, at = op.fn, r.next_item
    try:
        for item in items:
            yield fn(item, at())
    except StopIteration as stop:
        raise stopped_error(op, fn) from stop


def _random_mapcat(op: _RandomMapcat, items: Iterator[Any], r: ItemRandomness) -> Iterator[Any]:
    fn, at = op.fn, r.next_item
    try:
        for item in items:
            yield from fn(item, at())  # all of an item's outputs are out before the next item's state is set
    except StopIteration as stop:  # from fn: yield from takes the outputs' own end
        raise stopped_error(op, fn) from stop


@dataclass(frozen=True, repr=False)
class _RandomMap(Operator[Any, Any]):
    _splittable = _per_item = _one_to_one = True
    fn: Callable[[Any, np.random.Generator], Any]
    seed: Seed | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _random_map(self, upstream._open(ctx), ItemRandomness(upstream, ctx, self.seed, depth))

    def __repr__(self) -> str:
        return f"map({describe_callable(self.fn)}, rng=True{seed_argument(self.seed)})"


@dataclass(frozen=True, repr=False)
class _RandomMapcat(Operator[Any, Any]):
    _splittable = _per_item = True
    fn: Callable[[Any, np.random.Generator], Iterable[Any]]
    seed: Seed | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _random_mapcat(self, upstream._open(ctx), ItemRandomness(upstream, ctx, self.seed, depth))

    def __repr__(self) -> str:
        return f"mapcat({describe_callable(self.fn)}, rng=True{seed_argument(self.seed)})"


def _check_rng(where: str, rng: object, seed: object) -> tuple[bool, Seed | None]:
    with_rng = check_bool(where, "rng", rng)
    checked = check_seed(f"{where}: seed", seed)
    if checked is not None and not with_rng:
        raise ValueError(
            f"{where}: seed seeds the generator that rng=True passes to fn; got seed={seed!r} with rng=False"
        )
    return with_rng, checked


def map(
    fn: Callable[..., U],
    *,
    rng: bool = False,
    seed: Seed | None = None,
    concurrency: int | None = None,
    ordered: bool = True,
) -> Operator[Any, U]:
    """Apply ``fn`` to every item; with ``rng=True``, call ``fn(item, rng)`` with a seeded generator.

    ``rng`` is a ``numpy.random.Generator`` set for that item from the pass's
    seed tree (and ``seed``, if given): the same pass seed gives each item the
    same draws, another seed (another epoch) others, and ``background`` and
    ``shard`` give an item the draws it gets in the foreground pass where the
    stream divides at a collection or ``from_arrays`` (see the user guide,
    "Random numbers in your functions"). Use it during the call only: the
    next item resets it. The global numpy and ``random`` states are never used.

    >>> import pescador_fp as pf
    >>> list(range(4) | pf.map(lambda x: x * x))
    [0, 1, 4, 9]
    >>> noisy = range(3) | pf.map(lambda x, rng: x + rng.integers(10), rng=True)
    >>> noisy.head(seed=0) == noisy.head(seed=0)
    True

    ``concurrency=k`` keeps up to ``k`` calls in flight, for calls that wait
    (a file on network storage, an HTTP request) or release the GIL: a plain
    function runs in up to ``k`` threads, an ``async def`` function as ``k``
    coroutines on one event loop (in a thread of its own). Items, errors and
    ``rng=True`` draws are those of ``concurrency=None``, in input order;
    ``ordered=False`` yields results as they finish (a faster pass where call
    times vary, but not the same order twice, and a resumed pass is not
    exactly the rest). At most ``max(2 * k, 64)`` items are taken ahead of the
    consumer. Threads start at the first item and stop with the pass (the
    end, ``break``, ``close()``, an error): no call starts after that, a
    thread's call already running finishes on its own, a coroutine is
    cancelled at its next ``await``. docs/io.md says when to use it.

    >>> import asyncio, time
    >>> def fetch(url):
    ...     time.sleep(0.01)  # a request: the thread waits, others run
    ...     return url.upper()
    >>> list(["a", "b", "c"] | pf.map(fetch, concurrency=3))
    ['A', 'B', 'C']
    >>> async def fetch_async(url):
    ...     await asyncio.sleep(0.01)
    ...     return url * 2
    >>> list(["a", "b"] | pf.map(fetch_async, concurrency=8))
    ['aa', 'bb']

    Raises:
        TypeError, ValueError: when built, for a non-callable ``fn``, a
            non-bool ``rng``, a bad ``seed``, or a ``seed`` without ``rng=True``;
            a ``concurrency`` that is not an integer >= 1 or ``None``, a
            non-bool ``ordered`` (or ``ordered=False`` without concurrency), an
            ``async def`` ``fn`` without concurrency.
    """
    fn = check_callable("map", "fn", fn)
    with_rng, checked = _check_rng("map", rng, seed)

    concurrent_op = concurrent("map", fn, concurrency, ordered, with_rng, checked)
    if concurrent_op is not None:
        return concurrent_op
    return _RandomMap(fn, checked) if with_rng else _Map(fn)


def filter(pred: Callable[[T], object]) -> Operator[T, T]:
    """Keep the items for which ``pred(item)`` is true.

    >>> import pescador_fp as pf
    >>> list(range(10) | pf.filter(lambda x: x % 4 == 0))
    [0, 4, 8]
    """
    return _Filter(check_callable("filter", "pred", pred))


def mapcat(
    fn: Callable[..., Iterable[U]],
    *,
    rng: bool = False,
    seed: Seed | None = None,
    concurrency: int | None = None,
    ordered: bool = True,
) -> Operator[Any, U]:
    """Apply ``fn`` to every item and yield the items of the iterables it returns.

    With ``rng=True``, ``fn(item, rng)`` gets a seeded generator for that
    item, as in :func:`map`; it stays the item's until all that ``fn``
    returned has been yielded.

    >>> import pescador_fp as pf
    >>> list(["ab", "", "c"] | pf.mapcat(list))
    ['a', 'b', 'c']
    >>> crops = range(2) | pf.mapcat(lambda x, rng: [x, x + rng.random()], rng=True)
    >>> crops.head(seed=1) == crops.head(seed=1), len(crops.head(seed=1))
    (True, 4)

    ``concurrency=k`` and ``ordered`` are as in :func:`map`; each call's
    outputs are gathered in its worker (a list) before they are yielded, and
    ``fn`` may be an ``async def`` function that returns an iterable or an
    async generator function.

    >>> async def pages(n):
    ...     for i in range(n):
    ...         yield f"page {i}"
    >>> list([1, 2] | pf.mapcat(pages, concurrency=2))
    ['page 0', 'page 0', 'page 1']
    """
    fn = check_callable("mapcat", "fn", fn)
    with_rng, checked = _check_rng("mapcat", rng, seed)

    concurrent_op = concurrent("mapcat", fn, concurrency, ordered, with_rng, checked)
    if concurrent_op is not None:
        return concurrent_op
    return _RandomMapcat(fn, checked) if with_rng else _Mapcat(fn)
