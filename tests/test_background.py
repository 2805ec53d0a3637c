"""background: samples travel unchanged, work is split exactly once, and nothing hangs or leaks.

Every test uses real processes and real shared memory. The lifecycle tests run
under all three start methods.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter, namedtuple

import numpy as np
import pytest
from helpers import own_shm_entries, same, same_items
from hypothesis import given, settings
from hypothesis import strategies as st

import pescador_fp as pf

START_METHODS = ["fork", "forkserver", "spawn"]
# Workers must be gone this soon after the iterator is closed (the contract says ~2 s).
STOP_DEADLINE_S = 3.0
# A dead worker must become an error this soon.
DEATH_DEADLINE_S = 3.0

Pair = namedtuple("Pair", "left right")


def shm_entries() -> list[str]:
    return own_shm_entries()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for_no_children(deadline_s: float = STOP_DEADLINE_S) -> list:
    end = time.monotonic() + deadline_s
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.02)
    return multiprocessing.active_children()


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = shm_entries()
    yield
    assert wait_for_no_children() == []
    assert shm_entries() == before


# ------------------------------------------------------------------ samples travel unchanged


def odd_samples():
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    structured = np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i2"), ("b", "f8")])
    return [
        {"x": np.arange(12.0).reshape(3, 4), "y": 3, "name": "a", "none": None},
        (np.float32(1.5), [np.zeros(0), np.array(7)], {"nested": (True, b"bytes")}),
        Pair(np.asfortranarray(np.arange(6).reshape(2, 3)), np.arange(20)[::3]),
        np.array([True, False, True]),
        big_endian,
        structured,
        np.array([{"a": 1}, None, "s"], dtype=object),
        np.empty((0, 3), dtype=np.complex64),
        "just a string",
        None,
        12345678901234567890,
    ]


@pytest.mark.parametrize("copy", [False, True])
def test_samples_travel_unchanged(copy):
    samples = odd_samples()
    count = 0
    for got, sent in zip(pf.from_iterable(samples) | pf.background(copy=copy), samples):
        assert same(got, sent), (got, sent)
        count += 1
    assert count == len(samples)
    out = list(pf.from_iterable(samples) | pf.background())
    assert out[2].left.flags.f_contiguous and not out[2].left.flags.c_contiguous
    assert out[4].dtype == np.dtype(">i4") and out[5].dtype.names == ("a", "b")
    assert isinstance(out[2], Pair) and out[1][2]["nested"] == (True, b"bytes")


def test_zero_copy_is_gone_and_says_what_took_its_place():
    for value in (True, False):
        with pytest.raises(TypeError, match=r"zero_copy= is gone.*shared memory that you own.*copy=True"):
            pf.background(zero_copy=value)
    with pytest.raises(TypeError, match="unexpected keyword argument 'ring'"):
        pf.background(ring=5)


def test_copies_belong_to_the_consumer():
    out = list(pf.from_iterable(range(20)) | pf.map(lambda i: np.full(1000, i)) | pf.background())
    assert all(x.flags.writeable for x in out)
    out[0][:] = -1  # the consumer may modify what it got
    assert [int(x[1]) for x in out[1:]] == list(range(1, 20))


def refilled(count, shape):
    """One array, refilled and yielded again for every item (as a loader with one buffer does)."""
    buffer = np.empty(shape, np.float32)
    for i in range(count):
        buffer[...] = i
        yield buffer


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("count", "shape"), [(3000, (4,)), (3000, (256,)), (3000, (16, 16)), (40, (2**18,))])
def test_a_source_may_refill_and_yield_one_array_again(workers, count, shape):
    # Each item is sent as it was when yielded: nothing the worker holds refers to the buffer.
    s = pf.stream(refilled, count, shape) | pf.map(lambda x: x) | pf.background(workers=workers)
    firsts = [float(x.flat[0]) for x in s if (x == x.flat[0]).all()]
    assert sorted(firsts) == list(map(float, range(count)))


def test_samples_larger_than_the_ring_grow_it():
    sizes = [1, 3, 1, 9, 2]  # MiB, with a 2 MiB ring
    s = (
        pf.from_iterable(sizes)
        | pf.map(lambda mb: np.full(mb * 2**18, mb, np.float32))
        | pf.background(ring_bytes=2**21)
    )
    assert [(x.nbytes >> 20, int(x[-1])) for x in s] == [(n, n) for n in sizes]


# ------------------------------------------------------------------ several workers


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_background_equals_foreground_for_per_item_pipelines(workers):
    s = pf.from_iterable(range(100)) | pf.map(lambda i: {"i": i, "x": np.full(3, i)})
    assert same_items(list(s | pf.background(workers=workers)), list(s))


@pytest.mark.parametrize(
    "make",
    [
        lambda: pf.from_iterable(range(101)) | pf.filter(lambda i: i % 3),
        lambda: pf.from_arrays({"i": np.arange(57)}) | pf.map(lambda d: int(d["i"])),
        lambda: pf.stream(lambda: iter(range(40))) | pf.map(lambda i: i),
        lambda: pf.from_iterable(range(40)) | pf.take(33),
        lambda: pf.chain([pf.from_iterable(range(i * 10, i * 10 + 7)) for i in range(5)]),
        lambda: pf.mux(
            [pf.from_iterable(range(i * 10, i * 10 + i)) for i in range(7)], 3, mode="exhaustive", seed=1
        ),
        lambda: (
            pf.from_iterable(range(90)) | pf.shuffle(16, seed=2) | pf.batch(4, partial=True) | pf.unbatch()
        ),
    ],
    ids=["filter", "arrays", "generator", "take", "chain", "exhaustive-mux", "shuffle-batch"],
)
def test_every_item_comes_out_exactly_once_with_several_workers(make):
    s = make()
    expected = sorted(int(x) for x in s)
    for workers in (2, 3):
        out = [int(x) for x in s | pf.background(workers=workers)]
        assert sorted(out) == expected


def test_weighted_mux_keeps_its_shares_across_workers():
    sources = [pf.stream(lambda c=c: iter(lambda: c, None)) for c in "abcdef"]
    weights = [6, 1, 1, 1, 2, 1]
    s = pf.mux(sources, 4, rate=8, weights=weights, seed=0) | pf.background(workers=2)
    counts = Counter(s | pf.take(30_000))
    observed = np.array([counts[c] for c in "abcdef"]) / 30_000
    assert np.abs(observed - np.array(weights) / sum(weights)).max() < 0.02, observed


def test_weighted_mux_keeps_its_shares_across_workers_under_a_filter():
    # A filter above a divided mux makes the merge pick a worker per input item (marks): the
    # shares are the mux's, before the filter, as in the foreground.
    sources = [pf.stream(lambda c=c: iter(lambda: c, None)) for c in "abcdef"]
    weights = [6, 1, 1, 1, 2, 1]
    s = pf.mux(sources, 4, rate=8, weights=weights, seed=0) | pf.filter(lambda c: c != "b")
    counts = Counter(s | pf.background(workers=2) | pf.take(30_000))
    kept = np.array([w if c != "b" else 0 for c, w in zip("abcdef", weights)])
    observed = np.array([counts[c] for c in "abcdef"]) / 30_000
    assert np.abs(observed - kept / kept.sum()).max() < 0.02, observed
    again = s | pf.background(workers=2) | pf.take(500)
    assert list(again.iterate(seed=3)) == list(again.iterate(seed=3))


def endless(c):
    return iter(lambda: c, None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize(
    "make",
    [
        lambda: pf.mux([pf.stream(endless, "a"), pf.stream(endless, "b")], 2, rate=3, seed=0),
        lambda: pf.shuffled_mux([pf.stream(endless, "a"), pf.stream(endless, "b")], seed=0),
        lambda: pf.round_robin([pf.stream(endless, "a"), pf.stream(endless, "b")], mode="cycle"),
        lambda: pf.mux([pf.stream(endless, c) for c in "ab"], 2, mode="single_active", seed=0),
        lambda: pf.from_iterable(["a", "b", "b", "b", "b", "b", "b"]) | pf.cycle(),
    ],
    ids=["mux", "shuffled_mux", "round_robin", "single_active", "cycle"],
)
def test_an_endless_stream_keeps_coming_when_a_worker_filters_out_all_it_has(make, workers):
    # Some workers get only "b"s, which the filter drops: their marks keep the merge moving.
    s = make() | pf.filter(lambda c: c == "a") | pf.background(workers=workers, timeout=20) | pf.take(20)
    assert list(s) == ["a"] * 20


def test_same_seed_and_workers_same_output_and_workers_get_their_own_seeds():
    s = pf.from_iterable(range(200)) | pf.shuffle(50) | pf.background(workers=2)
    first = list(s.iterate(seed=5))
    assert first == list(s.iterate(seed=5))
    assert first != list(s.iterate(seed=6))
    # The two workers shuffle their halves with different generators.
    evens, odds = [x // 2 for x in first if x % 2 == 0], [x // 2 for x in first if x % 2]
    assert evens != odds


# ------------------------------------------------------------------ lifecycle


@pytest.mark.parametrize("start_method", START_METHODS)
def test_building_starts_nothing_and_each_way_out_stops_the_workers(start_method):
    def pipeline():
        return (
            pf.stream(lambda: iter(int, 1))
            | pf.map(lambda _: np.zeros(100))
            | pf.background(workers=2, start_method=start_method)
        )

    s = pipeline()
    assert multiprocessing.active_children() == []
    # end of stream
    assert len(list(pf.from_iterable(range(5)) | pf.background(start_method=start_method))) == 5
    assert wait_for_no_children() == []
    # break
    for i, _ in enumerate(s):
        if i == 3:
            break
    assert wait_for_no_children() == []
    # close()
    it = iter(s)
    next(it)
    assert len(multiprocessing.active_children()) == 3  # two workers and the feeder of the generator
    it.close()
    it.close()  # idempotent
    assert wait_for_no_children() == []
    # garbage collection
    it = iter(s)
    next(it)
    del it
    gc.collect()
    assert wait_for_no_children() == []
    # an exception in the loop body
    with pytest.raises(RuntimeError):
        for _ in s:
            raise RuntimeError("the training step failed")
    assert wait_for_no_children() == []
    assert shm_entries() == []


def test_open_close_cycles_leak_nothing():
    s = pf.from_iterable(range(1000)) | pf.map(lambda i: np.full(64, i)) | pf.background()
    list(s | pf.take(3))
    fds, entries = fd_count(), shm_entries()
    for _ in range(200):
        it = iter(s)
        next(it)
        it.close()
    assert wait_for_no_children() == []
    assert fd_count() <= fds and shm_entries() == entries


@pytest.mark.parametrize("start_method", START_METHODS)
def test_worker_exception_arrives_after_earlier_items_with_its_traceback(start_method):
    def explode(i):
        if i == 7:
            raise KeyError(f"bad sample {i}")
        return i

    got = []
    with pytest.raises(KeyError, match="bad sample 7") as info:
        for x in pf.from_iterable(range(20)) | pf.map(explode) | pf.background(start_method=start_method):
            got.append(x)
    assert got == list(range(7))
    assert "explode" in str(info.value.__cause__) and "worker 0" in str(info.value.__cause__)


def test_an_exception_that_cannot_be_pickled_becomes_a_worker_error():
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no pickling")

    def explode(i):
        raise Unpicklable(f"lost {i}")

    with pytest.raises(pf.WorkerError, match="Unpicklable: lost 0"):
        list(pf.from_iterable([0]) | pf.map(explode) | pf.background())


@pytest.mark.parametrize("how", ["sigkill", "os_exit"])
def test_a_dead_worker_is_a_worker_error_naming_it_and_its_exit_code(how):
    def die(i):
        if i == 3:
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(17)
        return i

    start = time.monotonic()
    with pytest.raises(pf.WorkerError, match="worker 0") as info:
        list(pf.from_iterable(range(10)) | pf.map(die) | pf.background())
    assert time.monotonic() - start < DEATH_DEADLINE_S
    assert ("SIGKILL" in str(info.value)) if how == "sigkill" else ("code 17" in str(info.value))


def test_an_unpicklable_recipe_fails_at_start_naming_it():
    lock = threading.Lock()
    s = pf.from_iterable(range(3)) | pf.map(lambda x: (lock, x)[1]) | pf.background(start_method="spawn")
    with pytest.raises(TypeError, match=r"map\(<lambda>\) could not be pickled.*lock"):
        next(iter(s))


def test_a_too_large_ring_is_a_clear_error_at_start():
    s = pf.from_iterable(range(3)) | pf.map(abs) | pf.background(workers=2, ring_bytes=2**50)
    before = fd_count()
    for _ in range(3):
        with pytest.raises(pf.WorkerError, match=r"cannot reserve .* shared memory"):
            next(iter(s))
    assert fd_count() == before  # the failed rings' descriptors (their semaphores) are closed too


@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="descriptors are counted through /proc")
def test_running_out_of_descriptors_says_so_and_leaks_none():
    # With the limit of open files a little above what the process holds, starting a pass either
    # works or is a WorkerError that names descriptors and `ulimit -n`: never "free shared memory",
    # never a raw OSError, and the descriptors it had made are closed again.
    result = run_script(
        """
        import collections, multiprocessing, os, resource, time
        import pescador_fp as pf

        def numbers():
            yield from range(60)

        if __name__ == "__main__":
            streams = [
                pf.from_iterable(range(60)) | pf.map(lambda i: i) | pf.background(workers=3),
                pf.stream(numbers) | pf.map(lambda i: i) | pf.background(workers=3),
            ]
            for s in streams:
                list(s)  # the fork server and the resource tracker, if any, start here and stay
            held = len(os.listdir("/proc/self/fd"))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            outcomes = collections.Counter()
            for extra in range(0, 34, 2):
                for s in streams:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (held + extra, hard))
                    try:
                        outcome = "items" if list(s) == list(range(60)) else "wrong items"
                    except pf.WorkerError as error:
                        text = str(error)
                        named = "file descriptors" in text and "ulimit -n" in text
                        outcome = "descriptors" if named else text
                    except Exception as error:
                        outcome = repr(error)
                    finally:
                        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    outcomes[outcome] += 1
            end = time.monotonic() + 5
            while multiprocessing.active_children() and time.monotonic() < end:
                time.sleep(0.05)
            left = len(os.listdir("/proc/self/fd")) - held
            print(sorted(outcomes), left, multiprocessing.active_children())
        """,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.strip() == "['descriptors', 'items'] 0 []", result.stdout + result.stderr[-5000:]


@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="descriptors are counted through /proc")
def test_running_out_of_descriptors_while_arrays_arrive_in_shared_memory_blocks_says_so():
    # Each new segment of a worker's pool reaches the consumer as a descriptor (1 MiB arrays, four
    # workers): the consumer with no room for one is the same WorkerError, never a raw OSError.
    result = run_script(
        """
        import collections, multiprocessing, os, resource, time, warnings
        import numpy as np
        import pescador_fp as pf

        if __name__ == "__main__":
            warnings.simplefilter("ignore")  # the workers at the same limit: their pools copy instead
            s = pf.from_iterable(range(12)) | pf.map(lambda i: np.full(2**17, i)) | pf.background(workers=4)
            list(s)
            held = len(os.listdir("/proc/self/fd"))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            outcomes = collections.Counter()
            for extra in range(0, 100, 3):
                resource.setrlimit(resource.RLIMIT_NOFILE, (held + extra, hard))
                try:
                    outcome = "items" if [int(x[0]) for x in s] == list(range(12)) else "wrong items"
                except pf.WorkerError as error:
                    text = str(error)
                    outcome = "descriptors" if "file descriptors" in text and "ulimit -n" in text else text
                except Exception as error:
                    outcome = repr(error)
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                outcomes[outcome] += 1
            end = time.monotonic() + 5
            while multiprocessing.active_children() and time.monotonic() < end:
                time.sleep(0.05)
            left = len(os.listdir("/proc/self/fd")) - held
            print(sorted(outcomes), left, multiprocessing.active_children())
        """,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.strip() == "['descriptors', 'items'] 0 []", result.stdout + result.stderr[-5000:]


def test_a_slow_consumer_keeps_the_worker_within_the_ring(tmp_path):
    log = tmp_path / "produced"

    def produce():
        i = 0
        while True:
            with open(log, "w") as f:
                f.write(str(i))
            yield np.zeros(2**14, dtype=np.float32)  # 64 KiB
            i += 1

    it = iter(pf.stream(produce) | pf.background(ring_bytes=2**20))
    next(it)
    time.sleep(1.0)
    produced = int(log.read_text())
    it.close()
    assert produced <= 1 + 2**20 // 2**16 + 2  # what the ring holds, plus one in hand


# ------------------------------------------------------------------ process-level faults


def run_script(body: str, timeout: float = 30) -> subprocess.CompletedProcess:
    # Ctrl-C raises KeyboardInterrupt, however the tests were started (a shell starts a background job
    # with SIGINT ignored).
    handled = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    script = handled + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,  # its own process group, so its signals stay there
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


@pytest.mark.parametrize("start_method", START_METHODS)
def test_ctrl_c_to_the_process_group_stops_everything(start_method):
    result = run_script(f"""
        import multiprocessing, os, signal, time
        import numpy as np
        import pescador_fp as pf
        from pescador_fp._ipc.ring import NAME_PREFIX, SHM_DIR

        def items():
            while True:
                yield np.zeros(1000)

        if __name__ == "__main__":
            s = pf.stream(items) | pf.background(workers=2, start_method={start_method!r})
            try:
                for i, _ in enumerate(s):
                    if i == 100:
                        os.killpg(os.getpgid(0), signal.SIGINT)
                        time.sleep(5)
            except KeyboardInterrupt:
                end = time.monotonic() + 3
                while multiprocessing.active_children() and time.monotonic() < end:
                    time.sleep(0.02)
                left = [f for f in os.listdir(SHM_DIR) if f.startswith(NAME_PREFIX + str(os.getpid()))]
                print("children", len(multiprocessing.active_children()), "shm", len(left))
    """)
    assert "children 0 shm 0" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr  # workers do not print their own KeyboardInterrupt


def test_a_killed_consumer_takes_its_workers_with_it(tmp_path):
    pids = tmp_path / "pids"
    run_script(f"""
        import os, signal
        import pescador_fp as pf

        def items():
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            while True:
                yield os.getpid()

        if __name__ == "__main__":
            it = iter(pf.from_iterable(range(2)) | pf.mapcat(lambda _: items()) | pf.background(workers=2))
            # Both workers are running (the merge reads worker 0's endless group first).
            while not os.path.exists({str(pids)!r}) or len(open({str(pids)!r}).read().split()) < 2:
                next(it)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    worker_pids = [int(p) for p in pids.read_text().split()]
    assert len(worker_pids) == 2
    end = time.monotonic() + STOP_DEADLINE_S
    while time.monotonic() < end and any(_alive(p) for p in worker_pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in worker_pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ timeout


def _stuck_on_seven(i):
    if i == 7:
        time.sleep(1e9)
    return i


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_hung_worker_becomes_a_worker_error_naming_it_and_where_it_is(start_method):
    s = (
        pf.from_iterable(range(20))
        | pf.map(_stuck_on_seven)
        | pf.background(workers=2, timeout=1.5, start_method=start_method)
    )
    got = []
    with pytest.raises(pf.WorkerError) as caught:
        for x in s:
            got.append(x)
    assert got == [0, 1, 2, 3, 4, 5, 6]
    message = str(caught.value)
    assert "background worker 1 " in message and "sent nothing for 1.5 s (timeout=1.5)" in message
    assert "it is in File" in message and "test_background.py" in message and "_stuck_on_seven" in message


@pytest.mark.timeout(60)
def test_a_slow_but_steady_worker_is_not_timed_out():
    def slow(i):
        time.sleep(0.3)
        return i

    s = pf.from_iterable(range(6)) | pf.map(slow) | pf.background(timeout=1)
    assert list(s) == list(range(6))


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"workers": 0}, ValueError, "workers must be an integer >= 1, got 0"),
        ({"ring_bytes": 10}, ValueError, "ring_bytes must be an integer >= 4096, got 10"),
        ({"start_method": "thread"}, ValueError, "start_method must be one of"),
        ({"zero_copy": "yes"}, TypeError, "zero_copy"),
        ({"copy": "yes"}, TypeError, "copy must be"),
        ({"ring_bytes": 2**63}, ValueError, r"ring_bytes must be at most 2\*\*56 .*got 9223372036854775808"),
        ({"ring_bytes": 1.5}, TypeError, "ring_bytes must be an integer"),
        ({"timeout": 0}, ValueError, "timeout must be a positive, finite number of seconds, got 0"),
        (
            {"timeout": float("nan")},
            ValueError,
            "timeout must be a positive, finite number of seconds, got nan",
        ),
        ({"timeout": float("inf")}, ValueError, "timeout must be a positive"),
        ({"timeout": "5"}, TypeError, "timeout must be a number of seconds or None, got '5'"),
        ({"timeout": True}, TypeError, "timeout must be a number"),
    ],
)
def test_bad_arguments_are_refused_when_built(kwargs, error, text):
    with pytest.raises(error, match=text):
        pf.background(**kwargs)


