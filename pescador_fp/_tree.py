"""Flatten and rebuild nested samples: dicts, tuples (named too) and lists around leaves.

Everything that is not a dict, tuple or list is a leaf: arrays, scalars,
strings, ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Spec", "flatten", "format_path", "unflatten"]

# A leaf is None; a container is (kind, keys-or-type, child specs).
Spec = tuple[str, Any, tuple[Any, ...]] | None


def flatten(sample: Any) -> tuple[list[Any], Spec]:
    """Return the leaves of ``sample`` in a fixed order, and the spec to rebuild it.

    >>> leaves, spec = flatten({"x": 1, "y": (2, [3])})
    >>> leaves
    [1, 2, 3]
    >>> unflatten(spec, leaves)
    {'x': 1, 'y': (2, [3])}
    """
    leaves: list[Any] = []
    return leaves, _flatten(sample, leaves)


def _flatten(node: Any, leaves: list[Any]) -> Spec:
    if isinstance(node, dict):
        return ("dict", tuple(node), tuple(_flatten(v, leaves) for v in node.values()))
    if isinstance(node, tuple):
        return ("tuple", type(node), tuple(_flatten(v, leaves) for v in node))
    if isinstance(node, list):
        return ("list", None, tuple(_flatten(v, leaves) for v in node))
    leaves.append(node)
    return None


def unflatten(spec: Spec, leaves: Sequence[Any]) -> Any:
    """Rebuild the sample that ``flatten`` took apart, from (possibly new) leaves."""
    it = iter(leaves)
    return _unflatten(spec, it)


def _unflatten(spec: Spec, leaves: Any) -> Any:
    if spec is None:
        return next(leaves)
    kind, meta, children = spec
    values = [_unflatten(child, leaves) for child in children]
    if kind == "dict":
        return dict(zip(meta, values))
    if kind == "list":
        return values
    if meta is tuple:
        return tuple(values)
    if hasattr(meta, "_fields"):  # a namedtuple
        return meta(*values)
    return meta(values)


def format_path(path: Sequence[Any]) -> str:
    """Name a place inside a sample: ``['x'][1]``, or ``the sample`` for the root.

    >>> format_path(["x", 1]), format_path([])
    ("['x'][1]", 'the sample')
    """
    if not path:
        return "the sample"
    return "".join(f"[{p!r}]" for p in path)
