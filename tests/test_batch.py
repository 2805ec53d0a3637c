"""batch and unbatch."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
from helpers import same, same_items
from hypothesis import given, settings
from hypothesis import strategies as st

import pescador_fp as pf

Point = namedtuple("Point", "x y")

# A schema describes the structure of a sample; leaves are (kind, shape).
leaf_schemas = st.tuples(
    st.sampled_from(["float32", "int64", "bool", "pyint", "pyfloat", "str"]),
    st.lists(st.integers(0, 3), max_size=2).map(tuple),
)
schemas = st.recursive(
    leaf_schemas,
    lambda children: st.one_of(
        st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3).map(tuple),
        st.lists(children, min_size=1, max_size=3),
        st.tuples(children, children).map(lambda t: Point(*t)),
    ),
    max_leaves=6,
)


def make_sample(schema, rng):
    if isinstance(schema, dict):
        return {k: make_sample(v, rng) for k, v in schema.items()}
    if isinstance(schema, Point):
        return Point(*(make_sample(v, rng) for v in schema))
    if isinstance(schema, list):
        return [make_sample(v, rng) for v in schema]
    if isinstance(schema, tuple) and not (len(schema) == 2 and isinstance(schema[0], str)):
        return tuple(make_sample(v, rng) for v in schema)
    kind, shape = schema
    if kind == "pyint":
        return int(rng.integers(-100, 100))
    if kind == "pyfloat":
        return float(rng.normal())
    if kind == "str":
        return str(rng.integers(1000))
    return (rng.normal(size=shape) * 10).astype(kind)


@settings(max_examples=60, deadline=None)
@given(
    schema=schemas,
    n=st.integers(0, 12),
    size=st.integers(1, 5),
    partial=st.booleans(),
    seed=st.integers(0, 99),
)
def test_batch_then_unbatch_gives_back_the_samples(schema, n, size, partial, seed):
    rng = np.random.default_rng(seed)
    samples = [make_sample(schema, rng) for _ in range(n)]
    kept = n if partial else n - n % size
    out = list(samples | pf.batch(size, partial=partial) | pf.unbatch())
    assert same_items(out, samples[:kept])


def test_batch_stacks_dicts_of_arrays_and_scalars():
    samples = [{"x": np.full((2, 3), i, dtype=np.float32), "y": i, "name": f"s{i}"} for i in range(4)]
    (b,) = list(samples | pf.batch(4))
    assert b["x"].shape == (4, 2, 3) and b["x"].dtype == np.float32
    assert b["y"].tolist() == [0, 1, 2, 3] and b["name"].tolist() == ["s0", "s1", "s2", "s3"]


def test_batch_keeps_tuples_lists_and_namedtuples():
    samples = [(np.zeros(2), [i, {"k": i}], Point(i, -i)) for i in range(3)]
    (b,) = list(samples | pf.batch(3))
    assert isinstance(b, tuple) and isinstance(b[1], list) and isinstance(b[2], Point)
    assert b[1][1]["k"].tolist() == [0, 1, 2] and b[2].y.tolist() == [0, -1, -2]


def test_partial_keeps_the_short_last_batch():
    assert [b.tolist() for b in range(5) | pf.batch(2)] == [[0, 1], [2, 3]]
    assert [b.tolist() for b in range(5) | pf.batch(2, partial=True)] == [[0, 1], [2, 3], [4]]
    assert list([] | pf.batch(2, partial=True)) == []


def test_axis_concatenates_existing_batches():
    chunks = [{"x": np.full((2, 3), i)} for i in range(4)]
    out = list(chunks | pf.batch(2, axis=0))
    assert [b["x"].shape for b in out] == [(4, 3), (4, 3)]
    out1 = list(chunks | pf.batch(2, axis=1))
    assert out1[0]["x"].shape == (2, 6)
    assert same(out[1]["x"][:, 0], np.array([2, 2, 3, 3]))


def test_mismatched_shapes_name_the_key_and_both_shapes():
    samples = [{"x": np.zeros(3), "y": 0}, {"x": np.zeros(3), "y": 1}, {"x": np.zeros(4), "y": 2}]
    with pytest.raises(pf.DataError) as info:
        list(samples | pf.batch(3))
    message = str(info.value)
    assert "['x']" in message and "(3,)" in message and "(4,)" in message and "sample 2" in message


def test_mismatched_shapes_off_the_axis_are_data_errors():
    samples = [np.zeros((2, 3)), np.zeros((2, 4))]
    with pytest.raises(pf.DataError, match=r"\(2, 3\).*\(2, 4\)"):
        list(samples | pf.batch(2, axis=0))


def test_mismatched_keys_name_the_key():
    samples = [{"x": 1, "y": 2}, {"x": 1, "z": 2}]
    with pytest.raises(pf.DataError, match=r"missing key \['y'\].*extra key \['z'\]"):
        list(samples | pf.batch(2))


def test_nested_mismatch_names_the_path():
    samples = [{"a": (np.zeros(2), 1)}, {"a": (np.zeros(5), 1)}]
    with pytest.raises(pf.DataError, match=r"\['a'\]\[0\].*\(2,\).*\(5,\)"):
        list(samples | pf.batch(2))


def test_mixed_structures_are_data_errors():
    with pytest.raises(pf.DataError, match="sample 1"):
        list([{"x": 1}, (1,)] | pf.batch(2))
    with pytest.raises(pf.DataError, match="length"):
        list([(1, 2), (1,)] | pf.batch(2))


A = np.zeros(3)


@pytest.mark.parametrize(
    ("samples", "where"),
    [
        ([{0: A, 1: A}, [A, A]], "at the sample"),  # a list answers s[0] and s[1] too
        ([[A, A], {0: A, 1: A}], "at the sample"),
        ([{"x": np.zeros(2)}, {"x": [0.0, 0.0]}], r"at \['x'\]"),  # numpy would make the list a leaf
        ([{"x": [0.0, 0.0]}, {"x": np.zeros(2)}], r"at \['x'\]"),
        ([{"x": {"y": np.zeros(2)}}, {"x": {"y": (0.0, 0.0)}}], r"at \['x'\]\['y'\]"),
        ([np.zeros(2), [0.0, 0.0]], "at the sample"),
    ],
)
def test_a_container_among_leaves_is_a_data_error_in_either_order(samples, where):
    for order in (samples, samples[::-1]):
        with pytest.raises(pf.DataError, match=where):
            list(order | pf.batch(2))


def test_unbatch_rejects_non_batches():
    with pytest.raises(pf.DataError, match="leading axis"):
        list([{"x": 3}] | pf.unbatch())
    with pytest.raises(pf.DataError, match=r"\[2, 3\]"):
        list([{"x": np.zeros(2), "y": np.zeros(3)}] | pf.unbatch())


def test_bad_arguments_are_refused_at_build_time():
    with pytest.raises(ValueError, match="size must be an integer >= 1, got 0"):
        pf.batch(0)
    with pytest.raises(TypeError, match="partial"):
        pf.batch(2, partial="yes")
    with pytest.raises(TypeError, match="axis"):
        pf.batch(2, axis=1.0)
