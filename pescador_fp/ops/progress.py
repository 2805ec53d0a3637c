"""``progress``: a tqdm progress display over the items that pass (a widget in notebooks).

tqdm is an optional extra (``pip install "pescador_fp[progress]"``, which
brings ipywidgets for the notebook widget), imported when a pass starts;
building the operator checks that it is installed. In a notebook's kernel
with ipywidgets the display is tqdm's widget, elsewhere its text bar.
"""

from __future__ import annotations

import importlib.util
import reprlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .._check import check_int
from .._seed import SeedContext
from .._stream import Operator, Stream

__all__ = ["progress"]

T = TypeVar("T")


def _in_notebook() -> bool:
    """Whether this process is a notebook's kernel (what ``tqdm.auto`` asks)."""
    return "ipykernel.zmqshell" in sys.modules or "IPython.utils._process_emscripten" in sys.modules


def _bar_class() -> Any:
    """tqdm's widget in a notebook that can draw it (its kernel has ipywidgets), else its text bar.

    ``tqdm.auto`` in a kernel without ipywidgets warns ("IProgress not found")
    and falls back to text; here the text bar comes without the warning.

    >>> _bar_class().__module__  # not in a notebook
    'tqdm.std'
    """
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import IProgress  # type: ignore[import-untyped, import-not-found, unused-ignore]

        if IProgress is not None:
            from tqdm.auto import tqdm  # type: ignore[import-untyped, import-not-found, unused-ignore]

            return tqdm
    from tqdm.std import tqdm  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return tqdm


def _shown(items: Iterator[Any], total: int | None, desc: str | None) -> Iterator[Any]:
    bar = _bar_class()(total=total, desc=desc, unit="item")
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
