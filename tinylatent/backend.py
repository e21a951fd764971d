"""The one module that knows about NumPy versus CuPy.

Compute code in tinylatent never imports CuPy. It asks this module for the array
module of its inputs (``xp = xp_of(x)``) and writes ``xp.exp``, ``xp.matmul``, ...
so that the same lines run on the CPU (NumPy) and on an NVIDIA GPU (CuPy).

Three rules keep the two backends bit-for-bit comparable:

* Arrays are created on a device only here (:func:`to_device`, :func:`array_module`);
  everything else infers the backend from the arrays it is given.
* Randomness is drawn on the host from one ``numpy.random.Generator`` and moved, so the
  same seed gives the same numbers on either device.
* Results leave the device through one exit, :func:`to_host`.

CuPy is imported lazily, the first time a GPU is asked for or a CuPy array is seen, so
that a CPU-only user never pays for (or needs) it.
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from tinylatent._checks import checked_ids

DEVICES = ("cpu", "gpu")

_cupy_module = None  # cached after the first successful import


def _import_cupy():
    """Import CuPy and check that it sees a device; raise a one-line ``ValueError`` if not."""
    global _cupy_module
    if _cupy_module is not None:
        return _cupy_module
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        raise ValueError(
            "device 'gpu' needs CuPy, which could not be imported "
            f"({type(exc).__name__}: {exc}); install the extra with "
            "`pip install tinylatent[gpu]` or use device 'cpu'"
        ) from None
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise ValueError(
            f"device 'gpu' asked for, but CuPy sees no CUDA device ({exc}); use device 'cpu'"
        ) from None
    if n_devices < 1:
        raise ValueError("device 'gpu' asked for, but CuPy sees no CUDA device; use device 'cpu'")
    _cupy_module = cupy
    return cupy


def check_device(device: str) -> str:
    """Return ``device`` if it is one of :data:`DEVICES`, else raise ``ValueError``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    return device


def array_module(device: str = "cpu"):
    """The array module (``numpy`` or ``cupy``) for a device name."""
    check_device(device)
    if device == "cpu":
        return np
    return _import_cupy()


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _import_cupy()
    except ValueError:
        return False
    return True


def _is_cupy_array(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def xp_of(*arrays: Any):
    """The array module of the given arrays: ``cupy`` if any of them is a CuPy array.

    Mixing is an error: a NumPy array next to a CuPy array would silently copy.
    """
    kinds = {_is_cupy_array(a) for a in arrays if a is not None and not np.isscalar(a)}
    if kinds == {True}:
        return _import_cupy()
    if kinds == {True, False}:
        raise ValueError("arrays from different devices (NumPy and CuPy) were mixed in one call")
    return np


def device_of(x: Any) -> str:
    """``'gpu'`` for a CuPy array, ``'cpu'`` otherwise."""
    return "gpu" if _is_cupy_array(x) else "cpu"


def to_device(x: Any, device: str = "cpu", dtype=None):
    """Copy a host array (or anything array-like) to ``device``; a no-op when already there."""
    xp = array_module(device)
    if dtype is None:
        return xp.asarray(x)
    return xp.asarray(x, dtype=dtype)


def to_host(x: Any) -> np.ndarray:
    """The one device-to-host exit: a NumPy array (or NumPy scalar array) for any input."""
    if _is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def scatter_add(target, indices, values) -> None:
    """``target[indices] += values`` with repeated indices accumulated (in place).

    Plain ``a[idx] += v`` keeps only one write per repeated index on both backends;
    the ufunc method ``add.at`` accumulates every one: NumPy's ``np.add.at``, and CuPy's
    ``cupy.add.at`` (since CuPy 12; the NumPy-compatible form of ``cupyx.scatter_add``).
    """
    xp_of(target, indices, values).add.at(target, indices, values)


def check_token_ids(tokens: Any, vocab_size: int, what: str = "token ids") -> None:
    """Raise ``ValueError`` unless every id is an integer in ``[0, vocab_size)``.

    This runs on the host before any indexing: CuPy wraps out-of-range indices silently
    instead of raising, so a bad id must never reach the device.
    """
    checked_ids(to_host(tokens), vocab_size, what, "integers",
                lambda bad: f"{what} must lie in [0, {vocab_size}); found {bad}")
