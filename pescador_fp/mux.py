"""Multiplexers, many streams into one: ``mux``, ``shuffled_mux``, ``round_robin``, ``chain``.

``mux`` keeps a working set of ``n_active`` open sources. Each *activation*
opens one source (a fresh pass) and gives it a random number of items to
yield, with mean ``rate``; the output interleaves the open sources at random
(uniformly, or in ``single_active`` mode in proportion to their weights), and
a source is closed as soon as its items are out. Sources are activated with
probability proportional to their weights, so each source's long-run share of
the output is ``weights[i] / sum(weights)`` whatever ``n_active`` is: every
activation contributes ``rate`` items on average, whichever slot it lands in.
See ``docs/mux.md`` for the analysis.
"""

from __future__ import annotations

import itertools
import math
import numbers
import reprlib
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._check import check_bool, check_int
from ._seed import Seed, SeedContext, check_seed
from ._stream import Stream, _run, as_stream

__all__ = ["chain", "mux", "round_robin", "shuffled_mux"]

MUX_MODES = ("with_replacement", "single_active", "exhaustive")
DISTS = ("constant", "binomial", "poisson")
ROUND_ROBIN_MODES = ("exhaustive", "cycle", "permuted_cycle")
CHAIN_MODES = ("exhaustive", "cycle")

# Random numbers drawn per call to the generator: a call per item would cost
# more than the multiplexing itself.
_DRAWS_PER_CALL = 4096
_END = object()
# The count of an activation that runs until its source ends (rate=None).
_UNTIL_END = 1 << 62
# The range of ``rate``: below ``_MIN_RATE`` almost every activation yields nothing and
# a pass spins through draws; above ``_MAX_RATE`` the counts leave numpy's samplers' range.
_MIN_RATE = 1e-3
_MAX_RATE = 2.0**50
# Positive weights below the smallest normal float lose their precision in the draws.
_MIN_WEIGHT = float(np.finfo(np.float64).tiny)
_MAX_FLOAT = float(np.finfo(np.float64).max)


# ---------------------------------------------------------------- arguments


def _check_streams(where: str, streams: object) -> tuple[Stream[Any], ...]:
    if isinstance(streams, (Stream, str)) or not isinstance(streams, Sequence):
        raise TypeError(
            f"{where}: streams must be a list or tuple of streams, got {reprlib.repr(streams)} "
            f"({type(streams).__name__})"
        )
    if len(streams) == 0:
        raise ValueError(f"{where}: streams must hold at least one stream, got {streams!r}")
    return tuple(as_stream(s) for s in streams)


