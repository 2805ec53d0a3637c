"""Differential tests: the same programs run against Pescador 3.0 and ``pescador_fp.compat``.

Deterministic pieces must agree exactly; stochastic pieces must agree in
distribution where Pescador is correct; where ``pescador_fp.compat``
intentionally differs (docs/migrating.md), both behaviours are asserted: ours
as documented and Pescador's as measured, so that the documentation stays
true to both libraries.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pescador as P
import pytest
from helpers import own_shm_entries, same, same_items

import pescador_fp as pf
import pescador_fp.compat as C

BOTH = pytest.mark.parametrize("M", [P, C], ids=["pescador", "compat"])


def forever(label: Any) -> Iterator[Any]:
    while True:
        yield label


def numbers(n: int, start: int = 0, step: int = 1) -> Iterator[int]:
    for i in range(n):
        yield start + i * step


def letters(M: Any) -> list[Any]:
    return [M.Streamer("ab"), M.Streamer("cde"), M.Streamer("fghi")]


def shares(items: list[Any], labels: str = "abc") -> list[float]:
    counts = Counter(items)
    return [counts[label] / len(items) for label in labels]


def differential(program: Callable[[Any], Any]) -> Any:
    """Run ``program`` with each module; assert the results are equal and return ours."""
    theirs, ours = program(P), program(C)
    assert same(theirs, ours), (theirs, ours)
    return ours


# ---------------------------------------------------------------- Streamer


def test_streamer_over_a_generator_function_with_args_and_kwargs():
    def program(M):
        s = M.Streamer(numbers, 5, start=10, step=2)
        return [
            list(s),
            list(s),
            list(s.iterate()),
            list(s.iterate(3)),
            list(s.iterate(max_iter=0)),
            list(s.iterate(max_iter=50)),
            list(s.cycle(12)),
            list(s(max_iter=3)),
            list(s()),
            list(s(max_iter=8, cycle=True)),
            list(itertools.islice(s.cycle(), 7)),
            list(itertools.islice(s(cycle=True), 6)),
        ]

    out = differential(program)
    assert out[0] == [10, 12, 14, 16, 18]
    assert out[6] == [10, 12, 14, 16, 18, 10, 12, 14, 16, 18, 10, 12]


@pytest.mark.parametrize("items", [[1, 2, 3], "abc", range(4), (5, 6), {"k": 1, "j": 2}, np.arange(3)])
def test_streamer_over_an_iterable(items):
    def program(M):
        s = M.Streamer(items)
        return [list(s), list(s), list(s.iterate(2)), list(s.cycle(7)), list(s(max_iter=5, cycle=True))]

    differential(program)


def test_streamer_over_a_streamer():
    differential(lambda M: [list(M.Streamer(M.Streamer(numbers, 3))), list(M.Streamer(M.Streamer("xy")))])


def test_streamable_decorator():
    def program(M):
        @M.streamable
        def squares(n, offset=0):
            """Squares."""
            for i in range(n):
                yield i * i + offset

        s = squares(4, offset=1)
        assert isinstance(s, M.Streamer)
        return [squares.__name__, squares.__doc__, list(s), list(s), list(s.cycle(6))]

    assert differential(program)[2] == [1, 2, 5, 10]


@BOTH
def test_streamer_refuses_what_is_neither_iterable_nor_a_generator_function(M):
    for bad in (5, None, lambda: [1, 2]):
        with pytest.raises(M.PescadorError):
            M.Streamer(bad)


def test_iterate_max_iter_pulls_one_item_more_in_pescador_only():
    def pulled(M):
        seen: list[int] = []

        def counting():
            for i in range(10):
                seen.append(i)
                yield i

        assert list(M.Streamer(counting).iterate(3)) == [0, 1, 2]
        return len(seen)

    assert (pulled(P), pulled(C)) == (4, 3)


def test_pescador_repeats_a_copyable_iterator_every_pass():
    s = P.Streamer(zip("abc", range(3)))
    assert list(s) == list(s) == [("a", 0), ("b", 1), ("c", 2)]


def test_streamer_over_an_iterator_repeats_every_pass_as_in_pescador():
    s = C.Streamer(zip("abc", range(3)))
    assert list(s) == list(s) == [("a", 0), ("b", 1), ("c", 2)]


@BOTH
def test_streamer_over_a_generator_object_fails_at_its_first_pass(M):
    s = M.Streamer(i for i in range(3))
    with pytest.raises(TypeError):  # neither can copy a generator for the pass
        list(s)


def test_cycle_over_an_empty_streamer_ends():  # Pescador loops forever here: not run against it
    for empty in (C.Streamer([]), C.Streamer(numbers, 0)):
        assert list(empty.cycle()) == []
        assert list(empty(cycle=True)) == []
        assert list(empty.cycle(max_iter=5)) == []


def test_no_hang_on_empty_sources_in_cycling_muxes():  # each of these hangs in Pescador
    empties = [C.Streamer([]), C.Streamer([])]
    assert list(C.RoundRobinMux(empties, mode="cycle")) == []
    assert list(C.ChainMux(empties, mode="cycle")) == []
    assert list(C.StochasticMux(empties, 2, 4, prune_empty_streams=False, random_state=0)) == []


def test_compat_streamer_is_a_pescador_fp_stream():
    s = C.Streamer(numbers, 4)
    assert [b.tolist() for b in s | pf.batch(2)] == [[0, 1], [2, 3]]
    with pytest.raises(TypeError):
        s.iterate(seed=1)  # iterate takes Pescador's max_iter; the pass seed is pf.Stream.iterate's
    assert list(pf.Stream.iterate(s, seed=1)) == [0, 1, 2, 3]


# ---------------------------------------------------------------- RoundRobinMux and ChainMux


def test_round_robin_exhaustive():
    def program(M):
        mux = M.RoundRobinMux(letters(M))
        return ["".join(mux), "".join(mux), "".join(mux(max_iter=4)), "".join(mux.iterate(max_iter=20))]

    assert differential(program)[0] == "acfbdgehi"


def test_round_robin_cycle():
    def program(M):
        mux = M.RoundRobinMux(letters(M), mode="cycle")
        return ["".join(mux(max_iter=20)), "".join(mux.iterate(max_iter=11)), "".join(mux.cycle(max_iter=10))]

    assert differential(program)[0] == "acfbdgehiacfbdgehiac"


@BOTH
def test_round_robin_permuted_cycle_rounds_are_permutations(M):
    mux = M.RoundRobinMux(letters(M), mode="permuted_cycle", random_state=4)
    out = "".join(mux(max_iter=90))
    rounds = [out[i : i + 9] for i in range(0, 90, 9)]
    assert all(sorted(r) == list("abcdefghi") for r in rounds)
    assert len(set(rounds)) > 1
    assert out == "".join(mux(max_iter=90))  # seeded: the same every pass


def test_round_robin_permuted_cycle_first_round():
    # Pescador's first round is always in the given order; ours is permuted like the others.
    def first_rounds(M):
        return {
            "".join(M.RoundRobinMux(letters(M), mode="permuted_cycle", random_state=k)(max_iter=9))
            for k in range(20)
        }

    assert first_rounds(P) == {"acfbdgehi"}
    assert len(first_rounds(C)) > 1


def test_round_robin_unknown_mode():
    assert "".join(P.RoundRobinMux(letters(P), mode="bogus")) == "acfbdgehi"  # Pescador: silently exhaustive
    with pytest.raises(C.PescadorError):
        C.RoundRobinMux(letters(C), mode="bogus")


def test_chain_over_a_list():
    def program(M):
        mux = M.ChainMux(letters(M))
        return [
            "".join(mux),
            "".join(mux),
            "".join(mux(max_iter=4)),
            "".join(M.ChainMux(letters(M), mode="cycle")(max_iter=20)),
        ]

    out = differential(program)
    assert out[0] == "abcdefghi"
    assert out[3] == "abcdefghiabcdefghiab"


def test_chain_over_a_streamer_of_streamers():
    def program(M):
        def shards(n):
            for i in range(n):
                yield M.Streamer("xyz"[i] * (i + 1))

        mux = M.ChainMux(M.Streamer(shards, 3))
        cyc = M.ChainMux(M.Streamer(shards, 2), mode="cycle")
        return ["".join(mux), "".join(mux), "".join(cyc(max_iter=10))]

    assert differential(program) == ["xyyzzz", "xyyzzz", "xyyxyyxyyx"]


def test_chain_over_a_generator_of_streamers_first_pass():
    def program(M):
        return "".join(M.ChainMux(M.Streamer(c * 2) for c in "pqr"))

    assert differential(program) == "ppqqrr"


def test_pescador_chain_materializes_a_generator_of_streamers():
    mux = P.ChainMux(P.Streamer(c * 2) for c in "pq")
    assert "".join(mux) == "".join(mux) == "ppqq"
    assert "".join(P.ChainMux((P.Streamer(c) for c in "pq"), mode="cycle")(max_iter=5)) == "pqpqp"


def test_chain_over_a_generator_of_streamers_repeats_and_cycles():
    mux = C.ChainMux(C.Streamer(c * 2) for c in "pq")
    assert "".join(mux) == "".join(mux) == "ppqq"
    assert "".join(C.ChainMux((C.Streamer(c) for c in "pq"), mode="cycle")(max_iter=5)) == "pqpqp"


@BOTH
def test_chain_over_an_empty_list(M):
    assert list(M.ChainMux([])) == []


@BOTH
def test_exhaustive_stochastic_mux_yields_every_item_once(M):
    mux = M.StochasticMux(letters(M), 2, None, mode="exhaustive", random_state=0)
    assert sorted("".join(mux)) == list("abcdefghi")
    assert sorted("".join(mux)) == list("abcdefghi")


# ---------------------------------------------------------------- maps: buffer_stream, tuples, keras_tuples


def samples(n: int) -> list[dict[str, np.ndarray]]:
    return [
        {"x": np.array([i, i + 1], dtype=np.float32), "y": np.array([i % 2]), "z": np.array(i * 10)}
        for i in range(n)
    ]


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("n", [0, 2, 6, 7])
def test_buffer_stream(partial, axis, n):
    def program(M):
        items = [{k: v for k, v in d.items() if axis is None or k != "z"} for d in samples(n)]
        return [
            list(M.buffer_stream(M.Streamer(items), 3, partial=partial, axis=axis)),
            list(M.buffer_stream(iter(items), 3, partial=partial, axis=axis)),
            list(M.buffer_stream(M.Streamer(items), 1, partial=partial, axis=axis)),
        ]

    out = differential(program)
    assert len(out[0]) == (n // 3 + (partial and n % 3 > 0))


def test_buffer_stream_of_buffers():
    def program(M):
        inner = M.Streamer(M.buffer_stream, M.Streamer(samples(8)), 2)
        return list(M.buffer_stream(inner, 2, axis=0))

    out = differential(program)
    assert [b["x"].shape for b in out] == [(4, 2), (4, 2)]


def test_buffer_stream_stacks_list_and_tuple_fields_into_one_array():
    def program(M):
        return [
            list(M.buffer_stream(M.Streamer([{"x": [1, 2]}, {"x": [3, 4]}]), 2)),
            list(M.buffer_stream(M.Streamer([{"x": (1, 2)}, {"x": (3, 4)}]), 2)),
            list(M.buffer_stream(iter([{"x": [[1], [2]], "y": ("a", "b")}] * 3), 2, partial=True)),
            list(M.buffer_stream(iter([{"x": [np.zeros(2), np.ones(2)]}] * 2), 2, axis=0)),
            next(M.buffer_stream(iter([{"x": {"a": 1}}, {"x": {"a": 2}}]), 2))["x"].tolist(),
        ]

    out = differential(program)
    assert [b["x"].shape for b in out[0] + out[1]] == [(2, 2), (2, 2)]
    assert out[4] == [{"a": 1}, {"a": 2}]  # an object array of the dicts, in both


def test_buffer_stream_keeps_the_first_samples_keys():
    def program(M):
        items = [{"x": 1}, {"x": 3, "y": 2}, {"x": 5}, {"z": 0, "x": 7}]
        return list(M.buffer_stream(M.Streamer(items), 2))

    assert [b["x"].tolist() for b in differential(program)] == [[1, 3], [5, 7]]


@BOTH
def test_buffer_stream_sample_missing_a_key_is_a_key_error(M):
    with pytest.raises(KeyError, match="'y'") as info:
        list(M.buffer_stream(M.Streamer([{"x": 1, "y": 2}, {"x": 3}]), 2))
    assert not isinstance(info.value, M.PescadorError)


def test_buffer_stream_over_sequences_indexed_by_the_first_samples_keys():
    # Pescador indexes every sample with the first one's keys: a list takes int keys.
    differential(lambda M: list(M.buffer_stream(iter([{0: 1, 1: 2}, [3, 4]]), 2)))


def test_buffer_stream_over_mismatched_shapes():
    def program(M):
        return list(M.buffer_stream(iter([{"x": np.zeros(2)}, {"x": np.zeros(3)}]), 2))

    with pytest.raises(ValueError):  # Pescador: numpy's error, not a DataError
        program(P)
    with pytest.raises(C.DataError, match=r"key 'x' \(shape \(2,\) in sample 0 but shape \(3,\) in sample 1"):
        program(C)


@pytest.mark.parametrize(
    ("items", "axis"),
    [
        ([{"x": [1, 2]}, {"x": [3]}], None),  # a ragged list field
        ([{"x": np.zeros((1, 2))}, {"x": np.zeros((2, 2))}, {"x": np.zeros((1, 3))}], 0),
        ([{"x": np.zeros(())}] * 2, 0),  # nothing to concatenate along
        ([{"x": np.zeros(2)}] * 2, 3),  # no such axis
    ],
    ids=["ragged", "concatenate", "zero-dim", "axis"],
)
def test_buffer_stream_values_that_numpy_cannot_stack(items, axis):
    with pytest.raises(ValueError):  # Pescador: numpy's error (AxisError is a ValueError)
        list(P.buffer_stream(iter(items), len(items), axis=axis))
    with pytest.raises(C.DataError, match="buffer_stream: cannot stack the values at key 'x'") as info:
        list(C.buffer_stream(iter(items), len(items), axis=axis))
    if axis == 0 and len(items) == 3:  # the sample that differs off the axis, not the longer one
        assert "shape (1, 2) in sample 0 but shape (1, 3) in sample 2" in str(info.value)


@pytest.mark.parametrize(
    ("items", "size"),
    [([{"x": 1}, {"x": 2}, 5], 2), ([{"x": 1}, {"x": 2}, {"x": 3}, {"x": 4}, [5]], 3)],
    ids=["first", "later"],
)
def test_buffer_stream_refuses_what_is_not_data_in_a_partial_batch_too(items, size):
    def program(M, partial):
        return list(M.buffer_stream(iter(items), size, partial=partial))

    assert same_items(program(P, False), program(C, False))  # the full batches are fine
    with pytest.raises(C.DataError, match="not data-like"):
        program(C, True)
    with pytest.raises((AttributeError, TypeError)) as info:  # Pescador wraps only full batches' errors
        program(P, True)
    assert not isinstance(info.value, P.PescadorError)


@pytest.mark.parametrize("size", [2.5, True, -1])
def test_buffer_size_that_only_we_refuse(size):
    assert list(P.buffer_stream(iter([{"x": 1}] * 3), size))  # Pescador counts up to it
    with pytest.raises(C.PescadorError, match="buffer_size must be an integer >= 1"):
        list(C.buffer_stream(iter([{"x": 1}] * 3), size))


def test_buffer_stream_partial_takes_any_truth_value():
    differential(
        lambda M: [list(M.buffer_stream(iter([{"x": 1}] * 3), 2, partial=p)) for p in (1, 0, "", [0])]
    )


def test_buffer_stream_closes_its_pass_when_closed():
    s = C.Streamer(samples(10))
    batches = C.buffer_stream(s, 2)
    next(batches)
    assert s.active == 1
    batches.close()
    assert s.active == 0


def test_tuples():
    def program(M):
        return [
            list(M.tuples(M.Streamer(samples(3)), "y", "x")),
            list(M.tuples(iter(samples(2)), "z")),
            list(M.tuples(M.Streamer(samples(2)), "x", "x")),
        ]

    assert len(differential(program)[0]) == 3


def test_tuples_over_any_sample_that_the_keys_index():
    def program(M):
        return [
            list(M.tuples(M.Streamer([[1, 2], [3, 4]]), 0, 1)),
            list(M.tuples(iter([(5, 6, 7), "abc"]), 2, -1)),
            list(M.tuples(iter([{0: "a", "k": "b"}]), "k", 0)),
            list(M.keras_tuples(iter([[1, 2], [3, 4]]), [0], [1])),
            list(M.keras_tuples(iter([{0: "a", 1: "b"}]), inputs=[1, 0])),
        ]

    assert differential(program)[0] == [(1, 2), (3, 4)]


@BOTH
def test_tuples_out_of_range_is_an_index_error(M):
    with pytest.raises(IndexError):
        list(M.tuples(iter([[1, 2]]), 5))
    with pytest.raises(IndexError):
        list(M.keras_tuples(iter([[1, 2]]), [5]))


@BOTH
@pytest.mark.parametrize(
    ("inputs", "outputs"), [([0], 1), (("x",), ["y"])], ids=["list-and-int", "tuple-and-list"]
)
def test_keras_keys_that_do_not_add_up_are_a_type_error(M, inputs, outputs):
    with pytest.raises(TypeError) as info:  # Pescador adds inputs and outputs to check that one names a key
        list(M.keras_tuples(iter(samples(1)), inputs, outputs))
    assert not isinstance(info.value, M.PescadorError)


def test_keras_tuples_key_arguments_as_pescador_reads_them():
    def program(M):
        return [
            list(M.keras_tuples(iter(samples(2)), ("x", "z"), ("y",))),
            list(M.keras_tuples(iter([{0: "a", "y": "b"}]), 0, "y")),  # a falsy key names none
        ]

    assert differential(program)[1] == [(None, "b")]


KERAS_KEYS = [
    ("x", "y"),
    (["x"], ["y"]),
    (["x", "z"], "y"),
    ("x", ["y", "z"]),
    (None, "y"),
    ("x", None),
    (["z", "x"], None),
    (None, ["y", "x"]),
    ("x", []),
]


@pytest.mark.parametrize(("inputs", "outputs"), KERAS_KEYS)
def test_keras_tuples(inputs, outputs):
    def program(M):
        return [
            list(M.keras_tuples(M.Streamer(samples(3)), inputs, outputs)),
            list(M.keras_tuples(iter(samples(2)), inputs=inputs, outputs=outputs)),
        ]

    assert len(differential(program)[0]) == 3


@BOTH
def test_missing_key_is_a_key_error(M):
    with pytest.raises(KeyError):
        list(M.tuples(iter(samples(1)), "nope"))
    with pytest.raises(KeyError):
        list(M.keras_tuples(iter(samples(1)), "x", "nope"))


# ---------------------------------------------------------------- errors


def bad_input_cases() -> dict[str, tuple[str, Callable[[Any], Any]]]:
    def three(M):
        return [M.Streamer(forever, c) for c in "abc"]

    return {
        "stochastic-empty": ("PescadorError", lambda M: M.StochasticMux([], 1, 2)),
        "shuffled-empty": ("PescadorError", lambda M: M.ShuffledMux([])),
        "roundrobin-empty": ("PescadorError", lambda M: M.RoundRobinMux([])),
        "mode": ("PescadorError", lambda M: M.StochasticMux(three(M), 1, 2, mode="bogus")),
        "dist": ("PescadorError", lambda M: M.StochasticMux(three(M), 1, 2, dist="bogus")),
        "n_active-single": ("PescadorError", lambda M: M.StochasticMux(three(M), 4, 2, mode="single_active")),
        "n_active-exhaustive": (
            "PescadorError",
            lambda M: M.StochasticMux(three(M), 4, 2, mode="exhaustive"),
        ),
        "weights-length": ("PescadorError", lambda M: M.StochasticMux(three(M), 1, 2, weights=[0.5, 0.5])),
        "weights-zero": ("PescadorError", lambda M: M.StochasticMux(three(M), 1, 2, weights=[0.0, 0.0, 0.0])),
        "shuffled-weights-length": ("PescadorError", lambda M: M.ShuffledMux(three(M), weights=[1.0])),
        "shuffled-weights-zero": (
            "PescadorError",
            lambda M: M.ShuffledMux(three(M), weights=[0.0, 0.0, 0.0]),
        ),
        "chain-mode": ("PescadorError", lambda M: M.ChainMux(three(M), mode="bogus")),
        "random_state": ("PescadorError", lambda M: M.ShuffledMux(three(M), random_state="seed")),
        "tuples-no-keys": ("PescadorError", lambda M: list(M.tuples(iter(samples(2))))),
        "keras-no-keys": ("PescadorError", lambda M: list(M.keras_tuples(iter(samples(2))))),
        "keras-empty-keys": ("PescadorError", lambda M: list(M.keras_tuples(iter(samples(2)), [], []))),
        "cache-n0": ("PescadorError", lambda M: list(M.cache(iter(range(5)), 0))),
        "cache-prob0": ("PescadorError", lambda M: list(M.cache(iter(range(5)), 2, prob=0))),
        "cache-prob2": ("PescadorError", lambda M: list(M.cache(iter(range(5)), 2, prob=2))),
        "buffer-non-dict": ("DataError", lambda M: list(M.buffer_stream(M.Streamer([1, 2, 3, 4]), 2))),
        "tuples-non-dict": ("DataError", lambda M: list(M.tuples(iter([5]), "x"))),
        "keras-non-dict": ("DataError", lambda M: list(M.keras_tuples(iter([5]), "x"))),
        "buffer-later-non-dict": ("DataError", lambda M: list(M.buffer_stream(iter([{"x": 1}, [2]]), 2))),
        "buffer-axis-str": (
            "DataError",
            lambda M: list(M.buffer_stream(iter([{"x": np.zeros(1)}] * 2), 2, axis="0")),
        ),
        "tuples-list-str-key": ("DataError", lambda M: list(M.tuples(iter([[1]]), "x"))),
        "keras-list-str-key": ("DataError", lambda M: list(M.keras_tuples(iter([[1, 2]]), ["a"]))),
        "streamer-int": ("PescadorError", lambda M: M.Streamer(5)),
    }


@pytest.mark.parametrize("case", sorted(bad_input_cases()))
def test_bad_input_raises_the_same_type(case):
    name, build_and_consume = bad_input_cases()[case]
    for M in (P, C):
        with pytest.raises(M.PescadorError) as info:
            build_and_consume(M)
        assert type(info.value) is getattr(M, name), (M.__name__, info.value)


@pytest.mark.parametrize(
    "case",
    [
        lambda M: M.StochasticMux([M.Streamer("ab")], 0, 2),  # n_active=0: Pescador yields nothing
        lambda M: M.StochasticMux([M.Streamer("ab")], 1, 0),  # rate=0: Pescador's numpy error at next()
        lambda M: M.StochasticMux([M.Streamer("ab"), M.Streamer("c")], 1, 2, weights=[2.0, -1.0]),
        lambda M: M.buffer_stream(iter(samples(4)), 0),  # Pescador yields unstacked singletons
        lambda M: M.ShuffledMux([M.Streamer("ab")], random_state=True),  # Pescador: seed 1
    ],
    ids=["n_active-0", "rate-0", "weights-negative", "buffer-size-0", "random_state-bool"],
)
def test_bad_input_that_only_we_refuse(case):
    with pytest.raises(C.PescadorError):
        list(itertools.islice(case(C), 5))
    try:
        list(itertools.islice(case(P), 5))
    except P.PescadorError:  # pragma: no cover - would mean the difference is gone
        pytest.fail("Pescador refuses it too: update docs/migrating.md")
    except Exception:  # Pescador may fail later (numpy's errors), but not with a PescadorError
        pass


def test_mux_arguments_are_checked_when_built():
    C.StochasticMux([C.Streamer("ab")], 1, 2)  # fine
    with pytest.raises(C.PescadorError):
        C.StochasticMux([C.Streamer("ab")], 1, 0)  # ours: at construction
    mux = P.StochasticMux([P.Streamer("ab")], 1, 0)  # Pescador: only when iterated
    with pytest.raises(ValueError):
        next(iter(mux))


def test_integer_weights():
    with pytest.raises(TypeError):  # numpy refuses Pescador's in-place division
        P.StochasticMux([P.Streamer("ab"), P.Streamer("cd")], 1, 2, weights=[1, 3])
    mux = C.StochasticMux([C.Streamer("ab"), C.Streamer("cd")], 1, None, weights=[1, 3], mode="exhaustive")
    assert sorted(mux) == list("abcd")


# ---------------------------------------------------------------- stochastic: shares


def stochastic_uniform(M):
    return M.StochasticMux([M.Streamer(forever, c) for c in "abc"], 2, 4, random_state=1)


def shuffled_uniform(M):
    return M.ShuffledMux([M.Streamer(forever, c) for c in "abc"], random_state=1)


@BOTH
@pytest.mark.parametrize("make", [stochastic_uniform, shuffled_uniform], ids=["stochastic", "shuffled"])
def test_uniform_weights_give_equal_shares(M, make):
    # 30 000 items in about 7 500 activations: the standard deviation of a share is below 0.01.
    out = list(make(M)(max_iter=30_000))
    assert len(out) == 30_000
    assert np.allclose(shares(out), 1 / 3, atol=0.03), shares(out)


def test_weights_are_output_shares_in_ours_not_in_pescador():
    def program(M):
        sources = [M.Streamer(forever, c) for c in "abc"]
        return shares(
            list(M.StochasticMux(sources, 1, 5, weights=[0.8, 0.1, 0.1], random_state=0)(max_iter=30_000))
        )

    assert np.allclose(program(C), [0.8, 0.1, 0.1], atol=0.03), program(C)
    assert np.allclose(program(P), 1 / 3, atol=0.03), program(P)


def test_shuffled_mux_weights_are_shares_in_both():
    def program(M):
        sources = [M.Streamer(forever, c) for c in "abc"]
        return shares(list(M.ShuffledMux(sources, weights=[0.6, 0.3, 0.1], random_state=0)(max_iter=20_000)))

    for M in (P, C):
        assert np.allclose(program(M), [0.6, 0.3, 0.1], atol=0.02), (M.__name__, program(M))


def test_shuffled_mux_over_a_finite_source_loses_no_draw_in_ours():
    def share_of_a(M):
        out = list(M.ShuffledMux([M.Streamer("a"), M.Streamer("xyz")], random_state=1)(max_iter=20_000))
        return out.count("a") / len(out)

    assert abs(share_of_a(C) - 0.5) < 0.02
    assert abs(share_of_a(P) - 0.4) < 0.02  # a draw that finds "a" ended is lost in Pescador


def activation_lengths(M: Any, n_active: int, dist: str) -> np.ndarray:
    """Items per activation, from sources that tag every item with their activation number."""
    activations = itertools.count()

    def tagged(label):
        number = next(activations)
        while True:
            yield number

    sources = [M.Streamer(tagged, c) for c in "abcd"]
    out = list(M.StochasticMux(sources, n_active, 8, dist=dist, random_state=0)(max_iter=40_000))
    still_open = set(out[-300:])  # drop the activations the sample cut short
    return np.array(list(Counter(x for x in out if x not in still_open).values()))


@pytest.mark.parametrize(("n_active", "pescador_mean"), [(2, 8.0), (3, 1 + 10 * 2 / 3)])
def test_binomial_activation_lengths(n_active, pescador_mean):
    # Pescador draws 1 + Binomial((rate-1)/(1-p), 1-p) and numpy truncates the non-integer count:
    # with 4 sources and n_active=3, p = 1/3 and the count 10.5 becomes 10, so the mean is 7.67.
    # Over about 5 000 activations the standard error of the mean is about 0.02.
    assert abs(activation_lengths(C, n_active, "binomial").mean() - 8) < 0.1
    assert abs(activation_lengths(P, n_active, "binomial").mean() - pescador_mean) < 0.1


@BOTH
@pytest.mark.parametrize("dist", ["constant", "poisson"])
def test_other_activation_lengths_have_mean_rate(M, dist):
    lengths = activation_lengths(M, 3, dist)
    assert abs(lengths.mean() - 8) < 0.15
    if dist == "constant":
        assert set(lengths.tolist()) == {8}


def test_constant_dist_with_a_fractional_rate():
    # Pescador passes the rate as max_iter, so an activation yields ceil(rate) items; ours has mean rate.
    def per_activation(M):
        sources = [M.Streamer(range(100)) for _ in range(4)]
        lengths = [
            len(list(M.StochasticMux(sources, 1, 3.25, mode="exhaustive", dist="constant", random_state=k)))
            for k in range(100)
        ]
        return np.mean(lengths) / 4  # one activation per source and pass

    assert per_activation(P) == 4.0
    assert abs(per_activation(C) - 3.25) < 0.07  # 400 activations of 3 or 4 items: deviation 0.02


@pytest.mark.parametrize("dist", ["binomial", "poisson"])
def test_rate_below_one(dist):
    def program(M):
        return list(
            M.StochasticMux([M.Streamer(forever, c) for c in "ab"], 2, 0.5, dist=dist, random_state=0)(
                max_iter=50
            )
        )

    with pytest.raises(ValueError):  # numpy refuses Pescador's negative count or mean
        program(P)
    assert len(program(C)) == 50


def test_single_active_runs_are_longer_in_ours():
    # Drawing a source open in the other slot extends its activation here; Pescador draws only
    # among the closed ones. Same mean share, about twice the variance of a source's count.
    def counts_of_a(M):
        return np.array(
            [
                list(
                    M.StochasticMux(
                        [M.Streamer(forever, c) for c in "abc"],
                        2,
                        4,
                        mode="single_active",
                        dist="constant",
                        random_state=k,
                    )(max_iter=600)
                ).count("a")
                for k in range(100)
            ]
        )

    theirs, ours = counts_of_a(P), counts_of_a(C)
    assert abs(theirs.mean() - 200) < 6 and abs(ours.mean() - 200) < 6
    assert ours.var() > 1.5 * theirs.var()


# ---------------------------------------------------------------- cache


@BOTH
@pytest.mark.parametrize("prob", [0.3, 0.8])
def test_cache_warms_up_in_order_then_serves_fresh_items_with_prob(M, prob):
    out = list(itertools.islice(M.cache(itertools.count(), 10, prob=prob, random_state=0), 20_000))
    assert out[:10] == list(range(10))
    rest = out[10:]
    fresh = len(set(rest) - set(range(10)))  # every new item is yielded when it enters the cache
    assert abs(fresh / len(rest) - prob) < 0.02
    assert set(rest) <= set(range(max(rest) + 1))


def test_cache_with_prob_one_passes_everything_through():
    differential(lambda M: list(M.cache(iter(range(50)), 5, prob=1.0, random_state=0)))


def test_cache_ends_when_the_input_ends():
    for M in (P, C):
        out = list(M.cache(iter(range(30)), 4, prob=0.5, random_state=2))
        assert out[:4] == [0, 1, 2, 3]
        assert len(out) >= 30
        assert set(out) <= set(range(30))


def test_cache_accepts_any_iterable_in_ours():
    with pytest.raises(TypeError):  # Pescador calls next() on its argument
        list(P.cache(P.Streamer(range(10)), 3))
    assert list(C.cache(C.Streamer(range(10)), 3, prob=1.0)) == list(range(10))
    assert list(C.cache(list(range(10)), 3, prob=1.0)) == list(range(10))


def test_cache_random_state_object_is_copied_in_ours():
    def run(M, rs):
        return list(itertools.islice(M.cache(itertools.count(), 4, prob=0.5, random_state=rs), 200))

    ours_rs, theirs_rs = np.random.RandomState(7), np.random.RandomState(7)
    assert run(C, ours_rs) == run(C, ours_rs)  # the caller's generator is left as it was
    assert ours_rs.randint(1000) == np.random.RandomState(7).randint(1000)
    assert run(P, theirs_rs) != run(P, theirs_rs)  # Pescador draws from (advances) it
    assert theirs_rs.randint(1000) != np.random.RandomState(7).randint(1000)


# ---------------------------------------------------------------- random_state


def seeded_muxes(M: Any, random_state: Any) -> list[Any]:
    return [
        M.StochasticMux([M.Streamer(forever, c) for c in "abc"], 2, 4, random_state=random_state),
        M.ShuffledMux([M.Streamer(forever, c) for c in "abc"], random_state=random_state),
        M.RoundRobinMux(letters(M), mode="permuted_cycle", random_state=random_state),
    ]


RANDOM_STATES = {
    "int": lambda: 5,
    "numpy-int": lambda: np.int64(5),
    "RandomState": lambda: np.random.RandomState(5),
    "Generator": lambda: np.random.default_rng(5),
}


@BOTH
@pytest.mark.parametrize("kind", sorted(RANDOM_STATES))
def test_a_seeded_mux_gives_the_same_output_every_pass(M, kind):
    random_state = RANDOM_STATES[kind]()
    if M is P and kind in ("Generator", "numpy-int"):  # Pescador takes only int and RandomState
        with pytest.raises(P.PescadorError):
            seeded_muxes(M, random_state)
        return
    for mux in seeded_muxes(M, random_state):
        first = list(mux(max_iter=60))
        assert len(first) == 60
        assert list(mux(max_iter=60)) == first
        assert list(mux.iterate(max_iter=60)) == first
    if kind == "RandomState":  # Pescador copies the generator per pass; so do we
        assert random_state.randint(2**31) == np.random.RandomState(5).randint(2**31)
    if kind == "Generator":
        assert random_state.integers(2**31) == np.random.default_rng(5).integers(2**31)


def test_a_generator_seeds_reproducibly():
    a = list(
        C.ShuffledMux([C.Streamer(forever, c) for c in "abc"], random_state=np.random.default_rng(3))(
            max_iter=50
        )
    )
    b = list(
        C.ShuffledMux([C.Streamer(forever, c) for c in "abc"], random_state=np.random.default_rng(3))(
            max_iter=50
        )
    )
    assert a == b


@BOTH
def test_random_state_none_draws_anew_every_pass(M):
    for mux in seeded_muxes(M, None):
        assert len({"".join(mux(max_iter=60)) for _ in range(3)}) > 1


def test_unseeded_pescador_uses_the_global_numpy_state_and_ours_never_touches_it():
    def global_state_moves(M):
        np.random.seed(0)
        before = np.random.get_state()
        for mux in seeded_muxes(M, None):
            list(mux(max_iter=50))
        list(itertools.islice(M.cache(itertools.count(), 3, random_state=None), 50))
        after = np.random.get_state()
        return not (np.array_equal(before[1], after[1]) and before[2] == after[2])

    def reproducible_by_np_random_seed(M):
        mux = M.StochasticMux([M.Streamer(forever, c) for c in "abc"], 2, 4)
        np.random.seed(9)
        first = list(mux(max_iter=60))
        np.random.seed(9)
        return list(mux(max_iter=60)) == first

    assert global_state_moves(P) and reproducible_by_np_random_seed(P)
    assert not global_state_moves(C) and not reproducible_by_np_random_seed(C)


# ---------------------------------------------------------------- ZMQStreamer


@pytest.fixture
def no_shm_leak():
    """This test process leaves no shared memory behind; other processes' entries are not its business."""
    assert own_shm_entries() == []
    yield
    assert own_shm_entries() == []


