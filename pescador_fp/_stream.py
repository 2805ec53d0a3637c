"""Stream and Operator values, ``|``, ``pipe`` and ``iterate(seed)``.

A :class:`Stream` is a frozen recipe: it knows how to open an iterator, given
the :class:`~pescador_fp._seed.SeedContext` of a pass, and holds no run-time
state. An :class:`Operator` is a frozen recipe for turning one stream into
another; ``stream | op`` applies it and ``op1 | op2`` composes. All state lives
in the iterators that ``iterate`` returns.
"""

from __future__ import annotations

import functools
import html
import itertools
import numbers
import os
import reprlib
import sys
import types
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import numpy as np
import toolz

from ._seed import WORKER_BRANCH, SeedContext
from ._stats import counted, stage_counts

if TYPE_CHECKING:
    from ._pass import Pass

__all__ = [
    "NOTHING",
    "OPERATOR_NAMES",
    "Operator",
    "PassIterator",
    "Stream",
    "as_stream",
    "close_iterator",
    "describe_callable",
    "drop",
    "from_item",
    "install_collection_source",
    "install_pass",
    "items_before",
    "peek",
    "pipe",
    "stage_key",
    "undivided_path",
]

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")

#: "Nothing here": what ``next(items, NOTHING)`` returns at the end of ``items``.
NOTHING: Any = object()

# The sub-streams of a multiplexer listed in its notebook display; the rest are counted.
_HTML_CHILDREN = 8

_NO_LENGTH = (
    "a Stream has no length: it is a recipe for passes, which may be endless or of a random "
    "length; look at a few items with s.head(n) (or s | pf.take(n)), or count one pass with "
    "sum(1 for _ in s)"
)

_NOT_AN_ITERATOR = (
    "a Stream is not an iterator: it is a recipe for passes. Start a pass with it = iter(s) "
    "(or it = s.iterate(seed)) and call next(it), or look at the first items with s.head(n)"
)

_NOT_INDEXABLE = (
    "a Stream cannot be indexed: it is a recipe for passes, which may be endless or random. "
    "Take the first items as a list with s.head(n) (then s.head(n)[i]), cut a stream with "
    "s | pf.take(n) or s | pf.skip(n), or walk a pass: for x in s, or it = iter(s)"
)


class _Missing(AttributeError, TypeError):
    """What a refused special method raises: a ``TypeError`` for ``next(s)``, and an ``AttributeError``
    for ``hasattr(s, "__next__")`` (tqdm.auto, inspect.getmembers), which must say False, not raise."""


class _Refused:
    """A special method that a Stream does not have, which says what to do instead (``next(s)``).

    It sits in the class (the only place ``next()`` looks), so ``isinstance(s, collections.abc.Iterator)``
    is True; every use of it raises.
    """

    def __init__(self, message: str) -> None:
        self.message = message

    def __get__(self, instance: object, owner: object = None) -> Any:
        raise _Missing(self.message)


_NO_ADDITION = (
    "streams do not add up with + (nor with sum): pf.chain([a, b]) gives a's items then b's; "
    "pf.round_robin([a, b]), pf.shuffled_mux([a, b]) or pf.mux([a, b], ...) interleave them"
)

_AFTER_PIPE = "an operator such as pf.map(f), pf.batch(32) or pf.shuffle(1000) (or operators composed with |)"


