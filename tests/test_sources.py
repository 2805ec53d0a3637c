"""Sources: stream, streamable, from_iterable, from_arrays (memmap included)."""

from __future__ import annotations

import collections
import collections.abc
from collections import namedtuple

import numpy as np
import pytest

import pescador_fp as pf
from pescador_fp._divide import divide
from pescador_fp._seed import SeedContext

Pair = namedtuple("Pair", "a b c d e f g")


def test_stream_calls_the_function_afresh_every_pass():
    calls = []

    def make(n, step=1):
        calls.append(n)
        return range(0, n, step)

    s = pf.stream(make, 6, step=2)
    assert list(s) == list(s) == [0, 2, 4]
    assert calls == [6, 6]
    assert repr(s) == "stream(make, 6, step=2)"


def test_stream_refuses_non_callables_and_non_iterable_results():
    with pytest.raises(TypeError, match="callable"):
        pf.stream(3)
    with pytest.raises(TypeError, match="must return an iterable"):
        list(pf.stream(lambda: 5))


def test_streamable_makes_stream_factories():
    @pf.streamable
    def numbers(n):
        yield from range(n)

    s = numbers(3)
    assert isinstance(s, pf.Stream) and list(s) == list(s) == [0, 1, 2]
    assert numbers.__name__ == "numbers"


def test_streams_with_equal_arguments_are_equal():
    def f(path):
        return [path]

    assert pf.stream(f, "a.npy") == pf.stream(f, "a.npy")
    assert pf.stream(f, "a.npy") != pf.stream(f, "b.npy")
    arr = np.zeros(3)
    assert pf.stream(f, arr) == pf.stream(f, arr) and pf.stream(f, arr) != pf.stream(f, np.zeros(3))


def test_from_iterable_refuses_one_shot_iterators_naming_pf_stream():
    with pytest.raises(TypeError, match=r"pf\.stream"):
        pf.from_iterable(x for x in range(3))
    with pytest.raises(TypeError, match=r"pf\.stream"):
        pf.from_iterable(iter([1, 2]))
    with pytest.raises(TypeError, match="re-iterable"):
        pf.from_iterable(5)


def test_from_iterable_walks_collections():
    assert list(pf.from_iterable((1, 2))) == [1, 2]
    assert list(pf.from_iterable({"a": 1})) == ["a"]
    rows = list(pf.from_iterable(np.arange(6).reshape(3, 2)))
    assert [r.tolist() for r in rows] == [[0, 1], [2, 3], [4, 5]]


def test_from_arrays_single_dict_and_tuple():
    x = np.arange(3000 * 2).reshape(3000, 2)
    y = np.arange(3000)
    assert [r.tolist() for r in pf.from_arrays(x)][2999] == [5998, 5999]
    rows = list(pf.from_arrays({"x": x, "y": y}))
    assert len(rows) == 3000 and rows[1234]["x"].tolist() == [2468, 2469] and rows[1234]["y"] == 1234
    pairs = list(pf.from_arrays((x, y)))
    assert isinstance(pairs[0], tuple) and pairs[2048][1] == 2048


def test_from_arrays_checks_its_input_at_build_time():
    with pytest.raises(ValueError, match=r"\[3, 4\]"):
        pf.from_arrays({"x": np.zeros(3), "y": np.zeros(4)})
    with pytest.raises(ValueError, match="0-dimensional"):
        pf.from_arrays(np.array(1.0))
    with pytest.raises(ValueError, match="at least one"):
        pf.from_arrays({})
    with pytest.raises(TypeError, match="dict of arrays"):
        pf.from_arrays([np.zeros(3)])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_from_arrays_reads_a_memmap_lazily(tmp_path):
    rows, dim = 64 * 1024, 1024  # 256 MiB of float32
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    big[-1] = 7.0
    big.flush()
    del big
    data = np.load(path, mmap_mode="r")
    before = _rss_bytes()
    first = list(pf.from_arrays(data) | pf.take(3))
    last = list(pf.from_arrays({"x": data}) | pf.skip(rows - 1))
    grown = _rss_bytes() - before
    assert len(first) == 3 and float(last[0]["x"][0]) == 7.0
    assert type(first[0]) is np.ndarray  # plain views, not memmap rows
    assert grown < 64 * 2**20, f"resident memory grew by {grown / 2**20:.0f} MiB reading a 256 MiB memmap"


