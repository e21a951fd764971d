"""The ``tinylatent`` command line.

Each group of subcommands lives in its own module with a ``register(subparsers)``
function that adds its parsers and sets ``func`` on each (``func(args) -> int``).
This file assembles them and turns errors into one line on stderr and exit status 2:
a user who typed something wrong sees what was wrong and what is allowed, never a
traceback. That covers a bad value (ValueError), a file that cannot be read or written
(OSError: missing, a folder, a full disk) and a request too large for memory (MemoryError).

It also holds what the project's command lines share (the examples and the benchmarks use
them too): :class:`OneLineParser`; the argparse types :func:`int_in` for bounded sizes,
:func:`positive_int`, :func:`non_negative_int` and :func:`path_arg`; :func:`add_device_argument`;
:func:`error_text`;
:func:`check_output_file` / :func:`check_output_folder` / :func:`check_optional_output`, which
refuse an output path before any work is done (an existing file is replaced only with
``--force``); and :func:`stdout_reader_may_leave` and :func:`run_script`, which run a script
whose reader of standard output may leave early.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from pathlib import Path

from tinylatent import __version__
from tinylatent._signals import TERMINATED_EXIT_STATUS, Terminated, ctrl_c_loaded

# Modules that register subcommands, in the order they appear in ``--help``.
COMMAND_MODULES = [
    "tinylatent.cli_language",   # language, sample, ambiguity, posterior
    "tinylatent.cli_train",      # train, generate
    "tinylatent.cli_eval",       # eval
]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2 (the benchmarks use it
    too, and the examples as ``_common.RaisingParser``).

    It also reads ``--eta -1e-3`` as a value, as it reads ``--eta -0.001``: argparse's own test
    for a negative number (before Python 3.14) knows no exponent, so it took ``-1e-3`` for an
    option and said "expected one argument", though one was given.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # argparse's attribute

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (a count with no useful upper bound)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer ≥ 0 (a seed)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {text}")
    return value


def int_in(low: int, high: int):
    """An argparse type: an integer in low..high, or a usage error that states the range.

    The upper bounds of the size options are there so that a request no machine could hold
    (``--messages 10000000000``) fails at once, with the range, instead of running out of memory.
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in {low:,}..{high:,}; got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in {low:,}..{high:,}; got {text}")
        return value
    return parse


def path_arg(text: str) -> str:
    """An argparse type: a file or folder path, which must not be empty.

    An empty path would otherwise mean "no file" to some options (nothing written, silently)
    and the current folder to others (a training run written into it).
    """
    if not text:
        raise argparse.ArgumentTypeError("must be a file or folder path; got an empty string")
    return text


def add_device_argument(parser, where: str, default: str | None = "cpu", default_text: str | None = None,
                        note: str = "") -> None:
    """``--device cpu|gpu`` (:data:`tinylatent.backend.DEVICES`), as every command, example and
    benchmark declares it. ``where`` says what runs on the device; ``default_text`` what a
    ``default`` of None means; ``note`` is a sentence added to the help. The device itself is
    checked when the command starts (:func:`tinylatent.backend.array_module`: one line if CuPy or
    a GPU is missing)."""
    from tinylatent.backend import DEVICES  # here: this module imports only the standard library
    parser.add_argument("--device", choices=DEVICES, default=default,
                        help=f"where {where}: cpu (NumPy) or gpu (CuPy; needs `pip install tinylatent[gpu]`); "
                             f"default {default_text or default}" + (f". {note}" if note else ""))


def check_output_file(path, force: bool, option: str) -> Path:
    """Refuse, before any work, a path that the output file could not (or must not) be written to.

    ``path`` must name a file: not end with a slash, not be a folder, not lie under a file;
    and it must not be an existing file unless ``force`` (nothing a user made is
    overwritten without ``--force``; a stream such as ``/dev/stdout`` is fine). Raises ValueError naming ``option``; returns the path.
    """
    text = os.fspath(path)
    out = Path(text)
    if text.endswith(("/", os.sep)):
        raise ValueError(f"{option} {text} ends with a slash, so it names a folder; give a file name")
    if out.is_dir():
        raise ValueError(f"{option} {text} is a folder; give a file name")
    _refuse_file_ancestor(out, option)
    if out.is_file() and not force:     # a stream such as /dev/stdout or a FIFO loses nothing
        raise ValueError(f"{option} {text} exists; pass --force to replace it (nothing is overwritten without it)")
    return out


def check_optional_output(path, force: bool, option: str = "--json", stdout: str | None = None,
                          metavar: str = "PATH") -> None:
    """An optional output file with ``--force`` (``eval --json FILE``, ``language``/``sample --out``,
    the benchmarks' ``--json PATH``): the path checked by
    :func:`check_output_file` (``stdout``, when given, is the value that prints to standard
    output instead), and ``--force`` refused without a file for it to replace."""
    if path and path != stdout:
        check_output_file(path, force, option)
    elif force:
        raise ValueError(f"--force replaces the {option} file; give it with {option} {metavar}")