@pytest.fixture
def foreign_shm_entry():
    """A ``pfp_`` entry that another process (pid 0 stands for it) left in the shared-memory folder."""
    from pescador_fp._ipc.ring import NAME_PREFIX, SHM_DIR

    path = Path(SHM_DIR) / f"{NAME_PREFIX}0_left_by_another_process_{os.getpid()}"
    path.touch()
    yield path.name
    path.unlink()


def test_zmq_tests_ignore_shared_memory_left_by_other_processes(foreign_shm_entry, no_shm_leak):
    assert foreign_shm_entry not in own_shm_entries()
    assert same_items(list(C.ZMQStreamer(C.Streamer(arrays, 2))), list(arrays(2)))


def arrays(n: int) -> Iterator[dict[str, np.ndarray]]:
    for i in range(n):
        yield {
            "z": np.full((2, 3), i, dtype=np.float32),
            "a": np.array(i, dtype=np.int16),
            "m": np.arange(i, i + 4, dtype=np.uint8),
        }


def test_zmq_streamer_yields_what_the_streamer_yields(no_shm_leak):
    s = C.Streamer(arrays, 5)
    z = C.ZMQStreamer(s)
    expected = list(s)
    assert same_items(list(z), expected)  # values, dtypes, shapes and key order
    assert same_items(list(z), expected)  # a second pass restarts the worker
    assert same_items(list(z(max_iter=2)), expected[:2])
    assert same_items(list(z.iterate(max_iter=3)), expected[:3])
    assert all(v.flags.writeable for d in z for v in d.values())  # arrays the consumer owns


