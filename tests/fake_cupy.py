"""A CPU stand-in for CuPy that keeps CuPy's host/device rules, so the GPU code paths run in CI.

Most machines that run the tests have no GPU, and there the CuPy cases of the suite skip.
That leaves the ``device="gpu"`` branches of tinylatent untested until someone runs
``benchmarks/gpu_check.sh`` on a GPU. This module closes most of that gap. Its arrays
hold NumPy arrays, but they refuse what a CuPy array refuses (and, by tinylatent's rule,
a little more), so a port mistake fails here as it would on the device:

* **No implicit conversion to NumPy.** ``np.asarray(x)`` raises ``TypeError`` (CuPy:
  "Implicit conversion to a NumPy array is not allowed"). The exits are ``x.get()``,
  ``cupy.asnumpy(x)``, and the scalar conversions ``float(x)``, ``int(x)`` and ``bool(x)``.
* **No NumPy function on a device array.** ``np.exp(x)`` and ``np.concatenate([x])``
  raise ``TypeError`` here. This is stricter than CuPy, which hands many of them on to
  its own functions (``__array_ufunc__``, ``__array_function__``), but it is
  tinylatent's rule: compute code calls ``xp.exp``, with ``xp`` from its arrays.
* **No mixing.** A NumPy array given to a ``cupy`` function, to arithmetic with a device
  array, or assigned into one raises ``TypeError`` (CuPy: "Unsupported type
  <class 'numpy.ndarray'>"). Python and NumPy *scalars* are fine, and so are NumPy
  arrays used as indices (CuPy copies them over).
* **No ``__index__``.** A device scalar cannot index a Python list or size a ``range``.
* **Reductions and scalar indexing return 0-d device arrays**, not NumPy scalars.
* **The host-to-device copy is a copy**: ``cupy.asarray(host)`` never aliases ``host``.
* **No device-side random numbers**: tinylatent draws randomness on the host, and
  ``cupy.random`` is refused here to keep it so.
* **No warnings**: CUDA kernels do not report division by zero, so neither does this.
* **No 1-D ``out`` for ``matmul``**: CuPy 13.x raises there (its gufunc wrapper transposes
  every ``out`` as a matrix); CuPy 14 accepts it. tinylatent supports both.

The arithmetic is NumPy's own, so a run on this device must agree *bit for bit* with the
same run on the CPU, as long as the CPU works in one block of rows: on tensors larger than
``tinylatent.layers.BLOCK_ELEMENTS`` numbers it works block by block (``row_blocks``; on a
device, one block) and sums LayerNorm's parameter gradients in another order, so a test with
such sizes raises ``BLOCK_ELEMENTS`` first. What it cannot find: numerical differences of real GPU kernels
(summation order, cuBLAS), CuPy's type promotion where it differs from NumPy 2's, NumPy
functions that CuPy lacks (beyond ``random``), and speed. Those need the real device (``benchmarks/gpu_check.sh``).

Install it with :func:`installed` (a context manager), which puts this module in
``sys.modules`` as ``cupy`` and clears tinylatent's cached CuPy. Inside
:func:`counting` every device operation is counted by name: on a GPU nearly each one that
is not a view (``reshape``, ``__getitem__`` with slices) is one kernel launch, and each
copy to the host is counted as :data:`TO_HOST`: ``get``, ``float``, ``int``, ``bool``,
``tolist``, ``item``, and the operations whose result is sized by the data (a boolean mask
as an index, ``nonzero``, ``unique``, ...: :data:`SIZED_BY_DATA`), for which CuPy reads a
count back to the host. An input that CuPy copies before an operation writes an ``out=``
it overlaps (another view of the same memory) is counted as :data:`HIDDEN_COPY`.
"""
from __future__ import annotations

import collections
import contextlib
import operator
import sys
import types

import numpy

IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. "
                       "Please use `.get()` to construct a NumPy array explicitly.")


def _refuse_host_array(value, where: str):
    return TypeError(f"Unsupported type {type(value)}: a NumPy array was given to {where}, "
                     "which takes device arrays (move it with cupy.asarray first)")


def _unwrap(value, where: str):
    """Device arrays to their NumPy storage; NumPy arrays refused; lists and tuples walked."""
    if isinstance(value, ndarray):
        return value._array
    if isinstance(value, numpy.ndarray):
        raise _refuse_host_array(value, where)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(item, where) for item in value)
    return value


