"""The tests behind tinylatent's input checks: Python or NumPy numbers (never a bool), and ids."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def is_integer(value) -> bool:
    """True for an int or NumPy integer (not a bool, not a float such as 1.5 or 2.0)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for a real number, Python or NumPy, integer or float (not a bool, not a string)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_finite_real(value) -> bool:
    """:func:`is_real` and neither infinite nor NaN."""
    return is_real(value) and math.isfinite(value)


def checked_ids(values, n_ids: int, what: str, kind: str, outside: Callable[[int], str]) -> np.ndarray:
    """``values`` (a host array or list) as an int64 array of the same shape, each checked to be
    an integer id in [0, n_ids): a float such as 1.7 (or a bool) is refused with "``what`` must
    be ``kind``; got dtype …", an id out of range with the message ``outside(id)``."""
    ids = np.asarray(values)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):   # bool is not an integer type here
        raise ValueError(f"{what} must be {kind}; got dtype {ids.dtype}")
    if ids.size:       # before the cast to int64, which would wrap a uint64 id ≥ 2**63 to a negative one
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= n_ids:
            raise ValueError(outside(low if low < 0 else high))
    return ids.astype(np.int64, copy=False)
