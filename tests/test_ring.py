"""The shared-memory ring: records of any size pass, rings grow, and nothing named outlives its users.

Real processes and real shared memory throughout, under both transports
(``linux``: files with no name; ``portable``: ``multiprocessing.shared_memory``).
Tests look only at segments named after their own processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import own_shm_entries
from hypothesis import given, settings
from hypothesis import strategies as st

import pescador_fp as pf
from pescador_fp._ipc.ring import (
    NAME_PREFIX,
    RECORD_DATA,
    RECORD_END,
    SHM_DIR,
    TRANSPORT_VARIABLE,
    TRANSPORTS,
    Ring,
    default_transport,
)
from pescador_fp._ipc.workers import START_METHOD_VARIABLE, default_start_method

# Processes and names must be gone this soon after their consumer dies.
GONE_DEADLINE_S = 5.0


def entries_of(pid: int) -> list[str]:
    """Shared-memory names that process ``pid`` made."""
    return sorted(f for f in os.listdir(SHM_DIR) if f.startswith(f"{NAME_PREFIX}{pid}_"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, deadline_s: float = GONE_DEADLINE_S) -> bool:
    end = time.monotonic() + deadline_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
    return condition()


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert wait_until(lambda: not multiprocessing.active_children())
    assert own_shm_entries() == []


# ------------------------------------------------------------------ records of any size


def produce(handle, sizes: list[int]) -> None:
    """(a process) Put one record of each size, its bytes all equal to its index, then the end."""
    ring = Ring.attach(handle)
    try:
        for i, size in enumerate(sizes):
            ring.put(RECORD_DATA, i.to_bytes(4, "little"), [memoryview(bytes([i % 251]) * size)])
        ring.put(RECORD_END, b"")
    finally:
        ring.close()


def consume(ring: Ring, sizes: list[int], is_alive) -> None:
    """Read the records that ``produce`` writes and check each."""
    for i, size in enumerate(sizes):
        record = ring.get(is_alive)
        assert record is not None, f"the producer died before record {i}"
        kind, metadata, buffers = record
        assert (kind, int.from_bytes(metadata, "little"), buffers[0].nbytes) == (RECORD_DATA, i, size)
        assert buffers[0] == bytes([i % 251]) * size
        ring.release()
    record = ring.get(is_alive)
    assert record is not None and record[0] == RECORD_END
    ring.release()


def stream_through_a_ring(capacity: int, sizes: list[int], transport: str, method: str) -> None:
    context = multiprocessing.get_context(method)
    ring = Ring.create(capacity, context.Semaphore, creator_consumes=True, transport=transport)
    process = context.Process(target=produce, args=(ring.handle, sizes), daemon=True)
    try:
        process.start()
        consume(ring, sizes, process.is_alive)
        process.join(5)
        assert process.exitcode == 0
    finally:
        ring.request_stop()
        process.join(5)
        ring.unlink()
        ring.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("transport", TRANSPORTS)
@settings(max_examples=25, deadline=None)
@given(
    capacity=st.integers(64, 2048).map(lambda n: n * 64),
    fractions=st.lists(st.floats(0.0, 1.3), min_size=1, max_size=30),
)
def test_records_of_any_size_pass_in_order(transport, capacity, fractions):
    # Records up to the whole ring (and a little more, so that it grows), in any order:
    # one that must wrap while the consumer is still before its size once waited for ever.
    sizes = [int(f * (capacity - 64)) for f in fractions]
    stream_through_a_ring(capacity, sizes, transport, default_start_method())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("method", multiprocessing.get_all_start_methods())
def test_a_record_that_wraps_before_the_consumer_passed_its_size_and_a_grown_ring(transport, method):
    kib = 1024
    # 600 KiB leaves the write position at 600 KiB of 1 MiB: a 700 KiB record must wrap, and
    # the consumer can never be 700 KiB into a lap it is only 600 KiB into. Then 3 MiB grows it.
    stream_through_a_ring(1024 * kib, [600 * kib, 700 * kib, 3 * 1024 * kib, 100 * kib], transport, method)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sizes", "ring_bytes"), [([3, 5], None), ([5, 6], None), ([100, 64, 100], 2**20)])
def test_samples_of_varying_size_never_wait_for_ever(sizes, ring_bytes):
    # Each of these waited for ever after its first sample (default 8 MiB ring; the last one
    # after growing to 200 MiB, with 100 - 64 wasted at the end of the lap).
    s = (
        pf.from_iterable(sizes)
        | pf.map(lambda m: np.full(m * 2**20, m, np.uint8))
        | pf.background(ring_bytes=ring_bytes)
    )
    assert [(x.nbytes >> 20, int(x[-1])) for x in s] == [(m, m) for m in sizes]


# ------------------------------------------------------------------ between any two processes


def relay_consumer(handle, sizes: list[int], report) -> None:
    """(a process) The consumer end of a ring another process made: check, and say how it went."""
    ring = Ring.attach(handle)
    try:
        consume(ring, sizes, lambda: True)
        report.send("ok")
    except BaseException as error:
        report.send(repr(error))
    finally:
        ring.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_ring_works_between_two_processes_that_did_not_make_it(transport):
    # A "feeder -> worker" hop: this process makes the ring; one child writes, another reads
    # and serves the grow request (so the writer finds the larger ring at its reader, not here).
    context = multiprocessing.get_context(default_start_method())
    sizes = [1000, 50_000, 3 * 2**20, 10]
    ring = Ring.create(2**20, context.Semaphore, transport=transport)
    reader, writer = context.Pipe(duplex=False)
    processes = [
        context.Process(target=produce, args=(ring.handle, sizes), daemon=True),
        context.Process(target=relay_consumer, args=(ring.handle, sizes, writer), daemon=True),
    ]
    try:
        for process in processes:
            process.start()
        assert reader.poll(30) and reader.recv() == "ok"
        for process in processes:
            process.join(5)
            assert process.exitcode == 0
        assert own_shm_entries() == []  # the reader removed the name at the first record
    finally:
        ring.request_stop()
        for process in processes:
            process.join(5)
        ring.unlink()
        ring.close()


# ------------------------------------------------------------------ shared memory is reserved up front


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_ring_larger_than_shared_memory_is_an_os_error_at_creation(transport):
    context = multiprocessing.get_context(default_start_method())
    with pytest.raises(OSError, match=r"cannot reserve \d+\.\d [MGT]iB of shared memory") as info:
        Ring.create(2**50, context.Semaphore, transport=transport)
    assert "background" not in str(info.value) and "ring_bytes" not in str(info.value)


def test_the_transport_variable_is_checked(monkeypatch):
    monkeypatch.setenv(TRANSPORT_VARIABLE, "carrier-pigeon")
    with pytest.raises(ValueError, match="PESCADOR_FP_TRANSPORT='carrier-pigeon'"):
        default_transport()


@pytest.mark.skipif("linux" not in TRANSPORTS, reason="the linux transport")
def test_the_linux_transport_names_nothing(monkeypatch):
    monkeypatch.setenv(TRANSPORT_VARIABLE, "linux")
    it = iter(pf.from_iterable(range(1000)) | pf.map(lambda i: np.full(10, i)) | pf.background(workers=2))
    next(it)
    assert own_shm_entries() == []
    it.close()


@pytest.mark.skipif("linux" not in TRANSPORTS, reason="the linux transport")
def test_a_linux_ring_makes_semaphores_without_names_and_closes_them():
    def named_semaphore(value):
        raise AssertionError("a linux ring makes its own semaphores")

    fds = len(os.listdir("/proc/self/fd"))
    ring = Ring.create(2**16, named_semaphore, transport="linux")
    for semaphore in (ring.handle.data_ready, ring.handle.space_ready):
        assert semaphore.acquire(timeout=0.001) is False
        semaphore.release()
        semaphore.release()
        assert [semaphore.acquire(timeout=0.001) for _ in range(3)] == [True, True, False]
    ring.close()
    ring.close()
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.timeout(60)
def test_a_portable_name_goes_as_soon_as_its_worker_has_it(monkeypatch):
    # Only worker 0 has delivered an item; worker 1's segment must lose its name anyway.
    monkeypatch.setenv(TRANSPORT_VARIABLE, "portable")
    s = pf.from_iterable(range(100)) | pf.map(lambda i: np.full(10, i)) | pf.background(workers=2)
    it = iter(s)
    next(it)
    assert wait_until(lambda: own_shm_entries() == [])
    it.close()


# ------------------------------------------------------------------ a killed consumer leaks nothing


def run_script(body: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def check_nothing_remains(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, result.stderr
    consumer, *workers = (int(word) for word in result.stdout.split())
    assert workers, result.stderr
    assert wait_until(lambda: not any(alive(pid) for pid in workers)), "workers outlived their consumer"
    # portable: the resource tracker removes what the consumer made, once the workers are gone
    assert wait_until(lambda: entries_of(consumer) == []), entries_of(consumer)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_consumer_killed_before_a_workers_first_record_leaves_nothing(transport):
    result = run_script(
        """
        import multiprocessing, os, signal, sys, time
        import numpy as np
        import pescador_fp as pf

        def slow(i):
            if i % 2:
                time.sleep(60)  # worker 1 sends nothing
            return np.full(10, i)

        if __name__ == "__main__":
            it = iter(pf.from_iterable(range(100)) | pf.map(slow) | pf.background(workers=2))
            next(it)
            pids = [p.pid for p in multiprocessing.active_children()]
            print(os.getpid(), *pids, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        {TRANSPORT_VARIABLE: transport},
    )
    check_nothing_remains(result)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_consumer_killed_while_a_ring_grows_leaves_nothing(transport):
    # A thread kills the consumer while it reserves the larger ring: the moment a second segment
    # of its own has pages.
    result = run_script(
        """
        import multiprocessing, os, signal, threading
        import numpy as np
        import pescador_fp as pf
        from pescador_fp._ipc.ring import NAME_PREFIX, SHM_DIR

        def segments():
            found = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    link = os.readlink(f"/proc/self/fd/{fd}")
                    if link.startswith(("/dev/shm/#", "/memfd:")) or NAME_PREFIX in link:
                        found.add(os.stat(f"/proc/self/fd/{fd}"))
                except OSError:
                    pass
            mine = f"{NAME_PREFIX}{os.getpid()}_"
            for name in os.listdir(SHM_DIR):
                if name.startswith(mine):
                    try:
                        found.add(os.stat(os.path.join(SHM_DIR, name)))
                    except OSError:
                        pass
            return {(s.st_ino, s.st_dev): s.st_blocks for s in found}

        def kill_while_growing(first):
            while True:
                if any(blocks and key not in first for key, blocks in segments().items()):
                    os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            sizes = [1, 400, 1]  # MiB: the second needs an 800 MiB ring
            s = pf.from_iterable(sizes) | pf.map(lambda m: np.ones(m << 20, np.uint8))
            # copy=True: items through the ring (by default a 400 MiB array goes in a pool block)
            it = iter(s | pf.background(ring_bytes=2**21, copy=True))
            next(it)
            print(os.getpid(), *[p.pid for p in multiprocessing.active_children()], flush=True)
            threading.Thread(target=kill_while_growing, args=(segments(),), daemon=True).start()
            for _ in it:
                pass
            print("the ring grew before the thread saw it", flush=True)
        """,
        {TRANSPORT_VARIABLE: transport},
    )
    check_nothing_remains(result)


