"""``map`` and ``mapcat`` with ``concurrency=k``: the operator, over the pools of ``_concurrency``.

``ops/map.py`` chooses it (``concurrent``); the threads, the event loop and
their hand-overs live in ``pescador_fp/_concurrency.py``. With ``rng=True``
each worker owns a generator that it sets to each item's place before the
call, so that an item draws what it draws without concurrency.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .._check import check_bool, check_int
from .._concurrency import call_results
from .._seed import Seed, SeedContext, seed_argument
from .._stats import CallCounts, register_calls
from .._stream import Operator, Stream, close_iterator, describe_callable, items_before
from ._items import ItemRandomness, stopped_error

__all__ = ["concurrent"]


class _Failed:
    """(a concurrent mapcat) Ends the outputs gathered from an item: the error that cut them short."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _gathered(outputs: Iterable[Any], stopped: Callable[[], BaseException]) -> list[Any]:
    """(a worker) All of an item's outputs; where iterating them fails, those before and the error.

    ``stopped``: the error for a ``StopIteration`` out of the outputs' ``iter()`` (PEP 479, as
    without concurrency; one out of their ``__next__`` is their end).
    """
    gathered: list[Any] = []
    try:
        try:
            items = iter(outputs)
        except StopIteration as stop:
            raise stopped() from stop
        gathered.extend(items)
    except BaseException as error:  # a KeyboardInterrupt too comes after the outputs before it
        gathered.append(_Failed(error))
    return gathered


async def _gathered_async(outputs: Any) -> list[Any]:
    """(the event loop) An ``async def`` function's iterable, or an async generator's items, gathered."""
    gathered: list[Any] = []
    try:
        if hasattr(outputs, "__aiter__"):
            async for output in outputs:
                gathered.append(output)
        else:
            gathered.extend(await outputs)
    except asyncio.CancelledError:
        raise  # closing the pool cancels it: nothing is taken after
    except BaseException as error:  # a KeyboardInterrupt too comes after the outputs before it
        gathered.append(_Failed(error))
    return gathered


def _flattened(results: Iterator[list[Any]]) -> Iterator[Any]:
    try:
        for outputs in results:
            if outputs and type(outputs[-1]) is _Failed:
                yield from outputs[:-1]
                raise outputs[-1].error
            yield from outputs
    finally:  # the pool stops now: the error's traceback holds ``results`` in a cycle that only gc breaks
        close_iterator(results)


def _placed(items: Iterator[Any], places: Iterator[int]) -> Iterator[tuple[int, Any]]:
    """``items`` with the place that numbers each one's draws (``rng=True``), numbered as they are taken."""
    try:
        yield from zip(places, items)
    finally:
        close_iterator(items)


def _is_async(fn: Callable[..., Any]) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - a callable object's own method
    return any(
        inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (fn, call) if f is not None
    )


@dataclass(frozen=True, repr=False)
class _Concurrent(Operator[Any, Any]):
    """``map`` (or ``mapcat``: ``flat``) with up to ``concurrency`` calls in flight (``_concurrency``).

    It takes items ahead of its consumer, so it is never ``_per_item`` and,
    ordered, ``_reads_ahead`` (``background`` runs it in its feeder where
    workers would mark each item's end); an ordered ``mapcat`` does not split,
    so that ``background`` keeps the foreground's order.
    """

    fn: Callable[..., Any]
    concurrency: int
    ordered: bool
    flat: bool
    rng: bool
    seed: Seed | None

    @property
    def _one_to_one(self) -> bool:  # type: ignore[override]
        return self.ordered and not self.flat

    @property
    def _splittable(self) -> bool:  # type: ignore[override]
        return not (self.flat and self.ordered)

    @property
    def _reads_ahead(self) -> bool:  # type: ignore[override]
        return self.ordered

    def _output_length(self, n: int) -> int | None:
        return None if self.flat else n

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        fn, op, is_async = self.fn, self, _is_async(self.fn)
        items: Iterator[Any] = upstream._open(ctx)
        counts = CallCounts(self.concurrency)
        # counted under the stream below the stage (in a resumed pass, the one it resumes)
        register_calls(
            ctx.run, getattr(upstream, "stream", upstream) if items_before(upstream) else upstream, counts
        )

        def guarded(call: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def called(unit: Any) -> Any:
                try:
                    return call(unit)
                except StopIteration as stop:  # PEP 479, as without concurrency
                    raise stopped_error(op, fn) from stop

            return called

        def call_for() -> Callable[[Any], Any]:
            if self.rng:
                at = ItemRandomness(upstream, ctx, self.seed, depth).at
                call = guarded(lambda unit: fn(unit[1], at(unit[0])))
            else:
                call = fn if is_async else guarded(fn)
            if self.flat:
                if is_async:
                    return lambda unit: _gathered_async(call(unit))
                return lambda unit: _gathered(call(unit), lambda: stopped_error(op, fn))
            return call

        if self.rng:
            items = _placed(items, ItemRandomness(upstream, ctx, self.seed, depth).places)
        results = call_results(
            call_for, items, self.concurrency, ordered=self.ordered, is_async=is_async, counts=counts
        )
        return _flattened(results) if self.flat else results

    def __repr__(self) -> str:
        rng = f", rng=True{seed_argument(self.seed)}" if self.rng else ""
        ordered = "" if self.ordered else ", ordered=False"
        name = "mapcat" if self.flat else "map"
        return f"{name}({describe_callable(self.fn)}{rng}, concurrency={self.concurrency}{ordered})"


def concurrent(
    where: str, fn: Callable[..., Any], concurrency: object, ordered: object, rng: bool, seed: Seed | None
) -> _Concurrent | None:
    """The concurrent form of ``map`` or ``mapcat``, once its arguments are checked; ``None``: plain."""
    in_order = check_bool(where, "ordered", ordered)
    if concurrency is None:
        if _is_async(fn):
            raise TypeError(
                f"{where}: fn {describe_callable(fn)} is an async function, which needs an event loop: "
                "give concurrency=k to run k calls at a time, got concurrency=None"
            )
        if not in_order:
            raise ValueError(f"{where}: ordered=False needs concurrency=k (k calls in flight), got None")
        return None
    k = check_int(where, "concurrency", concurrency, 1)
    if where == "map" and inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"map: fn {describe_callable(fn)} is an async generator function; "
            "pf.mapcat(fn, concurrency=k) yields the items it yields"
        )
    return _Concurrent(fn, k, in_order, where == "mapcat", rng, seed)
