"""What a pass counts as it runs, in the consumer's process, for :meth:`Pass.stats`.

Every stage (``upstream | op``) that runs in the consumer's process counts the
items it gives and times how long its ``next()`` takes: every item where
items are slow, one item in about 32 where they are cheap (a pair of clock
reads costs about 0.1 us, too much for every item of a cheap stage). The
time of a stage *itself* is that time less the time of the stages it reads
from. ``background`` counts per worker the items it sent, how full its ring
was when the consumer came to read, and how long the consumer waited on it
(timed exactly: only reads that find the ring empty are timed); a
multiplexer counts per source the items it gave and its activations, when
an activation closes (nothing per item), or, where nothing else counts the
items (``shuffled_mux``, ``round_robin``, ``chain``), by letting each source's
items through :func:`through` (a few nanoseconds an item, in C).

Nothing is counted in worker processes (their passes have no ``Run``). The
counters live in ``SeedContext.run.stats``, keyed by the stage's stream object,
so that a stage opened several times in a pass (under ``cycle``, or below a
multiplexer) adds up in one row.

``PESCADOR_FP_STATS=0`` in the environment (read at import) turns the per-stage
and per-source counting off: only the benchmarks use it, to measure what the
counting costs.
"""

from __future__ import annotations

import html
import itertools
import operator
import os
import sys
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from itertools import compress, islice, repeat
from typing import Any, TypeVar

__all__ = [
    "ENABLED",
    "CallCounts",
    "ChannelCounts",
    "StageCounts",
    "Stats",
    "Tally",
    "counted",
    "counter",
    "passed",
    "register_calls",
    "register_channels",
    "stage_counts",
    "stats_of",
    "tally",
    "through",
]

T = TypeVar("T")

#: Whether stages count at all (benchmarks only: ``PESCADOR_FP_STATS=0``).
ENABLED = os.environ.get("PESCADOR_FP_STATS", "1") != "0"
# Items slower than this on average are all timed (timing one costs ~0.4 us: under 1 %).
_EXACT_ABOVE_S = 50e-6
# Faster ones: one item in about 256 is timed; the untimed runs between are of random length
# (128 to 383, from a linear congruential generator), so that no period of the stream (the
# decoder's runs of records, workers read in turn) can line up with the timed items. A run
# costs ~2 us of Python to set up, and its items pass in C (~10 ns each per layer).
_RUN_MIN, _RUN_SPREAD = 128, 256
_LCG_A, _LCG_C, _LCG_MASK = 1103515245, 12345, 2**31 - 1
_NOTHING: Any = object()
# StageCounts.live is cleared of the openings that ended when it holds this many more than twice
# the open ones.
_PRUNE_ABOVE = 8
# What a :func:`counter` counts down from.
_MANY = sys.maxsize
_NAME_CHARS = 60


def _name(x: object) -> str:
    text = repr(x)
    return text if len(text) <= _NAME_CHARS else text[: _NAME_CHARS - 1] + "…"


class StageCounts:
    """One stage's counters: items out, the time its ``next()`` took (partly sampled), first and last use."""

    __slots__ = (
        "ended",
        "exact",
        "exact_untimed_s",
        "head_s",
        "heads",
        "items",
        "live",
        "open",
        "started",
        "timed_items",
        "timed_s",
    )

    def __init__(self) -> None:
        self.items = 0  # items given downstream, but those of the untimed runs under way (given())
        self.timed_s = 0.0  # the time of the items timed (and of the calls that found the end)
        self.timed_items = 0
        self.head_s = 0.0  # of those, the items that head an untimed run: they stand for the rest
        self.heads = 0
        self.started = 0.0  # perf_counter at the first next(); 0: never asked
        self.ended = 0.0  # perf_counter when the last opening ended or closed; 0: open
        self.open = 0  # openings not yet ended
        #: The openings, weakly (one that is dropped unclosed must still be collected).
        self.live: list[weakref.ref[_Counted]] = []
        #: Where part of the stage's time is timed exactly elsewhere (background's waits on its
        #: workers): that time so far. Only the rest is sampled, which keeps rare long waits out
        #: of the estimate's extrapolation.
        self.exact: Callable[[], float] | None = None
        self.exact_untimed_s = 0.0  # of that exact time, what fell in untimed runs

    def given(self) -> int:
        """The items given so far, the untimed runs under way included.

        An untimed run's items are counted in C as they pass (what is left of
        its ``repeat``), and added to ``items`` when the run ends; this reads
        the runs under way.
        """
        pending = 0
        for ref in self.live:
            opening = ref()
            run = opening.run if opening is not None else None
            if run is not None and run.left is not None:
                pending += run.size - operator.length_hint(run.left)
        return self.items + pending

    def seconds(self, items: int | None = None) -> float:
        """The estimated time spent inside this stage's ``next()``, its upstream's included.

        ``items``: the items given (:meth:`given`), where they are more than ``self.items``.
        """
        untimed = (self.items if items is None else items) - self.timed_items
        if untimed <= 0:
            return self.timed_s
        return self.timed_s + self.head_s / self.heads * untimed + self.exact_untimed_s


