"""Sources: where streams begin.

``stream`` calls a function afresh for every pass, ``from_iterable`` walks a
re-iterable collection, ``from_arrays`` yields one sample per row of arrays
(``np.memmap`` included, read chunk by chunk).

A source pickles file-backed arrays (an ``np.memmap``, and any view of one:
slices, strided parts, ``np.asarray`` of it) as their file, offset, dtype,
shape and strides, and maps the file again when unpickled; this is how a
memmap reaches ``background`` workers without being copied into each.
"""

from __future__ import annotations

import array as pyarray
import collections
import functools
import itertools
import mmap
import os
import reprlib
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

import numpy as np

from ._check import check_int
from ._concurrency import async_items
from ._seed import SeedContext
from ._stream import Stream, describe_callable, drop, install_collection_source, undivided_path
from .errors import PescadorError

__all__ = ["from_arrays", "from_iterable", "random_stream", "seekable_stream", "stream", "streamable"]

T = TypeVar("T")
P = ParamSpec("P")

# Rows read from the arrays at a time by ``from_arrays``: large enough to
# amortise indexing, small enough that a memmap is never read whole.
_ARRAY_CHUNK_ROWS = 1024

# Collections longer than this are summarised in a pipeline's repr.
_REPR_ITEMS = 4
# Items (rows) of a collection (array) that a pass's state compares with the pipeline it resumes.
_SAMPLED = 16

# Bytes at each end of a mapped array that are compared with its file when the
# array is pickled: a file replaced since it was mapped differs there.
_CHECK_BYTES = 4096
# A memmap's mode, as it is mapped again in another process ("w+" would truncate the file).
_REOPEN_MODES = {"r": "r", "c": "c", "r+": "r+", "w+": "r+"}

Arrays = np.ndarray | Mapping[str, np.ndarray] | tuple[np.ndarray, ...]


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) or isinstance(a, np.ndarray):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _repr_value(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"<{type(x).__name__} {x.dtype} {x.shape}>"
    if isinstance(x, (list, tuple)) and len(x) > _REPR_ITEMS:
        return f"<{type(x).__name__} of {len(x)} items>"
    return reprlib.repr(x)


@dataclass(frozen=True, repr=False, eq=False)
class _CallStream(Stream[T]):
    fn: Callable[..., Iterable[T] | AsyncIterable[T]]
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]

    def _open(self, ctx: SeedContext) -> Iterator[T]:
        return self._iterate(self.fn(*self.args, **dict(self.kwargs)))

    def _iterate(self, items: Iterable[T] | AsyncIterable[T]) -> Iterator[T]:
        if isinstance(items, AsyncIterable) and not isinstance(items, Iterable):
            # An async generator (or iterable): read on an event loop of its own, aclose()d at the end.
            return async_items(items.__aiter__())
        try:
            return iter(items)
        except TypeError:
            raise TypeError(
                f"pf.{self._name}({describe_callable(self.fn)}, ...): the function must return an "
                f"iterable, but returned {reprlib.repr(items)} ({type(items).__name__})"
            ) from None

    _name = "stream"

    def __reduce__(self) -> tuple[Any, ...]:
        args = tuple(map(_portable, self.args))
        kwargs = tuple((k, _portable(v)) for k, v in self.kwargs)
        return (type(self), (self.fn, args, kwargs))

    def _describe(self) -> str:
        parts = [describe_callable(self.fn), *map(_repr_value, self.args)]
        parts += [f"{k}={_repr_value(v)}" for k, v in self.kwargs]
        return f"{self._name}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _CallStream)
            and type(self) is type(other)
            and self.fn is other.fn
            and len(self.args) == len(other.args)
            and all(map(_same, self.args, other.args))
            and [k for k, _ in self.kwargs] == [k for k, _ in other.kwargs]
            and all(_same(a, b) for (_, a), (_, b) in zip(self.kwargs, other.kwargs))
        )

    def __hash__(self) -> int:
        return hash((_CallStream, self.fn, len(self.args)))


