"""pescador_fp: functional, reproducible data streams for machine-learning training.

>>> import numpy as np, pescador_fp as pf
>>> data = {"x": np.arange(20.0).reshape(10, 2), "y": np.arange(10) % 2}
>>> train = pf.from_arrays(data) | pf.shuffle(4, seed=0) | pf.batch(5)
>>> [b["x"].shape for b in train]
[(5, 2), (5, 2)]
"""

from __future__ import annotations

from . import _stream
from ._pass import Pass as Pass
from ._stream import Operator as Operator
from ._stream import Stream as Stream
from ._stream import pipe as pipe
from ._version import __version__ as __version__
from .background import background as background
from .errors import DataError as DataError
from .errors import PescadorError as PescadorError
from .errors import WorkerError as WorkerError
from .mux import chain as chain
from .mux import mux as mux
from .mux import round_robin as round_robin
from .mux import shuffled_mux as shuffled_mux
from .ops.batch import batch as batch
from .ops.batch import unbatch as unbatch
from .ops.cache import cache as cache
from .ops.cycle import cycle as cycle
from .ops.map import filter as filter
from .ops.map import map as map
from .ops.map import mapcat as mapcat
from .ops.progress import progress as progress
from .ops.shard import shard as shard
from .ops.shuffle import shuffle as shuffle
from .ops.take import skip as skip
from .ops.take import take as take
from .ops.tuples import keras_tuples as keras_tuples
from .ops.tuples import tuples as tuples
from .sources import from_arrays as from_arrays
from .sources import from_iterable as from_iterable
from .sources import random_stream as random_stream
from .sources import seekable_stream as seekable_stream
from .sources import stream as stream
from .sources import streamable as streamable

__all__ = [
    "DataError",
    "Operator",
    "Pass",
    "PescadorError",
    "Stream",
    "WorkerError",
    "background",
    "batch",
    "cache",
    "chain",
    "cycle",
    "filter",
    "from_arrays",
    "from_iterable",
    "keras_tuples",
    "map",
    "mapcat",
    "mux",
    "pipe",
    "progress",
    "random_stream",
    "round_robin",
    "seekable_stream",
    "shard",
    "shuffle",
    "shuffled_mux",
    "skip",
    "stream",
    "streamable",
    "take",
    "tuples",
    "unbatch",
]

_stream.OPERATOR_NAMES.update(
    name for name in __all__ if str(globals()[name].__annotations__.get("return", "")).startswith("Operator")
)