class Stream(Generic[T]):
    """An immutable, re-iterable recipe for a sequence of samples.

    Every ``iter(s)`` starts a fresh pass; ``s | op`` returns a new Stream and
    leaves ``s`` unchanged.

    >>> import pescador_fp as pf
    >>> s = pf.from_iterable(range(5)) | pf.map(lambda x: x * 10)
    >>> list(s), list(s)
    ([0, 10, 20, 30, 40], [0, 10, 20, 30, 40])
    >>> s
    from_iterable(range(0, 5)) | map(<lambda>)
    """

    #: Operators between this stream and the source of its branch.
    depth: int = 0
    #: ``_divide`` deals the items out in turn (part ``i`` gets items ``i, i + count, ...``),
    #: so merging the parts in turn gives the undivided order back.
    _divides_in_turn = False

    def _open(self, ctx: SeedContext) -> Iterator[T]:
        """Open an iterator for one pass; subclasses implement this."""
        raise NotImplementedError

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[T]:
        """What ``_open(ctx)`` gives after ``start`` items have been taken from it (a resumed pass).

        This default takes and drops them; a stream that can seek (arrays, sequences) or count its
        way there without making the items (map, batch, shuffle, mux) does better.
        """
        return drop(self._open(ctx), start)

    def _describe(self) -> str:
        raise NotImplementedError

    def _fingerprint(self) -> str:
        """What a resumed pass compares with the pass that saved its state: the repr, and for
        sources a sample of their data (a state restores only into the same pipeline)."""
        return repr(self)

    def _row_batches(self, size: int, partial: bool, start: int = 0) -> Iterator[Any] | None:
        """Batches of ``size`` samples as slices of the source's arrays, where such a slice is
        exactly what stacking the samples gives (``from_arrays``); ``None`` elsewhere.

        A background worker whose part ends in ``batch`` copies these straight into its ring.
        ``start``: the first sample (a resumed pass).
        """
        return None

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        """The streams this one reads from: none for a source, the sources of a mux.

        >>> import pescador_fp as pf
        >>> a, b = pf.from_iterable([1]), pf.from_iterable([2])
        >>> pf.round_robin([a, b]).children == (a, b), (a | pf.take(1)).children == (a,)
        (True, True)
        """
        return ()

    def _divide(self, index: int, count: int) -> tuple[Stream[T], float | None] | None:
        """Part ``index`` of ``count`` disjoint parts that together make this stream, and its weight.

        ``background`` runs one part per worker. The weight (``None``: parts
        are merged in turn) sets how often the merge reads from this part. A
        stream that cannot divide itself returns ``None``.
        """
        return None

    def _length(self) -> int | None:
        """How many items a pass yields, where that is known without running it (``None``: unknown).

        ``shard(equal=True)`` uses it to give every rank the same number of items.
        """
        return None

    def _numbering(self) -> tuple[int, int] | None:
        """Where the items of a pass sit in the stream this one was divided from.

        ``(start, step)``: item ``j`` of a pass is item ``start + j * step`` of
        the undivided stream (a whole stream is ``(0, 1)``); ``None``: not known
        (a multiplexer's part, items dealt by a feeder). ``pf.map(fn, rng=True)``
        numbers its items with it, so that an item draws the same numbers
        however the stream was divided.
        """
        return None

    def __repr__(self) -> str:
        return self._describe()

    def _repr_html_(self) -> str:
        """The pipeline as a list of stages, source first (what notebooks display).

        >>> import pescador_fp as pf
        >>> html = (pf.from_iterable(range(3)) | pf.map(str))._repr_html_()
        >>> html.count("<li>"), "map(str)" in html
        (2, True)
        """
        return f'<div class="pescador-fp-stream"><b>Stream</b>{_stages_html(self)}</div>'

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """The pipeline as a list of stages, source first (what IPython prints).

        >>> import pescador_fp as pf
        >>> print("\\n".join(_stages_text(pf.from_iterable(range(3)) | pf.map(str))))
        from_iterable(range(0, 3))
        | map(str)
        """
        printer.text("\n".join(_stages_text(self)))

    def head(self, n: int = 5, *, seed: object = None) -> list[T]:
        """Return the first ``n`` items of a pass as a list; the pass is closed after (workers stop).

        ``seed`` roots the pass's randomness, as in :meth:`iterate`.

        >>> import pescador_fp as pf
        >>> (pf.from_iterable(range(100)) | pf.map(lambda x: x * x)).head(4)
        [0, 1, 4, 9]
        """
        value: object = n
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"head: n must be an integer >= 0, got {reprlib.repr(n)} ({type(n).__name__})")
        if n < 0:
            raise ValueError(f"head: n must be an integer >= 0, got {n!r}")
        __tracebackhide__ = True  # IPython and pytest hide this frame
        items = _run(self, SeedContext.for_pass(seed), 0)
        try:
            # Copied: a zero-copy background's views are valid only until its next item.
            return [_owned(item) for item in itertools.islice(items, int(n))]
        except Exception as error:
            hide_library_frames(error)
            raise
        finally:
            items.close()

    def __len__(self) -> int:
        raise TypeError(_NO_LENGTH)

    # next(s): without a __next__, Python's message names the stream's internal class ("'Applied'
    # object is not an iterator"); this one says how to start a pass.
    __next__ = _Refused(_NOT_AN_ITERATOR)

    def __getitem__(self, index: object) -> Any:
        raise TypeError(_NOT_INDEXABLE)

    def __add__(self, other: object) -> Any:
        if isinstance(other, Stream):
            raise TypeError(_NO_ADDITION)
        return NotImplemented

    def __radd__(self, other: object) -> Any:
        raise TypeError(_NO_ADDITION)  # sum(streams) starts with 0 + a

    def __mul__(self, other: object) -> Any:
        raise TypeError(
            "a Stream does not repeat with *: s | pf.cycle(n) runs it n times (pf.cycle() for ever)"
        )

    __rmul__ = __mul__

    if not TYPE_CHECKING:  # (mypy would take every attribute of a Stream for one that exists)

        def __getattr__(self, name: str) -> Any:
            # Only for names that are not found. Method chains as in other libraries (s.shuffle(100)):
            # say how pescador_fp applies operators; never the internal class's name.
            if name == "__next__":  # s.__next__ (next(s) reads the class's own)
                raise _Missing(_NOT_AN_ITERATOR)
            if name in OPERATOR_NAMES:
                raise AttributeError(
                    f"a Stream has no method {name}(): operators are applied with |, as in s | pf.{name}(...)"
                )
            raise AttributeError(f"a Stream has no attribute {name!r}")

    def __bool__(self) -> bool:
        return True  # not len(): a stream is always something, even an empty one

    def iterate(self, seed: object = None, *, state: Mapping[str, Any] | None = None) -> Pass[T]:
        """Start a pass over the stream; ``seed`` roots all randomness of the pass.

        The same ``seed`` gives the same items; different seeds reshuffle,
        which is how epochs get a new, reproducible order. ``seed=None``
        draws the pass's entropy afresh.

        ``state``, from :meth:`Pass.state` of an earlier pass over the same
        stream with the same seed, continues that pass where its consumer
        stopped (docs/resume.md).

        >>> import pescador_fp as pf
        >>> s = pf.from_iterable(range(6)) | pf.shuffle(6)
        >>> list(s.iterate(seed=1)) == list(s.iterate(seed=1))
        True
        >>> sorted(s.iterate(seed=2))
        [0, 1, 2, 3, 4, 5]
        """
        return _passes[0](self, seed, state)

    def __iter__(self) -> Iterator[T]:
        return self.iterate()

    @overload
    def __or__(self, op: Operator[T, U]) -> Stream[U]: ...

    @overload
    def __or__(self, op: object) -> Stream[Any]: ...

    def __or__(self, op: object) -> Stream[Any]:
        if isinstance(op, Operator):
            return op._apply(self)
        raise TypeError(
            f"`stream | x` needs {_AFTER_PIPE} on the right of |, "
            f"got {reprlib.repr(op)} ({type(op).__name__})"
        )