def stream(fn: Callable[..., Iterable[T] | AsyncIterable[T]], /, *args: Any, **kwargs: Any) -> Stream[T]:
    """Make a stream that calls ``fn(*args, **kwargs)`` afresh for every pass.

    ``fn`` may be a generator function or any callable that returns an iterable.
    It is not called until the first item of a pass is requested.

    ``fn`` may also be an async generator function (or return any async
    iterable): each pass reads it on an event loop in a thread of its own,
    one item per ``next()``, nothing ahead, and closes it (``aclose``) when
    the pass ends, early or not (docs/io.md).

    >>> import asyncio, pescador_fp as pf
    >>> def count(n):
    ...     yield from range(n)
    >>> s = pf.stream(count, 3)
    >>> list(s), list(s)
    ([0, 1, 2], [0, 1, 2])
    >>> s
    stream(count, 3)
    >>> async def count_slowly(n):
    ...     for i in range(n):
    ...         await asyncio.sleep(0.001)
    ...         yield i
    >>> list(pf.stream(count_slowly, 3))
    [0, 1, 2]
    """
    _check_fn("stream", fn, kwargs)
    return _CallStream(fn, args, tuple(kwargs.items()))


def _check_fn(name: str, fn: Any, kwargs: dict[str, Any], passed: str = "", hint: str = "") -> None:
    """``fn`` is callable, and ``kwargs`` does not hold ``passed``, which the stream passes itself."""
    if not callable(fn):
        raise TypeError(f"pf.{name}: fn must be callable, got {reprlib.repr(fn)} ({type(fn).__name__})")
    if passed in kwargs:
        raise TypeError(
            f"pf.{name}: {passed} is passed to {describe_callable(fn)} by the stream, got {passed}="
            f"{reprlib.repr(kwargs[passed])}{hint}"
        )


@dataclass(frozen=True, repr=False, eq=False)
class _RandomCallStream(_CallStream[T]):
    """``fn(*args, rng=generator, **kwargs)``, the generator from this source's branch of the seed tree."""

    _name = "random_stream"

    def _open(self, ctx: SeedContext) -> Iterator[T]:
        # The branch without the keys that dividing a stream adds: the feeder, a shard rank and the
        # foreground pass open the same source with the same generator.
        rng = ctx.at(undivided_path(ctx.path)).generator(None, self.depth)
        return self._iterate(self.fn(*self.args, rng=rng, **dict(self.kwargs)))


def random_stream(fn: Callable[..., Iterable[T]], /, *args: Any, **kwargs: Any) -> Stream[T]:
    """Make a stream that calls ``fn(*args, rng=rng, **kwargs)`` afresh for every pass, ``rng`` seeded.

    ``rng`` is a ``numpy.random.Generator`` from the pass's seed tree, at this
    source's place in it: the same pass seed gives the same draws, another
    seed (another epoch) others, and every opening of the source inside a
    ``mux`` (each source, each activation) its own. With no pass seed and no
    seeded multiplexer above, each pass draws fresh OS entropy. The global
    numpy and ``random`` states are never used.

    >>> import pescador_fp as pf
    >>> def noise(n, *, rng):
    ...     yield from rng.integers(0, 100, size=n).tolist()
    >>> s = pf.random_stream(noise, 3)
    >>> s.head(seed=0) == s.head(seed=0), s.head(seed=0) != s.head(seed=1)
    (True, True)
    >>> s
    random_stream(noise, 3)

    Raises:
        TypeError: when built, if ``fn`` is not callable or ``rng`` is among the keyword arguments.
    """
    _check_fn("random_stream", fn, kwargs, "rng", "; use pf.stream to pass a generator of your own")
    return _RandomCallStream(fn, args, tuple(kwargs.items()))


