"""Dividing a stream into parts that run in separate processes, and how their outputs merge back.

``background`` asks :func:`divide` how to split a pipeline among ``count``
workers. There are two ways, and both give every item of a finite stream
exactly once, whatever the pipeline does (seeded or not, hash-ordered or not):

- **divided**: a stream low in the pipeline divides itself (the sources of a
  mux, the items of a collection, the rows of arrays: ``Stream._divide``) and
  only operators that can run on each part sit above it
  (``Operator._splittable``). Each worker runs one part.
- **fed**: nothing divides. A feeder process runs the lowest part of the
  pipeline that cannot be divided (the *head*) once, and deals its items in
  turn to the workers, which run the splittable operators above it (the
  *tail*). With no tail the whole stream runs in a single worker: there is
  nothing to share, and pretending otherwise would repeat the work.

Order. Where the parts are dealt in turn (a collection, or the feeder's deal)
and the tail is per-item (``map``, ``filter``, ``mapcat``, ``tuples``,
``unbatch``), the merge gives the foreground order back: with one-to-one
operators item by item, else group by group, each worker marking where the
outputs of one input item end. Operators that gather several items
(``batch``, ``shuffle``, ``cache``) run on each part, so their output depends
on how the work was divided (same seed and same ``count``: same output).

Remainders. A ``batch`` in the parts would drop (or yield short) the last
samples of every part: fewer batches than the undivided stream. So the
parts' batch hands its short last group to the consumer instead
(``Part.rest``), which pools those of all parts, in part order, and runs
that batch and the per-item operators above it over them once, after the
merge (:meth:`Plan.rest_stream`): the pass has the undivided stream's
number of batches and rows. A batch with anything else above it in the
parts (``shuffle``, another ``batch``) does not run in parts: it runs once,
with what is below it, in the feeder.

Marks also keep merges moving: wherever an operator in the parts may turn
an item into nothing (``filter``, ``mapcat``, ``unbatch``), the merge reads
group by group, picking the worker of each group in turn or by weight, so a
part whose items all come to nothing gives marks instead of silence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._seed import WORKER_BRANCH, SeedContext
from ._stream import Applied, Operator, Stream

__all__ = ["Part", "Plan", "components", "divide", "divide_ranks", "rebuild"]


@dataclass(frozen=True)
class Part:
    """What one worker runs: ``ops`` over ``source`` (``None``: the items the feeder deals it)."""

    source: Stream[Any] | None
    ops: tuple[Operator[Any, Any], ...]
    weight: float | None  # how often the merge reads this part; None: in turn
    depth: int = 0  # (fed) the depth of the head in the whole pipeline, so seeds line up
    dealt: tuple[int, int] | None = None  # (fed) (i, k): this part gets the head's items i, i + k, ...
    #: The place in ``ops`` of a ``batch`` whose short last group of samples goes to the consumer
    #: (pooled with the other parts'), not dropped or yielded; ``None``: no such batch.
    rest: int | None = None


@dataclass(frozen=True)
class Plan:
    """How a stream runs in parts, and how to merge them."""

    parts: tuple[Part, ...]
    head: Stream[Any] | None = None  # (fed) what the feeder runs once
    grouped: bool = False  # workers mark the end of each input item's outputs; merge group by group

    @property
    def fed(self) -> bool:
        return self.head is not None

    def context(self, index: int, ctx: SeedContext) -> SeedContext:
        """The seed context of part ``index``: the pass's own for a single part, else a child."""
        return ctx if len(self.parts) == 1 and not self.fed else ctx.child(WORKER_BRANCH, index)

    @property
    def pools_rest(self) -> bool:
        """Whether the parts send the short last group of their ``batch`` to the consumer."""
        return self.parts[0].rest is not None

    def rest_stream(self, samples: list[Any]) -> Stream[Any]:
        """The end of the pass (consumer): the parts' batch and the operators above it over ``samples``,
        the short last groups of all parts pooled in part order.

        >>> import pescador_fp as pf
        >>> plan = divide(pf.from_iterable(range(7)) | pf.batch(3, partial=True), 2)
        >>> [b.tolist() for b in plan.rest_stream([6, 5, 3])]
        [[6, 5, 3]]
        """
        part = self.parts[0]
        assert part.rest is not None
        below = part.source.depth if part.source is not None else part.depth
        return rebuild(_Pooled(tuple(samples), below + part.rest), part.ops[part.rest :])

    def rest_context(self, ctx: SeedContext) -> SeedContext:
        """The seed context of the end of the pass (:meth:`rest_stream`): a branch of its own, after the
        parts', and nothing registered for ``stats()`` (its stages are the workers')."""
        return SeedContext(ctx.root, (*ctx.path, WORKER_BRANCH, len(self.parts)), ctx.fallback)