def check_output_folder(path, option: str) -> Path:
    """Refuse, before any work, a folder path that is a file or lies under a file. Returns the path."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {os.fspath(path)} is a file, not a folder")
    _refuse_file_ancestor(out, option)
    return out


def _refuse_file_ancestor(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            return


def error_text(exc: BaseException) -> str:
    """One line for an error: an OSError's reason and file, or the exception's own first line."""
    if isinstance(exc, MemoryError):
        return "out of memory: the request is too large for this machine; ask for less"
    if isinstance(exc, UnicodeEncodeError):  # files are UTF-8, so this is the terminal's (or pipe's) encoding
        unshown = exc.object[exc.start:exc.end]
        if all("\udc80" <= character <= "\udcff" for character in unshown):   # bytes of a path, not text
            return (f"a path holds bytes that are not {exc.encoding} text ({unshown!r}), so it cannot be printed; "
                    "give file names in plain text")
        return (f"the output's encoding, {exc.encoding}, cannot show {unshown!r}; "
                "use a UTF-8 locale or set PYTHONIOENCODING=utf-8")
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename is not None else exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quiet_stdout_after_failure() -> None:
    """After a write to standard output failed (a closed pipe, a full disk), point it at the null
    device, so that Python's own flush at exit does not fail again with a second message."""
    if sys.stdout is None:  # closed by the shell (`>&-`): nothing to flush or point anywhere
        return
    try:
        sys.stdout.flush()
        return
    except (OSError, ValueError):
        pass
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's stand-in)
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)


class _DropOutputOnceTheReaderLeaves:
    """Standard output while a command runs: once a write finds its reader gone (a closed pipe,
    ``BrokenPipeError``), the rest of the printing is dropped, and the work goes on."""

    def __init__(self, stream):
        self.stream = stream
        self.reader_left = False

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self.reader_left = True
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.reader_left = True

    def __getattr__(self, name: str):  # fileno, isatty, encoding, ...: the stream's own
        return getattr(self.stream, name)


@contextlib.contextmanager
def stdout_reader_may_leave():
    """Inside: printing to a closed pipe (``script | head -1``) is dropped instead of raising, so a
    script or benchmark whose results are files still writes them and exits 0, as the ``tinylatent``
    commands exit 0. On the way out, standard output is pointed at the null device if its reader
    left (:func:`_quiet_stdout_after_failure`), so that Python's flush at exit does not fail with a
    second message. (The examples and the benchmarks use it.)"""
    stream = sys.stdout
    if stream is None:              # closed by the shell (`>&-`): print() writes nothing already
        yield
        return
    sys.stdout = guarded = _DropOutputOnceTheReaderLeaves(stream)
    try:
        yield
    finally:
        sys.stdout = stream
        guarded.flush()                 # a closed pipe shows here, not in Python's flush at exit
        if guarded.reader_left:
            _quiet_stdout_after_failure()


def run_script(program: str, main) -> int:
    """``main()`` for a script (the examples, the benchmarks), as :func:`main` runs a command: a bad
    setting, an unwritable file or too little memory is one line on stderr and exit status 2,
    Ctrl-C is one line and exit status 130 (what a training run had done is in its checkpoint;
    a SIGTERM while a model trains is the same, with exit status 143: :func:`stopped`),
    and a reader of standard output that leaves early (``| head -1``) stops nothing."""
    ctrl_c_loaded()  # the script has loaded: Ctrl-C is KeyboardInterrupt again (tinylatent._signals)
    try:
        with stdout_reader_may_leave():   # outside it a failed last flush (a full disk) is caught below too
            return int(main() or 0)
    except (ValueError, OSError, MemoryError) as exc:
        print(f"{program}: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return stopped(program, exc)


def stopped(program: str, exc: KeyboardInterrupt) -> int:
    """What a command or script says when Ctrl-C or (while a model trains) SIGTERM stopped it:
    ``<program>: interrupted`` and exit status 130, or ``<program>: terminated`` and 143."""
    if isinstance(exc, Terminated):
        print(f"{program}: terminated", file=sys.stderr)
        return TERMINATED_EXIT_STATUS
    print(f"{program}: interrupted", file=sys.stderr)
    return 130


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tinylatent", description="tinylatent: languages from latent intentions, the exact "
                     "Bayesian oracle, and a from-scratch GPT trained and scored against it.")
    parser.add_argument("--version", action="version", version=f"tinylatent {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports NumPy and the commands: the first few tenths of a second
    except KeyboardInterrupt as exc:
        return stopped("tinylatent", exc)
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        if sys.stdout is not None:  # None when the shell closed it (`>&-`): print() then writes nothing
            sys.stdout.flush()      # a full disk or a closed pipe shows here, not after main has returned
        return code
    except BrokenPipeError:  # e.g. `tinylatent ... | head`: the reader left, which is not an error
        _quiet_stdout_after_failure()
        return 0
    except (ValueError, OSError, MemoryError) as exc:  # OSError: a full disk, a path under a file, ...
        print(f"tinylatent {args.command}: error: {error_text(exc)}", file=sys.stderr)
        if isinstance(exc, OSError):
            _quiet_stdout_after_failure()
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM while a model trains (tinylatent._signals)
        return stopped(f"tinylatent {args.command}", exc)


if __name__ == "__main__":
    raise SystemExit(main())