@pytest.mark.parametrize(
    "make",
    [lambda: [1, 2, 3], lambda: (1, 2), lambda: range(4), lambda: "abc", lambda: {1, 2}, lambda: {"a": 1}],
)
def test_equal_sources_hash_alike(make):
    a, b = pf.from_iterable(make()), pf.from_iterable(make())
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert pf.stream(range, 3) == pf.stream(range, 3) and len({pf.stream(range, 3), pf.stream(range, 3)}) == 1


class _Dataset(collections.abc.Sequence):
    """A map-style dataset: a length and integer indexing only (no slices); notes the items it reads."""

    def __init__(self, n):
        self.n, self.read = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not isinstance(i, int):
            raise TypeError(f"indices must be integers, not {type(i).__name__}")
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.read.append(i)
        return i * 10


class _Doubled(list):
    """A list that reads items through a __getitem__ of its own but iterates as a list."""

    def __getitem__(self, i):
        return 2 * super().__getitem__(i)


class _Walked(collections.abc.Sequence):
    """A sequence that iterates its own way (here: the same items, from a list of its own)."""

    def __init__(self, n):
        self.items = list(range(n))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __iter__(self):
        return iter(self.items)


class _Files(list):
    pass


UNSLICED = {
    "deque": lambda: collections.deque(range(7)),
    "sequence": lambda: _Dataset(7),
    "list_own_getitem": lambda: _Doubled(range(7)),
}


@pytest.mark.parametrize(
    "make",
    [
        lambda: collections.deque(range(7)),
        lambda: _Dataset(7),
        lambda: _Files(range(7)),
        lambda: Pair(*range(7)),
    ],
    ids=["deque", "sequence", "list_subclass", "namedtuple"],
)
def test_a_collection_divides_each_item_once_in_order_slicing_only_what_slices(make):
    items = make()
    whole = list(pf.from_iterable(items))
    plan = divide(pf.from_iterable(items) | pf.map(str), 3)
    assert not plan.fed
    assert [list(part.source) for part in plan.parts] == [whole[w::3] for w in range(3)]
    if isinstance(items, _Dataset):
        del items.read[:]
        for part in plan.parts:
            list(part.source)
        assert sorted(items.read) == list(range(7))  # each item read once, by the part it is in


@pytest.mark.parametrize(
    "make", [lambda: _Doubled(range(7)), lambda: _Walked(7)], ids=["own_getitem", "own_iter"]
)
def test_a_sequence_that_reads_or_iterates_its_own_way_is_fed_not_divided(make):
    # Its slices, or its items by index, need not be what iterating it gives.
    assert divide(pf.from_iterable(make()) | pf.map(str), 2).fed


def test_a_part_of_a_sequence_seeks_without_reading_the_items_it_skips():
    items = _Dataset(10)
    part = divide(pf.from_iterable(items) | pf.map(str), 2).parts[1].source
    assert list(part._open_at(SeedContext(None), 3)) == [70, 90]
    assert items.read == [7, 9]


@pytest.mark.parametrize("make", UNSLICED.values(), ids=UNSLICED)
def test_background_and_shard_give_a_collection_that_does_not_slice_as_the_foreground(make):
    s = pf.from_iterable(make()) | pf.map(lambda x: x + 1)
    whole = list(s)
    assert list(s | pf.background(workers=2)) == whole
    shards = [list((s | pf.shard(r, 3)).iterate(seed=0)) for r in range(3)]
    assert shards == [whole[r::3] for r in range(3)]


class Loaded(list):
    """A list of ids that loads each record as it is iterated (a map-style dataset's shape)."""

    def __iter__(self):
        return ({"id": i, "x": 10 * i} for i in list.__iter__(self))


class Reversed(collections.deque):
    def __iter__(self):
        return reversed(self)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_list_or_deque_with_an_iter_of_its_own_is_iterated_once_in_workers(workers):
    # pickle copies such a collection through its own __iter__: what it holds must travel instead.
    for items in (Loaded(range(5)), Reversed(range(6))):
        s = pf.from_iterable(items) | pf.map(lambda x: x)
        assert list(s | pf.background(workers=workers)) == list(s) == list(iter(items))
