"""``pescador_fp.ray.remote``: run a pipeline's parts as Ray streaming-generator tasks on a cluster.

An operator with ``background``'s shape, for preprocessing that outgrows one
machine. The stream is divided into parts exactly as ``background`` and
``shard`` divide it (:func:`~pescador_fp._divide.divide`); each part runs as a
Ray streaming-generator task, which may run at most ``prefetch`` items ahead
of the consumer; the consumer merges the parts in ``background``'s order. With
the same seed and the same number of workers, ``s | remote(workers=n)`` yields
what ``s | pf.background(workers=n)`` yields.

Where nothing divides (a ``pf.stream`` generator at the bottom), ``background``
has a feeder process run the undividable head once and deal its items to the
workers. Here there is no feeder: every part task runs the head itself with the
pass's seed context and keeps its dealt items ``i, i + k, ...``, as ``shard``'s
ranks do. That gives the same items in the same order wherever the head is the
same in every task for the seed, at the cost of running the head ``k`` times.

Exactly once under faults: Ray re-runs a part task whose worker process died
(``max_retries``). A part is deterministic for its seed context, so the new run
yields the same items; Ray drops the items the caller already has, and the
consumer checks every item's place in its part all the same. A pass with no
seed anywhere draws entropy once in the consumer, used where an operator would
otherwise draw fresh OS entropy, so that every task and every retry agree.

Ray is imported only when an iterator is opened: ``import pescador_fp.ray``
needs no Ray, and neither does building the operator.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import numbers
import re
import reprlib
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._check import check_int
from ._divide import components, divide
from ._ipc.codec import RemoteTraceback, loads_recipe
from ._merge import MARK, Leftovers, Reader, Tally, merge, merge_groups
from ._seed import MERGE_SEED, SeedContext
from ._stream import NOTHING, Applied, Operator, Stream, _run
from ._worker import Leftover, Marked, part_stream
from .background import recipe_bytes
from .errors import WorkerError

__all__ = ["remote"]

_WHERE = "pescador_fp.ray.remote"
# Ray's names for the resources it schedules by keyword rather than in ``resources``.
_KEYWORD_RESOURCES = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
# How long cancelled tasks may take to stop before their processes are killed.
_CANCEL_GRACE_S = 1.0
# Ray's smallest unit of a resource, and the most items a task may run ahead (a C int in Ray).
_RESOURCE_STEP = 1e-4
_MAX_PREFETCH = 2**31 - 1
# How long a pass waits for the cluster to hold all its parts at once before it says what holds it.
_RESERVE_TIMEOUT_S = 60.0
# What each part task asks for when ``resources`` is not given.
_DEFAULT_RESOURCES = (("CPU", 1.0),)
# Terminal colour and style codes, which Ray puts in the texts of its errors.
_ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _ray() -> Any:
    """The ``ray`` module, imported now (a clear error where it is not installed)."""
    try:
        return importlib.import_module("ray")
    except ImportError as error:
        raise ImportError(
            f"{_WHERE} needs Ray: pip install 'pescador_fp[ray]' (or pip install 'ray>=2.9')"
        ) from error


def _joined(ray: Any) -> Any:
    """``ray``, with this process in a cluster: as Ray's own calls do, ``ray.init()`` if it is in none
    (which joins ``RAY_ADDRESS`` where that is set, else starts a local cluster)."""
    if not ray.is_initialized():
        ray.init()
    return ray


# ---------------------------------------------------------------- seeds


def _replayable(ctx: SeedContext) -> SeedContext:
    """``ctx`` with the pass's own entropy for the operators that have no seed, drawn now if it has none.

    Every part task and every retry of one then makes the same draws: the
    retried task replays exactly what the first try yielded.
    """
    if ctx.root is None and ctx.fallback is None:  # SeedContext.for_pass draws it; a bare context may not
        return dataclasses.replace(ctx, fallback=secrets.randbits(128))
    return ctx


# ---------------------------------------------------------------- the part task (on a Ray worker)


@dataclass(frozen=True, repr=False, eq=False)
class _Dealt(Stream[Any]):
    """(task) Items ``i, i + k, ...`` of the head that nothing divides, run with the pass's seed context."""

    undivided: Stream[Any]
    ctx: SeedContext  # the pass's: every part runs the head as background's feeder would
    dealt: tuple[int, int]
    at: int  # the depth of the head in the whole pipeline, so that seeds line up

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.at

    def _open(self, ctx: SeedContext) -> Iterator[Any]:
        index, count = self.dealt
        return itertools.islice(_run(self.undivided, self.ctx), index, None, count)

    def _numbering(self) -> tuple[int, int] | None:
        return self.dealt

    def _describe(self) -> str:
        index, count = self.dealt
        return f"<items {index}, {index} + {count}, ... of {self.undivided!r}>"


