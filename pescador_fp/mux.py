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
import operator
import reprlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._check import check_bool, check_choice, check_int, check_rate, check_streams, check_weights
from ._sampling import BulkDraws, Picker, count_sampler, weighted_order
from ._seed import Seed, SeedContext, check_seed, seed_argument
from ._stats import counter, passed, tally, through
from ._stream import NOTHING, PassIterator, Stream, _run, as_stream, close_iterator, peek

__all__ = ["chain", "mux", "round_robin", "shuffled_mux"]

MUX_MODES = ("with_replacement", "single_active", "exhaustive")
DISTS = ("constant", "binomial", "poisson")
ROUND_ROBIN_MODES = ("exhaustive", "cycle", "permuted_cycle")
CHAIN_MODES = ("exhaustive", "cycle")

# The count of an activation that runs until its source ends (rate=None).
_UNTIL_END = 1 << 62


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


def _peeked(stream: Stream[Any], ctx: SeedContext) -> tuple[Any, Iterator[Any], Any] | None:
    """A pass of a sub-stream: its first item, an iterator over all its items, and the generator
    to close; ``None`` (the pass closed) if it is empty."""
    gen = _open(stream, ctx)
    peeked = peek(gen)
    if peeked is None:
        gen.close()
        return None
    return peeked[0], peeked[1], gen


def _open_at(stream: Stream[Any], ctx: SeedContext, start: int) -> Generator[Any, None, None]:
    """Open one pass of a sub-stream from its item ``start`` on, as a closable generator."""
    return _run(stream, ctx, start)


# ---------------------------------------------------------------- mux


class _Cursor:
    """(a resumed mux) One activation of a source on the way to the pass's place.

    ``items`` is what the mux reads meanwhile: ``None`` for each item where
    the source knows its length (counted in C, nothing made), else the
    source's own items (it runs to say where it ends). :meth:`opened` then
    opens the source at the place reached.
    """

    __slots__ = ("ctx", "gen", "items", "length", "stream")

    def __init__(self, stream: Stream[Any], ctx: SeedContext) -> None:
        self.stream, self.ctx = stream, ctx
        self.length = length = stream._length()
        self.gen: Generator[Any, None, None] | None = None
        self.items: Iterator[Any]
        if length is None:
            self.gen = self.items = _open(stream, ctx)
        else:
            self.items = itertools.repeat(None, length)

    def peeked(self) -> tuple[Any, Iterator[Any], _Cursor] | None:
        """What :func:`_peeked` gives for a source opened for real, this cursor standing for the generator."""
        if self.gen is None:
            return (None, self.items, self) if self.length else None
        peeked = peek(self.gen)
        if peeked is None:
            self.gen.close()
            return None
        self.items = peeked[1]
        return peeked[0], self.items, self

    def opened(self) -> tuple[Iterator[Any], Generator[Any, None, None]]:
        """The source opened at this place: the iterator to read and the generator to close."""
        if self.gen is None:
            assert self.length is not None
            gen = _open_at(self.stream, self.ctx, self.length - operator.length_hint(self.items))
            return gen, gen
        return self.items, self.gen

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()


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

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return self.streams

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _MuxIterator(self, ctx).items()

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[Any]:
        return _MuxIterator(self, ctx).resumed(start)

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
            parts.append(seed_argument(self.seed)[2:])
        return f"mux({', '.join(parts)})"


