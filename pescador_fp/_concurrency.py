"""Calls in flight for one pass (a pool of threads, or one event loop); async iterators read from sync code.

Knows threads, event loops and how work crosses between them; nothing of
streams, seeds or numpy. ``ops/map.py`` (``concurrency=k``) and ``sources.py``
(async generator functions) use it.

How a pool runs (after torchdata.nodes' ``ParallelMapper``): the consumer's
thread pulls the input itself (so the stages below never run in two threads),
numbers each unit and hands the units over in batches (one lock and one
notify per batch, not a future per unit; a batch is cut after ``_RUN_S`` of
reading, so that a slow input's calls start as its units come); up to ``concurrency`` workers (threads,
or coroutines on one event loop) take them, call, and file each result under its
number; the consumer takes the results by number (``ordered``) or as they
finish. At most ``max(2 * concurrency, 64)`` units are taken from the input and
not yet given out: at most ``concurrency`` calls running, the rest queued or
done and waiting. An error (the call's, or the input's) is raised in its place, as
itself. Threads start at the first item, in the process that iterates, never
before: a pool is never inherited by a forked worker. Closing (the end, ``break``,
``close()``, an error, garbage collection) sets the stop flag that every
worker checks before it takes a unit: no call starts after it; a thread's call
already running finishes on its own (close() waits up to ``_JOIN_TIMEOUT_S`` in all),
a coroutine is cancelled at its next ``await``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

from ._stats import CallCounts
from .errors import PescadorError

__all__ = ["async_items", "call_results"]

#: Units taken from the input and not yet given out: at most ``max(_AHEAD * concurrency, _WINDOW)``.
#: The input is taken in batches (one hand-over for many units): waking threads costs far more
#: than an instant call, so a small window would cost ~20 us an item in thread switches.
_AHEAD = 2
_WINDOW = 64
#: How long the consumer reads its input before it hands over what it read: a slow input's
#: items start their calls (and done results are given out) without waiting for a full run.
_RUN_S = 0.001
#: How long closing waits for the threads (calls still running) or the event loop to end, in all.
_JOIN_TIMEOUT_S = 10.0
#: How often a consumer waiting on a result checks that its workers are alive.
_CHECK_S = 1.0
#: How long a consumer waits on the workers awake before it wakes or starts more (units waiting).
_GRACE_S = 0.0005
# ``Pool.waiting``: the consumer waits for no result / for any result (ordered=False).
_NONE, _ANY = -1, -2


class _Pool:
    """(one pass) The consumer's side of a pool: hand units over, take results, stop.

    Units and results cross in a deque and a dict, whose single operations
    are atomic: a worker takes the lock only to sleep or to wake the
    consumer. Subclasses start the workers and stop them (:meth:`_stop`).
    """

    def __init__(
        self,
        call_for: Callable[[], Callable[[Any], Any]],
        concurrency: int,
        ordered: bool,
        counts: CallCounts,
    ) -> None:
        self.call_for, self.concurrency, self.ordered, self.counts = call_for, concurrency, ordered, counts
        self.lock = threading.Lock()
        self.has_work = threading.Condition(self.lock)
        self.has_result = threading.Condition(self.lock)
        self.todo: deque[tuple[int, Any]] = deque()
        self.done: dict[int, tuple[bool, Any]] = {}  # by number: (True, result) or (False, exception)
        self.finished: deque[int] = deque()  # the numbers of ``done``, as they finished (ordered=False)
        self.waiting = _NONE  # set (under the lock) before the consumer looks for its result
        self.stopping = False
        self.idle = 0  # workers asleep for want of work (under the lock)

    def results(self, units: Iterator[Any]) -> Generator[Any, None, None]:
        """The results of the calls on ``units``; closes the pool and ``units`` when it ends or is closed."""
        k = self.concurrency
        window = max(_AHEAD * k, _WINDOW)
        given = taken = 0  # units handed over / results given out
        failed: BaseException | None = None  # the input's own error, raised after all before it
        more = True
        perf = time.perf_counter
        try:
            while True:
                if more and given - taken <= k:
                    batch = []
                    want = window - (given - taken)
                    cut = perf() + _RUN_S
                    try:
                        for unit in itertools.islice(units, want):
                            batch.append((given, unit))
                            given += 1
                            if perf() > cut:  # a slow input: the calls start on what is read
                                break
                        else:
                            more = len(batch) == want  # fewer: the input has ended
                    except Exception as error:
                        failed, more = error, False
                    if batch:
                        self._hand_over(batch)
                    if more and given - taken <= k and not self._ready(taken):
                        continue  # read on while the next result is not done
                if given == taken:
                    if failed is not None:
                        raise failed
                    return
                ok, value = self._take(taken)
                taken += 1
                if not ok:
                    raise value
                yield value
        finally:
            self.close()
            close = getattr(units, "close", None)
            if close is not None:
                close()

    def _hand_over(self, batch: list[tuple[int, Any]]) -> None:
        raise NotImplementedError

    def _alive(self) -> bool:
        raise NotImplementedError

    def _ready(self, number: int) -> bool:
        """Whether the result to give out next is done (``ordered``: that of unit ``number``)."""
        return number in self.done if self.ordered else bool(self.finished)

    def _take(self, number: int) -> tuple[bool, Any]:
        done, finished = self.done, self.finished
        if self.ordered:
            result = done.pop(number, None)  # most results are there already
            if result is not None:
                return result
            self._wait_until(lambda: number in done, number)
            return done.pop(number)
        if not finished:
            self._wait_until(lambda: bool(finished), _ANY)
        return done.pop(finished.popleft())

    def _wait_until(self, ready: Callable[[], bool], waiting: int) -> None:
        """Wait for a result to be filed; where it is slow to come and units wait, start more workers."""
        helped = False
        with self.lock:
            self.waiting = waiting  # before looking: a worker that files it then sees it awaited
            if not ready():
                self.has_result.wait(_GRACE_S)  # the workers awake may be quick enough
        while not ready():
            if not helped and self.todo:
                self._help()
                helped = True
            with self.lock:
                if not ready() and not self.has_result.wait(_CHECK_S) and not self._alive():
                    raise PescadorError("the workers of a concurrent map ended without giving their results")
        self.waiting = _NONE

    def _help(self) -> None:
        """Wake or start more workers for the units waiting."""

    def _file(self, number: int, result: tuple[bool, Any]) -> None:
        """(a worker) File a call's result; wake the consumer if it waits for it."""
        self.done[number] = result
        if not self.ordered:
            self.finished.append(number)
        waiting = self.waiting
        if waiting in (number, _ANY):
            with self.lock:
                self.has_result.notify()

    def close(self) -> None:
        """Stop: no call starts after this; wait for the workers (a running call finishes); idempotent."""
        with self.lock:
            self.stopping = True
            self.todo.clear()
            self.has_work.notify_all()
            self.idle = 0
        self._stop()
        self.done.clear()
        self.finished.clear()

    def _stop(self) -> None:
        raise NotImplementedError


