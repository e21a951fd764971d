"""What the benchmarks share: the command line (one-line errors, exit status 2, as `tinylatent`'s;
a closed output pipe stops nothing), the output file checked before the run, the BLAS thread count,
and waiting for a GPU's queued work before the clock is read.

Import it after putting this folder and the repository root on ``sys.path`` (each benchmark
does so first), and before NumPy: a Ctrl-C while NumPy loads is then one line and exit status 130,
as during the run, not the traceback of the import.
"""
from __future__ import annotations

import os

from tinylatent._signals import quiet_ctrl_c_while_loading

# Before anything slow: a Ctrl-C while the rest loads is one line and exit 130 (run_script hands it back).
quiet_ctrl_c_while_loading(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

from tinylatent import backend  # noqa: E402
from tinylatent.cli import OneLineParser, check_optional_output, int_in, path_arg, run_script  # noqa: E402

MAX_THREADS = 1_024


def parser(program: str, description: str) -> OneLineParser:
    """`tinylatent`'s parser class: a usage error is one line and exit status 2, not the whole usage."""
    return OneLineParser(prog=program, description=description)


def add_threads_argument(p: OneLineParser, help_text: str) -> None:
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None, help=help_text)


def add_json_arguments(p: OneLineParser) -> None:
    p.add_argument("--json", type=path_arg, metavar="PATH", help="write the figures as JSON (an existing file only with --force)")
    p.add_argument("--force", action="store_true", help="replace the --json file if it exists")


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0; got {text!r}")
    return value


def run(program: str, args: argparse.Namespace, main: Callable[[], int]) -> int:
    """``main()`` through :func:`tinylatent.cli.run_script` (one-line errors, exit 2; a closed pipe
    stops nothing), after checking the ``--json`` file: minutes of a run must not fail at its end."""
    def checked_main() -> int:
        check_optional_output(args.json, args.force)
        return main()
    return run_script(program, checked_main)


# --------------------------------------------------------------------------------------
# BLAS threads
# --------------------------------------------------------------------------------------

def set_blas_threads(n: int):
    """Limit BLAS to ``n`` threads for the rest of the run (a threadpoolctl handle, kept alive)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise ValueError("--threads needs threadpoolctl (`pip install threadpoolctl`); "
                         "or set OPENBLAS_NUM_THREADS before starting Python") from None
    return threadpool_limits(limits=n, user_api="blas")


def blas_threads() -> str:
    """NumPy's BLAS thread count as a string: threadpoolctl's reading, else the environment's
    (OPENBLAS_NUM_THREADS before OMP_NUM_THREADS, as OpenBLAS reads them), else "default"."""
    try:
        from threadpoolctl import threadpool_info
        counts = sorted({str(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"})
        if counts:
            return ",".join(counts)
    except ImportError:
        pass
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(variable):
            return os.environ[variable]
    return "default"


# --------------------------------------------------------------------------------------
# the device's clock
# --------------------------------------------------------------------------------------

def synchroniser(device: str):
    """A function that waits until the device has finished its queued work (a no-op on the CPU):
    a GPU runs its kernels after the host has issued them, so a clock read without it times the issuing."""
    if device == "gpu":
        xp = backend.array_module("gpu")
        return lambda: xp.cuda.Device().synchronize()
    return lambda: None


def timed(function, sync=lambda: None, clock=time.perf_counter) -> tuple:
    """(seconds by ``clock``, result) of one ``function()``, with the device's queue empty before
    the clock starts and waited for before it stops (``sync``: :func:`synchroniser`)."""
    sync()
    start = clock()
    result = function()
    sync()
    return clock() - start, result