class _MuxIterator(PassIterator):
    """One pass of a mux: ``n_active`` slots, each holding one activation of a source.

    Slot ``k`` draws items from ``slots[k]`` (a pass over source
    ``source_of[k]``, opened as ``gens[k]``) until ``left[k]`` reaches 0 or the
    source ends; then the slot is released (the generator closed) and filled
    with the next activation. ``-1`` / ``None`` mark an empty slot.
    """

    __slots__ = (
        "activations",
        "active",
        "below",
        "counts",
        "draw_counts",
        "dry",
        "empty_lately",
        "gens",
        "given",
        "given_from",
        "heaviest",
        "left",
        "mux",
        "n_valid",
        "order",
        "picker",
        "rng",
        "slot_weight",
        "slots",
        "source_of",
        "tally",
        "total_weight",
        "weighted",
    )

    def __init__(self, m: _Mux, ctx: SeedContext) -> None:
        super().__init__()
        self.mux = m
        self.rng = rng = ctx.generator(m.seed, m.depth)
        self.below = ctx.reseeded(m.seed, m.depth)
        self.draw_counts = draw_counts = count_sampler(rng, m.dist, m.n_active)
        rate = m.rate if m.rate is not None else 1.0
        #: The lengths of the next activations (with_replacement and single_active modes).
        self.counts: BulkDraws[int] = BulkDraws(lambda size: draw_counts(rate, size).tolist())
        self.total_weight = sum(m.weights)
        #: Sources that may still be drawn (pruning an empty one lowers it).
        self.n_valid = sum(w > 0 for w in m.weights)
        self.picker = Picker(m.weights, rng)
        #: Exhaustive mode: the sources not yet activated, the next one last.
        self.order = weighted_order(m.weights, rng)[::-1] if m.mode == "exhaustive" else []
        #: The activations of each source so far; each opens a pass seeded by its number.
        self.activations = [0] * len(m.streams)
        #: (stats) Items given per source by closed activations (an open one: given_from[k] - left[k]).
        self.given = [0] * len(m.streams)
        self.given_from = [0] * m.n_active
        self.tally = tally(ctx.run, m)
        if self.tally is not None:
            self.tally.opened(self)
        #: Sources whose activation came up empty since the last one that yielded:
        #: once it holds every usable source, nothing more will come (prune_empty=False).
        self.empty_lately: set[int] = set()
        n_active = m.n_active
        self.slots: list[Iterator[Any] | None] = [None] * n_active
        self.gens: list[Any] = [None] * n_active  # a generator to close, a _Cursor, or None
        self.left = [0] * n_active
        self.source_of = [-1] * n_active
        #: single_active: the slot of each open source.
        self.active: dict[int, int] = {}
        # single_active draws slots in proportion to their sources' weights (by rejection
        # against the heaviest open one), so that a heavy source's backlog always drains.
        self.weighted = m.mode == "single_active"
        self.slot_weight = [0.0] * n_active
        self.heaviest = 0.0
        #: Counting a resumed pass's way to its place: slots hold :class:`_Cursor` s, not items.
        self.dry = False

    def resumed(self, start: int) -> Generator[Any, None, None]:
        """The pass from item ``start`` on: the same draws as a full pass, without making the items.

        Until then each open source is a :class:`_Cursor` that counts its
        items where the source knows its length; then every open source is
        opened at its place.
        """
        items = self.items()
        if start:
            self.dry = True
            if next(itertools.islice(items, start - 1, start), NOTHING) is NOTHING:
                return items  # the pass ends before
            self.dry = False
            for k, cursor in enumerate(self.gens):
                if isinstance(cursor, _Cursor):
                    self.slots[k], self.gens[k] = cursor.opened()
        return items

    def items(self) -> Generator[Any, None, None]:
        slots, left = self.slots, self.left
        try:
            for k in range(self.mux.n_active):
                self._fill(k)
            if all(s is None for s in slots):
                return
            for k in self._slot_draws():
                items = slots[k]
                if items is None:
                    if all(s is None for s in slots):
                        return
                    continue
                x = next(items, NOTHING)
                if x is NOTHING:  # the source ran dry before its count
                    self._release(k)
                    self._fill(k)
                    continue
                left[k] -= 1
                if not left[k]:
                    self._release(k)
                    self._fill(k)
                yield x
        finally:
            self.release()

    def _slot_draws(self) -> Iterator[int]:
        """The slot to draw each next item from."""
        n_active = self.mux.n_active
        if n_active == 1:
            return itertools.repeat(0)
        rng = self.rng
        if not self.weighted:
            return iter(BulkDraws(lambda size: rng.integers(0, n_active, size).tolist()))
        return self._weighted_slot_draws()

    def _weighted_slot_draws(self) -> Iterator[int]:
        rng, n_active, slot_weight = self.rng, self.mux.n_active, self.slot_weight
        pairs = BulkDraws(
            lambda size: zip(rng.integers(0, n_active, size).tolist(), rng.random(size).tolist())
        )
        for k, u in pairs:
            heaviest = self.heaviest
            # Nothing open (heaviest == 0): the loop ends at the next slot it gets.
            if u * heaviest < slot_weight[k] or heaviest == 0:
                yield k

    def _activation_count(self, source: int) -> int:
        m = self.mux
        if m.rate is None:
            return _UNTIL_END
        if m.mode == "exhaustive":  # one activation per source: its length carries its weight
            share = m.weights[source] / self.total_weight
            return int(self.draw_counts(m.rate * len(m.streams) * share, 1)[0])
        return self.counts.pop()

    def _next_source(self) -> int | None:
        if self.mux.mode == "exhaustive":
            return self.order.pop() if self.order else None
        if self.n_valid == 0 or len(self.empty_lately) >= self.n_valid:
            return None
        return self.picker.pick()

    def _release(self, k: int) -> None:
        gen = self.gens[k]
        if gen is not None:
            gen.close()
        self.active.pop(self.source_of[k], None)
        if self.source_of[k] >= 0:
            self.given[self.source_of[k]] += self.given_from[k] - self.left[k]
        self.slots[k] = self.gens[k] = None
        self.source_of[k] = -1
        self.slot_weight[k] = 0.0

    def release(self) -> None:
        for k in range(self.mux.n_active):
            self._release(k)
        if self.tally is not None:
            self.tally.closed(self)

    def source_counts(self) -> tuple[list[int], list[int]]:
        """(stats) Items given and activations so far, per source."""
        given = list(self.given)
        for k, source in enumerate(self.source_of):
            if source >= 0:
                given[source] += self.given_from[k] - self.left[k]
        return given, list(self.activations)

    def _fill(self, k: int) -> None:
        self._activate(k)
        if self.weighted:
            self.heaviest = max(self.slot_weight)

    def _activate(self, k: int) -> None:
        """Open the next activation that yields something in slot ``k``, if any is left."""
        m = self.mux
        single_active = m.mode == "single_active"
        while True:
            if single_active and len(self.active) + len(self.empty_lately) >= self.n_valid:
                return  # every usable source is open in another slot, or came up empty since one was
            source = self._next_source()
            if source is None:
                return
            items = self._activation_count(source)
            if single_active and source in self.active:
                self.left[self.active[source]] += items  # drawing an open source extends its activation
                self.given_from[self.active[source]] += items
                continue
            if items == 0:
                continue
            self.activations[source] += 1
            stream, ctx = m.streams[source], self.below.child(source, self.activations[source])
            peeked = _Cursor(stream, ctx).peeked() if self.dry else _peeked(stream, ctx)
            if peeked is None:
                if m.prune_empty:
                    self.n_valid -= 1
                    if self.n_valid:
                        self.picker.drop(source)
                else:
                    self.empty_lately.add(source)
                continue
            self.empty_lately.clear()
            self.slots[k], self.gens[k] = peeked[1], peeked[2]
            self.left[k], self.source_of[k] = items, source
            self.given_from[k] = items
            self.slot_weight[k] = m.weights[source]
            if single_active:
                self.active[source] = k
            return


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
    streams_t = check_streams("mux", streams)
    n_active = check_int("mux", "n_active", n_active, 1)
    mode = check_choice("mux", "mode", mode, MUX_MODES)
    if mode != "with_replacement" and n_active > len(streams_t):
        raise ValueError(
            f"mux: mode={mode!r} needs n_active <= the number of streams ({len(streams_t)}), got {n_active}"
        )
    return _Mux(
        streams_t,
        n_active,
        check_rate(rate, mode, len(streams_t)),
        check_weights("mux", weights, len(streams_t)),
        mode,
        check_choice("mux", "dist", dist, DISTS),
        check_bool("mux", "prune_empty", prune_empty),
        check_seed("mux: seed", seed),
    )


