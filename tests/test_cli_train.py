"""``tinylatent train`` and ``tinylatent generate``, run in-process through ``tinylatent.cli.main``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import one_line_errors
from tinylatent import cli_eval, cli_train
from tinylatent.checkpoint import load_checkpoint
from tinylatent.cli import main
from tinylatent.language import paper_language, save_language

# A tiny GPT on the paper's language (19 tokens), so each command takes well under a second.
TINY = ["--model", "small", "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--context", "16",
        "--batch-size", "4", "--eval-windows", "8", "--eval-interval", "2", "--no-progress"]


@pytest.fixture
def trained(tmp_path, capsys):
    """A 5-step run in tmp_path/run; returns the run folder and the JSON summary."""
    out = tmp_path / "run"
    assert main(["train", "--language", "paper", "--eta", "0", "--steps", "5", "--out", str(out), "--json", *TINY]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return out, json.loads(captured.out)


def test_train_writes_a_checkpoint_and_a_log_and_reports_json(trained):
    out, summary = trained
    assert summary["steps"] == 5 and summary["language"] == "paper(eta=0)"
    assert summary["val_loss"] > summary["bayes_val_loss"] > 0
    checkpoint = load_checkpoint(out / "ckpt.npz")
    assert checkpoint.step == 5
    assert checkpoint.model_config.d_model == 16 and checkpoint.model_config.context_length == 16
    assert checkpoint.train_config["batch_size"] == 4
    log_lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log_lines] == [0, 1, 2, 3, 4, 5]


def test_dtype_float64_trains_a_float64_model_that_eval_and_generate_read(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--dtype", "float64", "--out", str(out), "--json", *TINY]) == 0
    capsys.readouterr()
    checkpoint = load_checkpoint(out / "ckpt.npz")
    assert checkpoint.model_config.dtype == "float64"
    assert all(value.dtype == np.float64 for value in checkpoint.params.values())
    assert main(["generate", "--checkpoint", str(out / "ckpt.npz"), "--tokens", "5", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["completion"]) == 5


def test_train_prints_a_readable_summary_without_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "3", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert "for 3 steps" in text and "validation loss" in text and "Bayes" in text and str(out) in text


def test_the_optimiser_options_reach_the_checkpoint_and_the_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "4", "--warmup", "1", "--lr", "1e-3", "--min-lr", "0", "--weight-decay", "0",
                 "--out", str(out), "--json", *TINY]) == 0
    checkpoint = load_checkpoint(out / "ckpt.npz")
    assert checkpoint.train_config["min_lr"] == 0.0 and checkpoint.train_config["weight_decay"] == 0.0
    rates = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()[1:]]
    # one warm-up step, then the cosine from 1e-3 down to 0 over the last 3 (a floor of 1e-4 would give 7.75e-4, 3.25e-4)
    assert rates == pytest.approx([5e-4, 1e-3, 7.5e-4, 2.5e-4])
    assert checkpoint.optimizer_state["weight_decay"] == 0.0


def test_short_windows_reach_the_checkpoint_and_the_token_count(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--short-windows", "5", "--short-context", "3", "--out", str(out),
                 "--json", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out)
    checkpoint = load_checkpoint(out / "ckpt.npz")
    assert checkpoint.train_config["short_windows"] == 5 and checkpoint.train_config["short_context"] == 3
    config = checkpoint.train_config
    assert summary["tokens_seen"] == 2 * (config["batch_size"] * config["context_length"] + 5 * 3)


def test_generate_continues_a_prompt_with_letters_of_the_vocabulary(trained, capsys):
    out, _ = trained
    args = ["generate", "--checkpoint", str(out / "ckpt.npz"), "--prompt", "abc", "--tokens", "30", "--seed", "4"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt"] == "abc" and result["step"] == 5
    assert len(result["completion"]) == 30
    assert set(result["completion"]) <= set(paper_language(0.0).vocabulary)
    assert main(args) == 0  # plain text: the prompt and the same completion (same seed)
    assert capsys.readouterr().out == "abc" + result["completion"] + ("" if result["completion"].endswith("\n") else "\n")


def test_generate_reads_backslash_n_as_the_delimiter(trained, capsys):
    out, _ = trained
    assert main(["generate", "--checkpoint", str(out / "ckpt.npz"), "--prompt", "ab\\nc", "--tokens", "0",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "ab\nc"


def test_resume_from_the_command_line_needs_only_the_folder(trained, capsys):
    out, _ = trained
    assert main(["train", "--out", str(out), "--resume", "--steps", "7", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from_step"] == 5 and summary["steps"] == 7
    assert load_checkpoint(out / "ckpt.npz").step == 7


def test_resume_takes_the_documented_default_typed_out(trained, capsys):
    """--min-lr defaults to a tenth of --lr: 6e-4 / 10 = 5.9999999999999995e-05 is stored. Typing the
    documented 6e-5 on resume is the same run (it used to be refused as a different setting); the
    stored bits are kept, so the run stays bit for bit. A real change is still refused."""
    out, _ = trained
    stored = load_checkpoint(out / "ckpt.npz").train_config["min_lr"]
    assert stored == 6e-4 / 10 != 6e-5
    assert main(["train", "--out", str(out), "--resume", "--steps", "6", "--min-lr", "6e-5", "--no-progress"]) == 0
    assert load_checkpoint(out / "ckpt.npz").train_config["min_lr"] == stored
    capsys.readouterr()
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume", "--steps", "7", "--min-lr", "7e-5"],
                          "min_lr 5.9999999999999995e-05 -> 7e-05")


def test_train_from_a_language_file(tmp_path, capsys):
    path = save_language(paper_language(0.02), tmp_path / "lang.json")
    assert main(["train", "--language-file", str(path), "--steps", "3", "--out", str(tmp_path / "run"),
                 "--json", *TINY]) == 0
    assert json.loads(capsys.readouterr().out)["language"] == "paper(eta=0.02)"


def assert_one_line_error(capsys, argv, message: str) -> None:
    one_line_errors.assert_one_line_error(capsys, main, argv, message)


@pytest.mark.parametrize("argv, message", [
    (["train", "--eta", "-1"], "eta must be a finite number ≥ 0; got -1.0"),
    (["train", "--language", "klingon"], "invalid choice: 'klingon'"),
    (["train", "--steps", "0"], "must be a positive integer"),
    (["train", "--corpus-messages", "10"], "--corpus-messages sizes the corpus of --data corpus; this run's data is 'stream'"),
    (["train", "--short-context", "4"], "--short-context is the length of the --short-windows windows; this run has none"),
    (["train", "--lr", "-0.1", "--steps", "3"], "max_lr must be a positive number"),
    (["train", "--lr", "1e-3", "--min-lr", "2e-3", "--steps", "3"], "min_lr must be a number in [0, max_lr]"),
    (["train", "--weight-decay", "-0.1", "--steps", "3"], "weight_decay must be a non-negative number"),
    (["train", "--n-head", "3", "--d-model", "16"], "must be divisible by n_head"),
    (["train", "--short-windows", "-1"], "must be an integer in 0..1,024; got -1"),
    (["train", "--context", "100000000"], "must be an integer in 1..2,048; got 100000000"),
    (["train", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["generate", "--checkpoint", "x", "--tokens", "10000000000"], "must be an integer in 0..1,000,000"),
    (["eval", "--checkpoint", "x", "--windows", "1"], "must be an integer in 2..100,000; got 1"),
    (["train", "--short-windows", "4", "--short-context", "500", "--steps", "3"],
     "short_context (500) must be at most the context_length"),
    (["train", "--language-file", "/no/such/language.json"], "No such file or directory"),
    (["generate", "--checkpoint", "/no/such/ckpt.npz"], "No such file or directory: /no/such/ckpt.npz"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert_one_line_error(capsys, [*argv, "--out", str(tmp_path / "run")] if argv[0] == "train" else argv, message)


def test_a_prompt_outside_the_vocabulary_is_one_line_and_exit_2(trained, capsys):
    out, _ = trained
    assert_one_line_error(capsys, ["generate", "--checkpoint", str(out / "ckpt.npz"), "--prompt", "abz"],
                          "character 'z' is not in the vocabulary")


def test_a_corrupted_checkpoint_is_one_line_and_exit_2(trained, capsys):
    out, _ = trained
    path = out / "ckpt.npz"
    path.write_bytes(path.read_bytes()[:1000])
    assert_one_line_error(capsys, ["generate", "--checkpoint", str(path)], "corrupted or truncated")


def test_resume_problems_are_one_line_and_exit_2(trained, tmp_path, capsys):
    out, _ = trained
    assert_one_line_error(capsys, ["train", "--out", str(tmp_path / "empty"), "--resume"], "nothing to resume")
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume", "--batch-size", "2"],
                          "batch_size 4 -> 2")
    assert_one_line_error(capsys, ["train", "--out", str(out), "--steps", "3", *TINY], "already exists")
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume", "--dtype", "float64"],
                          "dtype 'float32' -> 'float64'")
    assert_one_line_error(capsys, ["train", "--language-file", "x.json", "--eta", "0.1"],
                          "cannot be combined with --language-file")


@pytest.mark.parametrize("folder, extra", [("log.jsonl", ["--force"]), ("ckpt.npz", ["--resume"])])
def test_a_folder_in_place_of_the_runs_files_is_refused_before_any_work(tmp_path, capsys, folder, extra):
    """It used to fail only after the validation windows' Bayes loss, naming a file the user never gave."""
    (tmp_path / folder).mkdir()
    assert_one_line_error(capsys, ["train", "--out", str(tmp_path), *TINY, *extra],
                          f"{tmp_path / folder} is a folder, where the run writes its")


