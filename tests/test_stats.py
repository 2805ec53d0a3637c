"""``it.stats()``: what a pass counts, and whether it names where the time goes."""

from __future__ import annotations

import collections
import gc
import importlib.util
import itertools
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import Recorder, nothing_left_behind

import pescador_fp as pf

SLEEP_S = 0.002


def slow(x: Any) -> Any:
    time.sleep(SLEEP_S)
    return x


def plus_one(x: int) -> int:
    return x + 1


def is_even(x: int) -> bool:
    return x % 2 == 0


def slow_array(i: int) -> np.ndarray:
    time.sleep(SLEEP_S)
    return np.full(4096, i, np.float32)


def fast_array(i: int) -> np.ndarray:
    return np.full(4096, i, np.float32)


def row(stats: pf.Pass[Any] | dict[str, Any], stage: str) -> dict[str, Any]:
    rows = [r for r in stats["stages"] if r["stage"] == stage]  # type: ignore[index]
    assert len(rows) == 1, stats
    return rows[0]


# ---------------------------------------------------------------- stages


def test_a_slow_map_among_cheap_stages_is_named_as_where_the_time_goes() -> None:
    s = pf.from_iterable(range(60)) | pf.map(plus_one) | pf.map(slow) | pf.filter(is_even) | pf.map(plus_one)
    it = s.iterate(seed=0)
    assert len(list(it)) == 30
    stats = it.stats()
    heaviest = max(stats["stages"], key=lambda r: r["self_s"])
    assert heaviest["stage"] == "map(slow)"
    # The stages below the slow map take less of the time than it, those above it include it.
    assert row(stats, "filter(is_even)")["seconds"] >= row(stats, "map(slow)")["self_s"]
    assert row(stats, "filter(is_even)")["self_s"] < heaviest["self_s"] / 10
    assert [r["items"] for r in stats["stages"]] == [30, 30, 60, 60]
    assert "where the time goes: map(slow)" in str(stats)
    assert stats["taken"] == 30
    assert stats["waiting_s"] > stats["consumer_s"]


def test_a_slow_consumer_shows_as_its_own_time_not_the_stages() -> None:
    it = (pf.from_iterable(range(30)) | pf.map(plus_one)).iterate()
    for _ in it:
        time.sleep(SLEEP_S)
    stats = it.stats()
    assert stats["consumer_s"] > stats["waiting_s"]
    assert "ran its own loop" in str(stats)


def test_a_cheap_stage_counts_every_item_while_timing_few() -> None:
    it = (pf.from_iterable(range(10_000)) | pf.map(plus_one)).iterate()
    assert sum(1 for _ in it) == 10_000
    (stage,) = it.stats()["stages"]
    assert stage["items"] == 10_000
    assert 0 < stage["self_s"] <= it.stats()["seconds"]


def test_stats_of_a_fresh_pass_say_nothing_was_taken() -> None:
    it = (pf.from_iterable(range(5)) | pf.map(plus_one)).iterate()
    stats = it.stats()
    assert stats["taken"] == 0 and stats["seconds"] == 0.0 and stats["stages"] == []
    assert str(stats).startswith("pass: 0 items taken")


def test_stats_after_the_pass_ended_stop_counting_time() -> None:
    it = (pf.from_iterable(range(50)) | pf.map(plus_one) | pf.batch(10)).iterate()
    assert len(list(it)) == 5
    first = it.stats()
    time.sleep(SLEEP_S)
    again = it.stats()
    assert first["seconds"] == again["seconds"] > 0
    assert [(r["stage"], r["items"]) for r in again["stages"]] == [("batch(10)", 5), ("map(plus_one)", 50)]


def test_stats_after_close_count_what_was_taken() -> None:
    it = iter(pf.from_iterable(range(1000)) | pf.map(plus_one))
    assert isinstance(it, pf.Pass)
    taken = [next(it) for _ in range(100)]
    it.close()
    stats = it.stats()
    assert stats["taken"] == len(taken) == 100
    assert row(stats, "map(plus_one)")["items"] == 100
    time.sleep(SLEEP_S)
    assert it.stats()["seconds"] == stats["seconds"]


def test_a_stage_opened_again_by_cycle_adds_up_in_one_row() -> None:
    it = (pf.from_iterable(range(10)) | pf.map(plus_one) | pf.cycle(3)).iterate()
    assert len(list(it)) == 30
    assert row(it.stats(), "map(plus_one)")["items"] == 30


def test_stats_are_a_dict_of_plain_numbers() -> None:
    it = (pf.from_iterable(range(20)) | pf.map(plus_one)).iterate()
    list(it)
    stats = it.stats()
    assert isinstance(stats, dict)
    assert set(stats) == {"taken", "seconds", "waiting_s", "consumer_s", "stages", "workers", "sources"}
    assert set(stats["stages"][0]) == {"stage", "items", "seconds", "self_s", "source"}
    assert stats["stages"][0]["source"] is True  # its own time includes from_iterable's


