"""Worker processes: start, liveness, shutdown. Knows processes, not numpy or streams."""

from __future__ import annotations

import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
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
    "ignore_interrupts",
    "parent_alive",
    "stack_of",
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


def default_start_method() -> str:
    """The start method for workers on this system, in this process, now.

    Linux and other POSIX systems: ``fork`` in a single-threaded process (a
    worker starts in about a millisecond), else ``forkserver``, because
    forking a process that runs other threads can deadlock the child. macOS:
    ``spawn``, Python's own default there (system libraries are not safe
    across ``fork``). Windows: ``spawn``, the only one it has. The
    environment variable ``PESCADOR_FP_START_METHOD`` overrides the choice.
    """
    methods = multiprocessing.get_all_start_methods()
    chosen = os.environ.get(START_METHOD_VARIABLE)
    if chosen:
        if chosen not in methods:
            raise ValueError(f"{START_METHOD_VARIABLE}={chosen!r} is not one of {methods}")
        return chosen
    return _default_for(sys.platform, methods, threading.active_count())


def _default_for(platform: str, methods: Sequence[str], threads: int) -> str:
    if platform == "darwin" or "fork" not in methods:
        return "spawn"
    if threads == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


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
    """(in a worker) Leave Ctrl-C to the parent, which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
        if start_method == "forkserver":
            _preload_fork_server(self.context)

    def semaphore(self, value: int) -> Any:
        """A semaphore these workers can share: the context's, named under spawn and forkserver.

        (A portable ring's; a linux ring makes its own, with no name.)
        """
        return self.context.Semaphore(value)

    def start(
        self, target: Callable[..., None], args: Sequence[tuple[Any, ...]], name: str = "pescador_fp-worker"
    ) -> None:
        """Start one daemon process per argument tuple, named ``name-<index>``."""
        for index, worker_args in enumerate(args):
            process = self.context.Process(  # type: ignore[attr-defined]
                target=target, args=worker_args, name=f"{name}-{index}", daemon=True
            )
            process.start()
            self.processes.append(process)

    def alive(self, index: int) -> bool:
        return bool(self.processes[index].is_alive())

    def failure(self, index: int) -> WorkerError:
        """The error that says how worker ``index`` ended without finishing its stream."""
        process = self.processes[index]
        process.join(_KILL_TIMEOUT_S)
        return WorkerError(
            f"background worker {index} (pid {process.pid}) {_describe_exit(process.exitcode)} "
            "before finishing its stream"
        )

    def stop(self) -> None:
        """Join every worker with a timeout, then terminate, then kill; idempotent."""
        processes, self.processes = self.processes, []
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
