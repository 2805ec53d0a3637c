"""A single-producer, single-consumer ring of records in shared memory.

This layer knows bytes and records, not streams or numpy. A record is a kind,
a metadata blob, and zero or more buffers, laid out contiguously:

    u32 kind | u32 n_buffers | u64 record size | u64 metadata size | u64 size of each buffer
    metadata bytes ... | buffer 0 (64-byte aligned) | buffer 1 | ...

The segment starts with a control block: the producer's write position
(``head``) and the consumer's read position (``tail``), both ever-increasing
byte counts, on separate cache lines; a stop flag; and "I am waiting" flags.
Positions are published after the bytes they cover are written, so the
consumer never sees half a record. A record that does not fit before the end
of the ring is preceded by a wrap marker over the rest, written as soon as the
consumer has left that rest, so any record up to the ring's capacity fits.
Waiting uses two semaphores with short timeouts, so a lost wake-up costs at
most one timeout (the first sleep of a wait is the shortest), and every wait
checks a liveness callback. A producer that finds the ring full asks to be
woken once half of it is free, so that it sleeps once per half ring rather
than once per record.

Two quick paths serve streams of like items: ``put_again`` writes a record
laid out like the previous one with a cached header, and ``run_after`` lets
the consumer take a run of such records at once. A record larger than the
ring makes the producer ask for a larger one (a grow record); the consumer's
``get`` makes it, tells the producer where it is, and both move to it.

Two transports carry the same ring; the segment's memory is reserved when it
is made, so that a short shared memory is an ``OSError`` there and never a
SIGBUS later:

- ``linux``: a file with no name at all: an ``O_TMPFILE`` file in
  ``/dev/shm`` (whose size limit it counts against), or a ``memfd`` where
  ``/dev/shm`` is missing, reserved with ``posix_fallocate``. A process
  started with the ring's handle gets the descriptor with it (inherited under
  fork, passed by ``multiprocessing.reduction.DupFd`` under spawn and
  forkserver); the producer of a grown ring, already running, opens the
  consumer's descriptor through ``/proc/<pid>/fd/<n>``. The kernel frees the
  memory when the last descriptor and mapping go, however the processes end.
  The two semaphores have no name either: they are ``eventfd`` counters,
  whose descriptors travel with the handle like the segment's (a
  multiprocessing semaphore has a name in ``/dev/shm`` under spawn and
  forkserver, which only the resource tracker would remove after a SIGKILL,
  and the tracker dies too when the whole process group is killed).
- ``portable`` (macOS, Windows, or ``PESCADOR_FP_TRANSPORT=portable``): a
  ``multiprocessing.shared_memory.SharedMemory``, reserved with
  ``posix_fallocate`` where that exists, else by touching every page. Its
  name is unlinked as soon as both sides have it mapped. Its semaphores are
  the caller's (a multiprocessing context's ``Semaphore``).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import select
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.shared_memory import SharedMemory
from typing import Any

__all__ = [
    "NAME_PREFIX",
    "RECORD_ARRAYS",
    "RECORD_ARRAY_BLOCKS",
    "RECORD_DATA",
    "RECORD_DATA_BLOCKS",
    "RECORD_END",
    "RECORD_ERROR",
    "RECORD_READY",
    "RECORD_SHORT",
    "SHM_DIR",
    "TRANSPORTS",
    "TRANSPORT_VARIABLE",
    "Ring",
    "RingHandle",
    "Stopped",
    "default_transport",
    "shared_memory_free",
]

RECORD_DATA = 1
RECORD_END = 2
RECORD_ERROR = 3
RECORD_READY = 4
_RECORD_WRAP = 5
_RECORD_GROW = 6  # the producer needs a larger ring for its next record; ``get`` answers it
RECORD_ARRAYS = 7  # an item in a compact encoding of the layer above
RECORD_ARRAY_BLOCKS = 8  # the same, its large arrays in blocks of a pool (``pool``) rather than in the ring
RECORD_DATA_BLOCKS = 9  # a pickled item, its large buffers in blocks of a pool
RECORD_SHORT = 10  # the producer's pool could not grow (shared memory short): why, said once

_ALIGN = 64
_CONTROL_BYTES = 4 * _ALIGN
# Control words (u64), each on its own cache line.
_HEAD, _PRODUCER_WAITING = 0, 1  # line 0: written by the producer
_TAIL = 8  # line 1: written by the consumer as it frees records
_STOP = 16  # line 2: set by the consumer to ask the producer to stop
# line 2, not 1: the producer reads it after every record, and line 1 changes with every record
# the consumer frees; line 2 changes only when the consumer goes to sleep.
_CONSUMER_WAITING = 19
_NEXT_CAPACITY = 17  # line 2: the consumer's answer to a grow record: the new ring's size...
_CREATOR_CONSUMES = 18  # line 2: the creator reads the ring: the first process to attach completes the pair
_NEXT_AT = 3 * _ALIGN  # line 3: ...and where it is (length byte, then the transport's locator)

_HEADER = struct.Struct("<IIQQ")
_SIZE = struct.Struct("<Q")
_LOCATOR = struct.Struct("<QQQ")  # linux transport: pid, descriptor, inode
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
# The first sleep of a wait is shorter: the "I am waiting" flag and the peer's position are
# plain stores and loads, which the CPU may reorder, so a wake-up call can be missed (rarely:
# 2 in 9 673 sleeps once); it then costs this much, not a whole slice.
_FIRST_WAIT_S = 0.002
# How many times a waiting side looks at its peer's position before it sleeps (~10 µs).
_SPINS = 200
# A consumer waiting for a record looks this many times _SPINS (~50 µs) before it sleeps, as
# long as its sleeps are short (records come a little slower than it reads them).
_DATA_SPIN_ROUNDS = 5
_SHORT_SLEEP_S = 100e-6
_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", lambda: None)
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
# Portable segments are named f"{NAME_PREFIX}{creator pid}_{random}" (25 characters at most, as macOS needs).
NAME_PREFIX = "pfp_"
TRANSPORT_VARIABLE = "PESCADOR_FP_TRANSPORT"
_LINUX = (
    sys.platform.startswith("linux")
    and hasattr(os, "posix_fallocate")
    and os.path.isdir("/proc/self/fd")
    and (hasattr(os, "O_TMPFILE") or hasattr(os, "memfd_create"))
    and hasattr(os, "eventfd")
)
# The transports this system offers, the default first.
TRANSPORTS = ("linux", "portable") if _LINUX else ("portable",)


class Stopped(Exception):
    """The consumer asked the producer to stop, or the peer is gone."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def default_transport() -> str:
    """``linux`` where the kernel offers files without names, else ``portable``.

    The environment variable ``PESCADOR_FP_TRANSPORT`` (``linux`` or
    ``portable``) overrides the choice; it is read each time a ring is made.
    """
    chosen = os.environ.get(TRANSPORT_VARIABLE)
    if chosen:
        if chosen not in TRANSPORTS:
            raise ValueError(f"{TRANSPORT_VARIABLE}={chosen!r} is not one of {TRANSPORTS} on this system")
        return chosen
    return TRANSPORTS[0]


