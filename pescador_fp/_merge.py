"""The consumer's side of ``background``: one channel per worker, and the merges of their outputs.

A :class:`Channel` reads one worker's ring: it turns records into items,
re-raises a worker's error, and tells a dead, hung or starved worker (or
feeder) from a slow one. :func:`merge` reads the channels in turn or in
proportion to their weights; :func:`merge_groups` reads them group by group,
which gives back the order of the undivided stream.
"""

from __future__ import annotations

import collections
import errno
import functools
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from ._ipc.codec import Decoder, RemoteTraceback, load_error
from ._ipc.pool import Blocks
from ._ipc.ring import (
    RECORD_ARRAY_BLOCKS,
    RECORD_ARRAYS,
    RECORD_DATA,
    RECORD_DATA_BLOCKS,
    RECORD_END,
    RECORD_ERROR,
    RECORD_SHORT,
    Ring,
)
from ._ipc.workers import Workers, out_of_descriptors, stack_of
from ._sampling import Picker
from ._stats import ChannelCounts
from ._stream import NOTHING
from ._worker import RECORD_MARK, Leftover
from .errors import PescadorError, WorkerError

__all__ = ["MARK", "RECENT_PICKS", "Channel", "Leftovers", "Reader", "Tally", "merge", "merge_groups"]


def _remote_error(metadata: bytes, index: int) -> BaseException:
    """The exception of a worker's error record, its traceback text as its cause.

    Takes a copy of the record, not a view of the ring: the error's traceback
    keeps the frames it was raised through alive (with the library's frames
    kept, or a ``SystemExit`` or ``KeyboardInterrupt``, whose frames are never
    trimmed), and a view there would keep the ring's memory mapped and its
    descriptor open after the pass closed it.
    """
    error, text = load_error(memoryview(metadata))
    if error is None:
        return WorkerError(f"background worker {index} raised an error that cannot be sent back: {text}")
    error.__cause__ = RemoteTraceback(f"\n\nraised in background worker {index}:\n\n{text}")
    return error


class Tally:
    """What the consumer has taken from each worker: the counts, which workers ended, the last picks.

    A pass's state saves it (:meth:`state`); a pass resumed from that state
    starts each worker after the items the consumer had from it.
    """

    __slots__ = ("ended", "recent", "taken")

    def __init__(self, count: int) -> None:
        self.taken = [0] * count
        self.ended = [False] * count
        #: The worker of each of the last items, the latest last.
        self.recent: collections.deque[int] = collections.deque(maxlen=RECENT_PICKS)

    def state(self) -> dict[str, Any]:
        """The tally as JSON: counts, ended workers, and the last picks as one character each."""
        return {
            "taken": list(self.taken),
            "ended": [i for i, ended in enumerate(self.ended) if ended],
            "recent": "".join(_DIGITS[i] for i in self.recent) if len(self.taken) <= len(_DIGITS) else "",
        }

    @staticmethod
    def total(saved: Any) -> int:
        """The items a saved tally counts (0 where it is malformed: :meth:`taken_at` says so)."""
        try:
            return sum(int(t) for t in saved["taken"])
        except (KeyError, TypeError, ValueError):
            return 0

    @staticmethod
    def taken_at(saved: Any, items: int, count: int) -> tuple[list[int], set[int]] | None:
        """From a saved tally of ``sum(taken)`` items: the counts after the first ``items`` of them,
        and the workers that had ended by then; ``None`` if the saved picks do not reach back so far."""
        try:
            taken = [int(t) for t in saved["taken"]]
            ended = {int(i) for i in saved["ended"]}
            recent = str(saved["recent"])
        except (KeyError, TypeError, ValueError):
            return None
        back = sum(taken) - items
        if len(taken) != count or back < 0 or back > len(recent):
            return None
        for digit in recent[len(recent) - back :]:
            worker = _DIGITS.find(digit)
            if not 0 <= worker < count:
                return None
            taken[worker] -= 1
            ended.discard(worker)  # it gave an item after this point: it had not ended
        return taken, ended


