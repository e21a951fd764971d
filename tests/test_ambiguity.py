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
    """THEORY.md §2: an independent re-simulation gave 0.062 at η = 0.02 and 0.157 at η = 0.04."""
    for eta, reference in [(0.02, 0.062), (0.04, 0.157)]:
        report = measure_ambiguity(paper_language(eta), n_messages=20_000, seed=0)
        assert report.map_error.low - 0.005 <= reference <= report.map_error.high + 0.005, report.map_error
        # and the first letter reveals θ in the faithful language: ε(x) = 0 for every message (THEORY.md §8)
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
