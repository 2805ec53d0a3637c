"""The exceptions that pescador_fp raises."""

from __future__ import annotations

__all__ = ["DataError", "PescadorError", "WorkerError"]


class PescadorError(Exception):
    """Base class of every error that pescador_fp raises on its own.

    >>> issubclass(DataError, PescadorError) and issubclass(WorkerError, PescadorError)
    True
    """


class DataError(PescadorError):
    """A sample has the wrong form: missing keys, mismatched shapes, not data-like.

    >>> import numpy as np, pescador_fp as pf
    >>> list([{"x": np.zeros(3)}, {"x": np.zeros(4)}] | pf.batch(2))
    Traceback (most recent call last):
    ...
    pescador_fp.errors.DataError: batch: shapes differ at key ['x']: (3,) in sample 0 but (4,) in sample 1
    """


class WorkerError(PescadorError):
    """A background worker died, could not start, or raised an error that cannot travel.

    >>> str(WorkerError("worker 0 exited with code -9"))
    'worker 0 exited with code -9'
    """
