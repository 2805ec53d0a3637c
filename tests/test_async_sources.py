"""Async generator functions as sources: ``pf.stream(agen_fn, *args)``."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time

import pytest

import pescador_fp as pf


class _Log:
    """What the async generators of a test did: passes opened, items made, cleanups finished."""

    def __init__(self) -> None:
        self.opened = 0
        self.made = 0
        self.closed = 0


def _counter(log: _Log):
    async def count(n, *, step=1):
        log.opened += 1
        try:
            for i in range(0, n, step):
                await asyncio.sleep(0.0005)
                log.made += 1
                yield i
        finally:
            await asyncio.sleep(0.001)  # an async cleanup: only aclose() runs it to the end
            log.closed += 1

    return count


def _no_new_threads(before: set[threading.Thread]) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not set(threading.enumerate()) - before:
            return True
        time.sleep(0.01)
    return False


def test_an_async_generator_function_is_a_re_iterable_source():
    log = _Log()
    s = pf.stream(_counter(log), 10, step=2)
    assert list(s) == list(s) == [0, 2, 4, 6, 8]
    assert log.opened == log.closed == 2
    assert repr(s) == "stream(count, 10, step=2)"


@pytest.mark.parametrize("how", ["break", "close", "gc", "head"])
def test_a_pass_ended_early_closes_the_async_generator(how):
    log = _Log()
    s = pf.stream(_counter(log), 1000)
    before = set(threading.enumerate())
    if how == "head":
        assert s.head(3) == [0, 1, 2]
    else:
        it = iter(s)
        for x in it:
            if x == 2:
                break
        if how == "close":
            it.close()
        else:
            del it
            gc.collect()
    assert log.closed == 1
    assert log.made == 3  # nothing read ahead
    assert _no_new_threads(before)


def test_an_error_in_the_async_generator_reaches_the_consumer_after_its_items():
    async def fails():
        yield 1
        await asyncio.sleep(0)
        raise LookupError("no such object")

    got = []
    with pytest.raises(LookupError, match="no such object"):
        for x in pf.stream(fails):
            got.append(x)
    assert got == [1]


def test_async_sources_run_under_a_mux_in_background_and_with_a_concurrent_map():
    log = _Log()
    sources = [pf.stream(_counter(log), 5 + i) for i in range(4)]
    s = pf.mux(sources, n_active=2, rate=None, mode="exhaustive", seed=0)
    foreground = list(s.iterate(seed=1))
    assert sorted(foreground) == sorted(x for i in range(4) for x in range(5 + i))
    assert list((s | pf.background(workers=1)).iterate(seed=1)) == foreground
    assert sorted((s | pf.background(workers=2)).iterate(seed=1)) == sorted(foreground)

    async def double(x):
        await asyncio.sleep(0.001)
        return 2 * x

    assert list(pf.stream(_counter(log), 20) | pf.map(double, concurrency=4)) == [2 * i for i in range(20)]


def test_an_async_source_works_where_the_callers_thread_runs_an_event_loop():
    log = _Log()

    async def main():
        return list(pf.stream(_counter(log), 4))

    assert asyncio.run(main()) == [0, 1, 2, 3]
    assert log.closed == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error", [KeyboardInterrupt("stop now"), SystemExit(3)])
def test_a_keyboard_interrupt_or_exit_in_the_async_generator_reaches_the_consumer(error):
    # Out of a task they stopped the event loop itself, which never answered the read: a hang.
    async def items(n):
        for i in range(n):
            yield i
        raise error

    before = set(threading.enumerate())
    got = []
    with pytest.raises(type(error)) as raised:
        for x in pf.stream(items, 2):
            got.append(x)
    assert got == [0, 1] and raised.value is error
    assert _no_new_threads(before)


_LEFT_OPEN = """
import asyncio, sys
import pescador_fp as pf

async def items(path):
    try:
        for i in range(100):
            await asyncio.sleep(0)
            yield i
    finally:
        await asyncio.sleep(0)
        with open(path, "w") as f:
            f.write("closed")

it = pf.stream(items, sys.argv[1]).iterate()
print(next(it), next(it))
"""


def test_an_async_source_left_open_at_exit_is_closed_there(tmp_path):
    # Finalized with the interpreter's threads frozen, it waited 10 s for its loop, printed a
    # TimeoutError and never ran its cleanup.
    script, marker = tmp_path / "left_open.py", tmp_path / "closed.txt"
    script.write_text(_LEFT_OPEN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]
    assert done.stderr == ""
    assert marker.read_text() == "closed"
