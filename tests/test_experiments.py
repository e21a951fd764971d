"""examples/cot_locality.py, instruction_tuning.py and emergence.py: their pieces and their --smoke runs.

The scripts train small GPTs, so a full run belongs to docs/experiments.md; here each one
runs in-process with ``--smoke`` (a few optimiser steps of a 1-layer model) and we check
the JSON it writes, and we check the constructions the experiments stand on against
something independent: the oracle, the language's own matrices, a second training run.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from examples_loader import ROOT, load_example, run_interrupted_while_loading_numpy, run_with_its_reader_gone
from one_line_errors import assert_one_line_error

from tinylatent import cli as tinylatent_cli
from tinylatent.evaluate import OraclePredictor
from tinylatent.gpt import GPT
from tinylatent.language import Language, random_language, sample_messages
from tinylatent.train import RandomStreams, TrainConfig, train



_load = load_example


@pytest.fixture(scope="module")
def cot():
    return _load("cot_locality")


@pytest.fixture(scope="module")
def tuning():
    return _load("instruction_tuning")


@pytest.fixture(scope="module")
def emergence():
    return _load("emergence")


@pytest.fixture(scope="module")
def common(cot):
    return sys.modules["_common"]  # imported by the scripts from examples/


NULLABLE = ("resumed_from_step", "emerged_at", "plot")  # null by design: a fresh run; an ability not reached yet; no matplotlib


def _numbers(value):
    """Every number in a JSON value (None counts as a non-finite number), except under NULLABLE keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in NULLABLE:
                yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        yield value


def _smoke(module, tmp_path_factory, name):
    folder = tmp_path_factory.mktemp(name)
    argv = ["--smoke", "--no-progress", "--out", str(folder), "--json", str(folder / "report.json")]
    status = module.main(argv)
    assert status == 0
    # every file it wrote in --out is one that its check before the run knew of (or the --json file)
    checked = {folder / path for path in module.outputs(module.parse_args(argv + ["--force"]))}
    written = {path for path in folder.rglob("*") if path.is_file()}
    assert written - checked == {folder / "report.json", folder / module.common.MARKER_FILENAME}
    return json.loads((folder / "report.json").read_text()), folder


# ----------------------------------------------------------------------------------------
# The shared read-off: which intention wrote a message
# ----------------------------------------------------------------------------------------

UNAMBIGUOUS = {
    "skip chain": lambda cot, tuning: cot.skip_chain_language(cot.SkipChain(), np.full(5, 0.2), "skip"),
    "paper chains": lambda cot, tuning: tuning.base_language(),
    "random blocks": lambda cot, tuning: random_language(n_intentions=4, n_letters=8, letters_per_intention=2,
                                                         message_length=(2, 5), transition="uniform", seed=3),
}


@pytest.mark.parametrize("which", sorted(UNAMBIGUOUS))
def test_read_off_recovers_the_true_intention_of_sampled_messages(which, cot, tuning, common):
    language = UNAMBIGUOUS[which](cot, tuning)
    rng = np.random.default_rng(0)
    intentions = rng.integers(0, language.n_intentions, size=300)
    messages = sample_messages(language, intentions, rng)
    for length in sorted({len(m) for m in messages}):                       # the read-off takes equal lengths
        rows = [i for i, m in enumerate(messages) if len(m) == length]
        reading = common.read_intentions(language, np.stack([messages[i] for i in rows]))
        assert np.array_equal(reading.intention, intentions[rows])
        assert reading.well_formed.all() and reading.readable.all()
        np.testing.assert_allclose(reading.confidence, 1.0)


def test_read_off_flags_a_broken_message_and_reads_its_letters(cot, common):
    setup = cot.SkipChain()
    language = cot.skip_chain_language(setup, cot.jump_distribution(setup, 0.0), "local")
    tag, letter = 3, setup.value_tokens(4)[0]                               # tag "3", a letter of value 4
    early_end = np.array([[tag, letter, 0, letter, 0]])                    # a delimiter inside the message
    too_long = np.array([[tag, letter, letter, letter, letter]])           # no delimiter where it must be
    for broken in (early_end, too_long):
        reading = common.read_intentions(language, broken)
        assert not reading.well_formed[0] and reading.readable[0]
        assert setup.value_of(reading.intention[0]) == 4 and setup.jump_of(reading.intention[0]) == 3
    only_tags = np.array([[tag, tag, tag, tag, 0]])                         # says "3 steps on", then nothing
    reading = common.read_intentions(language, only_tags)
    assert not reading.well_formed[0] and not reading.readable[0] and reading.intention[0] == -1
    np.testing.assert_allclose(reading.confidence, 1.0 / setup.values)     # a tie over the values of tag 3


