"""The exact oracle against brute-force enumeration, the chain rule, degenerate cases,
windows from a sampled stream, and long-sequence stability."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import brute_force
from tinylatent.language import (
    Language, mixture_language, paper_language, random_language, sample_corpus, sample_windows,
)
from tinylatent.oracle import Oracle, describe_impossible, posterior_error


# A relative tolerance cannot hold for a log-probability whose exact value is 0 (a token of
# probability 1): float64 gives ±a few 1e-16 there. 1e-14 is about 50 ulps of 1.
LOG_ATOL = 1e-14


@st.composite
def small_languages(draw):
    """Random small languages: K ≤ 3 intentions, V ≤ 4 letters, messages of 1..3 letters."""
    n_letters = draw(st.integers(1, 4))
    low = draw(st.integers(1, 2))
    high = draw(st.integers(low, 3))
    return random_language(
        n_intentions=draw(st.integers(1, 3)),
        n_letters=n_letters,
        letters_per_intention=draw(st.one_of(st.none(), st.integers(1, n_letters))),
        message_length=(low, high),
        concentration=draw(st.sampled_from([0.3, 1.0, 5.0])),
        eta=draw(st.sampled_from([0.0, 0.05])),
        noisy_first_letter=draw(st.booleans()),
        transition=draw(st.sampled_from(["random", "identity", "uniform", "circular"])),
        seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def language_and_prompt(draw, max_tokens=5):
    language = draw(small_languages())
    seed = draw(st.integers(0, 2**16))
    length = draw(st.integers(1, max_tokens))
    stream = sample_corpus(language, 12, seed).tokens
    start = draw(st.integers(0, max(0, len(stream) - length)))
    return language, stream[start:start + length], start


@given(language_and_prompt())
def test_unknown_phase_matches_enumeration(case):
    language, prompt, _ = case
    oracle = Oracle(language)
    result = oracle.filter(prompt, phase="unknown", known_intention=0)
    expected = brute_force.marginal(language, prompt, "unknown")
    assert expected > 0  # cut from a sampled stream, so possible
    np.testing.assert_allclose(result.log_marginal[0], np.log(expected), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.posterior[0, -1], brute_force.posterior_last(language, prompt, "unknown"), atol=1e-10)
    np.testing.assert_allclose(result.predictive[0, -1], brute_force.predictive(language, prompt, "unknown"), atol=1e-10)
    posterior_next = np.array([sum(w for w, th in brute_force.paths(language, list(prompt) + [v], "unknown") if th[-1] == 0)
                               for v in range(language.vocab_size)])
    if posterior_next.sum() > 0:  # q(θ_{t+1} = 0 | x) > 0: the conditional is defined
        np.testing.assert_allclose(result.known_intention_predictive[0, -1],
                                   brute_force.known_intention_predictive(language, prompt, 0, "unknown"), atol=1e-10)


@given(language_and_prompt(), st.data())
def test_known_phase_matches_enumeration(case, data):
    language, _, _ = case
    seed = data.draw(st.integers(0, 2**16))
    stream = sample_corpus(language, 6, seed).tokens
    prompt = stream[: data.draw(st.integers(1, min(6, len(stream))))]
    theta = data.draw(st.integers(0, language.n_intentions - 1))
    oracle = Oracle(language)
    result = oracle.filter(prompt, phase="start", known_intention=theta)
    # LOG_ATOL: a log-probability whose exact value is 0 (q = 1) comes out as ±a few 1e-16
    np.testing.assert_allclose(result.log_marginal[0], np.log(brute_force.marginal(language, prompt)),
                               rtol=1e-10, atol=LOG_ATOL)
    for t in range(len(prompt)):  # every position, not only the last
        np.testing.assert_allclose(result.posterior[0, t], brute_force.posterior_last(language, prompt[:t + 1]), atol=1e-10)
        np.testing.assert_allclose(result.predictive[0, t], brute_force.predictive(language, prompt[:t + 1]), atol=1e-10)
    mass = sum(w for v in range(language.vocab_size)
               for w, th in brute_force.paths(language, list(prompt) + [v], "start") if th[-1] == theta)
    if mass > 0:
        np.testing.assert_allclose(result.known_intention_predictive[0, -1],
                                   brute_force.known_intention_predictive(language, prompt, theta), atol=1e-10)


@given(language_and_prompt(max_tokens=30))
def test_chain_rule_and_normalisation(case):
    language, prompt, _ = case
    for phase in ("start", "unknown"):
        result = Oracle(language).filter(prompt, phase=phase)
        assert np.isclose(result.token_log_probs.sum(), result.log_marginal[0])
        if not result.possible[0]:  # a window of the stream read as if it began a message
            assert phase == "start" and result.log_marginal[0] == -np.inf
            continue
        np.testing.assert_allclose(result.posterior.sum(-1), 1.0, atol=1e-12)
        np.testing.assert_allclose(result.predictive.sum(-1), 1.0, atol=1e-12)
        # the predictive at t-1 gives exactly the probability the filter used for token t
        used = result.predictive[0, np.arange(len(prompt) - 1), prompt[1:]]
        np.testing.assert_allclose(np.log(used), result.token_log_probs[0, 1:], rtol=1e-12, atol=LOG_ATOL)


def test_batch_equals_one_at_a_time():
    language = random_language(3, 5, letters_per_intention=2, message_length=(2, 4), eta=0.02, seed=3)
    windows = sample_windows(language, 7, 15, seed=1)
    oracle = Oracle(language)
    for phase in ("start", "unknown"):
        batch = oracle.filter(windows, phase=phase, known_intention=np.arange(7) % 3)
        for b in range(7):
            single = oracle.filter(windows[b], phase=phase, known_intention=b % 3)
            # equal up to BLAS summation order, which may depend on the batch size
            np.testing.assert_allclose(batch.token_log_probs[b], single.token_log_probs[0], rtol=1e-13)
            np.testing.assert_allclose(batch.predictive[b], single.predictive[0], rtol=1e-13, atol=1e-16)
            np.testing.assert_allclose(batch.known_intention_predictive[b], single.known_intention_predictive[0],
                                       rtol=1e-13, atol=1e-16)


def test_one_intention_is_a_plain_markov_chain():
    """K = 1: no latent variable; q(x) is the product of the letter chain's probabilities."""
    language = random_language(1, 4, message_length=3, seed=5)
    prompt = sample_corpus(language, 3, seed=2).tokens  # 3 messages of 3 letters + delimiters
    s, a = language.first_letter[0], language.letter_transition[0]
    expected = 0.0
    for m in range(3):
        letters = prompt[4 * m: 4 * m + 3] - 1
        expected += np.log(s[letters[0]]) + np.log(a[letters[0], letters[1]]) + np.log(a[letters[1], letters[2]])
    result = Oracle(language).filter(prompt, phase="start")
    np.testing.assert_allclose(result.log_marginal[0], expected, rtol=1e-12)
    np.testing.assert_array_equal(result.posterior, 1.0)


