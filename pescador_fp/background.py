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

import collections
import functools
import itertools
import multiprocessing
import os
import pickle
import reprlib
import shutil
import struct
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np

from ._check import check_bool, check_int
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


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


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
        return bytes(cloudpickle.dumps((stream, ctx)))
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


# ---------------------------------------------------------------- items to records and back


_NO_BYTES = memoryview(b"")


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, as a flat byte view."""
    return array.data.cast("B") if array.size else _NO_BYTES


class _ArrayCodec:
    """A compact encoding for the common items, arrays and flat dicts of arrays.

    Pickling a small array costs more than moving it, so such items travel as
    their raw bytes plus a layout (dtype and shape per array, and the keys),
    and the layout is sent only when it changes. Anything else (nested
    structures, scalars, object or non-contiguous arrays) is pickled.
    """

    def __init__(self) -> None:
        self.sent: Any = None  # the layout the other side last received
        self.received: Any = None

    def repeats(self, array: np.ndarray) -> bool:
        """Whether ``array`` has the layout the other side already has (a quick check)."""
        sent = self.sent
        return (
            sent is not None
            and not sent[0]
            and array.dtype is sent[1]
            and array.shape == sent[2]
            and array.flags.c_contiguous
            and array.size > 0
        )

    def encode(self, item: Any) -> tuple[bytes, list[memoryview]] | None:
        kind = type(item)
        if kind is np.ndarray:
            if item.dtype.hasobject or not item.flags.c_contiguous:
                return None
            layout: Any = (False, item.dtype, item.shape)
            views = [_bytes_of(item)]
        elif kind is dict:
            fields = []
            views = []
            for key, value in item.items():
                if type(value) is not np.ndarray or value.dtype.hasobject or not value.flags.c_contiguous:
                    return None
                fields.append((key, value.dtype, value.shape))
                views.append(_bytes_of(value))
            layout = (True, tuple(fields))
        else:
            return None
        if layout == self.sent:
            return b"", views
        self.sent = layout
        return pickle.dumps(layout), views

    def single(self) -> tuple[Any, tuple[int, ...]] | None:
        """The dtype and shape of the last layout, if it was a single array."""
        layout = self.received
        return None if layout is None or layout[0] else (layout[1], layout[2])

    def decode(self, metadata: memoryview, buffers: list[Any]) -> Any:
        layout = self.received = pickle.loads(metadata) if len(metadata) else self.received
        if not layout[0]:
            flat = np.frombuffer(buffers[0], layout[1])
            return flat if len(layout[2]) == 1 else flat.reshape(layout[2])
        return {
            key: np.frombuffer(data, dtype).reshape(shape)
            for (key, dtype, shape), data in zip(layout[1], buffers)
        }


# Small arrays that follow one another in the ring with one layout are copied out
# together, up to this many at a time.
_RUN_ITEMS = 256
_RUN_ITEM_BYTES = 16 * 2**10


def _decode_run(ring: Ring, nbytes: int, dtype: Any, shape: tuple[int, ...]) -> list[Any]:
    """Copy a run of single-array records with one layout out of the ring, in one numpy copy."""
    count, stride, offset, region = ring.run_after(_RUN_ITEMS)
    rows = np.frombuffer(region, np.uint8).reshape(count, stride)[:, offset : offset + nbytes]
    block = np.array(rows).view(dtype).reshape((count, *shape))
    ring.release_run(count, stride)
    return list(block)


# ---------------------------------------------------------------- the worker


def _send_error(ring: Ring, error: BaseException, alive: Any) -> None:
    text = traceback.format_exc()
    try:
        payload = cloudpickle.dumps((error, text))
        pickle.loads(payload)  # it must also come back to life on the other side
    except Exception:
        payload = pickle.dumps((None, f"{type(error).__qualname__}: {error}", text))
    ring.put(RECORD_ERROR, payload, alive=alive)


def _work(recipe: bytes, handle: RingHandle, parent_pid: int) -> None:
    """A worker's life: load the recipe, say ready, write every item, then the end (or the error)."""
    ignore_interrupts()
    alive = parent_alive(parent_pid)
    ring = Ring.attach(handle)
    try:
        try:
            stream, ctx = cloudpickle.loads(recipe)
        except BaseException as error:
            try:
                raise WorkerError(f"a background worker could not load its pipeline: {error!r}") from error
            except WorkerError as wrapped:
                _send_error(ring, wrapped, alive)
            return
        ring.put(RECORD_READY, b"", alive=alive)
        codec = _ArrayCodec()
        try:
            for item in _run(stream, ctx):
                if (
                    type(item) is np.ndarray
                    and codec.repeats(item)
                    and ring.put_again(RECORD_ARRAYS, _bytes_of(item))
                ):
                    continue
                encoded = codec.encode(item)
                if encoded is not None:
                    ring.put(RECORD_ARRAYS, encoded[0], encoded[1], alive)
                    continue
                buffers: list[pickle.PickleBuffer] = []
                metadata = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
                ring.put(RECORD_DATA, metadata, [b.raw() for b in buffers], alive)
        except Stopped:
            raise
        except BaseException as error:
            _send_error(ring, error, alive)
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
    error, text = _load_error(metadata)
    if error is None:
        raise WorkerError(f"background worker {index} raised an error that cannot be sent back: {text}")
    error.__cause__ = _RemoteTraceback(f"\n\nraised in background worker {index}:\n\n{text}")
    raise error