#: The last picks a saved tally keeps: how far back (in items) operators above ``background`` may
#: hold items and still resume without replaying.
RECENT_PICKS = 1024
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Reader(Protocol):
    """What the merges read: a worker's (or a Ray part's) items, then ``NOTHING``; ``MARK`` between groups."""

    def next_item(self) -> Any: ...


def _picker(weights: Sequence[float | None], rng: Any) -> Picker | None:
    """Picks in proportion to the parts' weights, or ``None`` where parts are read in turn."""
    return Picker([w or 0.0 for w in weights], rng) if any(w is not None for w in weights) else None


def merge(
    channels: Sequence[Reader],
    weights: list[float | None],
    rng: Any,
    tally: Tally,
    resume: tuple[list[int], set[int]] | None = None,
) -> Iterator[Any]:
    """Yield the workers' items: in turn, or (for divided weighted muxes) in proportion to their weights.

    ``tally`` counts the items taken from each worker. ``resume``: (a resumed
    pass) how many items the consumer already has from each worker and which
    workers had ended; the workers start after those items, and the picks
    that gave them are drawn again without reading anything.
    """
    live = list(range(len(channels)))
    picker = _picker(weights, rng)
    reads = [channel.next_item for channel in channels]
    replay = sum(resume[0]) if resume is not None else 0
    if replay:
        assert resume is not None
        counted, channel_reads = _Counted(*resume), reads
        reads = [functools.partial(counted.next_item, i) for i in range(len(channels))]
    taken, ended, recent = tally.taken, tally.ended, tally.recent
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
        item = reads[index]()
        if item is not NOTHING:
            taken[index] += 1
            recent.append(index)
            if replay:
                replay -= 1
                if not replay:
                    reads = channel_reads
                continue
            yield item
            continue
        ended[index] = True
        live.remove(index)
        turn -= 1
        if picker is not None and live:
            picker.drop(index)


class _Counted:
    """(a resumed merge) The workers' first items, counted instead of read."""

    def __init__(self, taken: list[int], ended: set[int]) -> None:
        self.left, self.ended = list(taken), ended

    def next_item(self, index: int) -> Any:
        if self.left[index]:
            self.left[index] -= 1
            return None
        if index in self.ended:
            return NOTHING
        raise ValueError(
            f"iterate: the state says that background worker {index} gave more items than it has; "
            "was it saved from this pipeline?"
        )


def merge_groups(
    channels: Sequence[Reader], weights: Sequence[float | None] = (), rng: Any = None
) -> Iterator[Any]:
    """Yield the workers' outputs group by group: the outputs of one input item each.

    In turn, which gives the order of the undivided stream; or, where parts
    have ``weights`` (a divided weighted mux), a worker picked in proportion
    to them for each group, as the mux picks a source for each item before
    the operators above drop or expand it. Either way a worker whose items
    all come to nothing gives marks, not silence, so the merge moves on.
    """
    live = list(range(len(channels)))
    picker = _picker(weights, rng)
    picks: Iterator[int] = iter(())  # (weighted) drawn in bulk: a group may be one mark, read in ~0.1 us
    turn = 0
    while live:
        if picker is None:
            turn %= len(live)
            index = live[turn]
        else:
            index = next(picks, -1)
            if index < 0:
                if not picker.any_left:
                    return
                picks = iter(picker.batch())
                continue
        channel = channels[index]
        while True:
            item = channel.next_item()
            if item is MARK:
                turn += 1
                break
            if item is NOTHING:
                live.remove(index)
                if picker is not None and live:
                    picker.drop(index)
                    picks = iter(())
                break
            yield item