@dataclass(frozen=True, repr=False, eq=False)
class _Pooled(Stream[Any]):
    """(consumer) The short last groups of samples of the parts' batch, pooled."""

    samples: tuple[Any, ...]
    at: int  # the depth of the stage below the batch in the whole pipeline, so that seeds line up

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.at

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        return iter(self.samples)

    def _describe(self) -> str:
        return "<the samples left over by the parts' batch>"


def _peel(stream: Stream[Any]) -> tuple[Stream[Any], list[Operator[Any, Any]]]:
    """The stream below the splittable operators at the top, and those operators (innermost first)."""
    ops: list[Operator[Any, Any]] = []
    while isinstance(stream, Applied) and stream.op._splittable:
        ops.append(stream.op)
        stream = stream.upstream
    ops.reverse()
    return stream, ops


def rebuild(source: Stream[Any], ops: Sequence[Operator[Any, Any]]) -> Stream[Any]:
    """``source | ops[0] | ops[1] ...``."""
    for op in ops:
        source = Applied(source, op)
    return source


def _rest(ops: Sequence[Operator[Any, Any]]) -> int | None:
    """The place of the batch whose remainder the parts pool (at most one is left in them), if any."""
    return next((i for i, op in enumerate(ops) if op._has_remainder), None)


def _undivided_remainders(ops: Sequence[Operator[Any, Any]]) -> int:
    """How many of ``ops`` (innermost first) must run undivided for the parts to pool remainders.

    Only the outermost batch can pool its remainder, and only under operators
    per item (they run over the pooled batches as over the others); every
    other batch runs once, with all below it.
    """
    places = [i for i, op in enumerate(ops) if op._has_remainder]
    if not places:
        return 0
    top = places[-1]
    if not all(op._per_item for op in ops[top + 1 :]):
        return top + 1
    return places[-2] + 1 if len(places) > 1 else 0


