"""shard: each rank's part of a stream, divided as background divides it; disjoint, and together whole."""

from __future__ import annotations

import pickle
from collections import Counter

import cloudpickle
import numpy as np
import pytest
from helpers import nothing_left_behind
from hypothesis import given, settings
from hypothesis import strategies as st

import pescador_fp as pf
from pescador_fp._divide import divide, rebuild
from pescador_fp._seed import SeedContext
from pescador_fp._stream import _run

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def no_leftovers():
    with nothing_left_behind():
        yield


def ints(items):
    return [int(x) for x in items]


def gen(n):
    return pf.stream(lambda: iter(range(n)))


PIPELINES = {
    "collection": lambda: pf.from_iterable(range(37)) | pf.map(lambda x: x * 2) | pf.shuffle(8),
    "arrays": lambda: pf.from_arrays(np.arange(41)) | pf.filter(lambda x: x % 5 != 3),
    "exhaustive-mux": lambda: pf.mux(
        [pf.from_iterable(range(i * 10, i * 10 + 7)) for i in range(6)], 3, mode="exhaustive"
    ),
    "weighted-exhaustive-mux": lambda: pf.mux(
        [pf.from_iterable(range(i * 10, i * 10 + 4)) for i in range(5)],
        5,
        weights=[1, 2, 3, 4, 5],
        mode="exhaustive",
    ),
    "round-robin": lambda: pf.round_robin([pf.from_iterable(range(i, 50, 7)) for i in range(7)]),
    "chain": lambda: pf.chain([pf.from_iterable(range(i, 50, 7)) for i in range(7)]),
    "fed-generator": lambda: gen(33) | pf.map(lambda x: x + 1),
    "fed-no-tail": lambda: gen(29),
    "fed-shuffled-head": lambda: gen(40) | pf.shuffle(40) | pf.take(25) | pf.mapcat(lambda x: [x, -x]),
    "fed-cycle": lambda: gen(6) | pf.cycle(3) | pf.map(str),
}


def whole(stream, seed):
    return Counter(map(str, stream.iterate(seed=seed)))


@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_ranks_are_disjoint_and_make_the_whole_stream(name, count):
    stream = PIPELINES[name]()
    parts = [Counter(map(str, (stream | pf.shard(r, count)).iterate(seed=5))) for r in range(count)]
    assert sum(parts, Counter()) == whole(stream, 5)
    for a in range(count):
        for b in range(a + 1, count):
            assert not parts[a] & parts[b] or name.startswith("fed-cycle") or name == "fed-shuffled-head"


@pytest.mark.parametrize(
    "name", ["collection", "arrays", "exhaustive-mux", "weighted-exhaustive-mux", "round-robin"]
)
def test_a_rank_runs_the_part_that_background_gives_its_worker(name):
    stream = PIPELINES[name]()
    plan = divide(stream, 3)
    ctx = SeedContext.for_pass(11)
    for rank, part in enumerate(plan.parts):
        expected = list(map(str, _run(rebuild(part.source, part.ops), plan.context(rank, ctx))))
        assert list(map(str, (stream | pf.shard(rank, 3)).iterate(seed=11))) == expected


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 60), st.integers(1, 6), st.integers(0, 2**32))
def test_collections_divide_in_turn_for_any_length_and_count(n, count, seed):
    stream = pf.from_iterable(list(range(n))) | pf.shuffle(5)
    parts = [ints((stream | pf.shard(r, count)).iterate(seed=seed)) for r in range(count)]
    for rank, part in enumerate(parts):
        assert sorted(part) == list(range(rank, n, count))


