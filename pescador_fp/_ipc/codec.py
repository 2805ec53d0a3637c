"""Items to ring records and back, and errors as records: the two sides mirror each other here.

Arrays and flat dicts of arrays travel as raw bytes plus a layout (dtype and
shape per array, and the keys) that is sent only when it changes; anything
else is pickled (protocol 5, array bytes out of band). Either way the worker
copies each array's bytes once, straight into the ring. The consumer copies a
run of small like arrays out of the ring in one pass, each into an array of
its own, so that an item the consumer keeps holds only its own bytes.

Code pickled by value keeps its file name, and the worker gets the source
lines that it cannot read from a file, so that a traceback from a worker shows
the user's file and line.
"""

from __future__ import annotations

import collections
import io
import linecache
import marshal
import os
import pickle
import traceback
import types
from typing import Any

import cloudpickle
import numpy as np

from .ring import RECORD_ARRAYS, RECORD_DATA, RECORD_ERROR, Ring

__all__ = [
    "Decoder",
    "Encoder",
    "RemoteTraceback",
    "dumps_recipe",
    "load_error",
    "loads_recipe",
    "send_error",
]

_NO_BYTES = memoryview(b"")
# Small arrays that follow one another in the ring with one layout are copied out
# in one pass, each into its own array: up to _RUN_ITEMS arrays and _RUN_BYTES bytes
# at a time. More bytes at once and malloc hands the memory back to the system
# between runs, and every page of the next run faults in again.
_RUN_ITEMS = 256
_RUN_BYTES = 256 * 2**10
_RUN_ITEM_BYTES = 16 * 2**10


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, as a flat byte view."""
    if not array.size:
        return _NO_BYTES
    try:
        return array.data.cast("B")
    except ValueError:  # a dtype the buffer protocol cannot describe: datetime64, timedelta64
        return array.reshape(-1).view(np.uint8).data


def _from_bytes(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` whose bytes are ``data`` (a view of it)."""
    if not len(data):  # nothing to view: zero-size arrays, zero-size dtypes
        return np.zeros(shape, dtype)
    flat = np.frombuffer(data, dtype)
    return flat if len(shape) == 1 else flat.reshape(shape)


def _reduce_array(array: np.ndarray) -> Any:
    """numpy's pickling, but datetime64/timedelta64 arrays keep their byte order (numpy makes them native)."""
    dtype = array.dtype
    if dtype.kind in "mM" and not dtype.isnative:
        return _with_dtype, (array.astype(dtype.newbyteorder("=")), dtype)
    return NotImplemented


