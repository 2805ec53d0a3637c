"""cache."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Recorder

import pescador_fp as pf


def test_first_items_pass_through_in_order():
    out = list(range(50) | pf.cache(10, prob=0.5, seed=0))
    assert out[:10] == list(range(10))


def test_every_input_is_used_and_outputs_come_from_the_input():
    out = list(range(200) | pf.cache(16, prob=0.5, seed=1))
    assert set(range(16)) <= set(out) <= set(range(200))
    assert len(out) >= 200


def test_prob_sets_the_share_of_fresh_items():
    rec = Recorder(20_000)
    out = list(rec.stream() | pf.cache(32, prob=0.25, seed=2))
    fresh = (rec.pulled[0] - 32) / (len(out) - 32)
    assert abs(fresh - 0.25) < 0.02


def test_prob_one_is_the_identity():
    assert list(range(100) | pf.cache(8, prob=1.0, seed=0)) == list(range(100))


def test_short_upstream_ends_after_warm_up():
    assert list(range(3) | pf.cache(8, seed=0)) == [0, 1, 2]
    assert list([] | pf.cache(8, seed=0)) == []


def test_cache_ends_when_it_needs_an_item_the_upstream_lacks():
    rec = Recorder(40)
    out = list(rec.stream() | pf.cache(4, prob=0.5, seed=3))
    assert rec.pulled == [40]  # every input was used before the end
    assert np.bincount(out).max() > 1  # some items were served again


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"n_cache": 0}, ValueError, "n_cache must be an integer >= 1, got 0"),
        ({"n_cache": 4, "prob": 2}, ValueError, r"prob must be a number in \(0, 1\], got 2"),
        ({"n_cache": 4, "prob": 0}, ValueError, "got 0"),
        ({"n_cache": 4, "prob": float("nan")}, ValueError, "nan"),
        ({"n_cache": 4, "seed": -1}, ValueError, "-1"),
    ],
)
def test_bad_arguments_are_refused_at_build_time(kwargs, error, text):
    with pytest.raises(error, match=text):
        pf.cache(**kwargs)
