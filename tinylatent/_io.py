"""Atomic file writes (a crash mid-write never destroys the file that was there), JSON that
any reader accepts (NumPy numbers as Python ones, NaN and ±inf as null), and the JSON reader
every tinylatent file goes through (:func:`parse_json`)."""
from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import numpy as np


def _mode_for(path: Path) -> int:
    """The permission bits the written file gets: those of the file it replaces, or for a
    new file what ``open()`` would give (0o666 less the process's umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only way to read the umask is to set it, so set it back at once
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_name_parts(target: Path) -> tuple:
    """(prefix, suffix) of :func:`atomic_write`'s temporary files for ``target``: hidden, beside it."""
    return f".{target.name}.", ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w") -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temporary file, then rename it in place.

    The temporary file lives in the same folder (so the rename is atomic on POSIX), is
    flushed and fsynced before the rename, and is removed if ``write`` raises; the folder
    is fsynced after the rename. The file keeps the permissions of the one it replaces
    (a new one gets the umask's), and a symbolic link is written through: its target is
    replaced, the link stays. Something that exists but is not a file (a FIFO, a device
    such as ``/dev/stdout``) cannot be replaced and is written to directly; a directory
    (or a path ending in a separator) raises ``IsADirectoryError`` naming it. Returns the
    path written, as given. Text (a mode without ``"b"``) is written as UTF-8, whatever the locale.
    """
    encoding = None if "b" in mode else "utf-8"
    given = Path(path)
    if given.is_dir() or str(path).endswith(("/", os.sep)):
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(given))
    if given.exists() and not given.is_file():       # a FIFO, /dev/stdout, ...: nothing to rename over
        with open(given, mode, encoding=encoding) as handle:
            write(handle)
        return given
    target = Path(os.path.realpath(given))   # through symbolic links, as open(path, "w") would
    target.parent.mkdir(parents=True, exist_ok=True)
    permissions = _mode_for(target)
    try:
        prefix, suffix = _temporary_name_parts(target)
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    except OSError as exc:                  # named by the path asked for, not the temporary file's
        raise type(exc)(exc.errno, exc.strerror, str(given)) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, permissions)     # mkstemp made it 0o600
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(target.parent)
    return given


# What tempfile.mkstemp puts between _temporary_name_parts' prefix and suffix: 8 of these characters.
_TEMPORARY_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def remove_leftover_temporaries(path: str | os.PathLike) -> list:
    """Remove the temporary files that :func:`atomic_write` of ``path`` left behind when its process
    was killed mid-write (SIGKILL, the out-of-memory killer, a power cut): ``.<name>.XXXXXXXX.tmp``
    beside it, exactly as ``mkstemp`` names them. A checkpoint's can be as large as the checkpoint.
    Nothing else is touched. Returns the paths removed.

    Only for a file that one process writes at a time: another process's write in progress would
    lose its temporary file and fail.
    """
    target = Path(os.path.realpath(path))
    prefix, suffix = _temporary_name_parts(target)
    removed = []
    for candidate in target.parent.glob(f"{prefix}*{suffix}") if target.parent.is_dir() else ():
        middle = candidate.name[len(prefix):-len(suffix)]
        if len(middle) == 8 and set(middle) <= _TEMPORARY_NAME_CHARACTERS and candidate.is_file() \
                and not candidate.is_symlink():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def json_ready(value: Any) -> Any:
    """``value`` in JSON's own types: NumPy scalars and arrays as Python numbers and lists, tuples as
    lists, and NaN and ±inf, which JSON has no numbers for, as null (Python's ``json`` would write
    ``NaN`` and ``Infinity``, which other readers refuse)."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON text, through :func:`json_ready` (so it is valid JSON)."""
    return json.dumps(json_ready(obj), indent=2, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (:func:`json_text`: NaN and ±inf as null), atomically."""
    return atomic_write(path, lambda f: f.write(json_text(obj) + "\n"))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda f: f.write(text))


# An integer of more digits may not convert to a float64 (the largest is about 1.8e308), and
# float(...), math.isfinite(...) and NumPy raise OverflowError on one that does not.
MAX_JSON_INTEGER_DIGITS = 308


def _bounded_int(digits: str) -> int:
    """``json.loads``'s ``parse_int``: the integer, if it has at most ``MAX_JSON_INTEGER_DIGITS`` digits."""
    n_digits = len(digits.lstrip("-"))
    if n_digits > MAX_JSON_INTEGER_DIGITS:
        raise ValueError(f"holds an integer of {n_digits:,} digits; a number must fit a float64 "
                         f"(at most {MAX_JSON_INTEGER_DIGITS} digits)")
    return int(digits)


# Lists and objects inside each other: a language nests 3 levels, a checkpoint's metadata a few
# more. The limit is tinylatent's own, so a file is refused the same way on every Python (3.11's
# parser stops near 1,000 levels with RecursionError; 3.12's goes deeper, 3.13's deeper still).
MAX_JSON_DEPTH = 100


def json_depth(value: Any) -> int:
    """How deep the lists and objects of a parsed JSON value nest (0 for a number or a string),
    walked with an explicit stack, not recursion."""
    deepest = 0
    stack = [(value, 1)] if isinstance(value, (list, dict)) else []
    while stack:
        container, depth = stack.pop()
        deepest = max(deepest, depth)
        items = container.values() if isinstance(container, dict) else container
        stack.extend((item, depth + 1) for item in items if isinstance(item, (list, dict)))
    return deepest


def parse_json(text: str, what: str) -> Any:
    """``json.loads(text)`` for a file tinylatent reads, with every failure a ValueError that
    starts with ``what`` (e.g. the file name): malformed JSON, lists or objects nested more than
    :data:`MAX_JSON_DEPTH` levels deep (or too deep for the parser, which would raise
    RecursionError), or an integer too large for a float64 (which would raise OverflowError
    wherever it is checked or converted)."""
    too_deep = (f"{what} nests lists or objects too deeply: more than {MAX_JSON_DEPTH} levels (a language "
                "nests 3 levels, a checkpoint's metadata a few more)")
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON (truncated or malformed): {exc.msg} "
                         f"(line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ValueError(too_deep) from None
    except ValueError as exc:                                    # from _bounded_int
        raise ValueError(f"{what} {exc}") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(too_deep)
    return value