def _with_dtype(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return array.astype(dtype)


class Encoder:
    """(worker) Writes items into a ring; remembers the layout the consumer last received."""

    def __init__(self) -> None:
        self.sent: Any = None

    def write(self, ring: Ring, item: Any, alive: Any) -> None:
        """Write ``item`` as one record, waiting for space."""
        if (
            type(item) is np.ndarray
            and self._repeats(item)
            and ring.put_again(RECORD_ARRAYS, _bytes_of(item))
        ):
            return
        encoded = self._encode(item)
        if encoded is not None:
            ring.put(RECORD_ARRAYS, encoded[0], encoded[1], alive)
            return
        buffers: list[pickle.PickleBuffer] = []
        metadata = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
        ring.put(RECORD_DATA, metadata, [b.raw() for b in buffers], alive)

    def _repeats(self, array: np.ndarray) -> bool:
        """Whether ``array`` has the layout the other side already has (a quick check)."""
        sent = self.sent
        return (
            sent is not None
            and not sent[0]
            and array.dtype is sent[1]
            and array.shape == sent[2]
            and array.flags.c_contiguous
            and array.size > 0
        )

    def _encode(self, item: Any) -> tuple[bytes, list[memoryview]] | None:
        kind = type(item)
        if kind is np.ndarray:
            if item.dtype.hasobject or not item.flags.c_contiguous:
                return None
            layout: Any = (False, item.dtype, item.shape)
            views = [_bytes_of(item)]
        elif kind is dict:
            fields = []
            views = []
            for key, value in item.items():
                if type(value) is not np.ndarray or value.dtype.hasobject or not value.flags.c_contiguous:
                    return None
                fields.append((key, value.dtype, value.shape))
                views.append(_bytes_of(value))
            layout = (True, tuple(fields))
        else:
            return None
        if layout == self.sent:
            return b"", views
        self.sent = layout
        return pickle.dumps(layout), views


class Decoder:
    """(consumer) Turns records of one ring back into items."""

    def __init__(self, zero_copy: bool) -> None:
        self.zero_copy = zero_copy
        self.received: Any = None
        # Items already decoded (a run of small arrays) and not yet handed out.
        self.pending: collections.deque[Any] = collections.deque()

    def read(self, ring: Ring, kind: int, metadata: memoryview, buffers: list[memoryview]) -> Any:
        """The item in the record that ``ring.get`` returned; frees it unless zero-copy."""
        arrays = kind == RECORD_ARRAYS
        zero_copy = self.zero_copy
        if arrays and not zero_copy and not len(metadata) and len(buffers) == 1:
            layout = self.received
            if layout is not None and not layout[0] and 0 < buffers[0].nbytes <= _RUN_ITEM_BYTES:
                items = self._decode_run(ring, buffers[0].nbytes, layout[1], layout[2])
                self.pending.extend(items[1:])
                return items[0]
        # Zero-copy: read-only views into the ring, freed when the next item is asked for.
        # Otherwise each buffer is copied into memory of its own.
        views: list[Any] = [b.toreadonly() if zero_copy else bytearray(b) for b in buffers]
        item = self._decode(metadata, views) if arrays else pickle.loads(metadata, buffers=views)
        if not zero_copy:
            ring.release()
        return item

    def _decode(self, metadata: memoryview, buffers: list[Any]) -> Any:
        layout = self.received = pickle.loads(metadata) if len(metadata) else self.received
        if not layout[0]:
            return _from_bytes(buffers[0], layout[1], layout[2])
        return {key: _from_bytes(data, dtype, shape) for (key, dtype, shape), data in zip(layout[1], buffers)}

    @staticmethod
    def _decode_run(ring: Ring, nbytes: int, dtype: Any, shape: tuple[int, ...]) -> list[Any]:
        """Copy a run of single-array records with one layout out of the ring, each into its own array."""
        count, stride, offset, region = ring.run_after(min(_RUN_ITEMS, _RUN_BYTES // nbytes))
        rows = np.frombuffer(region, np.uint8).reshape(count, stride)[:, offset : offset + nbytes]
        views = rows.view(dtype).reshape((count, *shape))  # no copy yet: rows of the ring
        if shape:
            items = list(map(np.ndarray.copy, views))
        else:  # 0-d arrays: indexing would give numpy scalars
            items = [views[i, ...].copy() for i in range(count)]
        del rows, views
        ring.release_run(count, stride)
        return items


# ---------------------------------------------------------------- errors


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


_LIBRARY = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _format(error: BaseException) -> str:
    """``error``'s traceback as Python prints it, without pescador_fp's frames (unless only they are left)."""
    shown = traceback.TracebackException.from_exception(error)
    pending, seen = [shown], set()
    while pending:
        te = pending.pop()
        if id(te) in seen:
            continue
        seen.add(id(te))
        users = [frame for frame in te.stack if not frame.filename.startswith(_LIBRARY)]
        if users:
            te.stack = traceback.StackSummary.from_list(users)
        pending.extend(t for t in (te.__cause__, te.__context__) if t is not None)
        pending.extend(getattr(te, "exceptions", None) or ())
    return "".join(shown.format())


def send_error(ring: Ring, error: BaseException, alive: Any) -> None:
    """(worker) Write ``error`` with its traceback as an error record."""
    text = _format(error)
    try:
        payload = cloudpickle.dumps((error, text))
        pickle.loads(payload)  # it must also come back to life on the other side
    except Exception:
        payload = pickle.dumps((None, f"{type(error).__qualname__}: {error}", text))
    ring.put(RECORD_ERROR, payload, alive=alive)


def load_error(metadata: memoryview) -> tuple[BaseException | None, str]:
    """(consumer) The exception in an error record (``None`` if it cannot travel) and its traceback text."""
    try:
        loaded = pickle.loads(metadata)
    except Exception as error:
        return None, f"(it could not be unpickled: {error})"
    if loaded[0] is None:
        return None, f"{loaded[1]}\n\n{loaded[2]}"
    return loaded[0], loaded[1]


# ---------------------------------------------------------------- the recipe a worker runs


class _RecipePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle that keeps code objects whole (file names too) and arrays' byte order."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=5)
        self.files: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            return _reduce_array(obj)
        if type(obj) is types.CodeType:
            try:
                code = marshal.dumps(obj)
            except ValueError:  # constants that marshal cannot write: cloudpickle's way
                return NotImplemented
            self.files.add(obj.co_filename)
            return marshal.loads, (code,)
        return super().reducer_override(obj)


def dumps_recipe(recipe: Any) -> bytes:
    """(consumer) The bytes of what a worker runs (a stream and its seed context), by cloudpickle.

    Along go the source lines of code whose file the worker cannot read (a
    notebook cell), for its tracebacks.
    """
    file = io.BytesIO()
    pickler = _RecipePickler(file)
    pickler.dump(recipe)
    sources = {
        name: lines
        for name in sorted(pickler.files)
        if not os.path.exists(name) and (lines := linecache.getlines(name))
    }
    return pickle.dumps((file.getvalue(), sources), protocol=5)


def loads_recipe(data: bytes) -> Any:
    """(worker) The recipe back from :func:`dumps_recipe`."""
    pickled, sources = pickle.loads(data)
    for name, lines in sources.items():
        if name not in linecache.cache:
            linecache.cache[name] = (sum(map(len, lines)), None, lines, name)  # no mtime: kept as is
    return pickle.loads(pickled)
