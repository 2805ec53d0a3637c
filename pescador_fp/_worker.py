"""The worker's side of ``background``: run a part of the pipeline and write its items into a ring.

A worker (:func:`work`) runs its part: the part's operators over its own
source, or over the items a feeder deals it. The feeder (:func:`feed`) runs
the head of a pipeline that cannot be divided, once, and deals its items to
the workers in turn. Where the merge must restore the undivided order, a
worker writes a mark after the outputs of each input item (``RECORD_MARK``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._divide import Part, rebuild
from ._ipc.codec import Decoder, Encoder, loads_recipe, send_error
from ._ipc.pool import Pool, PoolHandle
from ._ipc.ring import (
    RECORD_ARRAYS,
    RECORD_DATA,
    RECORD_END,
    RECORD_ERROR,
    RECORD_READY,
    RECORD_SHORT,
    Ring,
    RingHandle,
    Stopped,
)
from ._ipc.workers import (
    dump_stack_on_signal,
    exit_when_out_of_descriptors,
    ignore_interrupts,
    say_done,
    watch_parent,
)
from ._seed import SeedContext
from ._stream import Applied, Stream, _run, from_item
from .errors import WorkerError
from .ops.batch import batch_length, is_keeping_rest, keeping_rest, new_axis_batch, rows, sample_groups, stack

__all__ = ["RECORD_MARK", "Leftover", "Marked", "feed", "part_stream", "work"]

# (item layer) A worker's outputs of one input item are complete: the merge moves to the next worker.
RECORD_MARK = 16


class _Forwarded(Exception):
    """(worker) The feeder's error record, passed on to the consumer unchanged."""

    def __init__(self, payload: bytes) -> None:
        super().__init__("an error in the feeder")
        self.payload = payload


def work(
    recipe: bytes,
    handle: RingHandle,
    parent_pid: int,
    inbox: RingHandle | None,
    stack: Any,
    pool_handle: PoolHandle | None = None,
) -> None:
    """A worker's life: load the recipe, say ready, write every item, then the end (or the error).

    ``inbox``: the ring the feeder deals this worker's input items into.
    ``stack``: where to write this worker's stack when the consumer asks (a timeout).
    ``pool_handle``: where to make the pool whose blocks the consumer gets
    large arrays in (``None``: everything through the ring, copied out).
    """
    ignore_interrupts()
    dump_stack_on_signal(stack)
    alive = watch_parent(parent_pid)
    with exit_when_out_of_descriptors():  # (under fork a worker starts with all its parent's)
        ring = Ring.attach(handle)
        fed = Ring.attach(inbox) if inbox is not None else None
    pool = None
    try:
        if pool_handle is not None:
            try:
                pool = Pool(pool_handle, ring.capacity)
            except OSError as error:  # shared memory short: everything through the ring
                pool_handle.sock.close()
                ring.put(RECORD_SHORT, str(error).encode(), alive=alive)
        try:
            plan_part, grouped, ctx, start = loads_recipe(recipe)
        except BaseException as error:
            try:
                raise WorkerError(f"a background worker could not load its pipeline: {error!r}") from error
            except WorkerError as wrapped:
                send_error(ring, wrapped, alive)
            return
        ring.put(RECORD_READY, b"", alive=alive)
        rest: list[Any] = []
        stream = _worker_stream(plan_part, grouped, ring, fed, alive, rest.extend)
        encoder = Encoder(pool)
        try:
            _write_all(stream, ctx, start, encoder, ring, alive, rest.extend)
            if rest:
                encoder.write(ring, Leftover(rest), alive)
        except Stopped:
            raise
        except _Forwarded as forwarded:
            ring.put(RECORD_ERROR, forwarded.payload, alive=alive)
            return
        except BaseException as error:
            send_error(ring, error, alive)
            return
        ring.put(RECORD_END, b"", alive=alive)
    except Stopped:
        pass
    finally:
        ring.close()
        if fed is not None:
            fed.close()
        if pool is not None:
            pool.close()


def _write_all(
    stream: Stream[Any],
    ctx: SeedContext,
    start: int,
    encoder: Encoder,
    ring: Ring,
    alive: Any,
    keep: Callable[[list[Any]], None],
) -> None:
    """Write every item of ``stream`` from item ``start`` on (a resumed pass) into ``ring``.

    Where the stream ends in ``batch`` (on a new axis), the worker stacks
    each batch's samples straight into ring memory, one pass over their bytes
    instead of stacking into a fresh array and copying that: row slices of
    ``from_arrays``, or the samples that the operators below yield when they
    are arrays or flat dicts of arrays of one layout. Anything else is stacked
    as ``batch`` does (and raises what it raises). A batch that keeps its
    rest (``keeping_rest``) gives its short last group to ``keep``.
    """
    batching = new_axis_batch(stream.op) if isinstance(stream, Applied) else None
    if batching is None:
        encoder.write_all(ring, stream._open_at(ctx, start) if start else stream._open(ctx), alive)
        return
    assert isinstance(stream, Applied)
    size, partial = batching
    keeps = is_keeping_rest(stream.op)
    upstream = stream.upstream
    row_batches = upstream._row_batches(size, partial, start * size)
    if row_batches is not None:
        for item in row_batches:
            if keeps and batch_length(item) < size:
                keep(list(rows(item)))
                return
            encoder.write_columns(ring, item, alive)
        return
    for samples in _sample_groups(from_item(upstream, start * size), ctx, size, partial):
        if keeps and len(samples) < size:
            keep(samples)
            return
        if not encoder.write_stacked(ring, samples, alive):
            encoder.write(ring, stack(samples), alive)
        del samples