@dataclass(frozen=True, repr=False, eq=False)
class _SeekableCallStream(_CallStream[T]):
    """``fn(*args, start=k, **kwargs)``: the items from the ``k``-th on."""

    length: int | None = None

    _name = "seekable_stream"

    def _open(self, ctx: SeedContext) -> Iterator[T]:
        return self._open_at(ctx, 0)

    def _length(self) -> int | None:
        return self.length

    def __reduce__(self) -> tuple[Any, ...]:
        fn, args, kwargs = super().__reduce__()[1]
        return (type(self), (fn, args, kwargs, self.length))

    def __eq__(self, other: object) -> bool:
        return (
            super().__eq__(other) and isinstance(other, _SeekableCallStream) and self.length == other.length
        )

    __hash__ = _CallStream.__hash__

    def _describe(self) -> str:
        described = super()._describe()
        return described if self.length is None else f"{described[:-1]}, length={self.length})"

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[T]:
        return self._iterate(self.fn(*self.args, start=start, **dict(self.kwargs)))


def seekable_stream(
    fn: Callable[..., Iterable[T]], /, *args: Any, length: int | None = None, **kwargs: Any
) -> Stream[T]:
    """Make a stream that calls ``fn(*args, start=k, **kwargs)`` for every pass, ``k`` the first item wanted.

    ``k`` is 0 for a fresh pass. A pass resumed from a state
    (``s.iterate(seed, state=...)``, docs/resume.md) asks for the item where
    its consumer stopped, so ``fn`` must yield exactly the items that a fresh
    pass yields from its ``k``-th on: seek in a file, start a range at ``k``.
    A plain :func:`stream` cannot seek, so a resumed pass runs it from the
    start and drops the items already taken.

    ``length`` (not passed to ``fn``): how many items a pass yields, where it
    is known (the rows of a file, from its header). A resumed ``mux`` then
    counts its way past this source without running it; without it, the mux
    runs the source to see where it ends.

    >>> import pescador_fp as pf
    >>> def lines(n, *, start):
    ...     yield from (f"line {i}" for i in range(start, n))
    >>> s = pf.seekable_stream(lines, 4, length=4)
    >>> it = s.iterate(seed=0)
    >>> next(it), next(it)
    ('line 0', 'line 1')
    >>> list(s.iterate(seed=0, state=it.state()))
    ['line 2', 'line 3']

    Raises:
        TypeError: when built, if ``fn`` is not callable or ``start`` is among the keyword arguments.
    """
    _check_fn("seekable_stream", fn, kwargs, "start")
    if length is not None:
        length = check_int("seekable_stream", "length", length, 0)
    return _SeekableCallStream(fn, args, tuple(kwargs.items()), length)


def streamable(fn: Callable[P, Iterable[T]]) -> Callable[P, Stream[T]]:
    """Decorate a generator function so that calling it returns a Stream.

    >>> import pescador_fp as pf
    >>> @pf.streamable
    ... def squares(n):
    ...     for i in range(n):
    ...         yield i * i
    >>> s = squares(4)
    >>> list(s), list(s)
    ([0, 1, 4, 9], [0, 1, 4, 9])
    """
    if not callable(fn):
        raise TypeError(f"pf.streamable: expected a callable, got {reprlib.repr(fn)} ({type(fn).__name__})")

    @functools.wraps(fn)
    def make(*args: P.args, **kwargs: P.kwargs) -> Stream[T]:
        return stream(fn, *args, **kwargs)

    return make