# A consumer under spawn or forkserver that kills its whole process group (as `timeout -s KILL`,
# job control or a container's OOM kill do) at the moment KILL_AT names, after printing the named
# POSIX semaphores it maps ({path: inode}, gathered at every moment); "never": a normal run.
# (A name and an inode both: another process's new semaphore may reuse the inode of one removed.)
# multiprocessing's resource tracker, which would remove such names, dies with the group. (The
# portable transport's semaphores are multiprocessing's, named for the ring's life: it leaves them.)
GROUP_KILL_SCRIPT = """
    import json, os, signal
    import numpy as np
    import pescador_fp as pf
    from pescador_fp._ipc.workers import Workers

    named = {}

    def at(moment):
        # By inode: the mapping shows the name sem_open made the file under, not the one it has.
        with open("/proc/self/maps") as maps:
            fields = [line.split(maxsplit=5) for line in maps]
        mapped = {int(f[4]) for f in fields if len(f) == 6 and f[5].startswith("/dev/shm/sem.")}
        for name in os.listdir("/dev/shm"):
            path = os.path.join("/dev/shm", name)
            try:
                inode = os.stat(path).st_ino
            except FileNotFoundError:  # another process's, just removed
                continue
            if name.startswith("sem.") and inode in mapped:
                named[path] = inode
        if moment == os.environ["KILL_AT"]:
            print(json.dumps(named), flush=True)
            os.killpg(0, signal.SIGKILL)

    start = Workers.start

    def start_watched(self, *args, **kwargs):
        at("before its workers start")
        start(self, *args, **kwargs)
        at("while its workers start")

    Workers.start = start_watched

    if __name__ == "__main__":
        s = pf.from_iterable(range(40)) | pf.map(lambda i: np.full(10, i)) | pf.background(workers=2)
        it = iter(s)
        next(it)
        at("after its first item")
        it.close()
        assert [int(x[0]) for x in s] == list(range(40))
        at("at its end")
        print(json.dumps(named), flush=True)
"""


