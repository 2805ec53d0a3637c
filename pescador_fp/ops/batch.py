"""Batching: ``batch`` and its inverse ``unbatch``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._check import check_bool, check_int
from .._seed import SeedContext
from .._stream import Operator, Stream
from .._tree import flatten, format_path, unflatten
from ..errors import DataError

__all__ = ["batch", "stack", "unbatch"]


def stack(samples: list[Any], axis: int | None = None, path: tuple[Any, ...] = ()) -> Any:
    """Stack a list of like-shaped samples into one batch.

    Dicts, tuples and lists are stacked field by field; leaves become arrays,
    stacked on a new leading axis (``axis=None``) or concatenated along ``axis``.

    >>> b = stack([{"x": np.zeros(2), "y": 0}, {"x": np.ones(2), "y": 1}])
    >>> b["x"].shape, b["y"].tolist()
    ((2, 2), [0, 1])
    """
    first = samples[0]
    if isinstance(first, dict):
        keys = first.keys()
        for i, sample in enumerate(samples):
            if not isinstance(sample, dict) or sample.keys() != keys:
                raise _mismatch(samples, i, path)
        return {k: stack([s[k] for s in samples], axis, (*path, k)) for k in keys}
    if isinstance(first, (tuple, list)):
        kind, n = type(first), len(first)
        for i, sample in enumerate(samples):
            if type(sample) is not kind or len(sample) != n:
                raise _mismatch(samples, i, path)
        columns = [stack([s[j] for s in samples], axis, (*path, j)) for j in range(n)]
        if kind is list:
            return columns
        if kind is tuple:
            return tuple(columns)
        return kind(*columns) if hasattr(kind, "_fields") else kind(columns)
    for i, sample in enumerate(samples):
        if isinstance(sample, (dict, tuple, list)):
            raise _mismatch(samples, i, path)
    try:
        if axis is None:
            return np.array(samples)
        return np.concatenate(samples, axis=axis)
    except (ValueError, np.exceptions.AxisError) as error:
        raise _shape_error(samples, axis, path, error) from error


def _describe(sample: Any) -> str:
    if isinstance(sample, dict):
        return f"a dict with keys {list(sample)}"
    if isinstance(sample, (tuple, list)):
        return f"a {type(sample).__name__} of length {len(sample)}"
    return f"a leaf of shape {np.shape(sample)}"


def _mismatch(samples: list[Any], i: int, path: tuple[Any, ...]) -> DataError:
    first, other = samples[0], samples[i]
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


def _shape_error(samples: list[Any], axis: int | None, path: tuple[Any, ...], error: Exception) -> DataError:
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


def _batches(items: Iterator[Any], size: int, partial: bool, axis: int | None) -> Iterator[Any]:
    while True:
        samples = list(itertools.islice(items, size))
        if len(samples) == size or (partial and samples):
            yield stack(samples, axis)
        if len(samples) < size:
            return


@dataclass(frozen=True, repr=False)
class _Batch(Operator[Any, Any]):
    size: int
    partial: bool
    axis: int | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _batches(upstream._open(ctx), self.size, self.partial, self.axis)

    def __repr__(self) -> str:
        options = ", partial=True" if self.partial else ""
        options += "" if self.axis is None else f", axis={self.axis}"
        return f"batch({self.size}{options})"


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
        axis = check_int("batch", "axis", axis, -(2**31))
    return _Batch(size, partial, axis)


def _rows(batch: Any) -> Iterator[Any]:
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
        yield from _rows(b)


@dataclass(frozen=True, repr=False)
class _Unbatch(Operator[Any, Any]):
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