class Leftovers:
    """The short last groups of samples that the parts' batch sends last (``Leftover``), kept per part.

    The merges read the parts through :meth:`readers`, which keep those
    groups instead of giving them out; once the merge has ended,
    :meth:`samples` are all of them, in part order (``_divide.Plan.rest_stream``
    batches them).
    """

    __slots__ = ("pooling",)

    def __init__(self, channels: Sequence[Reader]) -> None:
        self.pooling = [_Pooling(channel) for channel in channels]

    def readers(self) -> list[Reader]:
        """The channels, each keeping its part's ``Leftover`` here instead of giving it out."""
        return list(self.pooling)

    def samples(self) -> list[Any]:
        """Every part's group, in part order, once the merge has ended.

        A part whose end the merge did not read (a resumed pass, which counts
        the items the consumer had instead of reading them) is read to its end
        here: it sends nothing but its group.
        """
        for pooling in self.pooling:
            while not pooling.ended:
                item = pooling.next_item()
                if item is not NOTHING and item is not MARK:
                    raise ValueError(
                        "iterate: a background worker gave items after those that the state says it had "
                        "given in all; was the state saved from this pipeline?"
                    )
        return [sample for pooling in self.pooling for sample in pooling.rest]


class _Pooling:
    """(consumer) One part's items, its ``Leftover`` kept in ``rest``."""

    __slots__ = ("channel", "ended", "rest")

    def __init__(self, channel: Reader) -> None:
        self.channel = channel
        self.rest: list[Any] = []
        self.ended = False

    def next_item(self) -> Any:
        item = self.channel.next_item()
        if type(item) is Leftover:
            self.rest = item.samples
            if isinstance(self.channel, Channel):  # (stats) not an item of the pass
                self.channel.counts.items -= 1
            item = self.channel.next_item()  # its end
        if item is NOTHING:
            self.ended = True
        return item


# A channel reads up to this many marks at once (where the workers have written them).
_MARKS_AT_ONCE = 1024

#: What a channel's ``next_item`` returns where one input item's outputs end (grouped merges).
MARK = object()


