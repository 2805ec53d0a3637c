"""cycle."""

from __future__ import annotations

import pytest
from helpers import Recorder
from hypothesis import given
from hypothesis import strategies as st

import pescador_fp as pf


@given(times=st.one_of(st.none(), st.integers(0, 5)))
def test_cycle_over_an_empty_stream_ends(times):
    rec = Recorder(0)
    assert list(rec.stream() | pf.cycle(times)) == []
    assert len(rec.pulled) <= 1


@given(size=st.integers(1, 6), times=st.integers(0, 4))
def test_cycle_repeats_the_upstream(size, times):
    assert list(range(size) | pf.cycle(times)) == list(range(size)) * times


def test_infinite_cycle_keeps_going_and_opens_fresh_passes():
    rec = Recorder(3)
    out = list(rec.stream() | pf.cycle() | pf.take(10))
    assert out == [0, 1, 2] * 3 + [0] and len(rec.pulled) == 4


def test_each_repetition_reshuffles_reproducibly():
    s = range(20) | pf.shuffle(20, seed=0) | pf.cycle(3)
    out = list(s)
    passes = [out[0:20], out[20:40], out[40:60]]
    assert all(sorted(p) == list(range(20)) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    assert out == list(s)


def test_bad_times_is_refused_at_build_time():
    with pytest.raises(ValueError, match="times must be an integer >= 0, got -2"):
        pf.cycle(-2)