class _Run:
    """The untimed run under way in a counted stage: its ``repeat`` (``None``: none) and length."""

    __slots__ = ("left", "size")

    def __init__(self) -> None:
        self.left: Any = None
        self.size = 0


class _Counted(itertools.chain):  # type: ignore[type-arg]
    """A counted stage's items: ``chain``'s own ``next()`` (C) over the runs that :func:`_runs` makes.

    An untimed run is ``compress(islice(items, n), repeat(True, n))``: its
    items pass with no Python code at all, and what is left of the
    ``repeat`` says how many have. :meth:`close` closes the stage (and its
    upstream), as a generator's ``close`` would.
    """

    runs: Generator[Iterable[Any], None, None]
    run: _Run

    def close(self) -> None:
        self.runs.close()


def counted(items: Iterator[T], counts: StageCounts) -> Iterator[T]:
    """``items``, counted into ``counts``: an iterator that also closes ``items`` when closed.

    While the stage's items take more than ``_EXACT_ABOVE_S`` on average (over
    the pass so far: a slow start, such as workers starting, counts too), every
    item is timed: the clock costs little next to them. Otherwise one item is
    timed and stands for the run of untimed ones after it, which pass in C
    (a few hundredths of a microsecond each). The runs are of random length,
    so that the sample never locks onto a period of the stream (workers read
    in turn), and the choice never depends on the time of the items around
    it, so the estimate is unbiased.

    >>> counts = StageCounts()
    >>> items = counted(iter(range(100)), counts)
    >>> [next(items) for _ in range(10)][-1], counts.given()
    (9, 10)
    """
    run = _Run()
    runs = _runs(items, counts, run)
    opening: _Counted = _Counted.from_iterable(runs)  # type: ignore[assignment]
    opening.runs, opening.run = runs, run
    # Followed for StageCounts.given, weakly; now and then (amortized: a few checks per opening
    # at most) the openings that ended are forgotten.
    live = counts.live
    if len(live) > 2 * counts.open + _PRUNE_ABOVE:
        live[:] = [ref for ref in live if (o := ref()) is not None and getattr(o.runs, "gi_frame", None)]
    live.append(weakref.ref(opening))
    return opening


def _runs(items: Iterator[T], counts: StageCounts, run: _Run) -> Generator[Iterable[T], None, None]:
    """What :class:`_Counted` chains: each timed item (alone in a tuple), then an untimed run."""
    perf = time.perf_counter
    state = id(counts) & _LCG_MASK  # run lengths from a private generator: no global state is read
    counts.open += 1
    try:
        if not counts.started:
            counts.started = perf()
        exact: Callable[[], float] | None = None
        exact_before = 0.0
        while True:
            alone = counts.seconds() >= _EXACT_ABOVE_S * counts.items  # the first item: timed alone
            start = perf()
            x = next(items, _NOTHING)
            took = perf() - start
            counts.timed_s += took
            if x is _NOTHING:
                return
            counts.items += 1
            counts.timed_items += 1
            if alone:
                yield (x,)
                exact = counts.exact
                exact_before = exact() if exact else 0.0
                continue
            counts.head_s += took - (exact() - exact_before if exact else 0.0)
            counts.heads += 1
            yield (x,)
            state = (state * _LCG_A + _LCG_C) & _LCG_MASK
            exact = counts.exact
            exact_before = exact() if exact else 0.0
            size = _RUN_MIN + (state >> 16) % _RUN_SPREAD
            left = run.left = repeat(True, size)
            run.size = size
            try:
                yield compress(islice(items, size), left)
            finally:
                counts.items += size - operator.length_hint(left)
                run.left = None
                if exact:
                    counts.exact_untimed_s += exact() - exact_before
                    exact_before = exact()
    finally:
        counts.open -= 1
        if not counts.open:
            counts.ended = perf()
        close = getattr(items, "close", None)
        if close is not None:
            close()