class Channel:
    """The consumer's end of one worker: its ring, its decoder, and whether it (and the feeder) lives."""

    def __init__(
        self,
        index: int,
        rings: list[Ring],
        workers: Workers,
        blocks: Blocks | None,
        timeout: float | None,
        feeder: int | None,
        stacks: list[Any],
        stop: Any = None,
    ) -> None:
        self.index = index
        self.rings = rings  # shared with the caller, who frees them (a ring grows in place, in get)
        self.workers = workers
        self.blocks = blocks  # the consumer's end of the worker's pool (None: copy=True)
        self.decoder = Decoder(blocks)
        self.feeder = feeder
        self.timeout = timeout
        self.deadline = 0.0
        self.started = False  # the worker has loaded its pipeline: the timeout counts from then
        self.stacks = stacks  # per process (the feeder's last): where its stack comes, on a signal
        self.stop = stop  # a threading.Event set by a consumer in another thread that closes the pass
        self.counts = ChannelCounts(rings[index].capacity)  # (stats) items, waits, ring and pool fill
        self.marks = 0  # marks still to give of the last run of marks read

    def alive(self) -> bool:
        """Whether the worker (and the feeder, where there is one) may still send something."""
        if self.stop is not None and self.stop.is_set():
            raise PescadorError(f"background: the pass was closed while waiting for worker {self.index}")
        if self.timeout is not None and self.started and time.monotonic() > self.deadline:
            raise self.stalled(self.timeout)
        feeder = self.feeder
        if feeder is not None and not self.workers.alive(feeder) and not self.workers.finished(feeder):
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
        """The worker's next item, ``MARK`` or ``NOTHING``; handles the records that carry no item."""
        pending, counts = self.decoder.pending, self.counts
        if pending:
            counts.items += 1
            return pending.popleft()
        if self.marks:  # the rest of a record of several marks
            self.marks -= 1
            return MARK
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout
        while True:
            ring = self.rings[self.index]
            # (stats) The bytes published past the record being read. None: get() will wait
            # (or skip a wrap marker), and is timed.
            ahead = ring.ahead()
            counts.ahead += ahead + (self.blocks.in_flight() if self.blocks is not None else 0)
            counts.reads += 1
            try:
                if ahead:
                    record = ring.get(self.alive)  # answers a request for a larger ring itself
                else:
                    start = time.perf_counter()
                    record = ring.get(self.alive)
                    counts.waited_s += time.perf_counter() - start
                    counts.capacity = ring.capacity  # (a ring grows in get)
            except OSError as error:
                raise WorkerError(
                    f"background worker {self.index} has a sample larger than its ring, and the ring "
                    f"cannot grow: {error.strerror or error}"
                ) from error
            if record is None:
                raise self.workers.failure(self.index, self.started)
            kind, metadata, buffers = record
            if kind in _ITEMS:
                counts.items += 1
                try:
                    return self.decoder.read(ring, kind, metadata, buffers)
                except OSError as error:  # mapping a block's segment takes a descriptor
                    short = out_of_descriptors(error)
                    if short is None:
                        raise
                del record, metadata, buffers  # (as for an error record, below)
                raise short from None
            if kind == RECORD_MARK:  # with the marks right after it, taken at once
                count, stride, _, _ = ring.run_after(_MARKS_AT_ONCE)
                ring.release_run(count, stride)
                self.marks = count - 1
                return MARK
            if kind == RECORD_END:
                ring.release()
                counts.ended = time.perf_counter()
                return NOTHING
            if kind == RECORD_ERROR:
                copied = bytes(metadata)
                del record, metadata, buffers  # no view of the ring in this frame, which the error keeps
                raise _remote_error(copied, self.index)
            elif kind == RECORD_SHORT:
                self._warn_short(bytes(metadata).decode())
                ring.release()
            else:  # RECORD_READY
                ring.release()
                self.started = True
                if self.timeout is not None:
                    self.deadline = time.monotonic() + self.timeout

    def _warn_short(self, why: str) -> None:
        """Say once per pass (``blocks.shared`` is the pass's) that items are copied: shared memory short."""
        shared = self.blocks.shared if self.blocks is not None else {}
        if shared.get("warned"):
            return
        shared["warned"] = True
        short = "shared memory is short"
        fix = (
            "To give a container more shared memory: docker run --shm-size=2g (or a larger /dev/shm: "
            "Kubernetes, an emptyDir volume with medium: Memory, mounted at /dev/shm)"
        )
        if any(os.strerror(code) in why for code in (errno.EMFILE, errno.ENFILE)):
            short = "the worker may open no more files (each segment of its pool takes a descriptor)"
            fix = (
                "Raise the limit before the pass starts (ulimit -n, or resource.setrlimit("
                "resource.RLIMIT_NOFILE, ...)), or hold fewer arrays"
            )
        warnings.warn(
            f"background worker {self.index}: {why}; {short}, so items that would be handed over in "
            "shared memory blocks are copied through the ring instead (a copy per item on the "
            f"consumer's side) until blocks are free again. {fix}",
            RuntimeWarning,
            stacklevel=4,
        )


_ITEMS = (RECORD_ARRAYS, RECORD_DATA, RECORD_ARRAY_BLOCKS, RECORD_DATA_BLOCKS)


def _renamed(error: WorkerError, index: int, name: str) -> WorkerError:
    """``error`` about process ``index``, saying ``name`` instead of "background worker <index>"."""
    return WorkerError(str(error).replace(f"background worker {index}", f"background: {name}", 1))


def _where(frames: list[str]) -> str:
    """The user's frames among ``frames``, innermost first, for an error message."""
    package = os.path.dirname(os.path.abspath(__file__))
    # Not ours, and not the standard library's waits that our code calls (multiprocessing, selectors).
    waits = (package, f"multiprocessing{os.sep}", f"{os.sep}selectors.py")
    users = [frame for frame in frames if not any(part in frame for part in waits)]
    if not users:
        return ""
    return f"; it is in {users[0]}\nits code, most recent call first:" + "".join(f"\n  {f}" for f in users)