def _unwrap_index(key):
    """An index: device arrays unwrapped, NumPy arrays and lists allowed (CuPy copies them over)."""
    if isinstance(key, ndarray):
        return key._array
    if isinstance(key, tuple):
        return tuple(_unwrap_index(item) for item in key)
    return key


def _is_boolean_mask(key) -> bool:
    """Whether an index holds a boolean array (device or host), alone or in a tuple."""
    if isinstance(key, tuple):
        return any(_is_boolean_mask(item) for item in key)
    array = key._array if isinstance(key, ndarray) else key
    return isinstance(array, numpy.ndarray) and array.dtype == numpy.bool_


def _wrap(value):
    """NumPy results to device arrays; NumPy scalars to 0-d device arrays (as CuPy returns)."""
    if isinstance(value, numpy.ndarray):
        return ndarray(value)
    if isinstance(value, numpy.generic):
        return ndarray(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(item) for item in value)
    if isinstance(value, list):
        return [_wrap(item) for item in value]
    return value


_counts = None  # a Counter while inside counting()
TO_HOST = "to host"  # the name under which counting() counts device-to-host copies
HIDDEN_COPY = "hidden copy"  # an input CuPy copies first because it overlaps the output (see _count_overlaps)


def _count(where: str) -> None:
    if _counts is not None:
        _counts[where] += 1


@contextlib.contextmanager
def counting():
    """Count the device operations run inside, by name: ``with counting() as counts: ...``."""
    global _counts
    saved, _counts = _counts, collections.Counter()
    try:
        yield _counts
    finally:
        _counts = saved


def _count_overlaps(inputs, out) -> None:
    """Count, as :data:`HIDDEN_COPY`, each input that CuPy would copy before writing ``out``:
    CuPy's ufuncs and matmul copy an input that may share memory with the output unless it
    *is* the output object (``a *= b`` is fine; ``multiply(dout[rows], w, out=dx[rows])``
    with ``dx`` another view of ``dout``'s memory copies ``dout[rows]`` first)."""
    outs = out if isinstance(out, tuple) else (out,)
    for target in outs:
        if not isinstance(target, ndarray):
            continue
        for value in inputs:
            if isinstance(value, ndarray) and value is not target and numpy.may_share_memory(value._array, target._array):
                _count(HIDDEN_COPY)


def _device_call(function, where: str):
    """``function`` taking and returning device arrays, refusing NumPy arrays, never warning."""
    def call(*args, **kwargs):
        _count(where)
        if "out" in kwargs:
            _count_overlaps(args, kwargs["out"])
        args = _unwrap(args, where)
        kwargs = {name: _unwrap(value, where) for name, value in kwargs.items()}
        with numpy.errstate(all="ignore"):
            return _wrap(function(*args, **kwargs))
    call.__name__ = getattr(function, "__name__", where)
    call.__doc__ = f"fake cupy: {where} on device arrays"
    return call


# ---------------------------------------------------------------------------------------
# The device array
# ---------------------------------------------------------------------------------------

def _binary(name: str, reflected: bool = False):
    op = getattr(operator, name)

    def method(self, other):
        _count(f"ndarray.__{name}__")
        other = _unwrap(other, f"ndarray.__{name}__")
        with numpy.errstate(all="ignore"):
            return _wrap(op(other, self._array) if reflected else op(self._array, other))
    return method


def _in_place(name: str):
    op = getattr(operator, name)

    def method(self, other):
        _count(f"ndarray.__{name}__")
        _count_overlaps((other,), self)
        with numpy.errstate(all="ignore"):
            op(self._array, _unwrap(other, f"ndarray.__{name}__"))  # NumPy's in-place ops write into self._array
        return self
    return method


def _unary(name: str):
    op = getattr(operator, name)

    def method(self):
        _count(f"ndarray.__{name}__")
        with numpy.errstate(all="ignore"):
            return _wrap(op(self._array))
    return method


def _to_host_scalar(kind):
    """``float(x)``, ``int(x)``, ...: a copy to the host, counted as :data:`TO_HOST`."""
    def method(self):
        _count(TO_HOST)
        return kind(self._array)
    return method