def _sample_groups(upstream: Stream[Any], ctx: SeedContext, size: int, partial: bool) -> Iterator[list[Any]]:
    # A generator, like _run: nothing is opened before the first next().
    yield from sample_groups(upstream._open(ctx), size, partial)


def _worker_stream(
    part: Part, grouped: bool, ring: Ring, fed: Ring | None, alive: Any, keep: Callable[[list[Any]], None]
) -> Stream[Any]:
    """The stream a worker runs: its part's operators over its source or over the feeder's items."""
    source = part.source
    if source is None:
        assert fed is not None

        def waiting(alive: Callable[[], bool] = alive) -> bool:  # for the feeder's next item
            return not ring.stop_requested() and alive()

        source = _Fed(functools.partial(_fed_items, fed, waiting), part.depth, part.dealt)
    if grouped:
        source = Marked(source, functools.partial(ring.put, RECORD_MARK, b"", alive=alive))
    return part_stream(part, source, keep)


def part_stream(part: Part, source: Stream[Any], keep: Callable[[list[Any]], None]) -> Stream[Any]:
    """``part``'s operators over ``source``; its batch that pools its rest (``Part.rest``) gives it to
    ``keep``, which the part sends last, as a :class:`Leftover`."""
    ops = list(part.ops)
    if part.rest is not None:
        ops[part.rest] = keeping_rest(ops[part.rest], keep)
    return rebuild(source, ops)


@dataclass(frozen=True)
class Leftover:
    """(item layer) A part's last item where its batch pools its rest: the short last group of samples.

    The consumer pools them all and batches them at the end of the pass (``_divide.Plan.rest_stream``).
    """

    samples: list[Any]


@dataclass(frozen=True, repr=False, eq=False)
class _Fed(Stream[Any]):
    """(worker) The items the feeder deals this worker, as a source for the operators above the head."""

    items: Callable[[], Iterator[Any]]
    depth: int = 0
    dealt: tuple[int, int] | None = None  # this worker gets the head's items i, i + k, ...

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return self.items()

    def _numbering(self) -> tuple[int, int] | None:
        return self.dealt

    def _describe(self) -> str:
        return "<items from the feeder>"


@dataclass(frozen=True, repr=False, eq=False)
class Marked(Stream[Any]):
    """(worker) ``source``, calling ``mark()`` when the operators above ask for the next item.

    They are per-item (or gather items in order), so by then all that the
    previous item led to has been written. The mark goes before the next item
    is fetched, so a slow source never holds back outputs already made.
    """

    source: Stream[Any]
    mark: Callable[[], None]

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.source.depth

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return (self.source,)

    def _numbering(self) -> tuple[int, int] | None:
        return self.source._numbering()

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _marked(self.source._open(ctx), self.mark)

    def _describe(self) -> str:
        return f"{self.source!r} | <marked>"


def _marked(items: Iterator[Any], mark: Callable[[], None]) -> Iterator[Any]:
    for item in items:
        yield item
        mark()  # asked for the next item: everything this one led to has been written


def _fed_items(fed: Ring, alive: Any) -> Iterator[Any]:
    """(worker) The items the feeder deals this worker, until its end record.

    ``alive`` turns false when the consumer asks this worker to stop: a worker
    waiting for the feeder's next item then stops (``Stopped``) at once.
    """
    decoder = Decoder()
    while True:
        if decoder.pending:
            yield decoder.pending.popleft()
            continue
        record = fed.get(alive)
        if record is None:
            raise Stopped
        kind, metadata, buffers = record
        if kind in (RECORD_ARRAYS, RECORD_DATA):
            yield decoder.read(fed, kind, metadata, buffers)
        elif kind == RECORD_END:
            fed.release()
            return
        elif kind == RECORD_ERROR:
            payload = bytes(metadata)
            fed.release()
            raise _Forwarded(payload)
        else:
            fed.release()


def feed(recipe: bytes, handles: list[RingHandle], parent_pid: int, stack: Any, done: Any) -> None:
    """The feeder's life: run the head of the pipeline once, dealing its items to the workers in turn.

    ``done``: the pipe through which it says it has dealt everything (its exit
    status says nothing: the head is your code, which may leave with any).
    """
    ignore_interrupts()
    dump_stack_on_signal(stack)
    alive = watch_parent(parent_pid)
    with exit_when_out_of_descriptors():
        rings = [Ring.attach(handle) for handle in handles]
    ended: set[int] = set()
    try:
        turn = 0
        try:
            try:
                stream, ctx = loads_recipe(recipe)
            except BaseException as error:
                raise WorkerError(f"the feeder could not load its pipeline: {error!r}") from error
            encoders = [Encoder() for _ in rings]
            for item in _run(stream, ctx):
                encoders[turn].write(rings[turn], item, alive)
                turn = turn + 1 if turn + 1 < len(rings) else 0
        except Stopped:
            raise
        except BaseException as error:
            send_error(rings[turn], error, alive)
            ended.add(turn)
        for index, ring in enumerate(rings):
            if index not in ended:
                ring.put(RECORD_END, b"", alive=alive)
        say_done(done)
    except Stopped:
        pass
    finally:
        for ring in rings:
            ring.close()
