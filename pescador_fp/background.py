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

import multiprocessing
import os
import reprlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any

import cloudpickle

from ._check import check_bool, check_int, check_seconds
from ._divide import components, divide
from ._ipc.codec import Decoder, RemoteTraceback, dumps_recipe, load_error
from ._ipc.ring import (
    RECORD_ARRAYS,
    RECORD_DATA,
    RECORD_END,
    RECORD_ERROR,
    Ring,
    default_transport,
    shared_memory_free,
)
from ._ipc.workers import Workers, default_start_method, stack_of
from ._sampling import Picker
from ._seed import MERGE_SEED, SeedContext
from ._stream import Operator, Stream
from ._worker import RECORD_MARK, feed, work
from .errors import PescadorError, WorkerError

__all__ = ["background"]

START_METHODS = ("fork", "forkserver", "spawn")
# The default ring per worker (shrunk to fit half of the free shared memory): small, so
# that reserving it is quick; it grows when a sample needs more.
_DEFAULT_RING_BYTES = 8 * 2**20
_MIN_RING_BYTES = 2**20
_MAX_RING_BYTES = 2**56  # far more than any shared memory, and far from overflowing an offset


# ---------------------------------------------------------------- recipes


def _recipe(recipe: tuple[Any, ...], whole: Stream[Any]) -> bytes:
    """The bytes a worker needs; a clear error naming the piece of ``whole`` that cannot be pickled."""
    try:
        return dumps_recipe(recipe)
    except (OSError, PescadorError):
        raise  # a source that checks its own files (a memmap's) says what is wrong
    except Exception as error:
        culprit: object = whole
        for piece in components(whole):
            try:
                cloudpickle.dumps(piece)
            except Exception:
                culprit = piece
                break
        raise TypeError(
            f"background: cannot send the pipeline to worker processes: {reprlib.repr(culprit)} "
            f"could not be pickled ({type(error).__name__}: {error})"
        ) from error


# ---------------------------------------------------------------- the consumer


def _ring_bytes(requested: int | None, workers: int) -> int:
    if requested is not None:
        return requested
    free = shared_memory_free()
    if free is None:  # macOS, Windows: no separate limit on shared memory
        return _DEFAULT_RING_BYTES
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
    plan = divide(upstream, op.workers)
    count = len(plan.parts)
    recipes = [
        _recipe((part, plan.grouped, plan.context(i, ctx)), upstream) for i, part in enumerate(plan.parts)
    ]
    feeder_recipe = _recipe((plan.head, ctx), upstream) if plan.head is not None else None
    workers = Workers(op.start_method or default_start_method())
    if os.name == "posix" and (
        workers.context.get_start_method() != "fork" or default_transport() == "portable"
    ):
        # Named semaphores and segments are registered with multiprocessing's resource tracker,
        # which removes them if this process is killed: start it before any name exists.
        resource_tracker.ensure_running()
    rings: list[Ring] = []
    inboxes: list[Ring] = []
    stacks: list[tuple[Any, Any]] = []
    try:
        capacity = _ring_bytes(op.ring_bytes, count)
        for _ in range(count):
            try:
                rings.append(Ring.create(capacity, workers.semaphore, creator_consumes=True))
                if plan.fed:
                    inboxes.append(Ring.create(capacity, workers.semaphore))
            except OSError as error:
                raise WorkerError(
                    f"background: {error.strerror or error}; free shared memory or pass a smaller ring_bytes"
                ) from error
        parent = os.getpid()
        stacks = [workers.context.Pipe(duplex=False) for _ in range(count + plan.fed)] if op.timeout else []
        workers.start(
            work,
            [
                (
                    recipes[i],
                    rings[i].handle,
                    parent,
                    inboxes[i].handle if inboxes else None,
                    stacks[i][1] if stacks else None,
                )
                for i in range(count)
            ],
        )
        if feeder_recipe is not None:
            handles = [inbox.handle for inbox in inboxes]
            feeder_args = (feeder_recipe, handles, parent, stacks[-1][1] if stacks else None)
            workers.start(feed, [feeder_args], name="pescador_fp-feeder")
        for _, writer in stacks:
            writer.close()
        channels = [
            _Channel(i, rings, workers, op, count if plan.fed else None, [reader for reader, _ in stacks])
            for i in range(count)
        ]
        if plan.grouped:
            yield from _merge_groups(channels)
        else:
            weights = [part.weight for part in plan.parts]
            yield from _merge(channels, weights, ctx.generator(MERGE_SEED, depth))
    finally:
        for ring in rings + inboxes:
            ring.request_stop()
        workers.stop()
        for ring in rings + inboxes:
            ring.unlink()
            ring.close()
        for reader, _ in stacks:
            reader.close()


