"""torch adapters: ``dataset`` for a ``DataLoader``, and the ``tensors`` operator.

Import this module only where torch is installed (``pip install
'pescador_fp[torch]'``); ``import pescador_fp`` alone never imports torch.

>>> import numpy as np, pescador_fp as pf, pescador_fp.torch as pft
>>> s = pf.from_arrays({"x": np.zeros((4, 2), np.float32)}) | pf.batch(2) | pft.tensors()
>>> [type(b["x"]).__name__ for b in s]
['Tensor', 'Tensor']
"""

from __future__ import annotations

import reprlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np

try:
    import torch
    import torch.utils.data
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "pescador_fp.torch needs torch; install it with: pip install 'pescador_fp[torch]'"
    ) from error

from ._check import check_bool, check_int
from ._ipc.pool import segment_at
from ._pass import Pass
from ._seed import SeedContext
from ._stream import Operator, Stream, as_stream
from .ops.shard import shard

__all__ = ["as_tensors", "dataset", "tensors"]


def as_tensors(item: Any) -> Any:
    """Turn the arrays of ``item`` into tensors, through dicts, tuples and lists; other leaves pass through.

    A writable array becomes a tensor over the same memory (``torch.from_numpy``,
    no copy: ``background``'s arrays stay in their shared memory blocks); a
    read-only one is copied, and an
    array of a dtype torch has no tensor for (strings, objects) stays an array.

    >>> import numpy as np
    >>> x = np.arange(3)
    >>> out = as_tensors({"x": x, "name": "a", "pair": (x, [1.5])})
    >>> out["x"].tolist(), out["name"], type(out["pair"][0]).__name__, out["pair"][1]
    ([0, 1, 2], 'a', 'Tensor', [1.5])
    >>> out["x"].data_ptr() == x.ctypes.data  # the same memory
    True
    """
    if isinstance(item, np.ndarray):
        return _tensor(item)
    if isinstance(item, dict):
        return {key: as_tensors(value) for key, value in item.items()}
    if isinstance(item, tuple):
        converted = [as_tensors(value) for value in item]
        return type(item)(*converted) if hasattr(item, "_fields") else tuple(converted)
    if isinstance(item, list):
        return [as_tensors(value) for value in item]
    return item


def _tensor(array: np.ndarray) -> Any:
    if array.dtype.kind in "OUSV":  # no tensor type for these
        return array
    if not array.flags.writeable:
        array = array.copy()  # from_numpy warns on read-only memory, and a view may be reused
    if not array.dtype.isnative or any(stride < 0 for stride in array.strides):
        # torch takes neither: a copy in native byte order with positive strides (values unchanged)
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(array)
    except TypeError:  # a dtype torch has no tensor for
        return array


# The start addresses of the pool segments registered with CUDA (page-locked in place).
_REGISTERED: set[int] = set()


