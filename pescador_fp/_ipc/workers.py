"""Worker processes: start, liveness, shutdown. Knows processes, not numpy or streams."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import functools
import mmap
import multiprocessing
import multiprocessing.connection
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.context import BaseContext
from typing import Any

from ..errors import WorkerError

__all__ = [
    "JOIN_TIMEOUT_S",
    "PRELOAD_VARIABLE",
    "STACK_SIGNAL",
    "START_METHOD_VARIABLE",
    "Workers",
    "default_start_method",
    "dump_stack_on_signal",
    "exit_when_out_of_descriptors",
    "ignore_interrupts",
    "interrupts_deferred",
    "out_of_descriptors",
    "parent_alive",
    "say_done",
    "stack_of",
    "uninterrupted",
    "watch_parent",
]

START_METHOD_VARIABLE = "PESCADOR_FP_START_METHOD"
# Modules (comma-separated) that the fork server imports once, besides this package and numpy.
PRELOAD_VARIABLE = "PESCADOR_FP_PRELOAD"
# How long a worker gets to stop by itself, then after SIGTERM, before SIGKILL.
JOIN_TIMEOUT_S = 1.0
_KILL_TIMEOUT_S = 1.0
# How often a worker's watchdog looks at its parent (it also wakes at once on the parent's sentinel).
_WATCH_SLICE_S = 0.2
# The exit status of a worker whose parent died.
_ORPHANED_EXIT_CODE = 70
# The exit status of a worker that could not attach its rings for want of file descriptors, before it
# has anywhere to send an error (sysexits' EX_OSERR).
_NO_DESCRIPTORS_EXIT_CODE = 71
# What a process sends through its report pipe once its work is done (say_done).
_DONE = b"done"
# The descriptors a process start may open at once (forkserver: a socket, two pipes, a copy).
_START_DESCRIPTORS = 8
# How many times `uninterrupted` starts again a step that an interrupt cut short before it began.
_RETRIES = 3


# Modules whose runtimes start threads that a forked child cannot use (an OpenMP pool, XLA's
# runtime) at their first use, not at import: a process that has imported one never forks.
FORK_UNSAFE_MODULES = ("torch", "jax", "jaxlib", "tensorflow")


def default_start_method() -> str:
    """The start method for workers on this system, in this process, now.

    Linux and other POSIX systems: ``fork`` in a process that runs a single
    thread (a worker starts in about a millisecond), else ``forkserver``,
    because forking a process that runs other threads can deadlock the child.
    Threads are counted by the operating system (``/proc/self/task``), so
    that native threads count too (those that libraries start in C, which
    ``threading`` never sees), less the idle pool of numpy's OpenBLAS (which
    stops itself for a fork). A process that has imported torch, JAX or
    TensorFlow gets ``forkserver`` even before their threads start: they
    start at the first tensor operation, maybe between two passes. macOS:
    ``spawn``, Python's own default there (system libraries are not safe
    across ``fork``). Windows: ``spawn``, the only one it has. The
    environment variable ``PESCADOR_FP_START_METHOD`` overrides the choice.

    >>> default_start_method() in ("fork", "forkserver", "spawn")
    True
    """
    methods = multiprocessing.get_all_start_methods()
    chosen = os.environ.get(START_METHOD_VARIABLE)
    if chosen:
        if chosen not in methods:
            raise ValueError(f"{START_METHOD_VARIABLE}={chosen!r} is not one of {methods}")
        return chosen
    runtime = any(sys.modules.get(name) is not None for name in FORK_UNSAFE_MODULES)
    return _default_for(sys.platform, methods, _threads(), runtime)


def _default_for(platform: str, methods: Sequence[str], threads: int, runtime: bool = False) -> str:
    if platform == "darwin" or "fork" not in methods:
        return "spawn"
    if threads == 1 and not runtime:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _threads() -> int:
    """The threads of this process that may hold a lock when it forks: every OS thread (native ones
    included) less OpenBLAS's idle pool; ``threading``'s count where the system lists no threads."""
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()
    return max(threading.active_count(), native - _blas_pool())


def _blas_pool() -> int:
    """The threads that OpenBLAS (numpy's BLAS) runs now: 0 while its pool is stopped.

    OpenBLAS stops its pool before every fork (``pthread_atfork``) and starts
    it again at the next product, so its threads never hold a lock a child
    needs. A library that is not there, or exports no such counts, adds 0:
    its threads then count as any others.
    """
    pool = 0
    for available, size in _blas_counters():
        if available.value:
            pool += max(0, size.value - 1)  # the calling thread is one of size
    return pool


@functools.cache
def _blas_counters() -> tuple[tuple[Any, Any], ...]:
    """(OpenBLAS libraries loaded in this process) their ``blas_server_avail`` and ``blas_num_threads``."""
    counters = []
    for path in _openblas_paths():
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue  # not loaded after all
        try:
            available = ctypes.c_int.in_dll(library, "blas_server_avail")
            counters.append((available, ctypes.c_int.in_dll(library, "blas_num_threads")))
        except ValueError:  # numpy >= 2.5's OpenBLAS keeps them to itself: its symbol table has them
            local = _local_counters(path, library)
            if local:
                counters.append(local)
    return tuple(counters)


def _mappings() -> list[tuple[int, int, str, str]]:
    """This process's memory mappings (``/proc/self/maps``): start, end, permissions and path ("" for
    none); empty where the system does not list them."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                # address, permissions, offset, device, inode, then the path (which may hold spaces)
                fields = line.rstrip("\n").split(maxsplit=5)
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                found.append((start, end, fields[1], fields[5] if len(fields) == 6 else ""))
    except OSError:
        return []
    return found