def test_eval_refuses_an_existing_json_file_before_it_evaluates(trained, capsys):
    """``eval --json FILE`` once overwrote the checkpoint it was given; now it needs --force, and it says so at once."""
    out, _ = trained
    checkpoint = out / "ckpt.npz"
    before = checkpoint.read_bytes()
    assert_one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), "--json", str(checkpoint)],
                          "exists; pass --force")
    assert checkpoint.read_bytes() == before
    assert_one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), "--json", str(checkpoint / "x")],
                          "is a file, not a folder")
    assert_one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), "--json", str(out)], "is a folder")
    assert_one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), "--force"], "--json FILE")
    report = out / "eval.json"
    report.write_text("mine")
    assert main(["eval", "--checkpoint", str(checkpoint), "--windows", "2", "--prompts", "2", "--max-letters", "1",
                 "--max-examples", "0", "--json", str(report), "--force"]) == 0
    assert json.loads(report.read_text())["step"] == 5


def test_a_file_that_is_not_a_checkpoint_is_named_plainly(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    for command in ("eval", "generate"):
        assert_one_line_error(capsys, [command, "--checkpoint", str(text)], "a checkpoint is a .npz (zip) archive")
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    assert_one_line_error(capsys, ["eval", "--checkpoint", str(npy)], "a checkpoint is a .npz (zip) archive")


def test_eval_tables_print_no_negative_zero():
    assert cli_eval._estimate({"mean": -1e-7, "low": -0.00004, "high": 0.5}) == "0.0000 [0.0000, 0.5000]"
    assert cli_eval._estimate({"mean": -0.2, "low": -0.3, "high": -0.00006}) == "-0.2000 [-0.3000, -0.0001]"


def test_train_out_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys):
    afile = tmp_path / "f.txt"
    afile.write_text("mine")
    assert_one_line_error(capsys, ["train", "--steps", "3", "--out", str(afile), *TINY], "is a file, not a folder")
    assert_one_line_error(capsys, ["train", "--steps", "3", "--out", str(afile / "sub"), *TINY],
                          "is a file, not a folder")
    assert afile.read_text() == "mine"


