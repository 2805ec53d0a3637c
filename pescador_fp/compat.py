"""Pescador 3.0's public API as thin adapters over pescador_fp: ``import pescador_fp.compat as pescador``.

Each class and function here translates Pescador's arguments and calling
conventions into a pescador_fp pipeline and owns no sampling logic of its own.
Where Pescador 3.0 contradicts its own documentation, these follow the
documentation: weights are output shares, exhausted streams never hang,
``ZMQStreamer`` surfaces worker errors and bounds its buffering. The
differences are listed in ``docs/migrating.md``.

>>> import pescador_fp.compat as pescador
>>> def numbers(n):
...     yield from range(n)
>>> s = pescador.Streamer(numbers, 5)
>>> list(s.iterate(max_iter=3)), list(s(max_iter=7, cycle=True))
([0, 1, 2], [0, 1, 2, 3, 4, 0, 1])
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import math
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np

from ._check import check_int
from ._seed import SeedContext
from ._stream import Stream, as_stream
from .background import background as _background
from .errors import DataError, PescadorError
from .mux import chain as _chain
from .mux import mux as _mux
from .mux import round_robin as _round_robin
from .mux import shuffled_mux as _shuffled_mux
from .ops.batch import sample_groups
from .ops.cache import cache as _cache
from .ops.map import map as _map
from .sources import stream as _stream

__all__ = [
    "ChainMux",
    "DataError",
    "PescadorError",
    "RoundRobinMux",
    "ShuffledMux",
    "StochasticMux",
    "Streamer",
    "ZMQStreamer",
    "buffer_stream",
    "cache",
    "keras_tuples",
    "streamable",
    "tuples",
]


def _pescador_errors(build: Callable[[], Any]) -> Any:
    """Run ``build``; argument errors come out as ``PescadorError``, as Pescador raises them."""
    try:
        return build()
    except (ValueError, TypeError) as error:
        raise PescadorError(str(error)) from error


def _seed(random_state: object) -> int | None:
    """A pescador_fp seed for Pescador's ``random_state``: None, an int, a RandomState or a Generator.

    Pescador copies its generator at the start of every pass, so a seeded
    object gives the same output every pass and the caller's generator is
    left as it was; so does this.
    """
    if random_state is None:
        return None
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(copy.deepcopy(random_state).randint(2**31))
    if isinstance(random_state, np.random.Generator):
        return int(copy.deepcopy(random_state).integers(2**63))
    raise PescadorError(f"Invalid random_state={random_state!r}")


def _source(streamer: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Stream[Any]:
    if isinstance(streamer, Stream):
        return streamer
    if callable(streamer):
        return _stream(streamer, *args, **kwargs)
    if isinstance(streamer, Iterator):
        # Pescador copies the iterator at every pass, so each pass starts where it stood
        # (a generator object cannot be copied: that fails at the first pass, as there).
        return _stream(copy.deepcopy, streamer)
    return as_stream(streamer)


def _stream_of(items: object) -> Stream[Any]:
    """What Pescador's functions iterate over (a streamer, an iterable, a one-shot iterator), as a Stream."""
    if isinstance(items, Stream):
        return items
    if isinstance(items, Iterator):
        return _stream(lambda: items)
    return as_stream(items)