def test_identity_chain_is_a_static_mixture():
    """T = I: q(x) = Σ_θ π(θ) Π_messages q(message | θ), the messages independent given θ."""
    base = random_language(3, 4, message_length=2, eta=0.1, seed=7)
    language = mixture_language(base, prior=np.array([0.2, 0.3, 0.5]))
    prompt = sample_corpus(language, 4, seed=3).tokens
    oracle = Oracle(language)
    per_theta = np.zeros(3)
    for theta in range(3):
        one = Oracle(Language(initial=np.eye(3)[theta], transition=np.eye(3), first_letter=language.first_letter,
                              letter_transition=language.letter_transition, length_probs=language.length_probs))
        per_theta[theta] = one.log_marginal(prompt)[0]
    expected = np.log(np.sum(language.initial * np.exp(per_theta)))
    np.testing.assert_allclose(oracle.log_marginal(prompt)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(oracle.posterior(prompt)[0, -1], language.initial * np.exp(per_theta - expected), rtol=1e-10)


def test_unambiguous_language_posterior_is_one_hot_after_the_first_letter():
    language = paper_language(0.0)
    corpus = sample_corpus(language, 30, seed=11)
    posterior = Oracle(language).posterior(corpus.tokens, phase="start")[0]
    message_of_token = np.repeat(np.arange(30), 22)
    np.testing.assert_array_equal(posterior, np.eye(6)[corpus.intentions[message_of_token]])


def test_windows_from_the_stream_match_the_unknown_phase_oracle():
    """Empirical frequencies of short windows cut from a long stream equal q(x) (unknown phase)."""
    language = random_language(2, 3, letters_per_intention=2, message_length=(1, 2), transition="random", seed=4)
    n_windows = 40_000
    windows = sample_windows(language, n_windows, 3, seed=0, burn_in_messages=30)
    codes = windows @ (language.vocab_size ** np.arange(3))
    counts = np.bincount(codes, minlength=language.vocab_size ** 3)
    all_windows = np.array(np.meshgrid(*[np.arange(language.vocab_size)] * 3, indexing="ij")).reshape(3, -1).T[:, ::-1]
    codes_all = all_windows @ (language.vocab_size ** np.arange(3))
    probs = np.exp(Oracle(language).log_marginal(all_windows, phase="unknown"))
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-12)
    expected = np.zeros_like(probs)
    expected[codes_all] = probs
    assert np.all(counts[expected == 0] == 0)
    from scipy.stats import chisquare
    keep = expected > 0
    statistic, p_value = chisquare(counts[keep], expected[keep] / expected[keep].sum() * n_windows)
    assert p_value > 1e-3, (statistic, p_value)


