"""Argument checks shared by the operators: each names the argument and the value."""

from __future__ import annotations

import numbers
import reprlib
from collections.abc import Callable
from typing import Any

__all__ = ["check_bool", "check_callable", "check_int", "check_probability"]


def check_int(where: str, name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``, else raise.

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
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
