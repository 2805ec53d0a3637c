"""JAX adapter: ``device_put``, batches copied onto devices by a thread ahead of the training step.

Import this module only where JAX is installed (``pip install
'pescador_fp[jax]'``); ``import pescador_fp`` alone never imports jax.
"""

from __future__ import annotations

import queue
import reprlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import jax
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("pescador_fp.jax needs JAX: pip install 'pescador_fp[jax]'") from error

from ._check import check_int
from ._seed import SeedContext
from ._stream import Stream, as_stream
from .background import closed_by
from .ops.shard import shard

__all__ = ["device_put"]

# How often the prefetch thread and the consumer look up from a blocking wait to see if they should stop.
_POLL_S = 0.05
# How long closing waits for the prefetch thread (it may be inside a slow upstream step).
_JOIN_TIMEOUT_S = 30.0
_THREAD_NAME = "pescador_fp.jax.device_put"
_END = object()


def _processes() -> tuple[int, int]:
    """This process's index and the number of processes (a seam for tests)."""
    return jax.process_index(), jax.process_count()


def _put_leaves(item: Any, put: Callable[[Any], Any]) -> Any:
    """``put`` every array leaf of ``item`` (dicts, tuples, lists); other leaves pass through."""
    if isinstance(item, (np.ndarray, np.generic, jax.Array)):
        return put(item)
    if isinstance(item, dict):
        return {key: _put_leaves(value, put) for key, value in item.items()}
    if isinstance(item, tuple):
        converted = [_put_leaves(value, put) for value in item]
        return type(item)(*converted) if hasattr(item, "_fields") else tuple(converted)
    if isinstance(item, list):
        return [_put_leaves(value, put) for value in item]
    return item


class _Prefetcher:
    """A thread that pulls items, puts them on the devices, and keeps at most ``prefetch`` ready."""

    def __init__(self, items: Iterator[Any], put: Callable[[Any], Any], prefetch: int) -> None:
        self.items = items
        self.put = put
        self.ready: queue.Queue[tuple[object, Any]] = queue.Queue()
        self.slots = threading.Semaphore(prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=_THREAD_NAME, daemon=True)

    def _acquire(self) -> bool:
        while not self.stop.is_set():
            if self.slots.acquire(timeout=_POLL_S):
                return True
        return False

    def _run(self) -> None:
        # Closing sets `stop`: a background upstream that this thread waits on then gives up at once
        # (closed_by), instead of holding close(), break and Ctrl-C until its next item.
        try:
            with closed_by(self.stop):
                self._pull()
        except BaseException as error:  # reaches the consumer as itself
            self.ready.put((error, None))
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                close()  # in this thread, which is the one that ran the upstream

    def _pull(self) -> None:
        while self._acquire():
            item = next(self.items, _END)
            if item is _END:
                self.ready.put((_END, None))
                return
            self.ready.put((None, _put_leaves(item, self.put)))

    def get(self) -> tuple[object, Any]:
        while True:
            try:
                return self.ready.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.thread.is_alive() and self.ready.empty():
                    return _END, None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(_JOIN_TIMEOUT_S)


def _prefetched(s: _DevicePut, ctx: SeedContext) -> Iterator[Any]:
    upstream, put = s.upstream, _putter(s.target)
    if isinstance(s.target, jax.sharding.Sharding):
        index, count = _processes()
        if count > 1:
            upstream = upstream | shard(index, count)
    prefetcher = _Prefetcher(upstream._open(ctx), put, s.prefetch)
    prefetcher.thread.start()
    try:
        while True:
            kind, value = prefetcher.get()
            if kind is _END:
                return
            if isinstance(kind, BaseException):
                raise kind
            prefetcher.slots.release()
            yield value
    finally:
        prefetcher.close()


def _putter(target: Any) -> Callable[[Any], Any]:
    if isinstance(target, jax.sharding.Sharding):
        return lambda x: jax.make_array_from_process_local_data(target, np.asarray(x))  # type: ignore[no-untyped-call]
    return lambda x: jax.device_put(x, target)


@dataclass(frozen=True, repr=False, eq=False)
class _DevicePut(Stream[Any]):
    upstream: Stream[Any]
    target: Any
    prefetch: int

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.upstream.depth + 1

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _prefetched(self, ctx)

    def _describe(self) -> str:
        target = "" if self.target is None else f", {self.target!r}"
        return f"device_put({self.upstream!r}{target}, prefetch={self.prefetch})"


def device_put(stream: Stream[Any], sharding_or_device: Any = None, *, prefetch: int = 2) -> Stream[Any]:
    """Put each batch of ``stream`` on the device(s), ``prefetch`` batches ahead, from a thread.

    A thread pulls batches, copies their arrays to the devices (as
    ``jax.device_put``) and keeps at most ``prefetch`` of them waiting, so the
    host-to-device copy overlaps the training step. ``sharding_or_device``:
    ``None`` (the default device), a ``jax.Device``, or a
    ``jax.sharding.Sharding``. With a sharding over several processes each
    process loads its own part, ``stream | pf.shard(jax.process_index(),
    jax.process_count())`` (so every process iterates with the same pass seed),
    and each array is assembled with ``jax.make_array_from_process_local_data``
    (the leading axis is the global batch). The result is a stream: iterate it
    per epoch with ``iterate(seed=epoch)``. Closing the iterator (``break``,
    an exception, Ctrl-C, the end) stops the thread and closes the upstream,
    workers of a ``background`` included, without waiting for the
    background's next item (the thread stops waiting for it at once).

    >>> import numpy as np, pescador_fp as pf
    >>> s = device_put(pf.from_arrays(np.arange(8.0)) | pf.batch(4))
    >>> [type(b).__name__ for b in s], [float(b.sum()) for b in s]
    (['ArrayImpl', 'ArrayImpl'], [6.0, 22.0])
    """
    target = sharding_or_device
    if target is not None and not isinstance(target, (jax.Device, jax.sharding.Sharding)):
        raise TypeError(
            "device_put: sharding_or_device must be None, a jax.Device or a jax.sharding.Sharding, "
            f"got {reprlib.repr(target)} ({type(target).__name__})"
        )
    return _DevicePut(as_stream(stream), target, check_int("device_put", "prefetch", prefetch, 1))
