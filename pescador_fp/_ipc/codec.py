"""Items to ring records and back, and errors as records: the two sides mirror each other here.

Arrays and flat dicts of arrays travel as raw bytes plus a layout (dtype and
shape per array, and the keys) that is sent only when it changes; anything
else is pickled (protocol 5, array bytes out of band). Either way the worker
copies each array's bytes once, straight into the ring. The consumer copies a
run of small like arrays out of the ring in one pass, each into an array of
its own, so that an item the consumer keeps holds only its own bytes.

Classes that the worker got by value with its recipe (those of the user's
``__main__``, a notebook's, local classes) come back as the receiver's own
class: by name, the class's bytes following only where the receiver does
not have it. Code pickled by value keeps its file name, and the worker gets
the source lines that it cannot read from a file, so that a traceback from a
worker shows the user's file and line.
"""

from __future__ import annotations

import collections
import functools
import io
import linecache
import marshal
import os
import pickle
import struct
import sys
import traceback
import types
import weakref
from collections.abc import Iterable
from typing import Any

import cloudpickle
import numpy as np

from .pool import BLOCK_MIN, Blocks, Pool
from .ring import (
    RECORD_ARRAY_BLOCKS,
    RECORD_ARRAYS,
    RECORD_DATA,
    RECORD_DATA_BLOCKS,
    RECORD_ERROR,
    RECORD_SHORT,
    Ring,
)

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
# A record whose buffers are (some of them) in blocks starts with their count, then a block
# number (-1: this buffer is in the ring) and a byte count per buffer.
_COUNT = struct.Struct("<I")


class _Refs(dict[int, struct.Struct]):
    def __missing__(self, n: int) -> struct.Struct:
        made = self[n] = struct.Struct(f"<I{2 * n}Q")
        return made


_REFS = _Refs()
_IN_RING = 2**64 - 1


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


def _raw(array: np.ndarray) -> np.ndarray | None:
    """``array`` as a C-contiguous array to send as raw bytes, or ``None`` to pickle it.

    Fortran-ordered arrays are pickled, so that they come back in Fortran order
    (but for datetime64/timedelta64, which numpy pickles in band and makes
    native); other arrays that are not contiguous are copied (numpy's pickle
    would copy them too, and make their byte order native).
    """
    flags = array.flags
    if flags.c_contiguous:
        return None if array.dtype.hasobject else array
    if array.dtype.hasobject or (flags.f_contiguous and array.dtype.kind not in "mM"):
        return None
    return np.ascontiguousarray(array)


def _reduce_array(array: np.ndarray) -> Any:
    """numpy's pickling, but arrays keep their byte order.

    numpy pickles the bytes of a contiguous array out of band, as they are,
    but writes any other array in band, and then in native byte order:
    datetime64/timedelta64 arrays and arrays that are not contiguous.
    """
    dtype = array.dtype
    if dtype.isnative or dtype.hasobject:
        return NotImplemented
    if dtype.kind in "mM" or not (array.flags.c_contiguous or array.flags.f_contiguous):
        return _with_dtype, (array.astype(dtype.newbyteorder("=")), dtype)
    return NotImplemented