def test_long_peaked_sequences_stay_finite_and_normalised():
    language = random_language(4, 6, letters_per_intention=3, message_length=(5, 30), concentration=0.05,
                               eta=1e-9, transition="random", seed=9)
    stream = sample_corpus(language, 800, seed=1).tokens[:10_000]
    assert len(stream) == 10_000
    for phase in ("start", "unknown"):
        result = Oracle(language).filter(stream, phase=phase)
        assert result.possible[0]
        assert np.isfinite(result.log_marginal[0]) and result.log_marginal[0] < -1000
        assert np.all(np.isfinite(result.posterior)) and np.all(np.isfinite(result.predictive))
        np.testing.assert_allclose(result.posterior.sum(-1), 1.0, atol=1e-12)
        np.testing.assert_allclose(result.predictive.sum(-1), 1.0, atol=1e-12)


def test_impossible_sequences_give_minus_infinity_and_a_report():
    language = paper_language(0.0)
    oracle = Oracle(language)
    prompt = language.encode("abd")  # d is outside intention 0's block: impossible after "ab"
    possible = language.encode("abc")
    result = oracle.filter(np.stack([prompt, possible]), phase="start")
    assert result.log_marginal[0] == -np.inf and np.isfinite(result.log_marginal[1])
    assert list(result.first_impossible) == [2, -1]
    assert not np.any(np.isnan(result.posterior)) and not np.any(np.isnan(result.predictive))
    assert "position 2" in describe_impossible(language, prompt, result)
    too_long = language.encode("a" * 30)  # a message has exactly 21 letters
    for phase in ("start", "unknown"):
        result = oracle.filter(too_long, phase=phase)
        assert result.log_marginal[0] == -np.inf and result.first_impossible[0] == 21  # the 22nd letter, in either phase
    double_delimiter = language.encode("a\n\n")
    assert oracle.log_marginal(double_delimiter)[0] == -np.inf


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 0), dtype=np.int64), "empty"),
    (np.array([[0, 19]]), "outside the vocabulary"),
    (np.array([[-1, 2]]), "outside the vocabulary"),
    (np.array([[0.5, 2.0]]), "integer"),
    (np.zeros((1, 2, 3), dtype=np.int64), "shape"),
])
def test_bad_prompts_are_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        Oracle(paper_language(0.0)).filter(bad)


