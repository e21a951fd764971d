"""examples/icl_decay.py, run in-process with a tiny budget: its JSON, its claims, its errors."""
import json
import importlib.util
import sys
from pathlib import Path

import pytest

from examples_loader import load_example, run_with_its_reader_gone
from one_line_errors import assert_one_line_error

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "icl_decay.py"
TINY = ["--trials", "5", "--max-examples", "3"]


@pytest.fixture(scope="module")
def icl_decay():
    return load_example("icl_decay")


@pytest.fixture(scope="module")
def report(icl_decay, tmp_path_factory):
    folder = tmp_path_factory.mktemp("icl")
    argv = TINY + ["--out", str(folder), "--json", str(folder / "icl.json")]
    status = icl_decay.main(argv)
    assert status == 0
    # every file it wrote in --out is one that its check before the run knew of (or the --json file)
    checked = {folder / path for path in icl_decay.outputs(icl_decay.parse_args(argv + ["--force"]))}
    written = {path for path in folder.rglob("*") if path.is_file()}
    # the record of what it wrote there, when it wrote anything there (without matplotlib, no plot)
    record = {folder / icl_decay.common.MARKER_FILENAME} if written & checked else set()
    assert written - checked == {folder / "icl.json"} | record
    return json.loads((folder / "icl.json").read_text()), folder


def test_json_has_every_number(report):
    data, _ = report
    assert set(data) >= {"settings", "languages", "paper_comparison", "plot", "seconds"}
    assert data["settings"]["trials"] == 5 and data["settings"]["max_examples"] == 3
    assert data["settings"]["eta"] == [0.0, 0.02, 0.04]
    assert len(data["languages"]) == 4 * 3                      # four languages × three noise levels
    for result in data["languages"]:
        assert set(result) >= {"language", "preset", "eta", "theorem_applies", "rows", "decay_fit", "mean_message_ambiguity"}
        assert [row["m"] for row in result["rows"]] == [0, 1, 2, 3]
        assert set(result["decay_fit"]) == {"slope", "intercept", "rate", "n_points"}
        for row in result["rows"]:
            error = row["bayes_error"]
            assert 0.0 <= error["low"] <= error["mean"] <= error["high"] <= 1.0
            assert "exact Bayes" in row["kl"]
    comparison = data["paper_comparison"]
    assert comparison["m"] == [1, 2, 3, 4]
    assert comparison["paper_trained_model_kl"]["0.02"] == [0.219, 0.083, 0.077, 0.049]
    assert set(comparison["exact_bayes_kl"]) == {"0", "0.02", "0.04"}


def test_mixture_languages_obey_the_bound_and_the_error_falls(report):
    data, _ = report
    mixtures = [r for r in data["languages"] if r["preset"].endswith("-mixture")]
    assert mixtures and all(r["theorem_applies"] for r in mixtures)
    for result in mixtures:
        for row in result["rows"]:
            assert row["bound_holds_every_prompt"] is True
            assert row["bayes_error"]["mean"] <= row["bound_mean"] + 1e-12
        errors = [row["bayes_error"]["mean"] for row in result["rows"]]
        assert errors[-1] <= errors[0]                           # non-increasing-ish: the last ≤ the first
        assert all(later <= 1.5 * earlier + 1e-12 for earlier, later in zip(errors, errors[1:]))
    noisy = next(r for r in mixtures if r["preset"] == "paper-noisy-first-mixture" and r["eta"] == 0.04)
    assert noisy["rows"][0]["bayes_error"]["mean"] > 0.0 and noisy["decay_fit"]["rate"] < 1.0


def test_paper_language_findings(report):
    """docs/claims.md §8: the faithful first letter reveals θ (error exactly 0 at every η); the
    circular chain gives no bound (the theorem does not apply)."""
    data, _ = report
    for result in data["languages"]:
        if result["preset"] in ("paper", "paper-mixture"):
            assert all(row["bayes_error"]["mean"] == 0.0 for row in result["rows"])
        if result["preset"] in ("paper", "paper-noisy-first"):
            assert not result["theorem_applies"]
            assert all(row["bound_mean"] is None for row in result["rows"])
    for values in data["paper_comparison"]["exact_bayes_kl"].values():
        assert all(abs(value) < 1e-12 for value in values)    # the exact reader hits the paper's target