def _run(stream: Stream[T], ctx: SeedContext, start: int = 0) -> Generator[T, None, None]:
    # A generator, so that nothing is opened before the first next() and the
    # caller always gets an iterator with close().
    yield from (stream._open_at(ctx, start) if start else stream._open(ctx))


def _owned(item: Any) -> Any:
    """``item`` with read-only views (a zero-copy ``background``'s, into its ring) copied."""
    if isinstance(item, np.ndarray):
        return item.copy() if item.base is not None and not item.flags.writeable else item
    if isinstance(item, dict):
        return {key: _owned(value) for key, value in item.items()}
    if isinstance(item, (list, tuple)) and type(item) in (list, tuple):
        return type(item)(map(_owned, item))
    return item


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the library's own frames, unless ``PESCADOR_FP_FULL_TRACEBACK=1``.

    An error in a pass (yours, in a ``map``, or a worker's, raised again in
    your process) then shows your loop and your code, not the seven frames
    of the pass, the merge and the channel it came through.

    >>> import traceback, pescador_fp as pf
    >>> try:
    ...     next(iter(pf.from_iterable([0]) | pf.map(lambda x: 1 // x)))
    ... except ZeroDivisionError as error:
    ...     frames = traceback.extract_tb(user_frames(error.__traceback__))
    >>> [frame.name for frame in frames][-1]
    '<lambda>'
    >>> any(frame.filename.startswith(_PACKAGE) for frame in frames)
    False
    """
    if os.environ.get("PESCADOR_FP_FULL_TRACEBACK", "") not in ("", "0"):
        return tb
    kept: list[types.TracebackType] = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
            kept.append(tb)
        tb = tb.tb_next
    trimmed = None
    for entry in reversed(kept):
        trimmed = types.TracebackType(trimmed, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return trimmed


def hide_library_frames(error: BaseException) -> None:
    """Trim the library's frames from ``error``, which the caller has just caught, before it re-raises it.

    Python 3.11 and newer re-raise ``error.__traceback__``, which then holds
    only :func:`user_frames`. Python 3.10 re-raises the traceback it caught,
    whose head is the catching frame itself: that one frame (marked
    ``__tracebackhide__``, which IPython and pytest hide) stays, and the
    library's frames after it go.
    """
    tb = error.__traceback__
    trimmed = user_frames(tb)
    if trimmed is tb:
        return
    if sys.version_info >= (3, 11) or tb is None:
        error.__traceback__ = trimmed
    else:
        tb.tb_next = trimmed


def drop(items: Iterator[T], n: int) -> Iterator[T]:
    """``items`` after taking and dropping ``n`` of them (fewer where it ends first).

    >>> list(drop(iter(range(5)), 3))
    [3, 4]
    """
    if n:
        next(itertools.islice(items, n, n), None)
    return items


def stage_key(ctx: SeedContext, depth: int) -> str:
    """The name of the stage at ``depth`` of ``ctx``'s branch, the same in every pass over a stream.

    >>> stage_key(SeedContext(None, (3, 1)), 2)
    '3.1@2'
    """
    return f"{'.'.join(map(str, ctx.path))}@{depth}"


class Operator(Generic[T, U]):
    """An immutable recipe that turns a stream into another stream.

    ``stream | op`` (or ``op(stream)``) applies it; ``op1 | op2`` composes.
    Operators are not iterable and never take part in numpy broadcasting.

    >>> import pescador_fp as pf
    >>> double_then_batch = pf.map(lambda x: 2 * x) | pf.batch(2)
    >>> [b.tolist() for b in range(4) | double_then_batch]
    [[0, 2], [4, 6]]
    """

    # ``ndarray | op`` must not be evaluated element-wise by numpy.
    __array_ufunc__ = None
    #: Applying the operator to each part of a divided stream gives the parts of
    #: its output (up to order): ``background`` may then run it in every worker.
    _splittable = False
    #: Each input item's outputs depend on that item alone and all come out before
    #: the next input is pulled (map, filter, mapcat, tuples, unbatch): ``background``
    #: can then restore the order of the foreground pass after dividing.
    _per_item = False
    #: Exactly one output per input item (map, tuples).
    _one_to_one = False
    #: May leave a remainder of fewer items than it gathers at the end of its input (batch):
    #: ``background`` then pools the remainders of its parts in the consumer (``_divide``).
    _has_remainder = False
    #: Iterates its upstream more than once (cycle), so it cannot run over items
    #: that a feeder process hands out once.
    _reopens_upstream = False
    #: Yields exactly as many items as a finite upstream gives it (a permutation: shuffle).
    _keeps_length = False
    #: Runs its upstream in other processes (``background``, ``pescador_fp.ray.remote``).
    _starts_workers = False
    #: Takes items from its upstream before the outputs of earlier ones are out, and keeps their
    #: order (a concurrent map): a worker could not mark where each item's outputs end.
    _reads_ahead = False

    def _length_after(self, upstream: Stream[T]) -> int | None:
        """How many items this operator yields over ``upstream`` in a pass (``None``: unknown)."""
        n = upstream._length()
        return None if n is None else self._output_length(n)

    def _output_length(self, n: int) -> int | None:
        """How many items this operator yields from ``n`` inputs, where that depends on ``n`` alone."""
        return n if self._one_to_one or self._keeps_length else None

    def _apply(self, upstream: Stream[T]) -> Stream[U]:
        return Applied(upstream, self)

    def _open(self, upstream: Stream[T], ctx: SeedContext, depth: int) -> Iterator[U]:
        """Open this operator's iterator over ``upstream``; ``depth`` is its place in the branch."""
        raise NotImplementedError

    def _open_at(self, upstream: Stream[T], ctx: SeedContext, depth: int, start: int) -> Iterator[U]:
        """What ``_open`` gives after ``start`` items (:meth:`Stream._open_at`).

        A one-to-one operator opens over its upstream from item ``start`` on; this default
        otherwise takes and drops the items.
        """
        if start and self._one_to_one:
            return self._open(from_item(upstream, start), ctx, depth)
        return drop(self._open(upstream, ctx, depth), start)

    def __call__(self, upstream: Stream[T] | Iterable[T]) -> Stream[U]:
        return self._apply(as_stream(upstream))

    def _display(self) -> str:
        """The operator in a pipeline's notebook display: its repr, and what it does by default."""
        return repr(self)

    def __ror__(self, left: object) -> Stream[U]:
        if isinstance(left, Stream) or (isinstance(left, Iterable) and not isinstance(left, Iterator)):
            return self(left)
        if isinstance(left, Iterator):
            as_stream(left)  # raises the error that names pf.stream
        return NotImplemented

    @overload
    def __or__(self, other: Operator[U, V]) -> Operator[T, V]: ...

    @overload
    def __or__(self, other: object) -> Any: ...

    def __or__(self, other: object) -> Any:
        if isinstance(other, Operator):
            return Composed((*_parts(self), *_parts(other)))
        if isinstance(other, Stream):
            raise TypeError(f"an operator goes on the right of |: write s | {self!r}, not {self!r} | s")
        return NotImplemented

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(
            f"{self!r} is an operator, not a stream, and cannot be iterated; "
            "apply it to one: pf.from_iterable(xs) | op. (A dict's keys or items on the left of | "
            "make a set union, which iterates the operator: stream them with "
            "pf.from_iterable(list(d.items())) | op)"
        )


def _parts(op: Operator[Any, Any]) -> tuple[Operator[Any, Any], ...]:
    return op.ops if isinstance(op, Composed) else (op,)


@dataclass(frozen=True, repr=False)
class Composed(Operator[Any, Any]):
    """Operators applied one after another: ``s | (a | b) == s | a | b``."""

    ops: tuple[Operator[Any, Any], ...]

    def _apply(self, upstream: Stream[Any]) -> Stream[Any]:
        for op in self.ops:
            upstream = op._apply(upstream)
        return upstream

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.ops))


@dataclass(frozen=True, repr=False)
class Applied(Stream[U], Generic[T, U]):
    """The stream ``upstream | op``."""

    upstream: Stream[T]
    op: Operator[T, U]

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.upstream.depth + 1

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return (self.upstream,)

    def _open(self, ctx: SeedContext) -> Iterator[U]:
        items = self.op._open(self.upstream, ctx, self.depth)
        counts = stage_counts(ctx.run, self)
        return items if counts is None else counted(items, counts)

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[U]:
        items = self.op._open_at(self.upstream, ctx, self.depth, start)
        counts = stage_counts(ctx.run, self)
        return items if counts is None else counted(items, counts)

    def _length(self) -> int | None:
        return self.op._length_after(self.upstream)

    def _numbering(self) -> tuple[int, int] | None:
        return self.upstream._numbering() if self.op._one_to_one else None

    def _describe(self) -> str:
        return f"{self.upstream!r} | {self.op!r}"


@dataclass(frozen=True, repr=False, eq=False)
class _From(Stream[T]):
    """(a resumed pass) ``stream`` from its item ``start`` on: what an operator above opens instead."""

    stream: Stream[T]
    start: int

    @property
    def depth(self) -> int:  # type: ignore[override]
        return self.stream.depth

    @property
    def children(self) -> tuple[Stream[Any], ...]:
        return self.stream.children

    def _open(self, ctx: SeedContext) -> Iterator[T]:
        return self.stream._open_at(ctx, self.start)

    def _open_at(self, ctx: SeedContext, start: int) -> Iterator[T]:
        return self.stream._open_at(ctx, self.start + start)

    def _row_batches(self, size: int, partial: bool, start: int = 0) -> Iterator[Any] | None:
        return self.stream._row_batches(size, partial, self.start + start)

    def _numbering(self) -> tuple[int, int] | None:
        numbering = self.stream._numbering()
        return None if numbering is None else (numbering[0] + self.start * numbering[1], numbering[1])

    def _length(self) -> int | None:
        n = self.stream._length()
        return None if n is None else max(0, n - self.start)

    def _describe(self) -> str:
        return f"{self.stream!r} | <from item {self.start}>"


def from_item(stream: Stream[T], start: int) -> Stream[T]:
    """``stream`` from its item ``start`` on, for an operator that resumes over it (:meth:`Stream._open_at`).

    >>> list(from_item(as_stream(range(5)), 2)._open(SeedContext(None)))
    [2, 3, 4]
    """
    return _From(stream, start) if start else stream


def items_before(stream: Stream[Any]) -> int:
    """How many of its items a stream skips: ``start`` for :func:`from_item`, else 0."""
    return stream.start if isinstance(stream, _From) else 0


def _stages_html(stream: Stream[Any]) -> str:
    """``stream``'s stages as an HTML list, source first; a multiplexer's sources nested below it."""
    ops: list[Operator[Any, Any]] = []
    while isinstance(stream, Applied):
        ops.append(stream.op)
        stream = stream.upstream
    items = [f"<li><code>{html.escape(repr(stream))}</code>{_children_html(stream)}</li>"]
    items += [f"<li><code>| {html.escape(op._display())}</code></li>" for op in reversed(ops)]
    return f"<ol>{''.join(items)}</ol>"


def _stages_text(stream: Stream[Any], indent: str = "") -> list[str]:
    """``stream``'s stages as lines of text, source first; a multiplexer's sources indented below it."""
    ops: list[Operator[Any, Any]] = []
    while isinstance(stream, Applied):
        ops.append(stream.op)
        stream = stream.upstream
    lines = [f"{indent}{stream!r}"]
    children = stream.children
    if children:
        lines.append(f"{indent}  {_sources_summary(stream)}:")
        for child in children[:_HTML_CHILDREN]:
            lines += _stages_text(child, indent + "    ")
        if len(children) > _HTML_CHILDREN:
            lines.append(f"{indent}    … and {len(children) - _HTML_CHILDREN} more")
    return lines + [f"{indent}| {op._display()}" for op in reversed(ops)]


def _sources_summary(stream: Stream[Any]) -> str:
    """ "3 sources", with a multiplexer's weights summed up where they are not all equal."""
    n = len(stream.children)
    text = f"{n} {'source' if n == 1 else 'sources'}"
    weights = getattr(stream, "weights", None)
    if isinstance(weights, tuple) and weights and len(set(weights)) > 1:
        text += f", weights {min(weights):g} to {max(weights):g} (sum {sum(weights):g})"
    return text


def _children_html(stream: Stream[Any]) -> str:
    children = stream.children
    if not children:
        return ""
    shown = "".join(f"<li>{_stages_html(child)}</li>" for child in children[:_HTML_CHILDREN])
    more = len(children) - _HTML_CHILDREN
    rest = f"<li>… and {more} more</li>" if more > 0 else ""
    summary = html.escape(_sources_summary(stream))
    return f"<details><summary>{summary}</summary><ul>{shown}{rest}</ul></details>"


def undivided_path(path: tuple[int, ...]) -> tuple[int, ...]:
    """A branch path without the ``(WORKER_BRANCH, part)`` keys that dividing a stream adds.

    >>> undivided_path((3, WORKER_BRANCH, 1, 7)), undivided_path((5,))
    ((3, 7), (5,))
    """
    if WORKER_BRANCH not in path:
        return path
    kept: list[int] = []
    keys = iter(path)
    for key in keys:
        if key == WORKER_BRANCH:
            next(keys, None)
        else:
            kept.append(key)
    return tuple(kept)


# How a stream opens a pass: _pass.py installs its ``open_pass`` here (install_pass), so that this
# module needs nothing from the floors above it (the pass is made of the state and the stats).
_passes: list[Callable[[Stream[Any], object, Mapping[str, Any] | None], Pass[Any]]] = []


def install_pass(open_pass: Callable[[Stream[Any], object, Mapping[str, Any] | None], Pass[Any]]) -> None:
    """(_pass.py) Make ``Stream.iterate`` return what ``open_pass(stream, seed, state)`` opens."""
    _passes[:] = [open_pass]


#: The public functions that make operators (``pf.shuffle`` ...): the package fills it (so that this
#: module imports nothing above it), for the error of a method chain such as ``s.shuffle(100)``.
OPERATOR_NAMES: set[str] = set()


# How a re-iterable collection becomes a stream: sources.py installs ``from_iterable`` here
# (install_collection_source), so that this module needs nothing from the floor above it.
_collections: list[Callable[[Iterable[Any]], Stream[Any]]] = []


def install_collection_source(make: Callable[[Iterable[Any]], Stream[Any]]) -> None:
    """(sources.py) Make ``as_stream`` wrap re-iterable collections with ``make``."""
    _collections[:] = [make]


def as_stream(x: object) -> Stream[Any]:
    """Return ``x`` as a Stream: Streams pass through, re-iterable collections are wrapped.

    >>> as_stream([1, 2])
    from_iterable([1, 2])
    """
    if isinstance(x, Stream):
        return x
    if isinstance(x, Iterator):
        raise TypeError(
            f"{reprlib.repr(x)} is a one-shot iterator ({type(x).__name__}); a Stream must "
            "be re-iterable. Wrap the function that makes it instead: "
            "pf.stream(make_items, *args) calls it afresh for every pass"
        )
    if isinstance(x, Iterable):
        return _collections[0](x)
    raise TypeError(
        f"expected a Stream or a re-iterable collection, got {reprlib.repr(x)} ({type(x).__name__})"
    )


def pipe(source: Stream[Any] | Iterable[Any], *ops: Operator[Any, Any]) -> Stream[Any]:
    """Apply ``ops`` in order: ``pipe(s, a, b)`` is ``s | a | b``.

    >>> import pescador_fp as pf
    >>> list(pf.pipe(range(10), pf.filter(lambda x: x % 3 == 0), pf.take(3)))
    [0, 3, 6]
    """
    stream = as_stream(source)
    for op in ops:
        stream = stream | op
    return stream


def describe_callable(fn: object) -> str:
    """A short name for ``fn`` in a pipeline's repr: ``<lambda>``, ``augment``, ``Model.step``.

    >>> describe_callable(len), describe_callable(lambda x: x)
    ('len', '<lambda>')
    """
    if isinstance(fn, functools.partial):
        return f"partial({describe_callable(fn.func)}, ...)"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(name, str):
        return name.rsplit("<locals>.", 1)[-1]
    if type(fn).__repr__ is object.__repr__:  # a callable object that does not say what it is
        return f"<{type(fn).__qualname__.rsplit('<locals>.', 1)[-1]} object>"
    return " ".join(reprlib.repr(fn).split())  # one line, whatever the object's repr


def peek(items: Iterator[T]) -> tuple[T, Iterator[T]] | None:
    """The first item and an iterator over all the items, or ``None`` if there are none.

    >>> first, items = peek(iter("ab"))
    >>> first, list(items), peek(iter(""))
    ('a', ['a', 'b'], None)
    """
    try:
        first, items = toolz.peek(items)
    except StopIteration:
        return None
    return first, items


class PassIterator(Iterator[Any]):
    """One pass of a stage with state (a multiplexer, shuffle, cache, cycle): the state in
    named fields, the per-item loop in :meth:`items`.

    ``_open`` hands out the generator ``items()`` itself: a ``__next__`` written
    in Python would cost about 0.1 us more per item than the generator. Used as
    an iterator, the object runs the same loop; ``close()`` closes every source
    it holds open (:meth:`release`), and so does the end, the ``close()`` or the garbage collection
    of ``items()``.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: Generator[Any, None, None] | None = None

    def items(self) -> Generator[Any, None, None]:
        """The items of the pass; closes every open source when it ends or is closed."""
        raise NotImplementedError

    def release(self) -> None:
        """Close every source or upstream the pass holds open."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._items is None:
            self._items = self.items()
        return next(self._items)

    def close(self) -> None:
        """Close every open source; closing again does nothing."""
        if self._items is not None:
            self._items.close()
        self.release()


def close_iterator(items: Iterator[Any]) -> None:
    """Close ``items`` if it can be closed (a generator); other iterators need nothing."""
    close = getattr(items, "close", None)
    if close is not None:
        close()