def _with_dtype(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return array.astype(dtype)


class Encoder:
    """(worker) Writes items into a ring; remembers what the other side already has.

    With a ``pool``, buffers of :data:`~pescador_fp._ipc.pool.BLOCK_MIN` bytes or
    more are written into its blocks instead of the ring (the record says
    which), and the consumer gets arrays over those blocks.
    """

    def __init__(self, pool: Pool | None = None) -> None:
        self.pool = pool
        self._sent: Any = None  # the last array layout
        # Its dtype and shape where it is one non-empty array: the quick path's check.
        self._dtype: Any = None
        self._shape: Any = None
        self.classes: dict[type, int | None] = {}  # classes sent by name (their number), or known plain
        self.picklers: dict[type, int] = {}  # item type -> the first of _PICKLERS that could send one

    @property
    def sent(self) -> Any:
        """The last array layout, which the other side has."""
        return self._sent

    @sent.setter
    def sent(self, layout: Any) -> None:
        self._sent = layout
        nbytes = _nbytes(layout[1], layout[2]) if layout is not None and not layout[0] else 0
        if nbytes and (self.pool is None or nbytes < BLOCK_MIN):  # (the quick path writes into the ring)
            self._dtype, self._shape = layout[1], layout[2]
        else:
            self._dtype = self._shape = None

    def write_all(self, ring: Ring, items: Iterable[Any], alive: Any) -> None:
        """Write every item of ``items`` in turn, each as one record, waiting for space.

        The loop checks for the quick case itself (an array laid out like the
        last one, and room for it without waiting or wrapping): for small items
        each Python call it saves is a few per cent of the worker's time.
        """
        put_again, write = ring.put_again, self.write
        for item in items:
            if type(item) is np.ndarray and item.dtype is self._dtype and item.shape == self._shape:
                try:  # the cast fails unless it is C-contiguous (and for datetime64, timedelta64)
                    data = item.data.cast("B")
                except (TypeError, ValueError):
                    pass
                else:
                    if put_again(RECORD_ARRAYS, data):
                        continue
            write(ring, item, alive)

    def write(self, ring: Ring, item: Any, alive: Any) -> None:
        """Write ``item`` as one record, waiting for space."""
        # The quick path: an array laid out like the last one (the cast fails unless it is
        # C-contiguous, and for dtypes the buffer protocol cannot describe).
        if type(item) is np.ndarray and item.dtype is self._dtype and item.shape == self._shape:
            try:
                data = item.data.cast("B")
            except (TypeError, ValueError):
                pass
            else:
                if ring.put_again(RECORD_ARRAYS, data):
                    return
        encoded = self._encode(item)
        if encoded is not None:
            if not self._put_blocks(ring, RECORD_ARRAY_BLOCKS, encoded[0], encoded[1], alive):
                ring.put(RECORD_ARRAYS, encoded[0], encoded[1], alive)
            return
        buffers: list[pickle.PickleBuffer] = []
        which = self.picklers.get(type(item), 0)
        while True:  # plain pickle first; classes by name, then cloudpickle, only where needed
            try:
                if not which:
                    metadata = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
                else:
                    metadata = _dumps(item, self.classes, buffers.append, _PICKLERS[which])
                break
            except Exception:
                if which + 1 == len(_PICKLERS):
                    raise
                which = self.picklers[type(item)] = which + 1
                buffers.clear()
        raw = [b.raw() for b in buffers]
        if not self._put_blocks(ring, RECORD_DATA_BLOCKS, metadata, raw, alive):
            ring.put(RECORD_DATA, metadata, raw, alive)

    def _put_blocks(
        self, ring: Ring, kind: int, metadata: bytes, views: list[memoryview], alive: Any
    ) -> bool:
        """Write the large ``views`` into blocks and the record into the ring; ``False``: nothing written."""
        taken = self._take_blocks(ring, [view.nbytes for view in views], alive)
        if taken is None:
            return False
        rest, total = [], 0
        for (_, block), view in zip(taken, views):
            if block is None:
                rest.append(view)
            else:
                block[:] = view
                total += view.nbytes
        refs = _REFS[len(views)].pack(len(views), *_flat_refs(taken, views))
        taken.clear()
        del block
        ring.put(kind, refs + metadata, rest, alive)
        assert self.pool is not None
        self.pool.sent(ring, total)
        return True

    def _take_blocks(self, ring: Ring, sizes: list[int], alive: Any) -> list[tuple[int, Any]] | None:
        """A block for each size of at least ``BLOCK_MIN`` ((-1, None) for the others), or ``None``:
        no pool, no size as large, or shared memory short (said once, in a record)."""
        pool = self.pool
        if pool is None or max(sizes, default=0) < BLOCK_MIN:
            return None
        taken: list[tuple[int, Any]] = []
        for size in sizes:
            got = pool.take(size, ring, alive) if size >= BLOCK_MIN else (-1, None)
            if got is None:
                for number, _ in taken:
                    if number >= 0:
                        pool.put_back(number)
                if pool.short:
                    ring.put(RECORD_SHORT, pool.short.encode(), alive=alive)
                    pool.short = ""
                return None
            taken.append(got)
        return taken

    def write_stacked(self, ring: Ring, samples: list[Any], alive: Any) -> bool:
        """Stack ``samples`` on a new leading axis straight into a ring record: one pass over their bytes.

        Samples must be arrays, or flat dicts of arrays, all with the first
        one's keys, dtypes and shapes, so that the batch is what stacking them
        would give (``ops.batch.stack``). Returns ``False`` (nothing written)
        for anything else: the caller stacks them the usual way.
        """
        columns = _columns(samples)
        if columns is None:
            return False
        self._write_columns(ring, columns, type(samples[0]) is dict, alive)
        return True

    def write_columns(self, ring: Ring, item: Any, alive: Any) -> None:
        """Write an array or a flat dict of arrays, copying strided arrays straight into the ring."""
        if type(item) is dict:
            self._write_columns(ring, dict(item), True, alive)
        elif item.flags.c_contiguous:
            self.write(ring, item, alive)
        else:
            self._write_columns(ring, {None: item}, False, alive)

    def _write_columns(self, ring: Ring, columns: dict[Any, Any], keyed: bool, alive: Any) -> None:
        """Write one array per key; a column is an array or a list of like arrays to stack."""
        fields = []
        for key, column in columns.items():
            if type(column) is list:
                fields.append((key, column[0].dtype, (len(column), *column[0].shape)))
            else:
                fields.append((key, column.dtype, column.shape))
        layout: Any = (True, tuple(fields)) if keyed else (False, fields[0][1], fields[0][2])
        metadata = b"" if layout == self.sent else pickle.dumps(layout)
        sizes = [_nbytes(dtype, shape) for _, dtype, shape in fields]
        taken = self._take_blocks(ring, sizes, alive)
        if taken is None:
            views = ring.reserve(RECORD_ARRAYS, metadata, sizes, alive)
        else:
            refs = _REFS[len(sizes)].pack(len(sizes), *_flat_refs(taken, sizes))
            in_ring = iter(
                ring.reserve(
                    RECORD_ARRAY_BLOCKS,
                    refs + metadata,
                    [size for (number, _), size in zip(taken, sizes) if number < 0],
                    alive,
                )
            )
            views = [next(in_ring) if block is None else block for _, block in taken]
            del in_ring
        for view, (_, dtype, shape), column in zip(views, fields, columns.values()):
            if not view.nbytes:
                continue
            out = np.frombuffer(view, np.uint8).view(dtype).reshape(shape)
            if type(column) is list:
                np.stack(column, out=out)
            else:
                np.copyto(out, column)
            del out
        views.clear()
        ring.commit()
        if taken is not None:
            assert self.pool is not None
            self.pool.sent(ring, sum(size for (number, _), size in zip(taken, sizes) if number >= 0))
            taken.clear()
        self.sent = layout

    def _encode(self, item: Any) -> tuple[bytes, list[memoryview]] | None:
        kind = type(item)
        if kind is np.ndarray:
            item = _raw(item)
            if item is None:
                return None
            layout: Any = (False, item.dtype, item.shape)
            views = [_bytes_of(item)]
        elif kind is dict:
            fields = []
            views = []
            for key, value in item.items():
                value = _raw(value) if type(value) is np.ndarray else None
                if value is None:
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


def _flat_refs(taken: list[tuple[int, Any]], sizes: Any) -> list[int]:
    """Block numbers (-1: in the ring) and byte counts, interleaved, for a record's head."""
    flat: list[int] = []
    for (number, _), size in zip(taken, sizes):
        flat += (number & 0xFFFFFFFFFFFFFFFF, size if isinstance(size, int) else size.nbytes)
    return flat


def _nbytes(dtype: np.dtype[Any], shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count * dtype.itemsize


@functools.lru_cache(maxsize=64)
def _stacks_as_is(dtype: np.dtype[Any]) -> bool:
    """Whether ``batch``'s stacking (``np.array`` of the samples) keeps ``dtype``: a copy of their bytes.

    numpy gives the stack the dtypes' promotion: byte order native, also in
    the fields of a structured dtype (which ``dtype.isnative`` passes where
    the field is a sub-array), and a structured dtype with gaps packed. (A
    single sample keeps its dtype whatever it is; its batch is then stacked
    the usual way, to the same effect.)

    >>> _stacks_as_is(np.dtype("<f4")), _stacks_as_is(np.dtype(">f4"))
    (True, False)
    >>> _stacks_as_is(np.dtype([("a", "<i4"), ("b", ">f8", (2,))]))
    False
    """
    empty = np.empty(0, dtype)
    return bool(np.array([empty, empty]).dtype == dtype)


def _columns(samples: list[Any]) -> dict[Any, list[np.ndarray]] | None:
    """The samples' arrays by key (``None`` for arrays), if stacking them is a plain copy; else ``None``.

    That is: every sample an array (or a flat dict of arrays with the first
    one's keys) of the first one's dtype and shape, with no objects, of a
    dtype that stacking keeps.
    """
    first = samples[0]
    if type(first) is np.ndarray:
        dtype, shape = first.dtype, first.shape
        if (
            dtype.hasobject
            or not _stacks_as_is(dtype)
            or any(type(s) is not np.ndarray or s.dtype != dtype or s.shape != shape for s in samples)
        ):
            return None
        return {None: samples}
    if type(first) is not dict or not first:
        return None
    columns = {}
    n = len(first)
    if any(type(s) is not dict or len(s) != n for s in samples):
        return None
    for key, value in first.items():
        if type(value) is not np.ndarray or value.dtype.hasobject or not _stacks_as_is(value.dtype):
            return None
        dtype, shape = value.dtype, value.shape
        try:
            column = [s[key] for s in samples]
        except (KeyError, TypeError):
            return None
        if any(type(v) is not np.ndarray or v.dtype != dtype or v.shape != shape for v in column):
            return None
        columns[key] = column
    return columns


class Decoder:
    """(consumer) Turns records of one ring back into items.

    ``blocks``: the consumer's end of the producer's pool, where the producer
    has one; arrays in its blocks come out as arrays over them (no copy).
    Anything in the ring is copied out, into memory of its own.
    """

    def __init__(self, blocks: Blocks | None = None) -> None:
        self.blocks = blocks
        self.received: Any = None  # the last array layout
        self.classes: dict[int, type] = {}  # the classes the other side sent by name, by number
        # Items already decoded (a run of small arrays) and not yet handed out.
        self.pending: collections.deque[Any] = collections.deque()

    def read(self, ring: Ring, kind: int, metadata: memoryview, buffers: list[memoryview]) -> Any:
        """The item in the record that ``ring.get`` returned (a kind that carries one); frees the record."""
        if kind in (RECORD_ARRAY_BLOCKS, RECORD_DATA_BLOCKS):
            return self._read_blocks(ring, kind, metadata, buffers)
        arrays = kind == RECORD_ARRAYS
        if arrays and not len(metadata) and len(buffers) == 1:
            layout = self.received
            if layout is not None and not layout[0] and 0 < buffers[0].nbytes <= _RUN_ITEM_BYTES:
                items = self._decode_run(ring, buffers[0].nbytes, layout[1], layout[2])
                self.pending.extend(items[1:])
                return items[0]
        views: list[Any] = [bytearray(b) for b in buffers]  # each into memory of its own
        if arrays:
            item = self._decode(metadata, views)
        elif metadata[0] == _PROTO:
            item = pickle.loads(metadata, buffers=views)
        else:
            item = _loads(metadata, views, self.classes)
        ring.release()
        return item

    def _read_blocks(self, ring: Ring, kind: int, metadata: memoryview, buffers: list[memoryview]) -> Any:
        """An item whose large buffers are blocks: arrays over them, the rest copied out of the ring."""
        blocks = self.blocks
        assert blocks is not None, "a record with blocks, and no pool to take them from"
        (n,) = _COUNT.unpack_from(metadata)
        refs = _REFS[n].unpack_from(metadata)
        rest = iter(buffers)
        views: list[Any] = []
        for i in range(1, 2 * n + 1, 2):
            number = refs[i]
            views.append(bytearray(next(rest)) if number == _IN_RING else blocks.array(number, refs[i + 1]))
        inner = metadata[_COUNT.size + 16 * n :]
        if kind == RECORD_ARRAY_BLOCKS:
            item = self._decode(inner, views)
        elif inner[0] == _PROTO:
            item = pickle.loads(inner, buffers=views)
        else:
            item = _loads(inner, views, self.classes)
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


# ---------------------------------------------------------------- classes sent by value

_PROTO = pickle.PROTO[0]  # the first byte of a plain pickle (protocol >= 2)
_BY_NAME = b"N"  # the first byte of a pickle made by _NamingPickler
_MAIN_MODULES = ("__main__", "__mp_main__")  # multiprocessing runs a spawned worker's main as __mp_main__

# (module, qualname) -> the class by value that this process sent with a recipe (the
# consumer) or received with one (a worker): what a class sent by name resolves to first.
_KNOWN_CLASSES: weakref.WeakValueDictionary[tuple[str, str], type] = weakref.WeakValueDictionary()


def _named(module: str, qualname: str) -> Any:
    """What ``module.qualname`` names in this process (``__main__`` for either main), or ``None``."""
    found: Any = sys.modules.get("__main__" if module in _MAIN_MODULES else module)
    for part in qualname.split("."):
        if found is None or part == "<locals>":
            return None
        found = getattr(found, part, None)
    return found


def _by_value(cls: type) -> bool:
    """Whether cloudpickle sends ``cls`` by value: it lives in ``__main__`` or is not importable as itself."""
    module = getattr(cls, "__module__", None)
    if not isinstance(module, str) or module in _MAIN_MODULES:
        return True
    if _named(module, getattr(cls, "__qualname__", "")) is not cls:
        return True
    return any(
        module == name or module.startswith(name + ".")
        for name in cloudpickle.list_registry_pickle_by_value()
    )


def _resolve(module: str, qualname: str, payload: bytes) -> Any:
    """The receiver's class for one sent by name: its recipe's, else its main's, else from the bytes."""
    found = _KNOWN_CLASSES.get((module, qualname))
    if found is None:
        found = _named(module, qualname)
    return found if isinstance(found, type) else pickle.loads(payload)


class _NamingPickler(pickle.Pickler):
    """pickle, but classes sent by value go by name (and a number), their bytes only the first time.

    ``classes``: what the receiver has been sent already (class -> number, or
    ``None`` for classes that travel as usual); new entries go to ``added``.
    """

    def __init__(self, file: Any, classes: dict[type, int | None], buffer_callback: Any = None) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.classes = classes
        self.added: dict[type, int | None] = {}

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, type):
            return None
        number = self.classes.get(obj, -1)
        if number == -1:
            number = self.added.get(obj, -1)
        if number != -1:
            return number
        if not _by_value(obj):
            self.added[obj] = None
            return None
        number = self.added[obj] = len(self.classes) + len(self.added)
        return (number, obj.__module__, obj.__qualname__, cloudpickle.dumps(obj, protocol=5))


class _NamingCloudPickler(_NamingPickler, cloudpickle.Pickler):  # type: ignore[misc]
    """The same with cloudpickle underneath, for what pickle cannot send: functions by value, say."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            return _reduce_array(obj)
        return super().reducer_override(obj)


# What an item is pickled with, tried in turn: plain pickle (None), then these.
_PICKLERS = (None, _NamingPickler, _NamingCloudPickler)


class _NamingUnpickler(pickle.Unpickler):
    """Reads what :class:`_NamingPickler` wrote; ``classes``: the numbered classes received so far."""

    def __init__(self, file: Any, classes: dict[int, type], buffers: Any = None) -> None:
        super().__init__(file, buffers=buffers)
        self.classes = classes

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, int):
            return self.classes[pid]
        number, module, qualname, payload = pid
        cls = self.classes[number] = _resolve(module, qualname, payload)
        return cls


def _dumps(
    obj: Any,
    classes: dict[type, int | None],
    buffer_callback: Any = None,
    pickler_class: Any = _NamingCloudPickler,
) -> bytes:
    """``obj`` pickled, classes sent by value going by name; ``classes`` learns what was sent."""
    file = io.BytesIO()
    file.write(_BY_NAME)
    pickler = pickler_class(file, classes, buffer_callback)
    pickler.dump(obj)
    classes.update(pickler.added)  # only once the whole item could be pickled
    return file.getvalue()


def _loads(data: Any, buffers: Any, classes: dict[int, type]) -> Any:
    """The object back from :func:`_dumps`."""
    file = io.BytesIO(data)
    file.read(len(_BY_NAME))
    return _NamingUnpickler(file, classes, buffers).load()


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
        payload = _dumps((error, text), {})
        _loads(payload, None, {})  # it must also come back to life on the other side
    except Exception:
        payload = pickle.dumps((None, f"{type(error).__qualname__}: {error}", text))
    ring.put(RECORD_ERROR, payload, alive=alive)


def load_error(metadata: memoryview) -> tuple[BaseException | None, str]:
    """(consumer) The exception in an error record (``None`` if it cannot travel) and its traceback text."""
    try:
        loaded = pickle.loads(metadata) if metadata[0] == _PROTO else _loads(metadata, None, {})
    except Exception as error:
        return None, f"(it could not be unpickled: {error})"
    if loaded[0] is None:
        return None, f"{loaded[1]}\n\n{loaded[2]}"
    return loaded[0], loaded[1]


# ---------------------------------------------------------------- the recipe a worker runs


class _RecipePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle that keeps code objects whole (file names too) and notes the classes sent by value."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=5)
        self.files: set[str] = set()
        self.classes: dict[int, type] = {}

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
        if isinstance(obj, type) and _by_value(obj):
            self.classes[id(obj)] = obj
        return super().reducer_override(obj)


#: (fork) The large arrays of recipes sent to forked workers, by key: a forked worker finds them in
#: the memory it inherits, not in the recipe's bytes (pickling the rows of a 1.5 GiB from_arrays
#: made the first item wait seconds). The consumer forgets them once its workers have started.
_INHERITED: dict[tuple[int, int], np.ndarray] = {}
_INHERIT_MIN_BYTES = 2**16


class _InheritingPickler(_RecipePickler):
    """A recipe pickler that leaves large arrays to be inherited (``keys``: those it left)."""

    def __init__(self, file: Any, keys: list[tuple[int, int]]) -> None:
        super().__init__(file)
        self.keys = keys

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.nbytes >= _INHERIT_MIN_BYTES and not obj.dtype.hasobject:
            key = (id(self.keys), id(obj))  # unique while the array is kept here
            _INHERITED[key] = obj
            self.keys.append(key)
            return key
        return None


class _RecipeUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return _INHERITED[tuple(pid)]


def forget_inherited(keys: list[tuple[int, int]]) -> None:
    """(consumer) The arrays that :func:`dumps_recipe` left to ``keys`` are no longer kept for workers."""
    for key in keys:
        _INHERITED.pop(key, None)
    keys.clear()


def dumps_recipe(recipe: Any, inherit: list[tuple[int, int]] | None = None) -> bytes:
    """(consumer) The bytes of what a worker runs (a stream and its seed context), by cloudpickle.

    Along go the classes sent by value (so that items of those classes come
    back as the consumer's own) and the source lines of code whose file the
    worker cannot read (a notebook cell), for its tracebacks.

    ``inherit`` (workers that fork from this process after this call): arrays
    of 64 KiB or more stay out of the bytes; the worker takes them from the
    memory it inherits. Their keys go to ``inherit``; :func:`forget_inherited`
    once the workers have started.

    >>> rows = np.zeros((1024, 256))
    >>> keys: list[tuple[int, int]] = []
    >>> data = dumps_recipe(("part", rows), inherit=keys)
    >>> len(data) < rows.nbytes // 100, loads_recipe(data)[1] is rows
    (True, True)
    >>> forget_inherited(keys)
    """
    file = io.BytesIO()
    pickler = _RecipePickler(file) if inherit is None else _InheritingPickler(file, inherit)
    pickler.dump(recipe)
    classes = list(pickler.classes.values())
    pickler.dump(classes)  # the same objects as in the recipe: the pickler's memo has them
    for cls in classes:
        _KNOWN_CLASSES[(cls.__module__, cls.__qualname__)] = cls
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
    unpickler = _RecipeUnpickler(io.BytesIO(pickled))
    recipe = unpickler.load()
    for cls in unpickler.load():
        _KNOWN_CLASSES[(cls.__module__, cls.__qualname__)] = cls
    return recipe
