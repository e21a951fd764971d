"""Training: it learns, it resumes bit for bit, and it stops cleanly on Ctrl-C and on NaN.

Every run here is tiny (a 4-letter language, a one-block GPT of width 32, windows of
16 tokens) so that the whole file runs in seconds on two cores.
"""
from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

import tinylatent.train as train_module
from tinylatent.checkpoint import CHECKPOINT_FILENAME, load_checkpoint, save_checkpoint
from tinylatent.gpt import GPT, GPTConfig
from tinylatent.language import paper_language, random_language, sample_corpus, sample_windows
from tinylatent.optim import AdamW
from tinylatent.train import (
    LOG_FILENAME, RandomStreams, Terminated, TrainConfig, TrainingData, TrainingDiverged, batches_loss_and_grads,
    bayes_validation_loss, train, validation_loss,
)


def tiny_language():
    """K = 2 intentions, each writing 2 of 4 letters, 4 letters a message: 5 tokens."""
    return random_language(n_intentions=2, n_letters=4, letters_per_intention=2, message_length=4, seed=0)


def tiny_model(language, context_length: int = 16) -> GPTConfig:
    return GPTConfig(vocab_size=language.vocab_size, context_length=context_length, n_layer=1, n_head=2, d_model=32)


def tiny_run(**overrides) -> TrainConfig:
    settings = dict(steps=12, batch_size=8, max_lr=1e-2, warmup_steps=2, eval_interval=4, eval_windows=16,
                    checkpoint_interval=4, seed=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def read_log(out_dir) -> list:
    with open(os.path.join(out_dir, LOG_FILENAME)) as handle:
        return [json.loads(line) for line in handle]


def assert_same_state(a, b) -> None:
    """Two checkpoints hold identical parameters, optimiser state, step and data-generator state."""
    assert a.step == b.step
    assert list(a.params) == list(b.params)
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    assert a.optimizer_state["step"] == b.optimizer_state["step"]
    for moment in ("m", "v"):
        for name in a.params:
            assert np.array_equal(a.optimizer_state[moment][name], b.optimizer_state[moment][name]), (moment, name)
    assert a.rng_state == b.rng_state


class CallCounter:
    """Wraps GPT.loss_and_grads; on the chosen call, does something else instead."""

    def __init__(self, monkeypatch, on_call: int, action):
        self.calls = 0
        self.on_call = on_call
        self.action = action
        original = GPT.loss_and_grads

        def wrapped(model, idx, targets):
            self.calls += 1
            if self.calls == self.on_call:
                return self.action(model, idx, targets, original)
            return original(model, idx, targets)

        monkeypatch.setattr(GPT, "loss_and_grads", wrapped)


# -- it learns ---------------------------------------------------------------------------------

def test_training_brings_validation_loss_far_below_the_unigram_entropy(tmp_path):
    """A model that ignored the context could at best reach the unigram entropy H(x_t).

    Context is worth a lot in this language (the intention fixes which 2 of 4 letters
    come, the position fixes where the delimiter comes), so after a short run the
    validation loss must be far below H, and it can never be meaningfully below the
    Bayes loss of the same windows.
    """
    language = tiny_language()
    sample = sample_windows(language, 4000, 1, seed=123).ravel()
    frequencies = np.bincount(sample, minlength=language.vocab_size) / sample.size
    unigram_entropy = -float(np.sum(frequencies[frequencies > 0] * np.log(frequencies[frequencies > 0])))

    config = tiny_run(steps=200, batch_size=16, warmup_steps=20, eval_interval=50, eval_windows=64,
                      checkpoint_interval=100)
    model, summary = train(language, tiny_model(language), config, tmp_path, progress=False)

    initial_val_loss = read_log(tmp_path)[0]["val_loss"]  # the untrained model, step 0
    assert initial_val_loss > unigram_entropy
    assert summary["val_loss"] < unigram_entropy - 0.4
    assert summary["val_loss"] > summary["bayes_val_loss"] - 0.02
    assert summary["excess_val_loss"] == pytest.approx(summary["val_loss"] - summary["bayes_val_loss"])
    assert summary["steps"] == 200 and summary["tokens_seen"] == 200 * 16 * 16


def test_log_has_one_line_per_step_and_the_validations(tmp_path):
    language = tiny_language()
    config = tiny_run(steps=8, eval_interval=3)
    train(language, tiny_model(language), config, tmp_path, progress=False)
    log = read_log(tmp_path)
    assert [record["step"] for record in log] == list(range(9))
    assert set(log[0]) == {"step", "val_loss", "bayes_val_loss"}
    for record in log[1:]:
        assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(record)
        assert math.isfinite(record["loss"]) and record["grad_norm"] > 0 and record["tokens_per_s"] > 0
    validated = [record["step"] for record in log if "val_loss" in record]
    assert validated == [0, 3, 6, 8]  # every eval_interval, and the last step
    # the rate of the update that led to each step: a linear warm-up over 2 updates
    # (max_lr/3, 2 max_lr/3), then max_lr, then a cosine on its way to max_lr / 10
    lrs = [record["lr"] for record in log[1:]]
    assert lrs[:3] == pytest.approx([config.max_lr / 3, 2 * config.max_lr / 3, config.max_lr])
    assert all(later < earlier for earlier, later in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] > config.max_lr / 10


@pytest.mark.parametrize("windows, batch_size, message", [
    (np.zeros((0, 9), dtype=np.int64), 4, r"windows must be a \(B, T \+ 1\) array .* got shape \(0, 9\)"),  # was 0/0
    (np.zeros((3, 1), dtype=np.int64), 4, r"got shape \(3, 1\)"),
    (np.zeros(9, dtype=np.int64), 4, r"got shape \(9,\)"),
    (np.zeros((3, 9), dtype=np.int64), 0, "batch_size must be a positive integer; got 0"),
])
def test_validation_loss_refuses_windows_with_no_target(windows, batch_size, message):
    language = tiny_language()
    with pytest.raises(ValueError, match=message):
        validation_loss(GPT.create(tiny_model(language), 0), windows, batch_size)


def test_bayes_validation_loss_is_the_oracle_on_the_target_positions():
    language = tiny_language()
    windows = sample_windows(language, 6, 9, seed=0)
    from tinylatent.oracle import Oracle

    token_log_probs = Oracle(language).filter(windows, phase="unknown").token_log_probs  # (6, 9)
    assert bayes_validation_loss(language, windows) == pytest.approx(-token_log_probs[:, 1:].mean())


# -- data --------------------------------------------------------------------------------------

def test_validation_windows_are_fixed_by_the_seed_and_independent_of_training_draws():
    language = tiny_language()
    config = tiny_run().resolved(tiny_model(language))
    first = TrainingData(language, config, RandomStreams.from_seed(config.seed))
    second = TrainingData(language, config, RandomStreams.from_seed(config.seed))
    assert np.array_equal(first.validation, second.validation)
    assert first.validation.shape == (config.eval_windows, config.context_length + 1)
    # training windows come only from the Generator passed in
    rng_a = RandomStreams.generator(RandomStreams.from_seed(config.seed).data)
    rng_b = RandomStreams.generator(RandomStreams.from_seed(config.seed).data)
    (windows_a,), (windows_b,) = first.train_batch(rng_a), second.train_batch(rng_b)
    assert np.array_equal(windows_a, windows_b)
    other_seed = TrainingData(language, config, RandomStreams.from_seed(config.seed + 1))
    assert not np.array_equal(first.validation, other_seed.validation)


def test_corpus_mode_trains_on_the_head_and_validates_on_the_held_out_tail(tmp_path):
    language = tiny_language()
    config = tiny_run(data="corpus", corpus_messages=300, validation_fraction=0.2).resolved(tiny_model(language))
    streams = RandomStreams.from_seed(config.seed)
    data = TrainingData(language, config, streams)
    corpus = sample_corpus(language, config.corpus_messages, RandomStreams.generator(streams.corpus)).tokens
    n_train = int(round(corpus.shape[0] * 0.8))
    assert np.array_equal(data.train_tokens, corpus[:n_train])
    tail_windows = np.lib.stride_tricks.sliding_window_view(corpus[n_train:], config.context_length + 1)
    for window in data.validation:  # every validation window lies inside the held-out tail
        assert np.any(np.all(tail_windows == window, axis=1))
    _, summary = train(language, tiny_model(language), config, tmp_path, progress=False)
    assert summary["steps"] == config.steps and math.isfinite(summary["val_loss"])


def test_corpus_too_small_for_one_window_is_a_clear_error(tmp_path):
    language = tiny_language()
    with pytest.raises(ValueError, match="validation part has .* fewer than one window"):
        train(language, tiny_model(language), tiny_run(data="corpus", corpus_messages=20), tmp_path, progress=False)


# -- resume ------------------------------------------------------------------------------------

def test_stop_and_resume_gives_the_uninterrupted_parameters_bit_for_bit(tmp_path):
    """With a constant learning rate, 6 steps then a resume to 12 is the same run as 12 straight."""
    language = tiny_language()
    constant_lr = dict(warmup_steps=0, min_lr=1e-2, max_lr=1e-2, checkpoint_interval=5)
    train(language, tiny_model(language), tiny_run(steps=12, **constant_lr), tmp_path / "straight", progress=False)
    train(language, tiny_model(language), tiny_run(steps=6, **constant_lr), tmp_path / "halves", progress=False)
    _, summary = train(language, tiny_model(language), tiny_run(steps=12, **constant_lr), tmp_path / "halves",
                       resume=True, progress=False)
    assert summary["resumed_from_step"] == 6
    straight = load_checkpoint(tmp_path / "straight" / CHECKPOINT_FILENAME)
    halves = load_checkpoint(tmp_path / "halves" / CHECKPOINT_FILENAME)
    assert straight.step == 12
    assert_same_state(straight, halves)
    # the same training losses, step by step, and one log line per step (the first run
    # also validated at its last step, 6, which the straight run did not)
    def losses(log):
        return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("lr")) for r in log]

    assert losses(read_log(tmp_path / "straight")) == losses(read_log(tmp_path / "halves"))