def test_bad_options_are_value_errors():
    oracle = Oracle(paper_language(0.0))
    with pytest.raises(ValueError, match="phase"):
        oracle.filter([1, 2], phase="middle")
    with pytest.raises(ValueError, match="known_intention"):
        oracle.filter([1, 2], known_intention=6)
    with pytest.raises(ValueError, match="prior"):
        oracle.filter([1, 2], prior=[1.0, 0.0])


# -- underflow: a posterior below float64's range must not make a possible prompt impossible --------

def mixture_reference(language, tokens):
    """For a mixture language (T = I, one intention per document), by direct sums of logs, no filter:

    cumulative[θ, t] = log q(x_{≤t} | θ) and next_token[θ, t, v] = log q(x_{t+1} = v | x_{≤t}, θ).
    """
    assert np.array_equal(language.transition, np.eye(language.n_intentions))
    hazard = language.stop_probs()
    with np.errstate(divide="ignore"):
        log_s, log_a = np.log(language.first_letter), np.log(language.letter_transition)

    def log_step(theta, n, previous, token):  # log q(token | θ, n letters so far, previous letter)
        h = hazard[n] if n < len(hazard) else 1.0
        with np.errstate(divide="ignore"):
            if n == 0:
                return -np.inf if token == 0 else log_s[theta, token - 1]
            return np.log(h) if token == 0 else np.log(1.0 - h) + log_a[theta, previous, token - 1]

    length, vocab = len(tokens), language.vocab_size
    cumulative = np.zeros((language.n_intentions, length))
    next_token = np.zeros((language.n_intentions, length, vocab))
    for theta in range(language.n_intentions):
        total, n, previous = 0.0, 0, None
        for t, token in enumerate(int(x) for x in tokens):
            total += log_step(theta, n, previous, token)
            n, previous = (0, None) if token == 0 else (n + 1, token - 1)
            cumulative[theta, t] = total
            next_token[theta, t] = [log_step(theta, n, previous, v) for v in range(vocab)]
    return cumulative, next_token