def test_zmq_streamer_ignores_ports_copy_and_timeout(no_shm_leak):
    z = C.ZMQStreamer(C.Streamer(arrays, 3), min_port=1, max_port=2, max_tries=1, copy=True, timeout=None)
    assert same_items(list(z), list(arrays(3)))


def test_zmq_streamer_over_a_mux(no_shm_leak):
    def labelled(k):
        while True:
            yield {"k": np.array([k])}

    mux = C.ShuffledMux([C.Streamer(labelled, k) for k in range(3)], random_state=0)
    out = list(C.ZMQStreamer(mux)(max_iter=300))
    assert [int(d["k"][0]) for d in out] == [int(d["k"][0]) for d in mux(max_iter=300)]


def test_zmq_streamer_takes_non_contiguous_arrays(no_shm_leak):
    def views():
        yield {"m": np.arange(6)[::2], "f": np.asfortranarray(np.arange(6.0).reshape(2, 3))}

    assert same_items(list(C.ZMQStreamer(C.Streamer(views))), list(views()))


def test_zmq_streamer_surfaces_a_worker_error_after_the_earlier_items(no_shm_leak):
    def failing(n):
        for i in range(n):
            yield {"x": np.array([i])}
        raise ValueError(f"item {n} is corrupt")

    got = []
    with pytest.raises(ValueError, match=r"^item 3 is corrupt$"):
        for item in C.ZMQStreamer(C.Streamer(failing, 3)):
            got.append(int(item["x"][0]))
    assert got == [0, 1, 2]


