"""``background``: run the upstream pipeline in worker processes, items back through shared memory.

This module joins the layers: it divides the stream among workers, sends
each worker its part (by cloudpickle), turns items into ring records and back
(arrays and flat dicts of arrays as raw bytes plus a layout sent once, other
items by pickle protocol 5 with array bytes out of band; either way copied
once by the worker straight into the ring), merges the workers' outputs in a
deterministic order, and makes sure that every way out of the loop stops the
workers and frees the shared memory.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import reprlib
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle

from ._check import check_bool, check_int
from ._ipc.codec import Decoder, Encoder, RemoteTraceback, dumps_recipe, load_error, loads_recipe, send_error
from ._ipc.ring import (
    RECORD_ARRAYS,
    RECORD_DATA,
    RECORD_END,
    RECORD_ERROR,
    RECORD_GROW,
    RECORD_READY,
    SHM_DIR,
    Ring,
    RingHandle,
    Stopped,
)
from ._ipc.workers import Workers, default_start_method, ignore_interrupts, parent_alive
from ._seed import SeedContext
from ._stream import Applied, Operator, Stream, _run
from .errors import WorkerError
from .mux import _Picker

__all__ = ["background"]

START_METHODS = ("fork", "forkserver", "spawn")
# The default ring per worker (shrunk to fit half of the free shared memory): small, so
# that reserving it is quick; it grows when a sample needs more.
_DEFAULT_RING_BYTES = 8 * 2**20
_MIN_RING_BYTES = 2**20
# Branch of the seed tree that the workers' parts hang from, and the fixed
# seed of the weighted merge (combined with the pass seed).
_WORKER_BRANCH = 0x6267
_MERGE_SEED = 0x6D65


# ---------------------------------------------------------------- dividing the work


@dataclass(frozen=True, repr=False, eq=False)
class _Strided(Stream[Any]):
    """Every ``count``-th item of ``stream`` from ``index`` on, all parts drawn from one seed."""

    stream: Stream[Any]
    index: int
    count: int
    ctx: SeedContext  # the pass's context, the same in every worker so all see the same items

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return itertools.islice(_run(self.stream, self.ctx), self.index, None, self.count)

    def _describe(self) -> str:
        return f"{self.stream!r} | <every {self.count}th item from {self.index}>"


def _part(stream: Stream[Any], index: int, count: int, ctx: SeedContext) -> tuple[Stream[Any], float | None]:
    """Worker ``index``'s part of ``stream``, split as low as the operators above allow."""
    if isinstance(stream, Applied) and stream.op._splittable:
        inner, weight = _part(stream.upstream, index, count, ctx)
        return Applied(inner, stream.op), weight
    divided = stream._divide(index, count)
    if divided is not None:
        return divided
    return _Strided(stream, index, count, ctx), None


def _components(stream: Stream[Any]) -> Iterator[object]:
    """The operators and sources a pipeline is made of, outermost first."""
    if isinstance(stream, Applied):
        yield stream.op
        yield from _components(stream.upstream)
        return
    inner = getattr(stream, "streams", None)
    if isinstance(inner, tuple):
        for sub in inner:
            yield from _components(sub)
    yield stream


def _recipe(stream: Stream[Any], ctx: SeedContext) -> bytes:
    """The bytes a worker needs; a clear error naming the piece that cannot be pickled."""
    try:
        return dumps_recipe((stream, ctx))
    except Exception as error:
        culprit: object = stream
        for piece in _components(stream):
            try:
                cloudpickle.dumps(piece)
            except Exception:
                culprit = piece
                break
        raise TypeError(
            f"background: cannot send the pipeline to worker processes: {reprlib.repr(culprit)} "
            f"could not be pickled ({type(error).__name__}: {error})"
        ) from error


# ---------------------------------------------------------------- the worker