def shared_memory_free() -> int | None:
    """Bytes that new rings may still take, where the system limits them (``None``: no known limit)."""
    if default_transport() == "linux" and not os.path.isdir("/dev/shm"):
        return _memory_available()
    if os.path.isdir("/dev/shm"):
        return shutil.disk_usage("/dev/shm").free
    return None  # macOS and Windows: shared memory is ordinary memory, limited only by it


def _memory_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return sys.maxsize


def _short_of_memory(size: int, error: OSError, where: str = "") -> OSError:
    return OSError(
        error.errno,
        f"cannot reserve {_in_units(size)} of shared memory{where} ({error.strerror or error})",
    )


def _in_units(size: int) -> str:
    """``size`` bytes in the largest binary unit that leaves at least 1 of it.

    >>> _in_units(3 * 2**20), _in_units(2**55)
    ('3.0 MiB', '32768.0 TiB')
    """
    unit, scale = "MiB", 2**20
    for name, factor in (("GiB", 2**30), ("TiB", 2**40)):
        if size >= factor:
            unit, scale = name, factor
    return f"{size / scale:.1f} {unit}"


# ---------------------------------------------------------------- transports


class _LinuxSegment:
    """A mapped file with no name: freed by the kernel when the last descriptor and mapping go."""

    transport = "linux"
    name = ""

    def __init__(self, fd: int, size: int, keep_fd: bool) -> None:
        self.map = mmap.mmap(fd, size)
        # The creator keeps its descriptor: a process started later gets a copy of it, and the
        # producer of a grown ring opens it through /proc. Those that attach need none.
        self.fd = fd if keep_fd else -1

    @classmethod
    def create(cls, size: int) -> _LinuxSegment:
        fd, where = -1, ""
        with contextlib.suppress(OSError, AttributeError):  # no /dev/shm, or no O_TMPFILE there
            fd, where = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600), " in /dev/shm"
        if fd < 0:
            fd = os.memfd_create(f"{NAME_PREFIX}{os.getpid()}", os.MFD_CLOEXEC)
        try:
            # A memfd counts against no tmpfs limit: reserving more than the machine has would
            # take all its memory before failing, so look first.
            if not where and size > _memory_available():
                raise OSError(12, os.strerror(12))  # ENOMEM
            os.posix_fallocate(fd, 0, size)
            return cls(fd, size, keep_fd=True)
        except OSError as error:
            os.close(fd)
            raise _short_of_memory(size, error, where) from None
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, handle: RingHandle) -> _LinuxSegment:
        try:
            return cls(handle.fd, _CONTROL_BYTES + handle.capacity, keep_fd=False)
        finally:
            if handle.fd_owned:  # a copy that came with the pickled handle: ours to close
                os.close(handle.fd)

    def locator(self) -> bytes:
        return _LOCATOR.pack(os.getpid(), self.fd, os.fstat(self.fd).st_ino)

    @classmethod
    def open(cls, locator: bytes, size: int) -> _LinuxSegment:
        pid, fd, inode = _LOCATOR.unpack(locator)
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
        try:
            if os.fstat(own).st_ino != inode:  # the creator is gone and its descriptor number reused
                raise FileNotFoundError(2, "the ring's creator has closed it", f"/proc/{pid}/fd/{fd}")
            return cls(own, size, keep_fd=False)
        finally:
            os.close(own)

    def forget(self) -> None:
        """Nothing to do: there is no name."""

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _PortableSegment:
    """A ``multiprocessing.shared_memory`` segment in our own ``mmap``, named until both sides hold it."""

    transport = "portable"
    fd = -1

    def __init__(self, shm: SharedMemory, size: int) -> None:
        self.name = shm.name
        self._shm: SharedMemory | None = shm
        # Our own mapping, closed like the linux transport's: a zero-copy view may outlive close().
        if sys.platform == "win32":
            self.map = mmap.mmap(-1, size, tagname=shm.name)
        else:
            self.map = mmap.mmap(_descriptor(shm), size)
        shm.close()  # its own mapping and descriptor; the name stays until forget()

    @classmethod
    def create(cls, size: int) -> _PortableSegment:
        free = shared_memory_free()
        if free is not None and size > free:
            # Said before SharedMemory tries: where its own mapping fails, it unregisters a name
            # it never registered, and the resource tracker prints a KeyError.
            raise _short_of_memory(size, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        try:
            shm = SharedMemory(f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(6)}", create=True, size=size)
        except OSError as error:
            raise _short_of_memory(size, error) from None
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(_descriptor(shm), 0, size)
                return cls(shm, size)
            segment = cls(shm, size)
            with memoryview(segment.map) as view:  # no fallocate (macOS, Windows): touch every page
                view[: size : mmap.PAGESIZE] = bytes(len(range(0, size, mmap.PAGESIZE)))
            return segment
        except OSError as error:
            shm.close()
            shm.unlink()
            raise _short_of_memory(size, error) from None
        except BaseException:
            shm.close()
            shm.unlink()
            raise

    @classmethod
    def attach(cls, handle: RingHandle) -> _PortableSegment:
        return cls.open(handle.name.encode(), _CONTROL_BYTES + handle.capacity)

    def locator(self) -> bytes:
        return self.name.encode()

    @classmethod
    def open(cls, locator: bytes, size: int) -> _PortableSegment:
        # Before Python 3.13 this registers the name with the resource tracker, as the creator
        # did; the tracker is one process shared by the creator and the processes it starts,
        # so that adds nothing, and forget() (which unlinks and unregisters) takes it away.
        return cls(SharedMemory(locator.decode()), size)

    def forget(self) -> None:
        """Unlink the name (and drop it from the resource tracker); idempotent."""
        shm, self._shm = self._shm, None
        if shm is not None:
            with contextlib.suppress(FileNotFoundError):  # the other side was first
                shm.unlink()

    def close_fd(self) -> None:
        """Nothing to do: ``SharedMemory.close`` closed it."""


def _descriptor(shm: SharedMemory) -> int:
    fd: int = getattr(shm, "_fd", -1)  # SharedMemory keeps its POSIX descriptor here (3.8 to 3.14)
    if fd < 0:
        raise OSError(9, "multiprocessing.shared_memory.SharedMemory exposes no descriptor here")
    return fd


class _EventSemaphore:
    """(linux transport) A counting semaphore on an ``eventfd``: no name, freed with its last descriptor.

    Pickled (in a new process's start arguments) it takes a copy of its
    descriptor along, as the segment does; each process closes its own copy
    (:meth:`Ring.close`). Waits and wake-ups as a multiprocessing semaphore's.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._ready = select.poll()  # poll, not select: select fails on descriptors from 1024 on
        self._ready.register(fd, select.POLLIN)

    @classmethod
    def create(cls, value: int = 0) -> _EventSemaphore:
        return cls(os.eventfd(value, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC))

    def release(self) -> None:
        os.eventfd_write(self.fd, 1)

    def acquire(self, timeout: float) -> bool:
        """Take one count, waiting up to ``timeout`` seconds for it; whether it got one."""
        if self._ready.poll(timeout * 1e3):
            with contextlib.suppress(BlockingIOError):  # (another process waiting on it took the count)
                os.eventfd_read(self.fd)
                return True
        return False

    def close(self) -> None:
        """Close this process's descriptor; idempotent."""
        if self.fd >= 0:
            self._ready.unregister(self.fd)
            os.close(self.fd)
            self.fd = -1

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt_semaphore, (reduction.DupFd(self.fd),)


def _rebuilt_semaphore(fd: Any) -> _EventSemaphore:
    return _EventSemaphore(fd.detach())


_Segment = _LinuxSegment | _PortableSegment
_TRANSPORT_OF: dict[str, type[_LinuxSegment] | type[_PortableSegment]] = {
    "linux": _LinuxSegment,
    "portable": _PortableSegment,
}


@dataclass(frozen=True)
class RingHandle:
    """What another process needs to attach: the transport's reference to the segment, its size, semaphores.

    Pass it to a new process in its start arguments: under spawn and
    forkserver a linux segment's descriptor travels with it.
    """

    capacity: int
    data_ready: Any  # a multiprocessing semaphore: the producer published something
    space_ready: Any  # a multiprocessing semaphore: the consumer freed space
    transport: str
    name: str = ""  # portable: the segment's name
    fd: int = -1  # linux: a descriptor of the segment
    fd_owned: bool = False  # linux: this copy came with a pickle, and its descriptor is the receiver's

    def __reduce__(self) -> tuple[Any, ...]:
        fd = reduction.DupFd(self.fd) if self.fd >= 0 else None
        fields = (self.capacity, self.data_ready, self.space_ready, self.transport, self.name, fd)
        return _rebuilt_handle, fields


def _rebuilt_handle(
    capacity: int, data_ready: Any, space_ready: Any, transport: str, name: str, fd: Any
) -> RingHandle:
    if fd is None:
        return RingHandle(capacity, data_ready, space_ready, transport, name)
    return RingHandle(capacity, data_ready, space_ready, transport, name, fd.detach(), fd_owned=True)


class Ring:
    """One end of a ring; ``create`` makes the segment, ``attach`` maps it in another process."""

    def __init__(self, handle: RingHandle, segment: _Segment) -> None:
        self.handle = handle
        self.capacity = handle.capacity
        self._segment = segment
        self._map = segment.map
        self._view = memoryview(segment.map)
        self._control = self._view[:_CONTROL_BYTES].cast("Q")
        self._data = self._view[_CONTROL_BYTES : _CONTROL_BYTES + self.capacity]
        # The producer's and consumer's private copies of the positions.
        self._head = self._control[_HEAD]
        self._tail = self._control[_TAIL]
        self._pending_release = 0
        # (producer) The last single-buffer record's layout: kind, buffer bytes, record bytes, header.
        self._repeat: tuple[int, int, int, bytes, int] | None = None
        self._reserved = 0  # (producer) the size of the record reserve() made room for, not yet committed
        self._room_until = 0  # (producer) where the free room ended when it last looked at the tail
        self._named = bool(segment.name)  # (consumer) the segment may still have a name to remove
        self._spin_rounds = _DATA_SPIN_ROUNDS  # (consumer) how long it looks before it sleeps
        self.moves = 0  # (producer) how many times it moved to a larger ring

    # ------------------------------------------------------------ lifetime

    @classmethod
    def create(
        cls,
        capacity: int,
        semaphore: Callable[[int], Any],
        *,
        creator_consumes: bool = False,
        transport: str | None = None,
    ) -> Ring:
        """Make and reserve a ring of ``capacity`` data bytes; ``OSError`` if shared memory is short.

        ``semaphore(0)`` makes the two semaphores of a portable ring (a
        multiprocessing context's ``Semaphore``); a linux ring makes its own,
        which have no name. ``creator_consumes``: this process will read the ring,
        so the first process to attach is its producer, and a portable
        segment's name goes as soon as that one has it mapped; otherwise
        (a ring between two other processes) the consumer's first record
        removes it. ``transport``: ``"linux"`` or ``"portable"``; the default
        is :func:`default_transport`.
        """
        transport = transport or default_transport()
        if transport != "linux":
            return cls._create(_aligned(capacity), semaphore(0), semaphore(0), transport, creator_consumes)
        data_ready = _EventSemaphore.create()
        try:
            space_ready = _EventSemaphore.create()
        except BaseException:  # (descriptors short)
            data_ready.close()
            raise
        try:
            return cls._create(_aligned(capacity), data_ready, space_ready, transport, creator_consumes)
        except BaseException:  # no ring (shared memory short): its descriptors go too
            data_ready.close()
            space_ready.close()
            raise

    @classmethod
    def _create(
        cls, capacity: int, data_ready: Any, space_ready: Any, transport: str, creator_consumes: bool
    ) -> Ring:
        segment = _TRANSPORT_OF[transport].create(_CONTROL_BYTES + capacity)
        handle = RingHandle(capacity, data_ready, space_ready, transport, segment.name, segment.fd)
        ring = cls(handle, segment)
        ring._control[_CREATOR_CONSUMES] = creator_consumes
        return ring

    @classmethod
    def attach(cls, handle: RingHandle) -> Ring:
        """Map the ring that ``handle`` describes, in a process its creator started."""
        ring = cls(handle, _TRANSPORT_OF[handle.transport].attach(handle))
        if ring._control[_CREATOR_CONSUMES]:
            ring._segment.forget()  # creator and this process, both sides hold it now
        return ring

    def unlink(self) -> None:
        """Remove the segment's name, if it still has one; the memory lives on until both sides unmap it."""
        self._segment.forget()

    def close(self) -> None:
        """Unmap this end and close its semaphores; idempotent.

        Zero-copy views keep the memory mapped until they are freed.
        """
        self._unmap()
        if self.handle.transport == "linux":  # this process's descriptors (portable: nothing to close)
            self.handle.data_ready.close()
            self.handle.space_ready.close()

    def _unmap(self) -> None:
        """Unmap this end, keeping the semaphores (a grown ring goes on with them)."""
        if self._map.closed:
            return
        self._segment.close_fd()
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

    def stop_requested(self) -> bool:
        """Whether the consumer has asked the producer to stop (:meth:`request_stop`)."""
        return bool(self._control[_STOP])

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
        sizes = [buffers[0].nbytes] if n == 1 else [b.nbytes for b in buffers]
        position, size, body = self._place(kind, metadata, sizes, alive)
        data = self._data
        at = position + body
        for buffer, nbytes in zip(buffers, sizes):
            data[at : at + nbytes] = buffer
            at += (nbytes + _MASK) & ~_MASK
        self._publish(self._head + size)
        if n == 1 and not metadata:  # remember the layout: the next record may repeat it
            self._repeat = (kind, sizes[0], size, bytes(data[position : position + body]), body)

    def reserve(
        self,
        kind: int,
        metadata: bytes,
        sizes: Sequence[int],
        alive: Callable[[], bool] | None = None,
    ) -> list[memoryview]:
        """(producer) Make room for a record whose buffers have ``sizes``, and return them to fill in.

        The record is the consumer's only after :meth:`commit`; until then the
        producer may drop it (by reserving or putting another record instead).
        Waits for space like :meth:`put`; raise ``Stopped`` if asked to stop.
        """
        position, size, body = self._place(kind, metadata, sizes, alive)
        views, at, data = [], position + body, self._data
        for nbytes in sizes:
            views.append(data[at : at + nbytes])
            at += (nbytes + _MASK) & ~_MASK
        self._reserved = size
        return views

    def commit(self) -> None:
        """(producer) Publish the record that :meth:`reserve` made room for, once its buffers are written."""
        size, self._reserved = self._reserved, 0
        if size:
            self._repeat = None
            self._publish(self._head + size)

    def _place(
        self, kind: int, metadata: bytes, sizes: Sequence[int], alive: Callable[[], bool] | None
    ) -> tuple[int, int, int]:
        """Wait for room for a record, write its header and metadata; (position, size, header bytes)."""
        self._reserved = 0
        n = len(sizes)
        meta_size = len(metadata)
        body = (_HEADER.size + _SIZE.size * n + meta_size + _MASK) & ~_MASK
        size = body
        for nbytes in sizes:
            size += (nbytes + _MASK) & ~_MASK
        if size > self.capacity:
            self._grow(size, alive)
        capacity, control, data = self.capacity, self._control, self._data
        position = self._head % capacity
        if position + size > capacity:
            self._wrap(capacity - position, alive)
            position = 0
        if control[_STOP] or capacity - (self._head - control[_TAIL]) < size:
            self._wait_for_space(size, alive)
        if n == 1:
            _HEADER_1.pack_into(data, position, kind, 1, size, meta_size, sizes[0])
        else:
            _header(n).pack_into(data, position, kind, n, size, meta_size, *sizes)
        if meta_size:
            at = position + _HEADER.size + _SIZE.size * n
            data[at : at + meta_size] = metadata
        return position, size, body

    def _wrap(self, rest: int, alive: Callable[[], bool] | None) -> None:
        """Skip the ``rest`` bytes to the end of the ring, once the consumer has left them.

        Publishing the skip at once, before waiting for room at the start,
        lets the consumer move past it: waiting for the record and the skip
        together could ask for more than the ring.
        """
        if self._control[_STOP] or self.capacity - (self._head - self._control[_TAIL]) < rest:
            self._wait_for_space(rest, alive)
        _HEADER.pack_into(self._data, self.capacity - rest, _RECORD_WRAP, 0, rest, 0)
        self._publish(self._head + rest)

    def _publish(self, head: int) -> None:
        self._head = head
        control = self._control
        control[_HEAD] = head
        if control[_CONSUMER_WAITING]:
            control[_CONSUMER_WAITING] = 0
            self.handle.data_ready.release()

    def put_again(self, kind: int, buffer: memoryview) -> bool:
        """(producer) Write a record laid out like the last single-buffer one, if it fits now.

        The quick path for a stream of like items: ``False`` (nothing written)
        when the layout differs or the ring would have to wait or wrap; then
        use :meth:`put`.
        """
        repeat = self._repeat
        if repeat is None or repeat[0] != kind or repeat[1] != buffer.nbytes:
            return False
        head, capacity = self._head, self.capacity
        size = repeat[2]
        position = head % capacity
        control = self._control
        if head + size > self._room_until:  # look at the consumer's position only when short of room
            self._room_until = control[_TAIL] + capacity
        if position + size > capacity or head + size > self._room_until or control[_STOP]:
            return False
        data, body = self._data, repeat[4]
        data[position : position + body] = repeat[3]
        data[position + body : position + body + repeat[1]] = buffer
        self._head = head = head + size
        control[_HEAD] = head  # publish
        if control[_CONSUMER_WAITING]:
            control[_CONSUMER_WAITING] = 0
            self.handle.data_ready.release()
        return True

    def _grow(self, size: int, alive: Callable[[], bool] | None) -> None:
        """Ask the consumer for a ring that holds ``size`` bytes, and move to it."""
        self.put(_RECORD_GROW, _SIZE.pack(size), alive=alive)
        while not self._control[_NEXT_CAPACITY]:
            self._doze(alive)
        capacity = self._control[_NEXT_CAPACITY]
        length = self._view[_NEXT_AT]
        locator = bytes(self._view[_NEXT_AT + 1 : _NEXT_AT + 1 + length])
        try:
            segment = _TRANSPORT_OF[self.handle.transport].open(locator, _CONTROL_BYTES + capacity)
        except FileNotFoundError:
            raise Stopped from None  # the consumer is gone, and its ring with it
        handle = self.handle
        larger = Ring(
            RingHandle(capacity, handle.data_ready, handle.space_ready, handle.transport, segment.name),
            segment,
        )
        segment.forget()  # the consumer made it, and this process has it mapped now
        self._unmap()
        moves = self.moves
        self.__dict__.update(larger.__dict__)
        self.moves = moves + 1  # positions start again at 0: the consumer has read all before

    @property
    def written(self) -> int:
        """(producer) Where the records written so far end: the consumer has read them once it is past."""
        return self._head

    def read_position(self) -> int:
        """(producer) How far the consumer has read (and freed)."""
        return int(self._control[_TAIL])

    def wait_read(self, position: int, alive: Callable[[], bool] | None) -> None:
        """(producer) Wait until the consumer has read up to ``position``; ``Stopped`` as :meth:`put`.

        Asks to be woken as for space: the consumer wakes a producer that waits
        for ``capacity - (head - position)`` free bytes once it is past ``position``.
        """
        control = self._control
        wait_s = _FIRST_WAIT_S
        while control[_TAIL] < position:
            if control[_STOP]:
                raise Stopped
            for _ in range(_SPINS):
                if control[_TAIL] >= position:
                    return
            control[_PRODUCER_WAITING] = max(1, self.capacity - (self._head - position))
            if control[_TAIL] < position:
                self._doze(alive, wait_s)
                wait_s = _WAIT_SLICE_S

    def _wait_for_space(self, size: int, alive: Callable[[], bool] | None) -> None:
        """Wait until ``size`` bytes are free; ``Stopped`` if asked to stop or the consumer is gone.

        Before it sleeps, the producer asks to be woken once half the ring
        (or ``size``, if more) is free rather than as soon as ``size`` is:
        a producer ahead of its consumer then sleeps once per half ring, not
        once per record, and the consumer makes one wake-up call for many
        records it frees.
        """
        capacity, control = self.capacity, self._control
        wake_at = max(size, capacity // 2)
        wait_s = _FIRST_WAIT_S
        while True:
            if control[_STOP]:
                raise Stopped
            for _ in range(_SPINS):
                if capacity - (self._head - control[_TAIL]) >= size:
                    return
            control[_PRODUCER_WAITING] = wake_at
            if capacity - (self._head - control[_TAIL]) < size:  # not freed meanwhile
                self._doze(alive, wait_s)
                wait_s = _WAIT_SLICE_S

    def _doze(self, alive: Callable[[], bool] | None, wait_s: float = _WAIT_SLICE_S) -> None:
        """(producer) Sleep ``wait_s`` or until the consumer signals; ``Stopped`` if asked or it is gone."""
        if self._control[_STOP]:
            raise Stopped
        if not self.handle.space_ready.acquire(timeout=wait_s) and alive is not None and not alive():
            raise Stopped

    # ------------------------------------------------------------ consumer

    def get(self, alive: Callable[[], bool]) -> tuple[int, memoryview, list[memoryview]] | None:
        """(consumer) The next record as (kind, metadata, buffers), waiting for it.

        The views stay valid until :meth:`release`. Returns ``None`` if
        ``alive()`` turns false while waiting and nothing more has arrived.
        A producer's request for a larger ring is answered here: the ring
        moves to a new segment (``OSError`` if shared memory is short).
        """
        if self._pending_release:
            self.release()
        wait_s = _FIRST_WAIT_S
        while True:
            if self._tail == self._control[_HEAD]:
                if not self._wait_for_data(alive, wait_s):
                    return None
                wait_s = _WAIT_SLICE_S
                continue
            data = self._data
            position = self._tail % self.capacity
            kind, n, size, meta_size = _HEADER.unpack_from(data, position)
            if kind == _RECORD_WRAP:
                self._advance(size)
                continue
            if kind == _RECORD_GROW:
                (needed,) = _SIZE.unpack_from(data, position + _HEADER.size)
                self._move_to_larger(needed, size)
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
            if self._named:  # the producer has written, so it has the segment mapped
                self._named = False
                self._segment.forget()
            return kind, metadata, buffers

    def _move_to_larger(self, needed: int, request_size: int) -> None:
        """Answer a grow record: make a ring that holds ``needed`` bytes, tell the producer, move to it."""
        handle = self.handle
        wanted = max(2 * self.capacity, 2 * needed)
        free = shared_memory_free()
        if free is not None and wanted > free:
            wanted = max(needed, free)  # room to spare where there is some, else just what it takes
        larger = Ring._create(
            _aligned(wanted),
            handle.data_ready,
            handle.space_ready,
            handle.transport,
            creator_consumes=True,
        )
        locator = larger._segment.locator()
        self._view[_NEXT_AT] = len(locator)
        self._view[_NEXT_AT + 1 : _NEXT_AT + 1 + len(locator)] = locator
        self._control[_NEXT_CAPACITY] = larger.capacity  # published after the locator
        self._advance(request_size)
        handle.space_ready.release()
        self._unmap()
        self.__dict__.update(larger.__dict__)

    def ahead(self) -> int:
        """(consumer) The bytes published past the record being read: 0 where ``get`` will wait."""
        return self._control[_HEAD] - self._tail - self._pending_release

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
        self._tail = tail = self._tail + size
        control = self._control
        control[_TAIL] = tail
        wake_at = control[_PRODUCER_WAITING]  # the free bytes the producer waits for, if it waits
        if wake_at and self.capacity - (control[_HEAD] - tail) >= wake_at:
            control[_PRODUCER_WAITING] = 0
            self.handle.space_ready.release()

    def _wait_for_data(self, alive: Callable[[], bool], wait_s: float) -> bool:
        # Look again for a while before sleeping (on the first wait for a record): waking a
        # consumer costs the producer a system call, and in a virtual machine an interrupt to the
        # other CPU, several times a small item's whole journey. A consumer only slightly faster
        # than its producer then catches the next record without sleeping; between rounds it lets
        # another process have this CPU. Where records come far apart, looking longer only burns
        # a CPU that the workers may need: after a long sleep the next wait looks one round.
        control, tail = self._control, self._tail
        first = wait_s == _FIRST_WAIT_S
        for round_ in range(self._spin_rounds if first else 1):
            if round_:
                _yield_cpu()
            for _ in range(_SPINS):
                if tail != control[_HEAD]:
                    return True
        control[_CONSUMER_WAITING] = 1
        if tail != control[_HEAD]:
            return True
        asleep = time.perf_counter() if first else 0.0
        if self.handle.data_ready.acquire(timeout=wait_s):
            if first:  # a short sleep: a longer look would have done without it
                short = time.perf_counter() - asleep < _SHORT_SLEEP_S
                self._spin_rounds = _DATA_SPIN_ROUNDS if short else 1
            return True
        self._spin_rounds = 1
        # Nothing for a while: is the producer still there? Look once more after asking.
        return alive() or tail != control[_HEAD]