@pytest.mark.parametrize("item", [{"x": [1, 2]}, 5, {"x": np.zeros(2), "n": 3}], ids=["list", "int", "mixed"])
def test_zmq_streamer_refuses_what_is_not_a_dict_of_arrays(item, no_shm_leak):
    with pytest.raises(C.DataError):
        list(C.ZMQStreamer(C.Streamer([item])))


# Pescador's ZMQ receiver sets ``array.shape``, which NumPy 2.5 deprecates.
@pytest.mark.filterwarnings("ignore:Setting the shape on a NumPy array:DeprecationWarning")
def test_pescador_zmq_streamer_agrees_with_ours(no_shm_leak):
    """The one run of Pescador's ZMQStreamer: a few items, compared key by key."""
    zmq = pytest.importorskip("zmq")
    expected = list(arrays(3))
    try:
        theirs = list(P.ZMQStreamer(P.Streamer(arrays, 3)))
    except zmq.error.ZMQBaseError as error:  # pragma: no cover - depends on the machine's ports
        pytest.skip(f"Pescador's ZMQStreamer could not bind a port: {error}")
    ours = list(C.ZMQStreamer(C.Streamer(arrays, 3)))
    assert len(theirs) == len(ours) == len(expected)
    for t, o, e in zip(theirs, ours, expected):
        assert same({k: t[k] for k in e}, e)
        assert same(o, e)
        assert list(t) == sorted(e)  # Pescador sorts the keys; ours keeps their order
        assert not any(v.flags.writeable for v in t.values())  # Pescador: read-only views
        assert all(v.flags.writeable for v in o.values())