class Calls:
    """A map function that counts its calls: what a map stage has given, at any moment."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, x: int) -> int:
        self.n += 1
        return x

    def __repr__(self) -> str:
        return "calls"


STOPS = [1, 2, 3, 17, 18, 50, 64, 333, 1000]


def taken_at_stops(it: pf.Pass[Any]) -> Iterator[int]:
    """Take items from ``it`` up to each of ``STOPS`` in turn, yielding the number taken."""
    taken = 0
    for stop in STOPS:
        assert sum(1 for _ in itertools.islice(it, stop - taken)) == stop - taken
        taken = stop
        yield taken


def test_cheap_stages_count_every_item_exactly_while_the_pass_runs() -> None:
    s = pf.from_iterable(range(10_000)) | pf.map(plus_one) | pf.filter(is_even) | pf.map(plus_one)
    it = s.iterate(seed=0)
    for taken in taken_at_stops(it):
        # The k-th even x + 1 comes from x = 2k - 1: the map below the filter gave 2k items.
        assert [r["items"] for r in it.stats()["stages"]] == [taken, taken, 2 * taken], taken
    it.close()
    assert [r["items"] for r in it.stats()["stages"]] == [1000, 1000, 2000]


@pytest.mark.parametrize(
    "above",
    [
        pytest.param(lambda stage: stage, id="alone"),
        pytest.param(lambda stage: stage | pf.take(5) | pf.cycle(), id="opened-again-by-cycle"),
        pytest.param(
            lambda stage: pf.mux([stage], n_active=3, rate=7, seed=0), id="open-three-times-at-once-in-a-mux"
        ),
    ],
)
def test_a_cheap_stage_mid_pass_counts_what_its_function_made(above: Any) -> None:
    calls = Calls()
    stage = pf.from_iterable(range(100_000)) | pf.map(calls)
    it = above(stage).iterate(seed=0)
    for taken in taken_at_stops(it):
        assert row(it.stats(), "map(calls)")["items"] == calls.n >= taken
    it.close()
    assert row(it.stats(), "map(calls)")["items"] == calls.n


def test_a_dropped_pass_closes_its_counted_stages_at_once() -> None:
    # The stages are followed for their exact counts weakly: dropping the pass still closes them
    # when the last reference goes, without waiting for the garbage collector.
    source = Recorder(None)
    it = (source.stream() | pf.map(plus_one) | pf.map(plus_one)).iterate()
    for _ in range(40):
        next(it)
    gc.disable()
    try:
        del it
        assert source.closed == 1
    finally:
        gc.enable()


def test_a_mid_pass_time_estimate_counts_the_run_under_way() -> None:
    it = (pf.from_iterable(range(1000)) | pf.map(plus_one)).iterate()
    for _ in range(10):  # inside the first untimed run
        next(it)
    (stage,) = it.stats()["stages"]
    assert stage["items"] == 10
    assert 0 < stage["seconds"] <= it.stats()["seconds"]


# ---------------------------------------------------------------- background


def background_stats(source: Any, consumer_sleep_s: float) -> dict[str, Any]:
    s = pf.from_iterable(range(100)) | pf.map(source) | pf.background(workers=2, ring_bytes=2**18)
    it = s.iterate(seed=0)
    for _ in it:
        if consumer_sleep_s:
            time.sleep(consumer_sleep_s)
    stats = it.stats()
    assert stats["taken"] == 100
    assert [w["worker"] for w in stats["workers"]] == [0, 1]
    assert sum(w["items"] for w in stats["workers"]) == 100
    assert all(w["items_per_s"] > 0 for w in stats["workers"])
    return stats


# Long enough that the workers' start (part of the consumer's wait, 0.1-0.4 s on a loaded machine) cannot
# outweigh what the slow side adds: 100 items of 10 ms, over 2 workers or in the consumer.
SLOW_SIDE_S = 0.01


def slower_array(i: int) -> np.ndarray:
    time.sleep(SLOW_SIDE_S)
    return np.full(4096, i, np.float32)


def test_background_waits_on_a_slow_producer_and_not_on_a_fast_one() -> None:
    with nothing_left_behind():
        slow_producer = background_stats(slower_array, 0.0)
        slow_consumer = background_stats(fast_array, SLOW_SIDE_S)

    def waited(stats: dict[str, Any]) -> float:
        return sum(w["waited_s"] for w in stats["workers"])

    def fill(stats: dict[str, Any]) -> float:
        return sum(w["ring_fill"] for w in stats["workers"]) / len(stats["workers"])

    assert waited(slow_producer) > waited(slow_consumer)
    assert slow_producer["waiting_s"] / slow_producer["seconds"] > (
        slow_consumer["waiting_s"] / slow_consumer["seconds"]
    )
    assert fill(slow_consumer) > fill(slow_producer)
    assert "workers of background(workers=2, ring_bytes=262144):" in str(slow_consumer)
    # The slow producer's pass is spent waiting on background: it is where the time goes.
    heaviest = max(slow_producer["stages"], key=lambda r: r["self_s"])
    assert heaviest["stage"].startswith("background(")


def test_a_consumer_that_waits_little_on_background_is_where_the_time_goes() -> None:
    # The table marked background while the consumer's own loop had most of the pass (it waited 18 %).
    with nothing_left_behind():
        stats = background_stats(fast_array, 10 * SLEEP_S)
    assert stats["consumer_s"] > stats["waiting_s"]
    text = str(stats)
    assert "where the time goes: the consumer's loop" in text
    assert "* background(" not in text


class _Printer:
    """What IPython hands ``_repr_pretty_`` (IPython.lib.pretty.PrettyPrinter), as far as it is used."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, part: str) -> None:
        self.parts.append(part)