@dataclass(frozen=True, repr=False, eq=False)
class _IterableStream(Stream[T]):
    items: Iterable[T]
    numbering: tuple[int, int] = (0, 1)  # a part: item j is item start + j * step of the whole
    _divides_in_turn = True

    def _numbering(self) -> tuple[int, int] | None:
        return self.numbering

    def _open(self, ctx: SeedContext) -> Iterator[T]:
        return iter(self.items)

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[T]:
        items = self.items
        if isinstance(items, (range, np.ndarray, _Indexed)):
            return iter(items[start:])  # a view: seeking costs nothing
        return drop(iter(items), start)  # skipped in C

    def __reduce__(self) -> tuple[Any, ...]:
        items = self.items
        if isinstance(items, (set, frozenset)):
            # Rebuilt in another process (another hash seed, another insertion history), a set
            # iterates in another order: send it in this process's order.
            items = list(items)
        for base in (list, collections.deque):
            if isinstance(items, base) and type(items).__iter__ is not base.__iter__:
                # pickle copies a list or deque through iter(), which would be the subclass's own
                # __iter__ (its outputs, to be iterated again there): send what it holds instead.
                held = list(base.__iter__(items))  # type: ignore[arg-type]
                state = getattr(items, "__dict__", None)
                made = (type(items), base, held, getattr(items, "maxlen", None), state)
                return (_rebuilt_iterable_stream, (made, self.numbering))
        return (_IterableStream, (_portable(items), self.numbering))

    def _describe(self) -> str:
        return f"from_iterable({_repr_value(self.items)})"

    def _fingerprint(self) -> str:
        items = self.items
        if isinstance(items, np.ndarray):
            return f"{self!r} {self.numbering} {_array_sample(items)}"
        if isinstance(items, range):
            return f"{self!r} {self.numbering}"
        if isinstance(items, Sequence):
            n = len(items)
            picked = (
                [items[i] for i in sorted({int(i) for i in np.linspace(0, n - 1, _SAMPLED)})] if n else []
            )
            return f"{self!r} {self.numbering} {n} {' '.join(map(reprlib.repr, picked))}"
        # A set or a mapping: the first items in the order it iterates (a set's depends on the process).
        return f"{self!r} {self.numbering} {reprlib.repr(list(itertools.islice(items, _REPR_ITEMS)))}"

    def _divide(self, index: int, count: int) -> tuple[Stream[T], float | None] | None:
        part = _every(self.items, index, count)
        if part is None:
            return None
        start, step = self.numbering
        return _IterableStream(part, (start + index * step, step * count)), None

    def _length(self) -> int | None:
        return len(self.items) if isinstance(self.items, (Sequence, np.ndarray)) else None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _IterableStream)
            and self.numbering == other.numbering
            and _same(self.items, other.items)
        )

    def __hash__(self) -> int:
        # Equal streams hash alike: arrays are equal only to themselves, other collections by value.
        items = self.items
        if isinstance(items, np.ndarray):
            return hash((_IterableStream, self.numbering, id(items)))
        return hash(
            (_IterableStream, self.numbering, type(items), len(items) if isinstance(items, Sized) else -1)
        )


# Collections whose slice ``[i::k]`` is a collection of the same items, iterated alike.
_SLICED = (list, tuple, range, str, bytes, bytearray, pyarray.array)


@dataclass(frozen=True)
class _Indexed(Sequence[T]):
    """The items ``indices`` of ``items``, read by index: a part of a sequence that does not slice.

    A ``collections.abc.Sequence`` promises ``len`` and integer indexing, not
    slicing; a map-style dataset often has only those, and reads an item
    when it is indexed, so each part reads only its own.

    >>> part = _Indexed([10, 11, 12, 13, 14], range(1, 5, 2))
    >>> list(part), part[0], list(part[1:]), len(part)
    ([11, 13], 11, [13], 2)
    """

    items: Sequence[T]
    indices: range

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> _Indexed[T]: ...

    def __getitem__(self, index: int | slice) -> T | _Indexed[T]:
        if isinstance(index, slice):
            return _Indexed(self.items, self.indices[index])
        return self.items[self.indices[index]]

    def __iter__(self) -> Iterator[T]:
        items = self.items
        for i in self.indices:
            yield items[i]

    def __repr__(self) -> str:
        r = self.indices
        return f"{_repr_value(self.items)}[{r.start}:{r.stop}:{r.step}]"


