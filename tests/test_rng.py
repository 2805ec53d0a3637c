"""Seeded randomness for user functions: map/mapcat(fn, rng=True) and random_stream.

The promises: the same pass seed gives the same draws, another seed others;
``background`` (1 or 3 workers) and ``shard`` give each item the draws it gets
in the foreground pass; the global numpy and ``random`` states are never read
or written.
"""

from __future__ import annotations

import random

import cloudpickle
import numpy as np
import pytest

import pescador_fp as pf


def draw(x, rng):
    return (int(x), int(rng.integers(1 << 62)), float(rng.normal()))


def draws(s, seed):
    return list(s.iterate(seed=seed))


def sharded(s, count, seed):
    return [x for rank in range(count) for x in (s | pf.shard(rank, count)).iterate(seed=seed)]


COLLECTION = pf.from_iterable(range(40)) | pf.map(draw, rng=True)
ARRAYS = pf.from_arrays({"x": np.arange(40), "y": np.arange(40) % 3}) | pf.map(
    lambda d, rng: draw(d["x"], rng), rng=True
)
# Two generators in one pipeline, with a one-to-one operator between them.
TWO = (
    pf.from_iterable([{"x": i} for i in range(40)])
    | pf.map(lambda d, rng: {"x": d["x"], "a": int(rng.integers(1 << 62))}, rng=True)
    | pf.tuples("x", "a")
    | pf.map(lambda t, rng: (*t, int(rng.integers(1 << 62))), rng=True)
)
DIVIDABLE = {"collection": COLLECTION, "from_arrays": ARRAYS, "two generators": TWO}


@pytest.mark.parametrize("name", sorted(DIVIDABLE))
def test_same_pass_seed_same_draws_and_another_seed_others(name):
    s = DIVIDABLE[name]
    assert draws(s, 0) == draws(s, 0)
    epochs = [draws(s, e) for e in range(3)]
    assert len({tuple(e) for e in epochs}) == 3
    assert [x[0] for x in epochs[0]] == [x[0] for x in epochs[1]]  # only the draws change


def test_items_are_known_by_their_place_not_their_value():
    s = pf.from_iterable([7] * 20) | pf.map(draw, rng=True)
    assert len({x[1] for x in draws(s, 0)}) == 20


def test_without_any_seed_each_pass_draws_fresh_and_a_map_seed_makes_it_pure():
    assert list(COLLECTION) != list(COLLECTION)
    seeded = pf.from_iterable(range(20)) | pf.map(draw, rng=True, seed=5)
    assert list(seeded) == list(seeded)
    assert draws(seeded, 1) != list(seeded)  # the pass seed still roots it


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("name", sorted(DIVIDABLE))
def test_background_gives_each_item_the_foreground_draws(name, workers):
    s = DIVIDABLE[name]
    assert draws(s | pf.background(workers=workers), 4) == draws(s, 4)


@pytest.mark.parametrize("name", sorted(DIVIDABLE))
def test_batching_in_workers_keeps_each_items_draws(name):
    s = DIVIDABLE[name]
    batched = s | pf.batch(4, partial=True) | pf.background(workers=3)
    rows = sorted(tuple(int(v) for v in row[:2]) for b in batched.iterate(seed=2) for row in zip(*b))
    assert rows == sorted(tuple(int(v) for v in x[:2]) for x in draws(s, 2))


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("name", sorted(DIVIDABLE))
def test_shard_gives_each_item_the_foreground_draws(name, count):
    s = DIVIDABLE[name]
    assert sorted(sharded(s, count, 7)) == sorted(draws(s, 7))


def test_background_over_a_shard_gives_each_item_the_foreground_draws():
    parts = [
        x for rank in range(2) for x in (COLLECTION | pf.shard(rank, 2) | pf.background(3)).iterate(seed=1)
    ]
    assert sorted(parts) == sorted(draws(COLLECTION, 1))


def test_mapcat_gives_each_input_item_its_generator_for_all_its_outputs():
    def crops(x, rng):
        for _ in range(3):  # lazy: draws while the outputs are pulled
            yield (x, int(rng.integers(1 << 62)))

    s = pf.from_iterable(range(12)) | pf.mapcat(crops, rng=True)
    out = draws(s, 0)
    assert out == draws(s, 0) and len({v for _, v in out}) == 36
    assert sorted(sharded(s, 3, 0)) == sorted(out)
    assert draws(s | pf.background(workers=1), 0) == out


def test_background_with_several_workers_gives_mapcat_the_foreground_draws():
    # Not one-to-one, so each worker marks its items' ends (_worker._Marked); the marks keep the numbering.
    s = pf.from_iterable(range(12)) | pf.mapcat(lambda x, rng: [x, int(rng.integers(1 << 62))], rng=True)
    assert draws(s | pf.background(workers=3), 0) == draws(s, 0)


def test_a_filter_above_the_random_map_keeps_the_foreground_draws_in_every_worker():
    s = pf.from_iterable(range(30)) | pf.map(lambda x, rng: (x, int(rng.integers(1 << 62))), rng=True)
    kept = s | pf.filter(lambda pair: pair[0] % 3)
    for workers in (2, 3):
        assert list((kept | pf.background(workers=workers)).iterate(seed=4)) == list(kept.iterate(seed=4))