class ndarray:
    """A device array: a NumPy array behind CuPy's rules (see the module docstring)."""

    __slots__ = ("_array",)
    __array_ufunc__ = None  # NumPy ufuncs refuse it, and `host + device` falls to __radd__, which refuses
    __hash__ = None

    def __init__(self, array: numpy.ndarray):
        self._array = array

    # -- the ways out to the host ------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"{IMPLICIT_CONVERSION} (numpy.{func.__name__} was given a device array)")

    # Each is a device-to-host copy, which on a GPU waits for every queued kernel: counted
    # as "to host" so that tests can see where a step stops the device's queue.
    def get(self, stream=None, order="C", out=None) -> numpy.ndarray:
        _count(TO_HOST)
        return numpy.array(self._array, order=order)

    __float__, __int__, __bool__, __complex__ = (_to_host_scalar(kind) for kind in (float, int, bool, complex))

    def __repr__(self):
        return repr(self._array)

    def __str__(self):
        return str(self._array)

    # -- shape and iteration -----------------------------------------------------------
    def __len__(self):
        return len(self._array)

    def __iter__(self):
        for i in range(len(self._array)):
            yield self[i]

    # A boolean mask as an index is also a copy to the host: CuPy counts the mask's True
    # entries on the device and reads that count back (``int(...)``) to size the selection,
    # for a read (a[mask]) and for a write (a[mask] = v) alike.
    def __getitem__(self, key):
        _count("ndarray.__getitem__")
        if _is_boolean_mask(key):
            _count(TO_HOST)
        return _wrap(self._array[_unwrap_index(key)])

    def __setitem__(self, key, value):
        _count("ndarray.__setitem__")
        if _is_boolean_mask(key):
            _count(TO_HOST)
        self._array[_unwrap_index(key)] = _unwrap(value, "ndarray.__setitem__")

    def __getattr__(self, name):
        if name.startswith("_"):  # includes __index__, and _array before it is set (copy, pickle)
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        value = getattr(self._array, name)
        if not callable(value):
            return _wrap(value)
        call = _device_call(value, f"ndarray.{name}")
        if name not in SIZED_BY_DATA | {"tolist", "item"}:
            return call

        def to_host(*args, **kwargs):  # x.nonzero(), x.tolist(), x.item(): read back to the host
            _count(TO_HOST)
            return call(*args, **kwargs)
        return to_host

    # -- arithmetic --------------------------------------------------------------------
    __add__, __radd__, __iadd__ = _binary("add"), _binary("add", True), _in_place("iadd")
    __sub__, __rsub__, __isub__ = _binary("sub"), _binary("sub", True), _in_place("isub")
    __mul__, __rmul__, __imul__ = _binary("mul"), _binary("mul", True), _in_place("imul")
    __truediv__, __rtruediv__, __itruediv__ = _binary("truediv"), _binary("truediv", True), _in_place("itruediv")
    __floordiv__, __rfloordiv__ = _binary("floordiv"), _binary("floordiv", True)
    __mod__, __rmod__ = _binary("mod"), _binary("mod", True)
    __pow__, __rpow__, __ipow__ = _binary("pow"), _binary("pow", True), _in_place("ipow")
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)
    __and__, __rand__, __iand__ = _binary("and_"), _binary("and_", True), _in_place("iand")
    __or__, __ror__, __ior__ = _binary("or_"), _binary("or_", True), _in_place("ior")
    __xor__, __rxor__ = _binary("xor"), _binary("xor", True)
    __lt__, __le__, __gt__, __ge__ = _binary("lt"), _binary("le"), _binary("gt"), _binary("ge")
    __eq__, __ne__ = _binary("eq"), _binary("ne")
    __neg__, __pos__, __abs__, __invert__ = _unary("neg"), _unary("pos"), _unary("abs"), _unary("invert")


ndarray.__module__ = "cupy"  # what tinylatent.backend looks at to tell a CuPy array