def test_repr_and_pickling():
    assert repr(pf.background(timeout=2.5)) == "background(workers=1, timeout=2.5)"
    op = pf.background(workers=2, copy=True)
    assert repr(op) == "background(workers=2, copy=True)"
    s = pf.from_iterable([1, 2]) | op
    assert repr(s) == "from_iterable([1, 2]) | background(workers=2, copy=True)"
    assert same(list(s), [1, 2])


def test_a_background_inside_a_background_is_a_clear_error():
    inner = pf.from_iterable(range(3)) | pf.background()
    with pytest.raises(pf.WorkerError, match="cannot start workers from a daemon process"):
        list(inner | pf.map(lambda x: x) | pf.background())


@settings(max_examples=15, deadline=None)
@given(
    items=st.lists(
        st.one_of(
            st.integers(-5, 5),
            st.text(max_size=3),
            st.lists(st.integers(0, 9), max_size=4).map(lambda xs: np.array(xs, dtype=np.int16)),
            st.dictionaries(
                st.sampled_from("xyz"), st.floats(width=32, allow_nan=False).map(np.float32), max_size=3
            ),
        ),
        max_size=30,
    ),
    workers=st.integers(1, 3),
)
def test_background_equals_foreground(items, workers):
    s = pf.from_iterable(items) | pf.map(lambda x: x)
    assert same_items(list(s | pf.background(workers=workers)), list(s))