def _every(items: Iterable[T], index: int, count: int) -> Iterable[T] | None:
    """Items ``index, index + count, ...`` of ``items`` as a collection; ``None`` where that is not known.

    Only what is known to slice into a collection of the same items is sliced
    (subclasses too where they read and iterate as their base does); a deque
    is listed first (indexing walks it from an end); any other sequence
    that iterates by index (``collections.abc.Sequence``'s own ``__iter__``)
    is read by index. The rest (a set, a mapping, a sequence that iterates
    its own way) does not divide: a feeder deals its items.

    >>> _every([0, 1, 2, 3, 4], 1, 2), _every(collections.deque("abc"), 0, 2), _every({1, 2}, 0, 2)
    ([1, 3], ['a', 'c'], None)
    """
    kind = type(items)
    if isinstance(items, (np.ndarray, _Indexed)) or any(
        issubclass(kind, base) and kind.__iter__ is base.__iter__ and kind.__getitem__ is base.__getitem__
        for base in _SLICED
    ):
        sliced: Iterable[T] = items[index::count]  # type: ignore[index]
        return sliced
    if isinstance(items, collections.deque):
        return list(items)[index::count]  # the deque's own order; indexing one walks it from an end
    if isinstance(items, Sequence) and kind.__iter__ is Sequence.__iter__:
        return _Indexed(items, range(index, len(items), count))
    return None


def _rebuilt_iterable_stream(made: tuple[Any, ...], numbering: tuple[int, int]) -> _IterableStream[Any]:
    """(unpickling) ``from_iterable`` over a list or deque subclass with an ``__iter__`` of its own."""
    cls, base, held, maxlen, state = made
    items = cls.__new__(cls)
    if base is list:
        list.__init__(items, held)
    else:
        collections.deque.__init__(items, held, maxlen)
    if state:
        items.__dict__.update(state)
    return _IterableStream(items, numbering)


def from_iterable(items: Iterable[T]) -> Stream[T]:
    """Make a stream over a re-iterable collection: list, tuple, range, array, ...

    One-shot iterators (generator objects, ``map(...)``, file handles) are
    refused: a stream must restart on every pass. Use :func:`stream` with the
    function that makes them.

    >>> import pescador_fp as pf
    >>> list(pf.from_iterable("abc"))
    ['a', 'b', 'c']
    >>> pf.from_iterable(x for x in range(3))
    Traceback (most recent call last):
    ...
    TypeError: from_iterable needs a re-iterable collection, got a one-shot generator; use pf.stream(...) ...
    """
    if isinstance(items, Iterator) and not isinstance(items, Stream):  # (a Stream refuses next() itself)
        raise TypeError(
            f"from_iterable needs a re-iterable collection, got a one-shot {type(items).__name__}; "
            "use pf.stream(fn, *args) with the function that makes it, so every pass starts afresh"
        )
    if not isinstance(items, Iterable):
        raise TypeError(
            f"from_iterable needs a re-iterable collection, got {reprlib.repr(items)} "
            f"({type(items).__name__})"
        )
    return _IterableStream(items)


install_collection_source(from_iterable)


@dataclass(frozen=True, repr=False, eq=False)
class _ArrayStream(Stream[Any]):
    _divides_in_turn = True
    arrays: tuple[np.ndarray, ...]
    keys: tuple[str, ...] | None  # dict keys, or None for a tuple (or a single array)
    single: bool
    numbering: tuple[int, int] = (0, 1)  # a part: row j is row start + j * step of the whole

    def _numbering(self) -> tuple[int, int] | None:
        return self.numbering

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _array_rows(self.arrays, self.keys, self.single, 0)

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[Any]:
        return _array_rows(self.arrays, self.keys, self.single, start)

    def _row_batches(self, size: int, partial: bool, start: int = 0) -> Iterator[Any] | None:
        return _sliced_batches(self, size, partial, start) if _slices_stack(self) else None

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        start, step = self.numbering
        rows = tuple(a[index::count] for a in self.arrays)
        return _ArrayStream(rows, self.keys, self.single, (start + index * step, step * count)), None

    def _length(self) -> int | None:
        return len(self.arrays[0])

    def _fingerprint(self) -> str:
        return f"{self!r} {self.numbering} {' '.join(map(_array_sample, self.arrays))}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ArrayStream, (tuple(map(_by_file, self.arrays)), self.keys, self.single, self.numbering))

    def _describe(self) -> str:
        if self.single:
            return f"from_arrays({_repr_value(self.arrays[0])})"
        if self.keys is not None:
            inner = ", ".join(f"{k!r}: {_repr_value(a)}" for k, a in zip(self.keys, self.arrays))
            return f"from_arrays({{{inner}}})"
        return f"from_arrays(({', '.join(map(_repr_value, self.arrays))},))"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _ArrayStream)
            and (self.keys, self.single, self.numbering) == (other.keys, other.single, other.numbering)
            and len(self.arrays) == len(other.arrays)
            and all(a is b for a, b in zip(self.arrays, other.arrays))
        )

    def __hash__(self) -> int:
        return hash((_ArrayStream, self.keys, tuple(map(id, self.arrays))))