class _Ufunc:
    """A NumPy ufunc on device arrays, with its methods (``reduce``, ``accumulate``, ``outer``, ...)."""

    def __init__(self, ufunc: numpy.ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__
        self._call = _device_call(ufunc, f"cupy.{ufunc.__name__}")

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        if self.__name__ == "matmul" and isinstance(out, ndarray) and out.ndim == 1:
            # CuPy 13.x (setup.cfg allows >= 13.6) transposes matmul's out as a matrix
            raise ValueError("Invalid axes value: CuPy 13's matmul refuses a 1-D out (give a (n, 1) column)")
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._ufunc, name)
        return _device_call(value, f"cupy.{self.__name__}.{name}") if callable(value) else value


# ---------------------------------------------------------------------------------------
# The modules: cupy, cupy.cuda
# ---------------------------------------------------------------------------------------

def asarray(value, dtype=None, order=None):
    """Host data (or a device array) to a device array; host data is always copied."""
    if isinstance(value, ndarray):
        return ndarray(numpy.asarray(value._array, dtype=dtype, order=order))
    if isinstance(value, (list, tuple)) and any(isinstance(item, ndarray) for item in value):
        return ndarray(numpy.array(_unwrap(value, "cupy.asarray"), dtype=dtype, order=order))
    return ndarray(numpy.array(value, dtype=dtype, order=order, copy=True))


def asnumpy(value, stream=None, order="C", out=None) -> numpy.ndarray:
    return value.get(order=order) if isinstance(value, ndarray) else numpy.asarray(value, order=order)


# Functions whose result's size depends on the data: CuPy reads a count back to the host
# to allocate it, so each is counted as a copy to the host (and, on a GPU, a wait).
SIZED_BY_DATA = frozenset({"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract"})


def _module_getattr(name):
    if name in _ABSENT:
        raise AttributeError(f"module 'cupy' (fake) has no attribute {name!r}: {_ABSENT[name]}")
    value = getattr(numpy, name)
    if isinstance(value, numpy.ufunc):
        return _Ufunc(value)
    if isinstance(value, (type, numpy.dtype)) or not callable(value):
        return value  # scalar types (cupy.float32 is numpy.float32), dtypes and constants (cupy.inf)
    call = _device_call(value, f"cupy.{name}")
    if name not in SIZED_BY_DATA:
        return call

    def sized_by_data(*args, **kwargs):
        _count(TO_HOST)
        return call(*args, **kwargs)
    return sized_by_data


_ABSENT = {
    "random": "tinylatent draws random numbers on the host from one numpy Generator, then moves them",
    "errstate": "CuPy has no floating-point error state; wrap host NumPy code in numpy.errstate instead",
    "seterr": "CuPy has no floating-point error state",
}


class _Device:
    def synchronize(self) -> None:  # what benchmarks wait with; the fake's work is never queued
        pass


runtime = types.SimpleNamespace(   # what tinylatent.backend and benchmarks/gpu_check.sh ask
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda device_id: {"name": b"fake CuPy device (NumPy on the CPU)", "totalGlobalMem": 0},
)
cuda = types.SimpleNamespace(runtime=runtime, Device=_Device)

cupy = types.ModuleType("cupy", __doc__)
cupy.__dict__.update(
    ndarray=ndarray, asarray=asarray, array=asarray, asnumpy=asnumpy, cuda=cuda,
    __version__="fake", __getattr__=_module_getattr,
)


def assert_matches_cpu(device_value, cpu_value, gpu: str, rtol: float, atol: float, err_msg: str = "") -> None:
    """A device result against the CPU's: bit for bit on this fake (``gpu == "fake-cupy"``, the
    arithmetic is NumPy's), within ``atol + rtol·|cpu|`` on a real GPU (``"cupy"``)."""
    from tinylatent import backend

    if gpu == "fake-cupy":
        numpy.testing.assert_array_equal(backend.to_host(device_value), cpu_value, err_msg=err_msg)
    else:
        numpy.testing.assert_allclose(backend.to_host(device_value), cpu_value, rtol=rtol, atol=atol, err_msg=err_msg)


@contextlib.contextmanager
def installed():
    """Make ``import cupy`` give this fake, and tinylatent forget any cached CuPy."""
    from tinylatent import backend

    saved_module = sys.modules.get("cupy")
    saved_cache = backend._cupy_module
    sys.modules["cupy"] = cupy
    backend._cupy_module = None
    try:
        yield cupy
    finally:
        if saved_module is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved_module
        backend._cupy_module = saved_cache