def _load_error(metadata: memoryview) -> tuple[BaseException | None, str]:
    try:
        loaded = pickle.loads(metadata)
    except Exception as error:
        return None, f"(it could not be unpickled: {error})"
    if loaded[0] is None:
        return None, f"{loaded[1]}\n\n{loaded[2]}"
    return loaded[0], loaded[1]


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
        yield from _merge(rings, workers, weights, ctx.generator(_MERGE_SEED, depth), op.zero_copy)
    finally:
        for ring in rings:
            ring.request_stop()
        workers.stop()
        for ring in rings:
            ring.unlink()
            ring.close()


def _merge(
    rings: list[Ring], workers: Workers, weights: list[float | None], rng: Any, zero_copy: bool
) -> Iterator[Any]:
    """Yield the workers' items: in turn, or (for divided weighted muxes) in proportion to their weights."""
    live = list(range(len(rings)))
    codecs = [_ArrayCodec() for _ in rings]
    checks = [functools.partial(workers.alive, i) for i in range(len(rings))]
    pendings: list[collections.deque[Any]] = [collections.deque() for _ in rings]
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
        item = _next_item(rings, index, workers, zero_copy, codecs[index], checks[index], pendings[index])
        if item is not _ENDED:
            yield item
            continue
        live.remove(index)
        turn -= 1
        if picker is not None and live:
            picker.drop(index)


_ENDED = object()


def _next_item(
    rings: list[Ring],
    index: int,
    workers: Workers,
    zero_copy: bool,
    codec: _ArrayCodec,
    alive: Any,
    pending: collections.deque[Any],
) -> Any:
    """Worker ``index``'s next item, or ``_ENDED``; handles the records that carry no item."""
    if pending:
        return pending.popleft()
    while True:
        ring = rings[index]
        record = ring.get(alive)
        if record is None:
            raise workers.failure(index)
        kind, metadata, buffers = record
        if kind in (RECORD_ARRAYS, RECORD_DATA):
            arrays = kind == RECORD_ARRAYS
            single = (
                codec.single()
                if arrays and not zero_copy and not len(metadata) and len(buffers) == 1
                else None
            )
            if single is not None and 0 < buffers[0].nbytes <= _RUN_ITEM_BYTES:
                items = _decode_run(ring, buffers[0].nbytes, *single)
                pending.extend(items[1:])
                return items[0]
            # Zero-copy: read-only views into the ring, freed when the next item is asked for.
            views: list[Any] = [b.toreadonly() if zero_copy else bytearray(b) for b in buffers]
            item = codec.decode(metadata, views) if arrays else pickle.loads(metadata, buffers=views)
            if not zero_copy:
                ring.release()
            return item
        if kind == RECORD_END:
            ring.release()
            return _ENDED
        if kind == RECORD_ERROR:
            _raise_remote(metadata, index)
        if kind == RECORD_GROW:
            rings[index] = _grown(ring, metadata)
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
