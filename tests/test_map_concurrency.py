"""map and mapcat with ``concurrency=k``: threads for plain functions, one event loop for ``async def``."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import traceback

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pescador_fp as pf
from pescador_fp._concurrency import _WINDOW

# Units a pool takes ahead of its consumer, at most (documented in docs/io.md).
WINDOW = _WINDOW


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _no_new_threads(before: set[threading.Thread]) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _threads() - before:
            return True
        time.sleep(0.01)
    return False


def _sleepy(delays):
    def call(i):
        time.sleep(delays[i % len(delays)])
        return i * 10

    return call


def _sleepy_async(delays):
    async def call(i):
        await asyncio.sleep(delays[i % len(delays)])
        return i * 10

    return call


delays = st.lists(st.floats(0, 0.002), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 8), n=st.integers(0, 40), delays=delays, is_async=st.booleans())
def test_results_and_order_equal_the_plain_map_over_random_delays(k, n, delays, is_async):
    fn = _sleepy_async(delays) if is_async else _sleepy(delays)
    expected = [i * 10 for i in range(n)]
    assert list(range(n) | pf.map(fn, concurrency=k)) == expected
    assert sorted(range(n) | pf.map(fn, concurrency=k, ordered=False)) == expected


@settings(max_examples=15, deadline=None)
@given(k=st.integers(1, 8), n=st.integers(0, 30), delays=delays)
def test_mapcat_yields_every_items_outputs_in_order(k, n, delays):
    call = _sleepy(delays)

    def repeat(i):
        return [call(i)] * (i % 3)

    async def repeat_async(i):
        await asyncio.sleep(delays[i % len(delays)])
        for _ in range(i % 3):
            yield i * 10

    expected = list(range(n) | pf.mapcat(repeat))
    assert list(range(n) | pf.mapcat(repeat, concurrency=k)) == expected
    assert list(range(n) | pf.mapcat(repeat_async, concurrency=k)) == expected
    assert sorted(range(n) | pf.mapcat(repeat, concurrency=k, ordered=False)) == sorted(expected)


def _fails_at(n):
    def call(i):
        time.sleep(0.001 * (i % 3))
        if i == n:
            raise KeyError(f"item {i}")
        return i

    return call


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_an_error_comes_after_the_items_before_it_as_itself_and_no_thread_is_left(k, is_async):
    fails = _fails_at(7)

    async def fails_async(i):
        return fails(i)

    before = _threads()
    got = []
    with pytest.raises(KeyError, match="item 7") as raised:
        for x in range(30) | pf.map(fails_async if is_async else fails, concurrency=k):
            got.append(x)
    assert got == list(range(7))
    # the user's traceback: the frame that raised is the user's function
    assert traceback.extract_tb(raised.value.__traceback__)[-1].name == "call"
    assert _no_new_threads(before)


def test_an_error_of_the_input_comes_in_its_place():
    def source():
        yield from range(5)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in pf.stream(source) | pf.map(_sleepy([0.001]), concurrency=4):
            got.append(x)
    assert got == [0, 10, 20, 30, 40]


def test_mapcat_outputs_before_an_error_in_an_items_iterable_come_first():
    def outputs(i):
        yield i
        if i == 2:
            raise ValueError("half way")
        yield -i

    expected, got = [], []
    for s, out in [(pf.mapcat(outputs), expected), (pf.mapcat(outputs, concurrency=3), got)]:
        with pytest.raises(ValueError, match="half way"):
            for x in range(5) | s:
                out.append(x)
    assert got == expected == [0, 0, 1, -1, 2]


def test_outputs_before_a_keyboard_interrupt_in_an_items_iterable_come_first():
    # Only an Exception kept the outputs before it: a KeyboardInterrupt dropped them.
    def outputs(i):
        yield i
        if i == 2:
            raise KeyboardInterrupt("half way")
        yield -i

    async def outputs_async(i):
        for x in outputs(i):
            yield x

    for s in [pf.mapcat(outputs), pf.mapcat(outputs, concurrency=3), pf.mapcat(outputs_async, concurrency=3)]:
        got = []
        with pytest.raises(KeyboardInterrupt, match="half way"):
            for x in range(5) | s:
                got.append(x)
        assert got == [0, 0, 1, -1, 2], s


def test_an_error_half_way_through_an_items_outputs_stops_the_threads_without_gc():
    # The error's traceback held the pool's generator in a reference cycle: its threads waited
    # for work until a garbage collection.
    def outputs(i):
        yield i
        if i == 2:
            raise ValueError("half way")

    before = _threads()
    gc.disable()
    try:
        with pytest.raises(ValueError, match="half way"):
            list(range(50) | pf.mapcat(outputs, concurrency=4))
        assert _no_new_threads(before)
    finally:
        gc.enable()


@pytest.mark.parametrize("k", [1, 3])
def test_a_cancelled_error_raised_by_an_async_call_is_its_error(k):
    # It was taken for the pool's own cancellation: the worker ended silently and the pass
    # hung (k > 1) or failed with "the workers ... ended" (k = 1).
    async def call(i):
        await asyncio.sleep(0.001)
        if i == 2:
            raise asyncio.CancelledError("the request was cancelled")
        return i

    got = []
    before = _threads()
    with pytest.raises(asyncio.CancelledError, match="the request was cancelled"):
        for x in range(6) | pf.map(call, concurrency=k):
            got.append(x)
    assert got == [0, 1]
    assert _no_new_threads(before)


def test_stop_iteration_from_the_function_is_a_runtime_error_as_without_concurrency():
    def stops(i):
        if i == 2:
            raise StopIteration
        return i

    with pytest.raises(RuntimeError, match="raised StopIteration"):
        list(range(5) | pf.map(stops, concurrency=3))


class _Calls:
    """Counts the calls started and the most running at once."""

    def __init__(self, delay: float) -> None:
        self.delay, self.started, self.running, self.most = delay, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, i: int) -> int:
        with self.lock:
            self.started += 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        return i


@pytest.mark.parametrize("how", ["break", "close", "gc"])
def test_bounded_work_and_no_thread_left_after_the_pass_ends_early(how):
    calls = _Calls(0.002)
    before = _threads()
    it = (range(10_000) | pf.map(calls, concurrency=4)).iterate()
    taken = [next(it) for _ in range(10)]
    assert taken == list(range(10))
    if how == "close":
        it.close()
    elif how == "gc":
        del it
        gc.collect()
    else:
        for x in it:
            if x == 20:
                break
        it.close()  # what a for loop's end leaves to the garbage collector
    assert _no_new_threads(before)
    started = calls.started
    assert started <= 21 + WINDOW
    time.sleep(0.05)
    assert calls.started == started  # nothing started after close
    assert calls.most <= 4


def test_at_most_k_calls_run_at_once():
    calls = _Calls(0.003)
    assert list(range(60) | pf.map(calls, concurrency=3)) == list(range(60))
    assert calls.most == 3


def test_closing_cancels_async_calls_at_their_await():
    ended = []

    async def slow(i):
        try:
            if i:
                await asyncio.sleep(60)
            return i
        finally:
            ended.append(i)

    before = _threads()
    it = iter(range(4) | pf.map(slow, concurrency=4))
    start = time.monotonic()
    assert next(it) == 0
    it.close()
    assert time.monotonic() - start < 10
    assert _no_new_threads(before)
    assert sorted(ended) == [0, 1, 2, 3]


def _noisy(x, rng):
    return (x, float(rng.random()), int(rng.integers(1000)))


def _noisy_many(x, rng):
    return [(x, float(rng.random())) for _ in range(x % 3)]


@pytest.mark.parametrize("ordered", [True, False])
def test_rng_draws_are_the_items_not_the_threads(ordered):
    plain = range(50) | pf.map(_noisy, rng=True)
    concurrent = range(50) | pf.map(_noisy, rng=True, concurrency=5, ordered=ordered)
    for seed in (0, 1):
        expected = list(plain.iterate(seed=seed))
        got = list(concurrent.iterate(seed=seed))
        assert (got if ordered else sorted(got)) == expected
    many = range(30) | pf.mapcat(_noisy_many, rng=True, seed=3)
    assert list(range(30) | pf.mapcat(_noisy_many, rng=True, seed=3, concurrency=4)) == list(many)


def _twice(x):
    time.sleep(0.001 * (x % 3))
    return 2 * x


async def _twice_async(x):
    await asyncio.sleep(0.001 * (x % 3))
    return 2 * x


def _odd(x):
    return x % 3


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_inside_background_workers_equal_to_the_foreground(start_method):
    before = _threads()
    bg = pf.background(workers=2, start_method=start_method)
    for s in [
        range(40) | pf.map(_twice, concurrency=4),
        range(40) | pf.map(_noisy, rng=True, concurrency=3),
        pf.stream(iter, range(30)) | pf.map(_twice_async, concurrency=4),
        range(20) | pf.mapcat(_noisy_many, rng=True, concurrency=3),
        # workers would mark each item's end: the concurrent map runs in the feeder
        range(40) | pf.filter(_odd) | pf.map(_twice, concurrency=4) | pf.map(str),
        range(40) | pf.map(_twice, concurrency=4) | pf.filter(_odd),
    ]:
        assert list((s | bg).iterate(seed=5)) == list(s.iterate(seed=5)), s
    assert _no_new_threads(before)


def test_under_shard_the_parts_make_the_foreground_pass():
    s = range(41) | pf.map(_noisy, rng=True, concurrency=4)
    parts = [list((s | pf.shard(i, 3)).iterate(seed=2)) for i in range(3)]
    assert sorted(x for part in parts for x in part) == sorted(s.iterate(seed=2))


def _plain(batch):
    return [column.tolist() for column in batch]


@pytest.mark.parametrize("make", [pf.map, pf.mapcat])
def test_a_resumed_pass_yields_the_rest(make):
    fn = _noisy if make is pf.map else _noisy_many
    s = range(50) | make(fn, rng=True, concurrency=4) | pf.batch(3, partial=True)
    whole = [_plain(b) for b in s.iterate(seed=7)]
    for n in (0, 1, 5, len(whole) - 1):
        it = s.iterate(seed=7)
        head = [_plain(next(it)) for _ in range(n)]
        state = json.loads(json.dumps(it.state()))
        it.close()
        rest = [_plain(b) for b in s.iterate(seed=7, state=state)]
        assert head + rest == whole


def test_stats_show_calls_in_flight_and_time_per_call():
    it = (range(40) | pf.map(_sleepy([0.005]), concurrency=4)).iterate()
    next(it)
    row = it.stats()["stages"][0]
    assert row["concurrency"] == 4 and 1 <= row["in_flight"] <= 4
    list(it)
    stats = it.stats()
    row = stats["stages"][0]
    assert row["in_flight"] == 0 and row["calls"] == 40
    assert row["call_s"] >= 0.004
    assert "calls in flight" in str(stats)
    s = range(40) | pf.map(_sleepy([0.001]), concurrency=4)
    it = s.iterate(seed=0)
    next(it)
    resumed = s.iterate(seed=0, state=it.state())
    it.close()
    assert len(list(resumed)) == 39 and resumed.stats()["stages"][0]["calls"] == 39


@pytest.mark.parametrize("make", [pf.map, pf.mapcat])
def test_arguments_are_checked_when_built(make):
    bad_values = [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("8", TypeError)]
    for bad, error in bad_values:
        with pytest.raises(error, match=rf"concurrency must be an integer >= 1, got {bad!r}"):
            make(abs, concurrency=bad)
    with pytest.raises(TypeError, match="ordered must be True or False, got 'yes'"):
        make(abs, concurrency=2, ordered="yes")
    with pytest.raises(ValueError, match="ordered=False needs concurrency"):
        make(abs, ordered=False)
    with pytest.raises(TypeError, match=r"async function.*concurrency=None"):
        make(_twice_async)


def test_reprs_name_the_concurrency():
    assert repr(pf.map(abs, concurrency=8)) == "map(abs, concurrency=8)"
    assert repr(pf.mapcat(list, concurrency=2, ordered=False)) == "mapcat(list, concurrency=2, ordered=False)"
    random_map = pf.map(_noisy, rng=True, seed=1, concurrency=3)
    assert repr(random_map) == "map(_noisy, rng=True, seed=1, concurrency=3)"


def test_threads_start_at_the_first_item_and_a_fork_inherits_none():
    s = range(30) | pf.map(_twice, concurrency=4)
    before = _threads()
    it = s.iterate(seed=0)
    assert _threads() == before  # iterate() starts nothing
    assert next(it) == 0
    assert _threads() - before  # the first item started the pool
    # a pool open in this process while background forks: the workers run pools of their own
    assert list((s | pf.background(workers=2, start_method="fork")).iterate(seed=0)) == list(s)
    it.close()
    assert _no_new_threads(before)


@pytest.mark.parametrize(
    "op",
    [
        pf.map(lambda x: x + 1, concurrency=3),
        pf.map(_twice_async, concurrency=2, ordered=False),
        pf.mapcat(lambda x, rng: [x, float(rng.random())], rng=True, seed=4, concurrency=2),
    ],
)
def test_concurrent_operators_are_picklable_pure_values_and_empty_in_gives_empty_out(op):
    s = range(12) | op
    again = cloudpickle.loads(cloudpickle.dumps(s))
    assert repr(again) == repr(s)
    assert sorted(again) == sorted(s) == sorted(s)
    assert list([] | op) == []


def test_async_coroutines_start_as_work_waits_and_reach_k():
    # All k coroutines were started at the first item: 100 000 of them for a pass of 3 items (~4 s).
    tasks_seen = []

    async def call(i):
        tasks_seen.append(len(asyncio.all_tasks()))
        return i

    assert list(range(3) | pf.map(call, concurrency=100_000)) == [0, 1, 2]
    assert max(tasks_seen) <= 3 + 1  # the calls' coroutines and the loop's main task

    # started as work waits, they still reach k calls at once: each call waits for the 8th
    started, all_in = [0], []

    async def meet(i):
        if not all_in:
            all_in.append(asyncio.Event())
        started[0] += 1
        if started[0] >= 8:
            all_in[0].set()
        await asyncio.wait_for(all_in[0].wait(), 20)
        return i

    assert list(range(30) | pf.map(meet, concurrency=8)) == list(range(30))


@pytest.mark.parametrize("is_async", [False, True])
def test_a_slow_inputs_first_result_comes_before_a_run_of_it_is_read(is_async):
    # The consumer read a full run (max(2k, 64) items) before any call of it started: under an
    # input that waits for each item, the first result came only after 64 of them.
    read = []

    def slow_input():
        for i in range(3 * WINDOW):
            time.sleep(0.002)
            read.append(i)
            yield i

    fn = _sleepy_async([0]) if is_async else _sleepy([0])
    it = iter(pf.stream(slow_input) | pf.map(fn, concurrency=4))
    assert next(it) == 0
    read_at_first = len(read)
    assert list(it) == [i * 10 for i in range(1, 3 * WINDOW)]
    assert read_at_first < WINDOW


def test_stop_iteration_from_iter_of_a_mapcat_result_names_mapcat_as_without_concurrency():
    # It came out as Python's bare "generator raised StopIteration", naming neither mapcat nor fn.
    class IterStops:
        def __iter__(self):
            raise StopIteration("from __iter__")

    def outputs(i):
        return [i] if i < 2 else IterStops()

    with pytest.raises(RuntimeError, match=r"mapcat\(outputs.*outputs raised StopIteration") as caught:
        list(range(5) | pf.mapcat(outputs, concurrency=2))
    assert caught.value.__cause__.args == ("from __iter__",)