def _check_weights(where: str, weights: object, n: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * n
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(
            f"{where}: weights must be a list of finite numbers, got {reprlib.repr(weights)}"
        ) from None
    if w.shape != (n,):
        raise ValueError(
            f"{where}: weights must hold one number per stream ({n}), got {reprlib.repr(weights)}"
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{where}: weights must be finite and non-negative, got {reprlib.repr(weights)}")
    if not (w > 0).any():
        raise ValueError(
            f"{where}: weights must hold at least one positive number, got {reprlib.repr(weights)}"
        )
    with np.errstate(over="ignore"):
        total = np.cumsum(w)[-1]  # as the draws sum them
    if not np.isfinite(total):
        raise ValueError(
            f"{where}: weights must have a finite sum (at most {_MAX_FLOAT:.3g}), got "
            f"{reprlib.repr(weights)}; scale them down"
        )
    tiny = (w > 0) & (w < _MIN_WEIGHT)
    if tiny.any():
        raise ValueError(
            f"{where}: weights must be 0 or at least {_MIN_WEIGHT:.3g} (the smallest normal float), "
            f"got {float(w[tiny][0])!r} in {reprlib.repr(weights)}; scale them up"
        )
    return tuple(w.tolist())


def _check_choice(where: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def _check_rate(rate: object, mode: str, n_streams: int) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"mux: rate must be a positive number or None, got {reprlib.repr(rate)}")
    value = float(rate)
    if not (0 < value < math.inf):
        raise ValueError(f"mux: rate must be a positive number or None, got {rate!r}")
    if value < _MIN_RATE:
        raise ValueError(
            f"mux: rate must be at least {_MIN_RATE:g} (or None), got {rate!r}: below 1 an activation "
            f"yields an item with probability rate, so each item would take about {1 / value:.3g} "
            "activations"
        )
    # Exhaustive mode gives a source up to rate * len(streams) items in its one activation.
    if mode == "exhaustive" and value * n_streams > _MAX_RATE:
        raise ValueError(
            f"mux: rate must keep rate * len(streams) at most {_MAX_RATE:.3g} in exhaustive mode, "
            f"got rate={rate!r} (rate * len(streams) = {value * n_streams:.3g}); use rate=None to "
            "run each activation until its source ends"
        )
    if value > _MAX_RATE:
        raise ValueError(
            f"mux: rate must be at most {_MAX_RATE:.3g} items per activation, got rate={rate!r}; use "
            "rate=None to run each activation until its source ends"
        )
    return value


def _uniform(weights: Sequence[float]) -> bool:
    """Whether ``weights`` are the default ones (all 1), which a repr leaves out."""
    return all(w == 1.0 for w in weights)


def _describe_streams(streams: Sequence[Stream[Any]]) -> str:
    if len(streams) > 3:
        return f"<{len(streams)} streams>"
    return f"[{', '.join(map(repr, streams))}]"


def _open(stream: Stream[Any], ctx: SeedContext) -> Generator[Any, None, None]:
    """Open one pass of a sub-stream as a closable generator."""
    return _run(stream, ctx)


def _peek(items: Iterator[Any]) -> tuple[Any, Iterator[Any]] | None:
    """The first item and an iterator over all of them, or None if there is none."""
    first = next(items, _END)
    if first is _END:
        return None
    return first, itertools.chain((first,), items)


# ---------------------------------------------------------------- activation counts


def _count_sampler(rng: np.random.Generator, dist: str, n_active: int) -> Callable[[float, int], np.ndarray]:
    """Draw the numbers of items of ``size`` activations; the mean is exactly ``rate``.

    For ``rate >= 1`` every activation yields at least one item:
    constant: ``rate`` rounded up or down at random (an integer rate is exact);
    poisson: ``1 + Poisson(rate - 1)``; binomial: ``1 + Binomial(N, (rate - 1) / N)``
    with ``N = ceil((rate - 1) * n_active / (n_active - 1))``, Pescador's choice
    of spread without its truncation (``n_active == 1`` falls back to poisson).
    For ``rate < 1`` an activation yields one item with probability ``rate``.
    """

    def draw(rate: float, size: int) -> np.ndarray:
        if rate < 1:
            return (rng.random(size) < rate).astype(np.int64)
        extra = rate - 1
        if dist == "constant" or extra == 0:
            whole = math.floor(rate)
            return whole + (rng.random(size) < rate - whole).astype(np.int64)
        if dist == "poisson" or n_active == 1:
            return 1 + rng.poisson(extra, size)
        trials = math.ceil(extra * n_active / (n_active - 1))
        return 1 + rng.binomial(trials, extra / trials, size)

    return draw


class _Picker:
    """Draws source indices with probability proportional to their weights, in bulk."""

    def __init__(self, weights: Sequence[float], rng: np.random.Generator) -> None:
        self.weights = np.array(weights, dtype=np.float64)
        self.rng = rng
        self._refresh()

    def _refresh(self) -> None:
        self.cumulative = np.cumsum(self.weights)
        self.buffer: list[int] = []

    @property
    def any_left(self) -> bool:
        return bool(self.cumulative[-1] > 0)

    def drop(self, source: int) -> None:
        self.weights[source] = 0.0
        self._refresh()

    def batch(self) -> list[int]:
        """Many draws at once, in order."""
        u = self.rng.random(_DRAWS_PER_CALL) * self.cumulative[-1]
        picks = np.searchsorted(self.cumulative, u, side="right")
        drawn: list[int] = np.minimum(picks, len(self.weights) - 1).tolist()
        return drawn

    def pick(self) -> int:
        """One draw, from a buffer refilled in bulk."""
        if not self.buffer:
            self.buffer = self.batch()[::-1]
        return self.buffer.pop()


def _weighted_order(weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """A random order of the positive-weight sources, heavier ones earlier on average."""
    w = np.asarray(weights)
    positive = np.flatnonzero(w > 0)
    # Efraimidis-Spirakis: ascending -log(u) / w, in log space so that no weight overflows it.
    keys = np.log(-np.log(rng.random(len(positive)))) - np.log(w[positive])
    order: list[int] = positive[np.argsort(keys, kind="stable")].tolist()
    return order


# ---------------------------------------------------------------- mux


@dataclass(frozen=True, repr=False, eq=False)
class _EmptyPart(Stream[Any]):
    """A part of a divided multiplexer that gets no sources: it yields nothing."""

    what: str

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return iter(())

    def _describe(self) -> str:
        return f"<no sources: {self.what}>"


@dataclass(frozen=True, repr=False, eq=False)
class _Mux(Stream[Any]):
    streams: tuple[Stream[Any], ...]
    n_active: int
    rate: float | None
    weights: tuple[float, ...]
    mode: str
    dist: str
    prune_empty: bool
    seed: Seed | None

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _mux_items(self, ctx)

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        """Part ``index``: the working set is shared out, so all parts keep ``n_active`` open together.

        The sources are dealt among ``min(count, n_active, len(streams))``
        parts, each with its share of ``n_active``; any further part is empty
        with weight 0. A part's weight is the sum of its sources' weights, so
        the merge keeps every source's share. In exhaustive mode with a
        ``rate`` a part's rate is scaled so that each source's activation keeps
        the mean length it has in the whole mux.
        """
        parts = min(count, self.n_active, len(self.streams))
        if index >= parts:
            head = f"mux(<{len(self.streams)} streams>, n_active={self.n_active})"
            return _EmptyPart(f"{head} divided among {parts} of {count} parts"), 0.0
        streams = self.streams[index::parts]
        weights = self.weights[index::parts]
        n_active = self.n_active // parts + (index < self.n_active % parts)
        if self.mode != "with_replacement":
            n_active = min(n_active, len(streams))
        rate = self.rate
        if self.mode == "exhaustive" and rate is not None and sum(weights) > 0:
            rate *= (sum(weights) / sum(self.weights)) * (len(self.streams) / len(streams))
        divided = _Mux(streams, n_active, rate, weights, self.mode, self.dist, self.prune_empty, self.seed)
        return divided, sum(weights)

    def _describe(self) -> str:
        parts = [_describe_streams(self.streams), f"n_active={self.n_active}", f"rate={self.rate!r}"]
        if not _uniform(self.weights):
            parts.append(f"weights={reprlib.repr(list(self.weights))}")
        if self.mode != "with_replacement":
            parts.append(f"mode={self.mode!r}")
        if self.dist != "binomial":
            parts.append(f"dist={self.dist!r}")
        if not self.prune_empty:
            parts.append("prune_empty=False")
        if self.seed is not None:
            parts.append(f"seed={self.seed!r}")
        return f"mux({', '.join(parts)})"


def _mux_items(m: _Mux, ctx: SeedContext) -> Iterator[Any]:
    rng = ctx.generator(m.seed, m.depth)
    below = ctx.reseeded(m.seed, m.depth)
    draw_counts = _count_sampler(rng, m.dist, m.n_active)
    counts: list[int] = []
    n = len(m.streams)
    total_weight = sum(m.weights)
    n_valid = sum(w > 0 for w in m.weights)  # sources that may still be drawn
    picker = _Picker(m.weights, rng)
    order = _weighted_order(m.weights, rng)[::-1] if m.mode == "exhaustive" else []
    activations = [0] * n
    # Sources whose activation came up empty since the last one that yielded:
    # once it holds every usable source, nothing more will come (prune_empty=False).
    empty_lately: set[int] = set()

    slots: list[Iterator[Any] | None] = [None] * m.n_active  # what the output draws from
    gens: list[Any] = [None] * m.n_active  # the generators behind them, to close
    left = [0] * m.n_active  # items still to yield in each slot's activation
    source_of = [-1] * m.n_active
    active: dict[int, int] = {}  # source -> slot (single_active)
    # single_active draws slots in proportion to their sources' weights (by rejection
    # against the heaviest open one), so that a heavy source's backlog always drains.
    weighted = m.mode == "single_active"
    slot_weight = [0.0] * m.n_active
    heaviest = 0.0

    def activation_count(source: int) -> int:
        if m.rate is None:
            return _UNTIL_END
        if m.mode == "exhaustive":  # one activation per source: its length carries its weight
            return int(draw_counts(m.rate * n * (m.weights[source] / total_weight), 1)[0])
        if not counts:
            counts.extend(draw_counts(m.rate, _DRAWS_PER_CALL).tolist()[::-1])
        return counts.pop()

    def next_source() -> int | None:
        if m.mode == "exhaustive":
            return order.pop() if order else None
        if n_valid == 0 or len(empty_lately) >= n_valid:
            return None
        return picker.pick()

    def release(k: int) -> None:
        if gens[k] is not None:
            gens[k].close()
        active.pop(source_of[k], None)
        slots[k] = gens[k] = None
        source_of[k] = -1
        slot_weight[k] = 0.0

    def fill(k: int) -> None:
        nonlocal heaviest
        _fill(k)
        heaviest = max(slot_weight)

    def _fill(k: int) -> None:
        nonlocal n_valid
        while True:
            if m.mode == "single_active" and len(active) >= n_valid:
                return  # every usable source is already open in another slot
            source = next_source()
            if source is None:
                return
            items = activation_count(source)
            if m.mode == "single_active" and source in active:
                left[active[source]] += items  # drawing an open source extends its activation
                continue
            if items == 0:
                continue
            activations[source] += 1
            gen = _open(m.streams[source], below.child(source, activations[source]))
            peeked = _peek(gen)
            if peeked is None:
                gen.close()
                if m.prune_empty:
                    n_valid -= 1
                    if n_valid:
                        picker.drop(source)
                else:
                    empty_lately.add(source)
                continue
            empty_lately.clear()
            slots[k], gens[k], left[k], source_of[k] = peeked[1], gen, items, source
            slot_weight[k] = m.weights[source]
            if m.mode == "single_active":
                active[source] = k
            return

    def slot_draws() -> Iterator[int]:
        if m.n_active == 1:
            yield from itertools.repeat(0)
        while True:
            ks = rng.integers(0, m.n_active, _DRAWS_PER_CALL).tolist()
            if not weighted or heaviest == 0:  # nothing open: the loop below will notice
                yield from ks
                continue
            for k, u in zip(ks, rng.random(_DRAWS_PER_CALL).tolist()):
                if u * heaviest < slot_weight[k]:
                    yield k

    try:
        for k in range(m.n_active):
            fill(k)
        if all(s is None for s in slots):
            return
        for k in slot_draws():
            items = slots[k]
            if items is None:
                if all(s is None for s in slots):
                    return
                continue
            x = next(items, _END)
            if x is _END:  # the source ran dry before its count
                release(k)
                fill(k)
                continue
            left[k] -= 1
            if not left[k]:
                release(k)
                fill(k)
            yield x
    finally:
        for k in range(m.n_active):
            release(k)


def mux(
    streams: Sequence[Stream[Any]],
    n_active: int,
    rate: float | None = None,
    *,
    weights: Sequence[float] | np.ndarray | None = None,
    mode: str = "with_replacement",
    dist: str = "binomial",
    prune_empty: bool = True,
    seed: Seed | None = None,
) -> Stream[Any]:
    """Interleave many streams through a working set of ``n_active`` open ones.

    Each activation opens a source (a fresh pass) for a random number of
    items with mean ``rate`` (``dist``: ``"constant"``, ``"binomial"``,
    ``"poisson"``; ``rate=None``: until the source ends). Sources are
    activated with probability proportional to ``weights``, so source ``i``
    makes ``weights[i] / sum(weights)`` of the output in the long run.
    ``mode``: ``"with_replacement"`` (a source may be open in several slots),
    ``"single_active"`` (at most one slot per source; drawing an open source
    extends its activation), ``"exhaustive"`` (each source activated once,
    for ``rate * len(streams) * weights[i] / sum(weights)`` items on average;
    with ``rate=None`` every item of every source exactly once).
    ``prune_empty`` drops sources whose activation yields nothing. If every
    source is empty, iteration ends.

    >>> import pescador_fp as pf
    >>> letters = [pf.from_iterable("ab"), pf.from_iterable("cde"), pf.from_iterable("fghi")]
    >>> "".join(sorted(pf.mux(letters, n_active=2, mode="exhaustive", seed=0)))
    'abcdefghi'
    >>> s = pf.mux([pf.from_iterable("x") | pf.cycle(), pf.from_iterable("y") | pf.cycle()],
    ...            n_active=1, rate=4, weights=[3, 1], seed=0)
    >>> out = list(s | pf.take(4000))
    >>> round(out.count("x") / len(out), 1)
    0.8
    """
    streams_t = _check_streams("mux", streams)
    n_active = check_int("mux", "n_active", n_active, 1)
    mode = _check_choice("mux", "mode", mode, MUX_MODES)
    if mode != "with_replacement" and n_active > len(streams_t):
        raise ValueError(
            f"mux: mode={mode!r} needs n_active <= the number of streams ({len(streams_t)}), got {n_active}"
        )
    return _Mux(
        streams_t,
        n_active,
        _check_rate(rate, mode, len(streams_t)),
        _check_weights("mux", weights, len(streams_t)),
        mode,
        _check_choice("mux", "dist", dist, DISTS),
        check_bool("mux", "prune_empty", prune_empty),
        check_seed("mux: seed", seed),
    )


# ---------------------------------------------------------------- shuffled_mux


@dataclass(frozen=True, repr=False, eq=False)
class _ShuffledMux(Stream[Any]):
    streams: tuple[Stream[Any], ...]
    weights: tuple[float, ...]
    seed: Seed | None

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _shuffled_items(self, ctx)

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        """Part ``index``: the sources dealt among ``min(count, len(streams))`` parts, weighted by their sum.

        Parts beyond the number of sources are empty, with weight 0.
        """
        parts = min(count, len(self.streams))
        if index >= parts:
            head = f"shuffled_mux(<{len(self.streams)} streams>)"
            return _EmptyPart(f"{head} divided among {parts} of {count} parts"), 0.0
        weights = self.weights[index::parts]
        return _ShuffledMux(self.streams[index::parts], weights, self.seed), sum(weights)

    def _describe(self) -> str:
        parts = [_describe_streams(self.streams)]
        if not _uniform(self.weights):
            parts.append(f"weights={reprlib.repr(list(self.weights))}")
        if self.seed is not None:
            parts.append(f"seed={self.seed!r}")
        return f"shuffled_mux({', '.join(parts)})"


def _shuffled_items(m: _ShuffledMux, ctx: SeedContext) -> Iterator[Any]:
    rng = ctx.generator(m.seed, m.depth)
    below = ctx.reseeded(m.seed, m.depth)
    n = len(m.streams)
    picker = _Picker(m.weights, rng)
    passes = [0] * n
    slots: list[Iterator[Any] | None] = [None] * n
    gens: list[Generator[Any, None, None] | None] = [None] * n

    def start(k: int) -> Iterator[Any] | None:
        """Open a fresh pass of stream ``k``; drop the stream if the pass is empty."""
        passes[k] += 1
        gen = gens[k] = _open(m.streams[k], below.child(k, passes[k]))
        peeked = _peek(gen)
        if peeked is None:
            gen.close()
            gens[k] = None
            picker.drop(k)
            return None
        slots[k] = peeked[1]
        return peeked[1]

    try:
        while picker.any_left:
            for k in picker.batch():
                items = slots[k] or start(k)
                if items is None:
                    break  # a stream was dropped: draw again with the new weights
                x = next(items, _END)
                if x is _END:  # an exhausted stream restarts, and this draw takes its first item
                    finished = gens[k]
                    if finished is not None:
                        finished.close()
                    slots[k] = gens[k] = None
                    items = start(k)
                    if items is None:
                        break
                    x = next(items)
                yield x
    finally:
        for gen in gens:
            if gen is not None:
                gen.close()


def shuffled_mux(
    streams: Sequence[Stream[Any]],
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    seed: Seed | None = None,
) -> Stream[Any]:
    """Interleave all streams at random, each item from stream ``i`` with probability ∝ ``weights[i]``.

    A stream that ends restarts with a fresh pass; a stream whose pass yields
    nothing is dropped, and when all are dropped iteration ends.

    >>> import pescador_fp as pf
    >>> s = pf.shuffled_mux([pf.from_iterable("ab"), pf.from_iterable("xyz")], weights=[1, 3], seed=0)
    >>> out = list(s | pf.take(4000))
    >>> round(sum(c in "xyz" for c in out) / len(out), 1)
    0.8
    """
    streams_t = _check_streams("shuffled_mux", streams)
    return _ShuffledMux(
        streams_t,
        _check_weights("shuffled_mux", weights, len(streams_t)),
        check_seed("shuffled_mux: seed", seed),
    )


# ---------------------------------------------------------------- round_robin


@dataclass(frozen=True, repr=False, eq=False)
class _RoundRobin(Stream[Any]):
    streams: tuple[Stream[Any], ...]
    mode: str
    seed: Seed | None

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _round_robin_items(self, ctx)

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        if len(self.streams) < count:
            return None
        return _RoundRobin(self.streams[index::count], self.mode, self.seed), None

    def _describe(self) -> str:
        mode = "" if self.mode == "exhaustive" else f", mode={self.mode!r}"
        seed = "" if self.seed is None else f", seed={self.seed!r}"
        return f"round_robin({_describe_streams(self.streams)}{mode}{seed})"


def _round_robin_items(m: _RoundRobin, ctx: SeedContext) -> Iterator[Any]:
    rng = ctx.generator(m.seed, m.depth) if m.mode == "permuted_cycle" else None
    below = ctx.reseeded(m.seed, m.depth)
    n = len(m.streams)
    gens: list[Generator[Any, None, None]] = []
    try:
        for round_ in itertools.count():
            order = list(range(n)) if rng is None else rng.permutation(n).tolist()
            gens = [_open(m.streams[i], below.child(i, round_)) for i in order]
            live = list(gens)
            produced = False
            while live:
                for items in list(live):
                    x = next(items, _END)
                    if x is _END:
                        live.remove(items)
                        items.close()
                        continue
                    produced = True
                    yield x
            if m.mode == "exhaustive" or not produced:
                return  # a round with nothing in it would repeat forever
    finally:
        for gen in gens:
            gen.close()


def round_robin(
    streams: Sequence[Stream[Any]], mode: str = "exhaustive", *, seed: Seed | None = None
) -> Stream[Any]:
    """Take one item from each stream in turn, skipping streams that have ended.

    ``mode="exhaustive"`` ends when every stream has; ``"cycle"`` then starts
    every stream afresh, in the same order; ``"permuted_cycle"`` in a new
    random order each round.

    >>> import pescador_fp as pf
    >>> "".join(pf.round_robin([pf.from_iterable("ab"), pf.from_iterable("cde"), pf.from_iterable("fghi")]))
    'acfbdgehi'
    """
    streams_t = _check_streams("round_robin", streams)
    return _RoundRobin(
        streams_t,
        _check_choice("round_robin", "mode", mode, ROUND_ROBIN_MODES),
        check_seed("round_robin: seed", seed),
    )


# ---------------------------------------------------------------- chain


@dataclass(frozen=True, repr=False, eq=False)
class _Chain(Stream[Any]):
    streams: tuple[Stream[Any], ...] | Stream[Any]
    mode: str

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _chain_items(self, ctx)

    def _describe(self) -> str:
        inner = repr(self.streams) if isinstance(self.streams, Stream) else _describe_streams(self.streams)
        mode = "" if self.mode == "exhaustive" else f", mode={self.mode!r}"
        return f"chain({inner}{mode})"


def _chain_items(m: _Chain, ctx: SeedContext) -> Iterator[Any]:
    for round_ in itertools.count():
        produced = False
        subs: Iterator[Any]
        if isinstance(m.streams, Stream):
            subs = _open(m.streams, ctx.child(0, round_))
        else:
            subs = iter(m.streams)
        for i, sub in enumerate(subs):
            for x in _open(as_stream(sub), ctx.child(1, round_, i)):
                produced = True
                yield x
        if m.mode == "exhaustive" or not produced:
            return


def chain(streams: Sequence[Stream[Any]] | Stream[Stream[Any]], mode: str = "exhaustive") -> Stream[Any]:
    """Yield every item of the first stream, then of the second, and so on.

    ``streams`` may be a list of streams or a Stream whose items are streams.
    ``mode="cycle"`` starts over when the last one ends (and ends if a whole
    round yields nothing).

    >>> import pescador_fp as pf
    >>> "".join(pf.chain([pf.from_iterable("ab"), pf.from_iterable("cd")]))
    'abcd'
    >>> "".join(pf.chain([pf.from_iterable("ab")], mode="cycle") | pf.take(5))
    'ababa'
    """
    mode = _check_choice("chain", "mode", mode, CHAIN_MODES)
    if isinstance(streams, Stream):
        return _Chain(streams, mode)
    return _Chain(_check_streams("chain", streams), mode)