def _merge(channels: list[_Channel], weights: list[float | None], rng: Any) -> Iterator[Any]:
    """Yield the workers' items: in turn, or (for divided weighted muxes) in proportion to their weights."""
    live = list(range(len(channels)))
    picker = Picker([w or 0.0 for w in weights], rng) if any(w is not None for w in weights) else None
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


def _merge_groups(channels: list[_Channel]) -> Iterator[Any]:
    """Yield the workers' outputs group by group in turn: the order of the undivided stream."""
    live = list(range(len(channels)))
    turn = 0
    while live:
        turn %= len(live)
        channel = channels[live[turn]]
        while True:
            item = channel.next_item()
            if item is _MARK:
                turn += 1
                break
            if item is _ENDED:
                del live[turn]
                break
            yield item


_ENDED = object()
_MARK = object()


class _Channel:
    """The consumer's end of one worker: its ring, its decoder, and whether it (and the feeder) lives."""

    def __init__(
        self,
        index: int,
        rings: list[Ring],
        workers: Workers,
        op: _Background,
        feeder: int | None,
        stacks: list[Any],
    ) -> None:
        self.index = index
        self.rings = rings  # shared with the caller, who frees them: a grown ring replaces its entry
        self.workers = workers
        self.decoder = Decoder(op.zero_copy)
        self.feeder = feeder
        self.timeout = op.timeout
        self.deadline = 0.0
        self.started = False  # the worker has loaded its pipeline: the timeout counts from then
        self.stacks = stacks  # per process (the feeder's last): where its stack comes, on a signal

    def alive(self) -> bool:
        """Whether the worker (and the feeder, where there is one) may still send something."""
        if self.timeout is not None and self.started and time.monotonic() > self.deadline:
            raise self.stalled(self.timeout)
        feeder = self.feeder
        if feeder is not None and not self.workers.alive(feeder) and self.workers.processes[feeder].exitcode:
            raise _renamed(self.workers.failure(feeder), feeder, "the feeder")
        return self.workers.alive(self.index)

    def stalled(self, timeout: float) -> WorkerError:
        """The error for a worker that sent nothing for ``timeout`` seconds, saying where it is stuck."""
        process = self.workers.processes[self.index]
        frames = stack_of(process, self.stacks[self.index] if self.stacks else None)
        if self.feeder is not None and any(frame.endswith(" in _fed_items") for frame in frames):
            feeder = self.workers.processes[self.feeder]
            where = _where(stack_of(feeder, self.stacks[self.feeder] if self.stacks else None))
            return WorkerError(
                f"background: the feeder (pid {feeder.pid}) gave worker {self.index} nothing for "
                f"{timeout:g} s (timeout={timeout:g}){where}"
            )
        return WorkerError(
            f"background worker {self.index} (pid {process.pid}) sent nothing for {timeout:g} s "
            f"(timeout={timeout:g}){_where(frames)}"
        )

    def next_item(self) -> Any:
        """The worker's next item, ``_MARK`` or ``_ENDED``; handles the records that carry no item."""
        pending = self.decoder.pending
        if pending:
            return pending.popleft()
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout
        while True:
            ring = self.rings[self.index]
            try:
                record = ring.get(self.alive)  # answers a request for a larger ring itself
            except OSError as error:
                raise WorkerError(
                    f"background worker {self.index} has a sample larger than its ring, and the ring "
                    f"cannot grow: {error.strerror or error}"
                ) from error
            if record is None:
                raise self.workers.failure(self.index)
            kind, metadata, buffers = record
            if kind in (RECORD_ARRAYS, RECORD_DATA):
                return self.decoder.read(ring, kind, metadata, buffers)
            if kind == RECORD_MARK:
                ring.release()
                return _MARK
            if kind == RECORD_END:
                ring.release()
                return _ENDED
            if kind == RECORD_ERROR:
                _raise_remote(metadata, self.index)
            else:  # RECORD_READY
                ring.release()
                self.started = True
                if self.timeout is not None:
                    self.deadline = time.monotonic() + self.timeout


