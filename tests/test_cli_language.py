"""The language subcommands: real output, --json, and bad input as one line with exit status 2."""
import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from one_line_errors import assert_one_line_error
from tinylatent import cli_language
from tinylatent._signals import Terminated
from tinylatent.cli import main, run_script
from tinylatent.language import paper_language


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_language_writes_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "paper.json"
    code, text, _ = run(capsys, "language", "--preset", "paper", "--eta", "0.02", "--out", str(out))
    assert code == 0 and "K = 6" in text and out.exists()
    before = out.read_text()
    assert_one_line_error(capsys, main, ["language", "--preset", "paper", "--out", str(out)], "--force",
                          nothing_printed=True, program="tinylatent language")
    assert out.read_text() == before
    code, text, _ = run(capsys, "language", "--language-file", str(out), "--json")
    assert code == 0 and json.loads(text)["n_intentions"] == 6
    code, text, _ = run(capsys, "language", "--random", "--intentions", "2", "--letters", "3", "--json")
    assert code == 0 and json.loads(text)["vocab_size"] == 4


def test_sample_writes_one_message_per_line(tmp_path, capsys):
    out = tmp_path / "corpus.txt"
    code, _, _ = run(capsys, "sample", "--messages", "20", "--seed", "3", "--out", str(out))
    lines = out.read_text().splitlines()
    assert code == 0 and len(lines) == 20 and all(len(line) == 21 for line in lines)
    code, text, _ = run(capsys, "sample", "--messages", "20", "--seed", "3", "--json")
    assert json.loads(text)["tokens"] == 20 * 22


def test_ambiguity_and_posterior(capsys):
    code, text, _ = run(capsys, "ambiguity", "--eta", "0.02", "--messages", "2000", "--json")
    report = json.loads(text)
    assert code == 0 and report["method"] == "sampled" and 0.03 < report["map_error"]["value"] < 0.1
    code, text, _ = run(capsys, "posterior", "--prompt", "abc", "--json")
    result = json.loads(text)
    assert code == 0 and result["posterior"][0] == 1.0 and abs(sum(result["next_token"].values()) - 1) < 1e-12
    code, text, _ = run(capsys, "posterior", "--prompt", "ab\\nd", "--eta", "0.02", "--phase", "unknown")
    assert code == 0 and "θ = 1: 1.000000" in text


