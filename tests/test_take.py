"""take and skip."""

from __future__ import annotations

import pytest
from helpers import Recorder
from hypothesis import given
from hypothesis import strategies as st

import pescador_fp as pf


@given(n=st.integers(0, 30), size=st.one_of(st.none(), st.integers(0, 30)))
def test_take_never_pulls_item_n_plus_one(n, size):
    rec = Recorder(size)
    out = list(rec.stream() | pf.take(n))
    expected = n if size is None else min(n, size)
    assert out == list(range(expected))
    pulled = rec.pulled[0] if rec.pulled else 0
    assert pulled == expected  # never item n+1
    if n > 0:
        assert rec.closed == 1  # the upstream is closed as soon as take is done


@given(n=st.integers(1, 30), size=st.one_of(st.none(), st.integers(0, 30)))
def test_take_closes_the_upstream_as_the_nth_item_comes_out(n, size):
    rec = Recorder(size)
    it = iter(rec.stream() | pf.map(lambda x: x) | pf.take(n))
    out = [next(it) for _ in range(n if size is None else min(n, size))]
    if size is None or size >= n:
        assert rec.closed == 1  # before anyone asks for item n+1
    assert list(it) == [] and out == list(range(len(out))) and rec.closed == 1


@given(n=st.integers(0, 30), size=st.integers(0, 30))
def test_skip_drops_the_first_n(n, size):
    assert list(range(size) | pf.skip(n)) == list(range(n, size))


def test_take_zero_opens_nothing():
    rec = Recorder(None)
    assert list(rec.stream() | pf.take(0)) == [] and rec.pulled == []


@pytest.mark.parametrize("make", [pf.take, pf.skip])
def test_bad_counts_are_refused_at_build_time(make):
    name = make.__name__
    with pytest.raises(ValueError, match=rf"{name}: n must be an integer >= 0, got -1"):
        make(-1)
    with pytest.raises(TypeError, match=r"got 2\.5"):
        make(2.5)