class _Groups:
    """(task) How many times the operators above the source have asked it for its next item.

    ``background``'s worker writes a mark at each of those moments; here an
    output yielded while the count is ``g`` belongs to group ``g`` (for per-item
    operators: the outputs of the part's input item ``g``), and the consumer
    merges group by group as ``background`` merges mark to mark.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> None:
        """The operators above the source ask for its next item: the current group is complete."""
        self.count += 1


def _part_items(recipe: bytes) -> Iterator[tuple[int, int, Any]]:
    """(task) Run one part; yield ``(place, group, item)`` for each of its items."""
    part, grouped, ctx, head, head_ctx = loads_recipe(recipe)
    source = part.source
    if source is None:
        assert part.dealt is not None
        source = _Dealt(head, head_ctx, part.dealt, part.depth)
    groups = _Groups()
    if grouped:
        source = Marked(source, groups.next)
    rest: list[Any] = []
    place = 0
    for place, item in enumerate(_run(part_stream(part, source, rest.extend), ctx), 1):
        yield place - 1, groups.count, item
    if rest:  # the short last group of the part's batch, which the consumer pools (as background's)
        yield place, groups.count, Leftover(rest)
        place += 1
    if grouped:  # the groups after the last item, which gave nothing: marks too, as background's
        yield place, groups.count, _GroupsEnd()


class _GroupsEnd:
    """(task) The last entry of a grouped part: its group number is the count of all its groups."""


@functools.cache
def _task() -> Any:
    """The part task as a Ray remote function (made once per process, after Ray is imported)."""
    return _ray().remote(_part_items)


# ---------------------------------------------------------------- the consumer


class _Channel:
    """(consumer) One part task's stream of items."""

    def __init__(self, index: int, items: Any, ray: Any) -> None:
        self.index = index
        self.items = items  # the task's ObjectRefGenerator
        self.ray = ray
        self.received = 0  # items of this part that the consumer has
        self.pending: tuple[int, Any] | None = None  # (group, item) read ahead by the group merge
        self.group = 0  # the input group whose outputs come next

    def next_entry(self) -> tuple[int, Any] | None:
        """The part's next ``(group, item)``; ``None`` at its end."""
        ray = self.ray
        while True:
            failed = None
            try:
                ref = next(self.items)
                place, group, item = ray.get(ref)
            except StopIteration:
                return None
            except ray.exceptions.RayTaskError as error:
                failed = _user_error(error, self.index)
            except ray.exceptions.RayError as error:
                raise WorkerError(
                    f"{_WHERE}: the Ray task of part {self.index} failed after its retries: "
                    f"{type(error).__name__}: {_plain(str(error))}"
                ) from error
            if failed is not None:  # raised here, not in the except clause: its __cause__ is the traceback
                raise failed
            del ref
            if place < self.received:  # a retry's replay of an item the consumer has: skip it
                continue
            if place > self.received:
                raise WorkerError(
                    f"{_WHERE}: part {self.index} sent item {place} where item {self.received} was due"
                )
            self.received += 1
            return group, item

    def next_item(self) -> Any:
        """The part's next item, ``NOTHING`` at its end, or (grouped) ``MARK`` where an input group ends:
        what ``_merge.merge`` and ``merge_groups`` read from a ``background`` channel."""
        entry = self.pending or self.next_entry()
        self.pending = None
        if entry is None:
            return NOTHING
        if entry[0] > self.group:  # the outputs of the input groups before it are all out
            self.pending = entry
            self.group += 1
            return MARK
        if type(entry[1]) is _GroupsEnd:
            return NOTHING
        return entry[1]


def _user_error(error: Any, index: int) -> BaseException:
    """The exception a part raised, as itself, with the remote traceback attached."""
    cause = getattr(error, "cause", None)
    text = _plain(getattr(error, "traceback_str", None) or str(error))
    if not isinstance(cause, BaseException):
        return WorkerError(f"{_WHERE}: part {index} raised an error that cannot be sent back: {text}")
    cause.__cause__ = RemoteTraceback(f"\n\nraised in Ray part {index}:\n\n{text}")
    return cause


def _plain(text: str) -> str:
    r"""``text`` without terminal colour codes.

    >>> _plain("\x1b[36mray::part()\x1b[39m failed")
    'ray::part() failed'
    """
    return _ANSI_CODES.sub("", text)


def _demand(op: _Remote) -> dict[str, float]:
    """What each part task asks of the cluster: ``{"CPU": 1}`` with the operator's ``resources`` over it."""
    demand = dict(_DEFAULT_RESOURCES)
    demand.update(op.resources or ())
    return {name: amount for name, amount in demand.items() if amount > 0}