def _pinned_in_place(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` lies in a ``background`` pool segment that CUDA has page-locked (done now, once).

    The segment is registered whole (``cudaHostRegister``), so the copy to the
    device runs straight from the block: no pinning copy. Its worker is asked
    to keep the memory of free blocks from then on (CUDA holds the pages), and
    the segment is unregistered when its mapping goes.
    """
    found = segment_at(tensor.data_ptr())
    if found is None:
        return False
    start, size, mapped, blocks = found
    if start not in _REGISTERED:
        blocks.keep_memory()  # before registering: the worker must not give its pages back after
        cudart: Any = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        error = cudart.cudaHostRegister(start, size, 0)
        if int(getattr(error, "value", error)) != 0:
            return False
        _REGISTERED.add(start)
        weakref.finalize(mapped, _unregister, start)
    return True


def _unregister(start: int) -> None:
    _REGISTERED.discard(start)
    torch.cuda.cudart().cudaHostUnregister(start)  # type: ignore[no-untyped-call]


def _moved(item: Any, device: torch.device | None, pin: bool) -> Any:
    if isinstance(item, torch.Tensor):
        if pin and not _pinned_in_place(item):
            item = item.pin_memory()
        return item if device is None else item.to(device, non_blocking=True)
    if isinstance(item, dict):
        return {key: _moved(value, device, pin) for key, value in item.items()}
    if isinstance(item, tuple):
        converted = [_moved(value, device, pin) for value in item]
        return type(item)(*converted) if hasattr(item, "_fields") else tuple(converted)
    if isinstance(item, list):
        return [_moved(value, device, pin) for value in item]
    return item


def _converted(items: Iterator[Any], device: torch.device | None, pin: bool) -> Iterator[Any]:
    try:
        if device is None and not pin:
            yield from map(as_tensors, items)
        else:
            for item in items:
                yield _moved(as_tensors(item), device, pin)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True, repr=False)
class _Tensors(Operator[Any, Any]):
    _splittable = _per_item = _one_to_one = True
    device: torch.device | None
    pin_memory: bool

    def _open(self, upstream: Stream[Any], ctx: SeedContext, depth: int) -> Iterator[Any]:
        # Pinning needs an accelerator; without one it is skipped, as DataLoader(pin_memory=True) does.
        pin = self.pin_memory and torch.cuda.is_available()
        return _converted(upstream._open(ctx), self.device, pin)

    def __repr__(self) -> str:
        options = [] if self.device is None else [f"device={str(self.device)!r}"]
        if self.pin_memory:
            options.append("pin_memory=True")
        return f"tensors({', '.join(options)})"


def tensors(device: str | torch.device | None = None, pin_memory: bool = False) -> Operator[Any, Any]:
    """Turn arrays into tensors (``as_tensors``); pin them and move them to ``device`` when asked.

    Put it after ``background``: the workers send arrays through shared memory,
    and the tensors are made in the training process, over the shared memory
    blocks that the workers wrote (no copy). With a ``device``, each tensor is
    copied with ``non_blocking=True``, from pinned memory when
    ``pin_memory=True`` (skipped where there is no CUDA device), so the copy
    overlaps the training step. A tensor over a ``background`` block is
    pinned in place: its pool's segment is registered with CUDA once
    (``cudaHostRegister``), and the copy runs from the block itself; other
    tensors are copied into pinned memory (``Tensor.pin_memory``).

    >>> import numpy as np, pescador_fp as pf
    >>> s = pf.from_iterable([np.ones(2), np.zeros(2)]) | tensors(device="cpu")
    >>> [t.tolist() for t in s]
    [[1.0, 1.0], [0.0, 0.0]]
    >>> tensors(device="nowhere")
    Traceback (most recent call last):
    ...
    ValueError: tensors: device must name a torch device, got 'nowhere' (...)
    """
    check_bool("tensors", "pin_memory", pin_memory)
    if device is None:
        return _Tensors(None, pin_memory)
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"tensors: device must be None, a str or a torch.device, got {reprlib.repr(device)} "
            f"({type(device).__name__})"
        )
    try:
        return _Tensors(torch.device(device), pin_memory)
    except RuntimeError as error:
        raise ValueError(f"tensors: device must name a torch device, got {device!r} ({error})") from error


class StreamDataset(torch.utils.data.IterableDataset[Any]):
    """A torch ``IterableDataset`` over a stream; see :func:`dataset`."""

    def __init__(self, stream: Stream[Any], epoch: int = 0) -> None:
        super().__init__()
        self.stream = stream
        self.epoch = epoch
        self._pass: Pass[Any] | None = None  # the pass running in this process
        self._resume: dict[str, Any] | None = None  # the state the next pass starts from

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass ``iterate(seed=epoch)`` (in every DataLoader worker started after this).

        A new epoch starts afresh: :meth:`state_dict` no longer holds the
        pass of the epoch before (nor a state loaded for it).
        """
        epoch = check_int("set_epoch", "epoch", epoch, 0)
        if epoch != self.epoch:
            self._pass = self._resume = None
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """The epoch and where the pass running in this process stands (``Pass.state``), as plain data.

        Save it beside the model's ``state_dict``; :meth:`load_state_dict`
        makes the next pass continue there (docs/resume.md). It sees the pass
        of this process: use it with ``num_workers=0`` (parallel work in
        ``pf.background``).
        """
        running = self._pass.state() if self._pass is not None else self._resume
        return {"epoch": self.epoch, "pass": running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass the rest of the pass that ``state`` (from :meth:`state_dict`) was taken in."""
        if not isinstance(state, dict) or "epoch" not in state or "pass" not in state:
            raise ValueError(
                f"load_state_dict: expected the dict that state_dict() returned, got {reprlib.repr(state)}"
            )
        self.epoch = check_int("load_state_dict", "epoch", state["epoch"], 0)
        self._resume = state["pass"]

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        stream = self.stream
        if info is not None and info.num_workers > 1:
            stream = stream | shard(info.id, info.num_workers)
        resume, self._resume = self._resume, None
        self._pass = stream.iterate(seed=self.epoch, state=resume)
        return _converted(self._pass, None, False)

    def __repr__(self) -> str:
        return f"pescador_fp.torch.dataset({self.stream!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # DataLoader workers under spawn or forkserver receive the dataset by plain pickle:
        # send the stream by cloudpickle, so lambdas and closures travel as with background.
        return (_loaded_dataset, (cloudpickle.dumps(self.stream), self.epoch))


def _loaded_dataset(stream: bytes, epoch: int) -> StreamDataset:
    return StreamDataset(cloudpickle.loads(stream), epoch)


def dataset(stream: Stream[Any]) -> StreamDataset:
    """Wrap ``stream`` as a torch ``IterableDataset``: every item once, however many loader workers.

    Under ``DataLoader(ds, batch_size=None, num_workers=k)`` each loader worker
    iterates its own part, ``stream | pf.shard(worker_id, k)`` (the division of
    ``background(workers=k)``), so every item comes out once; with
    ``num_workers=0`` it is the whole stream. A pass is
    ``stream.iterate(seed=epoch)``: ``ds.set_epoch(e)`` before each epoch gives
    a new, reproducible order (epoch 0 until then). Arrays become tensors over
    the same memory (:func:`as_tensors`). Batch in the stream (``pf.batch``) and
    give the DataLoader ``batch_size=None``.

    >>> import numpy as np, pescador_fp as pf
    >>> ds = dataset(pf.from_arrays(np.arange(6.0)) | pf.batch(3))
    >>> [t.tolist() for t in torch.utils.data.DataLoader(ds, batch_size=None)]
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    return StreamDataset(as_stream(stream))