class _Threads(_Pool):
    """Up to ``concurrency`` threads, started as work arrives, each with its own call (``call_for()``)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.threads: list[threading.Thread] = []

    def _hand_over(self, batch: list[tuple[int, Any]]) -> None:
        # One worker is woken (or started) for a batch: instant calls are quickest in one thread,
        # which holds the GIL anyway. Where the consumer then waits with units queued, it wakes
        # or starts the others (_help).
        with self.lock:
            if self.stopping:
                return
            self.todo.extend(batch)
            if self.idle:
                self.idle -= 1
                self.has_work.notify()
                return
        if not self.threads:
            self._start(1)

    def _help(self) -> None:
        with self.lock:
            if self.stopping:
                return
            woken = min(self.idle, len(self.todo))
            if woken:
                self.idle -= woken
                self.has_work.notify(woken)
            missing = min(self.concurrency - len(self.threads), len(self.todo) - woken)
        self._start(missing)

    def _start(self, n: int) -> None:
        for _ in range(n):
            slot = len(self.threads)
            thread = threading.Thread(
                target=self._work, args=(slot, self.call_for()), name=f"pescador_fp-call-{slot}", daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def _work(self, slot: int, call: Callable[[Any], Any]) -> None:
        perf = time.perf_counter
        todo, counts = self.todo, self.counts
        running, calls, call_s = counts.running, counts.calls, counts.call_s
        while True:
            try:
                number, unit = todo.popleft()
            except IndexError:
                with self.lock:
                    if not todo and not self.stopping:
                        self.idle += 1
                        self.has_work.wait()
                if self.stopping:
                    return
                continue
            if self.stopping:
                return
            running[slot] = 1
            start = perf()
            try:
                result = (True, call(unit))
            except BaseException as error:  # it crosses to the consumer, as itself
                result = (False, error)
            call_s[slot] += perf() - start
            calls[slot] += 1
            running[slot] = 0
            del unit
            self._file(number, result)
            del result

    def _alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def _stop(self) -> None:
        me = threading.current_thread()
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for thread in self.threads:
            if thread is not me:  # closed from a worker (garbage collected there): it ends by itself
                thread.join(max(0.0, deadline - time.monotonic()))


class _Loop(_Pool):
    """Up to ``concurrency`` coroutines on one event loop, in a thread of its own (started at the first unit).

    Coroutines start as work waits for them (``_grow``), as threads do: a pass
    of 3 items at ``concurrency=100_000`` starts 3, not 100 000 (4 s).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.asleep = False  # every coroutine waits for work: handing some over must wake them
        self.wakeup: asyncio.Event | None = None
        self.tasks: list[asyncio.Future[None]] = []
        self.sleeping = 0  # coroutines waiting on ``wakeup`` (read and written on the loop's thread)

    def _hand_over(self, batch: list[tuple[int, Any]]) -> None:
        with self.lock:
            if self.stopping:
                return
            self.todo.extend(batch)
            wake, self.asleep = self.asleep, False
        if self.thread is None:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self._run, name="pescador_fp-event-loop", daemon=True)
            self.thread.start()
        elif len(self.tasks) < self.concurrency:  # a stale length only costs a look
            self._soon(self._more)
        elif wake:
            self._soon(self._wake)

    def _soon(self, callback: Callable[[], None]) -> None:
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has ended already
            self.loop.call_soon_threadsafe(callback)

    def _wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()

    def _more(self) -> None:
        """(the loop) Wake the coroutines asleep and start more for the units they will not take."""
        self._wake()
        self._grow()

    def _grow(self) -> None:
        """(the loop) Start coroutines for the units waiting beyond those asleep, up to ``concurrency``."""
        tasks = self.tasks
        for _ in range(min(self.concurrency - len(tasks), len(self.todo) - self.sleeping)):
            tasks.append(asyncio.ensure_future(self._work(len(tasks), self.call_for())))

    def _run(self) -> None:
        loop = self.loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _main(self) -> None:
        self.wakeup = asyncio.Event()
        self._grow()
        while True:  # until every coroutine has ended (closing), those started meanwhile included
            tasks = list(self.tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            if len(self.tasks) == len(tasks):
                return

    async def _work(self, slot: int, call: Callable[[Any], Awaitable[Any]]) -> None:
        perf = time.perf_counter
        todo, wakeup, counts = self.todo, self.wakeup, self.counts
        assert wakeup is not None
        while True:
            with self.lock:
                if self.stopping:
                    return
                if todo:
                    number, unit = todo.popleft()
                else:
                    wakeup.clear()
                    self.asleep = True
                    number = _NONE
            if number == _NONE:
                self.sleeping += 1
                try:
                    await wakeup.wait()
                finally:
                    self.sleeping -= 1
                continue
            counts.running[slot] = 1
            start = perf()
            try:
                result = (True, await call(unit))
            except asyncio.CancelledError as error:
                if self._closing():
                    return  # closing cancelled it: the consumer takes nothing more
                result = (False, error)  # the call's own (a task it awaited was cancelled): its result
            except BaseException as error:  # it crosses to the consumer, as itself
                result = (False, error)
            finally:
                counts.running[slot] = 0
            counts.call_s[slot] += perf() - start
            counts.calls[slot] += 1
            del unit
            self._file(number, result)

    def _closing(self) -> bool:
        """Whether the pool is closing (read afresh: an ``await`` has passed since the last look)."""
        return self.stopping

    def _cancel(self) -> None:
        self._wake()
        for task in self.tasks:
            task.cancel()

    def _alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _stop(self) -> None:
        if self.thread is None:
            return
        self._soon(self._cancel)
        if self.thread is not threading.current_thread():
            self.thread.join(_JOIN_TIMEOUT_S)


def call_results(
    call_for: Callable[[], Callable[[Any], Any]],
    units: Iterator[Any],
    concurrency: int,
    *,
    ordered: bool = True,
    is_async: bool = False,
    counts: CallCounts | None = None,
) -> Generator[Any, None, None]:
    """``call(unit)`` for every unit of ``units``, up to ``concurrency`` calls at a time.

    Each worker (a thread, or a coroutine on one event loop where the calls
    are ``async``) gets its own ``call = call_for()``. Results come in the
    order of ``units`` (``ordered``) or as they finish; an exception is raised
    in its place. Nothing starts before the first ``next()``; closing the
    generator stops and joins the workers.

    >>> import time
    >>> def slow_square(x):
    ...     time.sleep(0.01 * (5 - x))
    ...     return x * x
    >>> list(call_results(lambda: slow_square, iter(range(5)), 5))
    [0, 1, 4, 9, 16]
    """
    kind = _Loop if is_async else _Threads
    pool = kind(call_for, concurrency, ordered, CallCounts(concurrency) if counts is None else counts)
    return pool.results(units)


# ---------------------------------------------------------------- async iterators as sources


_ITEM, _END, _RAISED = 0, 1, 2  # what ``_next_of`` read


async def _next_of(items: AsyncIterator[Any]) -> tuple[int, Any]:
    try:
        return _ITEM, await items.__anext__()
    except StopAsyncIteration:
        return _END, None
    except (KeyboardInterrupt, SystemExit) as error:
        # Raised out of a task, they stop the event loop itself, which then never
        # answers the read: the consumer waited forever. They cross as values.
        return _RAISED, error


def async_items(items: AsyncIterator[Any]) -> Generator[Any, None, None]:
    """The items of an async iterator (an async generator), read one by one on an event loop of its own.

    The loop runs in a thread (so that this works where the caller's thread
    runs a loop already, as in a notebook), started at the first ``next()``.
    Nothing is read ahead: each ``next()`` runs the iterator to its next item.
    Closing the generator closes the iterator (``aclose``) and ends the loop.

    >>> async def count(n):
    ...     for i in range(n):
    ...         yield i
    >>> list(async_items(count(3)))
    [0, 1, 2]
    """
    read = _read(items)
    _open_sources[read] = os.getpid()
    return read


#: The async sources not yet closed, with the process that opened them (a forked child has their
#: generators but not their loops' threads): closed at exit, while their loops can still run.
_open_sources: weakref.WeakKeyDictionary[Generator[Any, None, None], int] = weakref.WeakKeyDictionary()


@atexit.register
def _close_open_sources() -> None:
    """(at exit) Close the async sources still open: their ``aclose`` runs while their threads can.

    Finalized later, with the interpreter's daemon threads frozen, a source
    left open (an iterator never closed) waited ``_JOIN_TIMEOUT_S`` for its
    loop and printed a ``TimeoutError``.
    """
    me = os.getpid()
    for read in [read for read, pid in list(_open_sources.items()) if pid == me]:
        with contextlib.suppress(Exception):  # running in another thread, or failing to close
            read.close()


def _read(items: AsyncIterator[Any]) -> Generator[Any, None, None]:
    """(``async_items``) Read ``items`` on a loop of its own; closing closes them and ends the loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name="pescador_fp-async-source", daemon=True)
    thread.start()
    try:
        while True:
            future = asyncio.run_coroutine_threadsafe(_next_of(items), loop)
            try:
                what, item = future.result()
            except BaseException:
                future.cancel()  # interrupted (Ctrl-C): the read in flight ends before aclose
                concurrent.futures.wait([future], _JOIN_TIMEOUT_S)
                raise
            if what == _END:
                return
            if what == _RAISED:
                raise item
            yield item
    finally:
        if not sys.is_finalizing():  # else the loop's thread is frozen: neither aclose nor a join would end
            _end(items, loop, thread)


def _end(items: AsyncIterator[Any], loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """(``_read``) Close ``items`` (``aclose``) on ``loop``, then stop the loop and join its thread."""
    aclose = getattr(items, "aclose", None)
    try:
        if aclose is not None:
            asyncio.run_coroutine_threadsafe(aclose(), loop).result(_JOIN_TIMEOUT_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_JOIN_TIMEOUT_S)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """(the loop's thread) Run ``loop`` until it is stopped, then close it there."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
