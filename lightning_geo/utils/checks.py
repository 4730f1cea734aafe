"""Argument checks that name the argument: every GEO part refuses a wrong value the same way.

A number given as a string (``"0.5"``), a flag given as a string (``"false"``, which Python takes as true) or a
single class where a list of them is expected fails here, at construction, with a message that names the
argument and what it takes; not later, deep in arithmetic, with one that names neither.
"""

from __future__ import annotations

import math
from typing import Any


def check_number(owner: str, name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, if it is a finite number (not a bool) in the interval from ``low`` to ``high``.

    Args:
        owner: Who takes the argument, for the message (``"GeoAdamW"``).
        name: The argument's name.
        value: What was given.
        low, high: The interval's ends; default: any finite number.
        low_open, high_open: Whether the end itself is excluded. Default: both included.

    Raises:
        TypeError: if ``value`` is not an ``int`` or ``float`` (a bool, a string, ``None``).
        ValueError: if it is NaN, infinite or outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}: {name}={value!r} must be a number, got {type(value).__name__}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{owner}: {name}={value!r} must be a finite number in {left}{low}, {high}{right}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is a bool.

    Raises:
        TypeError: for anything else (the string ``"false"`` is true to Python: it is refused here).
    """
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name}={value!r} must be True or False, got {type(value).__name__}")
    return value


def check_count(owner: str, name: str, value: Any, low: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``low``.

    Raises:
        TypeError: for anything but an ``int``, naming ``name``.
        ValueError: for an integer below ``low``, naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name}={value!r} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{owner}: {name}={value!r} must be an integer >= {low}")
    return value
