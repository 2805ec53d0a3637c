"""``background``: run the upstream pipeline in worker processes, items back through shared memory.

This module only orchestrates. It asks ``_divide`` how to split the stream,
sends each worker its recipe (``_ipc.codec``), makes one ring per worker
(``_ipc.ring``) and the socket its pool announces its segments on
(``_ipc.pool``), starts the workers and the feeder (``_ipc.workers``, running
``_worker``), merges their outputs (``_merge``), and makes sure that every way
out of the loop stops the processes and frees the shared memory.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import reprlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any

import cloudpickle

from ._check import check_bool, check_int, check_seconds
from ._divide import components, divide
from ._ipc.codec import dumps_recipe, forget_inherited
from ._ipc.pool import Blocks, PoolHandle, pool_pair
from ._ipc.pool import available as pools_available
from ._ipc.ring import (
    Ring,
    default_transport,
    shared_memory_free,
)
from ._ipc.workers import (
    Workers,
    default_start_method,
    interrupts_deferred,
    out_of_descriptors,
    uninterrupted,
)
from ._merge import Channel, Leftovers, Reader, Tally, merge, merge_groups
from ._seed import MERGE_SEED, SeedContext
from ._stats import register_channels
from ._stream import Operator, Stream, drop, stage_key
from ._worker import feed, work
from .errors import PescadorError, WorkerError

__all__ = ["background", "closed_by", "recipe_bytes"]

START_METHODS = ("fork", "forkserver", "spawn")
# The default ring per worker (shrunk to fit half of the free shared memory): small, so
# that reserving it is quick; it grows when a sample needs more.
_DEFAULT_RING_BYTES = 8 * 2**20
_MIN_RING_BYTES = 2**20
_MAX_RING_BYTES = 2**56  # far more than any shared memory, and far from overflowing an offset


# ---------------------------------------------------------------- recipes


def recipe_bytes(
    recipe: tuple[Any, ...],
    whole: Stream[Any],
    who: str = "background",
    to: str = "worker processes",
    inherit: list[tuple[int, int]] | None = None,
) -> bytes:
    """The bytes a worker (or a Ray task) needs; a clear error naming the piece of ``whole`` that
    cannot be pickled, said as ``{who}: cannot send the pipeline to {to}``. ``inherit``: workers
    fork after this, and take large arrays from the memory they inherit (``dumps_recipe``)."""
    try:
        return dumps_recipe(recipe, inherit)
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
            f"{who}: cannot send the pipeline to {to}: {reprlib.repr(culprit)} "
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


def _resumable(
    op: _Background, upstream: Stream[Any], ctx: SeedContext, depth: int, start: int
) -> Iterator[Any]:
    """(a resumed pass) The items from ``start`` on: each worker starts after the items the consumer had
    from it, where the pass's state says so; else the pass runs again from its start, dropping them."""
    saved = ctx.run.restored.get(stage_key(ctx, depth)) if ctx.run is not None else None
    if saved is not None:
        plan = divide(upstream, op.workers)
        # Past the workers' items: in the batches of the parts' pooled remainders (_divide).
        pooled = max(0, start - Tally.total(saved)) if plan.pools_rest else 0
        resume = None if plan.fed else Tally.taken_at(saved, start - pooled, len(plan.parts))
        if resume is not None:
            return _background_items(op, upstream, ctx, depth, resume, pooled)
    return drop(_background_items(op, upstream, ctx, depth), start)