# ----------------------------------------------------------------------------------------
# cot_locality: the language and the Bayes answer
# ----------------------------------------------------------------------------------------

def test_skip_chain_transition_is_jump_share_times_value_chain_power(cot):
    setup = cot.SkipChain()
    probs = cot.jump_distribution(setup, 0.3)
    np.testing.assert_allclose(probs, [0.7, 0.075, 0.075, 0.075, 0.075])
    language = cot.skip_chain_language(setup, probs, "x")
    chain = cot.value_chain(setup)
    np.testing.assert_allclose(chain.sum(axis=1), 1.0)
    for previous_jump in (1, 4):
        for jump in range(1, setup.max_jump + 1):
            rows = setup.intention(previous_jump, np.arange(setup.values))
            columns = setup.intention(jump, np.arange(setup.values))
            block = language.transition[np.ix_(rows, columns)]
            np.testing.assert_allclose(block, probs[jump - 1] * np.linalg.matrix_power(chain, jump), atol=1e-15)
    local = cot.skip_chain_language(setup, cot.jump_distribution(setup, 0.0), "local")
    assert np.all(local.transition[:, setup.intention(2, 0):] == 0.0)     # no jump ≥ 2 is ever written


def test_bayes_answer_is_the_value_chain_row_of_the_prompt_value(cot):
    setup = cot.SkipChain(advance=0.7)
    language = cot.skip_chain_language(setup, cot.jump_distribution(setup, 0.0), "local")
    prompts = cot.sample_prompts(language, setup, 50, np.random.default_rng(1))
    assert np.all(prompts.tokens[:, 0] == 0) and np.all(prompts.tokens[:, 1] == 1)  # "\n" then the tag "1"
    for k in (1, 3):
        expected = np.linalg.matrix_power(cot.value_chain(setup), k)[prompts.value]
        np.testing.assert_allclose(cot.bayes_values(language, setup, prompts, k), expected, atol=1e-12)
        np.testing.assert_allclose(cot.offset_distribution(setup, k), np.roll(expected[0], -prompts.value[0]))