def test_ranks_draw_their_randomness_from_their_own_branch():
    stream = pf.from_iterable(range(200)) | pf.shuffle(200)
    rank0 = ints((stream | pf.shard(0, 2)).iterate(seed=1))
    rank1 = ints((stream | pf.shard(1, 2)).iterate(seed=1))
    assert [x // 2 for x in rank0] != [x // 2 for x in rank1]  # not the same permutation of their halves
    assert ints((stream | pf.shard(0, 2)).iterate(seed=1)) == rank0
    assert ints((stream | pf.shard(0, 2)).iterate(seed=2)) != rank0


def test_a_weighted_mux_gives_each_rank_a_sub_mux_of_its_sources():
    sources = [pf.from_iterable([name] * 5) for name in "abcd"]
    m = pf.mux(sources, 4, weights=[1, 1, 1, 5], mode="exhaustive")
    assert set((m | pf.shard(0, 2)).iterate(seed=0)) == {"a", "c"}
    assert set((m | pf.shard(1, 2)).iterate(seed=0)) == {"b", "d"}


def test_an_undividable_stream_needs_a_pass_seed():
    s = gen(10) | pf.map(lambda x: x) | pf.shard(0, 2)
    with pytest.raises(ValueError, match=r"does not divide at a source.*iterate\(seed=epoch\)"):
        list(s)
    assert ints(s.iterate(seed=0)) == [0, 2, 4, 6, 8]


def test_a_divided_stream_needs_no_pass_seed():
    assert ints(pf.from_iterable(range(5)) | pf.shuffle(5) | pf.shard(1, 2)) in (
        [1, 3],
        [3, 1],
    )


# ------------------------------------------------------------------ equal=True


@pytest.mark.parametrize("n, count", [(10, 3), (12, 4), (7, 2), (5, 5), (0, 3)])
def test_equal_gives_every_rank_the_same_number_of_items(n, count):
    stream = pf.from_iterable(range(n)) | pf.map(lambda x: x * 3)
    parts = [ints((stream | pf.shard(r, count, equal=True)).iterate(seed=2)) for r in range(count)]
    assert {len(p) for p in parts} == {n // count}
    assert len({x for p in parts for x in p}) == count * (n // count)  # disjoint; the remainder dropped


def test_equal_knows_lengths_through_arrays_tuples_and_batch():
    data = {"x": np.zeros((103, 2)), "y": np.arange(103)}
    stream = pf.from_arrays(data) | pf.keras_tuples("x", "y") | pf.batch(8)
    parts = [list((stream | pf.shard(r, 3, equal=True)).iterate(seed=0)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # parts of 35, 34, 34 rows: 4 batches each
    assert (stream | pf.shard(2, 3, equal=True))._length() == 4


def test_equal_over_an_undividable_stream_of_known_length():
    stream = pf.from_iterable(range(10)) | pf.take(10) | pf.map(lambda x: x)
    with pytest.raises(ValueError, match=r"s\.iterate\(seed=epoch\)"):
        list(stream | pf.shard(0, 3, equal=True))  # every rank runs the head: only exact under a pass seed
    parts = [list((stream | pf.shard(r, 3, equal=True)).iterate(seed=0)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert len(set().union(*parts)) == 9


def test_equal_where_lengths_are_unknown_says_so_and_names_the_way_out():
    s = pf.from_iterable(range(10)) | pf.filter(bool) | pf.shard(0, 2, equal=True)  # built without error
    with pytest.raises(ValueError, match=r"cannot be known in advance.*pf\.cycle\(\) \| pf\.take\(steps\)"):
        next(iter(s))


def test_the_way_out_gives_every_rank_the_same_number_of_steps():
    stream = pf.from_iterable(range(11)) | pf.filter(lambda x: x % 4)
    parts = [ints((stream | pf.shard(r, 3) | pf.cycle() | pf.take(9)).iterate(seed=0)) for r in range(3)]
    assert [len(p) for p in parts] == [9, 9, 9]


def test_equal_refuses_a_rank_that_gets_no_part_instead_of_hanging():
    m = pf.mux([pf.from_iterable(range(3)), pf.from_iterable(range(3))], 2, mode="exhaustive")
    assert ints((m | pf.shard(2, 3)).iterate(seed=0)) == []  # without equal: an empty part
    with pytest.raises(ValueError, match=r"rank 2 of 3 gets no part.*min\(count, n_active"):
        list((m | pf.shard(0, 3, equal=True)).iterate(seed=0))


def test_equal_refuses_a_stream_too_short_for_every_rank():
    with pytest.raises(ValueError, match="rank 2 of 3 gets no items"):
        list(pf.from_iterable(range(2)) | pf.shard(0, 3, equal=True))


# ------------------------------------------------------------------ with background and nested


@pytest.mark.parametrize("name", ["collection", "weighted-exhaustive-mux", "fed-generator"])
def test_background_divides_a_ranks_part_again(name):
    stream = PIPELINES[name]()
    for rank in range(2):
        alone = Counter(map(str, (stream | pf.shard(rank, 2)).iterate(seed=3)))
        both = stream | pf.shard(rank, 2) | pf.map(str) | pf.background(workers=2)
        assert Counter(both.iterate(seed=3)) == alone


def test_shards_of_a_shard_divide_the_part():
    stream = pf.from_iterable(range(40)) | pf.shuffle(6)
    for rank in range(2):
        part = stream | pf.shard(rank, 2)
        subs = [ints((part | pf.shard(i, 3)).iterate(seed=1)) for i in range(3)]
        assert sorted(x for sub in subs for x in sub) == sorted(ints(part.iterate(seed=1)))


def test_equal_shard_under_background_yields_its_items():
    stream = pf.from_iterable(range(21)) | pf.shard(1, 2, equal=True) | pf.map(int) | pf.background(workers=2)
    assert sorted(ints(stream.iterate(seed=0))) == list(range(1, 21, 2))


# ------------------------------------------------------------------ building


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((2, 2), ValueError, r"index must be an integer in \[0, count\) = \[0, 2\), got 2"),
        ((-1, 2), ValueError, "got -1"),
        ((0, 0), ValueError, "count must be an integer >= 1, got 0"),
        ((0.0, 2), TypeError, r"index must be an integer.*got 0\.0"),
        ((0, "2"), TypeError, "count must be an integer"),
        ((True, 2), TypeError, "index"),
    ],
)
def test_bad_arguments_are_refused_when_built(args, error, message):
    with pytest.raises(error, match=message):
        pf.shard(*args)


def test_equal_must_be_a_bool():
    with pytest.raises(TypeError, match="equal must be True or False"):
        pf.shard(0, 2, equal=1)  # type: ignore[arg-type]


def test_numpy_integers_are_accepted():
    assert ints(pf.from_iterable(range(4)) | pf.shard(np.int64(1), np.int32(2))) == [1, 3]


def test_repr_and_pickling():
    s = pf.from_iterable(range(6)) | pf.shard(1, 3, equal=True) | pf.map(lambda x: x + 1)
    assert repr(s) == "from_iterable(range(0, 6)) | shard(1, 3, equal=True) | map(<lambda>)"
    assert ints(pickle.loads(cloudpickle.dumps(s))) == [2, 5]
    assert repr(pf.shard(0, 2) | pf.batch(2)) == "shard(0, 2) | batch(2)"


def test_equal_shards_see_through_shuffle_take_and_skip():
    data = np.arange(103)
    for tail in (pf.shuffle(16) | pf.batch(4), pf.take(90) | pf.batch(4), pf.skip(7) | pf.batch(4)):
        s = pf.from_arrays(data) | tail
        counts = [len(list((s | pf.shard(r, 3, equal=True)).iterate(seed=1))) for r in range(3)]
        assert len(set(counts)) == 1 and counts[0] > 0
