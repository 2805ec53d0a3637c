"""What the per-item operators share, with and without concurrency: the PEP 479 error and each item's
random generator (``rng=True``, explained in ``map.py``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from .._seed import Seed, SeedContext
from .._stream import Operator, Stream, describe_callable, items_before, undivided_path

__all__ = ["ItemRandomness", "stopped_error"]


def stopped_error(op: Operator[Any, Any], fn: Callable[..., Any]) -> RuntimeError:
    """The error for a ``StopIteration`` out of ``op``'s function: Python's rule for generators (PEP 479).

    Taken for the end of the input, it would end the stream silently (or drop
    one item). The caller raises it ``from`` the ``StopIteration``, which
    keeps the traceback into ``fn``.

    >>> import pescador_fp as pf
    >>> print(stopped_error(pf.map(next), next))  # doctest: +ELLIPSIS
    map(next): next raised StopIteration, which would end the stream silently; ...
    """
    return RuntimeError(
        f"{op!r}: {describe_callable(fn)} raised StopIteration, which would end the stream silently; "
        "as in a generator (PEP 479) it is an error: raise another exception (or give next() a default)"
    )


class ItemRandomness:
    """(one pass) A generator set afresh for each item: the ``k``-th item's draws depend on ``k`` alone.

    ``k`` runs ``start, start + step, ...``: the item's place in the undivided
    stream where the stream below knows it, else its place in this part.
    """

    def __init__(self, upstream: Stream[Any], ctx: SeedContext, seed: Seed | None, depth: int) -> None:
        numbering = upstream._numbering()
        if numbering is None:
            path, numbering = ctx.path, (items_before(upstream), 1)
        else:
            path = undivided_path(ctx.path)
        sequence = ctx.at(path).entropy(seed, depth)
        self.key = sequence.generate_state(2, np.uint64)
        self.counter = np.zeros(4, dtype=np.uint64)
        bits = np.random.Philox(key=self.key)
        self.bits, self.rng = bits, np.random.Generator(bits)
        self.state: Any = {
            "bit_generator": "Philox",
            "state": {"counter": self.counter, "key": self.key},
            "buffer": np.zeros(4, dtype=np.uint64),
            "buffer_pos": 4,  # nothing buffered: the next draw starts at the counter
            "has_uint32": 0,
            "uinteger": 0,
        }
        self.places = itertools.count(*numbering)

    def next_item(self) -> np.random.Generator:
        """The generator for the next item, set to that item's state."""
        self.counter[2] = next(self.places)
        self.bits.state = self.state
        return self.rng

    def at(self, place: int) -> np.random.Generator:
        """The generator set to the state of the item at ``place`` (a concurrent map numbers its items)."""
        self.counter[2] = place
        self.bits.state = self.state
        return self.rng