class Streamer(Stream[Any]):
    """Pescador's Streamer: a generator function (with its arguments) or an iterable, re-iterable.

    ``iterate(max_iter)``, ``cycle(max_iter)``, ``__call__(max_iter, cycle)``
    and ``__iter__`` behave as in Pescador; it is also a pescador_fp Stream,
    so ``streamer | pf.batch(32)`` works. Pescador's activation protocol is
    kept too: ``with streamer as active:`` gives a copy whose ``stream_`` is an
    open pass, and ``active`` (``active_count_``) counts the passes open now.

    >>> s = Streamer(range(3))
    >>> with s as active:
    ...     s.active, next(active.stream_)
    (1, 0)
    >>> s.active
    0
    """

    def __init__(self, streamer: Any, *args: Any, **kwargs: Any) -> None:
        if not (inspect.isgeneratorfunction(streamer) or isinstance(streamer, (Iterable, Streamer))):
            raise PescadorError(
                "`streamer` must be an iterable or callable function that returns an iterable object."
            )
        self._adopt(streamer, args, kwargs, _source(streamer, args, kwargs))

    def _adopt(
        self, streamer: Any, args: tuple[Any, ...], kwargs: dict[str, Any], built: Stream[Any]
    ) -> None:
        self.streamer, self.args, self.kwargs = streamer, args, kwargs
        self._stream: Stream[Any] = built
        #: Passes of this streamer open now, as Pescador counts them.
        self.active_count_ = 0
        #: The open pass of an activated copy (``with streamer as copy``); None otherwise.
        self.stream_: Iterator[Any] | None = None

    @property
    def active(self) -> int:
        """How many passes over this streamer are open now."""
        return self.active_count_

    @property
    def is_activated_copy(self) -> bool:
        """True for the copy that ``with streamer as copy`` gives, which holds an open pass."""
        return self.stream_ is not None

    def __enter__(self) -> Streamer:
        if self.is_activated_copy:
            return self
        active = copy.copy(self)
        active.active_count_ = 0
        active.stream_ = Stream.iterate(self._stream)
        self.active_count_ += 1
        return active

    def __exit__(self, *exc: object) -> Literal[False]:
        if not self.is_activated_copy:
            self.active_count_ -= 1
            if self.active_count_ < 0:
                raise PescadorError(f"Active stream count passed below 0 for {self!r}")
        return False

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        # A pass opened by pescador_fp (a mux, an operator, a worker) counts as active too.
        self.active_count_ += 1
        try:
            yield from self._stream._open(ctx)
        finally:
            self.active_count_ -= 1

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        return self._stream._divide(index, count)

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return (self._stream,)

    def _describe(self) -> str:
        return f"{type(self).__name__}({self._stream!r})"

    def iterate(self, max_iter: float | None = None) -> Iterator[Any]:  # type: ignore[override]
        """Yield the items of one pass, at most ``max_iter`` of them."""
        limit = _item_count(max_iter, math.ceil)
        opens = not self.is_activated_copy
        with self as active:
            items = active.stream_
            assert items is not None
            try:
                yield from items if limit is None else itertools.islice(items, limit)
            finally:
                if opens:  # an activated copy's pass stays open, for the next iterate, as in Pescador
                    _close(items)

    def cycle(self, max_iter: float | None = None) -> Iterator[Any]:
        """Yield items pass after pass, at most ``max_iter`` in all; an empty stream ends, never hangs."""
        limit = _item_count(max_iter, math.floor)
        count = 0
        while limit is None or count < limit:
            before = count
            for item in self.iterate(None if limit is None else limit - count):
                count += 1
                yield item
            if count == before:
                return

    def __call__(self, max_iter: float | None = None, cycle: bool = False) -> Iterator[Any]:
        yield from (self.cycle(max_iter) if cycle else self.iterate(max_iter))

    def __iter__(self) -> Iterator[Any]:
        return self.iterate()


def _item_count(max_iter: float | None, rounding: Callable[[float], int]) -> int | None:
    """Pescador's ``max_iter`` as a number of items: None or infinity for all, none for zero or less.

    Pescador compares a running count with ``max_iter``, so a fractional one
    rounds up in ``iterate`` and down in ``cycle``; ``rounding`` says which.
    """
    if max_iter is None or max_iter == math.inf:
        return None
    return max(0, int(rounding(max_iter)))


