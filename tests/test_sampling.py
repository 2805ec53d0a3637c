"""Tests for pescador_fp._sampling: bulk draws, the weighted picker, activation counts, weighted orders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pescador_fp._sampling import DRAWS_PER_CALL, BulkDraws, Picker, count_sampler, weighted_order


def test_bulk_draws_hand_out_the_draws_in_order_and_draw_only_when_used_up():
    calls = []

    def draw(n):
        calls.append(n)
        return list(range(len(calls) * 10, len(calls) * 10 + n))

    draws = BulkDraws(draw, size=3)
    assert [draws.pop() for _ in range(4)] == [10, 11, 12, 20]
    assert calls == [3, 3]


def test_iterating_bulk_draws_gives_the_buffer_first_then_fresh_draws():
    rng = np.random.default_rng(5)
    draws = BulkDraws(lambda n: rng.integers(0, 100, n).tolist(), size=4)
    first = [draws.pop(), draws.pop()]
    rest = list(itertools.islice(draws, 10))
    assert first + rest == np.random.default_rng(5).integers(0, 100, 12).tolist()


def test_bulk_draws_of_pairs_keep_the_order_of_the_two_draws():
    rng = np.random.default_rng(1)
    draws = BulkDraws(lambda n: list(zip(rng.integers(0, 8, n).tolist(), rng.random(n).tolist())), size=5)
    got = list(itertools.islice(draws, 10))
    ref = np.random.default_rng(1)
    expected = []
    for _ in range(2):
        expected += list(zip(ref.integers(0, 8, 5).tolist(), ref.random(5).tolist()))
    assert got == expected


def test_cleared_bulk_draws_forget_what_was_not_handed_out():
    draws = BulkDraws(lambda n: [1] * n, size=4)
    draws.pop()
    draws.clear()
    assert draws.buffer == []


def test_picker_draws_in_proportion_to_the_weights():
    picker = Picker([1.0, 0.0, 3.0], np.random.default_rng(0))
    picks = np.array([picker.pick() for _ in range(40_000)])
    assert not (picks == 1).any()
    assert abs((picks == 2).mean() - 0.75) < 0.01


def test_picker_draws_in_bulk_as_it_always_has():
    weights = [2.0, 1.0, 5.0]
    picker = Picker(weights, np.random.default_rng(3))
    cumulative = np.cumsum(weights)
    u = np.random.default_rng(3).random(DRAWS_PER_CALL) * cumulative[-1]
    assert [picker.pick() for _ in range(DRAWS_PER_CALL)] == np.searchsorted(cumulative, u, "right").tolist()


def test_dropped_index_is_never_picked_and_the_rest_keep_their_proportions():
    picker = Picker([1.0, 1.0, 2.0], np.random.default_rng(0))
    picker.pick()
    picker.drop(2)
    picks = [picker.pick() for _ in range(10_000)]
    assert 2 not in picks and abs(picks.count(0) / len(picks) - 0.5) < 0.02
    picker.drop(0)
    picker.drop(1)
    assert not picker.any_left


@pytest.mark.parametrize("dist", ["constant", "binomial", "poisson"])
@pytest.mark.parametrize("rate", [0.25, 1.0, 2.5, 16.0])
def test_activation_counts_have_mean_rate(dist, rate):
    counts = count_sampler(np.random.default_rng(0), dist, n_active=4)(rate, 200_000)
    assert abs(counts.mean() - rate) < 0.02 * rate + 0.01
    if rate >= 1:
        assert counts.min() >= 1


def test_weighted_order_holds_each_positive_index_once_with_heavier_ones_first():
    firsts = [weighted_order([1.0, 0.0, 9.0], np.random.default_rng(k))[0] for k in range(2000)]
    assert sorted(weighted_order([1.0, 0.0, 9.0], np.random.default_rng(0))) == [0, 2]
    assert abs(firsts.count(2) / len(firsts) - 0.9) < 0.03


def test_weighted_order_takes_weights_that_would_overflow():
    assert sorted(weighted_order([1e308, 1e-300, 5.0], np.random.default_rng(0))) == [0, 1, 2]