def _work(recipe: bytes, handle: RingHandle, parent_pid: int) -> None:
    """A worker's life: load the recipe, say ready, write every item, then the end (or the error)."""
    ignore_interrupts()
    alive = parent_alive(parent_pid)
    ring = Ring.attach(handle)
    try:
        try:
            stream, ctx = loads_recipe(recipe)
        except BaseException as error:
            try:
                raise WorkerError(f"a background worker could not load its pipeline: {error!r}") from error
            except WorkerError as wrapped:
                send_error(ring, wrapped, alive)
            return
        ring.put(RECORD_READY, b"", alive=alive)
        encoder = Encoder()
        try:
            for item in _run(stream, ctx):
                encoder.write(ring, item, alive)
        except Stopped:
            raise
        except BaseException as error:
            send_error(ring, error, alive)
            return
        ring.put(RECORD_END, b"", alive=alive)
    except Stopped:
        pass
    finally:
        ring.close()


# ---------------------------------------------------------------- the consumer


def _ring_bytes(requested: int | None, workers: int) -> int:
    if requested is not None:
        return requested
    free = shutil.disk_usage(SHM_DIR).free
    return max(_MIN_RING_BYTES, min(_DEFAULT_RING_BYTES, free // (2 * workers)))


def _raise_remote(metadata: memoryview, index: int) -> None:
    error, text = load_error(metadata)
    if error is None:
        raise WorkerError(f"background worker {index} raised an error that cannot be sent back: {text}")
    error.__cause__ = RemoteTraceback(f"\n\nraised in background worker {index}:\n\n{text}")
    raise error


def _background_items(op: _Background, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
    if multiprocessing.current_process().daemon:
        raise WorkerError(
            "background: a background worker cannot start workers of its own; keep one "
            "pf.background in a pipeline, at its end"
        )
    count = op.workers
    if count == 1:
        parts: list[tuple[Stream[Any], float | None]] = [(upstream, None)]
        contexts = [ctx]
    else:
        parts = [_part(upstream, i, count, ctx) for i in range(count)]
        contexts = [ctx.child(_WORKER_BRANCH, i) for i in range(count)]
    recipes = [_recipe(stream, part_ctx) for (stream, _), part_ctx in zip(parts, contexts)]
    weights = [w for _, w in parts]
    workers = Workers(op.start_method or default_start_method())
    rings: list[Ring] = []
    try:
        capacity = _ring_bytes(op.ring_bytes, count)
        for _ in range(count):
            try:
                rings.append(Ring.create(capacity, workers.semaphore))
            except OSError as error:
                raise WorkerError(str(error.strerror or error)) from error
        workers.start(_work, [(recipes[i], rings[i].handle, os.getpid()) for i in range(count)])
        channels = [_Channel(i, rings, workers, op.zero_copy) for i in range(count)]
        yield from _merge(channels, weights, ctx.generator(_MERGE_SEED, depth))
    finally:
        for ring in rings:
            ring.request_stop()
        workers.stop()
        for ring in rings:
            ring.unlink()
            ring.close()


def _merge(channels: list[_Channel], weights: list[float | None], rng: Any) -> Iterator[Any]:
    """Yield the workers' items: in turn, or (for divided weighted muxes) in proportion to their weights."""
    live = list(range(len(channels)))
    picker = _Picker([w or 0.0 for w in weights], rng) if any(w is not None for w in weights) else None
    turn = 0
    while live:
        if picker is None:
            turn %= len(live)
            index = live[turn]
            turn += 1
        elif picker.any_left:
            index = picker.pick()
        else:
            return
        item = channels[index].next_item()
        if item is not _ENDED:
            yield item
            continue
        live.remove(index)
        turn -= 1
        if picker is not None and live:
            picker.drop(index)


_ENDED = object()


class _Channel:
    """The consumer's end of one worker: its ring, its decoder, and how to tell it is alive."""

    def __init__(self, index: int, rings: list[Ring], workers: Workers, zero_copy: bool) -> None:
        self.index = index
        self.rings = rings  # shared with the caller, who frees them: a grown ring replaces its entry
        self.workers = workers
        self.decoder = Decoder(zero_copy)
        self.alive = functools.partial(workers.alive, index)

    def next_item(self) -> Any:
        """The worker's next item, or ``_ENDED``; handles the records that carry no item."""
        pending = self.decoder.pending
        if pending:
            return pending.popleft()
        while True:
            ring = self.rings[self.index]
            record = ring.get(self.alive)
            if record is None:
                raise self.workers.failure(self.index)
            kind, metadata, buffers = record
            if kind in (RECORD_ARRAYS, RECORD_DATA):
                return self.decoder.read(ring, kind, metadata, buffers)
            if kind == RECORD_END:
                ring.release()
                return _ENDED
            if kind == RECORD_ERROR:
                _raise_remote(metadata, self.index)
            if kind == RECORD_GROW:
                self.rings[self.index] = _grown(ring, metadata)
            else:  # RECORD_READY
                ring.release()


def _grown(ring: Ring, request: memoryview) -> Ring:
    """Answer a worker's request for a larger ring: make it, tell the worker, drop the old one."""
    (needed,) = struct.unpack("<Q", request)
    capacity = max(2 * ring.capacity, 2 * needed)
    try:
        larger = Ring.create(capacity, lambda value: None, signals=ring.handle)
    except OSError as error:
        raise WorkerError(
            f"background: a sample needs {needed / 2**20:.1f} MiB of ring: {error.strerror}"
        ) from error
    ring.offer(larger)
    ring.release()
    ring.close()
    return larger


@dataclass(frozen=True, repr=False)
class _Background(Operator[Any, Any]):
    workers: int
    ring_bytes: int | None
    zero_copy: bool
    start_method: str | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _background_items(self, upstream, ctx, depth)

    def __repr__(self) -> str:
        options = [f"workers={self.workers}"]
        if self.ring_bytes is not None:
            options.append(f"ring_bytes={self.ring_bytes}")
        if self.zero_copy:
            options.append("zero_copy=True")
        if self.start_method is not None:
            options.append(f"start_method={self.start_method!r}")
        return f"background({', '.join(options)})"


def background(
    workers: int = 1,
    *,
    ring_bytes: int | None = None,
    zero_copy: bool = False,
    start_method: str | None = None,
) -> Operator[Any, Any]:
    """Run everything upstream in ``workers`` processes; items come back through shared memory.

    Nothing starts until an iterator is opened; closing it (end of stream,
    ``break``, ``close()``, garbage collection, an exception, Ctrl-C) stops the
    workers and frees the shared memory. With several workers the stream is
    divided among them (the sources of a mux, the items of a collection or
    of an array; otherwise every ``workers``-th item), each finite item comes
    out exactly once, and the same seed gives the same order.

    Args:
        workers: number of worker processes.
        ring_bytes: shared memory per worker (default 8 MiB, less if
            ``/dev/shm`` is small); it grows when a sample needs more.
        zero_copy: yield read-only array views into the ring, valid until the
            next item, instead of arrays the consumer owns.
        start_method: ``"fork"``, ``"forkserver"`` or ``"spawn"``; the default
            is ``fork`` in a single-threaded process, else ``forkserver``.

    >>> import numpy as np, pescador_fp as pf
    >>> s = pf.from_iterable(range(6)) | pf.map(lambda i: np.full(3, i)) | pf.background(workers=2)
    >>> [int(x[0]) for x in s]
    [0, 1, 2, 3, 4, 5]
    """
    workers = check_int("background", "workers", workers, 1)
    if ring_bytes is not None:
        ring_bytes = check_int("background", "ring_bytes", ring_bytes, 4096)
    if start_method is not None and start_method not in START_METHODS:
        raise ValueError(
            f"background: start_method must be one of {', '.join(map(repr, START_METHODS))} or None, "
            f"got {start_method!r}"
        )
    return _Background(workers, ring_bytes, check_bool("background", "zero_copy", zero_copy), start_method)