def stage_counts(run: Any, stream: object) -> StageCounts | None:
    """The counters of ``stream``'s stage in ``run`` (made on first use); ``None`` if not counting."""
    if run is None or not ENABLED:
        return None
    key = ("stage", id(stream))
    entry = run.stats.get(key)
    if entry is None:
        entry = run.stats[key] = (stream, StageCounts())
    counts: StageCounts = entry[1]
    return counts


# ---------------------------------------------------------------- background


class ChannelCounts:
    """(``_merge.Channel``) One worker's items, the consumer's wait on it, and its ring's fill."""

    __slots__ = ("ahead", "capacity", "ended", "items", "reads", "started", "waited_s")

    def __init__(self, capacity: int = 0) -> None:
        self.items = 0
        self.waited_s = 0.0
        self.ahead = 0  # the sum, over the consumer's reads, of the bytes the worker had published ahead
        self.reads = 0
        self.capacity = capacity  # the ring's size
        self.started = 0.0  # perf_counter when the worker was started (register_channels)
        self.ended = 0.0  # perf_counter at its end


def register_channels(run: Any, upstream: object, counts: list[ChannelCounts]) -> None:
    """(``background``) Register its workers' counters, under the stream that runs in them."""
    if run is not None and ENABLED:
        now = time.perf_counter()
        for channel in counts:
            channel.started = now
        # One list of channels per opening (a cycle, a mux source may open it again).
        entry = run.stats.setdefault(("workers", id(upstream)), (upstream, []))
        openings: list[list[ChannelCounts]] = entry[1]
        openings.append(counts)

        def waited() -> float:
            return sum(channel.waited_s for opened in openings for channel in opened)

        for key, (stream, stage) in list(run.stats.items()):
            if key[0] == "stage" and getattr(stream, "upstream", None) is upstream:
                stage.exact = waited  # background's own stage: its waits are timed exactly


# ---------------------------------------------------------------- concurrent calls


class CallCounts:
    """(``pf.map(fn, concurrency=k)``) The calls of one opening, per worker: running now, done, their time.

    Each worker writes only its own slot (no lock between threads); a report sums them.
    """

    __slots__ = ("call_s", "calls", "concurrency", "running")

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.running = [0] * concurrency  # 1 while the worker's call runs
        self.calls = [0] * concurrency  # calls finished
        self.call_s = [0.0] * concurrency  # their time, from start to end (waits on I/O included)


def register_calls(run: Any, upstream: object, counts: CallCounts) -> None:
    """(a concurrent map) Register an opening's call counters, under the stream it reads."""
    if run is not None and ENABLED:
        entry = run.stats.setdefault(("calls", id(upstream)), (upstream, []))
        entry[1].append(counts)


def _call_fields(openings: list[CallCounts]) -> dict[str, Any]:
    """A concurrent stage's row's fields: calls in flight now, calls done, the mean time of a call."""
    calls = sum(sum(c.calls) for c in openings)
    return {
        "concurrency": max(c.concurrency for c in openings),
        "in_flight": sum(sum(c.running) for c in openings),
        "calls": calls,
        "call_s": sum(sum(c.call_s) for c in openings) / calls if calls else 0.0,
    }


# ---------------------------------------------------------------- multiplexers


class Tally:
    """Per source of one multiplexer: items given and activations, over all its openings in a pass.

    An open pass of the multiplexer reports through ``source_counts()`` (items given, activations, per
    source); a closed one is added in once.
    """

    __slots__ = ("activations", "given", "live", "stream")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        n = len(stream.children)
        self.given = [0] * n
        self.activations = [0] * n
        self.live: list[Any] = []

    def opened(self, it: Any) -> None:
        self.live.append(it)

    def closed(self, it: Any) -> None:
        """Add ``it``'s counts in, once."""
        for i, other in enumerate(self.live):
            if other is it:
                del self.live[i]
                given, activations = it.source_counts()
                self.given = [a + b for a, b in zip(self.given, given)]
                self.activations = [a + b for a, b in zip(self.activations, activations)]
                return

    def counts(self) -> tuple[list[int], list[int]]:
        given, activations = list(self.given), list(self.activations)
        for it in self.live:
            more, more_activations = it.source_counts()
            given = [a + b for a, b in zip(given, more)]
            activations = [a + b for a, b in zip(activations, more_activations)]
        return given, activations