def test_table_and_plot_messages(icl_decay, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # as if matplotlib were not installed
    assert icl_decay.main(TINY + ["--eta", "0.02", "--language", "paper-noisy-first-mixture", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== paper-noisy-first-mixture" in out and "fitted decay" in out
    assert "paper: trained model" in out and "ours: exact Bayes" in out
    assert "plot skipped" in out and "pip install tinylatent[plot]" in out
    assert not (tmp_path / "icl_decay.png").exists()


def test_plot_is_saved_when_matplotlib_is_installed(icl_decay, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert icl_decay.main(TINY + ["--eta", "0.04", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "icl_decay.png").stat().st_size > 0
    assert f"plot saved to {tmp_path / 'icl_decay.png'}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--eta", "-0.1"], "--eta must be finite and ≥ 0"),
    (["--eta", "nan"], "--eta must be finite and ≥ 0"),
    (["--trials", "0"], "--trials must be at least 2"),
    (["--trials", "many"], "invalid int value"),
    (["--max-examples", "0"], "--max-examples must be at least 1"),
    (["--language", "english"], "invalid choice"),
    (["--query-letters", "100"], "--query-letters must be in 1..21"),
    (["--eta", "-1e-3"], "--eta must be finite and ≥ 0; got -0.001"),     # a value, not an unknown option
    (["--out", ""], "--out: must be a file or folder path; got an empty string"),
    (["--json", ""], "--json: must be a file or folder path; got an empty string"),
    (["--model", ""], "--model: must be a file or folder path; got an empty string"),
])
def test_bad_options_exit_2_with_one_line(icl_decay, capsys, argv, message):
    assert_one_line_error(capsys, icl_decay.main, argv, message, nothing_printed=True, program=icl_decay.PROGRAM)


def test_library_value_errors_are_one_line(icl_decay, capsys, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ValueError("something the library rejected")
    monkeypatch.setattr(icl_decay.th, "sample_icl_tasks", broken)
    assert icl_decay.main(TINY + ["--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["icl_decay.py: error: something the library rejected"]


def test_a_trained_models_curve_is_added_beside_the_oracles(icl_decay, tmp_path):
    """--model CHECKPOINT: the model's KL column for its own language; prompts past its context are marked."""
    import numpy as np
    from tinylatent.gpt import GPTConfig
    from tinylatent.language import preset
    from tinylatent.train import TrainConfig, train

    language = preset("paper-noisy-first-mixture", 0.02)
    config = GPTConfig(vocab_size=19, context_length=64, n_layer=1, n_head=2, d_model=16)
    train(language, config, TrainConfig(steps=3, batch_size=4, eval_windows=4, seed=0), tmp_path / "run", progress=False)
    out = tmp_path / "icl.json"
    status = icl_decay.main(["--trials", "5", "--max-examples", "3", "--language", "paper-noisy-first-mixture",
                             "paper", "--eta", "0.02", "--model", str(tmp_path / "run" / "ckpt.npz"),
                             "--out", str(tmp_path), "--json", str(out)])
    assert status == 0
    data = json.loads(out.read_text())
    mixture, paper = data["languages"]
    rows = mixture["rows"]
    # m = 0..2 fit in 64 tokens (1 + 22 m + 1), m = 3 (68 tokens) does not
    assert [row["kl"]["model"] is None for row in rows] == [False, False, False, True]
    for row in rows[:3]:
        assert np.isfinite(row["kl"]["model"]["mean"]) and row["kl"]["model"]["mean"] >= 0.0
    assert "model" not in paper["rows"][0]["kl"]              # trained on another language: no curve there
    assert data["settings"]["model"] == language.name


def test_model_and_train_are_exclusive(icl_decay, capsys):
    assert_one_line_error(capsys, icl_decay.main, ["--model", "x.npz", "--train"], "not both",
                          nothing_printed=True, program=icl_decay.PROGRAM)


def test_output_paths_are_checked_before_anything_is_computed(icl_decay, tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text("mine")
    for argv, message in ((["--json", str(mine)], "exists; pass --force"),
                          (["--json", str(mine / "x.json")], "is a file, not a folder"),
                          (["--out", str(mine)], "is a file, not a folder")):
        assert_one_line_error(capsys, icl_decay.main, TINY + argv, message, nothing_printed=True)
    assert mine.read_text() == "mine"
    assert icl_decay.main(TINY + ["--language", "paper", "--eta", "0", "--out", str(tmp_path), "--json", str(mine),
                                  "--force"]) == 0
    assert json.loads(mine.read_text())["settings"]["trials"] == 5


def test_a_trained_model_of_other_settings_names_its_folder_and_the_fix(icl_decay, tmp_path, capsys):
    argv = ["--train", "--train-steps", "1", "--language", "paper-mixture", "--eta", "0", "--trials", "2",
            "--max-examples", "1", "--out", str(tmp_path)]
    assert icl_decay.main(argv) == 0
    capsys.readouterr()
    assert icl_decay.main(argv + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "icl_decay_model_" in err and "seed 0 -> 1" in err and "choose another --out" in err


def test_a_users_plot_or_model_in_out_is_refused_unless_force(icl_decay, tmp_path, capsys):
    """Nothing a user made is replaced: the plot, and with --train the model's folder, are this script's
    files only in a folder an earlier run of it made (examples/_common.py, check_outputs)."""
    train = ["--train", "--train-steps", "1", "--language", "paper-mixture", "--eta", "0"]
    model = tmp_path / icl_decay.model_folder(icl_decay.parse_args(train + ["--out", str(tmp_path)])) / "ckpt.npz"
    for name in ("icl_decay.png", model):
        mine = tmp_path / name
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.write_bytes(b"mine")
        err = assert_one_line_error(capsys, icl_decay.main, TINY + train + ["--out", str(tmp_path)], f"{mine} exists",
                                    nothing_printed=True, program=icl_decay.PROGRAM)
        assert "pass --force" in err and mine.read_bytes() == b"mine"
        mine.unlink()
    (tmp_path / "icl_decay.png").write_bytes(b"mine")
    assert icl_decay.main(TINY + ["--language", "paper", "--eta", "0", "--out", str(tmp_path), "--force"]) == 0
    plotted = importlib.util.find_spec("matplotlib") is not None   # without matplotlib no plot is written
    assert ((tmp_path / "icl_decay.png").read_bytes() != b"mine") == plotted
    # the plot it wrote is its own now; one it did not write is still the user's
    assert icl_decay.main(TINY + ["--language", "paper", "--eta", "0", "--out", str(tmp_path)]) == (0 if plotted else 2)


def test_a_closed_output_pipe_stops_nothing(tmp_path):
    """`icl_decay.py | head -1`: once the reader has gone the printing is dropped; the JSON is still written, exit 0."""
    result = run_with_its_reader_gone([str(EXAMPLE), *TINY, "--language", "paper", "--eta", "0",
                                       "--out", str(tmp_path), "--json", str(tmp_path / "icl.json")])
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads((tmp_path / "icl.json").read_text())["settings"]["trials"] == 5