def _renamed(error: WorkerError, index: int, name: str) -> WorkerError:
    """``error`` about process ``index``, saying ``name`` instead of "background worker <index>"."""
    return WorkerError(str(error).replace(f"background worker {index}", f"background: {name}", 1))


def _where(frames: list[str]) -> str:
    """The user's frames among ``frames``, innermost first, for an error message."""
    package = os.path.dirname(os.path.abspath(__file__))
    users = [frame for frame in frames if package not in frame]
    if not users:
        return ""
    return f"; it is in {users[0]}\nits code, most recent call first:" + "".join(f"\n  {f}" for f in users)


@dataclass(frozen=True, repr=False)
class _Background(Operator[Any, Any]):
    workers: int
    ring_bytes: int | None
    zero_copy: bool
    start_method: str | None
    timeout: float | None = None

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
        if self.timeout is not None:
            options.append(f"timeout={self.timeout:g}")
        return f"background({', '.join(options)})"


def background(
    workers: int = 1,
    *,
    ring_bytes: int | None = None,
    zero_copy: bool = False,
    start_method: str | None = None,
    timeout: object = None,
) -> Operator[Any, Any]:
    """Run everything upstream in ``workers`` processes; items come back through shared memory.

    Nothing starts until an iterator is opened; closing it (end of stream,
    ``break``, ``close()``, garbage collection, an exception, Ctrl-C) stops the
    workers and frees the shared memory. With several workers the stream is
    divided among them (the sources of a mux, the items of a collection or
    the rows of arrays, each in one worker); where nothing can be divided, a
    feeder process runs the undividable part once and deals its items to the
    workers, which run the operators above it. Either way each item of a
    finite stream comes out exactly once, and the same seed gives the same
    output.

    Args:
        workers: number of worker processes.
        ring_bytes: shared memory per worker (default 8 MiB, less if
            ``/dev/shm`` is small); it grows when a sample needs more.
        zero_copy: yield read-only array views into the ring, valid until the
            next item, instead of arrays the consumer owns.
        start_method: ``"fork"``, ``"forkserver"`` or ``"spawn"``; the default
            is ``fork`` in a single-threaded process, else ``forkserver``.
        timeout: seconds to wait for a worker's next item (counted from the
            moment it has loaded its pipeline) before raising
            :class:`~pescador_fp.WorkerError` that names the worker and where
            its code is stuck; ``None`` (the default) waits as long as it takes.

    >>> import numpy as np, pescador_fp as pf
    >>> s = pf.from_iterable(range(6)) | pf.map(lambda i: np.full(3, i)) | pf.background(workers=2)
    >>> [int(x[0]) for x in s]
    [0, 1, 2, 3, 4, 5]
    """
    workers = check_int("background", "workers", workers, 1)
    if ring_bytes is not None:
        ring_bytes = check_int("background", "ring_bytes", ring_bytes, 4096)
        if ring_bytes > _MAX_RING_BYTES:
            raise ValueError(
                f"background: ring_bytes must be at most 2**{_MAX_RING_BYTES.bit_length() - 1} "
                f"({_MAX_RING_BYTES / 2**50:.0f} PiB), got {ring_bytes}"
            )
    if start_method is not None and start_method not in START_METHODS:
        raise ValueError(
            f"background: start_method must be one of {', '.join(map(repr, START_METHODS))} or None, "
            f"got {start_method!r}"
        )
    seconds = check_seconds("background", "timeout", timeout)
    zero_copy = check_bool("background", "zero_copy", zero_copy)
    return _Background(workers, ring_bytes, zero_copy, start_method, seconds)