# ----------------------------------------------------------------------------------------
# instruction_tuning: the edited T, the inner-chain KL, fine-tuning from given weights
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", range(6))
def test_suppressed_transition_is_stochastic_with_the_bad_column_zero(tuning, bad):
    base = tuning.base_language()
    edited = tuning.suppress_intention(base.transition, bad)
    assert np.all(edited >= 0.0)
    np.testing.assert_allclose(edited.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(edited[:, bad] == 0.0)
    keep = np.arange(6) != bad                                             # the odds among the others are kept
    np.testing.assert_allclose(edited[:, keep], base.transition[:, keep] / base.transition[:, keep].sum(axis=1, keepdims=True))
    language = tuning.edited_language(base, bad)                           # and it is a valid language
    assert isinstance(language, Language) and language.initial[bad] == 0.0
    np.testing.assert_array_equal(language.letter_transition, base.letter_transition)


def test_suppressing_an_intention_that_a_row_always_goes_to_is_an_error(tuning):
    with pytest.raises(ValueError, match="all their mass"):
        tuning.suppress_intention(np.array([[0.0, 1.0], [0.5, 0.5]]), 1)


def test_inner_chain_kl_is_zero_for_the_exact_reader(tuning):
    """The oracle reading ``\\n x`` knows θ from the first letter, so its next letters are A_θ's rows: KL 0.
    An off-by-one between the model's positions and the target's would make it large."""
    base = tuning.base_language()
    prompts, intentions = tuning.prompts_by_intention(base, 5, np.random.default_rng(2))
    kl = tuning.inner_chain_kl(OraclePredictor(base), base, prompts, intentions)
    assert kl.shape == (6,)
    np.testing.assert_allclose(kl, 0.0, atol=1e-9)


def _tiny_config(common, language, context_length=16):
    return common.small_model(language.vocab_size, context_length, n_layer=1, n_head=2, d_model=8)


def test_fine_tune_starts_from_the_given_weights(tuning, common, tmp_path):
    base = tuning.base_language(message_letters=3)
    config = _tiny_config(common, base)
    model = GPT.create(config, np.random.default_rng(5))
    settings = TrainConfig(steps=2, batch_size=2, max_lr=1e-12, eval_windows=2, eval_interval=2, seed=9)
    tuned, summary = tuning.fine_tune(model, tuning.edited_language(base, 1), settings, tmp_path / "ft", progress=False)
    assert summary["steps"] == 2 and summary["resumed_from_step"] == 0
    fresh = GPT.create(config, RandomStreams.generator(RandomStreams.from_seed(9).init))  # what a new run would start from
    for name, value in model.params.items():
        np.testing.assert_allclose(tuned.params[name], value, atol=1e-7)   # lr ≈ 0: nothing moved
        assert not np.allclose(fresh.params[name], value) or np.all(value == value.flat[0])


# ----------------------------------------------------------------------------------------
# emergence: snapshots are points of one run
# ----------------------------------------------------------------------------------------

def test_constant_rate_segments_are_the_uninterrupted_run(common, tmp_path):
    language = random_language(n_intentions=2, n_letters=4, message_length=3, seed=0)
    config = _tiny_config(common, language)

    def settings(steps):
        return TrainConfig(steps=steps, batch_size=2, max_lr=1e-2, min_lr=1e-2, warmup_steps=1, eval_windows=2,
                           eval_interval=4, checkpoint_interval=4, seed=3)

    whole, _ = train(language, config, settings(4), tmp_path / "whole", progress=False)
    train(language, config, settings(2), tmp_path / "parts", progress=False)
    parts, _ = train(language, config, settings(4), tmp_path / "parts", resume=True, progress=False)
    for name, value in whole.params.items():
        np.testing.assert_array_equal(parts.params[name], value)


def test_emerged_at_is_the_first_snapshot_below_the_threshold(emergence):
    def snapshot(step, approximation):
        return {"step": step, "understanding": {"approximation": {"mean": approximation}}}

    measurements = [snapshot(10, 0.3), snapshot(20, 0.04), snapshot(40, 0.06), snapshot(80, 0.01)]
    assert emergence.emerged_at(measurements, "understanding", 0.05) == 20
    assert emergence.emerged_at(measurements, "understanding", 0.001) is None


# ----------------------------------------------------------------------------------------
# The three --smoke runs: JSON with the expected keys and finite numbers
# ----------------------------------------------------------------------------------------

def test_cot_locality_smoke_writes_every_number(cot, tmp_path_factory):
    report, folder = _smoke(cot, tmp_path_factory, "cot")
    assert set(report) >= {"settings", "value_chain", "chance_accuracy", "bayes", "models", "plot", "seconds"}
    max_jump = report["settings"]["setup"]["max_jump"]
    assert [b["k"] for b in report["bayes"]] == list(range(1, max_jump + 1))
    for bayes in report["bayes"]:
        assert 0.0 < bayes["sampler_accuracy"] <= bayes["map_accuracy"] <= 1.0
        assert math.isclose(sum(bayes["offset_distribution"]), 1.0)
    assert set(report["models"]) == {"local", "control"}
    for corpus in report["models"].values():
        assert set(corpus["training"]) >= {"val_loss", "bayes_val_loss", "excess_val_loss"}
        assert [row["k"] for row in corpus["rows"]] == list(range(1, max_jump + 1))
        for row in corpus["rows"]:
            for method in ("direct", "step_by_step"):
                accuracy = row[method]["accuracy"]
                assert 0.0 <= accuracy["low"] <= accuracy["mean"] <= accuracy["high"] <= 1.0 + 1e-12
                assert math.isclose(sum(row[method]["offset_histogram"]) + row[method]["unreadable"], 1.0)
                assert 0.0 <= row[method]["well_formed"] <= 1.0
            assert set(row["direct_exact"]) == {"accuracy", "tv_to_bayes", "value_letter_mass"}
    assert all(value is not None and math.isfinite(value) for value in _numbers(report))
    assert report["plot"] is None or (folder / "cot_locality.png").exists()


def test_instruction_tuning_smoke_writes_every_number(tuning, tmp_path_factory):
    report, folder = _smoke(tuning, tmp_path_factory, "tuning")
    assert set(report) >= {"settings", "language", "T", "bayes_val_loss", "training", "stages", "plot", "seconds"}
    bad = report["settings"]["bad"]
    assert all(row[bad] == 0.0 for row in report["T"]["new"])
    assert set(report["stages"]) == {"pretrained", "fine_tuned"}
    for stage in report["stages"].values():
        assert set(stage) >= {"response_intentions", "tv_to_old_T", "tv_to_new_T", "inner_chain_kl", "val_loss"}
        for name in ("sampled", "first_letter"):
            rows = np.array(stage["response_intentions"][name])
            assert rows.shape == (6, 6)
            np.testing.assert_allclose(rows.sum(axis=1), 1.0)
        assert len(stage["response_intentions"]["well_formed_by_prompt_intention"]) == 6
        assert len(stage["inner_chain_kl"]) == 6 and min(stage["inner_chain_kl"]) >= 0.0
        assert set(stage["val_loss"]) == {"old", "new"}
    assert report["training"]["finetune"]["resumed_from_step"] == 0
    assert all(value is not None and math.isfinite(value) for value in _numbers(report))


def test_emergence_smoke_writes_every_number(emergence, tmp_path_factory):
    report, folder = _smoke(emergence, tmp_path_factory, "emergence")
    assert set(report) >= {"settings", "language", "bayes_floor", "runs", "plot", "seconds"}
    snapshots = report["settings"]["snapshots"]
    assert len(report["runs"]) >= 3                                       # at least three model sizes
    assert len({run["parameters"] for run in report["runs"]}) == len(report["runs"])
    for run in report["runs"]:
        assert [m["step"] for m in run["measurements"]] == snapshots
        assert set(run["emerged_at"]) == {"understanding", "icl"}
        for measurement in run["measurements"]:
            assert set(measurement["understanding"]) == {"total", "ambiguity", "approximation"}
            assert set(measurement["delimiter"]) == {"at_message_ends", "inside_messages", "positions"}
            assert sorted(measurement["icl"]) == [str(m) for m in range(report["settings"]["icl_m"] + 1)]
            total = measurement["understanding"]["total"]["mean"]
            parts = measurement["understanding"]["ambiguity"]["mean"] + measurement["understanding"]["approximation"]["mean"]
            assert math.isclose(total, parts, rel_tol=1e-9, abs_tol=1e-12)   # the split is exact
    assert all(value is not None and math.isfinite(value) for value in _numbers(report))


# ----------------------------------------------------------------------------------------
# Bad options: one line on stderr, exit status 2
# ----------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("cot", ["--no-such-option"]),
    ("cot", ["--smoke", "--quick"]),
    ("cot", ["--seed", "-1"]),
    ("cot", ["--local-jump-rate", "1.5"]),
    ("cot", ["--advance", "0"]),
    ("tuning", ["--bad", "9"]),
    ("tuning", ["--finetune-lr", "-1"]),
    ("tuning", ["--message-letters", "x"]),
    ("emergence", ["--eta", "-0.1"]),
    ("emergence", ["--language", "english"]),
    ("emergence", ["--threshold", "0"]),
]