def test_each_cycle_repetition_draws_afresh_and_workers_agree():
    s = pf.from_iterable(range(10)) | pf.map(draw, rng=True) | pf.cycle(2)
    out = draws(s, 0)
    assert [x[0] for x in out[:10]] == [x[0] for x in out[10:]] and out[:10] != out[10:]
    assert sorted(draws(s | pf.background(workers=3), 0)) == sorted(out)


# Items dealt by background's feeder (or kept in turn by a shard rank) carry no place in the
# undivided stream yet: _worker._Fed and shard's _Given need to report it (Stream._numbering).
def test_background_over_a_fed_source_gives_the_foreground_draws():
    s = pf.stream(iter, list(range(20))) | pf.map(draw, rng=True)
    assert draws(s | pf.background(workers=3), 0) == draws(s, 0)


def test_shard_over_a_fed_source_gives_the_foreground_draws():
    s = pf.stream(iter, list(range(20))) | pf.map(draw, rng=True)
    assert sorted(sharded(s, 2, 0)) == sorted(draws(s, 0))


def test_over_a_fed_source_draws_are_reproducible_for_a_given_worker_count():
    s = pf.stream(iter, list(range(20))) | pf.map(draw, rng=True)
    assert draws(s | pf.background(workers=1), 0) == draws(s, 0)
    assert draws(s | pf.background(workers=3), 0) == draws(s | pf.background(workers=3), 0)


def _with_global_states(numpy_seed, random_seed, run):
    np.random.seed(numpy_seed)
    random.seed(random_seed)
    before = (np.random.get_state(), random.getstate())
    out = run()
    after = (np.random.get_state(), random.getstate())
    assert after[1] == before[1]
    assert all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(after[0], before[0])
    )
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: draws(COLLECTION, 3),
        lambda: draws(COLLECTION | pf.background(workers=3), 3),
        lambda: draws(pf.random_stream(lambda n, rng: rng.integers(0, 1 << 62, size=n).tolist(), 8), 3),
    ],
    ids=["foreground", "background", "random_stream"],
)
def test_the_global_numpy_and_random_states_are_never_read_or_written(make):
    first = _with_global_states(0, 0, make)
    assert _with_global_states(12345, 999, make) == first


# ---------------------------------------------------------------- random_stream


def noise(n, *, rng, scale=1):
    for _ in range(n):
        yield int(rng.integers(1 << 62)) * scale


def test_random_stream_is_reproducible_per_pass_seed():
    s = pf.random_stream(noise, 5)
    assert draws(s, 0) == draws(s, 0) and draws(s, 0) != draws(s, 1)
    assert list(s) != list(s)  # no seed anywhere: fresh entropy
    assert draws(pf.random_stream(noise, 5, scale=2), 0) == [2 * x for x in draws(s, 0)]


def test_random_stream_sources_of_a_mux_draw_per_source_and_activation():
    sources = [pf.random_stream(noise, 2) for _ in range(3)]
    out = draws(pf.round_robin(sources, mode="cycle") | pf.take(12), 0)
    assert len(set(out)) == 12


def test_random_stream_gives_the_same_items_in_background_and_shards():
    s = pf.random_stream(noise, 30) | pf.map(lambda x: x % 1000)
    fg = draws(s, 2)
    assert draws(s | pf.background(workers=3), 2) == fg
    assert sorted(sharded(s, 3, 2)) == sorted(fg)


# ---------------------------------------------------------------- values, errors


def test_random_operators_are_picklable_values_with_a_readable_repr():
    op = pf.map(draw, rng=True, seed=3)
    assert repr(op) == "map(draw, rng=True, seed=3)"
    assert repr(pf.mapcat(list, rng=True)) == "mapcat(list, rng=True)"
    clone = cloudpickle.loads(cloudpickle.dumps(pf.from_iterable(range(5)) | op))
    assert draws(clone, 1) == draws(pf.from_iterable(range(5)) | op, 1)
    assert repr(pf.random_stream(noise, 3, scale=2)) == "random_stream(noise, 3, scale=2)"
    assert pf.random_stream(noise, 3) == pf.random_stream(noise, 3) != pf.stream(noise, 3)


@pytest.mark.parametrize("make", [pf.map, pf.mapcat])
def test_rng_arguments_are_checked_when_built(make):
    name = make.__name__
    with pytest.raises(TypeError, match=rf"{name}: rng must be .*'yes'"):
        make(draw, rng="yes")
    with pytest.raises(ValueError, match=rf"{name}: seed .*seed=3 with rng=False"):
        make(draw, seed=3)
    with pytest.raises(ValueError, match=rf"{name}: seed must be .*-1"):
        make(draw, rng=True, seed=-1)


def test_random_stream_arguments_are_checked_when_built():
    with pytest.raises(TypeError, match=r"random_stream: fn must be callable, got 3"):
        pf.random_stream(3)
    with pytest.raises(TypeError, match=r"random_stream: rng is passed to noise by the stream, got rng=1"):
        pf.random_stream(noise, 2, rng=1)