def still_named(named: dict[str, int]) -> list[str]:
    """The semaphore names in ``named`` ({path: inode}) that still exist, for the same file."""
    left = []
    for path, inode in named.items():
        try:
            if os.stat(path).st_ino == inode:
                left.append(path)
        except FileNotFoundError:
            pass
    return left


@pytest.mark.skipif("linux" not in TRANSPORTS, reason="the linux transport")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
@pytest.mark.parametrize(
    "moment", ["before its workers start", "while its workers start", "after its first item"]
)
def test_a_consumer_killed_with_its_process_group_leaves_no_semaphore(method, moment):
    result = run_script(
        GROUP_KILL_SCRIPT, {"KILL_AT": moment, START_METHOD_VARIABLE: method, TRANSPORT_VARIABLE: "linux"}
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    named = json.loads(result.stdout)
    try:
        assert wait_until(lambda: still_named(named) == []), still_named(named)
    finally:
        for path in still_named(named):  # this test's own consumer's, found by name and inode
            os.unlink(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_normal_run_leaves_no_semaphore_and_warns_of_nothing(method, transport):
    result = run_script(
        GROUP_KILL_SCRIPT,
        {
            "KILL_AT": "never",
            START_METHOD_VARIABLE: method,
            TRANSPORT_VARIABLE: transport,
            "PYTHONWARNINGS": "error",
        },
    )
    assert (result.returncode, result.stderr) == (0, "")
    named = json.loads(result.stdout)
    assert still_named(named) == []
