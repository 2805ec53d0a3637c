"""A pass over a stream: what ``Stream.iterate`` returns (:class:`Pass`) and what its stages register.

A pass is made of the floors below it: the stream it runs (``_stream``), where
its consumer stands (``_resume``: ``state()``) and where it spends its time
(``_stats``: ``stats()``). This module joins them and installs ``open_pass``
into ``_stream`` (``install_pass``), so that ``Stream.iterate`` opens a pass
without ``_stream`` importing anything above it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, TypeVar

from ._resume import digest, resumed_context, state_of
from ._seed import SeedContext
from ._stats import Stats, stats_of
from ._stream import Applied, Stream, _run, hide_library_frames, install_pass

__all__ = ["Pass", "Run", "open_pass"]

T = TypeVar("T")


class Run:
    """What the stages of one pass register in the consumer's process (``SeedContext.run``).

    ``states`` holds, per stage key (``_stream.stage_key``), a function that says
    where that stage stands, for :meth:`Pass.state`; ``restored`` what a state
    being restored saved for it; ``stats`` what the stages count, for
    :meth:`Pass.stats`.

    >>> run = Run({"0@1": [3, 2]})
    >>> run.restored, run.states, run.stats
    ({'0@1': [3, 2]}, {}, {})
    """

    __slots__ = ("restored", "states", "stats")

    def __init__(self, restored: Mapping[str, Any] | None = None) -> None:
        self.restored: dict[str, Any] = dict(restored or {})
        self.states: dict[str, Callable[[], Any]] = {}
        self.stats: dict[Any, Any] = {}


class Pass(Iterator[T]):
    """One pass over a stream, as :meth:`Stream.iterate` returns it: the items, and where it stands.

    ``state()`` says where the consumer is (a small JSON-serialisable dict);
    ``stream.iterate(seed, state=state)`` continues from there.

    >>> import json, pescador_fp as pf
    >>> s = pf.from_iterable(range(10)) | pf.shuffle(4)
    >>> it = s.iterate(seed=3)
    >>> first = [next(it) for _ in range(4)]
    >>> saved = json.loads(json.dumps(it.state()))
    >>> list(s.iterate(seed=3, state=saved)) == list(it)
    True
    """

    __slots__ = ("_items", "ctx", "stream", "taken")

    def __init__(
        self, stream: Stream[T], ctx: SeedContext, items: Generator[T, None, None], taken: int
    ) -> None:
        self.stream, self.ctx, self._items, self.taken = stream, ctx, items, taken

    def __iter__(self) -> Pass[T]:
        return self

    def __next__(self) -> T:
        __tracebackhide__ = True  # IPython and pytest hide this frame
        try:
            item = next(self._items)
        except Exception as error:  # free until it catches (zero-cost try)
            if not isinstance(error, StopIteration):
                hide_library_frames(error)
            raise
        self.taken += 1
        return item

    def close(self) -> None:
        """End the pass: workers stop and every open source is closed; closing again does nothing.

        >>> import pescador_fp as pf
        >>> it = pf.from_iterable(range(10)).iterate()
        >>> next(it), it.close(), next(it, "ended")
        (0, None, 'ended')
        """
        self._items.close()

    def stats(self) -> Stats:
        """Where the pass spends its time so far: a dict of numbers that prints as a table.

        Per stage that runs in this process: items out, the time inside its
        ``next()`` and, of that, its own; per ``background`` worker: items/s,
        how full its ring was and how long the consumer waited on it; per
        multiplexer source: items given and activations. ``print`` shows a
        table; the dict's keys are ``taken``, ``seconds``, ``waiting_s``,
        ``consumer_s``, ``stages``, ``workers`` and ``sources`` (lists of
        dicts), explained in docs/observing.md. Counting is always on and
        costs a few percent at most; worker processes count nothing.

        >>> import pescador_fp as pf
        >>> it = (pf.from_iterable(range(100)) | pf.map(abs)).iterate()
        >>> total = sum(it)
        >>> stats = it.stats()
        >>> stats["taken"], [(row["stage"], row["items"]) for row in stats["stages"]]
        (100, [('map(abs)', 100)])
        >>> print(stats)  # doctest: +ELLIPSIS
        pass: 100 items taken in ...
        """
        return stats_of(self.stream, self.ctx.run, self.taken, applied=Applied)

    def state(self) -> dict[str, Any]:
        """Where the consumer stands in this pass, as a small JSON-serialisable dict (docs/resume.md).

        It holds the items taken so far, the pass seed (or the entropy an
        unseeded pass drew), a fingerprint of the pipeline and, for
        ``background``, the items taken from each worker: never samples.
        ``stream.iterate(seed, state=state)`` yields the rest of this pass;
        a state restores only into the same pipeline, seed and library
        version (else ``ValueError`` says what differs).

        >>> import pescador_fp as pf
        >>> it = pf.from_iterable(range(10)).iterate(seed=0)
        >>> first = next(it), next(it)
        >>> it.state()["items"]
        2
        """
        return state_of(self.stream, self.ctx, self.taken)


def open_pass(stream: Stream[T], seed: object, state: Mapping[str, Any] | None) -> Pass[T]:
    """Open a pass over ``stream`` (``Stream.iterate``): afresh, or where ``state`` stands.

    >>> import pescador_fp as pf
    >>> it = open_pass(pf.from_iterable(range(3)), 0, None)
    >>> list(it), it.taken
    ([0, 1, 2], 3)
    """
    if state is None:
        ctx = SeedContext.for_pass(seed, run=Run())
        digest(stream)  # once per stream: a first state() then costs no more than the next ones
        return Pass(stream, ctx, _run(stream, ctx, 0), 0)
    root, fallback, stages, taken = resumed_context(stream, seed, state)
    ctx = SeedContext(root, (), fallback, Run(stages))
    return Pass(stream, ctx, _run(stream, ctx, taken), taken)


install_pass(open_pass)
