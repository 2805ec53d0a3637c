"""Keras 3 adapter: ``dataset``, what ``model.fit``, ``evaluate`` and ``predict`` accept.

Import this module only where Keras 3 is installed (``pip install
'pescador_fp[keras]'`` and a backend: JAX, torch or TensorFlow); ``import
pescador_fp`` alone never imports keras.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

try:
    import keras
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("pescador_fp.keras needs Keras 3: pip install 'pescador_fp[keras]'") from error

from ._check import check_int
from ._stream import Stream, as_stream
from .errors import PescadorError
from .ops.tuples import keras_tuples

__all__ = ["StreamDataset", "dataset"]


class StreamDataset(keras.utils.PyDataset):  # type: ignore[misc]
    """A ``keras.utils.PyDataset`` over a stream: ``steps`` batches an epoch, epoch ``e`` seeded ``e``.

    Keras asks for batches by index (and shuffles the indices in ``fit``); the
    stream has an order of its own, so each request gets the next batch of the
    current pass. The pass starts at the first request of an epoch and is
    closed at its end (``on_epoch_end``); a pass that served all ``steps``
    batches moves to the next epoch, one cut short (Keras looks at the first
    batch before training) starts again with the same seed. Where
    ``steps=1`` the look is a whole pass: it is told by Keras' model
    building on the call stack.
    """

    def __init__(self, stream: Stream[Any], steps: int) -> None:
        super().__init__()
        self.stream = stream
        self.steps = steps
        self.epoch = 0
        self._items: Iterator[Any] | None = None
        self._served = 0
        self._look = False  # the pass serves Keras' look at a batch, which builds the model

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass ``iterate(seed=epoch)``."""
        self._finish(advance=False)
        self.epoch = check_int("set_epoch", "epoch", epoch, 0)

    def __getitem__(self, index: int) -> Any:
        if self._items is not None and self._served == self.steps:
            self._finish()  # a whole pass served without on_epoch_end: the next epoch
        if self._items is None:
            self._items = self.stream.iterate(seed=self.epoch)
            self._served = 0
            # Where steps=1 a look serves a whole "epoch": tell it by who asks.
            self._look = self.steps == 1 and _building_the_model()
        try:
            batch = next(self._items)
        except StopIteration:
            served, epoch = self._served, self.epoch
            self._finish()
            raise PescadorError(
                f"pescador_fp.keras.dataset: the stream ended after {served} batches of epoch {epoch}, "
                f"but steps={self.steps}; give a smaller steps, or a stream that does not end "
                "(| pf.cycle())"
            ) from None
        self._served += 1
        return batch

    def on_epoch_begin(self) -> None:
        self._finish()

    def on_epoch_end(self) -> None:
        self._finish()

    def _finish(self, *, advance: bool = True) -> None:
        """Close the pass; a whole epoch served moves to the next (a look at one batch does not)."""
        if self._items is None:
            return
        close = getattr(self._items, "close", None)
        if close is not None:
            close()
        self._items = None
        if advance and self._served == self.steps and not self._look:
            self.epoch += 1

    def __repr__(self) -> str:
        return f"pescador_fp.keras.dataset({self.stream!r}, steps={self.steps})"


def _building_the_model() -> bool:
    """Whether Keras asks for this batch to build the model (``Trainer._symbolic_build``): a look."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_symbolic_build" and f"keras{os.sep}" in code.co_filename:
            return True
        frame = frame.f_back
    return False


def dataset(
    stream: Stream[Any],
    *,
    steps: int | None = None,
    inputs: str | Sequence[str] | None = None,
    outputs: str | Sequence[str] | None = None,
) -> StreamDataset:
    """Wrap a stream of batches for ``model.fit``, ``evaluate`` and ``predict``.

    Every epoch gets ``steps`` batches, each once, from a fresh pass:
    epoch ``e`` is ``stream.iterate(seed=e)``, so ``fit(ds, epochs=3)``
    trains on every batch of every epoch in a new, reproducible order.
    ``steps=None`` counts the batches where the length is known (arrays and
    collections with ``map`` and ``batch``); otherwise give ``steps``, with a
    stream at least that long (``| pf.cycle()`` makes one endless). A pass
    longer than ``steps`` is cut. Batches that are dicts become ``(inputs,
    targets)`` tuples when ``inputs`` (and ``outputs``) name keys
    (:func:`pescador_fp.keras_tuples`). Parallelise in the stream
    (``pf.background``), not with the PyDataset's ``workers``.

    >>> import numpy as np, pescador_fp as pf
    >>> data = {"x": np.zeros((10, 3), np.float32), "y": np.ones(10, np.float32)}
    >>> ds = dataset(pf.from_arrays(data) | pf.batch(4), inputs="x", outputs="y")
    >>> len(ds), [a.shape for a in ds[0]]
    (2, [(4, 3), (4,)])

    Raises:
        ValueError: when built, where the number of batches cannot be known and
            no ``steps`` is given, or the stream has no batch.
    """
    stream = as_stream(stream)
    if inputs is not None or outputs is not None:
        stream = stream | keras_tuples(inputs, outputs)
    if steps is None:
        known = stream._length()
        if known is None:
            raise ValueError(
                f"pescador_fp.keras.dataset: the number of batches in a pass of {stream!r} cannot be "
                "known in advance; give steps=N (batches per epoch), with a stream at least that long "
                "(| pf.cycle() makes it endless)"
            )
        if known == 0:
            raise ValueError(f"pescador_fp.keras.dataset: a pass of {stream!r} has no batch")
        steps = known
    return StreamDataset(stream, check_int("pescador_fp.keras.dataset", "steps", steps, 1))