@pytest.mark.parametrize("script, argv", BAD_OPTIONS)
def test_bad_options_exit_2_with_one_line(script, argv, request, capsys, tmp_path):
    module = request.getfixturevalue({"cot": "cot", "tuning": "tuning", "emergence": "emergence"}[script])
    assert_one_line_error(capsys, module.main, argv + ["--out", str(tmp_path)], program=module.PROGRAM)
    assert not list(tmp_path.iterdir())                                   # nothing was trained or written


@pytest.mark.skipif(__import__("tinylatent.backend").backend.gpu_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("script, argv", [("cot_locality", ["--smoke"]), ("instruction_tuning", ["--smoke"]),
                                          ("emergence", ["--smoke"]), ("reproduce_paper", ["--smoke", "--preset", "paper"]),
                                          ("icl_decay", ["--train"])])
def test_a_missing_gpu_is_one_line_before_any_work(script, argv, capsys, tmp_path):
    """``--device gpu`` (reproduce_paper's default for --preset paper) without CuPy: one line, exit 2, nothing written."""
    module = _load(script)
    device = [] if script == "reproduce_paper" else ["--device", "gpu"]
    assert_one_line_error(capsys, module.main, [*argv, *device, "--out", str(tmp_path / "out")], "device 'gpu' needs CuPy",
                          nothing_printed=True, program=module.PROGRAM)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["cot", "tuning", "emergence"])
