"""Batches stacked straight into the ring: what ``background`` gives equals the foreground pass.

When ``batch`` is the last operator a worker runs, it stacks the samples (or
slices the rows of ``from_arrays``) straight into ring memory. Whatever the
samples, the batches and errors must be those of the foreground pass.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pescador_fp as pf
from pescador_fp._ipc.ring import RECORD_DATA, Ring

DTYPES = [
    "float32",
    "float64",
    "int8",
    "uint16",
    ">i4",
    "<f8",
    "bool",
    "complex64",
    "M8[s]",
    "U3",
    "S2",
    "V4",
]


def assert_same_batches(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g) is type(w)
        if isinstance(w, dict):
            assert list(g) == list(w)
            pairs = [(g[k], w[k]) for k in w]
        else:
            pairs = [(g, w)]
        for a, b in pairs:
            assert a.dtype == b.dtype and a.dtype.str == b.dtype.str
            assert a.shape == b.shape
            assert a.tobytes() == b.tobytes()


def samples_of(dtype: str, shape: tuple[int, ...], count: int) -> list[np.ndarray]:
    size = int(np.prod(shape, dtype=np.int64))
    raw = np.arange(count * size * 16, dtype=np.uint8) % 251
    return [
        raw[i * size * 16 : (i + 1) * size * 16][: size * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
        for i in range(count)
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 5), max_size=3).map(tuple),
    count=st.integers(0, 20),
    size=st.integers(1, 6),
    partial=st.booleans(),
    as_dict=st.booleans(),
)
def test_background_batches_equal_foreground_batches(dtype, shape, count, size, partial, as_dict):
    samples = samples_of(dtype, shape, count)
    if as_dict:
        samples = [{"x": s, "n": np.full(2, i)} for i, s in enumerate(samples)]
    s = pf.from_iterable(samples) | pf.batch(size, partial=partial)
    assert_same_batches(list(s | pf.background()), list(s))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 4), max_size=2).map(tuple),
    rows=st.integers(0, 30),
    size=st.integers(1, 7),
    partial=st.booleans(),
    form=st.sampled_from(["single", "dict", "tuple"]),
    workers=st.integers(1, 2),
)
def test_from_arrays_batches_by_slicing_equal_foreground(dtype, shape, rows, size, partial, form, workers):
    array = np.stack(samples_of(dtype, shape, rows)) if rows else np.zeros((0, *shape), dtype)
    data = {"single": array, "dict": {"a": array, "b": np.arange(rows)}, "tuple": (array, np.arange(rows))}[
        form
    ]
    s = pf.from_arrays(data) | pf.batch(size, partial=partial)
    got = list(s | pf.background(workers=workers))
    if workers == 1:
        want = list(s)
    else:  # each worker batches its own rows (every other row); the merge takes batches in turn, then
        # the rows that filled no batch in either worker, worker 0's first, are batched at the end
        parts = [pf.from_arrays(pf_rows(data, i)) | pf.batch(size) for i in range(2)]
        want = [b for pair in itertools.zip_longest(*map(list, parts)) for b in pair if b is not None]
        leftover = [list(pf.from_arrays(pf_rows(data, i)))[len(list(parts[i])) * size :] for i in range(2)]
        want += list(pf.from_iterable(leftover[0] + leftover[1]) | pf.batch(size, partial=partial))
    if form == "tuple":
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_batches(list(g), list(w))
    else:
        assert_same_batches(got, want)


def pf_rows(data, index):
    if isinstance(data, dict):
        return {k: v[index::2] for k, v in data.items()}
    if isinstance(data, tuple):
        return tuple(v[index::2] for v in data)
    return data[index::2]


def test_samples_of_mixed_dtypes_stack_as_the_foreground_does():
    samples = [np.zeros(3, np.int32), np.ones(3, np.float64), np.zeros(3, np.int32)]
    s = pf.from_iterable(samples) | pf.batch(3)
    assert_same_batches(list(s | pf.background()), list(s))
    dicts = [{"x": a, "y": 1} for a in samples]
    s = pf.from_iterable(dicts) | pf.batch(3)
    assert_same_batches(list(s | pf.background()), list(s))


def test_dict_samples_with_keys_in_another_order_stack_in_the_first_ones_order():
    samples = [{"a": np.zeros(2), "b": np.ones(1)}, {"b": np.ones(1), "a": np.zeros(2)}]
    s = pf.from_iterable(samples) | pf.batch(2)
    assert_same_batches(list(s | pf.background()), list(s))


def test_a_partial_last_batch_comes_through():
    s = pf.from_iterable([np.full(4, i) for i in range(10)]) | pf.batch(4, partial=True)
    got = list(s | pf.background())
    assert [len(b) for b in got] == [4, 4, 2]
    assert_same_batches(got, list(s))


# Dtypes whose batch (np.array of the samples) has another dtype than the samples: numpy makes byte order
# native also in the fields of a structured dtype, and packs a structured dtype with gaps.
RESTACKED = {
    "big_endian_subarray_field": np.dtype([("a", "<i4"), ("b", ">f8", (2,))]),
    "big_endian_nested_field": np.dtype([("n", [("x", ">i2")]), ("y", "<f4")]),
    "gaps": np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f8"], "offsets": [4, 16], "itemsize": 32}),
    "big_endian": np.dtype(">f8"),
}


@pytest.mark.parametrize("dtype", RESTACKED.values(), ids=RESTACKED)
def test_samples_whose_dtype_stacking_changes_batch_in_a_worker_as_in_the_foreground(dtype):
    arrays = list((np.arange(10 * dtype.itemsize) % 251).astype(np.uint8).view(dtype).reshape(5, 2))
    assert np.array(arrays[:2]).dtype != dtype  # what the test is about
    for samples in (arrays, [{"x": a} for a in arrays]):
        s = pf.from_iterable(samples) | pf.batch(2)  # and a last batch of one sample, which keeps its dtype
        assert_same_batches(list(s | pf.background()), list(s))


def foreground_error(s):
    with pytest.raises(pf.DataError) as raised:
        list(s)
    return str(raised.value)


@pytest.mark.parametrize(
    "samples",
    [
        [np.zeros(3), np.zeros(4)],
        [np.zeros((2, 2)), np.zeros(4)],
        [{"x": np.zeros(3)}, {"x": np.zeros(4)}],
        [{"x": np.zeros(3)}, {"y": np.zeros(3)}],
        [{"x": np.zeros(3)}, {"x": np.zeros(3), "y": np.zeros(1)}],
        [np.zeros(3), {"x": np.zeros(3)}],
    ],
)
def test_mismatched_samples_raise_the_foregrounds_data_error(samples):
    s = pf.from_iterable(samples) | pf.batch(2)
    message = foreground_error(s)
    with pytest.raises(pf.DataError, match=re.escape(message)):
        list(s | pf.background())


def test_samples_from_a_map_batch_in_two_workers_and_their_leftovers_at_the_end():
    s = pf.from_iterable(range(40)) | pf.map(lambda i: np.full(5, i, np.float32)) | pf.batch(8)
    got = list(s | pf.background(workers=2))
    assert len(got) == 5  # 20 samples per worker: two full batches each, and their 4 + 4 left over
    rows = sorted(int(row[0]) for b in got for row in b)
    assert rows == list(range(40))


def test_a_reserved_record_not_committed_is_dropped():
    ring = Ring.create(4096, lambda n: __import__("threading").Semaphore(n))
    try:
        views = ring.reserve(RECORD_DATA, b"meta", [10, 3])
        views[0][:] = b"x" * 10
        views.clear()
        ring.put(RECORD_DATA, b"m", [memoryview(b"abc")])
        views = ring.reserve(RECORD_DATA, b"", [4])
        views[0][:] = b"wxyz"
        views.clear()
        ring.commit()
        kind, metadata, buffers = ring.get(lambda: True)
        assert (kind, bytes(metadata), [bytes(b) for b in buffers]) == (RECORD_DATA, b"m", [b"abc"])
        del metadata, buffers
        kind, metadata, buffers = ring.get(lambda: True)
        assert (bytes(metadata), [bytes(b) for b in buffers]) == (b"", [b"wxyz"])
        del metadata, buffers
        ring.release()
    finally:
        ring.close()