def two_chain_language(message_length):
    """θ0 writes a→a always; θ1 writes a→a or a→b, ½ each. After m letters 'a' the posterior
    odds of θ1 are 2^−m: below float64's range (~1e-308) after ~1025 letters."""
    from tinylatent.language import fixed_length
    letter_transition = np.array([[[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]])
    return Language(initial=[0.5, 0.5], transition=np.eye(2), first_letter=[[1.0, 0.0], [1.0, 0.0]],
                    letter_transition=letter_transition, length_probs=fixed_length(message_length))


@pytest.mark.parametrize("message_length, text", [
    (1200, "a" * 1199 + "b"),                    # one long message; 'b' only θ1 can write
    (25, ("a" * 25 + "\n") * 50 + "ab"),          # 50 short messages of a mixture, then 'b'
], ids=["one-long-message", "fifty-messages"])
def test_a_posterior_below_float64_range_keeps_a_possible_prompt_possible(message_length, text):
    language = two_chain_language(message_length)
    tokens = language.encode(text)
    result = Oracle(language).filter(tokens, phase="start", known_intention=1)
    cumulative, next_token = mixture_reference(language, tokens)
    log_joint = np.log(language.initial)[:, None] + cumulative                    # log q(θ, x_{≤t}), (K, T)
    log_prefix = np.logaddexp(log_joint[0], log_joint[1])                         # log q(x_{≤t})
    assert result.first_impossible[0] == -1 and result.possible[0]
    np.testing.assert_allclose(result.log_marginal[0], log_prefix[-1], rtol=1e-12)
    np.testing.assert_allclose(result.token_log_probs[0], np.diff(log_prefix, prepend=0.0), rtol=1e-10, atol=LOG_ATOL)
    posterior = np.exp(log_joint - log_prefix).T                                   # (T, K)
    assert posterior[-2, 1] < 1e-300 and posterior[-1, 1] == 1.0                  # the case this is about
    np.testing.assert_allclose(result.posterior[0], posterior, rtol=1e-10, atol=1e-300)
    predictive = np.einsum("tk,ktv->tv", posterior, np.exp(next_token))
    np.testing.assert_allclose(result.predictive[0], predictive, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(result.known_intention_predictive[0], np.exp(next_token[1]), rtol=1e-12, atol=1e-300)


def test_unknown_phase_keeps_a_possible_prompt_possible_past_float64_range():
    """1200 letters and no delimiter in 1200-letter messages: the window must start right after a
    delimiter (n = 0), so q(x) = Σ_θ μ(θ) q(x | θ) / (E[length] + 1), and only θ1 can write 'b'."""
    language = two_chain_language(1200)
    tokens = language.encode("a" * 1199 + "b")
    result = Oracle(language).filter(tokens, phase="unknown", known_intention=1)
    mu = language.stationary_intentions()
    expected = np.log(mu[1]) - np.log(1201.0) + 1199 * np.log(0.5)   # s_1[a] = 1, then 1199 steps of ½
    assert result.first_impossible[0] == -1
    np.testing.assert_allclose(result.log_marginal[0], expected, rtol=1e-12)
    np.testing.assert_allclose(result.posterior[0, -1], [0.0, 1.0], atol=1e-300)
    np.testing.assert_allclose(result.known_intention_predictive[0, -1], [1.0, 0.0, 0.0])  # the message is full


@pytest.mark.parametrize("phase", ["start", "unknown"])
def test_a_language_whose_smallest_factors_multiply_below_float64_is_filtered_exactly(phase):
    """Entries of 1e-170 in T, s_θ and A_θ: the product of the smallest one-step factors (the
    underflow floor's denominator) is 0 in float64. Building the oracle used to divide by it
    (ZeroDivisionError); the floor, computed with logs, is now above 1, so every sequence runs
    in log space, and the answers are the enumeration's."""
    tiny = 1e-170
    language = Language(initial=[0.5, 0.5], transition=[[1 - tiny, tiny], [tiny, 1 - tiny]],
                        first_letter=[[1 - tiny, tiny], [0.5, 0.5]],
                        letter_transition=[[[1 - tiny, tiny], [0.5, 0.5]], [[0.5, 0.5], [tiny, 1 - tiny]]],
                        length_probs=[0.0, 0.5, 0.5])
    oracle = Oracle(language)
    assert oracle.known_phase_floor > 1.0 and oracle.unknown_phase_floor > 1.0
    prompt = language.encode("ab\nbb\na")
    result = oracle.filter(prompt, phase=phase)
    np.testing.assert_allclose(result.log_marginal[0], np.log(brute_force.marginal(language, prompt, phase)), rtol=1e-12)
    np.testing.assert_allclose(result.posterior[0, -1], brute_force.posterior_last(language, prompt, phase), atol=1e-12)
    np.testing.assert_allclose(result.predictive[0, -1], brute_force.predictive(language, prompt, phase), atol=1e-12)


def test_near_underflow_rows_are_redone_alone_and_true_zeros_stay_impossible():
    """A batch mixing a near-underflow row, truly impossible rows and an ordinary row: each row
    is what it is alone, and an impossible prompt is reported at its first impossible token."""
    language = two_chain_language(1200)
    oracle = Oracle(language)
    texts = ["a" * 1199 + "b",          # possible (θ1 only), posterior of θ1 ~ 2^-1198 before 'b'
             "a" * 1150 + "\n\n" + "a" * 48,  # a message of 1150 letters (start phase: impossible
                                               # at 1150); two delimiters in a row (either phase: at 1151)
             "a" * 1199 + "a",          # possible under both; θ1's posterior ends ~2^-1199
             "b" + "a" * 1199]          # a message cannot open with 'b': impossible at 0
    batch = np.stack([language.encode(text) for text in texts])
    for phase in ("start", "unknown"):
        result = oracle.filter(batch, phase=phase)
        if phase == "start":
            assert list(result.first_impossible) == [-1, 1150, -1, 0]
        else:  # a window may start inside a message: 'b' first is possible after n ≥ 1 hidden letters,
            # but then its message is full before the window ends (1200 letters at most)
            assert list(result.first_impossible) == [-1, 1151, -1, 1199]
        assert not np.any(np.isnan(result.posterior)) and not np.any(np.isnan(result.predictive))
        for b in range(len(texts)):
            alone = oracle.filter(batch[b], phase=phase)
            np.testing.assert_array_equal(result.token_log_probs[b], alone.token_log_probs[0])
            np.testing.assert_allclose(result.posterior[b], alone.posterior[0], rtol=1e-13, atol=1e-300)
    # a long truly impossible prompt: θ0 only writes 'a', θ1 had posterior ~2^-1100 when the message was cut short
    too_early = oracle.filter(language.encode("a" * 1100 + "\n"), phase="start")
    assert too_early.first_impossible[0] == 1100 and too_early.log_marginal[0] == -np.inf


def test_message_ambiguity_is_accurate_when_tiny():
    """ε = Σ_{θ≠θ*} q(θ | x), not 1 − q(θ* | x), which is 0 for ε < 1.1e-16 (η = 0.005, noisy first letter)."""
    from tinylatent.language import sample_messages
    language = paper_language(0.005, noisy_first_letter=True)
    mixture = mixture_language(language, prior=np.full(6, 1 / 6))
    messages = np.stack(sample_messages(language, np.zeros(20, dtype=np.int64), np.random.default_rng(1)))
    epsilon = Oracle(language).message_ambiguity(messages, 0, prior=np.full(6, 1 / 6))
    expected = np.empty(len(messages))
    for m, message in enumerate(messages):
        cumulative, _ = mixture_reference(mixture, message)
        log_joint = np.log(1 / 6) + cumulative[:, -1]
        expected[m] = np.exp(np.logaddexp.reduce(log_joint[1:]) - np.logaddexp.reduce(log_joint))
    assert expected.min() < 1e-16 and expected.min() > 0.0
    np.testing.assert_allclose(epsilon, expected, rtol=1e-9)


@pytest.mark.parametrize("true_intentions, message", [
    ([7], r"true intentions must lie in \[0, 2\); found 7"),
    ([-1], "found -1"),
    ([0.5], "true intentions must be integers"),
    ([True], "true intentions must be integers"),
    (0, r"a \(B, K\) posterior and \(B,\) true intentions; got shapes \(1, 2\) and \(\)"),
])
def test_posterior_error_refuses_intentions_it_cannot_read(true_intentions, message):
    """Each of these used to give an error of 1, 0.9 or an IndexError."""
    with pytest.raises(ValueError, match=message):
        posterior_error(np.array([[0.9, 0.1]]), true_intentions)


def test_prior_and_intentions_are_checked():
    oracle = Oracle(paper_language(0.02))
    prompt = paper_language(0.02).encode("abca")
    slightly_off = np.full(6, 1 / 6)
    slightly_off[0] += 5e-6
    with pytest.raises(ValueError, match=r"sum to 1 within 1e-09.*1\.000005"):
        oracle.filter(prompt, prior=slightly_off)
    within = np.full(6, 1 / 6)
    within[0] += 5e-10
    assert np.isfinite(oracle.filter(prompt, prior=within).log_marginal[0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        oracle.filter(prompt, prior=[np.nan] + [0.2] * 5)
    for bad in (1.7, np.array([0.0, 1.0]), True):
        with pytest.raises(ValueError, match=r"known_intention must be integer intention ids in 0\.\.5"):
            oracle.filter(np.stack([prompt, prompt]), known_intention=bad)
    with pytest.raises(ValueError, match="one per sequence"):
        oracle.filter(np.stack([prompt, prompt]), known_intention=[0, 1, 2])
    with pytest.raises(ValueError, match=r"true_intentions: intention -1 is outside 0\.\.5"):
        oracle.message_ambiguity(prompt, -1)
    with pytest.raises(ValueError, match="true_intentions must be integer"):
        oracle.message_ambiguity(prompt, 0.5)
    ok = oracle.filter(np.stack([prompt, prompt]), known_intention=np.array([0, 5], dtype=np.int32))
    assert ok.known_intention_predictive.shape == (2, 4, 19)