def test_output_paths_are_checked_before_any_training(script, request, capsys, tmp_path):
    module = request.getfixturevalue(script)
    mine = tmp_path / "mine.json"
    mine.write_text("mine")
    out = tmp_path / "out"
    for argv, message in ((["--out", str(out), "--json", str(mine)], "exists; pass --force"),
                          (["--out", str(out), "--json", str(mine / "x.json")], "is a file, not a folder"),
                          (["--out", str(mine)], "is a file, not a folder"),
                          (["--out", str(mine / "sub")], "is a file, not a folder"),
                          (["--out", ""], "--out: must be a file or folder path; got an empty string"),
                          (["--out", str(out), "--json", ""], "--json: must be a file or folder path")):
        assert_one_line_error(capsys, module.main, ["--smoke", "--no-progress", *argv], message, nothing_printed=True)
    assert mine.read_text() == "mine" and not out.exists()                 # nothing was trained or written


# ----------------------------------------------------------------------------------------
# Nothing a user made is replaced without --force; a closed output pipe stops nothing
# ----------------------------------------------------------------------------------------

def _users_checkpoint(folder):
    """A run the user trained with `tinylatent train` into ``folder``: its checkpoint's bytes."""
    argv = ["train", "--steps", "3", "--eval-windows", "4", "--no-progress", "--out", str(folder)]
    assert tinylatent_cli.main(argv) == 0
    return (folder / "ckpt.npz").read_bytes()


def test_a_users_checkpoint_under_out_is_refused_before_any_work(cot, capsys, tmp_path):
    users = _users_checkpoint(tmp_path / "control")
    capsys.readouterr()
    err = assert_one_line_error(capsys, cot.main, ["--smoke", "--no-progress", "--out", str(tmp_path)],
                                f"{tmp_path / 'control' / 'ckpt.npz'} exists", nothing_printed=True, program=cot.PROGRAM)
    assert "pass --force" in err and "choose another --out" in err
    assert (tmp_path / "control" / "ckpt.npz").read_bytes() == users
    assert [path.name for path in tmp_path.iterdir()] == ["control"]          # nothing written, not even the record


def test_a_users_file_put_later_into_the_scripts_folder_is_still_the_users(cot, capsys, tmp_path):
    """Ownership is per file: after a run into OUT, a checkpoint the user then trains into
    OUT/control is theirs (its size and time are not the recorded ones), and is refused."""
    assert cot.main(["--smoke", "--no-progress", "--out", str(tmp_path)]) == 0
    shutil.rmtree(tmp_path / "control")
    users = _users_checkpoint(tmp_path / "control")
    capsys.readouterr()
    assert_one_line_error(capsys, cot.main, ["--smoke", "--no-progress", "--out", str(tmp_path)],
                          f"{tmp_path / 'control' / 'ckpt.npz'} exists, and no run of", nothing_printed=True)
    assert (tmp_path / "control" / "ckpt.npz").read_bytes() == users


def test_json_may_not_be_one_of_the_scripts_own_outputs(cot, capsys, tmp_path):
    for target in (tmp_path / "local" / "ckpt.npz", tmp_path / cot.common.MARKER_FILENAME):
        assert_one_line_error(capsys, cot.main, ["--smoke", "--no-progress", "--out", str(tmp_path), "--json", str(target)],
                              "is a file cot_locality.py writes in --out already", nothing_printed=True)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


