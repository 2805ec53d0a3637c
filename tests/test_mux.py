"""mux, shuffled_mux, round_robin, chain: shares, activation lengths, working set, exactly-once, no hangs."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import cloudpickle
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pescador_fp as pf

# A pass that never returns means a hang: each of these tests must end well within this.
HANG_TIMEOUT_S = 20


def forever(label):
    return pf.stream(itertools.repeat, label)


def shares(items, labels):
    counts = Counter(items)
    return np.array([counts[label] for label in labels]) / len(items)


class OpenCounter:
    """Sources that count how many of their generators are open, and how long each activation ran."""

    def __init__(self):
        self.open = 0
        self.max_open = 0
        self.opened = 0
        self.lengths = []

    def _items(self, label, size):
        self.open += 1
        self.opened += 1
        self.max_open = max(self.max_open, self.open)
        pulled = 0
        try:
            for _ in range(size) if size is not None else itertools.count():
                pulled += 1
                yield label
        finally:
            self.open -= 1
            self.lengths.append(pulled)

    def source(self, label, size=None):
        return pf.stream(self._items, label, size)


# ------------------------------------------------------------------ weights are output shares

WEIGHTS = [5, 3, 1, 1]
EXPECTED = np.array(WEIGHTS) / sum(WEIGHTS)


@pytest.mark.parametrize("mode", ["with_replacement", "single_active"])
@pytest.mark.parametrize("dist", ["constant", "binomial", "poisson"])
@pytest.mark.parametrize("n_active", [1, 2, 3])
def test_weights_are_output_shares(mode, dist, n_active):
    s = pf.mux(
        [forever(i) for i in range(4)], n_active, rate=8, weights=WEIGHTS, mode=mode, dist=dist, seed=1
    )
    observed = shares(list(s | pf.take(100_000)), range(4))
    assert np.abs(observed - EXPECTED).max() < 0.02, observed


@pytest.mark.parametrize("dist", ["constant", "binomial", "poisson"])
def test_exhaustive_weights_are_output_shares_over_passes(dist):
    s = pf.mux(
        [forever(i) for i in range(4)], 2, rate=8, weights=WEIGHTS, mode="exhaustive", dist=dist, seed=2
    )
    items = [x for k in range(400) for x in s.iterate(seed=k)]
    observed = shares(items, range(4))
    assert np.abs(observed - EXPECTED).max() < 0.02, observed


def test_pescadors_example_gets_the_shares_it_asks_for():
    # Pescador 3.0 gives about a third each here; the weights ask for .8/.1/.1.
    s = pf.mux(
        [forever("a"), forever("b"), forever("c")], n_active=1, rate=5, weights=[0.8, 0.1, 0.1], seed=0
    )
    observed = shares(list(s | pf.take(60_000)), "abc")
    assert np.abs(observed - [0.8, 0.1, 0.1]).max() < 0.02, observed


def test_nested_muxes_keep_their_shares():
    inner = pf.mux([forever("a"), forever("b")], 1, rate=4, weights=[1, 3], seed=3)
    outer = pf.mux([inner, forever("c")], 1, rate=6, weights=[3, 1], seed=4)
    observed = shares(list(outer | pf.take(100_000)), "abc")
    assert np.abs(observed - [0.75 * 0.25, 0.75 * 0.75, 0.25]).max() < 0.02, observed


@pytest.mark.parametrize(
    "weights", [[2, 1], [2.0, 1.0], np.array([2, 1]), np.array([0.5, 0.25], dtype=np.float32)]
)
def test_integer_float_and_numpy_weights(weights):
    s = pf.mux([forever(0), forever(1)], 1, rate=4, weights=weights, seed=5)
    assert abs(shares(list(s | pf.take(30_000)), [0, 1])[0] - 2 / 3) < 0.02


def test_zero_weight_sources_are_never_opened():
    counter = OpenCounter()
    s = pf.mux([counter.source("a"), forever("b")], 1, rate=3, weights=[0, 1], seed=0)
    assert set(s | pf.take(1000)) == {"b"} and counter.opened == 0


def test_shuffled_mux_shares_pass_a_chi_square_test():
    weights = [4, 2, 1, 1]
    s = pf.shuffled_mux([forever(i) for i in range(4)], weights, seed=6)
    n = 80_000
    counts = Counter(s | pf.take(n))
    expected = np.array(weights) / sum(weights) * n
    chi2 = sum((counts[i] - expected[i]) ** 2 / expected[i] for i in range(4))
    assert chi2 < 16.27  # p = 0.001 with 3 degrees of freedom


# ------------------------------------------------------------------ activation lengths


@pytest.mark.parametrize("dist", ["constant", "binomial", "poisson"])
@pytest.mark.parametrize("rate", [1, 3.5, 16])
def test_activation_lengths_average_the_rate(dist, rate):
    counter = OpenCounter()
    s = pf.mux([counter.source(i) for i in range(6)], 3, rate=rate, dist=dist, seed=7)
    list(s | pf.take(40_000))
    lengths = np.array(counter.lengths)
    assert len(lengths) > 1000
    assert abs(lengths.mean() - rate) < 0.05 * rate + 0.05, lengths.mean()
    if rate >= 1:
        assert lengths.min() >= 1  # an activation yields at least one item
    if dist == "constant" and float(rate).is_integer():
        assert (lengths[:-3] == rate).all()


def test_binomial_spreads_less_than_poisson():
    spreads = {}
    for dist in ("binomial", "poisson"):
        counter = OpenCounter()
        list(pf.mux([counter.source(i) for i in range(6)], 3, rate=9, dist=dist, seed=8) | pf.take(50_000))
        spreads[dist] = np.var(counter.lengths)
    assert spreads["binomial"] < 0.8 * spreads["poisson"]


def test_rate_none_runs_each_activation_to_the_end():
    counter = OpenCounter()
    s = pf.mux([counter.source(i, size=5) for i in range(4)], 2, rate=None, seed=9)
    list(s | pf.take(2000))
    assert set(counter.lengths[:-2]) == {5}


# ------------------------------------------------------------------ bounded working set


@pytest.mark.parametrize("mode", ["with_replacement", "single_active", "exhaustive"])
def test_never_more_than_n_active_sources_open(mode):
    counter = OpenCounter()
    sources = [
        counter.source(i, size=int(n)) for i, n in enumerate(np.random.default_rng(0).integers(0, 40, 300))
    ]
    s = pf.mux(sources, 16, rate=8, mode=mode, seed=10)
    out = list(s | pf.take(20_000))
    assert out and counter.max_open <= 16
    assert counter.open == 0  # every source closed when the pass ended


def test_sources_are_opened_only_when_activated_and_closed_on_break():
    counter = OpenCounter()
    s = pf.mux([counter.source(i) for i in range(1000)], 4, rate=10, seed=11)
    it = iter(s)
    assert counter.opened == 0
    next(it)
    assert counter.opened == 4 and counter.open == 4
    it.close()
    assert counter.open == 0


# ------------------------------------------------------------------ exactly once, no hangs


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=8),
    data=st.data(),
    prune=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_exhaustive_mux_yields_every_item_once(sizes, data, prune, seed):
    n_active = data.draw(st.integers(1, len(sizes)))
    sources = [pf.from_iterable([(i, j) for j in range(size)]) for i, size in enumerate(sizes)]
    out = list(pf.mux(sources, n_active, mode="exhaustive", prune_empty=prune, seed=seed))
    assert sorted(out) == [(i, j) for i, size in enumerate(sizes) for j in range(size)]


@pytest.mark.timeout(HANG_TIMEOUT_S)
@pytest.mark.parametrize("mode", ["with_replacement", "single_active", "exhaustive"])
@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("rate", [None, 4])
def test_all_empty_sources_end_the_mux(mode, prune, rate):
    empty = [pf.from_iterable([]) for _ in range(5)]
    assert list(pf.mux(empty, 3, rate, mode=mode, prune_empty=prune, seed=0)) == []


@pytest.mark.timeout(HANG_TIMEOUT_S)
def test_empty_sources_end_every_other_multiplexer():
    empty = [pf.from_iterable([]) for _ in range(3)]
    assert list(pf.shuffled_mux(empty, seed=0)) == []
    for mode in ["exhaustive", "cycle", "permuted_cycle"]:
        assert list(pf.round_robin(empty, mode=mode, seed=0)) == []
    for mode in ["exhaustive", "cycle"]:
        assert list(pf.chain(empty, mode=mode)) == []
        assert list(pf.chain(pf.from_iterable([]), mode=mode)) == []


@pytest.mark.timeout(HANG_TIMEOUT_S)
def test_empty_sources_are_pruned_and_the_rest_keep_going():
    sources = [pf.from_iterable([]), forever("x"), pf.from_iterable([])]
    for prune in (True, False):
        out = list(pf.mux(sources, 2, rate=3, prune_empty=prune, seed=0) | pf.take(500))
        assert out == ["x"] * 500
    assert list(pf.shuffled_mux(sources, seed=0) | pf.take(100)) == ["x"] * 100


def test_finite_sources_with_replacement_restart_as_fresh_passes():
    out = list(pf.mux([pf.from_iterable("ab")], 1, rate=None, seed=0) | pf.take(7))
    assert out == list("abababa")


def test_shuffled_mux_restarts_exhausted_streams():
    out = list(pf.shuffled_mux([pf.from_iterable("ab"), pf.from_iterable("xyz")], seed=0) | pf.take(3000))
    assert set(out) == set("abxyz")
    a_positions = [c for c in out if c in "ab"]
    assert a_positions[:6] == list("ababab")


# -------------------------------------------------- deterministic muxes match Pescador's orders


def test_round_robin_orders():
    letters = [pf.from_iterable("ab"), pf.from_iterable("cde"), pf.from_iterable("fghi")]
    assert "".join(pf.round_robin(letters)) == "acfbdgehi"
    assert "".join(pf.round_robin(letters, mode="cycle") | pf.take(18)) == "acfbdgehi" * 2
    rounds = "".join(pf.round_robin(letters, mode="permuted_cycle", seed=1) | pf.take(90))
    chunks = [rounds[i : i + 9] for i in range(0, 90, 9)]
    assert all(sorted(c) == list("abcdefghi") for c in chunks)
    assert len(set(chunks)) > 1


def test_chain_orders_and_a_stream_of_streams():
    letters = [pf.from_iterable("ab"), pf.from_iterable(""), pf.from_iterable("cde")]
    assert "".join(pf.chain(letters)) == "abcde"
    assert "".join(pf.chain(letters, mode="cycle") | pf.take(12)) == "abcdeabcdeab"
    streams = pf.from_iterable(range(1, 4)) | pf.map(lambda n: pf.from_iterable(range(n)))
    assert list(pf.chain(streams)) == [0, 0, 1, 0, 1, 2]


# ------------------------------------------------------------------ values and seeds


def seeded_muxes(sources):
    return [
        pf.mux(sources, 2, rate=4, seed=0),
        pf.shuffled_mux(sources, seed=0),
        pf.round_robin(sources, mode="permuted_cycle", seed=0),
    ]


@pytest.mark.parametrize("inner_shuffle", [False, True])
def test_seeded_muxes_are_pure_and_follow_the_pass_seed(inner_shuffle):
    # With an unseeded shuffle inside each source: a seeded mux roots their randomness too.
    sources = [pf.from_iterable(range(i * 100, i * 100 + 50)) for i in range(6)]
    if inner_shuffle:
        sources = [source | pf.shuffle(50) for source in sources]
    for s in seeded_muxes(sources):
        s = s | pf.take(500)
        assert list(s) == list(s)
        assert list(s.iterate(seed=1)) == list(s.iterate(seed=1))
        assert list(s.iterate(seed=1)) != list(s.iterate(seed=2))


def test_sub_streams_get_their_own_seeds():
    shuffled = [pf.from_iterable(range(100)) | pf.shuffle(100) for _ in range(2)]
    out = list(pf.round_robin(shuffled).iterate(seed=3))
    assert out[0::2] != out[1::2]
    assert out == list(pf.round_robin(shuffled).iterate(seed=3))


def test_muxes_pickle_and_print():
    s = pf.mux([pf.from_iterable([1, 2]) | pf.map(lambda x: -x)], 1, rate=2, weights=[1], seed=0)
    assert list(cloudpickle.loads(cloudpickle.dumps(s)) | pf.take(5)) == list(s | pf.take(5))
    assert repr(s).startswith("mux([from_iterable([1, 2]) | map(<lambda>)], n_active=1, rate=2.0")
    assert repr(pf.round_robin([[1]] * 5)) == "round_robin(<5 streams>)"


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda: pf.mux([], 1), "at least one stream"),
        (lambda: pf.mux([[1]], 0), "n_active must be an integer >= 1, got 0"),
        (lambda: pf.mux([[1]], 1, rate=0), "rate must be a positive number or None, got 0"),
        (lambda: pf.mux([[1]], 1, rate=-2.5), "got -2.5"),
        (lambda: pf.mux([[1], [2]], 1, weights=[1]), "one number per stream"),
        (lambda: pf.mux([[1], [2]], 1, weights=[1, -1]), "non-negative"),
        (lambda: pf.mux([[1], [2]], 1, weights=[1, float("nan")]), "finite"),
        (lambda: pf.mux([[1], [2]], 1, weights=[0, 0]), "at least one positive"),
        (lambda: pf.mux([[1]], 1, mode="sometimes"), "mode must be one of"),
        (lambda: pf.mux([[1]], 1, dist="gamma"), "dist must be one of"),
        (lambda: pf.mux([[1]], 2, mode="exhaustive"), "n_active <= the number of streams"),
        (lambda: pf.mux([[1]], 10**30), "mux: n_active must be an integer <= 9223372036854775807, got 10000"),
        (lambda: pf.shuffled_mux([[1]], weights=[-1]), "non-negative"),
        (lambda: pf.mux([[1]], 1, rate=1e-300), "rate must be at least 0.001 (or None), got 1e-300"),
        (lambda: pf.mux([[1]], 1, rate=float("nan")), "rate must be a positive number or None, got nan"),
        (lambda: pf.mux([[1]], 1, rate=float("inf")), "rate must be a positive number or None, got inf"),
        (lambda: pf.mux([[1]], 1, rate=1e300), "got rate=1e+300"),
        (lambda: pf.mux([[1]] * 10**4, 1, rate=1e12, mode="exhaustive"), "rate * len(streams) = 1e+16"),
        (lambda: pf.mux([[1], [2]], 1, weights=[1e308, 1e308]), "weights must have a finite sum"),
        (lambda: pf.mux([[1], [2]], 1, weights=[1, float("inf")]), "finite"),
        (lambda: pf.mux([[1], [2]], 1, weights=[1e-320, 1]), "got 1e-320"),
        (
            lambda: pf.shuffled_mux([[1], [2]], weights=[1e308, 1e308]),
            "shuffled_mux: weights must have a finite",
        ),
        (
            lambda: pf.shuffled_mux([[1], [2]], weights=[float("nan"), 1]),
            "shuffled_mux: weights must be finite",
        ),
        (lambda: pf.shuffled_mux([[1], [2]], weights=[1e-320, 1]), "shuffled_mux: weights must be 0 or at"),
        (lambda: pf.round_robin([[1]], mode="random"), "mode must be one of"),
        (lambda: pf.chain([[1]], mode="permuted_cycle"), "mode must be one of"),
    ],
)
def test_bad_arguments_are_refused_when_built(make, text):
    with pytest.raises(ValueError, match=re.escape(text)):
        make()


def test_weights_that_do_not_fit_a_float_are_refused_when_built():
    with pytest.raises(TypeError, match=r"mux: weights must be a list of finite numbers"):
        pf.mux([[1], [2]], 1, weights=[10**400, 1])


@pytest.mark.timeout(HANG_TIMEOUT_S)
def test_extreme_but_accepted_weights_and_rates_keep_their_promises():
    huge = pf.mux([forever("a"), forever("b")], 1, rate=4, weights=[3e307, 1e307], seed=0)
    assert round(list(huge | pf.take(8000)).count("a") / 8000, 1) == 0.8
    tiny = pf.shuffled_mux([forever("a"), forever("b")], weights=[3e-300, 1e-300], seed=0)
    assert round(list(tiny | pf.take(8000)).count("a") / 8000, 1) == 0.8
    letters = [pf.from_iterable("ab"), pf.from_iterable("cde"), pf.from_iterable("f")]
    exhaustive = pf.mux(letters, 2, mode="exhaustive", weights=[1e-300, 1e300, 1], seed=0)
    assert sorted(exhaustive) == list("abcdef")
    assert len(list(pf.mux([forever("x")], 1, rate=0.001, seed=0) | pf.take(3))) == 3


def test_streams_must_be_a_list():
    with pytest.raises(TypeError, match="list or tuple of streams"):
        pf.mux(pf.from_iterable([1]), 1)
    with pytest.raises(TypeError, match=r"pf\.stream"):
        pf.mux([x for x in range(2)] and [iter([1])], 1)


@pytest.mark.timeout(HANG_TIMEOUT_S)
@pytest.mark.parametrize("mode", ["with_replacement", "single_active", "exhaustive"])
def test_finite_sources_that_run_out_mid_pass_end_the_mux(mode):
    sources = [pf.from_iterable(range(3)), pf.from_iterable([]), pf.from_iterable(range(5))]
    s = pf.mux(sources, 2, rate=None, mode=mode, seed=0)
    out = list(s | pf.take(50))
    if mode == "exhaustive":  # every item once, then the end
        assert sorted(out) == [0, 0, 1, 1, 2, 2, 3, 4]
    else:  # finite sources restart as fresh passes: the mux keeps going
        assert len(out) == 50 and set(out) == {0, 1, 2, 3, 4}


def test_shuffled_mux_shares_hold_for_short_finite_streams():
    # A stream that ends restarts within the same draw, so short streams are not under-weighted.
    out = list(pf.shuffled_mux([pf.from_iterable("a"), pf.from_iterable("xyz")], seed=1) | pf.take(40_000))
    assert abs(out.count("a") / len(out) - 0.5) < 0.01


def test_an_unseeded_mux_over_unseeded_sources_differs_every_pass():
    sources = [pf.from_iterable(range(i * 100, i * 100 + 30)) | pf.shuffle(30) for i in range(3)]
    unseeded = pf.mux(sources, 2, rate=5) | pf.take(200)
    assert list(unseeded) != list(unseeded)


# ------------------------------------------------------------------ divided among background workers


def divided(stream, count):
    return [stream._divide(i, count) for i in range(count)]


def test_a_divided_mux_shares_out_its_sources_and_its_working_set():
    modes = ["with_replacement", "single_active", "exhaustive"]
    for n_streams, n_active, count, mode in itertools.product(range(1, 8), range(1, 9), range(1, 5), modes):
        if mode != "with_replacement" and n_active > n_streams:
            continue
        sources = [pf.from_iterable([i]) for i in range(n_streams)]
        weights = [1 + i % 3 for i in range(n_streams)]
        m = pf.mux(sources, n_active, rate=3, weights=weights, mode=mode, seed=0)
        parts = divided(m, count)
        muxes = [(part, w) for part, w in parts if w > 0]
        case = (n_streams, n_active, count, mode)
        assert len(muxes) == min(count, n_active, n_streams), case
        assert sum(part.n_active for part, _ in muxes) == n_active, case
        assert sorted(id(s) for part, _ in muxes for s in part.streams) == sorted(map(id, sources)), case
        assert [w for _, w in muxes] == [sum(part.weights) for part, _ in muxes], case
        for part, w in parts:
            if w == 0:
                assert list(part) == [], case
        if mode == "exhaustive":  # each source's activation keeps its mean length
            for part, _ in muxes:
                for w in part.weights:
                    mean = part.rate * len(part.streams) * w / sum(part.weights)
                    assert mean == pytest.approx(3 * n_streams * w / sum(weights)), case


def test_a_divided_shuffled_mux_deals_its_sources_among_at_most_as_many_parts():
    sources = [pf.from_iterable([i]) for i in range(2)]
    parts = divided(pf.shuffled_mux(sources, weights=[3, 1], seed=0), 3)
    assert [w for _, w in parts] == [3.0, 1.0, 0.0]
    assert [len(part.streams) for part, _ in parts[:2]] == [1, 1] and list(parts[2][0]) == []
    assert "no sources" in repr(parts[2][0])


def counted_sources(folder, n):
    """``n`` infinite sources that record, in a file any process can lock, how many are open at once."""
    path = str(folder / "open-sources")
    with open(path, "w") as f:
        f.write("0 0")

    def bump(delta):
        import fcntl

        with open(path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            now, most = map(int, f.read().split())
            f.seek(0)
            f.truncate()
            f.write(f"{now + delta} {max(most, now + delta)}")

    def items(label):
        bump(1)
        try:
            while True:
                yield label
        finally:
            bump(-1)

    def most_open():
        with open(path) as f:
            return int(f.read().split()[1])

    return [pf.stream(items, i) for i in range(n)], most_open


BACKGROUND_TIMEOUT_S = 120


@pytest.mark.timeout(BACKGROUND_TIMEOUT_S)
@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
@pytest.mark.parametrize(
    "n_streams, n_active, workers", [(6, 2, 3), (6, 1, 3), (6, 3, 2), (2, 2, 3), (5, 4, 3)]
)
def test_background_keeps_n_active_for_the_whole_pipeline(
    tmp_path, start_method, n_streams, n_active, workers
):
    sources, most_open = counted_sources(tmp_path, n_streams)
    s = pf.mux(sources, n_active, rate=3, seed=0) | pf.background(workers=workers, start_method=start_method)
    out = list(s | pf.take(600))
    assert most_open() <= n_active
    assert sorted(set(out)) == list(range(n_streams))  # every source had its chance


@pytest.mark.timeout(BACKGROUND_TIMEOUT_S)
@pytest.mark.parametrize("n_active", [1, 2])
def test_background_over_an_exhaustive_mux_with_fewer_active_than_workers_yields_every_item_once(n_active):
    sizes = [0, 5, 17, 1, 40, 3, 8]
    sources = [pf.from_iterable([(i, j) for j in range(size)]) for i, size in enumerate(sizes)]
    s = pf.mux(sources, n_active, mode="exhaustive", seed=3) | pf.background(workers=3)
    out = list(s)
    assert sorted(out) == [(i, j) for i, size in enumerate(sizes) for j in range(size)]
    assert out == list(s)  # same seed, same workers: same output


@pytest.mark.timeout(BACKGROUND_TIMEOUT_S)
@pytest.mark.parametrize("mode", ["with_replacement", "single_active"])
def test_background_keeps_weights_as_output_shares_with_fewer_active_than_workers(mode):
    labels = "abcd"
    s = pf.mux([forever(c) for c in labels], 2, rate=4, weights=WEIGHTS, mode=mode, seed=0)
    out = list(s | pf.background(workers=3) | pf.take(20_000))
    assert np.abs(shares(out, labels) - EXPECTED).max() < 0.02


@pytest.mark.timeout(BACKGROUND_TIMEOUT_S)
def test_background_over_a_shuffled_mux_with_fewer_sources_than_workers_keeps_the_weights():
    s = pf.shuffled_mux([forever("a"), forever("b")], weights=[3, 1], seed=0) | pf.background(workers=3)
    out = list(s | pf.take(8000))
    assert np.abs(shares(out, "ab") - [0.75, 0.25]).max() < 0.02


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rate", [0.3, 2, None])
def test_single_active_without_pruning_keeps_going_when_slots_outnumber_the_sources_with_items(rate):
    sizes = [3, 0, 7, 1, 12, 5, 0, 9]
    sources = [pf.from_iterable(range(i * 100, i * 100 + n)) for i, n in enumerate(sizes)]
    s = pf.mux(sources, 8, rate=rate, mode="single_active", prune_empty=False, seed=0) | pf.take(1000)
    out = list(s)
    assert len(out) == 1000
    assert set(out) == {i * 100 + j for i, n in enumerate(sizes) for j in range(n)}
