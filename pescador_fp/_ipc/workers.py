"""Worker processes: start, liveness, shutdown. Knows processes, not numpy or streams."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import BaseContext
from typing import Any

from ..errors import WorkerError

__all__ = [
    "JOIN_TIMEOUT_S",
    "START_METHOD_VARIABLE",
    "Workers",
    "default_start_method",
    "ignore_interrupts",
    "parent_alive",
]

START_METHOD_VARIABLE = "PESCADOR_FP_START_METHOD"
# How long a worker gets to stop by itself, then after SIGTERM, before SIGKILL.
JOIN_TIMEOUT_S = 1.0
_KILL_TIMEOUT_S = 1.0


def default_start_method() -> str:
    """``fork`` where it is safe (a single-threaded process on a system that has it), else ``forkserver``.

    ``fork`` starts a worker in about a millisecond; forking a process that
    runs other threads can deadlock the child, so then ``forkserver`` (or
    ``spawn`` where that is missing) is used. The environment variable
    ``PESCADOR_FP_START_METHOD`` overrides the choice.
    """
    methods = multiprocessing.get_all_start_methods()
    chosen = os.environ.get(START_METHOD_VARIABLE)
    if chosen:
        if chosen not in methods:
            raise ValueError(f"{START_METHOD_VARIABLE}={chosen!r} is not one of {methods}")
        return chosen
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def ignore_interrupts() -> None:
    """(in a worker) Leave Ctrl-C to the parent, which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def parent_alive(parent_pid: int) -> Callable[[], bool]:
    """(in a worker) A check that the process that started us is still our parent."""
    return lambda: os.getppid() == parent_pid


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

    def semaphore(self, value: int) -> Any:
        return self.context.Semaphore(value)

    def start(self, target: Callable[..., None], args: Sequence[tuple[Any, ...]]) -> None:
        """Start one daemon process per argument tuple."""
        for index, worker_args in enumerate(args):
            process = self.context.Process(  # type: ignore[attr-defined]
                target=target, args=worker_args, name=f"pescador_fp-worker-{index}", daemon=True
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