# ---------------------------------------------------------------- shuffled_mux


@dataclass(frozen=True, repr=False, eq=False)
class _ShuffledMux(Stream[Any]):
    streams: tuple[Stream[Any], ...]
    weights: tuple[float, ...]
    seed: Seed | None

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return self.streams

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _ShuffledMuxIterator(self, ctx).items()

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
            parts.append(seed_argument(self.seed)[2:])
        return f"shuffled_mux({', '.join(parts)})"


class _ShuffledMuxIterator(PassIterator):
    """One pass of a shuffled_mux: every source open at once, ``slots[k]`` the current pass of source ``k``.

    A source that ends restarts with pass ``passes[k] + 1``; one whose pass
    yields nothing is dropped from the picker. (stats) Each source's items
    pass through ``given[k]`` (a :func:`counter`); its passes are its activations.
    """

    __slots__ = ("below", "gens", "given", "mux", "passes", "picker", "slots", "tally")

    def __init__(self, m: _ShuffledMux, ctx: SeedContext) -> None:
        super().__init__()
        self.mux = m
        self.below = ctx.reseeded(m.seed, m.depth)
        self.picker = Picker(m.weights, ctx.generator(m.seed, m.depth))
        n = len(m.streams)
        self.passes = [0] * n
        self.slots: list[Iterator[Any] | None] = [None] * n
        self.gens: list[Iterator[Any] | None] = [None] * n
        self.tally = tally(ctx.run, m)
        self.given = [counter() for _ in range(n)] if self.tally is not None else None
        if self.tally is not None:
            self.tally.opened(self)

    def items(self) -> Generator[Any, None, None]:
        picker, slots = self.picker, self.slots
        try:
            while picker.any_left:
                for k in picker.batch():
                    items = slots[k]
                    x = NOTHING if items is None else next(items, NOTHING)
                    if x is NOTHING:
                        # Not open yet, or ended: a fresh pass, and this draw takes its first item.
                        x = self._restart(k)
                        if x is NOTHING:
                            break  # the stream was dropped: draw again with the new weights
                    yield x
        finally:
            self.release()

    def _restart(self, k: int) -> Any:
        """Open a fresh pass of stream ``k`` and take its first item; drop the stream if the pass is empty.

        The rest of the pass is read from ``slots[k]``: the generator itself,
        or (stats) the generator through ``given[k]``, which counts the first
        item here.
        """
        self._release(k)
        self.passes[k] += 1
        # Its first item is asked for next: opened at once, without _open's generator.
        gen = self.gens[k] = self.mux.streams[k]._open(self.below.child(k, self.passes[k]))
        first = next(gen, NOTHING)
        if first is NOTHING:
            close_iterator(gen)
            self.gens[k] = None
            self.picker.drop(k)
            return NOTHING
        if self.given is None:
            self.slots[k] = gen
        else:
            next(self.given[k])  # the first item, counted
            self.slots[k] = through(gen, self.given[k])
        return first

    def _release(self, k: int) -> None:
        gen = self.gens[k]
        if gen is not None:
            close_iterator(gen)
        self.slots[k] = self.gens[k] = None

    def release(self) -> None:
        for gen in self.gens:
            if gen is not None:
                close_iterator(gen)
        if self.tally is not None:
            self.tally.closed(self)

    def source_counts(self) -> tuple[list[int], list[int]]:
        """(stats) Items given and activations so far, per source."""
        return [passed(count) for count in self.given or ()], list(self.passes)


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
    streams_t = check_streams("shuffled_mux", streams)
    return _ShuffledMux(
        streams_t,
        check_weights("shuffled_mux", weights, len(streams_t)),
        check_seed("shuffled_mux: seed", seed),
    )


