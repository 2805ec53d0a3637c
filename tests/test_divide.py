"""Dividing a stream among workers: every item exactly once, whatever the pipeline does, and in order.

The pipelines here are the ones that broke a division that ran the whole
pipeline in every worker and kept every k-th item: unseeded shuffles and
muxes, hash-ordered sets under spawn. They run in real worker processes.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import numpy as np
import pytest
from helpers import nothing_left_behind, same_items
from hypothesis import given, settings
from hypothesis import strategies as st

import pescador_fp as pf
from pescador_fp._divide import divide

START_METHODS = ["fork", "forkserver", "spawn"]


@pytest.fixture(autouse=True)
def no_leftovers():
    with nothing_left_behind():
        yield


def ints(stream):
    return [int(x) for x in stream]


# ------------------------------------------------------------------ exactly once, seeded or not


UNSEEDED = {
    "shuffle-take": (lambda: pf.from_iterable(range(100)) | pf.shuffle(100) | pf.take(100), 100),
    "mux-take": (
        lambda: (
            pf.mux([pf.from_iterable(range(i * 20, i * 20 + 20)) for i in range(5)], 2, mode="exhaustive")
            | pf.take(50)
        ),
        50,
    ),
    "chain-shuffle": (lambda: pf.chain([pf.from_iterable(range(50)) | pf.shuffle(50)]), 50),
    "generator-take-map": (
        lambda: (
            pf.stream(lambda: iter(np.random.default_rng().permutation(80).tolist()))
            | pf.take(60)
            | pf.map(lambda x: x + 1000)
        ),
        60,
    ),
}


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("name", sorted(UNSEEDED))
def test_unseeded_pipelines_give_each_item_exactly_once(name, workers):
    make, count = UNSEEDED[name]
    for _ in range(3):
        out = ints(make() | pf.background(workers=workers))
        assert len(out) == count
        assert len(set(out)) == count, [x for x, n in Counter(out).items() if n > 1]


SCRIPT = """
import sys
import pescador_fp as pf

def words():
    return iter({"w%d" % i for i in range(200)})

if __name__ == "__main__":
    s = pf.stream(words) | pf.map(str.upper) | pf.background(workers=2, start_method=sys.argv[1])
    out = list(s)
    print(len(out), len(set(out)), sorted(out) == sorted("W%d" % i for i in range(200)))
