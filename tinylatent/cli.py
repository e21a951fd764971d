"""The ``tinylatent`` command line.

Each group of subcommands lives in its own module with a ``register(subparsers)``
function that adds its parsers and sets ``func`` on each (``func(args) -> int``).
This file only assembles them and turns errors into one line on stderr and exit status 2:
a user who typed something wrong sees what was wrong and what is allowed, never a
traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from tinylatent import __version__

# Modules that register subcommands, in the order they appear in ``--help``.
COMMAND_MODULES = [
    "tinylatent.cli_language",   # language, sample, ambiguity, posterior
    "tinylatent.cli_train",      # train, generate
    "tinylatent.cli_eval",       # eval
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinylatent", description="tinylatent: languages from latent intentions, the exact "
                     "Bayesian oracle, and a from-scratch GPT trained and scored against it.")
    parser.add_argument("--version", action="version", version=f"tinylatent {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        message = str(exc) if not isinstance(exc, OSError) else f"{exc.strerror}: {exc.filename}"
        print(f"tinylatent {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `tinylatent ... | head`: the reader left, which is not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"tinylatent {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