def _array_sample(array: np.ndarray) -> str:
    """Bytes from a few rows spread over ``array``: enough to tell it from another of the same shape."""
    n = len(array) if array.ndim else 1
    rows = sorted({int(i) for i in np.linspace(0, n - 1, _SAMPLED)}) if n else []
    sample = b"".join(np.ascontiguousarray(array[i] if array.ndim else array).tobytes()[:16] for i in rows)
    return f"{array.dtype.str}{array.shape}:{sample.hex()}"


def _array_rows(
    arrays: tuple[np.ndarray, ...], keys: tuple[str, ...] | None, single: bool, first: int
) -> Iterator[Any]:
    n = len(arrays[0])
    releases = [_releaser(a) for a in arrays]
    for start in range(first, n, _ARRAY_CHUNK_ROWS):
        # np.asarray turns memmap slices into plain ndarray views of the mapping.
        chunks = [np.asarray(a[start : start + _ARRAY_CHUNK_ROWS]) for a in arrays]
        if single:
            yield from chunks[0]
        elif keys is not None:
            for row in zip(*chunks):
                yield dict(zip(keys, row))
        else:
            yield from zip(*chunks)
        for release, chunk in zip(releases, chunks):
            if release is not None:
                release(chunk)


def _releaser(array: np.ndarray) -> Callable[[np.ndarray], None] | None:
    """For an array over a shared file mapping, a function that drops a read chunk's pages from this process.

    Pages of a mapped file count in the resident set as long as they stay
    mapped; ``MADV_DONTNEED`` unmaps those wholly inside the chunk, so a pass
    over a large memmap keeps a flat footprint. The data stays in the file
    (and the page cache): a view that reads it again faults it back in. Not
    for copy-on-write memmaps (mode ``"c"``), whose changed pages would be lost.
    """
    mapping = _mapping_of(array)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None or mapping.mode == "c" or array.size == 0:
        return None
    mm: mmap.mmap = mapping.base  # type: ignore[assignment]
    base = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data  # the mapping's first byte

    def release(chunk: np.ndarray) -> None:
        if chunk.size == 0:
            return
        spans = [(n - 1) * s for n, s in zip(chunk.shape, chunk.strides)]
        low = chunk.ctypes.data - base + sum(d for d in spans if d < 0)
        high = chunk.ctypes.data - base + sum(d for d in spans if d > 0) + chunk.dtype.itemsize
        first, end = -(-low // mmap.PAGESIZE) * mmap.PAGESIZE, high // mmap.PAGESIZE * mmap.PAGESIZE
        if end > first:
            mm.madvise(advice, first, end - first)

    return release


def from_arrays(data: Arrays) -> Stream[Any]:
    """Make a stream with one sample per row of an array, a dict of arrays or a tuple of arrays.

    All arrays must have the same first dimension. Rows are views, read a chunk
    at a time, so an ``np.memmap`` is never read whole; once a chunk is done
    its pages leave the resident set (not for copy-on-write memmaps), so a
    pass over a large file keeps a flat footprint. In ``background`` workers a
    memmap is mapped again from its file, never copied.

    >>> import numpy as np, pescador_fp as pf
    >>> s = pf.from_arrays({"x": np.arange(6).reshape(3, 2), "y": np.array([0, 1, 0])})
    >>> [(row["x"].tolist(), int(row["y"])) for row in s]
    [([0, 1], 0), ([2, 3], 1), ([4, 5], 0)]
    >>> pf.from_arrays((np.zeros(3), np.zeros(4)))
    Traceback (most recent call last):
    ...
    ValueError: from_arrays: all arrays need the same first dimension, got lengths [3, 4] for [0, 1]
    """
    keys: tuple[str, ...] | None
    named: dict[Any, Any]
    if isinstance(data, np.ndarray):
        single, keys, named = True, None, {"data": data}
    elif isinstance(data, Mapping):
        single, keys, named = False, tuple(data), dict(data)
    elif isinstance(data, tuple):
        single, keys, named = False, None, dict(enumerate(data))
    else:
        raise TypeError(
            f"from_arrays: data must be an array, a dict of arrays or a tuple of arrays, "
            f"got {type(data).__name__}"
        )
    if not named:
        raise ValueError(f"from_arrays: data must hold at least one array, got {data!r}")
    arrays = []
    for name, value in named.items():
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.ndim == 0:
            raise ValueError(f"from_arrays: array {name!r} is 0-dimensional and has no rows")
        arrays.append(array)
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"from_arrays: all arrays need the same first dimension, got lengths {lengths} for {list(named)}"
        )
    return _ArrayStream(tuple(arrays), keys, single)