def _openblas_paths() -> list[str]:
    """The files of the OpenBLAS libraries mapped into this process."""
    paths = {path for _, _, _, path in _mappings() if "openblas" in path.rsplit("/", 1)[-1].lower()}
    return sorted(paths)


#: ELF symbol types (``st_info``'s low bits).
_OBJECT, _FUNCTION = 1, 2
_COUNTERS = ("blas_server_avail", "blas_num_threads")


def _local_counters(path: str, library: ctypes.CDLL) -> tuple[Any, Any] | None:
    """``blas_server_avail`` and ``blas_num_threads`` of a loaded OpenBLAS that does not export them,
    found in its ELF symbol table; ``None`` where they are not there (a stripped library, a thread
    server built on OpenMP, not a 64-bit little-endian ELF file).

    Their addresses are their values in the file plus where the library was loaded, which an exported
    function gives: its address in this process less its value in the file.
    """
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            local = {
                name: value for name, value in _elf_symbols(data, ".symtab", _OBJECT) if name in _COUNTERS
            }
            if len(local) != len(_COUNTERS):
                return None
            exported = (
                (function, value)
                for name, value in _elf_symbols(data, ".dynsym", _FUNCTION)
                if (function := getattr(library, name, None)) is not None
            )
            anchor = next(exported, None)  # an exported function: where the library was loaded
    except (OSError, struct.error, IndexError, ValueError, OverflowError):  # not a file we can read
        return None
    if anchor is None:
        return None
    function, value = anchor
    base = (ctypes.cast(function, ctypes.c_void_p).value or 0) - value
    addresses = [base + local[name] for name in _COUNTERS]
    writable = [(start, end) for start, end, permissions, _ in _mappings() if permissions.startswith("rw")]
    if not all(any(start <= a and a + 4 <= end for start, end in writable) for a in addresses):
        return None  # (a symbol table that does not match the library loaded: never read)
    available, size = (ctypes.c_int.from_address(address) for address in addresses)
    return available, size


def _elf_symbols(data: mmap.mmap, table: str, kind: int) -> Iterator[tuple[str, int]]:
    """The names and values of the defined symbols of type ``kind`` in the symbol table ``table``
    (``.symtab``, ``.dynsym``) of the ELF file ``data``."""
    if data[:6] != b"\x7fELF\x02\x01":  # 64-bit, little-endian
        raise ValueError("not a 64-bit little-endian ELF file")
    section_offset = struct.unpack_from("<Q", data, 0x28)[0]
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)
    ]
    section_names = sections[names_index][4]

    def name_at(strings: int, offset: int) -> str:
        end = data.find(b"\0", strings + offset)
        return data[strings + offset : end].decode("ascii", "replace")

    for name_offset, section_kind, _, _, offset, size, link, _, _, _ in sections:
        if section_kind not in (2, 11) or name_at(section_names, name_offset) != table:  # SYMTAB, DYNSYM
            continue
        strings = sections[link][4]
        for symbol_name, info, _, index, value, _ in struct.iter_unpack(
            "<IBBHQQ", data[offset : offset + size]
        ):
            if index != 0 and symbol_name != 0 and info & 0xF == kind:  # defined, named, of that type
                yield name_at(strings, symbol_name), value