def test_keyboard_interrupt_saves_a_checkpoint_and_the_resumed_run_matches(tmp_path, monkeypatch):
    """Ctrl-C during step 7's forward pass: the checkpoint holds step 6, and resuming
    (cosine schedule and all) ends exactly where the uninterrupted run ends."""
    language = tiny_language()
    config = tiny_run(steps=10, checkpoint_interval=100)
    train(language, tiny_model(language), config, tmp_path / "straight", progress=False)

    def interrupt(model, idx, targets, original):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        CallCounter(patch, on_call=7, action=interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(language, tiny_model(language), config, tmp_path / "interrupted", progress=False)
    saved = load_checkpoint(tmp_path / "interrupted" / CHECKPOINT_FILENAME)
    assert saved.step == 6
    train(language, tiny_model(language), config, tmp_path / "interrupted", resume=True, progress=False)
    assert_same_state(load_checkpoint(tmp_path / "straight" / CHECKPOINT_FILENAME),
                      load_checkpoint(tmp_path / "interrupted" / CHECKPOINT_FILENAME))
    assert [r["step"] for r in read_log(tmp_path / "interrupted")] == list(range(11))


def assert_the_resumed_run_is_the_straight_run(language, config, tmp_path):
    """Resume ``tmp_path/interrupted``: its final state and its log (timings aside) are those of ``tmp_path/straight``."""
    train(language, tiny_model(language), config, tmp_path / "interrupted", resume=True, progress=False)
    assert_same_state(load_checkpoint(tmp_path / "straight" / CHECKPOINT_FILENAME),
                      load_checkpoint(tmp_path / "interrupted" / CHECKPOINT_FILENAME))

    def without_timing(log):
        return [{key: value for key, value in r.items() if key != "tokens_per_s"} for r in log]

    assert without_timing(read_log(tmp_path / "interrupted")) == without_timing(read_log(tmp_path / "straight"))


# Each stop request: the signal, what train() raises for it, and its handler before and after the run.
STOP_SIGNALS = [pytest.param(signal.SIGINT, KeyboardInterrupt, signal.default_int_handler, id="ctrl-c"),
                pytest.param(signal.SIGTERM, Terminated, signal.SIG_DFL, id="sigterm")]


@pytest.mark.parametrize("signum, raised, handler", STOP_SIGNALS)
def test_ctrl_c_during_the_optimiser_update_is_held_until_the_step_is_whole(tmp_path, monkeypatch, signum, raised,
                                                                            handler):
    """A real SIGINT (or SIGTERM) in the middle of AdamW.step: the update finishes, and so do the
    step's metrics, its validation (step 3 is due one) and its log line; then the run stops and
    saves it. The checkpoint, the log and the resumed run all agree with a straight run."""
    language = tiny_language()
    config = tiny_run(steps=8, checkpoint_interval=100, eval_interval=3)
    train(language, tiny_model(language), config, tmp_path / "straight", progress=False)

    original_step = AdamW.step
    calls = []

    def step_with_signal(optimizer, params, grads, lr):
        calls.append(lr)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)  # delivered now; the handler only records it
        return original_step(optimizer, params, grads, lr)

    with monkeypatch.context() as patch:
        patch.setattr(AdamW, "step", step_with_signal)
        with pytest.raises(raised):
            train(language, tiny_model(language), config, tmp_path / "interrupted", progress=False)
    assert signal.getsignal(signum) is handler  # handler restored
    saved = load_checkpoint(tmp_path / "interrupted" / CHECKPOINT_FILENAME)
    straight_log = read_log(tmp_path / "straight")
    assert saved.step == 3
    assert [r["step"] for r in read_log(tmp_path / "interrupted")] == [0, 1, 2, 3]
    assert saved.metrics["train_loss"] == straight_log[3]["loss"]
    assert saved.metrics["val_loss"] == straight_log[3]["val_loss"]
    assert_the_resumed_run_is_the_straight_run(language, config, tmp_path)