def _background_items(
    op: _Background,
    upstream: Stream[Any],
    ctx: SeedContext,
    depth: int,
    resume: tuple[list[int], set[int]] | None = None,
    pooled: int = 0,
) -> Iterator[Any]:
    if multiprocessing.current_process().daemon:
        raise WorkerError(
            "background: cannot start workers from a daemon process (a background worker, or a "
            "torch DataLoader worker): keep one pf.background in a pipeline, at its end, and with "
            "DataLoader use num_workers=0 over a stream that ends in pf.background"
        )
    plan = divide(upstream, op.workers)
    count = len(plan.parts)
    starts = resume[0] if resume is not None else [0] * count
    workers = Workers(op.start_method or default_start_method())
    # A forked worker inherits the recipe's large arrays (the rows of a from_arrays) instead of
    # receiving them pickled: no copy, and the first item comes as soon.
    inherit: list[tuple[int, int]] | None = [] if workers.context.get_start_method() == "fork" else None
    try:
        recipes = [
            recipe_bytes((part, plan.grouped, plan.context(i, ctx), starts[i]), upstream, inherit=inherit)
            for i, part in enumerate(plan.parts)
        ]
        feeder_recipe = (
            recipe_bytes((plan.head, ctx), upstream, inherit=inherit) if plan.head is not None else None
        )
    except BaseException:
        forget_inherited(inherit or [])
        raise
    if os.name == "posix" and default_transport() == "portable":
        # A portable ring's segment and semaphores have names, registered with multiprocessing's
        # resource tracker, which removes them if this process is killed: start it before any
        # name exists (a linux ring has none: a file with no name, eventfds).
        resource_tracker.ensure_running()
    rings: list[Ring] = []
    inboxes: list[Ring] = []
    # Each worker's pool (its blocks, handed to the consumer): its handle, and the consumer's end.
    pools: list[tuple[PoolHandle, Blocks]] = []
    stacks: list[tuple[Any, Any]] = []
    channels: list[Channel] = []
    try:
        # A Ctrl-C waits until what is made is in the lists that the cleanup frees (Workers.start
        # holds it back too, and keeps its processes).
        with interrupts_deferred():
            capacity = _ring_bytes(op.ring_bytes, count)
            try:
                for _ in range(count):
                    rings.append(Ring.create(capacity, workers.semaphore, creator_consumes=True))
                    if plan.fed:
                        inboxes.append(Ring.create(capacity, workers.semaphore))
                if op.timeout:  # (extend keeps the pipes made before a failure, for the cleanup)
                    stacks.extend(workers.context.Pipe(duplex=False) for _ in range(count + plan.fed))
                if not op.copy and pools_available():
                    shared: dict[str, Any] = {}  # the pass's: whether it warned that shared memory is short
                    pools.extend(pool_pair(rings[0].handle.transport, shared) for _ in range(count))
            except OSError as error:
                raise out_of_descriptors(error) or WorkerError(
                    f"background: {error.strerror or error}; free shared memory or pass a smaller ring_bytes"
                ) from error
        parent = os.getpid()
        workers.start(
            work,
            [
                (
                    recipes[i],
                    rings[i].handle,
                    parent,
                    inboxes[i].handle if inboxes else None,
                    stacks[i][1] if stacks else None,
                    pools[i][0] if pools else None,
                )
                for i in range(count)
            ],
        )
        for handle, _ in pools:
            handle.sock.close()  # the worker's end: the worker has its own now
        if feeder_recipe is not None:
            handles = [inbox.handle for inbox in inboxes]
            feeder_args = (feeder_recipe, handles, parent, stacks[-1][1] if stacks else None)
            workers.start(feed, [feeder_args], name="pescador_fp-feeder", reports=True)
        for _, writer in stacks:
            writer.close()
        channels = [
            Channel(
                i,
                rings,
                workers,
                pools[i][1] if pools else None,
                op.timeout,
                count if plan.fed else None,
                [reader for reader, _ in stacks],
                getattr(_closing, "event", None),
            )
            for i in range(count)
        ]
        register_channels(ctx.run, upstream, [channel.counts for channel in channels])  # for it.stats()
        weights = [part.weight for part in plan.parts]
        leftovers = Leftovers(channels) if plan.pools_rest else None
        readers: list[Reader] = leftovers.readers() if leftovers is not None else list(channels)
        if plan.grouped:
            yield from merge_groups(readers, weights, ctx.generator(MERGE_SEED, depth))
        else:
            tally = Tally(count)
            if ctx.run is not None and not plan.fed:  # a fed pass resumes by replaying
                ctx.run.states[stage_key(ctx, depth)] = tally.state
            yield from merge(readers, weights, ctx.generator(MERGE_SEED, depth), tally, resume)
        if leftovers is not None:  # the parts' batches' remainders, batched here (_divide: "Remainders")
            rest = plan.rest_stream(leftovers.samples())
            rest_ctx = plan.rest_context(ctx)
            yield from rest._open_at(rest_ctx, pooled) if pooled else rest._open(rest_ctx)
    finally:
        uninterrupted(functools.partial(_free, channels, rings + inboxes, workers, stacks, pools))
        forget_inherited(inherit or [])


def _free(
    channels: list[Channel],
    rings: list[Ring],
    workers: Workers,
    stacks: list[tuple[Any, Any]],
    pools: list[tuple[PoolHandle, Blocks]],
) -> None:
    """Stop the workers, free the rings, pipes and pools' sockets of a pass; idempotent."""
    ended = time.perf_counter()
    for channel in channels:  # (stats) a closed or failed pass's rates stay as they were
        channel.counts.ended = channel.counts.ended or ended
    for ring in rings:
        ring.request_stop()
    workers.stop()
    for ring in rings:
        ring.unlink()
        ring.close()
    for reader, writer in stacks:
        reader.close()
        writer.close()
    for handle, blocks in pools:
        handle.sock.close()
        blocks.close()  # the arrays still held keep their blocks mapped