def test_stats_show_as_a_table_in_notebooks_and_ipython() -> None:
    s = pf.from_iterable(range(50)) | pf.map(plus_one) | pf.map(slow)
    it = s.iterate(seed=0)
    list(it)
    stats = it.stats()
    printer = _Printer()
    stats._repr_pretty_(printer, False)
    assert "".join(printer.parts) == str(stats)  # not the raw dict
    if importlib.util.find_spec("IPython") is not None:  # (the progress extra brings it)
        from IPython.lib.pretty import pretty

        assert pretty(stats) == str(stats)
    html = stats._repr_html_()
    assert html.count("<table>") == 1 and "<th>own time</th>" in html
    assert "<td>map(slow)</td>" in html.replace("<td>* ", "<td>") and "where the time goes: map(slow)" in html


def test_background_stats_after_close_keep_their_numbers() -> None:
    with nothing_left_behind():
        it = (pf.from_iterable(range(1000)) | pf.map(fast_array) | pf.background(workers=2)).iterate()
        for _ in range(10):
            next(it)
        it.close()
    stats = it.stats()
    assert stats["taken"] == 10
    assert sum(w["items"] for w in stats["workers"]) == 10


# ---------------------------------------------------------------- multiplexers


def sources() -> list[pf.Stream[int]]:
    return [pf.from_iterable(range(100 * i, 100 * i + 3 + i)) for i in range(5)]


def test_exhaustive_mux_activates_each_source_once_and_gives_all_its_items() -> None:
    m = pf.mux(sources(), n_active=2, rate=None, mode="exhaustive", seed=1)
    it = m.iterate()
    out = list(it)
    rows = it.stats()["sources"]
    assert [r["activations"] for r in rows] == [1] * 5
    assert [r["items"] for r in rows] == [3, 4, 5, 6, 7]
    assert sum(r["items"] for r in rows) == len(out)
    assert "sources of mux(" in str(it.stats())


def test_seeded_mux_counts_are_deterministic_and_match_what_came_out() -> None:
    s = pf.mux(sources(), n_active=2, rate=2, seed=3) | pf.map(plus_one)

    def run() -> tuple[list[Any], list[tuple[int, int]]]:
        it = s.iterate(seed=0)
        out = list(itertools.islice(it, 200))
        rows = it.stats()["sources"]
        return out, [(r["items"], r["activations"]) for r in rows]

    out, counts = run()
    assert run() == (out, counts)
    by_source = collections.Counter((x - 1) // 100 for x in out)
    assert [items for items, _ in counts] == [by_source[i] for i in range(5)]
    assert sum(items for items, _ in counts) == 200
    assert all(activations >= 1 for _, activations in counts)


def test_mux_counts_on_a_fresh_pass_and_after_close() -> None:
    m = pf.mux(sources(), n_active=3, rate=None, mode="exhaustive", seed=1)
    it = m.iterate()
    assert it.stats()["sources"] == []
    taken = [next(it) for _ in range(4)]
    mid = it.stats()["sources"]
    assert sum(r["items"] for r in mid) == len(taken)
    it.close()
    assert it.stats()["sources"] == mid


@pytest.mark.parametrize("flag", [True, False])
def test_counting_can_be_switched_off_for_benchmarks(flag: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from pescador_fp import _stats

    monkeypatch.setattr(_stats, "ENABLED", flag)
    it = (pf.mux(sources(), n_active=2, rate=None, mode="exhaustive", seed=1) | pf.map(plus_one)).iterate()
    assert len(list(it)) == 25
    stats = it.stats()
    assert bool(stats["stages"]) == bool(stats["sources"]) == flag


def test_worker_items_do_not_count_the_rows_left_over_for_the_consumer():
    # Each worker's 5 rows give one batch of 4; the row left over goes to the consumer, not as an item.
    s = pf.from_arrays(np.arange(10)) | pf.batch(4) | pf.background(workers=2)
    it = s.iterate()
    assert len(list(it)) == 2
    assert [w["items"] for w in it.stats()["workers"]] == [1, 1]
