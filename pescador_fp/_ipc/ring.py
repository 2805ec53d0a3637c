"""A single-producer, single-consumer ring of records in POSIX shared memory.

This layer knows bytes and records, not streams or numpy. A record is a kind,
a metadata blob, and zero or more buffers, laid out contiguously:

    u32 kind | u32 n_buffers | u64 record size | u64 metadata size | u64 size of each buffer
    metadata bytes ... | buffer 0 (64-byte aligned) | buffer 1 | ...

The segment starts with a control block: the producer's write position
(``head``) and the consumer's read position (``tail``), both ever-increasing
byte counts, on separate cache lines; a stop flag; and "I am waiting" flags.
Positions are published after the bytes they cover are written, so the
consumer never sees half a record. Waiting uses two semaphores with short
timeouts, so a lost wake-up costs at most one timeout, and every wait checks
a liveness callback. The segment is a file in ``/dev/shm`` (the same POSIX
shared memory that ``multiprocessing.shared_memory`` uses), reserved with
``posix_fallocate`` so that a full ``/dev/shm`` fails at creation instead of
with SIGBUS later, and unlinked as soon as both sides have it mapped.

Two quick paths serve streams of like items: ``put_again`` writes a record
laid out like the previous one with a cached header, and ``run_after`` lets
the consumer take a run of such records at once. A producer whose record does
not fit asks for a larger ring (``RECORD_GROW``) and moves to it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RECORD_ARRAYS",
    "RECORD_DATA",
    "RECORD_END",
    "RECORD_ERROR",
    "RECORD_GROW",
    "RECORD_READY",
    "Ring",
    "RingHandle",
    "Stopped",
]

RECORD_DATA = 1
RECORD_END = 2
RECORD_ERROR = 3
RECORD_READY = 4
_RECORD_WRAP = 5
RECORD_GROW = 6  # the producer needs a larger ring for its next record
RECORD_ARRAYS = 7  # an item in a compact encoding of the layer above

_ALIGN = 64
_CONTROL_BYTES = 4 * _ALIGN
# Control words (u64), each on its own cache line.
_HEAD, _PRODUCER_WAITING = 0, 1  # line 0: written by the producer
_TAIL, _CONSUMER_WAITING = 8, 9  # line 1: written by the consumer
_STOP = 16  # line 2: set by the consumer to ask the producer to stop
_NEXT_CAPACITY = 17  # line 2: the consumer's answer to a RECORD_GROW: the new ring's size...
_NEXT_NAME = 3 * _ALIGN  # line 3: ...and its name (length byte, then the bytes)

_HEADER = struct.Struct("<IIQQ")
_SIZE = struct.Struct("<Q")
_MASK = _ALIGN - 1


class _Sizes(dict[int, struct.Struct]):
    """Struct formats for n buffer sizes, made once per n."""

    def __missing__(self, n: int) -> struct.Struct:
        made = self[n] = struct.Struct(f"<{n}Q")
        return made


class _Headers(dict[int, struct.Struct]):
    """Struct formats for a header followed by n buffer sizes."""

    def __missing__(self, n: int) -> struct.Struct:
        made = self[n] = struct.Struct(f"<IIQQ{n}Q")
        return made


_SIZES = _Sizes()
_header = _Headers().__getitem__
_HEADER_1 = _header(1)

# How long one wait sleeps before it checks its peer is alive and looks again.
_WAIT_SLICE_S = 0.05
# How many times a waiting side looks at its peer's position before it sleeps (~10 µs).
_SPINS = 200
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
NAME_PREFIX = "pfp_"


class Stopped(Exception):
    """The consumer asked the producer to stop, or the peer is gone."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True)
class RingHandle:
    """What another process needs to attach: the segment's name, size and semaphores."""

    name: str
    capacity: int
    data_ready: Any  # a multiprocessing semaphore: the producer published something
    space_ready: Any  # a multiprocessing semaphore: the consumer freed space