def divide(stream: Stream[Any], count: int, pool: bool = True) -> Plan:
    """How ``stream`` runs in ``count`` parts.

    ``pool``: a ``batch`` in the parts hands its remainder to the consumer
    (``Part.rest``), and one that cannot runs undivided; ``False`` (ranks,
    which have no consumer in common): every part keeps or drops its own.

    >>> import pescador_fp as pf
    >>> plan = divide(pf.from_iterable(range(10)) | pf.filter(bool), 2)
    >>> [list(part.source) for part in plan.parts], plan.grouped
    ([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]], True)
    >>> divide(pf.stream(iter, "abc") | pf.map(str.upper), 2).fed
    True
    """
    if count == 1:
        return Plan((Part(stream, (), None),))
    base, ops = _peel(stream)
    per_item = all(op._per_item for op in ops)
    one_to_one = all(op._one_to_one for op in ops)
    divided = [base._divide(i, count) for i in range(count)]
    # A batch that cannot pool its remainder (what stands above it is not per-item) runs undivided.
    undivided = _undivided_remainders(ops) if pool else 0
    if all(d is not None for d in divided) and not undivided:
        rest = _rest(ops) if pool else None
        # A part of weight 0 is empty (a mux with fewer sources or n_active than parts): no worker for it.
        parts = tuple(Part(d[0], tuple(ops), d[1], rest=rest) for d in divided if d is not None and d[1] != 0)
        if len(parts) <= 1:
            return Plan((Part(stream, (), None),))
        in_turn = base._divides_in_turn and all(p.weight is None for p in parts)
        # Where an operator may turn an item into nothing (filter, mapcat, unbatch), a worker marks
        # each input item's end, so that a part whose items all come to nothing cannot stall the
        # merge (an endless mux or cycle would wait on it forever).
        drops = any(op._per_item and not op._one_to_one for op in ops)
        grouped = (in_turn and per_item and not one_to_one) or drops
        if not (grouped and any(op._reads_ahead for op in ops)):
            return Plan(parts, grouped=grouped)
        # An operator that reads ahead would let the marks out early: it runs in a feeder instead.
    # Operators that restart their upstream cannot run over items dealt once: they join the head,
    # and so do those that read ahead where the workers would mark their items' ends.
    cut = max((i + 1 for i, op in enumerate(ops) if op._reopens_upstream), default=0)
    cut = max(cut, undivided)
    if not all(op._one_to_one for op in ops[cut:]):
        cut = max([cut, *(i + 1 for i, op in enumerate(ops) if op._reads_ahead)])
    head, tail = rebuild(base, ops[:cut]), tuple(ops[cut:])
    if not tail:
        return Plan((Part(stream, (), None),))
    rest = _rest(tail) if pool else None
    return Plan(
        tuple(Part(None, tail, None, head.depth, (i, count), rest) for i in range(count)),
        head=head,
        grouped=not all(op._one_to_one for op in tail),
    )


def divide_ranks(stream: Stream[Any], count: int) -> tuple[Plan, tuple[int | None, ...]]:
    """How ``count`` separate programs (ranks) each run their part of ``stream``.

    The plan is :func:`divide`'s, with the index of the part that each rank
    runs (``None``: an empty part). Ranks have no feeder between them, so two
    cases differ from ``background``:

    - an undividable stream with nothing splittable above it (which
      ``background`` runs whole in one worker) is fed with no tail: every rank
      runs it and keeps its turn of the items;
    - the parts of weight 0 that ``divide`` drops (a mux divided among fewer
      parts than ranks) are ranks with nothing.

    >>> import pescador_fp as pf
    >>> plan, which = divide_ranks(pf.stream(iter, "abc"), 2)
    >>> plan.fed, which
    (True, (0, 1))
    >>> plan, which = divide_ranks(pf.mux([pf.from_iterable("ab")], 1), 2)
    >>> len(plan.parts), which
    (1, (0, None))
    """
    plan = divide(stream, count, pool=False)
    if count == 1 or plan.fed:
        return plan, tuple(range(count))
    base, _ = _peel(stream)
    divided = [base._divide(i, count) for i in range(count)]
    if any(d is None for d in divided):
        return Plan(
            tuple(Part(None, (), None, stream.depth, (i, count)) for i in range(count)), head=stream
        ), tuple(range(count))
    kept = [i for i, d in enumerate(divided) if d is not None and d[1] != 0]
    if len(plan.parts) == 1:  # at most one part has items: it runs the whole stream
        owner = kept[0] if kept else 0
        return plan, tuple(0 if i == owner else None for i in range(count))
    return plan, tuple(kept.index(i) if i in kept else None for i in range(count))


def components(stream: Stream[Any]) -> Iterator[object]:
    """The operators and streams a pipeline is made of, outermost first (an applied operator as itself)."""
    if isinstance(stream, Applied):
        yield stream.op
    for child in stream.children:
        yield from components(child)
    if not isinstance(stream, Applied):
        yield stream
