"""``progress``: a tqdm progress display over the items that pass (a widget in notebooks).

tqdm is an optional extra (``pip install "pescador_fp[progress]"``), imported
when a pass starts; building the operator checks that it is installed.
"""

from __future__ import annotations

import importlib.util
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .._check import check_int
from .._seed import SeedContext
from .._stream import Operator, Stream

__all__ = ["progress"]

T = TypeVar("T")


def _shown(items: Iterator[Any], total: int | None, desc: str | None) -> Iterator[Any]:
    # tqdm.auto: a widget in Jupyter, a bar in a terminal.
    from tqdm.auto import tqdm  # type: ignore[import-untyped, import-not-found, unused-ignore]

    bar = tqdm(total=total, desc=desc, unit="item")
    try:
        for item in items:
            bar.update()
            yield item
    finally:
        bar.close()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # an early stop releases what the upstream holds (workers, files)


@dataclass(frozen=True, repr=False)
class _Progress(Operator[Any, Any]):
    # Not splittable: the display belongs to the process that consumes the items.
    _one_to_one = True
    total: int | None
    desc: str | None

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        total = self.total if self.total is not None else upstream._length()
        return _shown(upstream._open(ctx), total, self.desc)

    def __repr__(self) -> str:
        args = [f"total={self.total!r}"] if self.total is not None else []
        args += [f"desc={self.desc!r}"] if self.desc is not None else []
        return f"progress({', '.join(args)})"


def progress(total: int | None = None, desc: str | None = None) -> Operator[T, T]:
    """Show a tqdm progress display of the items that pass; the items are unchanged.

    ``total`` (items per pass) sizes the bar; ``None`` takes the stream's
    length where it is known without running it (collections,
    ``from_arrays``, and ``map``, ``batch`` ... over them), else the display
    counts with no end. ``desc`` labels it. Put it last, after
    ``background``: it shows what the consumer receives. The display closes
    when the pass ends or stops early.

    >>> import pescador_fp as pf
    >>> pf.from_iterable(range(100)) | pf.map(str) | pf.progress(desc="train")
    from_iterable(range(0, 100)) | map(str) | progress(desc='train')

    Raises:
        TypeError, ValueError: when built, for a ``total`` that is not an
            integer >= 0 or a ``desc`` that is not a string.
        ImportError: when built, if tqdm is not installed.
    """
    checked = None if total is None else check_int("progress", "total", total, 0)
    if desc is not None and not isinstance(desc, str):
        raise TypeError(
            f"progress: desc must be a string or None, got {reprlib.repr(desc)} ({type(desc).__name__})"
        )
    if importlib.util.find_spec("tqdm") is None:
        raise ImportError(
            'progress: needs tqdm, which is not installed; pip install "pescador_fp[progress]" (or tqdm)'
        )
    return _Progress(checked, desc)
