"""Dict samples to tuples: ``tuples`` and ``keras_tuples``."""

from __future__ import annotations

import reprlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._seed import SeedContext
from .._stream import Operator, Stream
from ..errors import DataError

__all__ = ["keras_tuples", "tuples"]


def _pick(sample: Any, keys: tuple[Hashable, ...]) -> list[Any]:
    if not isinstance(sample, Mapping):
        raise DataError(
            f"expected dict samples with keys {list(keys)}, got {reprlib.repr(sample)} "
            f"({type(sample).__name__})"
        )
    return [sample[k] for k in keys]


def _as_tuples(items: Iterator[Any], keys: tuple[Hashable, ...]) -> Iterator[tuple[Any, ...]]:
    for sample in items:
        yield tuple(_pick(sample, keys))


@dataclass(frozen=True, repr=False)
class _Tuples(Operator[Any, Any]):
    _splittable = _per_item = _one_to_one = True
    keys: tuple[Hashable, ...]

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        return _as_tuples(upstream._open(ctx), self.keys)

    def __repr__(self) -> str:
        return f"tuples({', '.join(map(repr, self.keys))})"


def tuples(*keys: Hashable) -> Operator[Mapping[Any, Any], tuple[Any, ...]]:
    """Turn each dict sample into the tuple of its values at ``keys``.

    >>> import pescador_fp as pf
    >>> list([{"x": 1, "y": 2}] | pf.tuples("y", "x"))
    [(2, 1)]
    """
    if not keys:
        raise ValueError("tuples: keys must name at least one key, got none")
    return _Tuples(keys)


def _keys(name: str, keys: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """The keys to pick and whether the result is a bare value rather than a list."""
    if keys is None:
        return (), False
    if isinstance(keys, str):
        return (keys,), True
    if not isinstance(keys, Sequence) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"keras_tuples: {name} must be a key, a list of keys or None, got {keys!r}")
    return tuple(keys), False


def _as_keras(
    items: Iterator[Any], inputs: tuple[str, ...], outputs: tuple[str, ...], bare: tuple[bool, bool]
) -> Iterator[tuple[Any, Any]]:
    for sample in items:
        x: Any = _pick(sample, inputs) or None
        y: Any = _pick(sample, outputs) or None
        yield (x[0] if bare[0] else x, y[0] if bare[1] else y)


@dataclass(frozen=True, repr=False)
class _KerasTuples(Operator[Any, Any]):
    _splittable = _per_item = _one_to_one = True
    inputs: str | tuple[str, ...] | None
    outputs: str | tuple[str, ...] | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        (inputs, bare_x), (outputs, bare_y) = _keys("inputs", self.inputs), _keys("outputs", self.outputs)
        return _as_keras(upstream._open(ctx), inputs, outputs, (bare_x, bare_y))

    def __repr__(self) -> str:
        return f"keras_tuples(inputs={self.inputs!r}, outputs={self.outputs!r})"


def keras_tuples(
    inputs: str | Sequence[str] | None = None, outputs: str | Sequence[str] | None = None
) -> Operator[Mapping[str, Any], tuple[Any, Any]]:
    """Turn each dict sample into an ``(x, y)`` pair for Keras, as Pescador does.

    A single key gives a bare value, a list of keys a list, ``None`` gives ``None``.

    >>> import pescador_fp as pf
    >>> list([{"a": 1, "b": 2, "c": 3}] | pf.keras_tuples(inputs=["a", "b"], outputs="c"))
    [([1, 2], 3)]
    """
    ins, _ = _keys("inputs", inputs)
    outs, _ = _keys("outputs", outputs)
    if not ins + outs:
        raise ValueError(
            f"keras_tuples: at least one of inputs or outputs must name a key, got "
            f"inputs={inputs!r}, outputs={outputs!r}"
        )
    frozen = [k if k is None or isinstance(k, str) else tuple(k) for k in (inputs, outputs)]
    return _KerasTuples(frozen[0], frozen[1])