# ---------------------------------------------------------------- file-backed arrays travel as their file


def _portable(value: object) -> object:
    """``value`` ready to pickle: file-backed arrays, alone or in a list, tuple or dict, go by file."""
    if isinstance(value, np.ndarray):
        return _by_file(value)
    if type(value) in (list, tuple):
        items = [_by_file(x) if isinstance(x, np.ndarray) else x for x in value]  # type: ignore[attr-defined]
        return value if all(a is b for a, b in zip(items, value)) else type(value)(items)  # type: ignore
    if type(value) is dict:
        return {k: _by_file(v) if isinstance(v, np.ndarray) else v for k, v in value.items()}
    return value


def _mapping_of(array: np.ndarray) -> np.memmap[Any, Any] | None:
    """The ``np.memmap`` that maps a file under ``array`` (itself or one of its bases), or None."""
    x: object = array
    while isinstance(x, np.ndarray):
        base: object = x.base
        if isinstance(x, np.memmap) and isinstance(base, mmap.mmap) and x.filename is not None:
            return x
        x = base
    return None


class _ByFile:
    """Pickles as a call to :func:`_reopen`: the array's file, where it lies there, and its layout."""

    __slots__ = ("args",)

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, self.args)


def _by_file(array: np.ndarray) -> np.ndarray | _ByFile:
    """``array`` itself, or for a file-backed array a stand-in that pickles as its file and layout.

    Raises an error naming the file if it is gone, shorter than the array, or
    holds other bytes than the mapping (replaced since it was mapped, or
    changed in a copy-on-write memmap): another process could not map the
    same data.
    """
    mapping = _mapping_of(array)
    if mapping is None or array.size == 0 or mapping.mode == "c":
        # A copy-on-write memmap may hold changes that only this process can see (a check of
        # a few pages cannot tell): it travels by value.
        return array
    path = str(mapping.filename)
    itemsize = array.dtype.itemsize
    spans = [(n - 1) * s for n, s in zip(array.shape, array.strides)]
    low = sum(d for d in spans if d < 0)
    length = sum(d for d in spans if d > 0) - low + itemsize
    # Where the array's lowest byte lies in the file: the mapping's data starts at its offset.
    start = int(mapping.offset) + (array.ctypes.data - mapping.ctypes.data) + low
    identity = _check_file(path, start, length, mapping)
    mode = _REOPEN_MODES[str(mapping.mode)]
    layout = (array.dtype, array.shape, array.strides, -low)
    kind = (isinstance(array, np.memmap), bool(array.flags.writeable))
    return _ByFile((path, mode, start, length, *layout, *kind, identity))


