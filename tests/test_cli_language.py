"""The language subcommands: real output, --json, and bad input as one line with exit status 2."""
import json
import subprocess
import sys

import pytest

from tinylatent.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_language_writes_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "paper.json"
    code, text, _ = run(capsys, "language", "--preset", "paper", "--eta", "0.02", "--out", str(out))
    assert code == 0 and "K = 6" in text and out.exists()
    before = out.read_text()
    code, _, err = run(capsys, "language", "--preset", "paper", "--out", str(out))
    assert code == 2 and "--force" in err and out.read_text() == before
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
    (["ambiguity", "--language-file", "/nonexistent/lang.json"], "No such file"),
    (["language", "--preset", "english"], "invalid choice"),
    (["posterior"], "required"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment):
    result = subprocess.run([sys.executable, "-m", "tinylatent", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # argparse adds its usage line; ours is one line


@pytest.mark.skipif(__import__("tinylatent.backend").backend.gpu_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [["posterior", "--prompt", "abc"], ["ambiguity", "--messages", "100"]])
def test_asking_for_a_missing_gpu_is_one_line_and_exit_2(command):
    result = subprocess.run([sys.executable, "-m", "tinylatent", *command, "--device", "gpu"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gpu" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_malformed_language_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tinylatent-language", "version": 1, "alph')
    result = subprocess.run([sys.executable, "-m", "tinylatent", "ambiguity", "--language-file", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
