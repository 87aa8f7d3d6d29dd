"""Argument checks shared by every transformation, schedule and mask function.

Each check runs on the host at construction time and raises a ``TypeError`` for a value of the
wrong kind and a ``ValueError`` for one out of range, naming the argument and what is allowed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INT32_MAX = 2**31 - 1


def check_int(value: Any, name: str, minimum: int, maximum: int = INT32_MAX) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (steps are int32 by default).

    Raises:
      TypeError: for a bool, a float or anything that is not an integer.
      ValueError: for an integer out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(
            f"{name} must be an int >= {minimum}"
            + (f" and <= {maximum} (steps are int32)" if value > maximum else "")
            + f", got {value!r}"
        )
    return int(value)


def check_fraction(value: Any, name: str, *, allow_one: bool = False, what: str = "") -> float:
    """``value`` as a float in ``[0, 1)`` (or ``[0, 1]`` with ``allow_one``).

    ``what`` is added to the ``TypeError`` to say what else the argument may be (e.g. "or a dict
    {leaf path: float}").

    Raises:
      TypeError: for a bool, a string, an array of rank > 0 or anything not a real number.
      ValueError: for NaN or a number out of range.
    """
    interval = "[0, 1]" if allow_one else "[0, 1)"
    kind = f"a float in {interval}" + (f" {what}" if what else "")
    if isinstance(value, (bool, str)) or np.ndim(value) != 0:
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be {kind}, got {value!r}") from e
    if not (0.0 <= v <= 1.0 if allow_one else 0.0 <= v < 1.0):
        raise ValueError(f"{name} must be in range {interval}, got {value!r}")
    return v


RECOMPUTE_FROM = ("current", "updated")


def check_recompute_from(value: Any) -> str:
    """``recompute_from``: which weights a magnitude turn ranks, before or after the update."""
    if not isinstance(value, str) or value not in RECOMPUTE_FROM:
        raise ValueError(f"recompute_from must be one of {RECOMPUTE_FROM}, got {value!r}")
    return value
