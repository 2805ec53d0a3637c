"""Resuming a pass from its state: the rest of the pass, exactly, for every operator and source."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pescador_fp as pf
from tests.helpers import nothing_left_behind


def same(a: Any, b: Any) -> bool:
    """Equal items, arrays compared by value (and dtype), containers element by element."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b)
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


def resumed_rest(stream: pf.Stream[Any], seed: object, k: int) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Take ``k`` items and save the state through JSON: (the rest, the rest resumed, the state)."""
    it = stream.iterate(seed=seed)
    taken = list(itertools.islice(it, k))
    state = json.loads(json.dumps(it.state()))
    rest = list(it)
    resumed = list(stream.iterate(seed=seed, state=state))
    assert len(taken) == min(k, len(taken) + len(rest))
    return rest, resumed, state


def assert_resumes(stream: pf.Stream[Any], seed: object = 7, points: int = 6) -> None:
    whole = list(stream.iterate(seed=seed))
    for k in sorted({0, len(whole), *np.linspace(0, len(whole), points).astype(int).tolist()}):
        rest, resumed, _ = resumed_rest(stream, seed, k)
        assert same(rest, resumed), (stream, k)
        assert same(rest, whole[k:]), (stream, k)


def numbers(n: int) -> Any:
    yield from range(n)


def seekable_numbers(n: int, *, start: int) -> Any:
    yield from range(start, n)


def arrays(i: int, n: int) -> pf.Stream[Any]:
    return pf.from_arrays({"x": np.arange(i * 100, i * 100 + n, dtype=np.float32), "i": np.full(n, i)})


# ---------------------------------------------------------------- every operator and source

SOURCES: dict[str, Callable[[], pf.Stream[Any]]] = {
    "from_iterable": lambda: pf.from_iterable(list(range(23))),
    "range": lambda: pf.from_iterable(range(23)),
    "from_arrays": lambda: pf.from_arrays(np.arange(23)),
    "stream": lambda: pf.stream(numbers, 23),
    "seekable_stream": lambda: pf.seekable_stream(seekable_numbers, 23),
    "random_stream": lambda: pf.random_stream(lambda n, *, rng: iter(rng.integers(0, 99, n).tolist()), 23),
}

OPERATORS: dict[str, Callable[[], pf.Operator[Any, Any]]] = {
    "map": lambda: pf.map(lambda x: ("m", x)),
    "map_rng": lambda: pf.map(lambda x, rng: (x, int(rng.integers(1000))), rng=True),
    "filter": lambda: pf.filter(lambda x: len(repr(x)) % 3 != 1),
    "mapcat": lambda: pf.mapcat(lambda x: [x, x]),
    "take": lambda: pf.take(17),
    "skip": lambda: pf.skip(5),
    "cycle": lambda: pf.cycle(2),
    "shuffle": lambda: pf.shuffle(5),
    "batch": lambda: pf.batch(4),
    "batch_partial": lambda: pf.batch(4, partial=True) | pf.unbatch(),
    "cache": lambda: pf.cache(4, seed=3),
    "tuples": lambda: pf.map(lambda x: {"a": x}) | pf.tuples("a"),
    "shard": lambda: pf.shard(1, 2),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_source_resumes(source: str) -> None:
    assert_resumes(SOURCES[source]())


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_every_operator_resumes(op: str) -> None:
    for source in ("from_iterable", "from_arrays", "stream"):
        assert_resumes(SOURCES[source]() | OPERATORS[op]())


@pytest.mark.parametrize("mode", ["with_replacement", "single_active", "exhaustive"])
@pytest.mark.parametrize("dist", ["constant", "binomial", "poisson"])
def test_mux_resumes_in_every_mode_and_dist(mode: str, dist: str) -> None:
    weights = [1, 2, 0.5, 3, 1, 1]
    for sources in (
        [arrays(i, 2 * i) for i in range(6)],  # lengths known: counted, not read
        [pf.stream(numbers, i) for i in range(6)],  # lengths unknown: run
    ):
        for prune_empty in (True, False):
            rate = None if mode == "exhaustive" and dist == "constant" else 2.5
            m = pf.mux(
                sources, 3, rate, weights=weights, mode=mode, dist=dist, prune_empty=prune_empty, seed=4
            )
            if mode != "exhaustive":
                m = m | pf.take(60)
            assert_resumes(m)


def test_other_multiplexers_resume() -> None:
    sources = [pf.from_iterable(range(10 * i, 10 * i + i + 1)) for i in range(4)]
    assert_resumes(pf.shuffled_mux(sources, [1, 2, 3, 4]) | pf.take(40))
    for mode in ("exhaustive", "cycle", "permuted_cycle"):
        assert_resumes(pf.round_robin(sources, mode) | pf.take(30))
    assert_resumes(pf.chain(sources))
    assert_resumes(pf.chain(sources, "cycle") | pf.take(30))


def test_a_state_is_small_and_holds_no_samples() -> None:
    big = np.full((64, 1000), 7.0)
    s = pf.mux([pf.from_arrays(big) for _ in range(50)], 8, 16, seed=0) | pf.shuffle(32) | pf.batch(4)
    it = s.iterate(seed=1)
    list(itertools.islice(it, 40))
    text = json.dumps(it.state())
    assert len(text) < 1024
    assert "7.0" not in text


def test_state_at_the_start_and_at_the_end() -> None:
    s = pf.from_iterable(range(10)) | pf.shuffle(3)
    it = s.iterate(seed=2)
    assert list(s.iterate(seed=2, state=it.state())) == list(s.iterate(seed=2))
    everything = list(it)
    assert list(s.iterate(seed=2, state=it.state())) == []
    assert it.state()["items"] == len(everything)


def test_an_unseeded_pass_resumes_with_its_own_randomness() -> None:
    s = pf.from_iterable(range(40)) | pf.shuffle(8) | pf.map(lambda x, rng: (x, rng.random()), rng=True)
    it = iter(s)
    list(itertools.islice(it, 13))
    state = json.loads(json.dumps(it.state()))
    assert list(s.iterate(state=state)) == list(it)
    assert list(s.iterate()) != list(s.iterate())  # still random from pass to pass


def test_a_resumed_pass_can_be_saved_and_resumed_again() -> None:
    s = pf.mux([arrays(i, 9) for i in range(5)], 2, 3, seed=1) | pf.take(40) | pf.shuffle(4)
    whole = list(s.iterate(seed=0))
    it = s.iterate(seed=0)
    list(itertools.islice(it, 7))
    again = s.iterate(seed=0, state=it.state())
    list(itertools.islice(again, 11))
    assert same(list(s.iterate(seed=0, state=again.state())), whole[18:])


# ---------------------------------------------------------------- refusals


def test_another_pipeline_or_seed_is_refused() -> None:
    s = pf.from_iterable(list(range(10))) | pf.shuffle(4) | pf.batch(2)
    it = s.iterate(seed=1)
    next(it)
    state = it.state()
    with pytest.raises(ValueError, match=r"another pipeline \(stage 1: the state has 'shuffle\(4\)'"):
        (pf.from_iterable(list(range(10))) | pf.shuffle(5) | pf.batch(2)).iterate(seed=1, state=state)
    with pytest.raises(
        ValueError,
        match=r"print the same, but their sources' data, their functions or their arguments differ",
    ):
        (pf.from_iterable([0] * 10) | pf.shuffle(4) | pf.batch(2)).iterate(seed=1, state=state)
    with pytest.raises(ValueError, match="seed=1, not seed=2"):
        s.iterate(seed=2, state=state)
    with pytest.raises(ValueError, match="seed=1, not seed=None"):
        s.iterate(state=state)
    with pytest.raises(ValueError, match=r"saved by pescador_fp '0\.0\.1'"):
        s.iterate(seed=1, state={**state, "version": "0.0.1"})
    with pytest.raises(ValueError, match="format"):
        s.iterate(seed=1, state={"items": 3})
    with pytest.raises(TypeError, match="state must be the dict"):
        s.iterate(seed=1, state=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="item count must be an int >= 0, got -1"):
        s.iterate(seed=1, state={**state, "items": -1})


def test_seekable_stream_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="fn must be callable, got 3"):
        pf.seekable_stream(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="start is passed to seekable_numbers by the stream"):
        pf.seekable_stream(seekable_numbers, 3, start=1)


# ---------------------------------------------------------------- what is replayed and what is not


@pytest.mark.parametrize("length", [10, None])
def test_seekable_sources_are_not_replayed(tmp_path: Any, length: int | None) -> None:
    read = tmp_path / "read"

    def lines(n: int, *, start: int) -> Any:
        for i in range(start, n):
            with open(read, "a") as f:
                f.write(f"{i}\n")
            yield i

    sources = [pf.seekable_stream(lines, 10, length=length) for _ in range(3)]
    s = pf.mux(sources, 2, None, mode="exhaustive", seed=0)
    it = s.iterate(seed=0)
    list(itertools.islice(it, 14))
    state = it.state()
    rest = list(it)
    read.unlink()
    assert list(s.iterate(seed=0, state=state)) == rest
    lines_read = len(read.read_text().split())
    if length is not None:
        assert lines_read == len(rest)  # the open sources were opened at their places
    else:
        assert lines_read > len(rest)  # the mux ran them to see where they end


def test_a_map_over_arrays_is_not_run_again_for_items_already_taken(tmp_path: Any) -> None:
    seen = tmp_path / "seen"

    def record(x: Any) -> Any:
        with open(seen, "a") as f:
            f.write(f"{int(x)}\n")
        return x

    s = pf.mux([pf.from_arrays(np.arange(10 * i, 10 * i + 10)) for i in range(4)], 2, 3, seed=1) | pf.take(30)
    s = s | pf.map(record) | pf.batch(3)
    it = s.iterate(seed=0)
    taken = list(itertools.islice(it, 5))
    state = it.state()
    seen.unlink()
    rest = list(s.iterate(seed=0, state=state))
    assert len(seen.read_text().split()) == 30 - 15  # only the items of the rest were mapped
    assert same(taken + rest, list(s.iterate(seed=0)))


# ---------------------------------------------------------------- background


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_background_resumes_each_worker_where_the_consumer_left_it(workers: int, tmp_path: Any) -> None:
    seen = tmp_path / "seen"

    def record(batch: Any) -> Any:
        with open(seen, "a") as f:
            f.write(f"{os.getpid()}\n")
        return batch

    s = (
        pf.mux([arrays(i, 3 + 2 * i) for i in range(8)], 4, 3, mode="exhaustive", weights=range(1, 9), seed=2)
        | pf.shuffle(6)
        | pf.batch(3)
        | pf.map(record)
        | pf.background(workers=workers)
    )
    with nothing_left_behind():
        whole = list(s.iterate(seed=3))
        for k in (0, 1, len(whole) // 2, len(whole) - 1, len(whole)):
            it = s.iterate(seed=3)
            taken = list(itertools.islice(it, k))
            state = json.loads(json.dumps(it.state()))
            it.close()
            if seen.exists():
                seen.unlink()
            rest = list(s.iterate(seed=3, state=state))
            assert same(taken + rest, whole)
            mapped = len(seen.read_text().split()) if seen.exists() else 0
            assert mapped <= len(whole) - k + workers  # no replay of what the consumer had


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_background_resumes_fed_and_in_turn_pipelines(workers: int) -> None:
    with nothing_left_behind():
        assert_resumes(
            pf.stream(numbers, 30) | pf.map(lambda x: x * 3) | pf.filter(bool) | pf.background(workers)
        )
        assert_resumes(
            pf.from_iterable(range(30)) | pf.mapcat(lambda x: [x] * (x % 3)) | pf.background(workers)
        )
        assert_resumes(
            pf.from_arrays({"x": np.arange(60.0).reshape(30, 2)}) | pf.batch(4) | pf.background(workers)
        )
        assert_resumes(pf.from_iterable(range(40)) | pf.background(workers) | pf.batch(3) | pf.shuffle(2))


def test_background_state_names_each_worker_count() -> None:
    s = pf.from_iterable(range(20)) | pf.background(workers=2)
    it = s.iterate(seed=0)
    list(itertools.islice(it, 7))
    (stage,) = it.state()["stages"].values()
    assert stage["taken"] == [4, 3]  # items dealt in turn
    it.close()


# ---------------------------------------------------------------- random pipelines

_LEAF = st.sampled_from(["from_iterable", "from_arrays", "stream", "seekable_stream"])
_OPS = st.lists(st.sampled_from(sorted(OPERATORS)), max_size=4)


def _pipeline(data: st.DataObject, seed: object) -> pf.Stream[Any]:
    """A random pipeline; ``shard`` over an undivided head needs a pass seed, so only seeded passes get it."""
    if data.draw(st.booleans(), label="mux"):
        n = data.draw(st.integers(1, 5), label="sources")
        sources = [SOURCES[data.draw(_LEAF)]() | pf.take(data.draw(st.integers(0, 12))) for _ in range(n)]
        mode = data.draw(st.sampled_from(["with_replacement", "single_active", "exhaustive"]))
        rate = data.draw(st.sampled_from([None, 1.0, 3.5])) if mode == "exhaustive" else 2.0
        n_active = data.draw(st.integers(1, 3 if mode == "with_replacement" else min(3, n)))
        s = pf.mux(sources, n_active, rate, mode=mode, seed=data.draw(st.integers(0, 3)))
        if mode != "exhaustive":
            s = s | pf.take(40)
    else:
        s = SOURCES[data.draw(_LEAF)]()
    for op in data.draw(_OPS, label="operators"):
        if op != "shard" or seed is not None:
            s = s | OPERATORS[op]()
    return s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_pipelines_resume_anywhere(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from([None, 0, 11]), label="seed")
    s = _pipeline(data, seed)
    it = s.iterate(seed=seed)
    k = data.draw(st.integers(0, 50), label="taken")
    taken = list(itertools.islice(it, k))
    state = json.loads(json.dumps(it.state()))
    rest = list(it)
    assert same(list(s.iterate(seed=seed, state=state)), rest), (s, k)
    if seed is not None:
        assert same(taken + rest, list(s.iterate(seed=seed)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_pipelines_resume_anywhere_under_background(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from([None, 5]), label="seed")
    s = _pipeline(data, seed) | pf.background(workers=data.draw(st.integers(1, 3), label="workers"))
    with nothing_left_behind():
        it = s.iterate(seed=seed)
        taken = list(itertools.islice(it, data.draw(st.integers(0, 40), label="taken")))
        state = json.loads(json.dumps(it.state()))
        rest = list(it)
        assert same(list(s.iterate(seed=seed, state=state)), rest), (s, len(taken))