def _preload_fork_server(context: BaseContext) -> None:
    """Have the fork server import this package (numpy with it) and the user's heavy modules once.

    Workers forked from the server then start with them loaded, instead of
    importing them in every pass. Adds to what the program itself asked for
    with ``multiprocessing.set_forkserver_preload`` (``["__main__"]`` by
    default); takes effect when the server starts, with the first
    ``forkserver`` worker of the program.
    """
    from multiprocessing import forkserver

    extra = os.environ.get(PRELOAD_VARIABLE, "").replace(",", " ").split()
    asked = getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None) or ["__main__"]
    package = __name__.split(".")[0]
    context.set_forkserver_preload(list(dict.fromkeys([*asked, package, *extra])))


def ignore_interrupts() -> None:
    """(in a worker) Leave Ctrl-C to the parent, which stops the workers itself.

    A worker is born with SIGINT blocked (:meth:`Workers.start`): a Ctrl-C
    that reaches it before this point waits, and is dropped here, once
    ignored, instead of ending the worker with a ``KeyboardInterrupt``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _Held:
    """A SIGINT handler that only notes that the signal came (:func:`interrupts_deferred`)."""

    def __init__(self) -> None:
        self.frame: Any = None
        self.caught = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.caught, self.frame = True, frame


class interrupts_deferred:
    """Hold Ctrl-C back while the body makes or frees resources, and deliver it after the body.

    A SIGINT that arrives inside is noted, and handed to the handler that was
    there before once the body is done (by default: ``KeyboardInterrupt``,
    raised where the body ends), so that an interrupt never leaves a
    process, a descriptor or shared memory half made or half freed. Only the
    main thread gets ``KeyboardInterrupt`` and only it may set handlers:
    elsewhere, or where SIGINT is not handled by Python (ignored, the
    system's default), nothing changes. Inside another such block, the
    outer one delivers.

    >>> seen = []
    >>> previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append("Ctrl-C"))
    >>> with interrupts_deferred():
    ...     signal.raise_signal(signal.SIGINT)
    ...     seen.append("the body's end")
    >>> _ = signal.signal(signal.SIGINT, previous)
    >>> seen
    ["the body's end", 'Ctrl-C']
    """

    __slots__ = ("held", "previous")

    def __enter__(self) -> None:
        self.held: _Held | None = None
        previous = signal.getsignal(signal.SIGINT)
        if (
            callable(previous)
            and not isinstance(previous, _Held)
            and threading.current_thread() is threading.main_thread()
        ):
            self.previous, self.held = previous, _Held()
            # The last step: an interrupt before it skips the body; from it on, every one is held.
            signal.signal(signal.SIGINT, self.held)

    def __exit__(self, *exc_info: object) -> None:
        held = self.held
        if held is not None:
            signal.signal(signal.SIGINT, self.previous)
            if held.caught:
                self.previous(signal.SIGINT, held.frame)


def uninterrupted(step: Callable[[], None]) -> None:
    """Run ``step`` to its end with Ctrl-C held back (:func:`interrupts_deferred`), then deliver it.

    An interrupt that lands just before the hold begins, and so skips
    ``step``, is delivered only after ``step`` has run once more: ``step``
    must be idempotent (a cleanup that frees what is still held).

    >>> uninterrupted(lambda: print("freed"))
    freed
    """
    interrupted: KeyboardInterrupt | None = None
    for _ in range(_RETRIES):
        finished = False
        try:
            with interrupts_deferred():
                step()
                finished = True
        except KeyboardInterrupt as error:
            if finished:
                raise
            interrupted = error
            continue
        break
    if interrupted is not None:
        raise interrupted


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread; a process started meanwhile is born with it blocked."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def say_done(report: Any) -> None:
    """(in a process started with ``reports=True``) Tell the parent that this process has done its work."""
    report.send_bytes(_DONE)
    report.close()


@contextlib.contextmanager
def exit_when_out_of_descriptors() -> Iterator[None]:
    """(in a worker, before it can send errors back) End the process with a status that says that file
    descriptors ran out, which :meth:`Workers.failure` reads, if they do inside."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        raise SystemExit(_NO_DESCRIPTORS_EXIT_CODE) from None


def out_of_descriptors(error: OSError) -> WorkerError | None:
    """The error to raise for ``error`` where it says that file descriptors ran out, else ``None``."""
    if error.errno == errno.ENFILE:
        return WorkerError(
            "background: the system has run out of file descriptors (ENFILE); each worker needs a few: "
            "close programs that hold many, or raise the system's limit (fs.file-max)"
        )
    if error.errno != errno.EMFILE:
        return None
    return WorkerError(
        f"background: this process has run out of file descriptors (EMFILE, {_descriptor_limit()} at "
        f"most){_RAISE_THE_LIMIT}"
    )