USERS_FILES = [
    ("cot", "local/log.jsonl"), ("cot", "cot_locality.json"), ("cot", "cot_locality.png"),
    ("tuning", "pretrained/ckpt.npz"), ("tuning", "fine_tuned/log.jsonl"), ("tuning", "instruction_tuning.json"),
    ("emergence", "tiny/ckpt.npz"), ("emergence", "small/log.jsonl"), ("emergence", "emergence.png"),
    ("cot", ".tinylatent-experiment.json"),                       # the record's name, but not a record: the user's file
]


@pytest.mark.parametrize("script, name", USERS_FILES)
def test_every_file_the_script_writes_is_refused_in_a_folder_it_did_not_make(script, name, request, capsys, tmp_path):
    module = request.getfixturevalue(script)
    mine = tmp_path / name
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("mine")
    assert_one_line_error(capsys, module.main, ["--smoke", "--no-progress", "--out", str(tmp_path)],
                          f"{mine} exists", nothing_printed=True, program=module.PROGRAM)
    assert mine.read_text() == "mine"


def test_a_file_another_script_wrote_is_not_this_ones(cot, emergence, common, capsys, tmp_path):
    (tmp_path / "cot_locality.json").write_text("mine")
    args = argparse.Namespace(out=tmp_path, outputs_before={"cot_locality.json": None})
    common.record_outputs(args, emergence.PROGRAM)              # recorded as written by emergence.py
    assert_one_line_error(capsys, cot.main, ["--smoke", "--no-progress", "--out", str(tmp_path)],
                          "cot_locality.json exists", nothing_printed=True)
    assert (tmp_path / "cot_locality.json").read_text() == "mine"


def test_force_replaces_the_users_files_and_then_the_folder_is_the_scripts(cot, capsys, tmp_path):
    users = _users_checkpoint(tmp_path / "control")
    (tmp_path / "cot_locality.json").write_text("mine")
    assert cot.main(["--smoke", "--no-progress", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "control" / "ckpt.npz").read_bytes() != users
    first = json.loads((tmp_path / "cot_locality.json").read_text())
    assert cot.main(["--smoke", "--no-progress", "--out", str(tmp_path)]) == 0     # its own folder: no --force needed
    second = json.loads((tmp_path / "cot_locality.json").read_text())
    assert [second["models"][corpus]["rows"] for corpus in cot.CORPORA] == \
        [first["models"][corpus]["rows"] for corpus in cot.CORPORA]                # retrained from scratch, same seed


def test_a_closed_standard_output_stops_nothing(tmp_path):
    """`script >&-`: Python starts with sys.stdout None; the guard must not wrap it (it crashed)."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "cot_locality.py"), "--smoke", "--no-progress",
                             "--out", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, timeout=600, preexec_fn=lambda: os.close(1))
    assert (result.returncode, result.stderr) == (0, "")
    assert set(json.loads((tmp_path / "cot_locality.json").read_text())["models"]) == {"local", "control"}


def test_a_closed_output_pipe_stops_nothing(tmp_path):
    result = run_with_its_reader_gone([str(ROOT / "examples" / "cot_locality.py"), "--smoke", "--no-progress",
                                        "--out", str(tmp_path)], cwd=ROOT)
    assert (result.returncode, result.stderr) == (0, "")
    assert set(json.loads((tmp_path / "cot_locality.json").read_text())["models"]) == {"local", "control"}


@pytest.mark.skipif(os.name != "posix", reason="sends itself SIGINT with os.kill (POSIX)")
@pytest.mark.parametrize("script", ["icl_decay", "cot_locality", "instruction_tuning", "emergence",
                                    "reproduce_paper"])
def test_ctrl_c_while_a_script_loads_is_one_line_and_exit_130(script, tmp_path):
    """A Ctrl-C while ``_common`` imports NumPy (a script's first few tenths of a second): one line
    and exit status 130, as during the run. Before, it printed the traceback of the import."""
    result = run_interrupted_while_loading_numpy(ROOT / "examples" / f"{script}.py", tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", f"{script}.py: interrupted\n")