def test_a_fresh_run_keeps_an_old_log_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 0}\n')
    assert_one_line_error(capsys, ["train", "--steps", "2", "--out", str(out), *TINY], "pass --force")
    assert (out / "log.jsonl").read_text() == '{"step": 0}\n'
    assert main(["train", "--steps", "2", "--out", str(out), "--force", "--json", *TINY]) == 0
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_resume_with_fewer_steps_than_done_says_so(trained, capsys):
    out, _ = trained
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume", "--steps", "3"],
                          "at step 5, already past the 3 steps asked for")
    assert_one_line_error(capsys, ["train", "--out", str(out), "--resume", "--force"], "give one or the other")


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(cli_train, "train", no_memory)
    assert_one_line_error(capsys, ["train", "--steps", "2", "--out", str(tmp_path / "run"), *TINY], "out of memory")


@pytest.mark.skipif(os.name != "posix", reason="sends SIGTERM (POSIX)")
def test_sigterm_saves_a_checkpoint_says_terminated_and_exits_143(tmp_path):
    """``kill PID`` (a scheduler's time limit, a container's stop) during `tinylatent train`: the step
    in progress finishes and is saved, one line says so, exit status 143; --resume then finishes the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tinylatent", "train", "--steps", "100000", "--out", str(out), *TINY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = out / "log.jsonl"
        deadline = time.monotonic() + 120.0
        while not (log.exists() and log.read_text().count("\n") >= 3):   # step 0 and two training steps
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert (process.returncode, stderr) == (143, "tinylatent train: terminated\n")   # --no-progress: only that line
    saved = load_checkpoint(out / "ckpt.npz")
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert saved.step >= 2 and logged == list(range(saved.step + 1))   # the checkpoint is the log's last step
    finish = max(saved.step, 100) + 2   # the run warms up for 100 steps: a shorter one is refused
    assert main(["train", "--out", str(out), "--resume", "--steps", str(finish), "--no-progress"]) == 0
    assert load_checkpoint(out / "ckpt.npz").step == finish