# ---------------------------------------------------------------- round_robin


@dataclass(frozen=True, repr=False, eq=False)
class _RoundRobin(Stream[Any]):
    streams: tuple[Stream[Any], ...]
    mode: str
    seed: Seed | None

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return self.streams

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _RoundRobinIterator(self, ctx).items()

    def _divide(self, index: int, count: int) -> tuple[Stream[Any], float | None] | None:
        if len(self.streams) < count:
            return None
        return _RoundRobin(self.streams[index::count], self.mode, self.seed), None

    def _describe(self) -> str:
        mode = "" if self.mode == "exhaustive" else f", mode={self.mode!r}"
        seed = seed_argument(self.seed)
        return f"round_robin({_describe_streams(self.streams)}{mode}{seed})"


class _RoundRobinIterator(PassIterator):
    """One pass of a round_robin: round after round, each a fresh pass of every source.

    In round ``round_`` the sources are taken in ``order``; the first turn
    opens each as its turn comes (``gens``, to close), and ``live`` holds those
    not yet ended, taken one item each in turn. (stats) Each source's items
    pass through ``given[i]`` (a :func:`counter`); each opening is an activation.
    """

    __slots__ = (
        "activations",
        "below",
        "gens",
        "given",
        "live",
        "mux",
        "order",
        "produced",
        "rng",
        "round_",
        "tally",
    )

    def __init__(self, m: _RoundRobin, ctx: SeedContext) -> None:
        super().__init__()
        self.mux = m
        self.rng = ctx.generator(m.seed, m.depth) if m.mode == "permuted_cycle" else None
        self.below = ctx.reseeded(m.seed, m.depth)
        self.round_ = -1
        self.order: list[int] = []
        self.gens: list[Iterator[Any]] = []
        self.live: list[Iterator[Any]] = []
        #: Whether the current round has yielded an item.
        self.produced = False
        self.tally = tally(ctx.run, m)
        self.given = [counter() for _ in m.streams] if self.tally is not None else None
        self.activations = [0] * len(m.streams)
        if self.tally is not None:
            self.tally.opened(self)

    def items(self) -> Generator[Any, None, None]:
        try:
            while True:
                self._start_round()
                live, produced = self.live, False
                for i in self.order:
                    items = self._open_source(i)
                    x = next(items, NOTHING)
                    if x is NOTHING:
                        continue
                    live.append(items)
                    if not produced:
                        produced = self.produced = True
                    yield x
                while live:
                    for items in list(live):
                        x = next(items, NOTHING)
                        if x is NOTHING:  # that pass has ended (release closes the passes)
                            live.remove(items)
                            continue
                        yield x
                if self.mux.mode == "exhaustive" or not self.produced:
                    return  # a round with nothing in it would repeat forever
        finally:
            self.release()

    def _start_round(self) -> None:
        n = len(self.mux.streams)
        self.round_ += 1
        self.order = list(range(n)) if self.rng is None else self.rng.permutation(n).tolist()
        self.gens, self.live = [], []
        self.produced = False

    def _open_source(self, i: int) -> Iterator[Any]:
        """A pass of source ``i`` in this round, opened now (its first item is asked for next)."""
        gen = self.mux.streams[i]._open(self.below.child(i, self.round_))
        self.gens.append(gen)
        self.activations[i] += 1
        return gen if self.given is None else through(gen, self.given[i])

    def release(self) -> None:
        for gen in self.gens:
            close_iterator(gen)
        if self.tally is not None:
            self.tally.closed(self)

    def source_counts(self) -> tuple[list[int], list[int]]:
        """(stats) Items given and activations so far, per source."""
        return [passed(count) for count in self.given or ()], list(self.activations)


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
    streams_t = check_streams("round_robin", streams)
    return _RoundRobin(
        streams_t,
        check_choice("round_robin", "mode", mode, ROUND_ROBIN_MODES),
        check_seed("round_robin: seed", seed),
    )


