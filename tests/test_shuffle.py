"""shuffle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pescador_fp as pf


@given(
    items=st.lists(st.integers(), max_size=200),
    buffer_size=st.integers(1, 64),
    seed=st.integers(0, 2**32),
)
def test_shuffle_of_a_finite_stream_is_a_permutation(items, buffer_size, seed):
    out = list(items | pf.shuffle(buffer_size, seed=seed))
    assert sorted(out) == sorted(items)


def test_same_seed_same_order_different_seed_different_order():
    s = range(1000)
    assert list(s | pf.shuffle(50, seed=1)) == list(s | pf.shuffle(50, seed=1))
    assert list(s | pf.shuffle(50, seed=1)) != list(s | pf.shuffle(50, seed=2))


def test_a_full_buffer_shuffles_uniformly():
    # Position of item 0 after shuffling 10 items with a buffer of 10, over many seeds.
    counts = np.zeros(10)
    for seed in range(4000):
        out = list(range(10) | pf.shuffle(10, seed=seed))
        counts[out.index(0)] += 1
    chi2 = ((counts - 400) ** 2 / 400).sum()
    assert chi2 < 27.9  # p = 0.001 for 9 degrees of freedom


def test_buffer_bounds_how_far_items_travel_forward():
    out = list(range(1000) | pf.shuffle(8, seed=0))
    # An item can only be yielded once it has entered the buffer.
    assert all(out[i] <= i + 8 for i in range(1000))


def test_bad_arguments_are_refused_at_build_time():
    with pytest.raises(ValueError, match="buffer_size must be an integer >= 1, got 0"):
        pf.shuffle(0)
    with pytest.raises(ValueError, match="-5"):
        pf.shuffle(4, seed=-5)
