"""The consumer's side of ``background``: one channel per worker, and the merges of their outputs.

A :class:`Channel` reads one worker's ring: it turns records into items,
re-raises a worker's error, and tells a dead, hung or starved worker (or
feeder) from a slow one. :func:`merge` reads the channels in turn or in
proportion to their weights; :func:`merge_groups` reads them group by group,
which gives back the order of the undivided stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from ._ipc.codec import Decoder, RemoteTraceback, load_error
from ._ipc.ring import RECORD_ARRAYS, RECORD_DATA, RECORD_END, RECORD_ERROR, Ring
from ._ipc.workers import Workers, stack_of
from ._sampling import Picker
from ._stream import NOTHING
from ._worker import RECORD_MARK
from .errors import WorkerError

__all__ = ["Channel", "merge", "merge_groups"]


def _raise_remote(metadata: memoryview, index: int) -> None:
    error, text = load_error(metadata)
    if error is None:
        raise WorkerError(f"background worker {index} raised an error that cannot be sent back: {text}")
    error.__cause__ = RemoteTraceback(f"\n\nraised in background worker {index}:\n\n{text}")
    raise error


def merge(channels: list[Channel], weights: list[float | None], rng: Any) -> Iterator[Any]:
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
        if item is not NOTHING:
            yield item
            continue
        live.remove(index)
        turn -= 1
        if picker is not None and live:
            picker.drop(index)


def merge_groups(channels: list[Channel]) -> Iterator[Any]:
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
            if item is NOTHING:
                del live[turn]
                break
            yield item


_MARK = object()


class Channel:
    """The consumer's end of one worker: its ring, its decoder, and whether it (and the feeder) lives."""

    def __init__(
        self,
        index: int,
        rings: list[Ring],
        workers: Workers,
        zero_copy: bool,
        timeout: float | None,
        feeder: int | None,
        stacks: list[Any],
    ) -> None:
        self.index = index
        self.rings = rings  # shared with the caller, who frees them (a ring grows in place, in get)
        self.workers = workers
        self.decoder = Decoder(zero_copy)
        self.feeder = feeder
        self.timeout = timeout
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
        """The worker's next item, ``_MARK`` or ``NOTHING``; handles the records that carry no item."""
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
                return NOTHING
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
    # Not ours, and not the standard library's waits that our code calls (multiprocessing, selectors).
    waits = (package, f"multiprocessing{os.sep}", f"{os.sep}selectors.py")
    users = [frame for frame in frames if not any(part in frame for part in waits)]
    if not users:
        return ""
    return f"; it is in {users[0]}\nits code, most recent call first:" + "".join(f"\n  {f}" for f in users)
