"""Pescador's object protocol on ``pescador_fp.compat``: activation (``with streamer``, ``stream_``,
``active``), copies, a mux's attributes, ``ChainMux`` over a generator function of streamers, and the
message for a generator handed to ``ZMQStreamer``.

Where Pescador behaves the same, the same program runs against both libraries.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pescador as P
import pytest
from helpers import own_shm_entries, same

import pescador_fp as pf
import pescador_fp.compat as C

BOTH = pytest.mark.parametrize("M", [P, C], ids=["pescador", "compat"])


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def forever(label: Any) -> Iterator[Any]:
    while True:
        yield label


def differential(program: Callable[[Any], Any]) -> Any:
    theirs, ours = program(P), program(C)
    assert same(theirs, ours), (theirs, ours)
    return ours


# ---------------------------------------------------------------- activation


def test_a_fresh_streamer_is_inactive_and_holds_no_pass():
    def program(M):
        s = M.Streamer(numbers, 3)
        return [s.stream_ is None, s.active_count_, s.active, s.is_activated_copy]

    assert differential(program) == [True, 0, 0, False]


def test_with_gives_an_activated_copy_and_counts_it():
    def program(M):
        s = M.Streamer(numbers, 4)
        seen = []
        with s as active:
            seen += [active is not s, isinstance(active, M.Streamer), s.active, active.active]
            seen += [s.stream_ is None, active.stream_ is not None, active.is_activated_copy]
            seen += [active.streamer is s.streamer, active.args == s.args, active.kwargs == s.kwargs]
            with active as again:  # an activated copy enters as itself
                seen += [again is active, s.active]
            seen.append(list(active))  # iterating the copy reads its open pass
            seen.append(list(active))  # ... which is now spent
        seen.append(s.active)
        return seen

    assert differential(program) == [
        True,
        True,
        1,
        0,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        1,
        [0, 1, 2, 3],
        [],
        0,
    ]


def test_active_counts_passes_that_have_started_and_not_ended():
    def program(M):
        s = M.Streamer(numbers, 10)
        first, second = s.iterate(5), s(max_iter=7)
        counts = [s.active]  # nothing has started yet
        next(first), next(second)
        counts.append(s.active)
        counts.append(len(list(first)))
        counts.append(s.active)
        counts.append(len(list(second)))
        counts.append(s.active)
        return counts

    assert differential(program) == [0, 2, 4, 1, 6, 0]


def test_a_pass_left_early_is_no_longer_active():
    def program(M):
        s = M.Streamer(numbers, 10)
        for x in s:
            if x == 2:
                break
        gc.collect()
        during = None
        for _ in s.cycle():
            during = s.active
            break
        gc.collect()
        return [during, s.active]

    assert differential(program) == [1, 0]


def test_an_unbalanced_exit_is_an_error():
    for M in (P, C):
        with pytest.raises(M.PescadorError):
            M.Streamer("ab").__exit__(None, None, None)


def test_a_mux_counts_its_passes():
    def program(M):
        mux = M.RoundRobinMux([M.Streamer("ab"), M.Streamer("cde"), M.Streamer("fghi")])
        first, second = mux.iterate(3), mux.iterate()
        counts = [mux.active]
        next(first), next(second)
        counts.append(mux.active)
        counts.append("".join(first))
        counts.append(mux.active)
        counts.append("".join(second))
        counts.append(mux.active)
        return counts

    assert differential(program) == [0, 2, "cf", 1, "cfbdgehi", 0]


@pytest.mark.parametrize(
    "make",
    [
        lambda M, s: M.StochasticMux(s, 2, 3, random_state=0),
        lambda M, s: M.ShuffledMux(s, random_state=0),
        lambda M, s: M.RoundRobinMux(s),
        lambda M, s: M.ChainMux(s),
    ],
    ids=["stochastic", "shuffled", "round_robin", "chain"],
)
def test_with_on_a_mux_gives_an_activated_copy_of_the_same_class(make):
    def program(M):
        mux = make(M, [M.Streamer("ab"), M.Streamer("cd")])
        with mux as active:
            return [
                type(active).__name__,
                active is not mux,
                mux.active,
                active.active,
                active.is_activated_copy,
            ]

    assert differential(program)[1:] == [True, 1, 0, True]


def test_sources_opened_by_a_mux_are_active_while_open():
    sources = [C.Streamer(forever, k) for k in "abc"]
    items = iter(C.StochasticMux(sources, 2, 4, mode="single_active", random_state=0))
    next(items)
    assert sum(s.active for s in sources) == 2  # the working set
    items.close()
    assert [s.active for s in sources] == [0, 0, 0]


def test_a_pass_opened_by_pescador_fp_counts_as_active():
    s = C.Streamer(numbers, 5)
    batches = iter(s | pf.batch(2))
    next(batches)
    assert s.active == 1
    assert [b.tolist() for b in batches] == [[2, 3]]
    assert s.active == 0
    seeded = pf.Stream.iterate(s, seed=3)
    next(seeded)
    assert s.active == 1
    seeded.close()
    assert s.active == 0


@pytest.mark.parametrize("max_iter", [-1, 0, 2, 2.5, 7.0, np.inf], ids=str)
def test_max_iter_counts_items_as_pescador_does(max_iter):
    def program(M):
        s = M.Streamer(numbers, 5)
        mux = M.RoundRobinMux([M.Streamer("ab"), M.Streamer("cde")])
        out = [list(s.iterate(max_iter)), list(s(max_iter=max_iter)), "".join(mux.iterate(max_iter))]
        if max_iter != np.inf:  # cycle(inf) never ends
            out += [list(s.cycle(max_iter)), list(s(max_iter=max_iter, cycle=True))]
        return out

    differential(program)


# ---------------------------------------------------------------- copies


def test_copy_shares_the_recipe():
    def program(M):
        s = M.Streamer(numbers, 4)
        c = copy.copy(s)
        return [
            c is not s,
            c.streamer is s.streamer,
            c.args is s.args,
            c.kwargs is s.kwargs,
            list(c),
            c.active,
        ]

    assert differential(program) == [True, True, True, True, [0, 1, 2, 3], 0]


def test_deepcopy_copies_the_data():
    def program(M):
        data = list(range(5))
        s = M.Streamer(data, 10, a=1)
        d = copy.deepcopy(s)
        data.append(99)  # the copy has its own list
        return [
            d.streamer is not s.streamer,
            d.streamer,
            d.args == s.args,
            d.kwargs == s.kwargs,
            list(d),
            list(s),
        ]

    assert differential(program) == [True, [0, 1, 2, 3, 4], True, True, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 99]]


def test_copies_of_an_active_streamer_count_their_own_passes():
    s = C.Streamer(numbers, 3)
    items = iter(s)
    next(items)
    c = copy.deepcopy(s)
    assert (s.active, c.active) == (1, 1)  # as in Pescador, the count is copied
    assert list(c) == [0, 1, 2]
    assert list(items) == [1, 2]
    assert (s.active, c.active) == (0, 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda M, s, r: M.StochasticMux(s, 3, 3, random_state=r),
        lambda M, s, r: M.ShuffledMux(s, random_state=r),
        lambda M, s, r: M.RoundRobinMux(s, mode="permuted_cycle", random_state=r),
        lambda M, s, r: M.ChainMux(s, random_state=r),
    ],
    ids=["stochastic", "shuffled", "round_robin", "chain"],
)
@pytest.mark.parametrize("random_state", [1, np.random.RandomState(10)], ids=["int", "RandomState"])
def test_a_deep_copy_of_a_seeded_mux_gives_the_same_items(make, random_state):
    def program(M):
        mux = make(M, [M.Streamer(forever, k) for k in "abcde"], random_state)
        twin = copy.deepcopy(mux)
        state, twin_state = mux.rng.get_state(), twin.rng.get_state()
        return [
            twin.streamers is not mux.streamers,
            len(twin.streamers),
            bool(np.array_equal(state[1], twin_state[1])),
            list(mux.iterate(30)) == list(twin.iterate(30)),
            list(copy.copy(mux).iterate(30)) == list(mux.iterate(30)),
        ]

    assert differential(program) == [True, 5, True, True, True]


def test_an_unseeded_mux_names_numpy_random_as_its_generator():
    def program(M):
        mux = M.ShuffledMux([M.Streamer("ab")])
        return [mux.rng is np.random, copy.deepcopy(mux).rng is np.random]

    assert differential(program) == [True, True]


def test_rng_is_a_copy_that_changes_nothing():
    rs = np.random.RandomState(7)
    mux = C.ShuffledMux([C.Streamer(forever, k) for k in "abc"], random_state=rs)
    before = list(mux.iterate(50))
    mux.rng.seed(123)
    rs.seed(123)
    assert list(mux.iterate(50)) == before
    assert mux.rng is not mux.rng


# ---------------------------------------------------------------- a mux's attributes


def test_streamers_are_streamers():
    def program(M):
        mux = M.StochasticMux(["ab", M.Streamer("cd")], 1, 2, random_state=0)
        return [type(mux.streamers).__name__, [type(s).__name__ for s in mux.streamers], mux.n_streams]

    assert differential(program) == ["list", ["Streamer", "Streamer"], 2]


def test_streamers_keeps_the_given_streamers():
    for M in (P, C):
        given = [M.Streamer("ab"), M.Streamer("cd")]
        for mux in (M.ShuffledMux(given), M.RoundRobinMux(given), M.ChainMux(given)):
            assert all(a is b for a, b in zip(mux.streamers, given))


def weights_of(M: Any, weights: Any) -> list[Any]:
    sources = [M.Streamer("ab"), M.Streamer("cd")]
    stochastic = M.StochasticMux(sources, 1, 2, weights=copy.copy(weights), random_state=0)
    shuffled = M.ShuffledMux(sources, weights=copy.copy(weights), random_state=0)
    return [stochastic.weights.tolist(), shuffled.weights.tolist(), shuffled.weights.dtype.kind]


@pytest.mark.parametrize("weights", [None, [0.2, 0.6], np.array([2.0, 2.0])], ids=["None", "list", "array"])
def test_weights_are_normalized_floats(weights):
    out = differential(lambda M: weights_of(M, weights))
    assert out[0] == pytest.approx(out[1]) and sum(out[0]) == pytest.approx(1.0)


def test_integer_weights_are_normalized_too():
    # Pescador's StochasticMux fails to normalize integer weights in place (docs/migrating.md).
    with pytest.raises(TypeError):
        weights_of(P, [1, 3])
    assert weights_of(C, [1, 3]) == [[0.25, 0.75], [0.25, 0.75], "f"]


def test_the_arguments_are_attributes():
    def program(M):
        sources = [M.Streamer("ab"), M.Streamer("cd")]
        s = M.StochasticMux(sources, 1, 2.5, mode="single_active", dist="poisson", prune_empty_streams=False)
        return [
            (s.n_active, s.rate, s.mode, s.dist, s.prune_empty_streams),
            M.RoundRobinMux(sources, mode="cycle").mode,
            M.ChainMux(sources, mode="cycle").mode,
        ]

    differential(program)


# ---------------------------------------------------------------- ChainMux over a generator function


def test_chain_over_a_generator_function_of_streamers():
    def program(M):
        def shards():
            for item in ["aa", [], "bb", [], "cccc"]:
                yield M.Streamer(item)

        mux = M.ChainMux(shards)
        return ["".join(mux), "".join(mux), "".join(mux(max_iter=3)), mux.streamers is shards]

    assert differential(program) == ["aabbcccc", "aabbcccc", "aab", True]


def test_chain_calls_the_generator_function_afresh_every_pass():
    def program(M):
        calls = []

        def shards():
            calls.append(len(calls))
            yield M.Streamer(str(len(calls)) * 2)

        mux = M.ChainMux(shards, mode="cycle")
        return ["".join(mux(max_iter=5)), "".join(M.ChainMux(shards)), len(calls)]

    assert differential(program) == ["11223", "44", 4]


def test_chain_over_an_empty_generator_function():
    def program(M):
        def nothing():
            return
            yield

        return [list(M.ChainMux(nothing)), list(M.ChainMux(nothing, mode="exhaustive").iterate(4))]

    assert differential(program) == [[], []]


def test_chain_over_a_generator_function_counts_its_passes():
    def program(M):
        def shards():
            for item in ["a", "bb", [], "ccc"]:
                yield M.Streamer(item)

        mux = M.ChainMux(shards)
        first, second = mux.iterate(3), mux.iterate()
        counts = [mux.active]
        next(first), next(second)
        counts += [mux.active, "".join(first), mux.active, "".join(second), mux.active]
        return counts

    assert differential(program) == [0, 2, "bb", 1, "bbccc", 0]


def test_chain_refuses_a_function_that_is_not_a_generator_function():
    with pytest.raises(C.PescadorError, match="iterable or callable"):
        C.ChainMux(lambda: [C.Streamer("ab")])


def test_chain_over_a_generator_function_is_a_pescador_fp_stream():
    def shards():
        yield C.Streamer([1, 2, 3])
        yield C.Streamer([4])

    assert [b.tolist() for b in C.ChainMux(shards) | pf.batch(2)] == [[1, 2], [3, 4]]


# ---------------------------------------------------------------- ZMQStreamer over a generator object


def test_zmq_streamer_over_a_generator_object_says_to_wrap_it_in_a_streamer():
    mux = C.ShuffledMux([C.Streamer(forever, {"x": np.zeros(2)})], random_state=0)
    with pytest.raises(C.PescadorError) as caught:
        C.ZMQStreamer(C.buffer_stream(mux, 32))
    message = str(caught.value)
    assert "buffer_stream(...)" in message
    assert "ZMQStreamer(Streamer(buffer_stream, mux, 32))" in message
    assert "<lambda>" not in message
    assert own_shm_entries() == []


def test_zmq_streamer_over_the_wrapped_generator_function():
    before = own_shm_entries()
    sources = [C.Streamer(forever, {"x": np.full(2, k)}) for k in range(2)]
    mux = C.ShuffledMux(sources, random_state=0)
    z = C.ZMQStreamer(C.Streamer(C.buffer_stream, mux, 4))
    batches = list(z(max_iter=3))
    assert [b["x"].shape for b in batches] == [(4, 2)] * 3
    assert z.active == 0 and z.stream_ is None
    assert own_shm_entries() == before == []