def _reserve(ray: Any, demand: dict[str, float], count: int) -> Any:
    """A placement group of ``count`` bundles of ``demand``, ready: all parts run at once, or none.

    The merge reads every part in turn, so a part that waits for room while
    the others wait for the consumer would wait forever; a gang reservation
    (and a clear error where the cluster is too small) rules that out.
    """
    if not demand:
        return None
    total = ray.cluster_resources()
    short = {name: amount for name, amount in demand.items() if total.get(name, 0.0) < amount * count}
    if short:
        have = {name: total.get(name, 0.0) for name in short}
        raise WorkerError(
            f"{_WHERE}: workers={count} parts each asking {demand} need {count}x that, and the Ray "
            f"cluster has {have}; pass fewer workers, smaller resources, or add nodes"
        )
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if nodes and not any(all(node.get(k, 0.0) >= v for k, v in demand.items()) for node in nodes):
        raise WorkerError(
            f"{_WHERE}: each part asks {demand}, and no node of the Ray cluster has that much "
            f"(the largest: {max(nodes, key=lambda node: node.get('CPU', 0.0))}); ask for less per part"
        )
    group = ray.util.placement_group([demand] * count, strategy="SPREAD")
    try:
        try:
            ray.get(group.ready(), timeout=_RESERVE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(
                f"{_WHERE}: waited {_RESERVE_TIMEOUT_S:g} s for room for {count} parts of {demand} on the "
                "Ray cluster: other passes (an iterator over a remote still open, in this process or "
                "another) or other jobs hold it; close open iterators (it.close()), or ask for less"
            ) from None
    except BaseException:
        ray.util.remove_placement_group(group)
        raise
    return group


def _task_options(op: _Remote, demand: dict[str, float], group: Any, index: int, ray: Any) -> dict[str, Any]:
    """Ray's options for part task ``index``: streaming, retried, held back, in its bundle."""
    options: dict[str, Any] = {
        "num_returns": "streaming",
        "max_retries": op.max_retries,
        "retry_exceptions": False,
        "_generator_backpressure_num_objects": op.prefetch,
        "num_cpus": 0,
    }
    custom = {}
    for name, amount in demand.items():
        if name in _KEYWORD_RESOURCES:
            options[_KEYWORD_RESOURCES[name]] = amount
        else:
            custom[name] = amount
    if custom:
        options["resources"] = custom
    if group is None:
        options["scheduling_strategy"] = "SPREAD"
    else:
        options["scheduling_strategy"] = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=index
        )
    return options