def counter() -> Iterator[bool]:
    """A count of items, for :func:`through`; :func:`passed` reads it."""
    return itertools.repeat(True, _MANY)


def through(items: Iterator[T], count: Iterator[bool]) -> Iterator[T]:
    """``items``, each counted on ``count`` (a :func:`counter`) as it passes: in C, a few ns an item.

    >>> count = counter()
    >>> list(through(iter("ab"), count)), list(through(iter("cde"), count)), passed(count)
    (['a', 'b'], ['c', 'd', 'e'], 5)
    """
    # compress takes an item, then a True from ``count``: where ``items`` ends, ``count`` is not
    # touched, so that its length, which ``passed`` reads, is exact.
    return itertools.compress(items, count)


def passed(count: Iterator[bool]) -> int:
    """The items counted on ``count`` so far (:func:`through`)."""
    return _MANY - operator.length_hint(count)


def tally(run: Any, stream: object) -> Tally | None:
    """The tally of multiplexer ``stream`` in ``run`` (made on first use); ``None`` if not counting."""
    if run is None or not ENABLED:
        return None
    key = ("sources", id(stream))
    entry = run.stats.get(key)
    if entry is None:
        entry = run.stats[key] = (stream, Tally(stream))
    counts: Tally = entry[1]
    return counts


# ---------------------------------------------------------------- the report


def _walk(stream: Any) -> Iterator[Any]:
    """Every stream in ``stream``'s tree, the consumer's end first, each once."""
    seen: set[int] = set()
    todo = [stream]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        todo.extend(reversed(node.children))


def _seconds(node: Any, counts: StageCounts, stats: dict[Any, Any]) -> float:
    """The time inside ``node``'s ``next()``: at least, for ``background``, the consumer's waits on
    its workers, which are timed exactly (a sampled estimate misses rare long waits)."""
    seconds = counts.seconds(counts.given())
    channels = stats.get(("workers", id(getattr(node, "upstream", None))))
    if channels is not None:
        seconds = max(seconds, sum(channel.waited_s for opened in channels[1] for channel in opened))
    # A sampled estimate can overshoot (an item that stood for a run was preempted): never more
    # than the time since the stage first ran.
    span = (counts.ended or time.perf_counter()) - counts.started if counts.started else 0.0
    return min(seconds, span)


def _counted_below(node: Any, stats: dict[Any, Any]) -> list[Any]:
    """The counted stages that ``node``'s stage reads from directly (looking through sources and muxes)."""
    found: list[Any] = []
    todo = list(node.children)
    seen: set[int] = set()
    while todo:
        child = todo.pop()
        if id(child) in seen:
            continue
        seen.add(id(child))
        entry = stats.get(("stage", id(child)))
        if entry is not None:
            found.append(child)
        else:
            todo.extend(child.children)
    return found


