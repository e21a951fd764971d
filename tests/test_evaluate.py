"""tinylatent.evaluate and ``tinylatent eval`` against cases whose answers are known by hand.

* q's own predictor (OraclePredictor) scores an approximation part of exactly 0, and its
  total equals the ambiguity part;
* a uniform model scores KL(t ‖ uniform) = log(V + 1) − H(t), and its cross-entropy is log(V + 1);
* for any model the three parts add up (total = ambiguity + approximation);
* the oracle's facts of docs/claims.md §8: a leading delimiter makes the unknown-phase reader agree
  with the known-phase one, and then the first letter names θ* in the paper's language.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from one_line_errors import assert_one_line_error
from tinylatent import theorems as th
from tinylatent.cli import main
from tinylatent.evaluate import (
    Estimate, OraclePredictor, UniformPredictor, convergence, evaluate, has_circular_chain, in_context_learning,
    language_understanding, paper_icl_target, predictor_log_probs, sample_understanding_prompts, split_kl,
)
from tinylatent.gpt import GPT, GPTConfig
from tinylatent.language import DELIMITER_ID, preset, random_language
from tinylatent.oracle import Oracle
from tinylatent.train import TrainConfig, bayes_validation_loss, outer_chain_mixes, stream_windows, train

PAPER = preset("paper", 0.04)                           # the paper's language, ambiguous transitions
NOISY_MIXTURE = preset("paper-noisy-first-mixture", 0.04)  # θ fixed per document, ε(x) > 0 from the first letter
VOCAB = PAPER.vocab_size                                # 19 tokens


@pytest.fixture(scope="module")
def untrained_gpt():
    """A small GPT fresh from initialisation: far from q, so every part of a split is non-zero."""
    config = GPTConfig(vocab_size=VOCAB, context_length=64, n_layer=1, n_head=2, d_model=16, dtype="float64")
    return GPT.create(config, np.random.default_rng(0))


@pytest.fixture(scope="module")
def paper_tasks():
    return th.sample_icl_tasks(PAPER, 40, 2, seed=1, prior=PAPER.stationary_intentions())


@pytest.fixture(scope="module")
def mixture_tasks():
    return th.sample_icl_tasks(NOISY_MIXTURE, 40, 2, seed=2, prior=NOISY_MIXTURE.stationary_intentions())


def all_splits(understanding, icl):
    """Every KLSplit of an understanding reading and an ICL evaluation."""
    splits = [row.known_intention for row in understanding.rows] + [row.paper for row in understanding.rows]
    splits += [row.known_intention for row in icl.rows] + [row.paper for row in icl.rows if row.paper is not None]
    return splits


# -- the split itself -----------------------------------------------------------------------

def test_split_kl_on_a_hand_example():
    """t = (½, ½, 0), q = (¼, ¼, ½), p = (½, ¼, ¼):
    KL(t‖p) = ½ log 2, KL(t‖q) = log 2, E_t[log q − log p] = ½ log(½) = −½ log 2."""
    split = split_kl([[0.5, 0.5, 0.0]], [[0.25, 0.25, 0.5]], np.log([[0.5, 0.25, 0.25]]))
    np.testing.assert_allclose(split.total, [0.5 * math.log(2)], rtol=1e-15)
    np.testing.assert_allclose(split.ambiguity, [math.log(2)], rtol=1e-15)
    np.testing.assert_allclose(split.approximation, [-0.5 * math.log(2)], rtol=1e-15)


def test_split_kl_total_is_finite_where_p_is_below_float64():
    """log p = −800 on a target token: exp(−800) is 0 in float64, but KL(t‖p) is finite. The total
    used to be computed from exp(log p) and read inf while its two parts were finite."""
    target, bayes = [[0.5, 0.5, 0.0]], [[0.25, 0.25, 0.5]]
    split = split_kl(target, bayes, [[-800.0, math.log(0.5), math.log(0.5)]])
    expected = 0.5 * (math.log(0.5) + 800.0) + 0.5 * (math.log(0.5) - math.log(0.5))
    np.testing.assert_allclose(split.total, [expected], rtol=1e-15)
    np.testing.assert_allclose(split.total, split.ambiguity + split.approximation, rtol=1e-15)


@pytest.mark.parametrize("leading_delimiter", [False, True])
def test_the_three_parts_add_up_for_a_model(untrained_gpt, paper_tasks, leading_delimiter):
    prompts = sample_understanding_prompts(PAPER, 30, seed=3)
    understanding = language_understanding(untrained_gpt, PAPER, prompts, leading_delimiter)
    icl = in_context_learning(untrained_gpt, PAPER, paper_tasks)
    for split in all_splits(understanding, icl):
        np.testing.assert_allclose(split.total, split.ambiguity + split.approximation, rtol=1e-12, atol=1e-12)
        assert np.abs(split.approximation).max() > 1e-3         # an untrained model is not q: the check has teeth


# -- q itself as the model: approximation exactly 0 ------------------------------------------

@pytest.mark.parametrize("language_name", ["paper", "mixture"])
@pytest.mark.parametrize("leading_delimiter", [False, True])
def test_the_oracle_as_a_model_scores_zero_approximation(language_name, leading_delimiter, paper_tasks, mixture_tasks):
    language, tasks = (PAPER, paper_tasks) if language_name == "paper" else (NOISY_MIXTURE, mixture_tasks)
    oracle_model = OraclePredictor(language)
    understanding = language_understanding(oracle_model, language, sample_understanding_prompts(language, 30, seed=4),
                                           leading_delimiter)
    icl = in_context_learning(oracle_model, language, tasks)
    splits = all_splits(understanding, icl)
    for split in splits:
        assert np.all(split.approximation == 0.0)               # log q − log q, term by term
        np.testing.assert_allclose(split.total, split.ambiguity, rtol=1e-12, atol=1e-15)
    assert max(split.ambiguity.max() for split in splits) > 0.01   # what q scores is not trivially 0
    # The ambiguity part of the known-intention target obeys docs/claims.md §3 and §4.
    for row in understanding.rows + icl.rows:
        assert np.all(row.known_intention.ambiguity <= row.kl_bound + th.ROUNDING_TOLERANCE)


def test_the_oracle_as_a_model_has_no_excess_cross_entropy():
    windows = stream_windows(PAPER, 16, 41, np.random.default_rng(5))
    result = convergence(OraclePredictor(PAPER), PAPER, windows)
    np.testing.assert_allclose(result.excess_cross_entropy, 0.0, atol=1e-12)
    np.testing.assert_allclose(result.paper_abs_log_ratio, 0.0, atol=1e-12)
    # The Bayes cross-entropy is the one training reports for the same windows.
    assert result.bayes_cross_entropy.mean() == pytest.approx(bayes_validation_loss(PAPER, windows), rel=1e-12)


# -- a uniform model: KL = log(V + 1) − H(target) ---------------------------------------------

def test_a_uniform_model_scores_log_v_minus_the_entropy(paper_tasks):
    uniform = UniformPredictor(VOCAB)
    prompts = sample_understanding_prompts(PAPER, 30, seed=6)
    understanding = language_understanding(uniform, PAPER, prompts, leading_delimiter=True)
    oracle = Oracle(PAPER)
    letters = np.stack(prompts.queries)
    known = oracle.filter(letters, phase="start", prior=np.full(6, 1 / 6), known_intention=prompts.intentions)
    for row in understanding.rows:
        target = known.known_intention_predictive[:, row.n_letters - 1]      # the generator's next token
        np.testing.assert_allclose(row.paper.total, math.log(VOCAB) - th.entropy(target), rtol=1e-12)
    icl = in_context_learning(uniform, PAPER, paper_tasks)
    for row in icl.rows:  # the paper's target is uniform over 6 letters: KL = log 19 − log 6
        np.testing.assert_allclose(row.paper.total, math.log(VOCAB / 6), rtol=1e-12)
        np.testing.assert_allclose(row.paper_off_target, (VOCAB - 6) / VOCAB, rtol=1e-12)  # 13 of 19 tokens
    windows = stream_windows(PAPER, 4, 21, np.random.default_rng(7))
    np.testing.assert_allclose(convergence(uniform, PAPER, windows).model_cross_entropy, math.log(VOCAB), rtol=1e-15)


# -- the oracle's facts of docs/claims.md §8 -------------------------------------------------------

def test_a_leading_delimiter_tells_the_reader_where_the_message_begins():
    prompts = sample_understanding_prompts(PAPER, 30, seed=8)
    with_delimiter = language_understanding(OraclePredictor(PAPER), PAPER, prompts, leading_delimiter=True)
    without = language_understanding(OraclePredictor(PAPER), PAPER, prompts, leading_delimiter=False)
    assert with_delimiter.start_phase_difference < 1e-12 and without.start_phase_difference is None
    for row in with_delimiter.rows:
        # the reader knows the phase, and in the paper's language the first letter names θ*: nothing is ambiguous
        np.testing.assert_array_equal(row.ambiguity_epsilon, 0.0)
        np.testing.assert_allclose(row.paper.total, row.known_intention.total, atol=1e-15)
    # without it, the phase is unknown: the next token may be a delimiter, which the paper's target rules out
    assert all(row.paper.ambiguity.mean() > 0.04 for row in without.rows)


def test_the_papers_icl_target_and_its_exact_ambiguity(paper_tasks):
    target = paper_icl_target(PAPER, paper_tasks.intentions)
    owners = np.arange(PAPER.n_letters) // 3                              # the intention owning each letter
    for offset in (0, 1):
        on_block = owners[None, :] == ((paper_tasks.intentions[:, None] + offset) % 6)
        np.testing.assert_allclose(target[:, 1:][on_block], 1 / 6, rtol=1e-15)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, rtol=1e-15)
    icl = in_context_learning(OraclePredictor(PAPER), PAPER, paper_tasks)
    # m = 0: the prompt is "\n", q is uniform over the 18 first letters: KL(uniform over 6 ‖ uniform over 18) = log 3
    np.testing.assert_allclose(icl.rows[0].paper.ambiguity, math.log(3), rtol=1e-12)
    np.testing.assert_allclose(icl.rows[0].paper_off_target, 2 / 3, rtol=1e-12)  # 12 of q's 18 first letters
    for row in icl.rows[1:]:  # the last example's first letter names its intention: the chain's next step is exact
        np.testing.assert_allclose(row.paper.ambiguity, 0.0, atol=1e-15)
        np.testing.assert_array_equal(row.paper_off_target, 0.0)            # q leaks nothing off the six letters
        np.testing.assert_array_equal(row.bayes_error, 0.0)               # the query's first letter names θ*


def test_icl_skips_the_m_that_do_not_fit_and_the_papers_target_off_the_circular_chain(untrained_gpt):
    tasks = th.sample_icl_tasks(NOISY_MIXTURE, 5, 4, seed=9, prior=NOISY_MIXTURE.stationary_intentions())
    icl = in_context_learning(untrained_gpt, NOISY_MIXTURE, tasks)           # context 64: m ≤ 2 (2 + 22m tokens)
    assert [row.n_examples for row in icl.rows] == [0, 1, 2]
    assert [row.prompt_tokens for row in icl.rows] == [2, 24, 46]
    assert [m for m, _ in icl.skipped] == [3, 4]
    assert "68 tokens" in icl.skipped[0][1] and "at most 64" in icl.skipped[0][1]
    assert not has_circular_chain(NOISY_MIXTURE) and has_circular_chain(PAPER)
    assert all(row.paper is None for row in icl.rows) and icl.paper_target.startswith("not computed")


# -- sampling and reporting -----------------------------------------------------------------

def test_windows_of_a_mixture_language_come_from_many_documents():
    mixture = preset("paper-mixture", 0.0)
    assert outer_chain_mixes(PAPER) and not outer_chain_mixes(mixture)
    windows = stream_windows(mixture, 12, 30, np.random.default_rng(10))
    letters = windows[windows != DELIMITER_ID]
    blocks_per_window = [set((row[row != DELIMITER_ID] - 1) // 3) for row in windows]
    assert all(len(blocks) == 1 for blocks in blocks_per_window)              # one document, one intention
    assert len(set.union(*blocks_per_window)) > 1 and letters.size > 0        # but not the same one for all


def _estimates(tree):
    """Every {"mean", "low", "high"} dict in a report."""
    if isinstance(tree, dict):
        if set(tree) == {"mean", "low", "high"}:
            yield tree
        for value in tree.values():
            yield from _estimates(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _estimates(value)


def test_every_reported_interval_contains_its_mean(untrained_gpt):
    assert Estimate.of([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, 7 / 3 - 1.959963984540054 * math.sqrt(7 / 3) / math.sqrt(3),
                                                          7 / 3 + 1.959963984540054 * math.sqrt(7 / 3) / math.sqrt(3)))
    report = evaluate(untrained_gpt, PAPER, n_windows=4, n_prompts=6, max_examples=3, seed=11)
    estimates = list(_estimates(report))
    assert len(estimates) > 100
    assert all(e["low"] <= e["mean"] <= e["high"] for e in estimates)
    assert report["settings"]["window_tokens"] == 65
    assert [row["n_letters"] for row in report["understanding"]["with_delimiter"]["rows"]] == [1, 2, 3, 4, 5, 6]
    assert [row["m"] for row in report["icl"]["rows"]] == [0, 1, 2] and report["icl"]["skipped"][0]["m"] == 3
    json.dumps(report)                                                       # plain JSON types throughout


@pytest.mark.parametrize("bad", [dict(n_prompts=1), dict(n_windows=0), dict(max_examples=-1), dict(seed=-2)])
def test_evaluate_rejects_bad_sizes(untrained_gpt, bad):
    with pytest.raises(ValueError):
        evaluate(untrained_gpt, PAPER, **bad)


def test_understanding_prompts_need_messages_as_long_as_the_prompt():
    with pytest.raises(ValueError, match="fewer than 6 letters"):
        sample_understanding_prompts(random_language(message_length=4), 5, n_letters=6)


# -- bad input is refused with a ValueError that names it -------------------------------------

FLOAT_INTENTIONS = np.array([0.7, 1.2, 5.9])           # once truncated to [0, 1, 5] and used


@pytest.mark.parametrize("measure", ["understanding", "icl"])
def test_float_or_out_of_range_intentions_and_float_ids_are_refused_not_truncated(measure):
    if measure == "understanding":
        tasks = sample_understanding_prompts(PAPER, 3, n_letters=2, seed=12)
        read = lambda tasks: language_understanding(UniformPredictor(VOCAB), PAPER, tasks, leading_delimiter=True)
    else:
        tasks = th.sample_icl_tasks(PAPER, 3, 1, seed=12)
        read = lambda tasks: in_context_learning(UniformPredictor(VOCAB), PAPER, tasks)
    with pytest.raises(ValueError, match=r"intentions must be integer intention ids in 0\.\.5; got dtype float64"):
        read(tasks._replace(intentions=FLOAT_INTENTIONS))
    with pytest.raises(ValueError, match=r"intention 6 is outside 0\.\.5"):
        read(tasks._replace(intentions=np.array([0, 1, 6])))
    with pytest.raises(ValueError, match=r"B ≥ 1 tasks.*got intentions of shape \(2,\), 3 example lists and 3 queries"):
        read(tasks._replace(intentions=tasks.intentions[:2]))
    float_queries = [query.astype(np.float64) for query in tasks.queries]
    with pytest.raises(ValueError, match=r"\(examples and queries\) must be integer token ids; got dtype float64"):
        read(tasks._replace(queries=float_queries))


def test_icl_refuses_float_examples_and_a_fractional_max_examples():
    tasks = th.sample_icl_tasks(PAPER, 3, 2, seed=13)
    float_examples = [[message + 0.5 for message in examples] for examples in tasks.examples]
    with pytest.raises(ValueError, match="must be integer token ids; got dtype float64"):
        in_context_learning(UniformPredictor(VOCAB), PAPER, tasks._replace(examples=float_examples))
    for bad in (1.5, np.True_):
        with pytest.raises(ValueError, match=r"max_examples must be an integer in 0\.\.2"):
            in_context_learning(UniformPredictor(VOCAB), PAPER, tasks, max_examples=bad)


@pytest.mark.parametrize("intentions, words", [
    ([1.7], "integer intention ids in 0..5; got dtype float64"),
    ([-1], "intention -1 is outside 0..5 .*negative ids do not wrap"),
    ([6], "intention 6 is outside 0..5"),
    (2, r"one θ\* per task; got shape \(\)"),
])
def test_the_papers_icl_target_refuses_bad_intentions(intentions, words):
    with pytest.raises(ValueError, match=words):
        paper_icl_target(PAPER, intentions)


def test_predictor_log_probs_reads_b_by_t_integer_ids_in_positive_batches():
    tokens = stream_windows(PAPER, 5, 4, np.random.default_rng(14))
    oracle_model = OraclePredictor(PAPER)
    np.testing.assert_array_equal(predictor_log_probs(oracle_model, tokens, batch_size=2),
                                  predictor_log_probs(oracle_model, tokens))         # chunks change nothing
    with pytest.raises(ValueError, match="tokens must be integer token ids; got dtype float64"):
        predictor_log_probs(oracle_model, tokens + 0.5)                              # once floored
    with pytest.raises(ValueError, match=r"tokens: token id 19 is outside the vocabulary \[0, 19\)"):
        predictor_log_probs(UniformPredictor(VOCAB), np.full((1, 3), VOCAB))
    with pytest.raises(ValueError, match=r"tokens must be a \(B, T\) array.*got shape \(4,\)"):
        predictor_log_probs(oracle_model, tokens[0])                                 # once a (T, V + 1) answer
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            predictor_log_probs(oracle_model, tokens, batch_size=bad)


@pytest.mark.parametrize("model_vocab", [5, 30])
def test_convergence_refuses_a_predictor_over_another_vocabulary(model_vocab):
    windows = stream_windows(PAPER, 3, 6, np.random.default_rng(15))
    with pytest.raises(ValueError, match=rf"\(B, T, V \+ 1\).*V \+ 1 = 19 tokens.*got shape \(3, 5, {model_vocab}\)"):
        convergence(UniformPredictor(model_vocab), PAPER, windows)


@pytest.mark.parametrize("bad", [2.5, 0, -3, None, True, "19"])
def test_a_uniform_predictor_needs_a_positive_integer_vocabulary(bad):
    with pytest.raises(ValueError, match="vocab_size .* must be a positive integer"):
        UniformPredictor(bad)


def test_an_oracle_predictor_refuses_an_unknown_phase_at_once():
    with pytest.raises(ValueError, match="phase must be one of start, unknown; got 'x'"):
        OraclePredictor(PAPER, phase="x")


@pytest.mark.parametrize("name, bad", [("n_windows", None), ("n_prompts", math.inf), ("max_examples", np.True_),
                                       ("max_examples", 1.0), ("seed", 2.0), ("max_letters", 2.0), ("window_length", 2.5),
                                       ("window_length", 1)])
def test_evaluate_refuses_counts_that_are_not_integers(name, bad):
    small = dict(n_windows=4, n_prompts=4, max_letters=2, max_examples=1, window_length=9)  # fast, should one slip by
    with pytest.raises(ValueError, match=f"{name} must be an integer ≥"):
        evaluate(UniformPredictor(VOCAB), PAPER, **{**small, name: bad})


# -- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 3-step run of a tiny model with a 48-token context."""
    out = tmp_path_factory.mktemp("eval") / "run"
    config = GPTConfig(vocab_size=VOCAB, context_length=48, n_layer=1, n_head=2, d_model=16)
    train(preset("paper", 0.0), config, TrainConfig(steps=3, batch_size=4, eval_windows=4, seed=0), out, progress=False)
    return out / "ckpt.npz"