@pytest.mark.parametrize("argv, fragment", [
    (["ambiguity", "--eta", "-1"], "eta"),
    (["posterior", "--prompt", "abz"], "not in the vocabulary"),
    (["posterior", "--prompt", ""], "empty"),
    (["posterior", "--prompt", "abd"], "impossible"),
    (["sample", "--messages", "0"], "--messages"),
    (["sample", "--messages", "10000000000"], "must be an integer in 1..1,000,000"),
    (["ambiguity", "--messages", "1000000000"], "must be an integer in 2..1,000,000"),
    (["language", "--random", "--length", "100000000000"], "must be an integer in 1..10,000"),
    (["language", "--random", "--letters", "63"], "must be an integer in 1..62"),
    (["ambiguity", "--language-file", "/nonexistent/lang.json"], "No such file"),
    (["language", "--preset", "english"], "invalid choice"),
    (["language", "--eta", "-1e-3"], "eta must be a finite number ≥ 0; got -0.001"),   # not "expected one argument"
    (["posterior"], "required"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment):
    result = subprocess.run([sys.executable, "-m", "tinylatent", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"tinylatent {argv[0]}: error: ")


@pytest.mark.skipif(__import__("tinylatent.backend").backend.gpu_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [["posterior", "--prompt", "abc"], ["ambiguity", "--messages", "100"]])
def test_asking_for_a_missing_gpu_is_one_line_and_exit_2(command):
    result = subprocess.run([sys.executable, "-m", "tinylatent", *command, "--device", "gpu"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gpu" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_every_command_takes_a_device():
    """``--device cpu|gpu`` on every command (the GPU issue), a new one included."""
    from tinylatent.cli import build_parser
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    assert set(subparsers.choices) == {"language", "sample", "ambiguity", "posterior", "train", "generate", "eval"}
    for name, parser in subparsers.choices.items():
        device = [action for action in parser._actions if "--device" in action.option_strings]
        # train's default None: cpu for a fresh run, the checkpoint's device with --resume
        assert device and device[0].choices == ("cpu", "gpu") and device[0].default in ("cpu", None), name


@pytest.mark.skipif(__import__("tinylatent.backend").backend.gpu_available(), reason="this machine has a GPU")
def test_every_command_says_in_one_line_that_the_gpu_is_missing_and_writes_nothing(tmp_path, capsys):
    tiny = ["--n-layer", "1", "--n-head", "2", "--d-model", "16", "--context", "16", "--batch-size", "4",
            "--eval-windows", "4", "--no-progress"]
    checkpoint = tmp_path / "run" / "ckpt.npz"
    assert main(["train", "--steps", "1", "--out", str(checkpoint.parent), *tiny]) == 0
    capsys.readouterr()
    before = sorted(tmp_path.rglob("*"))
    for command in (["language", "--out", str(tmp_path / "language.json")],
                    ["sample", "--messages", "3", "--out", str(tmp_path / "corpus.txt")],
                    ["ambiguity", "--messages", "100"], ["posterior", "--prompt", "abc"],
                    ["train", "--steps", "1", "--out", str(tmp_path / "gpu_run"), *tiny],
                    ["generate", "--checkpoint", str(checkpoint), "--tokens", "4"],
                    ["eval", "--checkpoint", str(checkpoint), "--windows", "2"]):
        assert_one_line_error(capsys, main, [*command, "--device", "gpu"], "device 'gpu' needs CuPy",
                              nothing_printed=True, program=f"tinylatent {command[0]}")
    assert sorted(tmp_path.rglob("*")) == before


def test_malformed_language_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tinylatent-language", "version": 1, "alph')
    result = subprocess.run([sys.executable, "-m", "tinylatent", "ambiguity", "--language-file", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_backslash_n_types_the_delimiter_whatever_it_is(tmp_path, capsys):
    """posterior and generate read the two characters \\n the same way: as the language's
    delimiter (posterior used to read them as a newline, generate not at all, with another one)."""
    letters_z = {**paper_language(0.0).to_dict(), "delimiter": "z"}
    (tmp_path / "z.json").write_text(json.dumps(letters_z), encoding="utf-8")
    as_text = run(capsys, "posterior", "--language-file", str(tmp_path / "z.json"), "--prompt", "abcaaaaaaaaaaaaaaaaaa\\nab")
    as_delimiter = run(capsys, "posterior", "--language-file", str(tmp_path / "z.json"), "--prompt", "abcaaaaaaaaaaaaaaaaaazab")
    assert as_text[0] == as_delimiter[0] == 0
    assert as_text[1].replace("\\n", "z") == as_delimiter[1]


def test_files_are_utf8_whatever_the_locale(tmp_path):
    """A language whose letters are not ASCII, written and read back, and its corpus sampled, in the
    C locale with Python's UTF-8 mode off: there the default encoding of files is ASCII (standard
    output, which shows the letters too, is set to UTF-8: this test is about the files)."""
    greek = {**paper_language(0.02).to_dict(), "alphabet": "αβγδεζηθικλμνξοπρσ"}
    (tmp_path / "greek.json").write_text(json.dumps(greek, ensure_ascii=False), encoding="utf-8")
    ascii_locale = {**_ascii_locale(), "PYTHONIOENCODING": "utf-8"}
    for argv in (["language", "--language-file", tmp_path / "greek.json", "--out", tmp_path / "copy.json"],
                 ["sample", "--language-file", tmp_path / "copy.json", "--messages", "3",
                  "--out", tmp_path / "corpus.txt"]):
        result = subprocess.run([sys.executable, "-m", "tinylatent", *argv], capture_output=True, text=True,
                                env=ascii_locale)
        assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "copy.json").read_text(encoding="utf-8"))["alphabet"] == greek["alphabet"]
    corpus = (tmp_path / "corpus.txt").read_text(encoding="utf-8").split("\n")
    assert len([line for line in corpus if line]) == 3 and set("".join(corpus)) <= set(greek["alphabet"])


def _ascii_locale() -> dict:
    """An environment whose standard output is ASCII (the C locale with Python's UTF-8 mode off, on
    glibc), or a skip where this platform's C locale is not ASCII."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONIOENCODING"}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdout.encoding)"], capture_output=True,
                           text=True, env=env)
    if probe.stdout.strip().lower() not in ("ascii", "ansi_x3.4-1968", "us-ascii"):
        pytest.skip(f"the C locale's encoding here is {probe.stdout.strip()!r}, not ASCII")
    return env


def test_a_terminal_that_cannot_show_the_output_is_one_line_that_says_what_to_do():
    ascii_locale = _ascii_locale()
    result = subprocess.run([sys.executable, "-m", "tinylatent", "ambiguity", "--messages", "100"],
                            capture_output=True, text=True, env=ascii_locale)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("tinylatent ambiguity: error: the output's encoding, ascii, cannot show '\\u03b5'; "
                                    "use a UTF-8 locale or set PYTHONIOENCODING=utf-8"), result.stderr


def test_a_path_that_is_not_text_is_named_as_such():
    """A file name holding a byte that is not UTF-8 reaches Python as a lone surrogate; printing it
    fails even on a UTF-8 terminal, and "use a UTF-8 locale" would be wrong advice there."""
    from tinylatent.cli import error_text
    exc = UnicodeEncodeError("utf-8", "wrote v\udcff.json", 7, 8, "surrogates not allowed")
    assert error_text(exc) == ("a path holds bytes that are not utf-8 text ('\\udcff'), so it cannot be printed; "
                               "give file names in plain text")


def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    afile = tmp_path / "f.txt"
    afile.write_text("mine")
    for argv, message in ((["sample", "--messages", "3", "--out", str(afile / "x")], "is a file, not a folder"),
                          (["language", "--out", str(tmp_path / "newout") + "/"], "names a folder"),
                          (["language", "--out", str(tmp_path)], "is a folder"),
                          (["sample", "--messages", "3", "--out", str(afile)], "exists; pass --force"),
                          (["sample", "--messages", "3", "--force"], "--force replaces the --out file"),
                          (["language", "--force"], "--force replaces the --out file")):
        assert_one_line_error(capsys, main, argv, message, nothing_printed=True, program="tinylatent " + argv[0])
    assert afile.read_text() == "mine" and not (tmp_path / "newout").exists()


@pytest.mark.parametrize("argv", [["language", "--out", ""], ["sample", "--out", ""],
                                  ["ambiguity", "--language-file", ""], ["train", "--language-file", ""],
                                  ["train", "--out", ""], ["generate", "--checkpoint", ""],
                                  ["eval", "--checkpoint", ""], ["eval", "--checkpoint", "x.npz", "--json", ""]])
def test_an_empty_path_is_refused(argv, capsys, tmp_path, monkeypatch):
    # An empty --out used to write nothing (language, sample) or train into the current folder (train).
    monkeypatch.chdir(tmp_path)
    option = argv[-2]
    assert_one_line_error(capsys, main, argv, f"argument {option}: must be a file or folder path; got an empty string",
                          nothing_printed=True, program="tinylatent " + argv[0])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["language"], ["sample", "--messages", "2"], ["ambiguity", "--messages", "100"],
                                     ["posterior", "--prompt", "ab"]])
def test_a_language_file_is_not_combined_with_a_preset_or_eta(tmp_path, capsys, command):
    path = tmp_path / "lang.json"
    assert run(capsys, "language", "--eta", "0.02", "--out", str(path))[0] == 0
    for extra, named in ((["--eta", "0.04"], "--eta"), (["--preset", "paper-mixture"], "--preset")):
        err = assert_one_line_error(capsys, main, [*command, "--language-file", str(path), *extra], named,
                                    nothing_printed=True, program="tinylatent " + command[0])
        assert "--language-file" in err
    assert run(capsys, *command, "--language-file", str(path))[0] == 0


def test_random_language_options_need_random(capsys):
    err = assert_one_line_error(capsys, main, ["language", "--intentions", "4", "--seed", "2"], "--intentions, --seed",
                                nothing_printed=True, program="tinylatent language")
    assert "--random" in err
    assert_one_line_error(capsys, main, ["language", "--random", "--preset", "paper"], "--preset",
                          nothing_printed=True, program="tinylatent language")
    code, text, _ = run(capsys, "language", "--random", "--intentions", "4", "--eta", "0.1", "--json")
    assert code == 0 and json.loads(text)["n_intentions"] == 4


class FullDisk:
    """A standard output whose writes fail as a full disk's do."""

    def write(self, text):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass


def test_a_failed_write_to_standard_output_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", FullDisk())
    code = main(["sample", "--messages", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err == "tinylatent sample: error: No space left on device\n"


def test_a_closed_pipe_is_quiet():
    reader = subprocess.Popen([sys.executable, "-m", "tinylatent", "sample", "--messages", "200000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.read(10)
    reader.stdout.close()
    with reader.stderr:
        assert reader.wait(timeout=120) == 0 and reader.stderr.read() == b""


def test_a_closed_standard_output_is_not_an_error(tmp_path):
    """`tinylatent language --out FILE >&-`: Python starts with sys.stdout None; the file is written."""
    result = subprocess.run([sys.executable, "-m", "tinylatent", "language", "--out", tmp_path / "lang.json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.close(1))
    assert result.returncode == 0 and result.stderr == "" and (tmp_path / "lang.json").stat().st_size > 0


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    from tinylatent import cli_language

    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(cli_language, "sample_corpus", no_memory)
    assert_one_line_error(capsys, main, ["sample", "--messages", "5"], "out of memory")


@pytest.mark.parametrize("run_it", [lambda: main(["sample", "--messages", "5"]),
                                    lambda: run_script("script.py", lambda: cli_language.sample_corpus())],
                         ids=["command", "script"])
@pytest.mark.parametrize("stop, said, status", [(KeyboardInterrupt, "interrupted", 130), (Terminated, "terminated", 143)],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, run_it, stop, said, status):
    """Ctrl-C in a command (`tinylatent ...`) or a script (an example, a benchmark: cli.run_script);
    and SIGTERM, which training turns into Terminated (a KeyboardInterrupt): "terminated", 143."""
    def interrupted(*args, **kwargs):
        raise stop
    monkeypatch.setattr(cli_language, "sample_corpus", interrupted)
    try:
        code = run_it()
    except KeyboardInterrupt:  # as such it would stop pytest itself
        pytest.fail("the KeyboardInterrupt escaped")
    assert code == status
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err in (f"tinylatent sample: {said}\n", f"script.py: {said}\n")


@pytest.fixture
def sigint_handler_restored():
    """SIGINT's handler as Python's default while the test runs, and as it was afterwards."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_quiet_ctrl_c_while_loading_acts_only_for_the_scripts_of_its_folder(monkeypatch, tmp_path,
                                                                           sigint_handler_restored):
    """A test importing ``examples/_common`` keeps its Ctrl-C; a script of that folder gets the one-line
    handler until run_script gives Ctrl-C back to Python; a Ctrl-C ignored (``cmd &``) stays ignored."""
    from tinylatent import _signals
    _signals.quiet_ctrl_c_while_loading(str(tmp_path))  # __main__ is pytest, not a script in tmp_path
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=str(tmp_path / "script.py")))
    _signals.quiet_ctrl_c_while_loading(str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is _signals._interrupted_while_loading
    assert run_script("script.py", lambda: 0) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _signals.quiet_ctrl_c_while_loading(str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_the_signals_module_loads_nothing_slow():
    """Scripts import tinylatent._signals first, so that a Ctrl-C during the slow imports after it is one line."""
    code = ("import os, signal, sys; before = set(sys.modules); import tinylatent._signals; "
            "sys.exit(sorted(set(sys.modules) - before - {'__future__', 'tinylatent', 'tinylatent._signals'}) or 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            stderr=subprocess.PIPE, text=True)
    assert (result.returncode, result.stderr) == (0, "")


def test_ctrl_c_while_the_command_line_loads_is_one_line_and_exit_130(monkeypatch, capsys):
    """The first tenths of a second import NumPy and the commands (build_parser)."""
    from tinylatent import cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["sample", "--messages", "5"]) == 130
    assert capsys.readouterr().err == "tinylatent: interrupted\n"


ROOT = Path(__file__).resolve().parents[1]


def assert_cites_documents_that_exist(text: str, where: str) -> None:
    """Every docs/*.md that ``text`` names is in the repository (and none is the team's THEORY.md)."""
    assert "THEORY.md" not in text, where
    for name in re.findall(r"docs/\w+\.md", text):
        assert (ROOT / name).exists(), (where, name)


def test_help_points_to_documents_that_exist(capsys):
    for command in ("language", "sample", "ambiguity", "posterior", "train", "generate", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert_cites_documents_that_exist(capsys.readouterr().out, command)


def test_the_examples_and_benchmarks_cite_documents_that_exist():
    for script in [*(ROOT / "examples").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        assert_cites_documents_that_exist(script.read_text(), script.name)