def _descriptor_limit() -> str:
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        return f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
    return "?"


_RAISE_THE_LIMIT = (
    "; each worker needs a few: raise the limit (`ulimit -n 65536` in the shell that starts Python, "
    "or resource.setrlimit(resource.RLIMIT_NOFILE, ...)) or close files that the program holds open"
)


def _room_for_descriptors(count: int) -> None:
    """Raise ``OSError(EMFILE)`` unless ``count`` more descriptors can be opened now.

    Python's process start leaks the first of the pipes it makes where the
    second cannot be made (``multiprocessing.popen_fork``, ``forkserver``):
    so ask for the room first, and take nothing.
    """
    taken: list[int] = []
    try:
        while len(taken) < count:
            taken.extend(os.pipe())
    finally:
        for fd in taken:
            os.close(fd)


def parent_alive(parent_pid: int) -> Callable[[], bool]:
    """(in a worker) A check that the process that started this one, ``parent_pid``, still lives.

    Right under every start method: multiprocessing gives each child a
    sentinel, the end of a pipe that only the parent holds open, which turns
    readable when the parent dies (under ``forkserver`` the OS parent is the
    server, not ``parent_pid``). Where the parent is also the OS parent
    (``fork``, ``spawn``), ``getppid()`` is checked too, because a process
    forked from the parent later inherits the pipe and keeps it open.
    """
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    direct = os.getppid() == parent_pid

    def alive() -> bool:
        if direct and os.getppid() != parent_pid:
            return False
        return sentinel is None or not multiprocessing.connection.wait([sentinel], 0)

    return alive


def watch_parent(parent_pid: int) -> Callable[[], bool]:
    """(in a worker) End this process as soon as its parent dies; return :func:`parent_alive`'s check.

    A daemon thread waits on the parent's sentinel and looks at ``getppid()``
    every ``_WATCH_SLICE_S``; when the parent is gone it ends the process with
    ``os._exit``, even while the main thread is deep in slow user code.
    """
    alive = parent_alive(parent_pid)
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    watchdog = threading.Thread(
        target=_exit_when_orphaned, args=(alive, sentinel), name="pescador_fp-watchdog", daemon=True
    )
    if hasattr(signal, "pthread_sigmask"):
        # The watchdog blocks every signal (a thread inherits its creator's mask), so that signals
        # sent to the process reach the main thread: faulthandler, for one, dumps the thread a
        # signal lands on.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            watchdog.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    else:
        watchdog.start()
    return alive


def _exit_when_orphaned(alive: Callable[[], bool], sentinel: int | None) -> None:
    while True:
        if sentinel is None:
            time.sleep(_WATCH_SLICE_S)
        else:
            multiprocessing.connection.wait([sentinel], _WATCH_SLICE_S)
        if not alive():
            os._exit(_ORPHANED_EXIT_CODE)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"was killed by signal {-code} (exit code {code})"
    return f"exited with code {code}"