class Ring:
    """One end of a ring; ``create`` makes the segment, ``attach`` maps an existing one."""

    def __init__(self, handle: RingHandle, buffer: mmap.mmap) -> None:
        self.handle = handle
        self.capacity = handle.capacity
        self._map = buffer
        self._view = memoryview(buffer)
        self._control = self._view[:_CONTROL_BYTES].cast("Q")
        self._data = self._view[_CONTROL_BYTES : _CONTROL_BYTES + self.capacity]
        self._linked = True
        # The producer's and consumer's private copies of the positions.
        self._head = self._control[_HEAD]
        self._tail = self._control[_TAIL]
        self._pending_release = 0
        self._repeat: tuple[int, int, int, bytes] | None = None  # (producer) the last record's layout

    # ------------------------------------------------------------ lifetime

    @classmethod
    def create(
        cls, capacity: int, semaphore: Callable[[int], Any], signals: RingHandle | None = None
    ) -> Ring:
        """Create and reserve a segment of ``capacity`` data bytes; ``OSError`` if shared memory is short.

        ``signals``: reuse the semaphores of that ring (a ring that replaces it).
        """
        capacity = _aligned(capacity)
        name = f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = _CONTROL_BYTES + capacity
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as error:
                os.unlink(path)
                raise OSError(
                    error.errno,
                    f"background: cannot reserve {size / 2**20:.1f} MiB of shared memory in {SHM_DIR} "
                    f"({error.strerror}); free space there or pass a smaller ring_bytes",
                ) from None
            buffer = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if signals is not None:
            return cls(RingHandle(name, capacity, signals.data_ready, signals.space_ready), buffer)
        return cls(RingHandle(name, capacity, semaphore(0), semaphore(0)), buffer)

    @classmethod
    def attach(cls, handle: RingHandle) -> Ring:
        """Map the segment that ``handle`` names (it must not be unlinked yet)."""
        fd = os.open(os.path.join(SHM_DIR, handle.name), os.O_RDWR)
        try:
            buffer = mmap.mmap(fd, _CONTROL_BYTES + handle.capacity)
        finally:
            os.close(fd)
        return cls(handle, buffer)

    def unlink(self) -> None:
        """Remove the segment's name; the memory lives on until both sides unmap it."""
        if self._linked:
            self._linked = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, self.handle.name))

    def close(self) -> None:
        """Unmap this end; idempotent."""
        if self._map.closed:
            return
        try:
            for view in (self._control, self._data, self._view):
                view.release()
            self._map.close()
        except BufferError:
            pass  # zero-copy arrays still point into the ring: it is unmapped when they are freed

    # ------------------------------------------------------------ producer

    def request_stop(self) -> None:
        """(consumer) Ask the producer to stop, and wake it if it waits for space."""
        self._control[_STOP] = 1
        self.handle.space_ready.release()

    def put(
        self,
        kind: int,
        metadata: bytes,
        buffers: Sequence[memoryview] = (),
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """(producer) Write one record, waiting for space; raise ``Stopped`` if asked to stop.

        ``buffers`` are byte views (format ``"B"``), each copied once into the ring.
        """
        n = len(buffers)
        meta_size = len(metadata)
        body = (_HEADER.size + _SIZE.size * n + meta_size + _MASK) & ~_MASK
        size = body
        for buffer in buffers:
            size += (buffer.nbytes + _MASK) & ~_MASK
        if size > self.capacity:
            self._grow(size, alive)
        capacity, control, head = self.capacity, self._control, self._head
        position = head % capacity
        waste = capacity - position if position + size > capacity else 0
        if control[_STOP] or capacity - (head - control[_TAIL]) < size + waste:
            self._wait_for_space(size + waste, alive)
        data = self._data
        if waste:
            _HEADER.pack_into(data, position, _RECORD_WRAP, 0, waste, 0)
            head += waste
            position = 0
        if n == 1:
            _HEADER_1.pack_into(data, position, kind, 1, size, meta_size, buffers[0].nbytes)
        else:
            _header(n).pack_into(data, position, kind, n, size, meta_size, *[b.nbytes for b in buffers])
        if meta_size:
            at = position + _HEADER.size + _SIZE.size * n
            data[at : at + meta_size] = metadata
        at = position + body
        for buffer in buffers:
            nbytes = buffer.nbytes
            data[at : at + nbytes] = buffer
            at += (nbytes + _MASK) & ~_MASK
        self._head = head + size
        control[_HEAD] = self._head  # publish
        if control[_CONSUMER_WAITING]:
            control[_CONSUMER_WAITING] = 0
            self.handle.data_ready.release()
        if n == 1 and not meta_size:  # remember the layout: the next record may repeat it
            self._repeat = (kind, buffers[0].nbytes, size, bytes(data[position : position + body]))

    def put_again(self, kind: int, buffer: memoryview) -> bool:
        """(producer) Write a record laid out like the last single-buffer one, if it fits now.

        The quick path for a stream of like items: ``False`` (nothing written)
        when the layout differs or the ring would have to wait or wrap; then
        use :meth:`put`.
        """
        repeat = self._repeat
        if repeat is None or repeat[0] != kind or repeat[1] != buffer.nbytes:
            return False
        _, nbytes, size, header = repeat
        control, head, capacity = self._control, self._head, self.capacity
        position = head % capacity
        if position + size > capacity or capacity - (head - control[_TAIL]) < size or control[_STOP]:
            return False
        data = self._data
        body = len(header)
        data[position : position + body] = header
        data[position + body : position + body + nbytes] = buffer
        self._head = head + size
        control[_HEAD] = self._head  # publish
        if control[_CONSUMER_WAITING]:
            control[_CONSUMER_WAITING] = 0
            self.handle.data_ready.release()
        return True

    def _grow(self, size: int, alive: Callable[[], bool] | None) -> None:
        """Ask the consumer for a ring that holds ``size`` bytes, and move to it."""
        self.put(RECORD_GROW, _SIZE.pack(size), alive=alive)
        while not self._control[_NEXT_CAPACITY]:
            self._doze(alive)
        length = self._view[_NEXT_NAME]
        name = bytes(self._view[_NEXT_NAME + 1 : _NEXT_NAME + 1 + length]).decode()
        handle = RingHandle(
            name, self._control[_NEXT_CAPACITY], self.handle.data_ready, self.handle.space_ready
        )
        larger = Ring.attach(handle)
        self.close()
        self.__dict__.update(larger.__dict__)

    def offer(self, larger: Ring) -> None:
        """(consumer) Answer a RECORD_GROW: tell the producer where the larger ring is."""
        name = larger.handle.name.encode()
        self._view[_NEXT_NAME] = len(name)
        self._view[_NEXT_NAME + 1 : _NEXT_NAME + 1 + len(name)] = name
        self._control[_NEXT_CAPACITY] = larger.capacity
        self.handle.space_ready.release()

    def _wait_for_space(self, size: int, alive: Callable[[], bool] | None) -> None:
        while True:
            if self._control[_STOP]:
                raise Stopped
            for _ in range(_SPINS):
                if self.capacity - (self._head - self._control[_TAIL]) >= size:
                    return
            self._control[_PRODUCER_WAITING] = 1
            if self.capacity - (self._head - self._control[_TAIL]) < size:  # not freed meanwhile
                self._doze(alive)

    def _doze(self, alive: Callable[[], bool] | None) -> None:
        """(producer) Sleep one slice or until the consumer signals; ``Stopped`` if asked or it is gone."""
        if self._control[_STOP]:
            raise Stopped
        if not self.handle.space_ready.acquire(timeout=_WAIT_SLICE_S) and alive is not None and not alive():
            raise Stopped

    # ------------------------------------------------------------ consumer

    def get(self, alive: Callable[[], bool]) -> tuple[int, memoryview, list[memoryview]] | None:
        """(consumer) The next record as (kind, metadata, buffers), waiting for it.

        The views stay valid until :meth:`release`. Returns ``None`` if
        ``alive()`` turns false while waiting and nothing more has arrived.
        """
        if self._pending_release:
            self.release()
        control, data = self._control, self._data
        while True:
            if self._tail == control[_HEAD]:
                if not self._wait_for_data(alive):
                    return None
                continue
            position = self._tail % self.capacity
            kind, n, size, meta_size = _HEADER.unpack_from(data, position)
            if kind == _RECORD_WRAP:
                self._advance(size)
                continue
            at = position + _HEADER.size
            sizes = _SIZES[n].unpack_from(data, at) if n else ()
            at += _SIZE.size * n
            metadata = data[at : at + meta_size]
            at = position + ((_HEADER.size + _SIZE.size * n + meta_size + _MASK) & ~_MASK)
            buffers = []
            for nbytes in sizes:
                buffers.append(data[at : at + nbytes])
                at += (nbytes + _MASK) & ~_MASK
            self._pending_release = size
            if self._linked:
                self.unlink()  # the producer has written, so it has the segment mapped
            return kind, metadata, buffers

    def run_after(self, limit: int) -> tuple[int, int, int, memoryview]:
        """(consumer) After ``get``: the run of records that starts with the current one.

        A run is the current record and those right after it, already published
        and before the ring wraps, whose headers are byte for byte the same
        (same kind and sizes, no metadata): at most ``limit`` records. Returns
        (count, stride, offset of the first buffer in a record, the run's bytes);
        free them with :meth:`release_run`.
        """
        size = self._pending_release
        position = self._tail % self.capacity
        data = self._data
        _, n, _, meta_size = _HEADER.unpack_from(data, position)
        header_end = _HEADER.size + _SIZE.size * n
        offset = (header_end + meta_size + _MASK) & ~_MASK
        end = position + min(self._control[_HEAD] - self._tail, self.capacity - position, size * limit)
        count, at = 1, position + size
        if not meta_size:
            header = data[position : position + header_end]
            while at + size <= end and data[at : at + header_end] == header:
                count += 1
                at += size
        return count, size, offset, data[position : position + count * size]

    def release_run(self, count: int, stride: int) -> None:
        """(consumer) Free a run that :meth:`run_after` returned."""
        self._pending_release = 0
        self._advance(count * stride)

    def release(self) -> None:
        """(consumer) Free the record that ``get`` returned last."""
        if self._pending_release:
            size, self._pending_release = self._pending_release, 0
            self._advance(size)

    def _advance(self, size: int) -> None:
        self._tail += size
        self._control[_TAIL] = self._tail
        if self._control[_PRODUCER_WAITING]:
            self._control[_PRODUCER_WAITING] = 0
            self.handle.space_ready.release()

    def _wait_for_data(self, alive: Callable[[], bool]) -> bool:
        # Look again for a little while before sleeping: a wake-up through the
        # semaphore costs more than a small item's whole journey.
        control, tail = self._control, self._tail
        for _ in range(_SPINS):
            if tail != control[_HEAD]:
                return True
        self._control[_CONSUMER_WAITING] = 1
        if self._tail != self._control[_HEAD]:
            return True
        if self.handle.data_ready.acquire(timeout=_WAIT_SLICE_S):
            return True
        # Nothing for a while: is the producer still there? Look once more after asking.
        return alive() or self._tail != self._control[_HEAD]
