"""Blocks of shared memory that a worker writes array bytes into, and the consumer owns until it drops them.

This layer knows blocks, not streams or items. It has two ends:

- :class:`Pool` (the worker's): hands out blocks and learns of their release.
  Blocks come in size classes from :data:`BLOCK_MIN` up, four between two
  powers of two, so a block holds at most 1.25 times the bytes asked for (a
  held array pins that much, never a neighbour's block). They are carved
  from segments that the worker makes as it needs them (a segment of a
  class holds a quarter as many blocks as the class has so far, up to
  :data:`SEGMENT_MAX` bytes: a pool that grows makes few segments, and
  reserves at most a quarter more than it needs). A new segment's descriptor
  goes to the consumer over a unix socket (``SCM_RIGHTS``) before any record
  that points into it, so it reaches the consumer even if the worker dies
  right after. The segment has no name: on the linux transport it never
  had one (an ``O_TMPFILE`` file in ``/dev/shm``, or a ``memfd``), on the
  portable one (POSIX ``shm_open``) its name is unlinked right after it is
  made and sized, before anything else.
  Its memory is reserved when it is made (``posix_fallocate``), so a short
  shared memory is an ``OSError`` the pool answers (``take`` returns ``None``:
  the caller sends the bytes another way) and never a SIGBUS.
- :class:`Blocks` (the consumer's): maps each segment once (keeping no
  descriptor open for it: held arrays of many segments cost no ``ulimit -n``), makes an array
  over a block, and when the last reference to that array goes
  (``weakref.finalize``) writes the block's number into the return queue.

The return queue is a single-producer ring of block numbers in a segment of
its own (the pool's first): the consumer writes under a ``threading.Lock``
(finalizers run on any thread), the worker reads it with plain loads when it
needs a block. Releases come back in any order; in steady state taking and
returning a block costs no system call.

What bounds memory:

- in flight (written, not yet received): where two records or more and
  more than ``budget`` bytes (the ring's capacity) would be in flight, the
  worker waits until the consumer has received enough of them to free half
  the budget (or all but one);
- held by the consumer: nothing. The pool grows when no block of the
  class is free; it never waits for the consumer to drop anything;
- freed: a block free for a whole sweep (:data:`COLD_S`, at least a
  second) gives its memory back to the system (``MADV_REMOVE``); it is
  reserved again (``posix_fallocate``) if it is taken later. Mappings stay
  until the pass ends: address space, not memory.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import importlib
import mmap
import os
import secrets
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ring import NAME_PREFIX, Ring, _LinuxSegment, _short_of_memory, shared_memory_free

_posixshmem: Any = None  # POSIX shared memory (what multiprocessing.shared_memory uses): not on Windows
with contextlib.suppress(ImportError):  # (Windows has no descriptors to pass either: see available())
    _posixshmem = importlib.import_module("_posixshmem")

__all__ = [
    "BLOCK_MIN",
    "COLD_S",
    "SEGMENT_MAX",
    "Blocks",
    "Pool",
    "PoolHandle",
    "available",
    "pool_pair",
    "segment_at",
]

#: The smallest block, and the smallest array that travels in one (smaller ones are copied
#: through the ring, which measures faster: see docs/background.md).
BLOCK_MIN = 128 * 2**10
#: The largest segment a pool makes for several blocks (a larger block has a segment of its own).
SEGMENT_MAX = 64 * 2**20
#: A block free this long (between two sweeps) gives its memory back to the system.
COLD_S = 1.0

_QUEUE_ENTRIES = 8192
# u64 words on their own cache lines: consumer's, worker's, worker's. _Q_KEEP (consumer's): keep the
# memory of free blocks (CUDA has the segments registered: its pages must stay where they are).
_Q_HEAD, _Q_TAIL, _Q_SENT, _Q_KEEP = 0, 8, 16, 24
_Q_FIRST = 32  # the first entry
_QUEUE_BYTES = (_Q_FIRST + _QUEUE_ENTRIES) * 8
_ANNOUNCE = struct.Struct("<qQQ")  # segment number, bytes, block bytes
_NO_BLOCK = -1


def available() -> bool:
    """Whether this system can hand descriptors between processes (``socket.send_fds``): not Windows."""
    return hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX") and _posixshmem is not None


def size_class(nbytes: int) -> int:
    """The block size for ``nbytes``: at least :data:`BLOCK_MIN`, four classes per power of two.

    >>> size_class(1), size_class(2**20), size_class(2**20 + 1), size_class(9 * 2**20 + 1)
    (131072, 1048576, 1310720, 10485760)
    """
    if nbytes <= BLOCK_MIN:
        return BLOCK_MIN
    step = 1 << ((nbytes - 1).bit_length() - 3)  # an eighth of the power of two that holds it
    return -(-nbytes // step) * step


@dataclass(frozen=True)
class PoolHandle:
    """What a worker needs to make its pool: its end of the socket, and the transport."""

    sock: socket.socket
    transport: str


def pool_pair(transport: str, shared: dict[str, Any]) -> tuple[PoolHandle, Blocks]:
    """A worker's handle and the consumer's end, joined by a unix socket pair made now (before start).

    ``shared``: one dict for all the consumer's ends of a pass (it notes that
    the pass has warned of a shortage).
    """
    consumer, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return PoolHandle(worker, transport), Blocks(consumer, shared)


def _make_segment(size: int, transport: str) -> tuple[int, mmap.mmap]:
    """A reserved segment of ``size`` bytes with no name: (descriptor, mapping); ``OSError`` if short."""
    if transport == "linux":
        segment = _LinuxSegment.create(size)
        return segment.fd, segment.map
    free = shared_memory_free()
    if free is not None and size > free:
        raise _short_of_memory(size, OSError(28, os.strerror(28)))  # ENOSPC
    # POSIX shm_open, sized and unlinked at once (three system calls: a process killed between
    # them is all that could leave a name), never registered with the resource tracker.
    name = f"/{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, size)
    except OSError as error:
        os.close(fd)
        raise _short_of_memory(size, error) from None
    finally:
        _posixshmem.shm_unlink(name)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        mapped = mmap.mmap(fd, size)
        if not hasattr(os, "posix_fallocate"):  # macOS: touch every page
            with memoryview(mapped) as view:
                view[:: mmap.PAGESIZE] = bytes(len(range(0, size, mmap.PAGESIZE)))
        return fd, mapped
    except OSError as error:
        os.close(fd)
        raise _short_of_memory(size, error) from None


class Pool:
    """(worker) Hands out blocks of shared memory and learns of their release; knows nothing of items.

    ``take`` gives a free block of the size class, else grows the pool;
    ``None`` where shared memory is short (then :attr:`short` says why, once).
    """

    def __init__(self, handle: PoolHandle, budget: int) -> None:
        self._sock = handle.sock
        self._transport = handle.transport
        self.budget = budget
        self._fds: list[int] = []
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._block_bytes: list[int] = []
        self._free: dict[int, list[int]] = collections.defaultdict(list)  # size class -> block numbers
        self._blocks_of: dict[int, int] = collections.defaultdict(int)  # size class -> blocks made
        self._idle: set[int] = set()  # free since the last sweep
        self._cold: set[int] = set()  # memory given back: reserve before use
        self._swept = time.monotonic()
        # (ring moves, ring position, bytes) of the records with blocks that the consumer may not have read
        self._in_flight: collections.deque[tuple[int, int, int]] = collections.deque()
        self._in_flight_bytes = 0
        self._short_until = 0.0
        self.short = ""  # why the pool could not grow, until the caller has said so
        self._said_short = False
        self._announce(_QUEUE_BYTES, _QUEUE_BYTES)  # segment 0: the return queue
        self._queue = self._views[0].cast("Q")
        self._queue_tail = 0
        self._sent = 0

    def close(self) -> None:
        """Close the socket, the descriptors and this side's mappings (the consumer's stay)."""
        self._sock.close()
        self._queue.release()
        for view in self._views:
            view.release()
        for fd, mapped in zip(self._fds, self._maps):
            os.close(fd)
            with contextlib.suppress(BufferError):
                mapped.close()

    def _announce(self, size: int, block: int) -> int:
        """Make a segment, send its descriptor to the consumer; its number."""
        fd, mapped = _make_segment(size, self._transport)
        number = len(self._maps)
        try:
            socket.send_fds(self._sock, [_ANNOUNCE.pack(number, size, block)], [fd])
        except BaseException:
            os.close(fd)
            mapped.close()
            raise
        self._fds.append(fd)
        self._maps.append(mapped)
        self._views.append(memoryview(mapped))
        self._block_bytes.append(block)
        return number

    def take(
        self, nbytes: int, ring: Ring, alive: Callable[[], bool] | None
    ) -> tuple[int, memoryview] | None:
        """A block for ``nbytes``: (its number, a byte view of it); ``None`` if shared memory is short.

        Waits first (``Stopped`` if asked to stop) while too much is in flight.
        """
        if self._in_flight:
            self._wait_in_flight(nbytes, ring, alive)
        self._drain()
        size = size_class(nbytes)
        free = self._free[size]
        now = time.monotonic()
        if now - self._swept > COLD_S:
            self._sweep(now)
        if free:
            number = free.pop()
            self._idle.discard(number)
            if number in self._cold and not self._reserve(number, size):
                free.append(number)
                return None
        else:
            number = self._grow(size, now)
            if number < 0:
                return None
        segment, slot = number >> 32, number & 0xFFFFFFFF
        at = slot * size
        return number, self._views[segment][at : at + nbytes]

    def put_back(self, number: int) -> None:
        """Return a block taken but not sent."""
        self._free[self._block_bytes[number >> 32]].append(number)

    def sent(self, ring: Ring, nbytes: int) -> None:
        """Note that the record just written into ``ring`` carries blocks of ``nbytes`` in all."""
        self._in_flight.append((ring.moves, ring.written, nbytes))
        self._in_flight_bytes += nbytes
        self._sent += nbytes
        self._queue[_Q_SENT] = self._sent

    def _wait_in_flight(self, nbytes: int, ring: Ring, alive: Callable[[], bool] | None) -> None:
        """Wait, where two records or more and more than ``budget`` bytes would be in flight, until
        half the budget is free (or one record is left): one wake-up for many records, as the ring's."""
        self._forget_read(ring)
        in_flight = self._in_flight
        if len(in_flight) < 2 or self._in_flight_bytes + nbytes <= self.budget:
            return
        left, count, until = self._in_flight_bytes, len(in_flight), 0
        for _, position, size in in_flight:  # (all written since the ring last moved: see _forget_read)
            left, count, until = left - size, count - 1, position
            if left + nbytes <= self.budget // 2 or count == 1:
                break
        ring.wait_read(until, alive)
        self._forget_read(ring)

    def _forget_read(self, ring: Ring) -> None:
        """Drop the records the consumer has read (all of them, where the ring has moved since)."""
        in_flight, read, moves = self._in_flight, ring.read_position(), ring.moves
        while in_flight and (in_flight[0][0] != moves or in_flight[0][1] <= read):
            self._in_flight_bytes -= in_flight.popleft()[2]

    def _drain(self) -> None:
        """Take the block numbers that the consumer has returned."""
        queue, tail = self._queue, self._queue_tail
        head = queue[_Q_HEAD]
        if head == tail:
            return
        free, block_bytes = self._free, self._block_bytes
        while tail < head:
            number = queue[_Q_FIRST + tail % _QUEUE_ENTRIES]
            free[block_bytes[number >> 32]].append(number)
            tail += 1
        self._queue_tail = queue[_Q_TAIL] = tail

    def _sweep(self, now: float) -> None:
        """Give back the memory of blocks free since the last sweep; note those free now."""
        self._swept = now
        remove = getattr(mmap, "MADV_REMOVE", None)
        if remove is not None and not self._queue[_Q_KEEP]:
            for number in self._idle - self._cold:
                segment, slot = number >> 32, number & 0xFFFFFFFF
                size = self._block_bytes[segment]
                with contextlib.suppress(OSError):
                    self._maps[segment].madvise(remove, slot * size, size)
                    self._cold.add(number)
        self._idle = {number for blocks in self._free.values() for number in blocks}

    def _reserve(self, number: int, size: int) -> bool:
        """Reserve a cold block's memory again; whether there was room."""
        segment, slot = number >> 32, number & 0xFFFFFFFF
        try:
            os.posix_fallocate(self._fds[segment], slot * size, size)
        except OSError as error:
            self._note_short(size, error)
            return False
        self._cold.discard(number)
        return True

    def _grow(self, size: int, now: float) -> int:
        """A new segment of blocks of ``size``: the first block's number; -1 if shared memory is short."""
        if now < self._short_until:
            return -1
        count = max(1, min(self._blocks_of[size] // 4, SEGMENT_MAX // size))
        while True:
            try:
                segment = self._announce(count * size, size)
                break
            except OSError as error:
                if count > 1:
                    count = 1
                    continue
                self._note_short(size, error)
                self._short_until = now + COLD_S  # try again a while later, not for every item
                return -1
        self._blocks_of[size] += count
        first = segment << 32
        self._free[size].extend(range(first + count - 1, first, -1))
        return first

    def _note_short(self, size: int, error: OSError) -> None:
        """Say why (once): ``error`` says how much could not be reserved where it was made."""
        if not self._said_short:
            self._said_short = True
            self.short = str(error) if "shared memory" in str(error) else str(_short_of_memory(size, error))


# How many times this process is a fork's child: a child that drops an array it inherited must not
# return the block, which its parent still holds (the parent's worker would write it again).
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class Blocks:
    """(consumer) One worker's blocks: maps its segments, makes arrays over blocks, returns dropped ones."""

    def __init__(self, sock: socket.socket, shared: dict[str, Any]) -> None:
        self._forks = _forks
        self._sock = sock
        self.shared = shared
        self._maps: dict[int, tuple[Any, int]] = {}
        self._queue: Any = None
        self._head = 0
        self._backlog: list[int] = []
        self._lock = threading.Lock()
        self.received = 0  # block bytes received

    def close(self) -> None:
        """Close the socket and forget the mappings: arrays still held keep theirs."""
        self._sock.close()
        self._maps = {}

    def in_flight(self) -> int:
        """Bytes in blocks that the worker has sent and this end not yet received."""
        return self._queue[_Q_SENT] - self.received if self._queue is not None else 0

    def array(self, number: int, nbytes: int) -> np.ndarray:
        """A writable uint8 array over block ``number``'s first ``nbytes``; the block returns when it goes."""
        segment = number >> 32
        found = self._maps.get(segment)
        if found is None:
            found = self._receive(segment)
        mapped, size = found
        holder = np.frombuffer(mapped, np.uint8, nbytes, (number & 0xFFFFFFFF) * size)
        weakref.finalize(holder, self.release, number)
        self.received += nbytes
        return holder

    def _receive(self, wanted: int) -> tuple[Any, int]:
        """Map the segments the worker has announced, up to ``wanted``."""
        self._sock.settimeout(10.0)  # it was sent before the record that names it
        while True:
            message, fds, flags, _ = socket.recv_fds(self._sock, _ANNOUNCE.size, 1)
            if message and not fds and flags & socket.MSG_CTRUNC:
                # The kernel drops a descriptor that this process has no room for, and says so here.
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            if len(message) < _ANNOUNCE.size or not fds:
                raise EOFError("a background worker's pool closed before it announced a segment")
            number, size, block = _ANNOUNCE.unpack(message)
            try:
                mapped: Any = mmap.mmap(fds[0], size) if number == 0 else _map_shared(fds[0], size)
            finally:
                os.close(fds[0])
            self._maps[number] = (mapped, block)
            if number == 0:
                self._queue = memoryview(mapped).cast("Q")
            else:
                _note_segment(mapped, size, self)
            if number == wanted:
                return mapped, block

    def keep_memory(self) -> None:
        """Ask the worker never to give the memory of free blocks back (CUDA has its segments registered)."""
        if self._queue is not None:
            self._queue[_Q_KEEP] = 1

    def release(self, number: int) -> None:
        """Give block ``number`` back to the worker (a finalizer: any thread, never waits)."""
        if self._forks != _forks:
            return  # a forked child dropping its copy: the block is its parent's
        with self._lock:
            queue = self._queue
            head = self._head
            room = _QUEUE_ENTRIES - (head - queue[_Q_TAIL])
            backlog = self._backlog
            if backlog:
                backlog.append(number)
                while backlog and room:
                    queue[_Q_FIRST + head % _QUEUE_ENTRIES] = backlog.pop()
                    head += 1
                    room -= 1
            elif room:
                queue[_Q_FIRST + head % _QUEUE_ENTRIES] = number
                head += 1
            else:
                backlog.append(number)
            self._head = queue[_Q_HEAD] = head


_libc: Any = None


def _map_shared(fd: int, size: int) -> Any:
    """(consumer) ``fd``'s first ``size`` bytes mapped shared and writable, as a ctypes byte array that
    unmaps them when it goes; it keeps no descriptor (``mmap.mmap`` keeps a copy of ``fd`` open for
    as long as it lives: one per segment that held arrays pin, and a consumer that keeps arrays of
    many passes or sizes would run out of descriptors, ``ulimit -n``)."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        c_int = ctypes.c_int
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc = libc
    address = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    mapped = (ctypes.c_ubyte * size).from_address(address)
    weakref.finalize(mapped, _libc.munmap, address, size).atexit = False  # (arrays may outlive atexit)
    return mapped


# (consumer) The segments mapped in this process, by start address: (bytes, the mapping, its Blocks).
_SEGMENTS: dict[int, tuple[int, weakref.ref[Any], Blocks]] = {}


def _note_segment(mapped: Any, size: int, blocks: Blocks) -> None:
    start = np.frombuffer(mapped, np.uint8, 1).ctypes.data
    _SEGMENTS[start] = (size, weakref.ref(mapped), blocks)
    weakref.finalize(mapped, _SEGMENTS.pop, start, None)


def segment_at(address: int) -> tuple[int, int, Any, Blocks] | None:
    """(consumer) The pool segment that holds ``address``: (start, bytes, mapping, its Blocks), or ``None``.

    >>> segment_at(0) is None
    True
    """
    for start, (size, ref, blocks) in list(_SEGMENTS.items()):
        mapped = ref()
        if mapped is not None and start <= address < start + size:
            return start, size, mapped, blocks
    return None