def _check_file(path: str, start: int, length: int, mapping: np.memmap[Any, Any]) -> tuple[int, int]:
    """(consumer) The file's device and inode, once sure that it still holds what ``mapping`` shows."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the memory-mapped file {path} no longer exists (deleted after it was mapped?); "
            "a stream that holds a memmap sends its file name to other processes, which map it again"
        ) from None
    if info.st_size < start + length:
        raise PescadorError(
            f"the memory-mapped file {path} is now {info.st_size} bytes long, but the array needs "
            f"bytes {start} to {start + length}: it changed after it was mapped"
        )
    flat = mapping.reshape(-1, order="A").view(np.uint8)
    base = start - int(mapping.offset)  # where the array's bytes start in ``flat``
    n = min(length, _CHECK_BYTES)
    with open(path, "rb") as f:
        for at in {0, length - n}:
            f.seek(start + at)
            if f.read(n) != flat[base + at : base + at + n].tobytes():
                raise PescadorError(
                    f"the memory-mapped file {path} holds other bytes than its memmap (replaced or "
                    "rewritten after it was mapped, or changed in a copy-on-write memmap): other "
                    "processes, which map the file again, would not see the same data"
                )
    return info.st_dev, info.st_ino


def _reopen(
    path: str,
    mode: Any,
    start: int,
    length: int,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    first: int,
    as_memmap: bool,
    writeable: bool,
    identity: tuple[int, int],
) -> np.ndarray:
    """(worker) Map the bytes ``start`` to ``start + length`` of ``path`` again, as the array they held."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the memory-mapped file {path} was deleted after the stream was sent to this process, "
            "which maps it again by name"
        ) from None
    if (info.st_dev, info.st_ino) != identity or info.st_size < start + length:
        raise PescadorError(
            f"the memory-mapped file {path} was replaced or truncated after the stream was sent to "
            "this process, which maps it again by name"
        )
    whole = np.memmap(path, dtype=np.uint8, mode=mode, offset=start, shape=(length,))
    array: np.ndarray = np.ndarray(shape, dtype, buffer=whole, offset=first, strides=strides)
    if as_memmap:  # as the original: its rows are memmaps too, and flush() reaches the file
        mapped: np.memmap[Any, Any] = array.view(np.memmap)
        mapped._mmap = whole._mmap  # type: ignore[attr-defined]
        mapped.filename, mapped.offset, mapped.mode = whole.filename, start + first, mode
        array = mapped
    if not writeable:
        array.flags.writeable = False
    return array


# ---------------------------------------------------------------- batches as row slices


def _slices_stack(source: _ArrayStream) -> bool:
    """Whether a slice of rows of each array is what stacking those rows gives (same dtype, same bytes)."""
    if not source.single and source.keys is None:
        return False  # tuples of rows stack into tuples: pickled anyway
    for array in source.arrays:
        dtype = array.dtype
        if type(array) not in (np.ndarray, np.memmap) or not dtype.isnative:
            return False
        # Rows of a 1-d array are numpy scalars: only numbers and times stack back to the same dtype
        # and bytes (a bool scalar is 0 or 1 whatever byte the array held).
        if dtype.kind not in ("iufcmM" if array.ndim == 1 else "biufcmMSU"):
            return False
    return True


def _sliced_batches(source: _ArrayStream, size: int, partial: bool, first: int) -> Iterator[Any]:
    """The batches of ``from_arrays`` rows from row ``first`` on, as row slices (views); pages are
    released chunk by chunk."""
    arrays, n = source.arrays, len(source.arrays[0])
    releases = [_releaser(a) for a in arrays]
    released = first
    for start in range(first, n, size):
        stop = min(start + size, n)
        if stop - start < size and not partial:
            break
        chunks = [np.asarray(a[start:stop]) for a in arrays]
        yield chunks[0] if source.single else dict(zip(source.keys or (), chunks))
        del chunks
        if stop - released >= _ARRAY_CHUNK_ROWS or stop == n:
            for release, array in zip(releases, arrays):
                if release is not None:
                    release(np.asarray(array[released:stop]))
            released = stop