def test_ctrl_c_during_the_step_0_validation_keeps_step_0_in_the_log(tmp_path, monkeypatch):
    """A real SIGINT while a fresh run validates its untrained model: the validation and the
    step 0 log line finish, then the run stops with a step 0 checkpoint; the resumed run's
    log is the straight run's, step 0 line included (it used to start at step 1)."""
    language = tiny_language()
    config = tiny_run(steps=5, checkpoint_interval=100)
    train(language, tiny_model(language), config, tmp_path / "straight", progress=False)
    original = train_module.validation_loss

    def validation_with_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # held: the line must be written first
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "validation_loss", validation_with_signal)
        with pytest.raises(KeyboardInterrupt):
            train(language, tiny_model(language), config, tmp_path / "interrupted", progress=False)
    saved = load_checkpoint(tmp_path / "interrupted" / CHECKPOINT_FILENAME)
    straight_log = read_log(tmp_path / "straight")
    assert saved.step == 0 and saved.metrics["val_loss"] == straight_log[0]["val_loss"]
    assert read_log(tmp_path / "interrupted") == straight_log[:1]
    assert_the_resumed_run_is_the_straight_run(language, config, tmp_path)


@pytest.mark.parametrize("where", ["Progress", "JsonLog"])
def test_ctrl_c_before_the_log_is_opened_writes_nothing(tmp_path, monkeypatch, where):
    """Ctrl-C before the run has written anything (while the progress display starts, or as
    the log is opened) leaves no file behind, so the same command runs again without --force."""
    language = tiny_language()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, where, interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(language, tiny_model(language), tiny_run(steps=3), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []
    train(language, tiny_model(language), tiny_run(steps=3), tmp_path / "run", progress=False)


@pytest.mark.parametrize("signum, raised, handler", STOP_SIGNALS)
def test_a_second_ctrl_c_waits_for_the_checkpoint_of_the_first(tmp_path, monkeypatch, signum, raised, handler):
    """Ctrl-C (or SIGTERM), then another while the first one's checkpoint is being written: the
    checkpoint is written whole, and the run stops with one KeyboardInterrupt (or Terminated)."""
    language = tiny_language()
    config = tiny_run(steps=10, checkpoint_interval=100)
    original_save = train_module.save_checkpoint

    def interrupt(model, idx, targets, original):
        raise raised()

    def save_with_signal(*args, **kwargs):
        os.kill(os.getpid(), signum)  # the second request, in the middle of the save
        return original_save(*args, **kwargs)

    with monkeypatch.context() as patch:
        CallCounter(patch, on_call=4, action=interrupt)
        patch.setattr(train_module, "save_checkpoint", save_with_signal)
        with pytest.raises(raised):
            train(language, tiny_model(language), config, tmp_path / "interrupted", progress=False)
    assert signal.getsignal(signum) is handler
    assert load_checkpoint(tmp_path / "interrupted" / CHECKPOINT_FILENAME).step == 3
    assert [r["step"] for r in read_log(tmp_path / "interrupted")] == [0, 1, 2, 3]


def test_resume_drops_damaged_log_lines_and_those_after_the_checkpoint(tmp_path):
    """A log line cut short or with bytes that are not UTF-8 (a crash, a bad disk) is dropped on
    resume, as are the steps after the checkpoint, which the resumed run makes again."""
    language = tiny_language()
    train(language, tiny_model(language), tiny_run(steps=6, checkpoint_interval=100), tmp_path, progress=False)
    with open(tmp_path / LOG_FILENAME, "ab") as handle:
        handle.write(b'{"step": 7, "loss": 1.0}\n\xff\xfe{"step": 2\n{"step": 8, "lo')
    train(language, tiny_model(language), tiny_run(steps=8, checkpoint_interval=100), tmp_path, resume=True,
          progress=False)
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(9)) and log[7]["loss"] != 1.0


