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
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ._seed import SeedContext
from ._stream import Stream, as_stream
from .background import background as _background
from .errors import DataError, PescadorError
from .mux import chain as _chain
from .mux import mux as _mux
from .mux import round_robin as _round_robin
from .mux import shuffled_mux as _shuffled_mux
from .ops.batch import batch as _batch
from .ops.cache import cache as _cache
from .ops.map import map as _map
from .ops.tuples import keras_tuples as _keras_tuples
from .ops.tuples import tuples as _tuples
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
    so ``streamer | pf.batch(32)`` works.
    """

    def __init__(self, streamer: Any, *args: Any, **kwargs: Any) -> None:
        if not (inspect.isgeneratorfunction(streamer) or isinstance(streamer, (Iterable, Streamer))):
            raise PescadorError(
                "`streamer` must be an iterable or callable function that returns an iterable object."
            )
        self.streamer, self.args, self.kwargs = streamer, args, kwargs
        self._stream: Stream[Any] = _source(streamer, args, kwargs)

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return self._stream._open(ctx)

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        return self._stream._divide(index, count)

    def _describe(self) -> str:
        return f"{type(self).__name__}({self._stream!r})"

    def iterate(self, max_iter: int | None = None) -> Iterator[Any]:  # type: ignore[override]
        """Yield the items of one pass, at most ``max_iter`` of them."""
        items = Stream.iterate(self)
        return items if max_iter is None else itertools.islice(items, max_iter)

    def cycle(self, max_iter: int | None = None) -> Iterator[Any]:
        """Yield items pass after pass, at most ``max_iter`` in all; an empty stream ends, never hangs."""
        passes: Iterator[Any] = itertools.chain.from_iterable(self._passes())
        return passes if max_iter is None else itertools.islice(passes, max_iter)

    def _passes(self) -> Iterator[Iterator[Any]]:
        while True:
            items = Stream.iterate(self)
            first = next(items, _NOTHING)
            if first is _NOTHING:
                return
            yield itertools.chain((first,), items)

    def __call__(self, max_iter: int | None = None, cycle: bool = False) -> Iterator[Any]:
        yield from (self.cycle(max_iter) if cycle else self.iterate(max_iter))

    def __iter__(self) -> Iterator[Any]:
        return self.iterate()


_NOTHING = object()


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


class _Mux(Streamer):
    """A Streamer whose stream is a pescador_fp multiplexer."""

    def __init__(self, built: Stream[Any]) -> None:
        self.streamer, self.args, self.kwargs = built, (), {}
        self._stream = built


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
        super().__init__(
            _pescador_errors(
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
        )
        self.n_active, self.rate, self.weights, self.mode, self.dist = n_active, rate, weights, mode, dist


class ShuffledMux(_Mux):
    """Pescador's ShuffledMux, over ``pf.shuffled_mux``."""

    def __init__(self, streamers: Any, weights: Any = None, random_state: Any = None) -> None:
        streams = _streams(streamers)
        seed = _seed(random_state)
        super().__init__(_pescador_errors(lambda: _shuffled_mux(streams, weights, seed=seed)))


class RoundRobinMux(_Mux):
    """Pescador's RoundRobinMux, over ``pf.round_robin``."""

    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        streams = _streams(streamers)
        seed = _seed(random_state)
        super().__init__(_pescador_errors(lambda: _round_robin(streams, mode, seed=seed)))


class ChainMux(_Mux):
    """Pescador's ChainMux, over ``pf.chain``: a list of streamers, or a streamer (or generator) of them."""

    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        # Pescador reads the collection (a list, a generator, a Streamer of streamers) once, when built.
        try:
            outer = [s if isinstance(s, Stream) else Streamer(s) for s in streamers]
        except TypeError:
            raise PescadorError(f"Cannot chain {streamers!r}: not a collection of streamers") from None
        super().__init__(_pescador_errors(lambda: _chain(_chainable(outer), mode)))


def _chainable(streams: list[Stream[Any]]) -> Any:
    """The streams, or for none an empty Stream of streams (``pf.chain`` refuses an empty list)."""
    return streams if streams else as_stream(streams)


def _ndarray_dict(data: Any) -> Any:
    if not isinstance(data, Mapping) or not all(isinstance(v, np.ndarray) for v in data.values()):
        raise DataError("Only ndarray types can be serialized")
    return data


class ZMQStreamer(Streamer):
    """Pescador's ZMQStreamer, moved onto ``pf.background``: the streamer runs in a worker process.

    The port, copy and timeout arguments are accepted for compatibility and
    not needed: items travel through shared memory, always as arrays the
    consumer owns. Errors in the worker are raised here instead of ending the
    stream early.
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
        self.streamer, self.args, self.kwargs = streamer, (), {}
        self.min_port, self.max_port, self.max_tries, self.copy, self.timeout = (
            min_port,
            max_port,
            max_tries,
            copy,
            timeout,
        )
        self._stream = _stream_of(streamer) | _map(_ndarray_dict) | _background(workers=1)


def buffer_stream(
    stream: Any, buffer_size: int, partial: bool = False, axis: int | None = None
) -> Iterator[Any]:
    """Stack ``buffer_size`` dict items into one, as Pescador does, over ``pf.batch``."""
    op = _pescador_errors(lambda: _batch(buffer_size, partial=partial, axis=axis))
    yield from _stream_of(stream) | _map(_dict_item) | op


def _dict_item(data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise DataError(f"Malformed data stream: {data}")
    return data


def tuples(stream: Any, *keys: Any) -> Iterator[Any]:
    """Yield each dict item as the tuple of its values at ``keys``."""
    op = _pescador_errors(lambda: _tuples(*keys))
    yield from _stream_of(stream) | op


def keras_tuples(stream: Any, inputs: Any = None, outputs: Any = None) -> Iterator[Any]:
    """Yield each dict item as an ``(x, y)`` pair for Keras."""
    op = _pescador_errors(lambda: _keras_tuples(inputs, outputs))
    yield from _stream_of(stream) | op


def cache(stream: Any, n_cache: int, prob: float = 0.5, random_state: Any = None) -> Iterator[Any]:
    """Pescador's stochastic cache, over ``pf.cache``."""
    op = _pescador_errors(lambda: _cache(n_cache, prob, _seed(random_state)))
    yield from _stream_of(stream) | op