# ---------------------------------------------------------------- chain


@dataclass(frozen=True, repr=False, eq=False)
class _Chain(Stream[Any]):
    streams: tuple[Stream[Any], ...] | Stream[Any]
    mode: str

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return self.streams if isinstance(self.streams, tuple) else (self.streams,)

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return _ChainIterator(self, ctx).items()

    def _describe(self) -> str:
        inner = repr(self.streams) if isinstance(self.streams, Stream) else _describe_streams(self.streams)
        mode = "" if self.mode == "exhaustive" else f", mode={self.mode!r}"
        return f"chain({inner}{mode})"


class _ChainIterator(PassIterator):
    """One pass of a chain: in round ``round_``, stream ``index`` of ``subs`` is open as ``current``.

    ``mode="cycle"`` starts a new round when one ends, unless it yielded nothing. (stats) The
    items of source ``i`` (of ``children``: a Stream of streams is one) pass through ``given[i]``
    (a :func:`counter`); each opening of a stream is an activation.
    """

    __slots__ = (
        "activations",
        "ctx",
        "current",
        "given",
        "index",
        "mux",
        "produced",
        "round_",
        "subs",
        "tally",
    )

    def __init__(self, m: _Chain, ctx: SeedContext) -> None:
        super().__init__()
        self.mux = m
        self.ctx = ctx
        self.round_ = -1
        #: The streams of the current round (a pass over ``m.streams`` when it is a Stream).
        self.subs: Iterator[Any] = iter(())
        self.index = -1
        self.current: Iterator[Any] = iter(())
        #: Whether the current round has yielded an item.
        self.produced = False
        self.tally = tally(ctx.run, m)
        n = len(m.children)
        self.given = [counter() for _ in range(n)] if self.tally is not None else None
        self.activations = [0] * n
        if self.tally is not None:
            self.tally.opened(self)

    def items(self) -> Generator[Any, None, None]:
        m, ctx, given, activations = self.mux, self.ctx, self.given, self.activations
        single = isinstance(m.streams, Stream)  # a Stream of streams: one source
        try:
            while True:
                self._start_round()
                for i, sub in enumerate(self.subs):
                    self.index = i
                    # Its first item is asked for next: opened at once, without _open's generator.
                    self.current = items = as_stream(sub)._open(ctx.child(1, self.round_, i))
                    source = 0 if single else i
                    activations[source] += 1
                    if given is not None:
                        items = through(items, given[source])
                    first = next(items, NOTHING)
                    if first is NOTHING:
                        continue
                    self.produced = True
                    yield first
                    yield from items
                if m.mode == "exhaustive" or not self.produced:
                    return
        finally:
            self.release()

    def _start_round(self) -> None:
        m = self.mux
        self.round_ += 1
        self.produced = False
        self.index = -1
        if isinstance(m.streams, Stream):
            self.subs = _open(m.streams, self.ctx.child(0, self.round_))
        else:
            self.subs = iter(m.streams)

    def release(self) -> None:
        close_iterator(self.current)
        close_iterator(self.subs)
        if self.tally is not None:
            self.tally.closed(self)

    def source_counts(self) -> tuple[list[int], list[int]]:
        """(stats) Items given and activations so far, per source."""
        return [passed(count) for count in self.given or ()], list(self.activations)


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
    mode = check_choice("chain", "mode", mode, CHAIN_MODES)
    if isinstance(streams, Stream):
        return _Chain(streams, mode)
    return _Chain(check_streams("chain", streams), mode)
