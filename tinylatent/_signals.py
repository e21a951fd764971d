"""Stop requests: Ctrl-C while a script loads, and SIGTERM while a model trains.

**Ctrl-C while a script loads.** A script of ``examples/`` or ``benchmarks/`` spends its first
few tenths of a second importing NumPy and tinylatent. Python's own handling of a Ctrl-C there
prints the traceback of whichever import it cut short. Nothing is written yet, so nothing is
lost; the script should say only ``<script>: interrupted`` and exit 130, as
:func:`tinylatent.cli.run_script` does once it runs. ``examples/_common.py`` and
``benchmarks/_bench.py`` call :func:`quiet_ctrl_c_while_loading` first;
:func:`tinylatent.cli.run_script` calls :func:`ctrl_c_loaded` to give Ctrl-C back to Python as
``KeyboardInterrupt``.

**SIGTERM while a model trains.** ``kill PID``, a batch scheduler's time limit or a
container's stop send SIGTERM, whose default action ends the process at once: the steps since
the last checkpoint are lost. Inside :func:`sigterm_as_interrupt` (which
:func:`tinylatent.train.train` enters) it raises :class:`Terminated` instead, a
``KeyboardInterrupt``, so training stops as on Ctrl-C: the step in progress is finished, its
checkpoint saved, and the command lines say ``terminated`` and exit 143 (128 + SIGTERM).

This module imports only ``os``, ``signal`` and ``sys`` (and ``tinylatent/__init__`` nothing), so a
script can import it before anything slow.
"""
from __future__ import annotations

import os
import signal
import sys

TERMINATED_EXIT_STATUS = 128 + int(signal.SIGTERM)   # 143: what a shell reports for a process SIGTERM ended


# ----------------------------------------------------------------------------------------
# Ctrl-C while a script loads
# ----------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------
# SIGTERM while a model trains
# ----------------------------------------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM arrived inside :func:`sigterm_as_interrupt`. A ``KeyboardInterrupt``, so that
    whatever saves and stops on Ctrl-C does so on SIGTERM too; the command lines tell the two
    apart by this class (``terminated``, exit status 143, instead of ``interrupted``, 130)."""


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler inside :func:`sigterm_as_interrupt`."""
    raise Terminated()


class _SigtermAsInterrupt:
    """The context manager :func:`sigterm_as_interrupt` returns."""

    def __enter__(self) -> "_SigtermAsInterrupt":
        import threading  # here, not at the top: scripts import this module before anything slow

        self.installed = (threading.current_thread() is threading.main_thread()
                          and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        if self.installed:
            signal.signal(signal.SIGTERM, raise_terminated)
        return self

    def __exit__(self, *exc_info) -> bool:
        if self.installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return False


def sigterm_as_interrupt() -> _SigtermAsInterrupt:
    """A context manager: inside, SIGTERM raises :class:`Terminated`; after it, SIGTERM ends the
    process again.

    Only in the main thread (where Python runs signal handlers) and only where SIGTERM had its
    default action: a handler the program set, or an ignored SIGTERM, stays as it is.
    :func:`tinylatent.train.keyboard_interrupt_deferred` holds this SIGTERM as it holds a Ctrl-C.
    """
    return _SigtermAsInterrupt()
