"""Ctrl-C while a script loads: one line and exit status 130, as during its run.

A script of ``examples/`` or ``benchmarks/`` spends its first few tenths of a second importing
NumPy and tinylatent. Python's own handling of a Ctrl-C there prints the traceback of whichever
import it cut short. Nothing is written yet, so nothing is lost; the script should say only
``<script>: interrupted`` and exit 130, as :func:`tinylatent.cli.run_script` does once it runs.

This module imports only ``os``, ``signal`` and ``sys`` (and ``tinylatent/__init__`` nothing), so
a script can install the handler before anything slow: ``examples/_common.py`` and
``benchmarks/_bench.py`` do it first. :func:`tinylatent.cli.run_script` calls
:func:`ctrl_c_loaded` to give Ctrl-C back to Python as ``KeyboardInterrupt``.
"""
from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_loading(signum, frame) -> None:
    """SIGINT handler while a script loads: the line, then exit status 130 at once.

    ``os._exit``, not ``sys.exit``: nothing is written yet, so there is nothing to clean up, and an
    exception raised here would pass through whatever import the Ctrl-C cut short, which need not
    let it pass (NumPy's C code turns it into an ``ImportError`` with a page of advice, and code that
    catches ``BaseException`` can end with exit status 1).
    """
    print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def quiet_ctrl_c_while_loading(script_folder: str) -> None:
    """Until :func:`ctrl_c_loaded`, a Ctrl-C is one line and exit status 130.

    Only when the program is a script in ``script_folder`` (a test that imports the module
    calling this keeps its Ctrl-C) and SIGINT is not ignored (``cmd &`` from a script keeps it
    ignored).
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is None or os.path.dirname(os.path.abspath(main_file)) != os.path.abspath(script_folder):
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_loading)


def ctrl_c_loaded() -> None:
    """The script has loaded: a Ctrl-C is Python's ``KeyboardInterrupt`` again (if this module had
    taken it; a handler someone else set stays)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)