SMALL = ["--windows", "4", "--prompts", "5", "--max-examples", "3"]


def test_eval_writes_json_atomically_and_prints_tables(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(checkpoint), *SMALL, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["step"] == 3 and report["language"] == "paper(eta=0)"
    assert set(report) >= {"checkpoint", "settings", "convergence", "understanding", "icl"}
    assert [row["m"] for row in report["icl"]["rows"]] == [0, 1, 2] and report["icl"]["skipped"][0]["m"] == 3
    assert list(tmp_path.iterdir()) == [out]                                 # no temporary file left behind
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), *SMALL]) == 0
    text = capsys.readouterr().out
    assert "excess (model − Bayes)" in text and "m = 3 skipped" in text
    assert text.count("(model's p off the target's letters)") == 3                # the paper's target, m = 0, 1, 2
    assert all(0.0 <= row["paper_off_target"]["mean"] <= 1.0 for row in report["icl"]["rows"])
    assert main(["eval", "--checkpoint", str(checkpoint), *SMALL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["prompts"] == 5


@pytest.mark.parametrize("arguments", [
    ["eval", "--checkpoint", "no/such/ckpt.npz"],
    ["eval", "--checkpoint", "CHECKPOINT", "--prompts", "1"],
    ["eval", "--checkpoint", "CHECKPOINT", "--max-examples", "-1"],
    ["eval", "--checkpoint", "CHECKPOINT", "--max-examples", "100000000"],  # refused before any task is drawn
    ["eval", "--checkpoint", "CHECKPOINT", "--max-letters", "100000000"],
    ["eval"],
])
def test_eval_bad_input_is_one_line_and_exit_2(checkpoint, arguments, capsys):
    assert_one_line_error(capsys, main, [str(checkpoint) if a == "CHECKPOINT" else a for a in arguments])
