"""stats() and head() at their edges: zero-copy views, a background opened again, closed and failed
passes, stages that print alike (found by a red-team review of issue 11)."""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any

import numpy as np
import pytest

import pescador_fp as pf


def _slow(x):
    time.sleep(0.002)
    return x


def _even(x):
    return x % 2 == 0


def _big(i):
    return np.full(16384, i, np.float32)


def _arr(i):
    return np.full(64, i, np.float32)


def test_head_of_a_background_returns_the_first_items() -> None:
    s = pf.from_iterable(range(100)) | pf.map(_big) | pf.background(workers=1, ring_bytes=300000)
    got = s.head(20)
    assert [int(x[0]) for x in got] == list(range(20))


def test_worker_rows_add_up_over_reopenings_like_stage_rows() -> None:
    s = pf.from_iterable(range(50)) | pf.map(_arr) | pf.background(workers=2) | pf.cycle(3)
    it = s.iterate(seed=0)
    assert sum(1 for _ in it) == 150
    assert sum(r["items"] for r in it.stats()["workers"]) == 150


def test_worker_items_per_s_stay_as_they_were_after_close() -> None:
    s = pf.from_iterable(range(200)) | pf.map(_arr) | pf.background(workers=2)
    it = s.iterate(seed=0)
    for _ in range(20):
        next(it)
    it.close()
    before = [r["items_per_s"] for r in it.stats()["workers"]]
    time.sleep(0.5)
    assert [r["items_per_s"] for r in it.stats()["workers"]] == before


def test_two_muxes_with_the_same_repr_are_listed_apart() -> None:
    def mk():
        return pf.mux(
            [pf.from_iterable(range(3)), pf.from_iterable(range(4))], n_active=1, mode="exhaustive", seed=0
        )

    it = (pf.round_robin([mk(), mk()]) | pf.map(abs)).iterate(seed=0)
    list(it)
    assert str(it.stats()).count("sources of mux(") == 2
    assert str(it.stats()).count("sources of round_robin(") == 1


# ---------------------------------------------------------------- every multiplexer's sources

LENGTHS = [3, 0, 5, 8]  # source i yields 1000 * i, 1000 * i + 1, ...; source 1 is empty


def tagged() -> list[pf.Stream[int]]:
    return [pf.from_iterable(range(1000 * i, 1000 * i + n)) for i, n in enumerate(LENGTHS)]


MULTIPLEXERS = {
    "mux": lambda s: pf.mux(s, n_active=2, rate=3, seed=0),
    "mux-exhaustive": lambda s: pf.mux(s, n_active=2, rate=None, mode="exhaustive", seed=0),
    "shuffled_mux": lambda s: pf.shuffled_mux(s, weights=[1, 1, 2, 3], seed=0),
    "round_robin": lambda s: pf.round_robin(s),
    "round_robin-cycle": lambda s: pf.round_robin(s, "cycle"),
    "round_robin-permuted_cycle": lambda s: pf.round_robin(s, "permuted_cycle", seed=0),
    "chain": lambda s: pf.chain(s),
    "chain-cycle": lambda s: pf.chain(s, "cycle"),
}


def given_by_source(out: list[int]) -> list[int]:
    counts = collections.Counter(x // 1000 for x in out)
    return [counts[i] for i in range(len(LENGTHS))]


def source_rows(it: pf.Pass[Any]) -> list[tuple[str, int, int]]:
    return [(r["source"], r["items"], r["activations"]) for r in it.stats()["sources"]]


@pytest.mark.parametrize("above", [None, pf.map(abs)], ids=["alone", "under-a-map"])
@pytest.mark.parametrize("make", MULTIPLEXERS.values(), ids=MULTIPLEXERS.keys())
def test_every_multiplexer_counts_what_came_from_each_source_while_it_runs(make: Any, above: Any) -> None:
    m = make(tagged())
    it = (m if above is None else m | above).iterate(seed=0)
    assert it.stats()["sources"] == []  # a fresh pass has opened nothing
    out: list[int] = []
    for stop in [1, 2, 4, 7, 11, 16, 40]:
        out += itertools.islice(it, stop - len(out))
        rows = it.stats()["sources"]
        assert len(rows) == len(LENGTHS)
        assert all(repr(s).startswith(r["source"].rstrip("…")) for r, s in zip(rows, m.children))
        assert [r["items"] for r in rows] == given_by_source(out), (stop, out)
    it.close()
    assert [r["items"] for r in it.stats()["sources"]] == given_by_source(out)


def test_round_robin_and_chain_activate_each_source_once_a_round() -> None:
    for m in [pf.round_robin(tagged()), pf.chain(tagged())]:
        it = m.iterate()
        assert source_rows(it) == []
        out = list(it)
        assert sorted(out) == sorted(x for s in tagged() for x in s)
        assert [(items, acts) for _, items, acts in source_rows(it)] == [(n, 1) for n in LENGTHS]
    rounds = sum(LENGTHS)
    it = pf.round_robin(tagged(), "cycle").iterate()
    assert len(list(itertools.islice(it, 3 * rounds + 1))) == 3 * rounds + 1
    # The fourth round has opened its first source only.
    assert [acts for _, _, acts in source_rows(it)] == [4, 3, 3, 3]
    it = pf.chain(tagged(), "cycle").iterate()
    out = list(itertools.islice(it, rounds + 4))  # the second round is in its third source
    assert [(items, acts) for _, items, acts in source_rows(it)] == [(6, 2), (0, 2), (6, 2), (8, 1)]
    assert [r[1] for r in source_rows(it)] == given_by_source(out)


def test_shuffled_mux_counts_a_pass_of_a_source_as_an_activation() -> None:
    it = pf.shuffled_mux(tagged(), weights=[1, 1, 2, 3], seed=0).iterate()
    out = list(itertools.islice(it, 500))
    rows = source_rows(it)
    assert [items for _, items, _ in rows] == given_by_source(out)
    # A source restarts when a pick finds it ended; the empty one was opened once, then dropped.
    expected = [-(-items // n) if n else 1 for (_, items, _), n in zip(rows, LENGTHS)]
    assert [acts for _, _, acts in rows] == expected


def test_chain_of_a_stream_of_streams_has_one_source_row() -> None:
    streams = pf.from_iterable(tagged())
    it = pf.chain(streams, "cycle").iterate()
    out = list(itertools.islice(it, 20))  # all of the first round (16), then the first 4 again
    ((name, items, activations),) = source_rows(it)
    assert repr(streams).startswith(name.rstrip("…")) and (items, activations) == (20, 7)
    assert len(out) == 20


@pytest.mark.parametrize("make", MULTIPLEXERS.values(), ids=MULTIPLEXERS.keys())
def test_counting_a_multiplexers_sources_changes_nothing_it_yields(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pescador_fp import _stats

    s = make(tagged()) | pf.take(60)
    counted = list(s.iterate(seed=1))
    monkeypatch.setattr(_stats, "ENABLED", False)
    it = s.iterate(seed=1)
    assert list(it) == counted
    assert it.stats()["sources"] == []