def test_an_array_kept_after_close_stays_readable_and_writable():
    it = iter(pf.from_iterable(range(5)) | pf.map(lambda i: np.full(2**17, i)) | pf.background())
    kept = next(it)
    it.close()
    assert (kept == 0).all()  # the mapping lives as long as the array
    kept[:] = 7
    assert (kept == 7).all()


@pytest.mark.parametrize("copy", [False, True])
def test_runs_of_small_arrays_keep_their_layouts(copy):
    # Same byte size, different dtypes and shapes, in runs and alone: the quick paths for
    # repeated layouts (worker) and for runs of them (consumer) must not mix them up.
    layouts = [(np.float32, (256,)), (np.float64, (128,)), (np.int16, (16, 32)), (np.uint8, (1024,))]
    plan = [k % 4 for k in range(40)] + [0] * 300 + [1] * 5 + [3] * 50 + [2]
    expected = [np.full(layouts[k][1], i % 200, dtype=layouts[k][0]) for i, k in enumerate(plan)]
    got = 0
    for x, want in zip(pf.from_iterable(expected) | pf.background(copy=copy), expected):
        assert same(x, want)
        got += 1
    assert got == len(expected)


@pytest.mark.parametrize("workers", [1, 3])
def test_forked_workers_inherit_a_recipes_large_arrays_instead_of_their_pickled_bytes(workers):
    from pescador_fp._ipc import codec
    from pescador_fp.background import recipe_bytes

    rows = np.arange(2**20, dtype=np.float64).reshape(2**12, 2**8)  # 8 MiB
    s = pf.from_arrays({"x": rows}) | pf.batch(100, partial=True)
    keys: list = []
    assert len(recipe_bytes((s, None), s, inherit=keys)) < rows.nbytes // 100 and keys
    codec.forget_inherited(keys)
    assert not codec._INHERITED
    forked = s | pf.background(workers=workers, start_method="fork")
    got = np.concatenate([b["x"] for b in forked])
    assert sorted(got[:, 0].tolist()) == rows[:, 0].tolist() and not codec._INHERITED
    it = iter(forked)
    next(it)
    it.close()  # an early end forgets them too
    assert not codec._INHERITED