def _close(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


def streamable(function: Callable[..., Any]) -> Callable[..., Streamer]:
    """Decorate a generator function so that calling it returns a Streamer, as in Pescador."""

    def make(*args: Any, **kwargs: Any) -> Streamer:
        return Streamer(function, *args, **kwargs)

    make.__name__ = getattr(function, "__name__", "streamable")
    make.__doc__ = function.__doc__
    make.__wrapped__ = function  # type: ignore[attr-defined]
    return make


def _streams(streamers: Any) -> list[Stream[Any]]:
    try:
        items = list(streamers)
    except TypeError:
        raise PescadorError(f"Cannot mux {streamers!r}: not a collection of streamers") from None
    if not items:
        raise PescadorError("Cannot mux an empty collection")
    return [s if isinstance(s, Stream) else Streamer(s) for s in items]


def _shares(weights: Any, n: int) -> np.ndarray:
    """Pescador's ``mux.weights``: the weights as floats that sum to one (uniform for None)."""
    w = np.full(n, 1.0 / n) if weights is None else np.atleast_1d(np.asarray(weights, dtype=float))
    shares: np.ndarray = w / w.sum()
    return shares


class _Mux(Streamer):
    """A Streamer whose stream is a pescador_fp multiplexer, with a Pescador mux's attributes.

    ``streamers`` holds the streamers as Pescador does; all sampling state
    lives in the iterators of the multiplexer, never on this object.
    """

    def _adopt_mux(self, streamers: Any, random_state: Any, built: Stream[Any]) -> None:
        self._adopt(built, (), {}, built)
        self.streamers = streamers
        self._random_state = random_state

    @property
    def n_streams(self) -> int:
        """How many streamers the mux draws from."""
        return len(self.streamers)

    @property
    def rng(self) -> Any:
        """The generator Pescador would hold: ``np.random`` for ``random_state=None``, else a RandomState.

        For reading only: the seed was taken from ``random_state`` when the
        mux was built, so this is a fresh copy and changing it changes nothing.
        """
        state = self._random_state
        if state is None:
            return np.random
        if isinstance(state, (int, np.integer)):
            return np.random.RandomState(int(state))
        return copy.deepcopy(state)


class StochasticMux(_Mux):
    """Pescador's StochasticMux, over ``pf.mux``: weights are output shares."""

    def __init__(
        self,
        streamers: Any,
        n_active: int,
        rate: float | None,
        weights: Any = None,
        mode: str = "with_replacement",
        prune_empty_streams: bool = True,
        dist: str = "binomial",
        random_state: Any = None,
    ) -> None:
        streams = _streams(streamers)
        seed = _seed(random_state)
        built = _pescador_errors(
            lambda: _mux(
                streams,
                n_active,
                rate,
                weights=weights,
                mode=mode,
                dist=dist,
                prune_empty=bool(prune_empty_streams),
                seed=seed,
            )
        )
        self._adopt_mux(streams, random_state, built)
        self.n_active, self.rate, self.mode, self.dist = n_active, rate, mode, dist
        self.prune_empty_streams = prune_empty_streams
        self.weights = _shares(weights, len(streams))


class ShuffledMux(_Mux):
    """Pescador's ShuffledMux, over ``pf.shuffled_mux``."""

    def __init__(self, streamers: Any, weights: Any = None, random_state: Any = None) -> None:
        streams = _streams(streamers)
        seed = _seed(random_state)
        self._adopt_mux(
            streams, random_state, _pescador_errors(lambda: _shuffled_mux(streams, weights, seed=seed))
        )
        self.weights = _shares(weights, len(streams))


class RoundRobinMux(_Mux):
    """Pescador's RoundRobinMux, over ``pf.round_robin``."""

    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        streams = _streams(streamers)
        seed = _seed(random_state)
        self._adopt_mux(
            streams, random_state, _pescador_errors(lambda: _round_robin(streams, mode, seed=seed))
        )
        self.mode = mode


class ChainMux(_Mux):
    """Pescador's ChainMux, over ``pf.chain``: streamers one after another.

    ``streamers`` is a list of streamers, a streamer or generator of them
    (read once, when built, as Pescador does), or a generator function of
    them (called afresh at every pass, as Pescador does).

    >>> def shards():
    ...     yield Streamer("ab")
    ...     yield Streamer("c")
    >>> "".join(ChainMux(shards)), "".join(ChainMux(shards, mode="cycle")(max_iter=5))
    ('abc', 'abcab')
    """

    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        _seed(random_state)  # checked as Pescador does; a chain draws nothing
        outer: Any
        if callable(streamers) and not isinstance(streamers, Iterable):
            outer = Streamer(streamers)
        else:
            try:
                outer = [s if isinstance(s, Stream) else Streamer(s) for s in streamers]
            except TypeError:
                raise PescadorError(f"Cannot chain {streamers!r}: not a collection of streamers") from None
            streamers = outer
        self._adopt_mux(streamers, random_state, _pescador_errors(lambda: _chain(_chainable(outer), mode)))
        self.mode = mode


def _chainable(streams: Stream[Any] | list[Stream[Any]]) -> Any:
    """The streams, or for none an empty Stream of streams (``pf.chain`` refuses an empty list)."""
    return streams if isinstance(streams, Stream) or streams else as_stream(streams)


def _ndarray_dict(data: Any) -> Any:
    if not isinstance(data, Mapping) or not all(isinstance(v, np.ndarray) for v in data.values()):
        raise DataError("Only ndarray types can be serialized")
    return data


class ZMQStreamer(Streamer):
    """Pescador's ZMQStreamer, moved onto ``pf.background``: the streamer runs in a worker process.

    The port and timeout arguments are accepted for compatibility and not
    needed: items travel through shared memory, always as arrays the consumer
    owns (large ones in shared memory blocks, as ``pf.background`` gives
    them; ``copy=True`` gives private copies, ``pf.background(copy=True)``).
    Errors in the worker are raised here instead of ending the stream early.
    """

    def __init__(
        self,
        streamer: Any,
        min_port: int = 49152,
        max_port: int = 65535,
        max_tries: int = 100,
        copy: bool = False,
        timeout: float | None = 5,
    ) -> None:
        if inspect.isgenerator(streamer):
            raise PescadorError(_zmq_generator_message(streamer))
        stream = _stream_of(streamer) | _map(_ndarray_dict) | _background(workers=1, copy=bool(copy))
        self._adopt(streamer, (), {}, stream)
        self.min_port, self.max_port, self.max_tries, self.copy, self.timeout = (
            min_port,
            max_port,
            max_tries,
            copy,
            timeout,
        )


def _zmq_generator_message(generator: Any) -> str:
    name = getattr(generator, "__name__", "generator")
    return (
        f"ZMQStreamer runs its streamer in a worker process, which cannot take the generator object "
        f"{name}(...): a generator cannot be pickled, and runs only once. Wrap the generator function "
        f"and its arguments in a Streamer: ZMQStreamer(Streamer({name}, ...)), for example "
        f"ZMQStreamer(Streamer(buffer_stream, mux, 32)) instead of ZMQStreamer(buffer_stream(mux, 32))."
    )


def buffer_stream(
    stream: Any, buffer_size: int, partial: bool = False, axis: int | None = None
) -> Iterator[Any]:
    """Stack every ``buffer_size`` dict samples into one dict of arrays, as Pescador does.

    Each key of a batch's first sample becomes ``np.array`` of the samples'
    values (``np.concatenate`` along ``axis`` if given), whatever the values
    are: a list field becomes one array, not a list of arrays as in
    ``pf.batch``. A later sample's extra keys are left out and a missing one
    is a ``KeyError``, as in Pescador.

    >>> [b["x"].tolist() for b in buffer_stream([{"x": [i, -i]} for i in range(3)], 2, partial=True)]
    [[[0, 0], [1, -1]], [[2, -2]]]

    Raises:
        PescadorError: at the first ``next()``, if ``buffer_size`` is not an int >= 1.
        DataError: if a sample is not a dict, or the values at a key cannot be stacked.
        KeyError: if a sample lacks a key of the first sample of its batch.
    """
    size = _pescador_errors(lambda: check_int("buffer_stream", "buffer_size", buffer_size, 1))
    items = iter(_stream_of(stream))
    try:
        for samples in sample_groups(items, size, bool(partial)):
            yield _stack_fields(samples, axis)
    finally:
        _close(items)


def _stack_fields(samples: list[Any], axis: Any) -> dict[Any, Any]:
    """Pescador's batch of ``samples``: for each key of the first one, its values stacked as one array."""
    try:
        keys = list(samples[0].keys())
    except AttributeError:
        raise _not_data("buffer_stream", samples[0], 0) from None
    return {key: _stack_column(key, _column(samples, key), axis) for key in keys}


def _column(samples: list[Any], key: Any) -> list[Any]:
    column = []
    for i, sample in enumerate(samples):
        try:
            column.append(sample[key])
        except TypeError:
            raise _not_data("buffer_stream", sample, i) from None
    return column


def _stack_column(key: Any, column: list[Any], axis: Any) -> np.ndarray:
    try:
        return np.array(column) if axis is None else np.concatenate(column, axis=axis)
    except (ValueError, TypeError) as error:  # numpy's AxisError is a ValueError
        shapes = [_shape(value) for value in column]
        found = _describe_shape(shapes[0]) + " in sample 0"
        other = next((i for i, shape in enumerate(shapes) if not _fits(shapes[0], shape, axis)), None)
        if other is not None:
            found += f" but {_describe_shape(shapes[other])} in sample {other}"
        raise DataError(
            f"buffer_stream: cannot stack the values at key {key!r} ({found}, axis={axis!r}): {error}"
        ) from error


def _shape(value: Any) -> tuple[int, ...] | None:
    """The value's shape as numpy sees it; None for a ragged nest of sequences, which has none."""
    try:
        return tuple(np.shape(value))
    except ValueError:
        return None


def _describe_shape(shape: tuple[int, ...] | None) -> str:
    return "a ragged sequence" if shape is None else f"shape {shape}"


def _fits(first: tuple[int, ...] | None, shape: tuple[int, ...] | None, axis: Any) -> bool:
    """Whether ``shape`` stacks with ``first``: equal, or equal off ``axis`` when concatenating."""
    if first is None or shape is None or len(first) != len(shape) or not first:
        return first == shape
    if not isinstance(axis, (int, np.integer)):  # None stacks on a new axis; any other fails anyway
        return first == shape
    cut = int(axis) % len(first)
    return first[:cut] + first[cut + 1 :] == shape[:cut] + shape[cut + 1 :]


def _not_data(where: str, sample: Any, index: int | None = None) -> DataError:
    which = "a sample" if index is None else f"sample {index} of a batch"
    return DataError(
        f"{where}: {which} is not data-like (a dict, or a sequence that the keys index): "
        f"{reprlib.repr(sample)} ({type(sample).__name__})"
    )


def tuples(stream: Any, *keys: Any) -> Iterator[Any]:
    """Yield each sample as the tuple of its values at ``keys``, as Pescador does.

    Any sample that its keys index works, a list indexed by ints included.

    >>> list(tuples([[1, 2, 3], [4, 5, 6]], 2, 0))
    [(3, 1), (6, 4)]
    """
    if not keys:
        raise PescadorError("tuples: keys must name at least one key, got none")
    yield from _stream_of(stream) | _map(functools.partial(_values_at, "tuples", keys, tuple))


def _values_at(where: str, keys: Any, kind: Callable[[Iterable[Any]], Any], sample: Any) -> Any:
    """``kind`` of the sample's values at ``keys``; a sample that cannot be indexed is a DataError."""
    try:
        return kind(sample[key] for key in keys)
    except TypeError:
        raise _not_data(where, sample) from None


def keras_tuples(stream: Any, inputs: Any = None, outputs: Any = None) -> Iterator[Any]:
    """Yield each sample as an ``(x, y)`` pair for Keras, as Pescador does.

    A key given as a string gives its value bare, a list of keys a list of
    values, nothing gives None.

    >>> list(keras_tuples([{"a": 1, "b": 2, "c": 3}], inputs=["a", "b"], outputs="c"))
    [([1, 2], 3)]
    """
    (ins, bare_x), (outs, bare_y) = _keras_keys(inputs), _keras_keys(outputs)
    if not ins + outs:  # a tuple and a list fail to add, with TypeError, as in Pescador
        raise PescadorError(
            f"keras_tuples: at least one of inputs or outputs must name a key, got "
            f"inputs={inputs!r}, outputs={outputs!r}"
        )
    yield from _stream_of(stream) | _map(functools.partial(_keras_pair, (ins, bare_x), (outs, bare_y)))


def _keras_pair(inputs: tuple[Any, bool], outputs: tuple[Any, bool], sample: Any) -> tuple[Any, Any]:
    """The ``(x, y)`` of one sample: each a list of values, a bare value, or None for no keys."""
    return _keras_values(*inputs, sample), _keras_values(*outputs, sample)


def _keras_values(keys: Any, bare: bool, sample: Any) -> Any:
    values = _values_at("keras_tuples", keys, list, sample)
    return values[0] if bare else (values or None)


def _keras_keys(keys: Any) -> tuple[Any, bool]:
    """Pescador's reading of ``inputs`` or ``outputs``: the keys to pick, and whether the value comes bare."""
    if keys and isinstance(keys, str):
        return [keys], True
    return keys or [], False


def cache(stream: Any, n_cache: int, prob: float = 0.5, random_state: Any = None) -> Iterator[Any]:
    """Pescador's stochastic cache, over ``pf.cache``."""
    op = _pescador_errors(lambda: _cache(n_cache, prob, _seed(random_state)))
    yield from _stream_of(stream) | op