def _remote_items(op: _Remote, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
    plan = divide(upstream, op.workers)
    parts_ctx = _replayable(ctx)
    recipes = [
        recipe_bytes(
            (part, plan.grouped, plan.context(i, parts_ctx), plan.head, parts_ctx),
            upstream,
            _WHERE,
            "Ray tasks",
        )
        for i, part in enumerate(plan.parts)
    ]
    ray = _joined(_ray())
    importlib.import_module("ray.util.scheduling_strategies")
    demand = _demand(op)
    group = _reserve(ray, demand, len(recipes))
    generators: list[Any] = []
    try:
        for i, recipe in enumerate(recipes):
            generators.append(_task().options(**_task_options(op, demand, group, i, ray)).remote(recipe))
        channels = [_Channel(i, items, ray) for i, items in enumerate(generators)]
        # The channels read like background's, so the parts merge exactly as background merges them.
        weights = [part.weight for part in plan.parts]
        rng = ctx.generator(MERGE_SEED, depth)
        leftovers = Leftovers(channels) if plan.pools_rest else None
        readers: list[Reader] = leftovers.readers() if leftovers is not None else list(channels)
        if plan.grouped:
            yield from merge_groups(readers, weights, rng)
        else:
            yield from merge(readers, weights, rng, Tally(len(channels)))
        if leftovers is not None:
            yield from plan.rest_stream(leftovers.samples())._open(plan.rest_context(ctx))
    finally:
        # Not after ray.shutdown(), which ended the tasks (and a call would start Ray again).
        if ray.is_initialized():
            try:
                _cancel(ray, generators)
            except BaseException:  # a second Ctrl-C during the grace: kill the tasks at once
                for items in generators:
                    ray.cancel(items, force=True)
                raise
            finally:  # and free the reservation whatever happened
                if group is not None:
                    ray.util.remove_placement_group(group)


def _cancel(ray: Any, generators: list[Any]) -> None:
    """Stop every task: interrupt them, and kill the processes of those still running after a grace.

    An interrupted task stops at its next Python instruction (at once where it
    waits for the consumer) and its worker process stays for the next pass; a
    task stuck in a long call is killed with its process.
    """
    for items in generators:
        ray.cancel(items, force=False)
    done = [items.completed() for items in generators]
    _, running = ray.wait(done, num_returns=len(done), timeout=_CANCEL_GRACE_S)
    for items, ref in zip(generators, done):
        if ref in running:
            ray.cancel(items, force=True)


def _refuse_nested(upstream: Stream[Any], where: str) -> None:
    for piece in components(upstream):
        if getattr(piece, "_starts_workers", False):
            raise ValueError(
                f"{where}: the pipeline already holds {piece!r}; a part task cannot start workers of its "
                f"own: remove {piece!r} (the Ray tasks run the pipeline in parallel already)"
            )


@dataclass(frozen=True, repr=False)
class _Remote(Operator[Any, Any]):
    _starts_workers = True
    workers: int
    prefetch: int
    max_retries: int
    resources: tuple[tuple[str, float], ...] | None  # (name, amount) pairs

    def _apply(self, upstream: Stream[Any]) -> Stream[Any]:
        _refuse_nested(upstream, f"{_WHERE}({self._options()})")
        return Applied(upstream, self)

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _remote_items(self, upstream, ctx, depth)

    def _options(self) -> str:
        options = [f"workers={self.workers}"]
        if self.prefetch != 4:
            options.append(f"prefetch={self.prefetch}")
        if self.max_retries != 3:
            options.append(f"max_retries={self.max_retries}")
        if self.resources is not None:
            options.append(f"resources={dict(self.resources)!r}")
        return ", ".join(options)

    def __repr__(self) -> str:
        return f"ray.remote({self._options()})"


def _check_resources(resources: object) -> tuple[tuple[str, float], ...] | None:
    if resources is None:
        return None
    if not isinstance(resources, Mapping):
        raise TypeError(
            f"{_WHERE}: resources must be a dict of resource names to amounts (such as "
            f'{{"CPU": 1, "GPU": 0.5}}) or None, got {reprlib.repr(resources)} ({type(resources).__name__})'
        )
    checked = []
    for name, amount in resources.items():
        if not isinstance(name, str):
            raise TypeError(f"{_WHERE}: resources keys must be resource names (str), got {name!r}")
        if (
            isinstance(amount, bool)
            or not isinstance(amount, numbers.Real)
            or not 0 <= float(amount) < np.inf
            or (0 < float(amount) < _RESOURCE_STEP)
        ):
            raise ValueError(
                f"{_WHERE}: resources[{name!r}] must be 0 or a finite number >= {_RESOURCE_STEP:g} "
                f"(Ray counts in steps of {_RESOURCE_STEP:g}), got {amount!r}"
            )
        checked.append((name, float(amount)))
    return tuple(checked)


def remote(
    workers: int,
    *,
    prefetch: int = 4,
    max_retries: int = 3,
    resources: Mapping[str, float] | None = None,
) -> Operator[Any, Any]:
    """Run everything upstream as ``workers`` Ray tasks, on whatever Ray cluster this process joined.

    The stream is divided into parts as ``pf.background(workers=...)`` divides
    it; each part runs as a Ray streaming-generator task that stays at most
    ``prefetch`` items ahead of the consumer. The same seed and the same
    ``workers`` give exactly what ``background`` gives, in the same order. A
    task whose worker process dies is run again (``max_retries`` times) and the
    consumer skips what it already has; an error in a part arrives as itself
    with the remote traceback; ``break``, ``close()``, garbage collection and
    Ctrl-C cancel the tasks. Arrays come back through Ray's object store,
    read-only (zero-copy on the same node). Nothing starts until an iterator is
    opened; Ray starts a local cluster then if none is running (``ray.init()``).

    Args:
        workers: number of parts, each one Ray task.
        prefetch: items each task may run ahead of the consumer.
        max_retries: how many times Ray runs a part again whose process died.
        resources: what each task asks of the cluster, such as ``{"CPU": 2}``
            or ``{"CPU": 1, "GPU": 0.25, "decoder": 1}`` (default ``{"CPU": 1}``).

    >>> import pescador_fp as pf, pescador_fp.ray
    >>> pf.from_iterable(range(6)) | pf.map(abs) | pescador_fp.ray.remote(workers=2, prefetch=8)
    from_iterable(range(0, 6)) | map(abs) | ray.remote(workers=2, prefetch=8)
    """
    workers = check_int(_WHERE, "workers", workers, 1)
    prefetch = check_int(_WHERE, "prefetch", prefetch, 1, _MAX_PREFETCH)
    max_retries = check_int(_WHERE, "max_retries", max_retries, 0)
    return _Remote(workers, prefetch, max_retries, _check_resources(resources))