"""


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_hash_ordered_source_is_read_once_under_every_start_method(tmp_path, start_method):
    script = tmp_path / "words.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    result = subprocess.run(
        [sys.executable, str(script), start_method], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "200", "True"]


OPS = {
    "map": lambda: pf.map(lambda x: x * 3),
    "filter": lambda: pf.filter(lambda x: x % 3 != 1),
    "mapcat": lambda: pf.mapcat(lambda x: [x] * (x % 3)),
    "shuffle": lambda: pf.shuffle(7),
    "take": lambda: pf.take(25),
    "skip": lambda: pf.skip(4),
    "batch-unbatch": lambda: pf.batch(3, partial=True) | pf.unbatch(),
    "cycle": lambda: pf.cycle(2),
}
SOURCES = {
    "list": lambda n: pf.from_iterable(list(range(n))),
    "set": lambda n: pf.from_iterable(set(range(n))),
    "generator": lambda n: pf.stream(lambda: iter(range(n))),
    "arrays": lambda n: pf.from_arrays(np.arange(n)) | pf.map(int),
}


@settings(max_examples=25, deadline=None)
@given(
    source=st.sampled_from(sorted(SOURCES)),
    n=st.integers(0, 60),
    ops=st.lists(st.sampled_from(sorted(OPS)), max_size=4),
    workers=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_background_gives_the_items_of_the_foreground_pass(source, n, ops, workers, seed):
    s = pf.pipe(SOURCES[source](n), *(OPS[name]() for name in ops))
    foreground = ints(s.iterate(seed=seed))
    background = ints((s | pf.background(workers=workers)).iterate(seed=seed))
    assert sorted(background) == sorted(foreground)
    again = ints((s | pf.background(workers=workers)).iterate(seed=seed))
    assert again == background


# ------------------------------------------------------------------ the foreground order


PER_ITEM = {
    "map": pf.map(lambda x: x * 2),
    "filter": pf.filter(lambda x: x != 0 and x % 4 != 1),
    "mapcat": pf.mapcat(lambda x: range(x % 3)),
    "tuples": pf.map(lambda x: {"a": x, "b": -x}) | pf.tuples("b", "a") | pf.map(lambda t: t[0] * 7 + t[1]),
    "keras_tuples": pf.map(lambda x: {"a": x, "b": 2 * x}) | pf.keras_tuples("a", "b") | pf.map(sum),
    "unbatch": pf.map(lambda x: np.arange(x % 4)) | pf.unbatch() | pf.map(int),
}


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("source", ["list", "arrays", "generator", "set"])
@pytest.mark.parametrize("op", sorted(PER_ITEM))
def test_per_item_pipelines_keep_the_foreground_order(op, source, workers):
    s = SOURCES[source](40) | PER_ITEM[op]
    assert ints(s | pf.background(workers=workers)) == ints(s)


def test_the_filter_example_of_the_issue_keeps_its_order():
    s = pf.from_iterable(range(10)) | pf.filter(lambda i: i != 0)
    assert list(s | pf.background(workers=3)) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_an_error_in_the_feeder_arrives_after_every_earlier_item(start_method):
    def source():
        yield from range(7)
        raise KeyError("source broke")

    s = (
        pf.stream(source)
        | pf.filter(lambda x: x % 2 == 0)
        | pf.background(workers=3, start_method=start_method)
    )
    got = []
    with pytest.raises(KeyError, match="source broke"):
        for x in s:
            got.append(x)
    assert got == [0, 2, 4, 6]


def test_an_error_in_a_worker_arrives_in_the_foreground_order():
    def check(x):
        if x == 11:
            raise ValueError("bad 11")
        return [x] * (x % 2)

    s = pf.from_iterable(range(30)) | pf.mapcat(check) | pf.background(workers=3)
    got = []
    with pytest.raises(ValueError, match="bad 11"):
        for x in s:
            got.append(x)
    assert got == [1, 3, 5, 7, 9]


def test_a_killed_feeder_is_a_worker_error_naming_it():
    def source():
        yield from range(5)
        os.kill(os.getpid(), signal.SIGKILL)

    s = pf.stream(source) | pf.map(lambda x: x) | pf.background(workers=2)
    with pytest.raises(pf.WorkerError, match=r"feeder .*SIGKILL"):
        list(s)


@pytest.mark.timeout(60)
def test_a_feeder_that_leaves_with_status_0_mid_stream_is_a_worker_error():
    def source():
        yield from range(5)
        os._exit(0)  # not the end of the stream: the workers wait for more

    s = pf.stream(source) | pf.map(lambda x: x) | pf.background(workers=2)
    got = []
    with pytest.raises(pf.WorkerError, match=r"the feeder \(pid \d+\) exited with code 0 before finishing"):
        for x in s:
            got.append(x)
    assert got == list(range(len(got))) and len(got) <= 5


@pytest.mark.timeout(60)
def test_a_feeder_that_leaves_with_status_64_mid_stream_is_a_worker_error():
    # 64 was the status a finished feeder left with: a source's own os._exit(64) passed for the end.
    def source():
        yield from range(5)
        os._exit(64)

    s = pf.stream(source) | pf.map(lambda x: x) | pf.background(workers=2)
    got = []
    with pytest.raises(pf.WorkerError, match=r"the feeder \(pid \d+\) exited with code 64 before finishing"):
        for x in s:
            got.append(x)
    assert got == list(range(len(got))) and len(got) <= 5


def _slowly():
    i = 0
    while True:
        time.sleep(0.05)  # the workers wait for the next item most of the time
        yield i
        i += 1


def _noting_sigterm(tmp_path, x):
    # In each worker: leave a note if SIGTERM is what ends it.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def terminated(signum, frame):
            (tmp_path / f"terminated-{os.getpid()}").touch()
            os._exit(1)

        signal.signal(signal.SIGTERM, terminated)
    return x


@pytest.mark.parametrize("workers", [2, 3])
def test_closing_a_fed_pass_lets_its_workers_stop_by_themselves(tmp_path, workers):
    # A worker waiting for the feeder's next item used to miss the request to stop and was
    # terminated after a second.
    s = (
        pf.stream(_slowly)
        | pf.map(functools.partial(_noting_sigterm, tmp_path))
        | pf.background(workers=workers)
    )
    for _ in range(3):
        assert s.head(3 * workers) == list(range(3 * workers))
    assert sorted(tmp_path.iterdir()) == []


def _only_in(pid):
    if os.getpid() != pid:
        raise RuntimeError("this object can only be loaded in the process that made it")
    return Token()


class Token:
    def __reduce__(self):
        return (_only_in, (os.getpid(),))


def _with_token(token, n):
    yield from range(n)


def test_a_feeder_that_cannot_load_its_pipeline_is_a_worker_error():
    s = pf.stream(_with_token, Token(), 6) | pf.map(lambda x: x)
    with pytest.raises(
        pf.WorkerError, match=r"a background worker could not load its pipeline: RuntimeError"
    ):
        list(s | pf.background(workers=1))
    with pytest.raises(pf.WorkerError, match=r"the feeder could not load its pipeline: RuntimeError"):
        list(s | pf.background(workers=2))


# ------------------------------------------------------------------ the plan


def test_a_pipeline_with_nothing_to_share_runs_in_one_worker():
    plan = divide(pf.stream(lambda: iter(range(5))) | pf.take(3), 4)
    assert len(plan.parts) == 1 and not plan.fed


def test_cycle_runs_in_the_feeder_and_the_operators_above_it_in_the_workers():
    s = pf.stream(lambda: iter(range(4))) | pf.cycle(2) | pf.map(lambda x: x + 1)
    plan = divide(s, 2)
    assert plan.fed and [repr(op) for op in plan.parts[0].ops] == ["map(<lambda>)"]
    assert ints(s | pf.background(workers=2)) == [1, 2, 3, 4, 1, 2, 3, 4]


def test_a_divided_collection_batches_in_each_worker():
    s = pf.from_iterable(range(10)) | pf.batch(2)
    plan = divide(s, 2)
    assert not plan.fed and not plan.grouped
    assert [list(p.source) for p in plan.parts] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_fed_samples_batched_in_the_workers_come_back_in_a_fixed_order():
    s = pf.stream(lambda: iter(range(40))) | pf.map(lambda x: np.full(2, x)) | pf.batch(4)
    out = [b[:, 0].tolist() for b in s | pf.background(workers=2)]
    assert sorted(x for b in out for x in b) == list(range(40))
    assert out == [b[:, 0].tolist() for b in s | pf.background(workers=2)]
    # Worker 0 batches items 0, 2, 4, ...; worker 1 items 1, 3, 5, ...
    assert out[0] == [0, 2, 4, 6] and out[1] == [1, 3, 5, 7]


def test_background_equals_foreground_for_one_worker_whatever_the_pipeline():
    s = pf.stream(lambda: iter(range(30))) | pf.shuffle(8) | pf.batch(4) | pf.map(lambda b: b.tolist())
    assert same_items(list((s | pf.background()).iterate(seed=3)), list(s.iterate(seed=3)))


# ------------------------------------------------------------------ found by attacking the feeder


def _two_then_forever():
    yield 1
    yield 2
    time.sleep(1e9)


@pytest.mark.timeout(60)
def test_outputs_already_made_are_not_held_back_by_a_slow_source():
    s = pf.stream(_two_then_forever) | pf.mapcat(lambda x: [x, x]) | pf.background(workers=2)
    it = iter(s)
    # Worker 0 has item 1, worker 1 item 2; the merge must learn that item 1's outputs are
    # complete before the source yields a third item (it never does).
    assert [next(it) for _ in range(4)] == [1, 1, 2, 2]
    it.close()


def _three_then_hang():
    yield from range(3)
    time.sleep(1e9)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_hung_feeder_is_named_with_the_frame_it_is_in(start_method):
    s = pf.stream(_three_then_hang) | pf.map(str) | pf.background(2, timeout=1.5, start_method=start_method)
    got = []
    with pytest.raises(pf.WorkerError) as caught:
        for x in s:
            got.append(x)
    assert got == ["0", "1", "2"]
    message = str(caught.value)
    assert message.startswith("background: the feeder (pid ")
    assert "it is in File" in message and "test_divide.py" in message and "_three_then_hang" in message


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_set_keeps_the_order_it_has_in_the_consumer(start_method):
    words = {f"w{i}" * (i % 4 + 1) for i in range(40)}
    s = pf.from_iterable(words) | pf.map(str.upper)
    for workers in (1, 2, 3):
        assert list(s | pf.background(workers, start_method=start_method)) == list(s)


def test_the_feeder_has_a_name_of_its_own():
    it = iter(pf.stream(_two_then_forever) | pf.map(str) | pf.background(workers=2))
    next(it)
    names = sorted(p.name for p in multiprocessing.active_children())
    it.close()
    assert names == ["pescador_fp-feeder-0", "pescador_fp-worker-0", "pescador_fp-worker-1"]


def test_an_unpicklable_source_inside_a_mux_is_named():
    import threading

    lock = threading.Lock()
    bad = pf.stream(lambda: iter([lock]))
    s = pf.mux([pf.from_iterable(range(3)), bad], 2) | pf.map(str) | pf.background(workers=2)
    with pytest.raises(TypeError, match=r"stream\(<lambda>\) could not be pickled"):
        next(iter(s))


# ---------------------------------------------------------------- remainders of batch in the parts


def _rows_of(batches):
    return sorted(int(r) for b in batches for r in np.asarray(b["i"] if isinstance(b, dict) else b).ravel())


def _counted_rows(n):
    yield from range(n)


def _remainder_pipeline(kind, n, size, partial):
    if kind == "from_arrays":
        head = pf.from_arrays({"i": np.arange(n)})
    elif kind == "from_iterable":
        head = pf.from_iterable(list(range(n)))
    elif kind == "mux":  # divided at its sources, weighted
        cut = n // 3
        pieces = [range(0, cut), range(cut, 2 * cut), range(2 * cut, n)]
        sources = [pf.from_iterable(list(p)) for p in pieces]
        head = pf.mux(sources, 3, None, weights=[1, 2, 3], mode="exhaustive", seed=0)
        head = head | pf.map(lambda x: x)
    else:  # fed: a generator that nothing divides
        head = pf.stream(_counted_rows, n) | pf.map(lambda x: x)
    return head | pf.batch(size, partial=partial)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["from_arrays", "from_iterable", "mux", "fed"]),
    n=st.integers(0, 90),
    size=st.integers(1, 40),
    workers=st.integers(2, 4),
    partial=st.booleans(),
)
def test_batch_under_background_gives_the_foreground_number_of_batches_and_rows(
    kind, n, size, workers, partial
):
    # Each worker dropped (or yielded short) the last batch of its own part: 100 rows | batch(32) in
    # 4 workers gave 0 batches, not 3. Now the parts' remainders are pooled and batched once.
    stream = _remainder_pipeline(kind, n, size, partial)
    foreground = list(stream.iterate(seed=1))
    background = list((stream | pf.background(workers=workers)).iterate(seed=1))
    assert len(background) == len(foreground)
    got = _rows_of(background)
    assert len(got) == len(set(got))  # every row at most once
    if partial:
        assert got == _rows_of(foreground) == list(range(n))  # every row exactly once
        assert sum(len(np.asarray(b["i"] if isinstance(b, dict) else b)) < size for b in background) <= 1
    else:
        assert len(got) == len(_rows_of(foreground)) > n - size  # fewer than size rows dropped in all
    again = list((stream | pf.background(workers=workers)).iterate(seed=1))
    assert same_items(again, background)  # same seed and workers: same output


@pytest.mark.parametrize(
    "ops",
    [
        (pf.map(lambda b: b * 2),),  # per-item above: run over the pooled batches in the consumer
        (pf.filter(lambda b: len(b) == 20),),  # (a predicate on contents would see other batches)
        (pf.unbatch(),),
        (pf.shuffle(2, seed=0),),  # not per-item above: the batch runs undivided, in the feeder
        (pf.unbatch(), pf.batch(5)),  # two batches: the lower one runs undivided
    ],
)
def test_batch_with_operators_above_it_keeps_the_foreground_rows(ops):
    # 3 workers with 34, 33 and 33 rows: one batch of 20 each, and 40 rows left over in all.
    stream = pf.from_iterable(list(range(100))) | pf.batch(20)
    for op in ops:
        stream = stream | op
    foreground = list(stream.iterate(seed=2))
    background = list((stream | pf.background(workers=3)).iterate(seed=2))
    assert len(background) == len(foreground)
    assert sorted(_flat(background)) == sorted(_flat(foreground))


def _flat(items):
    return [int(x) for item in items for x in np.atleast_1d(item)]


def test_a_batch_that_cannot_pool_its_remainder_runs_undivided_and_shard_keeps_its_own():
    stream = pf.from_iterable(list(range(10))) | pf.batch(3) | pf.shuffle(2)
    assert divide(stream, 2).fed  # the batch joins the feeder's head
    assert not divide(pf.from_iterable(list(range(10))) | pf.batch(3), 2).fed
    # ranks have no consumer in common: each keeps or drops its own remainder, as documented
    ranks = [list(pf.from_iterable(list(range(10))) | pf.batch(3) | pf.shard(i, 2)) for i in range(2)]
    assert [len(r) for r in ranks] == [1, 1]


def test_a_pass_resumed_in_the_pooled_batches_yields_exactly_the_rest():
    stream = pf.from_arrays(np.arange(100)) | pf.batch(8, partial=True) | pf.background(workers=3)
    whole = [b.tolist() for b in stream.iterate(seed=3)]
    assert len(whole) == 13  # 100 rows in batches of 8, the last short
    for taken in (0, 5, len(whole) - 2, len(whole) - 1):
        items = stream.iterate(seed=3)
        head = [next(items).tolist() for _ in range(taken)]
        state = items.state()
        assert head + [b.tolist() for b in stream.iterate(seed=3, state=state)] == whole