class Workers:
    """A group of worker processes that lives while its owner holds it open."""

    def __init__(self, start_method: str) -> None:
        self.context: BaseContext = multiprocessing.get_context(start_method)
        self.processes: list[Any] = []
        self.reports: dict[int, Any] = {}  # per process started with reports=True: the reading end
        self.done: set[int] = set()  # the processes that said they had done their work
        if start_method == "forkserver":
            _preload_fork_server(self.context)

    def semaphore(self, value: int) -> Any:
        """A semaphore these workers can share: the context's, named under spawn and forkserver.

        (A portable ring's; a linux ring makes its own, with no name.)
        """
        return self.context.Semaphore(value)

    def start(
        self,
        target: Callable[..., None],
        args: Sequence[tuple[Any, ...]],
        name: str = "pescador_fp-worker",
        *,
        reports: bool = False,
    ) -> None:
        """Start one daemon process per argument tuple, named ``name-<index>``.

        The processes are born with SIGINT blocked, and a Ctrl-C that comes
        meanwhile reaches this process once they have started: a process
        unblocks it after ignoring it (:func:`ignore_interrupts`), so neither
        a starting worker nor multiprocessing's bookkeeping takes it.
        ``reports``: each process gets one more argument, the end of a pipe
        to pass to :func:`say_done` once its work is done, so that
        :meth:`finished` tells that end from a process that left early,
        whatever its exit status. Descriptors running out is a
        :class:`~pescador_fp.WorkerError` that says so.
        """
        with interrupts_deferred():
            if os.name == "posix" and self.context.get_start_method() != "fork":
                # Started by spawn's and forkserver's first process if it is not running yet, it
                # unblocks SIGINT once it has started: so before the block, not inside it.
                resource_tracker.ensure_running()
            with _sigint_blocked():
                self._start(target, args, name, reports)

    def _start(
        self, target: Callable[..., None], args: Sequence[tuple[Any, ...]], name: str, reports: bool
    ) -> None:
        for index, worker_args in enumerate(args):
            writer = None
            try:
                if reports:
                    self.reports[len(self.processes)], writer = self.context.Pipe(duplex=False)
                process = self.context.Process(  # type: ignore[attr-defined]
                    target=target,
                    args=(*worker_args, writer) if reports else worker_args,
                    name=f"{name}-{index}",
                    daemon=True,
                )
                _room_for_descriptors(_START_DESCRIPTORS)
                process.start()
            except OSError as error:
                short = out_of_descriptors(error)
                if short is None:
                    raise
                raise short from error
            finally:
                if writer is not None:
                    writer.close()
            self.processes.append(process)

    def alive(self, index: int) -> bool:
        return bool(self.processes[index].is_alive())

    def finished(self, index: int) -> bool:
        """Whether process ``index`` said it had done its work (:func:`say_done`)."""
        if index not in self.done:
            reader = self.reports.get(index)
            with contextlib.suppress(EOFError, OSError):
                if reader is not None and reader.poll(0) and reader.recv_bytes() == _DONE:
                    self.done.add(index)
        return index in self.done

    def failure(self, index: int, started: bool = False) -> WorkerError:
        """The error that says how worker ``index`` ended without finishing its stream.

        ``started``: it is known to have got past attaching its rings, so an exit status that says
        that descriptors ran out there is the user's code's own (``os._exit(71)``).
        """
        process = self.processes[index]
        process.join(_KILL_TIMEOUT_S)
        if process.exitcode == _NO_DESCRIPTORS_EXIT_CODE and not started:
            return WorkerError(
                f"background worker {index} (pid {process.pid}) could not start: it ran out of file "
                f"descriptors (EMFILE, exit code {process.exitcode}; {_descriptor_limit()} at most in a "
                f"process){_RAISE_THE_LIMIT}"
            )
        return WorkerError(
            f"background worker {index} (pid {process.pid}) {_describe_exit(process.exitcode)} "
            "before finishing its stream"
        )

    def stop(self) -> None:
        """Join every worker with a timeout, then terminate, then kill; idempotent.

        A Ctrl-C meanwhile is delivered once all are gone (:func:`interrupts_deferred`).
        """
        with interrupts_deferred():
            processes, self.processes = self.processes, []
            reports, self.reports = self.reports, {}
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
            for process in processes:
                if process.is_alive():
                    process.terminate()
                    process.join(_KILL_TIMEOUT_S)
                if process.is_alive():
                    process.kill()
                    process.join(_KILL_TIMEOUT_S)
                process.close()
            for reader in reports.values():
                reader.close()


# ---------------------------------------------------------------- where a process is stuck

# The signal that makes a process write its stack (where the system has one), and how
# long the asking side waits for it.
STACK_SIGNAL = getattr(signal, "SIGUSR1", None)
_STACK_WAIT_S = 1.0


def dump_stack_on_signal(stack: Any) -> None:
    """(in a worker) Write this process's stack to ``stack`` (a pipe's end) on ``STACK_SIGNAL``."""
    if stack is not None and STACK_SIGNAL is not None:
        faulthandler.register(STACK_SIGNAL, file=stack, all_threads=False)


def stack_of(process: Any, stack: Any) -> list[str]:
    """The frames ``process`` is in (most recent first, above multiprocessing's own), asked by signal.

    ``stack``: the reading end of the pipe the process dumps its stack into.
    """
    if stack is None or STACK_SIGNAL is None or not process.is_alive():
        return []
    try:
        os.kill(process.pid, STACK_SIGNAL)
    except OSError:
        return []
    chunks = []
    wait = _STACK_WAIT_S
    while stack.poll(wait):
        chunk = os.read(stack.fileno(), 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        wait = 0.1
    frames = []
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("File "):
            if f"multiprocessing{os.sep}process.py" in line:
                break  # below: how the process started (and, under fork, its parent's frames)
            frames.append(line)
    return frames