# The event that stops the background passes opened in this thread (closed_by), if any.
_closing = threading.local()


@contextlib.contextmanager
def closed_by(event: threading.Event) -> Iterator[None]:
    """(a thread that iterates a pass for a consumer in another thread) Passes that this thread
    opens meanwhile stop waiting for their workers once ``event`` is set: the consumer's way to
    close them while this thread waits inside ``next()``, which no other thread can interrupt.

    A pass that stops so raises :class:`~pescador_fp.PescadorError` in this thread, and frees
    its workers and shared memory as any closed pass does.

    >>> import pescador_fp as pf
    >>> event = threading.Event()
    >>> with closed_by(event):
    ...     it = iter(pf.from_iterable(range(3)) | pf.background())
    ...     first = next(it)
    >>> first, next(it)
    (0, 1)
    """
    outer = getattr(_closing, "event", None)
    _closing.event = event
    try:
        yield
    finally:
        _closing.event = outer


@dataclass(frozen=True, repr=False)
class _Background(Operator[Any, Any]):
    _starts_workers = True
    workers: int
    ring_bytes: int | None
    copy: bool
    start_method: str | None
    timeout: float | None = None

    def _apply(self, upstream: Stream[Any]) -> Stream[Any]:
        for piece in components(upstream):
            if getattr(piece, "_starts_workers", False) and not isinstance(piece, _Background):
                raise ValueError(
                    f"background: the pipeline already holds {piece!r}, which would start its own workers "
                    f"from background's worker processes; keep only {piece!r}, at the end"
                )
        return super()._apply(upstream)

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _background_items(self, upstream, ctx, depth)

    def _open_at(self, upstream: Stream[Any], ctx: SeedContext, depth: int, start: int) -> Iterator[Any]:
        return _resumable(self, upstream, ctx, depth, start) if start else self._open(upstream, ctx, depth)

    def _display(self) -> str:
        if self.start_method is not None:
            return repr(self)
        return f"{self!r}: {default_start_method()} processes"

    def __repr__(self) -> str:
        options = [f"workers={self.workers}"]
        if self.ring_bytes is not None:
            options.append(f"ring_bytes={self.ring_bytes}")
        if self.copy:
            options.append("copy=True")
        if self.start_method is not None:
            options.append(f"start_method={self.start_method!r}")
        if self.timeout is not None:
            options.append(f"timeout={self.timeout:g}")
        return f"background({', '.join(options)})"


def background(
    workers: int = 1,
    *,
    ring_bytes: int | None = None,
    copy: bool = False,
    start_method: str | None = None,
    timeout: object = None,
    **removed: object,
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
        ring_bytes: the ring of records per worker (default 8 MiB, less if
            ``/dev/shm`` is small); it grows when a sample needs more. It
            also bounds the bytes of arrays written and not yet received.
        copy: give arrays in the consumer's private memory (copied out of
            the ring). By default arrays of 128 KiB or more are the shared
            memory blocks the worker wrote them into: no copy, writable, and
            yours for as long as you reference them; the block goes back to
            its worker when the last reference goes.
        start_method: ``"fork"``, ``"forkserver"`` or ``"spawn"``; the default
            is ``fork`` in a single-threaded process (threads started in C
            count), else ``forkserver``, and always ``forkserver`` once torch,
            JAX or TensorFlow is imported.
        timeout: seconds to wait for a worker's next item (counted from the
            moment it has loaded its pipeline) before raising
            :class:`~pescador_fp.WorkerError` that names the worker and where
            its code is stuck; ``None`` (the default) waits as long as it takes.

    >>> import numpy as np, pescador_fp as pf
    >>> s = pf.from_iterable(range(6)) | pf.map(lambda i: np.full(3, i)) | pf.background(workers=2)
    >>> [int(x[0]) for x in s]
    [0, 1, 2, 3, 4, 5]
    """
    if "zero_copy" in removed:
        raise TypeError(
            "background: zero_copy= is gone: by default background now hands over arrays in shared "
            "memory that you own (no copy, valid while referenced); pass copy=True for private copies"
        )
    if removed:
        raise TypeError(f"background() got an unexpected keyword argument {next(iter(removed))!r}")
    workers = check_int("background", "workers", workers, 1)
    if ring_bytes is not None:
        # Bound below, not by check_int: the message says how large a ring may be.
        ring_bytes = check_int("background", "ring_bytes", ring_bytes, 4096, maximum=2**64)
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
    copy = check_bool("background", "copy", copy)
    return _Background(workers, ring_bytes, copy, start_method, seconds)
