"""Ambiguity statistics: exact enumeration against sampling, textbook cases, the paper's reference values."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinylatent.ambiguity import measure_ambiguity, wilson_interval
from tinylatent.language import paper_language, random_language


def test_unambiguous_language_has_zero_ambiguity_exactly():
    language = random_language(3, 6, letters_per_intention=2, message_length=3, seed=1)  # disjoint blocks
    report = measure_ambiguity(language)
    assert report.method == "exact"
    assert report.map_error.value == 0.0 and report.mean_posterior_error.value == 0.0
    assert report.fraction_ambiguous.value == 0.0


def test_identical_intentions_are_maximally_ambiguous():
    """Two intentions writing with the same chains: q(θ|x) = prior, so E[ε] = 1 − Σ μ(θ)²."""
    base = random_language(1, 3, message_length=2, seed=4)
    from tinylatent.language import Language
    language = Language(initial=[0.3, 0.7], transition=[[0.3, 0.7], [0.3, 0.7]],
                        first_letter=np.repeat(base.first_letter, 2, axis=0),
                        letter_transition=np.repeat(base.letter_transition, 2, axis=0),
                        length_probs=base.length_probs)
    report = measure_ambiguity(language)
    assert report.mean_posterior_error.value == pytest.approx(1 - (0.3 ** 2 + 0.7 ** 2), abs=1e-12)
    assert report.fraction_ambiguous.value == pytest.approx(1.0)
    # the transitions tie exactly, so the MAP guess is always intention 0: wrong with probability 0.7
    assert report.map_error.value == pytest.approx(0.7, abs=1e-12)


@settings(max_examples=8)
@given(seed=st.integers(0, 1000), eta=st.sampled_from([0.0, 0.05, 0.3]))
def test_sampled_estimates_cover_the_exact_values(seed, eta):
    language = random_language(3, 4, letters_per_intention=3, message_length=(2, 4), eta=eta, seed=seed)
    exact = measure_ambiguity(language, exact=True)
    sampled = measure_ambiguity(language, n_messages=20_000, seed=seed, exact=False)
    for name in ["map_error", "mean_posterior_error", "fraction_ambiguous"]:
        e, s = getattr(exact, name), getattr(sampled, name)
        half = max(s.high - s.value, s.value - s.low)
        # 95% intervals; widened to 4 standard errors so 3 checks × 8 examples rarely miss by chance
        assert abs(e.value - s.value) <= 2.05 * half + 1e-12, (name, e, s)


def test_paper_language_map_error_near_the_reference_values():
    """docs/claims.md §2: an independent re-simulation gave 0.062 at η = 0.02 and 0.157 at η = 0.04."""
    for eta, reference in [(0.02, 0.062), (0.04, 0.157)]:
        report = measure_ambiguity(paper_language(eta), n_messages=20_000, seed=0)
        assert report.map_error.low - 0.005 <= reference <= report.map_error.high + 0.005, report.map_error
        # and the first letter reveals θ in the faithful language: ε(x) = 0 for every message (docs/claims.md §8)
        assert report.mean_posterior_error.value == 0.0
    noisy = measure_ambiguity(paper_language(0.02, noisy_first_letter=True), n_messages=5000, seed=0)
    assert noisy.mean_posterior_error.value > 0.01 and noisy.fraction_ambiguous.value > 0.9


def test_wilson_interval_textbook_value():
    # 0 successes in 10 trials: Wilson upper bound = z²/(n + z²) = 0.2775 for z = 1.96
    interval = wilson_interval(0, 10)
    assert interval.low == 0.0 and interval.high == pytest.approx(0.27753, abs=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="too many to enumerate"):
        measure_ambiguity(paper_language(0.02), exact=True)
    with pytest.raises(ValueError, match="n_messages"):
        measure_ambiguity(paper_language(0.02), n_messages=1, exact=False)
    with pytest.raises(ValueError, match="n_messages must be an integer ≥ 2; got None"):
        measure_ambiguity(paper_language(0.02), n_messages=None, exact=False)
    with pytest.raises(ValueError, match="exact must be True, False or None"):
        measure_ambiguity(paper_language(0.02), exact="no")        # a non-empty string used to mean True
    for successes, trials in ((0, 0), (3, 2), (-1, 5), (1.5, 4), (True, 3)):
        with pytest.raises(ValueError, match="wilson_interval needs integers 0 ≤ successes ≤ trials"):
            wilson_interval(successes, trials)


def enumerated_statistics(language):
    """fraction_ambiguous, mean_posterior_error and map_error by enumerating every message, in log
    space and without the oracle: log q(x | θ) = log q(length) + log s_θ[x_1] + Σ log A_θ[x_i, x_{i+1}].
    (The MAP guess is the paper code's rule, ``map_intentions``; what is checked is the sum.)"""
    import itertools
    from scipy.special import logsumexp
    from tinylatent.ambiguity import map_intentions
    prior = language.stationary_intentions()
    with np.errstate(divide="ignore"):
        log_prior, log_s, log_a = np.log(prior), np.log(language.first_letter), np.log(language.letter_transition)
    fraction = mean_error = map_error = 0.0
    for length in np.nonzero(language.length_probs)[0]:
        for letters in itertools.product(range(language.n_letters), repeat=int(length)):
            log_joint = log_prior + np.log(language.length_probs[length]) + log_s[:, letters[0]]
            for a, b in zip(letters[:-1], letters[1:]):
                log_joint = log_joint + log_a[:, a, b]
            log_marginal = logsumexp(log_joint)
            if log_marginal == -np.inf:
                continue
            writers = np.isfinite(log_joint)
            fraction += np.exp(log_marginal) * (writers.sum() >= 2)
            posterior = np.exp(log_joint - log_marginal)
            for true in np.flatnonzero(writers):  # Σ_θ* q(θ*, x) Σ_{θ≠θ*} q(θ | x)
                mean_error += np.exp(log_joint[true]) * np.delete(posterior, true).sum()
            guess = map_intentions(language, np.array([letters]))[0]
            map_error += np.exp(np.delete(log_joint, guess)).sum()  # Σ_{θ≠MAP(x)} q(θ, x)
    return fraction, mean_error, map_error


def test_tiny_ambiguities_count_exact_and_sampled():
    """θ0 writes only a, b; θ1 writes c with 1 − 2η and a, b with η each. A message of θ0 (half of
    all) can also come from θ1, with ε = η^n / (½^n + η^n) ≈ 6e-17 for η = 1e-3, n = 6: below what
    1 − q(θ* | x) resolves. A message with a c only θ1 writes. So fraction_ambiguous = ½ + ½ (2η)^n."""
    from tinylatent.language import Language, fixed_length
    eta, n = 1e-3, 6
    theta0 = np.array([0.5, 0.5, 0.0])
    theta1 = np.array([eta, eta, 1 - 2 * eta])
    language = Language(initial=[0.5, 0.5], transition=np.full((2, 2), 0.5),
                        first_letter=np.stack([theta0, theta1]),
                        letter_transition=np.stack([np.tile(theta0, (3, 1)), np.tile(theta1, (3, 1))]),
                        length_probs=fixed_length(n))
    fraction = 0.5 + 0.5 * (2 * eta) ** n
    epsilon_theta0 = eta ** n / (0.5 ** n + eta ** n)
    # E[ε] = Σ_x Σ_θ* q(θ*, x) (1 − q(θ* | x)) = Σ_{x in {a,b}^n} 2 q(θ0, x) q(θ1, x) / q(x), 2^n equal terms
    mean_error = 2 ** n * 2 * (0.5 * 0.5 ** n) * (0.5 * eta ** n) / (0.5 * 0.5 ** n + 0.5 * eta ** n)
    assert epsilon_theta0 < 1e-16
    exact = measure_ambiguity(language, exact=True)
    assert exact.fraction_ambiguous.value == pytest.approx(fraction, rel=1e-12)
    assert exact.mean_posterior_error.value == pytest.approx(mean_error, rel=1e-9, abs=0.0)
    np.testing.assert_allclose(enumerated_statistics(language)[:2], [fraction, mean_error], rtol=1e-9)
    assert exact.map_error.value == pytest.approx(enumerated_statistics(language)[2], rel=1e-9, abs=0.0)
    sampled = measure_ambiguity(language, n_messages=4000, seed=3, exact=False)
    assert sampled.fraction_ambiguous.low <= fraction <= sampled.fraction_ambiguous.high, sampled.fraction_ambiguous


@pytest.mark.parametrize("eta", [1e-4, 1e-6])
def test_exact_statistics_match_an_independent_enumeration_with_tiny_noise(eta):
    """The paper's construction at K = 2, V = 4: every row of A_θ points into θ's own two letters,
    then η noise on every row and on the first letter. Every message can come from either
    intention, so the true fraction is 1, although ε(x) ≈ (2η)^6 < 1e-16 for a message inside a block."""
    from tinylatent.language import Language, add_noise, fixed_length
    letter_transition, first_letter = np.zeros((2, 4, 4)), np.zeros((2, 4))
    letter_transition[0, :, 0:2] = first_letter[0, 0:2] = 0.5
    letter_transition[1, :, 2:4] = first_letter[1, 2:4] = 0.5
    letter_transition, first_letter = add_noise(letter_transition, first_letter, eta, True)
    language = Language(initial=[0.5, 0.5], transition=np.eye(2), first_letter=first_letter,
                        letter_transition=letter_transition, length_probs=fixed_length(6))
    report = measure_ambiguity(language, exact=True)
    fraction, mean_error, map_error = enumerated_statistics(language)
    assert fraction == pytest.approx(1.0, abs=1e-12)
    assert report.fraction_ambiguous.value == pytest.approx(1.0, abs=1e-12)
    assert report.mean_posterior_error.value == pytest.approx(mean_error, rel=1e-9, abs=0.0)
    assert report.map_error.value == pytest.approx(map_error, rel=1e-9, abs=0.0)  # tiny: summed, not 1 − q(MAP)
    sampled = measure_ambiguity(language, n_messages=2000, seed=0, exact=False)
    assert sampled.fraction_ambiguous.value == 1.0


def test_sampled_messages_are_scored_in_chunks_with_the_same_result(monkeypatch):
    """The sampled estimate runs the oracle on bounded chunks of messages (its memory does
    not grow with n_messages); how the messages are cut must not change a single number."""
    from tinylatent import ambiguity

    language = paper_language(eta=0.04, noisy_first_letter=True)
    whole = measure_ambiguity(language, n_messages=500, seed=3, exact=False)
    monkeypatch.setattr(ambiguity, "SAMPLED_CHUNK", 7)
    batch_sizes = []
    scores = ambiguity.Oracle.log_likelihoods
    monkeypatch.setattr(ambiguity.Oracle, "log_likelihoods",
                        lambda oracle, tokens: batch_sizes.append(len(tokens)) or scores(oracle, tokens))
    chunked = measure_ambiguity(language, n_messages=500, seed=3, exact=False)
    assert max(batch_sizes) == 7 and sum(batch_sizes) == 500
    assert chunked == whole
    assert 0.0 < whole.mean_posterior_error.value < 1.0 and whole.fraction_ambiguous.value > 0.0
