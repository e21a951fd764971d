"""The two type tests behind tinylatent's input checks: Python or NumPy numbers, never a bool."""
from __future__ import annotations

import numpy as np


def is_integer(value) -> bool:
    """True for an int or NumPy integer (not a bool, not a float such as 1.5 or 2.0)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for a real number, Python or NumPy, integer or float (not a bool, not a string)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