class Stats(dict[str, Any]):
    """Where a pass spends its time: a dict of raw numbers that prints as a table.

    ``print(it.stats())`` shows the table; the dict holds:

    - ``"taken"``: items the consumer has received; ``"seconds"``: since the
      first item was asked for (until the pass ended, if it has);
      ``"waiting_s"``: of that, the time the consumer waited for items;
      ``"consumer_s"``: the rest, spent in the consumer's own loop;
    - ``"stages"``: a list, the consumer's end first, of ``{"stage", "items",
      "seconds", "self_s", "source"}``: the time inside the stage's
      ``next()`` (everything below it included) and of that, the stage's own;
      ``"source"`` is true where that own time includes the source (or
      multiplexer) the stage reads, which is not timed on its own;
      a concurrent stage (``pf.map(fn, concurrency=k)``) adds
      ``"concurrency"``, ``"in_flight"`` (calls running now), ``"calls"``
      (finished) and ``"call_s"`` (the mean time of a call, from its start
      to its end);
    - ``"workers"``: per ``background``, a list of ``{"stage", "worker",
      "items", "items_per_s", "ring_fill", "waited_s"}``;
    - ``"sources"``: per multiplexer, a list of ``{"stage", "source",
      "items", "activations"}``.
    """

    def __str__(self) -> str:
        return _table(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """The table, where IPython shows the value of a cell (``it.stats()`` as its last line)."""
        printer.text("Stats(...)" if cycle else _table(self))

    def _repr_html_(self) -> str:
        """The table as HTML, where a notebook shows the value of a cell.

        >>> Stats(taken=0, seconds=0.0, waiting_s=0.0, consumer_s=0.0,
        ...       stages=[], workers=[], sources=[])._repr_html_()  # doctest: +ELLIPSIS
        '<div class="pescador-fp-stats"><p><b>pass: 0 items taken in 0 us; ...</b></p></div>'
        """
        return _html(self)


def stats_of(stream: Any, run: Any, taken: int, *, applied: type[Any]) -> Stats:
    """The stats of a pass over ``stream`` whose stages counted into ``run``.

    ``applied`` is the class of the stages ``upstream | op`` (``_stream.Applied``), named by their ``op``.
    """
    stats: dict[Any, Any] = {} if run is None else run.stats
    now = time.perf_counter()
    stages: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    listed: set[Any] = set()
    limits: dict[int, float] = {}
    nodes = list(_walk(stream))
    nodes += [entry[0] for key, entry in stats.items() if key[1] not in {id(n) for n in nodes}]
    named: dict[str, list[int]] = {}  # the nodes shown under each name: a second one gets a number
    for node in nodes:
        name = _name(node.op) if isinstance(node, applied) else _name(node)
        same = named.setdefault(name, [])
        if id(node) not in same:
            same.append(id(node))
        if same.index(id(node)):
            name = f"{name} [{same.index(id(node)) + 1}]"
        entry = stats.get(("stage", id(node)))
        if entry is not None and ("stage", id(node)) not in listed:
            listed.add(("stage", id(node)))
            counts: StageCounts = entry[1]
            # No more than the stage above it spent waiting on it (estimates can overshoot).
            seconds = min(_seconds(node, counts, stats), limits.get(id(node), float("inf")))
            below = _counted_below(node, stats)
            times = [_seconds(child, stats["stage", id(child)][1], stats) for child in below]
            for child in below:
                limits[id(child)] = min(seconds, limits.get(id(child), float("inf")))
            own = max(0.0, seconds - sum(min(t, seconds) for t in times))
            # What is below runs here untimed (a source), unless it runs in background's workers.
            untimed_source = not below and ("workers", id(getattr(node, "upstream", None))) not in stats
            stages.append(
                {
                    "stage": name,
                    "items": counts.given(),
                    "seconds": seconds,
                    "self_s": own,
                    "source": untimed_source,
                }
            )
            calls = stats.get(("calls", id(getattr(node, "upstream", None))))
            if calls is not None:
                stages[-1].update(_call_fields(calls[1]))
        if isinstance(node, applied):
            entry = stats.get(("workers", id(node.upstream)))
            if entry is not None and ("workers", id(node.upstream)) not in listed:
                listed.add(("workers", id(node.upstream)))
                openings = entry[1]
                for i in range(max(map(len, openings), default=0)):
                    opened = [channels[i] for channels in openings if i < len(channels)]
                    workers.append(_worker_row(name, i, opened, now))
        entry = stats.get(("sources", id(node)))
        if entry is not None and ("sources", id(node)) not in listed:
            listed.add(("sources", id(node)))
            given, activations = entry[1].counts()
            for i, child in enumerate(node.children):
                sources.append(
                    {"stage": name, "source": _name(child), "items": given[i], "activations": activations[i]}
                )
    top = stats.get(("stage", id(stream)))
    seconds = waiting = 0.0
    if top is not None and top[1].started:
        counts = top[1]
        seconds = (counts.ended or now) - counts.started
        waiting = min(seconds, _seconds(stream, counts, stats))
    return Stats(
        taken=taken,
        seconds=seconds,
        waiting_s=waiting,
        consumer_s=seconds - waiting,
        stages=stages,
        workers=workers,
        sources=sources,
    )


def _worker_row(stage: str, index: int, opened: list[ChannelCounts], now: float) -> dict[str, Any]:
    """Worker ``index`` of a ``background``, over every opening of it in the pass."""
    items = sum(channel.items for channel in opened)
    span = sum((channel.ended or now) - channel.started for channel in opened if channel.started)
    ahead, reads = sum(c.ahead / c.capacity for c in opened if c.capacity), sum(c.reads for c in opened)
    return {
        "stage": stage,
        "worker": index,
        "items": items,
        "items_per_s": items / span if span > 0 else 0.0,
        "ring_fill": min(1.0, ahead / reads) if reads else 0.0,
        "waited_s": sum(channel.waited_s for channel in opened),
    }


# ---------------------------------------------------------------- the table


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )
    return ["  " + line.rstrip() for line in lines]


