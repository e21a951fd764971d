"""The tests behind tinylatent's input checks: Python or NumPy numbers (never a bool), and ids;
and configs' NumPy numbers made Python ones."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Callable

import numpy as np


def is_integer(value) -> bool:
    """True for an int or NumPy integer (not a bool, not a float such as 1.5 or 2.0)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for a real number, Python or NumPy, integer or float (not a bool, not a string)."""
    return is_real_type(type(value))


def is_real_type(kind: type) -> bool:
    """:func:`is_real` for a type: int, float or a NumPy number, not bool."""
    return issubclass(kind, (int, float, np.integer, np.floating)) and not issubclass(kind, (bool, np.bool_))


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


def checked_tokens(values, vocab_size: int, what: str = "tokens") -> np.ndarray:
    """:func:`checked_ids` for token ids in [0, vocab_size), with the vocabulary's message."""
    return checked_ids(values, vocab_size, what, "integer token ids",
                       lambda bad: f"{what}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def as_python_scalars(config):
    """Replace a dataclass's NumPy scalar fields (``np.int64(32)``, ``np.float32(0.1)``) by
    the Python numbers they hold, in place: configs go into JSON checkpoints, and the
    ``json`` module refuses NumPy scalars. Tuples are converted entry by entry."""
    for field in fields(config):
        value = getattr(config, field.name)
        if isinstance(value, np.generic):
            setattr(config, field.name, value.item())
        elif isinstance(value, tuple):
            setattr(config, field.name, tuple(v.item() if isinstance(v, np.generic) else v for v in value))
    return config
