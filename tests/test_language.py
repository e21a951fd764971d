"""Languages: the paper's exact setup, constructors, sampling frequencies, text and JSON round trips, bad input."""
import json
import os
import threading
import warnings

import numpy as np
import pytest
from scipy.stats import chisquare

from tinylatent.language import (
    Language, add_noise, fixed_length, load_language, mixture_language, paper_language, preset, random_language,
    sample_corpus, sample_intentions, sample_messages, sample_windows, save_language,
)


def test_paper_language_matches_the_papers_generator():
    language = paper_language(0.0)
    assert (language.n_intentions, language.n_letters, language.vocab_size, language.max_length) == (6, 18, 19, 21)
    assert language.vocabulary == "\nabcdefghijklmnopqr"
    np.testing.assert_array_equal(language.initial, [0.5, 0.5, 0, 0, 0, 0])
    expected_t = 0.5 * (np.eye(6) + np.roll(np.eye(6), 1, axis=1))
    np.testing.assert_array_equal(language.transition, expected_t)
    # the blocks: RandomState(1713).rand(3, 3) for k = 0..5, rows normalised (the script's np.random.seed(1713))
    legacy = np.random.RandomState(1713)
    for k in range(6):
        block = legacy.rand(3, 3)
        np.testing.assert_allclose(language.letter_transition[k, 3 * k:3 * k + 3, 3 * k:3 * k + 3],
                                   block / block.sum(1, keepdims=True), rtol=1e-15)
        np.testing.assert_array_equal(language.first_letter[k], np.where(np.arange(18) // 3 == k, 1 / 3, 0.0))
    noisy = paper_language(0.02)
    raw = np.zeros((6, 18, 18))
    for k in range(6):
        raw[k, 3 * k:3 * k + 3, 3 * k:3 * k + 3] = language.letter_transition[k, 3 * k:3 * k + 3, 3 * k:3 * k + 3]
    np.testing.assert_allclose(noisy.letter_transition, (raw + 0.02) / (raw + 0.02).sum(-1, keepdims=True), rtol=1e-14)
    np.testing.assert_array_equal(noisy.first_letter, language.first_letter)  # the paper's first letter is not noised
    assert np.all(paper_language(0.02, noisy_first_letter=True).first_letter > 0)


def test_unambiguous_paper_messages_stay_in_their_block():
    language = paper_language(0.0)
    corpus = sample_corpus(language, 500, seed=1)
    letters = corpus.tokens.reshape(500, 22)
    assert np.all(letters[:, 21] == 0)
    np.testing.assert_array_equal((letters[:, :21] - 1) // 3, np.repeat(corpus.intentions[:, None], 21, axis=1))


def test_same_seed_same_corpus_and_generator_accepted():
    language = paper_language(0.02)
    a = sample_corpus(language, 50, seed=7)
    b = sample_corpus(language, 50, seed=np.random.default_rng(7))
    c = sample_corpus(language, 50, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    np.testing.assert_array_equal(sample_windows(language, 4, 9, 3), sample_windows(language, 4, 9, 3))


def test_sampling_frequencies_match_the_specified_probabilities():
    """Chi-square tests (fixed seed) on every distribution the sampler draws from."""
    language = random_language(3, 4, letters_per_intention=3, message_length=(1, 4), transition="random", seed=2)
    n = 60_000
    # first letters under intention 1, and the lengths
    messages = sample_messages(language, np.ones(n, dtype=np.int64), np.random.default_rng(0))
    first = np.array([m[0] - 1 for m in messages])
    observed = np.bincount(first, minlength=4)
    keep = language.first_letter[1] > 0
    assert np.all(observed[~keep] == 0)
    assert chisquare(observed[keep], language.first_letter[1][keep] * n).pvalue > 1e-3
    lengths = np.array([len(m) - 1 for m in messages])
    assert chisquare(np.bincount(lengths, minlength=5)[1:], language.length_probs[1:] * n).pvalue > 1e-3
    # letter transitions out of the most common letter under intention 1
    pairs = np.concatenate([np.stack([m[:-2], m[1:-1]], 1) for m in messages if len(m) > 2]) - 1
    source = np.bincount(pairs[:, 0]).argmax()
    follow = np.bincount(pairs[pairs[:, 0] == source, 1], minlength=4)
    row = language.letter_transition[1, source]
    assert chisquare(follow[row > 0], row[row > 0] * follow.sum()).pvalue > 1e-3
    # the outer chain
    intentions = sample_intentions(language, n, np.random.default_rng(1), first=0)
    pair_counts = np.zeros((3, 3))
    np.add.at(pair_counts, (intentions[:-1], intentions[1:]), 1)
    for k in range(3):
        assert chisquare(pair_counts[k], language.transition[k] * pair_counts[k].sum()).pvalue > 1e-3


def test_windows_start_anywhere_inside_a_message():
    language = paper_language(0.0)
    windows = sample_windows(language, 2000, 22, seed=0)
    offsets = np.argmax(windows == 0, axis=1)  # where the first delimiter falls: uniform over 0..21
    assert chisquare(np.bincount(offsets, minlength=22), np.full(22, 2000 / 22)).pvalue > 1e-3


def test_text_round_trip():
    language = paper_language(0.0)
    text = "abc\ndef\n"
    np.testing.assert_array_equal(language.encode(text), [1, 2, 3, 0, 4, 5, 6, 0])
    assert language.decode(language.encode(text)) == text
    with pytest.raises(ValueError, match="not in the vocabulary"):
        language.encode("abz")
    with pytest.raises(ValueError, match="token ids"):
        language.decode([0, 19])
    with pytest.raises(ValueError, match="integer token ids"):      # 1.9 is not read as 1 ('a')
        language.decode([1.9])


def test_json_round_trip(tmp_path):
    for language in [paper_language(0.03), random_language(4, 7, message_length=(2, 6), eta=0.1, seed=3),
                     mixture_language(paper_language(0.0))]:
        path = save_language(language, tmp_path / "lang.json")
        loaded = load_language(path)
        for field in ["initial", "transition", "first_letter", "letter_transition", "length_probs"]:
            np.testing.assert_array_equal(getattr(loaded, field), getattr(language, field))
        assert (loaded.alphabet, loaded.delimiter, loaded.name) == (language.alphabet, language.delimiter, language.name)


def test_presets_and_mixture():
    mixture = preset("paper-mixture", 0.02)
    np.testing.assert_array_equal(mixture.transition, np.eye(6))
    np.testing.assert_allclose(mixture.initial, np.full(6, 1 / 6))
    np.testing.assert_allclose(mixture.stationary_intentions(), mixture.initial)
    np.testing.assert_allclose(paper_language(0.0).stationary_intentions(), np.full(6, 1 / 6), atol=1e-12)
    with pytest.raises(ValueError, match="unknown language preset"):
        preset("english")


def test_stationary_intentions_of_a_reducible_chain_is_the_cesaro_limit():
    transition = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    language = Language(initial=[0.0, 1.0, 0.0], transition=transition, first_letter=np.ones((3, 2)) / 2,
                        letter_transition=np.ones((3, 2, 2)) / 2, length_probs=fixed_length(2))
    np.testing.assert_allclose(language.stationary_intentions(), [0.5, 0.0, 0.5], atol=1e-12)
    periodic = Language(initial=[1.0, 0.0], transition=[[0.0, 1.0], [1.0, 0.0]], first_letter=np.ones((2, 2)) / 2,
                        letter_transition=np.ones((2, 2, 2)) / 2, length_probs=fixed_length(2))
    np.testing.assert_allclose(periodic.stationary_intentions(), [0.5, 0.5], atol=1e-12)


def test_stationary_intentions_with_rows_a_few_ulps_off_one():
    """Rows that sum to 1 only within rounding must not break the eigenvalue-1 space (found by Hypothesis)."""
    import dataclasses
    cases = [random_language(1, 1, message_length=(1, 1), concentration=0.3, transition="random", seed=1),
             random_language(2, 3, transition="random", seed=13, concentration=0.3)]
    base = random_language(2, 1, message_length=(1, 3), concentration=0.3, transition="random", seed=0)
    cases.append(dataclasses.replace(base, transition=np.random.default_rng(409).dirichlet([0.5, 0.5], size=2)))
    for language in cases:
        mu = language.stationary_intentions()
        assert np.all(np.isfinite(mu)) and np.isclose(mu.sum(), 1.0)
        np.testing.assert_allclose(mu @ language.transition, mu, atol=1e-12)


def test_stationary_intentions_of_a_nearly_reducible_irreducible_chain():
    """Irreducibility is read from the support of T (entries > 0), not from a tolerance: with
    off-diagonal entries 1e-13 the chain is still irreducible and μ = (2/3, 1/3) whatever the
    start, where an SVD rank decision would return ``initial``."""
    for a in (1e-3, 1e-11, 1e-13, 1e-200):
        transition = np.array([[1 - a, a], [2 * a, 1 - 2 * a]])
        language = Language(initial=[0.5, 0.5], transition=transition, first_letter=np.ones((2, 2)) / 2,
                            letter_transition=np.ones((2, 2, 2)) / 2, length_probs=fixed_length(2))
        np.testing.assert_allclose(language.stationary_intentions(), [2 / 3, 1 / 3], rtol=1e-14)
    # three states, a slow cycle 0 → 1 → 2 → 0: μ ∝ 1 / (rate of leaving each state)
    rates = np.array([1e-14, 3e-14, 2e-13])
    transition = np.diag(1 - rates) + np.roll(np.diag(rates), 1, axis=1)
    language = Language(initial=[1.0, 0.0, 0.0], transition=transition, first_letter=np.ones((3, 2)) / 2,
                        letter_transition=np.ones((3, 2, 2)) / 2, length_probs=fixed_length(2))
    np.testing.assert_allclose(language.stationary_intentions(), (1 / rates) / (1 / rates).sum(), rtol=1e-13)


def _valid_fields():
    return dict(initial=[0.5, 0.5], transition=[[0.5, 0.5], [0.5, 0.5]], first_letter=[[1.0, 0.0], [0.0, 1.0]],
                letter_transition=np.ones((2, 2, 2)) / 2, length_probs=[0.0, 1.0])


@pytest.mark.parametrize("field, value, message", [
    ("transition", [[0.5, 0.6], [0.5, 0.5]], "stochastic"),
    ("transition", [[1.5, -0.5], [0.5, 0.5]], "non-negative"),
    ("transition", [[np.nan, 1.0], [0.5, 0.5]], "finite"),
    ("transition", [[1.0, 0.0, 0.0]], "square"),
    ("initial", [1.0, 0.0, 0.0], "shape"),
    ("first_letter", [[1.0, 0.0]], "shape"),
    ("letter_transition", np.ones((2, 2, 3)) / 3, "shape"),
    ("length_probs", [1.0, 0.0], "at least one letter"),
    ("alphabet", ("a", "bb"), "single character"),
    ("alphabet", ("a", "\n"), "different characters"),
])
def test_bad_languages_are_value_errors(field, value, message):
    fields = _valid_fields()
    fields[field] = value
    with pytest.raises(ValueError, match=message):
        Language(**fields)


def test_a_language_copies_the_arrays_it_is_given():
    """It freezes its own arrays, not the caller's, and a later edit of the caller's array
    (or of the array a view was taken from) cannot reach the validated language."""
    first_letter = np.full((2, 3), 1.0 / 3.0)
    source = np.full((2, 3, 3), 1.0 / 3.0)
    language = Language(initial=[0.5, 0.5], transition=np.eye(2), first_letter=first_letter,
                        letter_transition=source[:, :, :], length_probs=[0.0, 0.0, 1.0])
    assert first_letter.flags.writeable and source.flags.writeable
    first_letter[0] = [1.0, 5.0, -3.0]
    source[0, 0] = [2.0, -1.0, 0.0]
    np.testing.assert_array_equal(language.first_letter, np.full((2, 3), 1.0 / 3.0))
    np.testing.assert_array_equal(language.letter_transition, np.full((2, 3, 3), 1.0 / 3.0))
    assert not language.first_letter.flags.writeable
    prior = np.array([0.25, 0.75])
    mixture = mixture_language(language, prior)
    prior[0] = -1.0
    np.testing.assert_array_equal(mixture.initial, [0.25, 0.75])


def test_a_letter_that_is_half_a_surrogate_pair_is_refused():
    """It loaded, and a corpus of it could then not be written (the CLI blamed the file's path)."""
    with pytest.raises(ValueError, match="'\\\\udc80' is half of a surrogate pair"):
        Language.from_dict({**random_language(2, 3).to_dict(), "alphabet": "ab\udc80"})   # json.loads of "\\udc80"


def test_minus_zero_noise_is_named_zero():
    assert paper_language(-0.0).name == "paper(eta=0)" and random_language(eta=-0.0).description.endswith("eta=0")


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="eta"):
        paper_language(-0.01)
    with pytest.raises(ValueError, match="eta"):
        paper_language(float("nan"))
    with pytest.raises(ValueError, match="letters_per_intention"):
        random_language(2, 3, letters_per_intention=4)
    with pytest.raises(ValueError, match="seed"):
        sample_corpus(paper_language(0.0), 3, seed=-1)
    with pytest.raises(ValueError, match="window_length"):
        sample_windows(paper_language(0.0), 3, 0, seed=0)


@pytest.mark.parametrize("call, message", [
    (lambda language: sample_intentions(language, 3, 0, first=1.5), r"first intention must be an integer in 0\.\.5; got 1\.5"),
    (lambda language: sample_intentions(language, 3, 0, first=True), "first intention must be an integer"),
    (lambda language: sample_corpus(language, 3, 0, first_intention=-1), "first intention must be an integer in 0..5"),
    (lambda language: sample_windows(language, 2, 5, 0, burn_in_messages=-3), "burn_in_messages must be an integer ≥ 0; got -3"),
    (lambda language: sample_windows(language, 2, 5, 0, burn_in_messages=2.5), "burn_in_messages must be an integer"),
    (lambda language: sample_messages(language, [1.5], 0), "integer intention ids"),
    (lambda language: sample_messages(language, [6], 0), r"intention 6 is outside 0\.\.5"),
    (lambda language: random_language(2, 4, letters_per_intention=1.5), "letters_per_intention must be an integer"),
    (lambda language: random_language(2, 4, message_length=(1.5, 3)), "pair .* of integers"),
    (lambda language: random_language(2, 4, message_length=(1, 2, 3)), "pair .* of integers"),
    (lambda language: random_language(2, 4, message_length=None), "a message length must be a positive integer; got None"),
    (lambda language: random_language(True, 4), "n_intentions must be a positive integer; got True"),
    (lambda language: random_language(2, 4, concentration="1"), "concentration must be a finite number > 0; got '1'"),
    (lambda language: random_language(2, 4, eta=None), "eta must be a finite number ≥ 0; got None"),
    (lambda language: paper_language(None), "eta must be a finite number ≥ 0; got None"),
    (lambda language: paper_language("0.1"), "eta must be a finite number ≥ 0; got '0.1'"),
    (lambda language: sample_corpus(language, True, 0), "non-negative integer; got True"),
    (lambda language: sample_corpus(language, None, 0), "non-negative integer; got None"),
    (lambda language: sample_intentions(language, float("inf"), 0), "non-negative integer; got inf"),
    (lambda language: sample_windows(language, None, 5, 0), "n_windows must be a positive integer; got None"),
    (lambda language: sample_windows(language, 2, 5.0, 0), "window_length must be a positive integer; got 5.0"),
    (lambda language: fixed_length(float("nan")), "a message length must be a positive integer; got nan"),
])
def test_bad_sampling_arguments_are_value_errors_not_truncated(call, message):
    with pytest.raises(ValueError, match=message):
        call(paper_language(0.02))


def test_a_language_file_must_name_its_letters():
    """An empty alphabet in a file is refused, not replaced by the default letters."""
    with pytest.raises(ValueError, match="'alphabet' must be a non-empty string"):
        Language.from_dict({**paper_language(0.0).to_dict(), "alphabet": ""})


def test_bad_files_are_value_errors(tmp_path):
    good = paper_language(0.0).to_dict()
    cases = {
        "truncated.json": json.dumps(good)[:200],
        "not_object.json": "[1, 2]",
        "wrong_format.json": json.dumps({**good, "format": "something"}),
        "wrong_version.json": json.dumps({**good, "version": 99}),
        "missing.json": json.dumps({k: v for k, v in good.items() if k != "transition"}),
        "ragged.json": json.dumps({**good, "transition": [[1.0], [0.5, 0.5]]}),
        "not_stochastic.json": json.dumps({**good, "initial": [1.0] * 6}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name):
            load_language(tmp_path / name)
    (tmp_path / "binary.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(ValueError, match="binary.json is not a language file: .* byte 12 of this file is not UTF-8"):
        load_language(tmp_path / "binary.json")
    with pytest.raises(FileNotFoundError):
        load_language(tmp_path / "absent.json")


# -- files and numbers a fuzzing pass found (each failed on the old code) -------------------------

def _tiny_language_dict():
    """A valid 2-intention language as to_dict() writes it (initial is [0.5, 0.5])."""
    return Language(initial=[0.5, 0.5], transition=np.eye(2), first_letter=[[1.0, 0.0], [0.0, 1.0]],
                    letter_transition=np.ones((2, 2, 2)) / 2, length_probs=[0.0, 1.0]).to_dict()


@pytest.mark.parametrize("text, message", [
    (lambda good: good.replace("0.5,", "1" + "0" * 400 + ",", 1), r"an integer of 401 digits; a number must fit a float64"),
    (lambda good: good.replace("0.5,", "1" + "0" * 5000 + ",", 1), r"an integer of 5,001 digits"),   # Python's own limit is 4,300
    (lambda good: "[" * 1000 + "]" * 1000, r"nests lists or objects too deeply"),
    (lambda good: good.replace('"initial": [0.5, 0.5]', '"initial": ' + "[" * 1000 + "]" * 1000), r"too deeply"),
], ids=["401 digits", "5001 digits", "deep list", "deep field"])
def test_huge_integers_and_deep_nesting_in_a_file_are_value_errors_naming_it(tmp_path, text, message):
    """They were OverflowError and RecursionError: tracebacks on the command line."""
    path = tmp_path / "language.json"
    path.write_text(text(json.dumps(_tiny_language_dict())))
    with pytest.raises(ValueError, match=message) as error:
        load_language(path)
    assert str(error.value).startswith(str(path))


def test_an_integer_too_large_for_a_float_is_a_value_error_in_from_dict():
    with pytest.raises(ValueError, match=r"the field 'initial' holds an integer too large for a float64"):
        Language.from_dict({**_tiny_language_dict(), "initial": [10**400, 0]})


@pytest.mark.parametrize("field, value, message", [
    ("initial", ["0.5", "0.5"], r"the field 'initial' must hold JSON numbers .*; it holds the str '0\.5'"),
    ("initial", [True, False], r"the field 'initial' must hold JSON numbers .*; it holds the bool True"),
    ("length_probs", [0, "1"], r"the field 'length_probs' must hold JSON numbers"),
    ("transition", [[1.0, 0.0], [0.0, [1.0]]], r"the field 'transition' must be a \(nested\) list of numbers of one rectangular shape"),
    ("version", True, r"unsupported language format version True; this tinylatent reads the integer 1"),
    ("version", 1.0, r"unsupported language format version 1\.0"),
])
def test_probabilities_must_be_numbers_and_the_version_the_integer_1(field, value, message):
    with pytest.raises(ValueError, match=message):
        Language.from_dict({**_tiny_language_dict(), field: value})
    assert Language.from_dict({**_tiny_language_dict(), "version": 1}).n_intentions == 2


def test_a_file_larger_than_the_cap_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    import tinylatent.language as language_module

    text = json.dumps(_tiny_language_dict())
    monkeypatch.setattr(language_module, "MAX_LANGUAGE_FILE_BYTES", len(text.encode()))
    (tmp_path / "fits.json").write_text(text)
    assert load_language(tmp_path / "fits.json").n_intentions == 2
    (tmp_path / "over.json").write_text(text + "\n")
    with pytest.raises(ValueError, match=r"over\.json is not a language file: it is larger than [0-9,]+ bytes"):
        load_language(tmp_path / "over.json")
    if os.path.exists("/dev/zero"):          # endless: it used to be read until the process was killed
        with pytest.raises(ValueError, match=r"/dev/zero is not a language file: it is larger than"):
            load_language("/dev/zero")


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="needs /dev/fd (process substitution)")
def test_a_language_can_be_read_from_a_pipe():
    """``--language-file <(cat lang.json)`` hands over /dev/fd/63, a pipe: it has no size to read up to."""
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, json.dumps(_tiny_language_dict()).encode()),
                                              os.close(write_end)))
    writer.start()
    try:
        assert load_language(f"/dev/fd/{read_end}").n_intentions == 2
    finally:
        writer.join()
        os.close(read_end)


@pytest.mark.parametrize("make", [
    lambda eta: paper_language(eta),
    lambda eta: random_language(2, 3, eta=eta),
    lambda eta: add_noise(np.ones((1, 2, 2)) / 2, np.ones((1, 2)) / 2, eta, True),
], ids=["paper_language", "random_language", "add_noise"])
def test_an_eta_whose_row_sums_overflow_is_refused_up_front(make):
    """eta = 1e308 overflowed the row sums: NumPy warnings, then "letter_transition must be stochastic"."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"the noise level eta must be at most 1e\+100 .*; got 1e\+308"):
            make(1e308)
        make(1e100)                                   # the bound itself: every noised row is uniform