def _s(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{1e3 * seconds:.1f} ms"
    return f"{1e6 * seconds:.0f} us"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole > 0 else "-"


def _grouped(rows: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``rows`` in groups of the same ``"stage"``, in order."""
    for stage, group in itertools.groupby(rows, key=lambda row: row["stage"]):
        yield stage, list(group)


def _heaviest(stats: Stats) -> dict[str, Any] | None:
    """The stage with the most own time, where it has more than the consumer's own loop; else ``None``
    (the loop, or nothing, is where the time goes)."""
    stages = stats["stages"]
    if not stages:
        return None
    heaviest: dict[str, Any] = max(stages, key=lambda row: row["self_s"])
    if heaviest["self_s"] <= 0 or heaviest["self_s"] < stats["consumer_s"]:
        return None
    return heaviest


def _verdict(stats: Stats, heaviest: dict[str, Any] | None) -> str | None:
    """Where the time goes, in words; ``None`` where nothing has been timed."""
    if heaviest is not None:
        return str(heaviest["stage"])
    if stats["consumer_s"] > 0 and stats["stages"]:
        seconds = stats["seconds"]
        return (
            f"the consumer's loop (your code between items, {_share(stats['consumer_s'], seconds)} of "
            "the pass): the pipeline keeps up"
        )
    return None


def _sections(stats: Stats) -> Iterator[tuple[str, list[str], list[list[str]], list[str]]]:
    """The table's sections: (title, header, rows, notes); the pass's line is the first title."""
    seconds = stats["seconds"]
    yield (
        f"pass: {stats['taken']} items taken in {_s(seconds)}; the consumer waited {_s(stats['waiting_s'])} "
        f"({_share(stats['waiting_s'], seconds)}) and ran its own loop {_s(stats['consumer_s'])}",
        [],
        [],
        [],
    )
    stages = stats["stages"]
    if stages:
        heaviest = _heaviest(stats)
        rows = [
            [
                ("* " if row is heaviest else "  ") + row["stage"] + (" [+ source]" if row["source"] else ""),
                str(row["items"]),
                _s(row["seconds"]),
                _s(row["self_s"]),
                _share(row["self_s"], seconds),
            ]
            for row in stages
        ]
        notes = []
        verdict = _verdict(stats, heaviest)
        if verdict is not None:
            notes.append(f"{'*' if heaviest is not None else ' '} where the time goes: {verdict}")
        notes += [
            f"{row['stage']}: {row['in_flight']} of {row['concurrency']} calls in flight, "
            f"{row['calls']} done, {_s(row['call_s'])} a call"
            for row in stages
            if "calls" in row
        ]
        if any(row["source"] for row in stages):
            notes.append("[+ source]: that own time includes the source (or multiplexer) the stage reads")
        header = ["  stage", "items", "time in next()", "own time", "of pass"]
        yield "stages (the consumer's end first):", header, rows, notes
    for stage, group in _grouped(stats["workers"]):
        rows = [
            [
                f"#{row['worker']}",
                str(row["items"]),
                f"{row['items_per_s']:.1f}",
                f"{100 * row['ring_fill']:.0f} %",
                _s(row["waited_s"]),
            ]
            for row in group
        ]
        yield f"workers of {stage}:", ["worker", "items", "items/s", "ring fill", "consumer waited"], rows, []
    for stage, group in _grouped(stats["sources"]):
        rows = [[row["source"], str(row["items"]), str(row["activations"])] for row in group]
        yield f"sources of {stage}:", ["source", "items", "activations"], rows, []


def _table(stats: Stats) -> str:
    lines: list[str] = []
    for title, header, rows, notes in _sections(stats):
        lines += [title] if not lines else ["", title]
        if header:
            lines += _rows(header, rows)
        lines += [f"  {note}" for note in notes]
    return "\n".join(lines)


def _html(stats: Stats) -> str:
    parts = ['<div class="pescador-fp-stats">']
    for title, header, rows, notes in _sections(stats):
        parts.append(f"<p><b>{html.escape(title)}</b></p>")
        if header:
            head = "".join(f"<th>{html.escape(h.strip())}</th>" for h in header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in row) + "</tr>"
                for row in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts += [f"<p>{html.escape(note.strip())}</p>" for note in notes]
    parts.append("</div>")
    return "".join(parts)