def test_user_code_that_exits_with_the_status_of_running_out_of_descriptors_is_not_taken_for_it():
    # 71 is what a worker that could not attach its rings exits with; the user's code may exit with it too.
    s = pf.from_iterable(range(20)) | pf.map(lambda i: os._exit(71) if i == 5 else i)
    with pytest.raises(pf.WorkerError, match="exited with code 71") as caught:
        list(s | pf.background(workers=2))
    assert "descriptors" not in str(caught.value)


def ends_after_three(error):
    yield from range(3)
    raise error


def raise_at_three(x, error):
    if x == 3:
        raise error
    return x


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="descriptors are counted through /proc")
@pytest.mark.parametrize(("error", "full_traceback"), [(SystemExit(3), ""), (ValueError("bad"), "1")])
def test_a_workers_error_leaves_no_descriptor_open_until_the_garbage_collector_runs(
    monkeypatch, error, full_traceback
):
    # A worker's SystemExit (never trimmed, as no BaseException is), or any error with the library's
    # frames kept: the frames that the error's traceback keeps must hold no view of the ring, which
    # would keep it mapped, and its descriptor open, until the garbage collector breaks the cycle.
    monkeypatch.setenv("PESCADOR_FP_FULL_TRACEBACK", full_traceback)
    for s in [
        pf.from_arrays(np.arange(4)) | pf.map(lambda x: raise_at_three(x, error)),
        pf.stream(ends_after_three, error) | pf.map(lambda i: i),
    ]:
        s = s | pf.background(workers=2, start_method="fork")
        s.head(1)  # anything made once per process
        held = fd_count()
        gc.disable()
        try:
            with pytest.raises(type(error)):
                list(s)
            assert wait_for_no_children() == []
            assert fd_count() == held
        finally:
            gc.enable()