def test_a_fresh_run_will_not_overwrite_an_existing_checkpoint(tmp_path):
    language = tiny_language()
    train(language, tiny_model(language), tiny_run(steps=3), tmp_path, progress=False)
    with pytest.raises(ValueError, match="already exists"):
        train(language, tiny_model(language), tiny_run(steps=3), tmp_path, progress=False)


def test_resume_refuses_an_optimizer_state_from_another_step(tmp_path):
    language = tiny_language()
    train(language, tiny_model(language), tiny_run(steps=4), tmp_path, progress=False)
    saved = load_checkpoint(tmp_path / CHECKPOINT_FILENAME)
    save_checkpoint(tmp_path / CHECKPOINT_FILENAME, params=saved.params,
                    optimizer_state={**saved.optimizer_state, "step": 3}, step=saved.step,
                    model_config=saved.model_config, train_config=saved.train_config, language=saved.language,
                    rng_state=saved.rng_state, metrics=saved.metrics)
    with pytest.raises(ValueError, match="at step 4 but its optimizer state at step 3"):
        train(language, tiny_model(language), tiny_run(steps=8), tmp_path, resume=True, progress=False)


def test_resume_refuses_a_different_run(tmp_path):
    language = tiny_language()
    train(language, tiny_model(language), tiny_run(steps=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size 8 -> 4"):
        train(language, tiny_model(language), tiny_run(steps=8, batch_size=4), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="model config differs: d_model 32 -> 16"):
        bigger = GPTConfig(vocab_size=language.vocab_size, context_length=16, n_layer=1, n_head=2, d_model=16)
        train(language, bigger, tiny_run(steps=8), tmp_path, resume=True, progress=False)
    other = random_language(n_intentions=2, n_letters=4, letters_per_intention=2, message_length=4, seed=1)
    with pytest.raises(ValueError, match="trained on language"):
        train(other, tiny_model(other), tiny_run(steps=8), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(language, tiny_model(language), tiny_run(steps=8), tmp_path / "empty", resume=True, progress=False)


# -- divergence --------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, what):
    language = tiny_language()
    config = tiny_run(steps=12, checkpoint_interval=4)

    def poison(model, idx, targets, original):
        loss, grads = original(model, idx, targets)
        if what == "loss":
            return loss * np.nan, grads
        grads["wte"][0, 0] = np.inf
        return loss, grads

    CallCounter(monkeypatch, on_call=7, action=poison)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 7.*checkpoint of step 4 .* is kept"):
        train(language, tiny_model(language), config, tmp_path, progress=False)
    kept = load_checkpoint(tmp_path / CHECKPOINT_FILENAME)  # loadable, finite, from step 4
    assert kept.step == 4
    assert all(np.all(np.isfinite(p)) for p in kept.params.values())
    assert [r["step"] for r in read_log(tmp_path)] == list(range(7))  # nothing logged for the bad step


def test_an_update_that_overflows_never_replaces_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Step 8's update writes inf into a weight while its loss was finite; the checkpoint due right
    after it is not written (it used to be, over step 4's, and then could not be loaded)."""
    language = tiny_language()
    original_step = AdamW.step
    calls = []

    def overflowing_step(optimizer, params, grads, lr):
        calls.append(lr)
        original_step(optimizer, params, grads, lr)
        if len(calls) == 8:
            params["wte"][0, 0] = np.inf

    monkeypatch.setattr(AdamW, "step", overflowing_step)
    with pytest.raises(TrainingDiverged, match=r"at step 8: its update .* made parameters infinite or NaN; "
                                               r"nothing was saved after it, the checkpoint of step 4 .* is kept"):
        train(language, tiny_model(language), tiny_run(steps=12, checkpoint_interval=4, eval_interval=100),
              tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILENAME).step == 4


@pytest.mark.filterwarnings("error::RuntimeWarning")   # TrainingDiverged is the one message: no NumPy warnings
@pytest.mark.parametrize("max_lr, kept", [(1e30, True), (1e308, False)])
def test_an_exploding_learning_rate_is_caught_before_it_reaches_a_checkpoint(tmp_path, max_lr, kept):
    """No monkeypatching: a learning rate of 1e30 drives the float32 weights to inf within a few
    steps; one of 1e308 in the first update, whose loss was finite (no checkpoint is written: a
    checkpoint of infinite weights used to replace the good one, and could not be loaded)."""
    language = paper_language(0.0)
    config = TrainConfig(steps=6, batch_size=2, max_lr=max_lr, warmup_steps=0, eval_interval=100, eval_windows=2,
                         checkpoint_interval=1, seed=0)
    model_config = GPTConfig(vocab_size=language.vocab_size, context_length=8, n_layer=1, n_head=1, d_model=8)
    if not kept:
        with pytest.raises(TrainingDiverged, match="at step 1: its update .* made parameters infinite or NaN; "
                                                   "nothing was saved after it, no checkpoint had been written yet"):
            train(language, model_config, config, tmp_path, progress=False)
        assert not (tmp_path / CHECKPOINT_FILENAME).exists()
        return
    with pytest.raises(TrainingDiverged, match="diverged .* is kept"):
        train(language, model_config, config, tmp_path, progress=False)
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_FILENAME)
    assert all(np.all(np.isfinite(p)) for p in checkpoint.params.values())


# -- progress and configs ----------------------------------------------------------------------

def test_progress_without_a_terminal_prints_plain_lines(tmp_path, capsys):
    language = tiny_language()
    train(language, tiny_model(language), tiny_run(steps=4, eval_interval=2), tmp_path, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("step 0/4 | val ")
    assert lines[-1].startswith("step 4/4 | loss ") and "(Bayes " in lines[-1] and "tok/s" in lines[-1]
    assert "eta 0:00:00" in lines[-1]


def test_train_config_round_trips_and_resolves():
    config = TrainConfig(steps=50, max_lr=1e-3)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    resolved = config.resolved(GPTConfig.small())
    assert resolved.context_length == 128 and resolved.warmup_steps == 5 and resolved.min_lr == pytest.approx(1e-4)
    assert TrainConfig(steps=5000).resolved(GPTConfig.small()).warmup_steps == 100
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="exceeds the model's context_length"):
        TrainConfig(context_length=256).resolved(GPTConfig.small())


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be a positive integer"),
    ("batch_size", 2.5, "batch_size must be a positive integer"),
    ("max_lr", -1.0, "max_lr must be a positive number"),
    ("max_lr", math.nan, "max_lr must be a positive number"),
    ("min_lr", 1.0, r"min_lr must be a number in \[0, max_lr\]"),
    ("warmup_steps", 5000, r"warmup_steps must be an integer in \[0, steps\)"),
    ("betas", (0.9, 1.0), "betas must be two numbers"),
    ("betas", 5, "betas must be two numbers"),
    ("grad_clip", 0.0, "grad_clip must be a positive number"),
    ("data", "file", "data must be one of stream, corpus"),
    ("device", "tpu", "device must be one of cpu, gpu"),
    ("validation_fraction", 1.0, r"validation_fraction must lie in \(0, 1\)"),
    ("seed", -1, "seed must be a non-negative integer"),
    ("short_windows", -1, "short_windows must be a non-negative integer"),
    ("short_context", 0, "short_context must be a positive integer"),
])
def test_bad_train_config_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_numpy_numbers_in_the_configs_train_and_checkpoint_as_python_numbers(tmp_path):
    """np.int64 / np.float32 settings (from an array of sweeps, say) are stored as the
    Python numbers they hold: the JSON in a checkpoint refuses NumPy scalars."""
    language = tiny_language()
    model = GPTConfig(vocab_size=np.int64(language.vocab_size), context_length=np.int64(16), n_layer=1,
                      n_head=np.int32(2), d_model=np.int64(32), init_std=np.float32(0.02))
    config = tiny_run(steps=np.int64(3), max_lr=np.float32(1e-2), betas=(np.float64(0.9), 0.95),
                      checkpoint_interval=np.int64(2))
    for value in [*vars(model).values(), *vars(config).values(), *config.betas]:
        assert not isinstance(value, np.generic), value
    train(language, model, config, tmp_path, progress=False)
    saved = load_checkpoint(tmp_path / CHECKPOINT_FILENAME)
    assert saved.step == 3 and saved.model_config == model and saved.train_config["max_lr"] == float(np.float32(1e-2))


def test_a_model_for_another_vocabulary_is_refused(tmp_path):
    language = tiny_language()
    with pytest.raises(ValueError, match="vocab_size"):
        train(language, GPTConfig.small(19), tiny_run(), tmp_path, progress=False)


def test_resume_keeps_the_resolved_warmup_when_steps_grow(tmp_path):
    """Warm-up left to its default resolves from ``steps`` once; extending the run keeps it."""
    language = tiny_language()
    train(language, tiny_model(language), tiny_run(steps=20, warmup_steps=None), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILENAME).train_config["warmup_steps"] == 2
    _, summary = train(language, tiny_model(language), tiny_run(steps=40, warmup_steps=None), tmp_path,
                       resume=True, progress=False)
    assert summary["steps"] == 40
    stored = load_checkpoint(tmp_path / CHECKPOINT_FILENAME).train_config
    assert stored["warmup_steps"] == 2 and stored["steps"] == 40


# -- short windows: more examples of the first positions ---------------------------------------

def test_short_windows_are_drawn_after_the_long_ones_from_the_same_generator():
    language = tiny_language()
    config = tiny_run(short_windows=5, short_context=3).resolved(tiny_model(language))
    assert config.tokens_per_step == 8 * 16 + 5 * 3
    data = TrainingData(language, config, RandomStreams.from_seed(config.seed))
    rng = RandomStreams.generator(RandomStreams.from_seed(config.seed).data)
    long_windows, short_windows = data.train_batch(rng)
    assert long_windows.shape == (8, 17) and short_windows.shape == (5, 4)
    assert long_windows.dtype == short_windows.dtype == np.int64
    plain = TrainingData(language, tiny_run().resolved(tiny_model(language)), RandomStreams.from_seed(config.seed))
    (same_long,) = plain.train_batch(RandomStreams.generator(RandomStreams.from_seed(config.seed).data))
    assert np.array_equal(long_windows, same_long)  # adding short windows leaves the long ones as they were


def test_windows_of_two_lengths_score_the_mean_over_all_their_tokens():
    """Loss: the per-token mean by a second path (log_probs). Gradient: central differences, float64."""
    language = tiny_language()
    model = GPT.create(GPTConfig(vocab_size=language.vocab_size, context_length=8, n_layer=1, n_head=2, d_model=8,
                                 dtype="float64"), np.random.default_rng(0))
    long_windows = sample_windows(language, 3, 9, seed=1)                              # 3 x 8 targets
    short_windows = sample_windows(language, 5, 3, seed=2)                             # 5 x 2 targets
    loss, grads = batches_loss_and_grads(model, [long_windows, short_windows])

    def per_token_mean() -> float:
        token_losses = [-np.take_along_axis(model.log_probs(w[:, :-1]), w[:, 1:, None], axis=-1).ravel()
                        for w in (long_windows, short_windows)]
        return float(np.concatenate(token_losses).mean())

    assert float(loss) == pytest.approx(per_token_mean(), rel=1e-12)
    rng = np.random.default_rng(3)
    for name in ("wte", "wpe", "h.0.attn.c_attn.weight"):
        direction = rng.standard_normal(model.params[name].shape)
        step = 1e-6
        model.params[name] += step * direction
        up = per_token_mean()
        model.params[name] -= 2 * step * direction
        down = per_token_mean()
        model.params[name] += step * direction
        assert float((grads[name] * direction).sum()) == pytest.approx((up - down) / (2 * step), rel=1e-6), name


def test_short_windows_train_and_resume_bit_for_bit(tmp_path):
    language = tiny_language()
    settings = dict(warmup_steps=0, min_lr=1e-2, max_lr=1e-2, checkpoint_interval=5, short_windows=6, short_context=4)
    train(language, tiny_model(language), tiny_run(steps=10, **settings), tmp_path / "straight", progress=False)
    train(language, tiny_model(language), tiny_run(steps=5, **settings), tmp_path / "halves", progress=False)
    train(language, tiny_model(language), tiny_run(steps=10, **settings), tmp_path / "halves", resume=True,
          progress=False)
    straight = load_checkpoint(tmp_path / "straight" / CHECKPOINT_FILENAME)
    assert straight.train_config["short_windows"] == 6 and straight.train_config["short_context"] == 4
    assert_same_state(straight, load_checkpoint(tmp_path / "halves" / CHECKPOINT_FILENAME))
    plain = tiny_run(steps=10, **dict(settings, short_windows=0))
    train(language, tiny_model(language), plain, tmp_path / "plain", progress=False)
    assert not np.array_equal(load_checkpoint(tmp_path / "plain" / CHECKPOINT_FILENAME).params["wpe"],
                              straight.params["wpe"])
    with pytest.raises(ValueError, match="short_windows 6 -> 0"):
        train(language, tiny_model(language), tiny_run(steps=12, **dict(settings, short_windows=0)),
              tmp_path / "straight", resume=True, progress=False)


def test_short_windows_longer_than_the_context_are_refused():
    with pytest.raises(ValueError, match=r"short_context \(200\) must be at most the context_length \(128\)"):
        TrainConfig(short_windows=4, short_context=200).resolved(GPTConfig.small())
    assert TrainConfig(short_windows=0, short_context=200).resolved(GPTConfig.small()).short_context == 200


def test_a_run_removes_what_a_killed_save_left_and_nothing_else(tmp_path):
    """A save killed mid-write (SIGKILL) leaves a hidden temporary file as large as the checkpoint;
    the next run in that folder (here the resumed one) removes it, and leaves a user's files alone."""
    language = tiny_language()
    run = tmp_path / "run"
    train(language, tiny_model(language), tiny_run(steps=3, checkpoint_interval=100), run, progress=False)
    leftovers = [Path(tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=run)[1])   # as atomic_write names them
                 for name in (CHECKPOINT_FILENAME, LOG_FILENAME)]
    mine = run / ".ckpt.npz.notes.tmp"
    mine.write_text("mine")
    train(language, tiny_model(language), tiny_run(steps=5, checkpoint_interval=100), run, resume=True, progress=False)
    assert not any(path.exists() for path in leftovers) and mine.read_text() == "mine"
    assert load_checkpoint(run / CHECKPOINT_FILENAME).step == 5
