"""Atomic writes (``tinylatent._io``): nothing a user made is lost or changed but the content."""
import functools
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinylatent._io import (MAX_JSON_DEPTH, atomic_write, json_depth, json_text, parse_json,
                            remove_leftover_temporaries, write_json, write_text)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_permissions_open_would_give(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "new.txt", "x")
        with open(tmp_path / "by_open.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "new.txt") == _mode(tmp_path / "by_open.txt") == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "shared.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    write_json(path, {"a": 1})
    assert _mode(path) == 0o640
    assert path.read_text() == '{\n  "a": 1\n}\n'


def test_a_symbolic_link_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "data" / "real.txt"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    assert write_text(link, "new") == link
    assert link.is_symlink() and target.read_text() == "new"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("precious")

    def fail(handle):
        handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_folder_is_refused_by_its_own_name(tmp_path):
    (tmp_path / "runs").mkdir()
    for path in (tmp_path / "runs", f"{tmp_path}/new/"):
        with pytest.raises(IsADirectoryError) as error:
            write_text(path, "x")
        assert error.value.filename == str(Path(path))       # not the temporary file's name
    assert not (tmp_path / "new").exists()


def test_a_fifo_is_written_to_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()))
    reader.start()
    write_text(fifo, "through the pipe")
    reader.join(timeout=10)
    assert received == ["through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_folder_that_takes_no_new_file_is_an_error_naming_the_path_asked_for(tmp_path, monkeypatch):
    """The temporary file is an implementation detail: an error creating it names the user's path."""
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".out.json.abc123.tmp"))
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as caught:
        write_json(tmp_path / "out.json", {"a": 1})
    assert caught.value.filename == str(tmp_path / "out.json") and caught.value.errno == 13
    assert list(tmp_path.iterdir()) == []


def test_json_is_valid_json_whatever_the_numbers(tmp_path):
    """NaN and ±inf have no JSON form: they are written as null, not as NaN/Infinity (which
    json.loads reads but strict readers refuse); NumPy numbers and arrays as plain ones."""
    import json
    import numpy as np

    report = {"mean": float("inf"), "low": np.float32("nan"), "counts": np.arange(3), "ok": np.bool_(True),
              "pair": (np.int64(2), -np.inf)}
    expected = {"mean": None, "low": None, "counts": [0, 1, 2], "ok": True, "pair": [2, None]}
    assert json.loads(json_text(report)) == expected
    write_json(tmp_path / "report.json", report)
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the file")) == expected


def test_json_nesting_has_one_limit_on_every_python():
    """MAX_JSON_DEPTH levels parse, one more is refused, and so is nesting too deep for the parser:
    the same on Python 3.11 (whose parser stops near 1,000 levels) as on 3.12 and 3.13 (deeper)."""
    for depth in (1, MAX_JSON_DEPTH):
        assert parse_json("[" * depth + "]" * depth, "f") == functools.reduce(lambda inner, _: [inner], range(depth - 1), [])
    for depth in (MAX_JSON_DEPTH + 1, 1000, 100_000):
        with pytest.raises(ValueError, match=f"^f nests lists or objects too deeply: more than {MAX_JSON_DEPTH} levels"):
            parse_json('{"a": ' * depth + "0" + "}" * depth, "f")


@given(st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
                    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=30))
def test_json_depth_counts_what_json_nests(value):
    """json_depth (an explicit stack) against a recursive count, on what JSON text parses to."""
    def depth(item):
        if isinstance(item, list):
            return 1 + max(map(depth, item), default=0)
        if isinstance(item, dict):
            return 1 + max(map(depth, item.values()), default=0)
        return 0
    assert json_depth(json.loads(json.dumps(value))) == depth(value)


def test_what_a_write_killed_midway_left_is_removed_and_nothing_else(tmp_path):
    """A process killed inside atomic_write (here it ends itself with os._exit) leaves its hidden
    temporary file; remove_leftover_temporaries removes exactly those, not a user's look-alikes."""
    target = tmp_path / "ckpt.npz"
    target.write_bytes(b"the last good checkpoint")
    code = ("import os, sys; from tinylatent._io import atomic_write; "
            "atomic_write(sys.argv[1], lambda handle: (handle.write(b'half a checkpoint'), handle.flush(), os._exit(9)), 'wb')")
    result = subprocess.run([sys.executable, "-c", code, str(target)], cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 9
    leftovers = [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".ckpt.npz.")
    mine = [tmp_path / name for name in (".ckpt.npz.mine.tmp", ".ckpt.npz.abcdefgh.tmp.keep", "ckpt.npz.abcdefgh.tmp",
                                         ".log.jsonl.abcdefgh.tmp", ".ckpt.npz.ABCDEFGH.tmp")]
    for path in mine:
        path.write_text("mine")
    assert remove_leftover_temporaries(target) == leftovers
    assert sorted(tmp_path.iterdir()) == sorted([target, *mine])
    assert target.read_bytes() == b"the last good checkpoint"
    assert remove_leftover_temporaries(tmp_path / "missing" / "ckpt.npz") == []   # no such folder: nothing to do
