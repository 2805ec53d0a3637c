"""Argument checks shared by the operators: each names the argument and the value."""

from __future__ import annotations

import math
import numbers
import reprlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._stream import Stream, as_stream

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_int",
    "check_probability",
    "check_rate",
    "check_seconds",
    "check_streams",
    "check_weights",
]


def check_int(where: str, name: str, value: object, minimum: int, maximum: int = sys.maxsize) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum`` (and ``<= maximum``), else raise.

    The maximum defaults to the largest count Python's own slicing takes.

    >>> check_int("take", "n", -1, 0)
    Traceback (most recent call last):
    ...
    ValueError: take: n must be an integer >= 0, got -1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{where}: {name} must be an integer >= {minimum}, "
            f"got {reprlib.repr(value)} ({type(value).__name__})"
        )
    number = int(value)
    if number < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    if number > maximum:
        raise ValueError(f"{where}: {name} must be an integer <= {maximum}, got {value!r}")
    return number


def check_seconds(where: str, name: str, value: object) -> float | None:
    """Return ``value`` as a float of seconds (positive and finite) or ``None``, else raise.

    >>> check_seconds("background", "timeout", 0)
    Traceback (most recent call last):
    ...
    ValueError: background: timeout must be a positive, finite number of seconds, got 0
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number of seconds or None, got {reprlib.repr(value)}")
    seconds = float(value)
    if not 0 < seconds < math.inf:
        raise ValueError(f"{where}: {name} must be a positive, finite number of seconds, got {value!r}")
    return seconds


def check_callable(where: str, name: str, value: object) -> Callable[..., Any]:
    """Return ``value`` if it is callable, else raise ``TypeError``."""
    if not callable(value):
        raise TypeError(
            f"{where}: {name} must be callable, got {reprlib.repr(value)} ({type(value).__name__})"
        )
    return value


def check_bool(where: str, name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {reprlib.repr(value)}")
    return value


def check_probability(where: str, name: str, value: object) -> float:
    """Return ``value`` as a float in (0, 1], else raise.

    >>> check_probability("cache", "prob", 2)
    Traceback (most recent call last):
    ...
    ValueError: cache: prob must be a number in (0, 1], got 2
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number in (0, 1], got {reprlib.repr(value)}")
    if not 0 < float(value) <= 1:  # also refuses NaN
        raise ValueError(f"{where}: {name} must be a number in (0, 1], got {value!r}")
    return float(value)


# The range of ``rate``: below ``_MIN_RATE`` almost every activation yields nothing and
# a pass spins through draws; above ``_MAX_RATE`` the counts leave numpy's samplers' range.
_MIN_RATE = 1e-3
_MAX_RATE = 2.0**50
# Positive weights below the smallest normal float lose their precision in the draws.
_MIN_WEIGHT = float(np.finfo(np.float64).tiny)
_MAX_FLOAT = float(np.finfo(np.float64).max)


def check_streams(where: str, streams: object) -> tuple[Stream[Any], ...]:
    """Return ``streams`` (a list or tuple of streams or collections) as a tuple of streams, else raise."""
    if isinstance(streams, (Stream, str)) or not isinstance(streams, Sequence):
        raise TypeError(
            f"{where}: streams must be a list or tuple of streams, got {reprlib.repr(streams)} "
            f"({type(streams).__name__})"
        )
    if len(streams) == 0:
        raise ValueError(f"{where}: streams must hold at least one stream, got {streams!r}")
    return tuple(as_stream(s) for s in streams)


def check_weights(where: str, weights: object, n: int) -> tuple[float, ...]:
    """Return ``n`` weights as floats (``None``: all 1), else raise: finite, not negative, not all zero.

    >>> check_weights("mux", [1e308, 1e308], 2)
    Traceback (most recent call last):
    ...
    ValueError: mux: weights must have a finite sum (at most 1.8e+308), got [1e+308, 1e+308]; scale them down
    """
    if weights is None:
        return (1.0,) * n
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(
            f"{where}: weights must be a list of finite numbers, got {reprlib.repr(weights)}"
        ) from None
    if w.shape != (n,):
        raise ValueError(
            f"{where}: weights must hold one number per stream ({n}), got {reprlib.repr(weights)}"
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{where}: weights must be finite and non-negative, got {reprlib.repr(weights)}")
    if not (w > 0).any():
        raise ValueError(
            f"{where}: weights must hold at least one positive number, got {reprlib.repr(weights)}"
        )
    with np.errstate(over="ignore"):
        total = np.cumsum(w)[-1]  # as the draws sum them
    if not np.isfinite(total):
        raise ValueError(
            f"{where}: weights must have a finite sum (at most {_MAX_FLOAT:.3g}), got "
            f"{reprlib.repr(weights)}; scale them down"
        )
    tiny = (w > 0) & (w < _MIN_WEIGHT)
    if tiny.any():
        raise ValueError(
            f"{where}: weights must be 0 or at least {_MIN_WEIGHT:.3g} (the smallest normal float), "
            f"got {float(w[tiny][0])!r} in {reprlib.repr(weights)}; scale them up"
        )
    return tuple(w.tolist())


def check_choice(where: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def check_rate(rate: object, mode: str, n_streams: int) -> float | None:
    """Return a mux's ``rate`` as a float (or None) if a pass can run with it, else raise.

    >>> check_rate(1e-300, "with_replacement", 2)
    Traceback (most recent call last):
    ...
    ValueError: mux: rate must be at least 0.001 (or None), got 1e-300: ...
    """
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"mux: rate must be a positive number or None, got {reprlib.repr(rate)}")
    value = float(rate)
    if not (0 < value < math.inf):
        raise ValueError(f"mux: rate must be a positive number or None, got {rate!r}")
    if value < _MIN_RATE:
        raise ValueError(
            f"mux: rate must be at least {_MIN_RATE:g} (or None), got {rate!r}: below 1 an activation "
            f"yields an item with probability rate, so each item would take about {1 / value:.3g} "
            "activations"
        )
    # Exhaustive mode gives a source up to rate * len(streams) items in its one activation.
    if mode == "exhaustive" and value * n_streams > _MAX_RATE:
        raise ValueError(
            f"mux: rate must keep rate * len(streams) at most {_MAX_RATE:.3g} in exhaustive mode, "
            f"got rate={rate!r} (rate * len(streams) = {value * n_streams:.3g}); use rate=None to "
            "run each activation until its source ends"
        )
    if value > _MAX_RATE:
        raise ValueError(
            f"mux: rate must be at most {_MAX_RATE:.3g} items per activation, got rate={rate!r}; use "
            "rate=None to run each activation until its source ends"
        )
    return value
