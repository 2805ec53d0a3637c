"""Batching: ``batch`` and its inverse ``unbatch``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._check import check_bool, check_int
from .._seed import SeedContext
from .._stream import Operator, Stream, from_item
from .._tree import flatten, format_path, unflatten
from ..errors import DataError

__all__ = [
    "batch",
    "batch_length",
    "is_keeping_rest",
    "keeping_rest",
    "new_axis_batch",
    "rows",
    "sample_groups",
    "stack",
    "unbatch",
]

_CONTAINERS = (dict, tuple, list)


def stack(samples: Sequence[Any], axis: int | None = None, path: tuple[Any, ...] = ()) -> Any:
    """Stack a sequence of like-shaped samples into one batch.

    Dicts, tuples and lists are stacked field by field; leaves become arrays,
    stacked on a new leading axis (``axis=None``) or concatenated along ``axis``.

    >>> b = stack([{"x": np.zeros(2), "y": 0}, {"x": np.ones(2), "y": 1}])
    >>> b["x"].shape, b["y"].tolist()
    ((2, 2), [0, 1])
    """
    first = samples[0]
    if type(first) is dict and axis is None:
        flat = _stack_flat_dict(samples, first)
        if flat is not None:
            return flat
    if isinstance(first, dict):
        return _stack_dict(samples, first, axis, path)
    if isinstance(first, (tuple, list)):
        return _stack_sequence(samples, first, axis, path)
    return _stack_leaves(samples, axis, path)


def _stack_dict(
    samples: Sequence[Any], first: dict[Any, Any], axis: int | None, path: tuple[Any, ...]
) -> Any:
    if not all(isinstance(s, dict) for s in samples):  # a list or tuple also answers s[0]
        raise _mismatch(samples, path)
    try:
        columns = [[s[k] for s in samples] for k in first]
    except (KeyError, TypeError, IndexError):
        raise _mismatch(samples, path) from None
    # Every sample holds the first one's keys; equal total size means no extra keys.
    if sum(map(len, samples)) != len(first) * len(samples):
        raise _mismatch(samples, path)
    out = {}
    for key, column in zip(first, columns):
        if isinstance(column[0], _CONTAINERS):
            out[key] = stack(column, axis, (*path, key))
        else:
            out[key] = _stack_leaves(column, axis, path, key)
    return out


def _stack_flat_dict(samples: Sequence[Any], first: dict[Any, Any]) -> dict[Any, Any] | None:
    """Stack dicts of leaves on a new axis, fast; ``None`` where the careful path must decide."""
    # Every sample must hold the first one's keys (else KeyError); equal total size means no extra keys.
    if sum(map(len, samples)) != len(first) * len(samples):
        return None
    if any(type(key) is int for key in first) and set(map(type, samples)) != {dict}:
        return None  # a list or tuple answers s[0] too
    out = {}
    try:
        for key, value in first.items():
            if isinstance(value, _CONTAINERS):
                return None
            values = [s[key] for s in samples]
            # numpy would take a list of the same length for a row of those arrays (where the first
            # leaf is a scalar, a container is a ValueError or an object array).
            if type(value) is np.ndarray and value.ndim and _mixed(values):
                return None
            column = np.array(values)
            if column.dtype.kind == "O":
                return None  # may hide a container among the leaves
            out[key] = column
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    return out


def _stack_sequence(
    samples: Sequence[Any], first: Sequence[Any], axis: int | None, path: tuple[Any, ...]
) -> Any:
    kind: Any = type(first)
    n = len(first)
    if any(type(s) is not kind or len(s) != n for s in samples):
        raise _mismatch(samples, path)
    columns = [stack(column, axis, (*path, j)) for j, column in enumerate(zip(*samples))]
    if kind is list:
        return columns
    if kind is tuple:
        return tuple(columns)
    return kind(*columns) if hasattr(kind, "_fields") else kind(columns)


def _mixed(values: Sequence[Any]) -> bool:
    """Whether a container hides among leaves of another type (numpy would make it a leaf)."""
    types = set(map(type, values))
    return len(types) > 1 and any(issubclass(t, _CONTAINERS) for t in types)


def _stack_leaves(samples: Sequence[Any], axis: int | None, path: tuple[Any, ...], *key: Any) -> Any:
    if _mixed(samples):
        raise _mismatch(samples, (*path, *key))
    try:
        out = np.array(samples) if axis is None else np.concatenate(samples, axis=axis)
    except (ValueError, np.exceptions.AxisError) as error:
        if any(isinstance(s, _CONTAINERS) for s in samples):
            raise _mismatch(samples, (*path, *key)) from None
        raise _shape_error(samples, axis, (*path, *key), error) from error
    if out.dtype.kind == "O" and any(isinstance(s, _CONTAINERS) for s in samples):
        raise _mismatch(samples, (*path, *key))
    return out


def _matches(first: Any, sample: Any) -> bool:
    if isinstance(first, dict):
        return isinstance(sample, dict) and sample.keys() == first.keys()
    if isinstance(first, (tuple, list)):
        return type(sample) is type(first) and len(sample) == len(first)
    return not isinstance(sample, _CONTAINERS)


def _describe(sample: Any) -> str:
    if isinstance(sample, dict):
        return f"a dict with keys {list(sample)}"
    if isinstance(sample, (tuple, list)):
        return f"a {type(sample).__name__} of length {len(sample)}"
    return f"a leaf of shape {np.shape(sample)}"


def _mismatch(samples: Sequence[Any], path: tuple[Any, ...]) -> DataError:
    first = samples[0]
    i = next(i for i, s in enumerate(samples) if not _matches(first, s))
    other = samples[i]
    where = format_path(path)
    if isinstance(first, dict) and isinstance(other, dict):
        missing = [k for k in first if k not in other]
        extra = [k for k in other if k not in first]
        parts = [f"missing key {format_path((*path, k))}" for k in missing]
        parts += [f"extra key {format_path((*path, k))}" for k in extra]
        return DataError(
            f"batch: sample {i} does not match sample 0 at {where}: {', '.join(parts)} "
            f"(sample 0 has keys {list(first)}, sample {i} has {list(other)})"
        )
    return DataError(
        f"batch: sample {i} does not match sample 0 at {where}: "
        f"sample 0 has {_describe(first)}, sample {i} has {_describe(other)}"
    )


def _shape_error(
    samples: Sequence[Any], axis: int | None, path: tuple[Any, ...], error: Exception
) -> DataError:
    shapes = [np.shape(s) for s in samples]
    where = format_path(path)
    for i, shape in enumerate(shapes):
        differs = shape != shapes[0] if axis is None else _off_axis(shape, axis) != _off_axis(shapes[0], axis)
        if differs:
            return DataError(
                f"batch: shapes differ at key {where}: {shapes[0]} in sample 0 but {shape} in sample {i}"
            )
    return DataError(
        f"batch: cannot combine the values at key {where} (shape {shapes[0]}, axis={axis}): {error}"
    )


def _off_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...] | None:
    if not -len(shape) <= axis < len(shape):
        return None
    cut = axis % len(shape)
    return shape[:cut] + shape[cut + 1 :]


def sample_groups(items: Iterator[Any], size: int, partial: bool) -> Iterator[list[Any]]:
    """The samples of each batch, unstacked: lists of ``size`` (a shorter last one if ``partial``)."""
    while True:
        samples = list(itertools.islice(items, size))
        if len(samples) == size or (partial and samples):
            yield samples
        if len(samples) < size:
            return


def _batches(items: Iterator[Any], size: int, partial: bool, axis: int | None) -> Iterator[Any]:
    for samples in sample_groups(items, size, partial):
        yield stack(samples, axis)


@dataclass(frozen=True, repr=False)
class _Batch(Operator[Any, Any]):
    _splittable = _has_remainder = True
    size: int
    partial: bool
    axis: int | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _batches(upstream._open(ctx), self.size, self.partial, self.axis)

    def _open_at(self, upstream: Stream[Any], ctx: SeedContext, depth: int, start: int) -> Iterator[Any]:
        return self._open(from_item(upstream, start * self.size), ctx, depth)

    def _output_length(self, n: int) -> int | None:
        return -(-n // self.size) if self.partial else n // self.size

    def __repr__(self) -> str:
        options = ", partial=True" if self.partial else ""
        options += "" if self.axis is None else f", axis={self.axis}"
        return f"batch({self.size}{options})"


@dataclass(frozen=True, repr=False)
class _KeepingRest(_Batch):
    """(a background worker's part) ``batch`` whose short last group of samples goes to ``keep``, neither
    yielded nor dropped: the consumer pools the groups of all parts (``_divide.Part.rest``)."""

    keep: Callable[[list[Any]], None]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _full_batches(upstream._open(ctx), self.size, self.axis, self.keep)


def _full_batches(
    items: Iterator[Any], size: int, axis: int | None, keep: Callable[[list[Any]], None]
) -> Iterator[Any]:
    for samples in sample_groups(items, size, True):
        if len(samples) < size:
            keep(samples)
            return
        yield stack(samples, axis)


def keeping_rest(op: Operator[Any, Any], keep: Callable[[list[Any]], None]) -> Operator[Any, Any]:
    """``op`` (a ``batch``) yielding full batches only, handing its short last group of samples to ``keep``.

    >>> kept = []
    >>> [b.tolist() for b in range(5) | keeping_rest(batch(2), kept.extend)], kept
    ([[0, 1], [2, 3]], [4])
    """
    assert isinstance(op, _Batch)
    return _KeepingRest(op.size, True, op.axis, keep)


def is_keeping_rest(op: Operator[Any, Any]) -> bool:
    """Whether ``op`` is a batch from :func:`keeping_rest`.

    >>> is_keeping_rest(keeping_rest(batch(2), print)), is_keeping_rest(batch(2))
    (True, False)
    """
    return type(op) is _KeepingRest


def new_axis_batch(op: Operator[Any, Any]) -> tuple[int, bool] | None:
    """``(size, partial)`` if ``op`` is a ``batch`` that stacks on a new axis, else ``None``.

    (A batch from :func:`keeping_rest` says ``partial``: its short last group comes out, to be kept.)
    """
    if isinstance(op, _Batch) and op.axis is None:
        return op.size, op.partial
    return None


def batch_length(item: Any) -> int:
    """The number of samples in a batch (the leading length of its first leaf).

    >>> batch_length({"x": np.zeros((3, 2)), "y": np.zeros(3)})
    3
    """
    return len(flatten(item)[0][0])


def batch(size: int, partial: bool = False, axis: int | None = None) -> Operator[Any, Any]:
    """Stack every ``size`` samples into one batch.

    Samples may be arrays, scalars, dicts, tuples, lists, or nested mixes of
    these; the batch has the same structure with stacked arrays as leaves.
    ``axis=None`` stacks on a new leading axis; an int concatenates along that
    existing axis (to combine samples that are already batches). ``partial``
    keeps a last batch shorter than ``size``.

    >>> import numpy as np, pescador_fp as pf
    >>> samples = [{"x": np.full(2, i), "y": i % 2} for i in range(5)]
    >>> [b["x"].shape for b in samples | pf.batch(2)]
    [(2, 2), (2, 2)]
    >>> [b["y"].tolist() for b in samples | pf.batch(2, partial=True)]
    [[0, 1], [0, 1], [0]]

    Raises:
        DataError: at iteration, if samples of one batch differ in keys or
            shapes; the message names the key and both shapes.
    """
    size = check_int("batch", "size", size, 1)
    check_bool("batch", "partial", partial)
    if axis is not None:
        axis = check_int("batch", "axis", axis, -(2**31), 2**31 - 1)
    return _Batch(size, partial, axis)


def rows(batch: Any) -> Iterator[Any]:
    """The samples of a batch, along the leading axis (what ``unbatch`` yields for it).

    >>> [r["y"].tolist() for r in rows({"y": np.array([1, 2])})]
    [1, 2]
    """
    leaves, spec = flatten(batch)
    lengths = []
    for leaf in leaves:
        if np.ndim(leaf) == 0:
            raise DataError(f"unbatch: expected batches whose leaves have a leading axis, got {leaf!r}")
        lengths.append(len(leaf))
    if len(set(lengths)) > 1:
        raise DataError(f"unbatch: the leaves of a batch have different lengths {lengths}")
    if isinstance(batch, dict) and all(s is None for s in spec[2]):  # type: ignore[index]
        keys = tuple(batch)
        for row in zip(*leaves):
            yield dict(zip(keys, row))
        return
    for row in zip(*leaves):
        yield unflatten(spec, row)


def _unbatched(items: Iterator[Any]) -> Iterator[Any]:
    for b in items:
        yield from rows(b)


@dataclass(frozen=True, repr=False)
class _Unbatch(Operator[Any, Any]):
    _splittable = _per_item = True

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _unbatched(upstream._open(ctx))

    def __repr__(self) -> str:
        return "unbatch()"


def unbatch() -> Operator[Any, Any]:
    """Split each batch back into its samples, along the leading axis.

    >>> import numpy as np, pescador_fp as pf
    >>> [s["y"] for s in [{"y": np.array([1, 2, 3])}] | pf.unbatch()]
    [np.int64(1), np.int64(2), np.int64(3)]
    """
    return _Unbatch()
