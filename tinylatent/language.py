"""Languages generated from latent intentions: the doubly-embedded Markov chain.

A language q(θ, x) (docs/claims.md §1) is written by two nested Markov chains:

* the **outer chain** picks the intention θ_j of message j:
  θ_1 ~ ``initial``, θ_{j+1} ~ ``transition[θ_j, :]`` (K×K);
* the **inner chain** of intention θ writes the letters of one message:
  the first letter ~ ``first_letter[θ, :]`` (s_θ), each next letter
  ~ ``letter_transition[θ, previous, :]`` (A_θ), until the message has n letters,
  n ~ ``length_probs`` (the message-length rule); then the delimiter ``\\n`` ends it.

The corpus is one long stream of messages, one message a line.

Token ids follow the paper's character-level vocabulary (its characters sorted, so
``\\n`` comes first): the delimiter is id 0, letter i of the alphabet is id i + 1.
``vocab_size = n_letters + 1``.

Constructors: :func:`paper_language` (the paper's exact setup, with its noise knob η),
:func:`random_language` (any size, for tests and experiments), :func:`mixture_language`
(the intention fixed for a whole document: identity outer chain). Sampling:
:func:`sample_corpus`, :func:`sample_messages` (:func:`sample_message_matrix`), :func:`sample_windows`. Files:
:meth:`Language.to_json`, :func:`load_language`, :func:`save_language` (schema in
docs/language_format.md).
"""
from __future__ import annotations

import json
import os
import reprlib
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np

from tinylatent._checks import checked_ids, checked_tokens, is_finite_real, is_integer, is_real_type
from tinylatent._io import parse_json, write_json

DELIMITER_ID = 0  # the delimiter token ``\n`` has id 0; letter i has id i + 1
STOCHASTIC_ATOL = 1e-9  # how far a probability row may sum from 1 before we call it an error
FORMAT_VERSION = 1
# The largest language file the command line can make (K = 1,000 intentions, V = 62 letters,
# messages of 1..10,000 letters: 3.8 million numbers, one a line) is about 140 MiB; this cap
# leaves room for numbers written out longer, and stops a read of /dev/zero or an endless pipe.
MAX_LANGUAGE_FILE_BYTES = 512 * 2**20
READ_CHUNK_BYTES = 2**20
# The largest noise level η: above about 1e17 every noised row is the uniform distribution
# already, and far above it (1e307) the row sums overflow to inf.
MAX_ETA = 1e100

SeedLike = Union[None, int, np.random.Generator]


def as_generator(seed: SeedLike) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a seed, a Generator (returned as is), or None.

    tinylatent never touches NumPy's global random state: pass a seed or a Generator.
    ``None`` draws fresh entropy from the OS, i.e. a non-reproducible run.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or is_integer(seed):
        if seed is not None and seed < 0:
            raise ValueError(f"a seed must be a non-negative integer; got {seed}")
        return np.random.default_rng(seed)
    raise ValueError(f"seed must be an int, a numpy.random.Generator or None; got {type(seed).__name__}")


# ----------------------------------------------------------------------------------------
# Validation helpers (every error says what was wrong and what is allowed)
# ----------------------------------------------------------------------------------------

def _check_eta(eta) -> float:
    """The noise level η of :func:`add_noise`, a finite number in [0, ``MAX_ETA``], as a Python
    float (−0.0 becomes 0.0, so that a language's name reads eta=0, not eta=-0)."""
    if not (is_finite_real(eta) and eta >= 0.0):
        raise ValueError(f"the noise level eta must be a finite number ≥ 0; got {eta!r}")
    if eta > MAX_ETA:
        raise ValueError(f"the noise level eta must be at most {MAX_ETA:g} (above about 1e17 every noised "
                         f"row is uniform already); got {eta!r}")
    return float(eta) + 0.0


def _number_array(values, key: str) -> np.ndarray:
    """The file field ``key`` as a float64 array: a (nested) list of numbers of one rectangular
    shape. A string such as "0.5" or true/false is refused, not converted, and so is an integer
    too large for a float64."""
    leaves = np.array(values, dtype=object)   # ragged or too deeply nested lists stay lists among the leaves
    flat = leaves.reshape(-1)
    if not all(is_real_type(kind) for kind in set(map(type, flat))):
        bad = next(leaf for leaf in flat if not is_real_type(type(leaf)))
        if isinstance(bad, (list, tuple)):
            raise ValueError(f"the field {key!r} must be a (nested) list of numbers of one rectangular shape")
        raise ValueError(f"the field {key!r} must hold JSON numbers (such as 0.5), not strings or true/false; "
                         f"it holds the {type(bad).__name__} {reprlib.repr(bad)}")
    try:
        return leaves.astype(np.float64)
    except OverflowError:
        raise ValueError(f"the field {key!r} holds an integer too large for a float64 (at most about 1.8e308)") from None


def _as_probability_array(values, name: str, shape: tuple) -> np.ndarray:
    # a copy: the Language freezes its arrays, and must neither freeze the caller's nor share them
    array = np.array(values, dtype=np.float64, copy=True)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite and non-negative; it contains NaN or inf")
    if np.any(array < 0.0):
        raise ValueError(f"{name} must be finite and non-negative; its smallest entry is {array.min():.3g}")
    row_sums = array.sum(axis=-1)
    worst = np.abs(row_sums - 1.0).max()
    if worst > STOCHASTIC_ATOL:
        which = "it" if array.ndim == 1 else "each row"
        raise ValueError(
            f"{name} must be stochastic: {which} must sum to 1 within {STOCHASTIC_ATOL:g} (nothing is "
            f"renormalised); {'it' if array.ndim == 1 else 'a row'} sums to "
            f"{row_sums.flat[np.abs(row_sums - 1.0).argmax()]:.12g}"
        )
    return array


@dataclass(frozen=True, eq=False)
class Language:
    """A language q(θ, x) from a doubly-embedded Markov chain (see the module docstring).

    Sizes: K intentions, V letters, L = the longest message (letters).

    Attributes:
        initial: (K,) q(θ_1), the intention of the first message of a document.
        transition: (K, K) T[θ, θ'] = q(θ_{j+1} = θ' | θ_j = θ), the outer chain.
        first_letter: (K, V) s_θ[c] = q(first letter = c | θ).
        letter_transition: (K, V, V) A_θ[c, c'] = q(next letter = c' | letter c, θ).
            Every row must be a distribution, also rows of letters that θ never writes.
        length_probs: (L + 1,) q(a message has n letters), index n; entry 0 must be 0.
        alphabet: the V letters, each one character (not the delimiter).
        delimiter: the one character that ends a message (``"\\n"``).
        name: a short label, e.g. ``"paper(eta=0.02)"``.
        description: free text, kept in saved files.
    """

    initial: np.ndarray
    transition: np.ndarray
    first_letter: np.ndarray
    letter_transition: np.ndarray
    length_probs: np.ndarray
    alphabet: tuple = field(default_factory=tuple)
    delimiter: str = "\n"
    name: str = "language"
    description: str = ""

    def __post_init__(self):
        transition = np.asarray(self.transition, dtype=np.float64)
        if transition.ndim != 2 or transition.shape[0] != transition.shape[1] or transition.shape[0] < 1:
            raise ValueError(f"transition must be a square K×K matrix with K ≥ 1; got shape {transition.shape}")
        n_intentions = transition.shape[0]
        first_letter = np.asarray(self.first_letter, dtype=np.float64)
        if first_letter.ndim != 2 or first_letter.shape[0] != n_intentions or first_letter.shape[1] < 1:
            raise ValueError(
                f"first_letter must have shape (K, V) = ({n_intentions}, V) with V ≥ 1; got {first_letter.shape}"
            )
        n_letters = first_letter.shape[1]
        length_probs = np.asarray(self.length_probs, dtype=np.float64)
        if length_probs.ndim != 1 or length_probs.shape[0] < 2:
            raise ValueError(f"length_probs must be a vector over lengths 0..L with L ≥ 1; got shape {length_probs.shape}")
        checked = {
            "initial": _as_probability_array(self.initial, "initial", (n_intentions,)),
            "transition": _as_probability_array(transition, "transition", (n_intentions, n_intentions)),
            "first_letter": _as_probability_array(first_letter, "first_letter", (n_intentions, n_letters)),
            "letter_transition": _as_probability_array(
                self.letter_transition, "letter_transition", (n_intentions, n_letters, n_letters)
            ),
            "length_probs": _as_probability_array(length_probs, "length_probs", length_probs.shape),
        }
        if checked["length_probs"][0] != 0.0:
            raise ValueError("length_probs[0] must be 0: a message has at least one letter")
        alphabet = tuple(self.alphabet) if self.alphabet else _default_alphabet(n_letters)
        if len(alphabet) != n_letters:
            raise ValueError(f"alphabet must have V = {n_letters} letters; got {len(alphabet)}")
        if any(not isinstance(c, str) or len(c) != 1 for c in alphabet):
            raise ValueError("each letter of the alphabet must be a single character")
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1:
            raise ValueError(f"the delimiter must be a single character; got {self.delimiter!r}")
        if len(set(alphabet) | {self.delimiter}) != n_letters + 1:
            raise ValueError("the letters and the delimiter must all be different characters")
        unwritable = [c for c in (*alphabet, self.delimiter) if "\ud800" <= c <= "\udfff"]
        if unwritable:   # a lone surrogate: no text file (UTF-8) can hold it, so no corpus could be written
            raise ValueError(f"the letters and the delimiter must be characters UTF-8 can write; {unwritable[0]!r} "
                             "is half of a surrogate pair, not a character")
        for key, value in checked.items():
            value.setflags(write=False)
            object.__setattr__(self, key, value)
        object.__setattr__(self, "alphabet", alphabet)

    # -- sizes ----------------------------------------------------------------------------
    @property
    def n_intentions(self) -> int:
        """K, the number of intentions."""
        return self.transition.shape[0]

    @property
    def n_letters(self) -> int:
        """V, the number of letters (the delimiter not counted)."""
        return self.first_letter.shape[1]

    @property
    def vocab_size(self) -> int:
        """V + 1 token ids: the delimiter (0) and the letters (1..V)."""
        return self.n_letters + 1

    @property
    def max_length(self) -> int:
        """L, the most letters a message can have."""
        return int(np.nonzero(self.length_probs)[0].max())

    @property
    def mean_length(self) -> float:
        """E[n], the mean number of letters in a message."""
        return float(np.dot(np.arange(self.length_probs.shape[0]), self.length_probs))

    @property
    def vocabulary(self) -> str:
        """The characters of the token ids 0..V, in order (the delimiter first)."""
        return self.delimiter + "".join(self.alphabet)

    # -- derived probabilities -------------------------------------------------------------
    def stop_probs(self) -> np.ndarray:
        """h[n] = q(the message ends after letter n | it has at least n letters), shape (L + 1,).

        This is the hazard of the length rule: h[n] = q(len = n) / q(len ≥ n), with h[0] = 0
        and h[L] = 1. For the paper's fixed length 21, h is 0 except h[21] = 1.
        """
        pmf = self.length_probs[: self.max_length + 1]
        at_least = np.cumsum(pmf[::-1])[::-1]  # q(len ≥ n)
        hazard = np.zeros(self.max_length + 1, dtype=np.float64)
        reachable = at_least > 0.0
        hazard[reachable] = pmf[reachable] / at_least[reachable]
        hazard[0] = 0.0
        hazard[self.max_length] = 1.0
        return hazard

    def stationary_intentions(self) -> np.ndarray:
        """μ, the long-run share of messages with each intention in a stream started from ``initial``.

        μ = lim_N (1/N) Σ_{j<N} initial · T^j (the Cesàro limit, which exists for every
        finite chain). It is ``initial`` projected onto the eigenvalue-1 space of T:
        with R spanning the right null space of (T − I) and W its left null space,
        μ = initial · R (Wᵀ R)⁻¹ Wᵀ. For T = I (a mixture language) it is ``initial`` itself.

        For an irreducible T (every intention reaches every other one through entries > 0:
        decided on the support of T, exactly, not with a tolerance) μ is the unique
        stationary distribution whatever ``initial`` is, and we compute it by state
        reduction (:func:`_stationary_of_irreducible`), which stays exact when T is nearly
        reducible: off-diagonal entries of 1e-13 make T − I look singular twice over to the
        SVD below, which would return ``initial``. The projection is used for reducible T
        only; there its rank decision (``NULL_SPACE_TOLERANCE``) is the limit: closed classes
        joined by entries < 1e-12 are read as separate.
        """
        if _is_irreducible(self.transition):
            return _stationary_of_irreducible(self.transition)
        eye = np.eye(self.n_intentions, dtype=np.float64)
        transition = self.transition / self.transition.sum(axis=1, keepdims=True)  # exact rows: (T − I)·1 ≈ 1e-16
        right = _null_space(transition - eye)  # T r = r
        left = _null_space((transition - eye).T)  # w T = w
        projector = right @ np.linalg.solve(left.T @ right, left.T)
        stationary = self.initial @ projector
        stationary = np.clip(stationary, 0.0, None)
        return stationary / stationary.sum()

    def reachable_letters(self) -> np.ndarray:
        """(K, V) bool: the letters that a message of intention θ can contain.

        The closure of s_θ's support under A_θ. Rows of A_θ for the other letters are
        never used by q (θ never writes those letters); they are kept as distributions
        only so that every row can be validated the same way.
        """
        reachable = self.first_letter > 0.0
        for _ in range(self.n_letters):
            grown = reachable | (np.einsum("kv,kvw->kw", reachable.astype(np.float64), self.letter_transition) > 0.0)
            if np.array_equal(grown, reachable):
                break
            reachable = grown
        return reachable

    # -- text <-> token ids --------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of a text over this language's vocabulary."""
        lookup = {c: i for i, c in enumerate(self.vocabulary)}
        try:
            return np.array([lookup[c] for c in text], dtype=np.int64)
        except KeyError as exc:
            allowed = "".join(self.alphabet) + repr(self.delimiter)
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary; allowed: {allowed}") from None

    def decode(self, token_ids) -> str:
        """The text of a sequence of token ids (integers in [0, V + 1); 1.9 is refused, not read as 1)."""
        ids = self.check_tokens(token_ids, "the token ids to decode")
        vocabulary = self.vocabulary
        return "".join(vocabulary[int(i)] for i in ids.ravel())

    def check_tokens(self, token_ids, what: str = "tokens") -> np.ndarray:
        """Return ``token_ids`` as an int64 array after checking every id is in the vocabulary."""
        return checked_tokens(token_ids, self.vocab_size, what)

    def check_intentions(self, intentions, what: str = "intentions") -> np.ndarray:
        """Return ``intentions`` as an int64 array of the same shape after checking that each is
        an integer id θ in 0..K−1 (a float such as 1.7 is refused, not truncated; a negative
        id is refused, not wrapped around)."""
        last = self.n_intentions - 1
        return checked_ids(intentions, self.n_intentions, what, f"integer intention ids in 0..{last}",
                           lambda bad: f"{what}: intention {bad} is outside 0..{last} (the language has "
                                       f"K = {self.n_intentions} intentions; negative ids do not wrap)")

    def check_prior(self, prior, what: str = "prior") -> np.ndarray:
        """Return ``prior`` as a (K,) float64 distribution over the intentions, held to the rule
        ``initial`` is held to: finite, non-negative, summing to 1 within ``STOCHASTIC_ATOL``
        (used as given: nothing is renormalised)."""
        name = f"{what} (a distribution over the K = {self.n_intentions} intentions)"
        try:
            values = np.asarray(prior, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {self.n_intentions} numbers; got {prior!r}") from None
        return _as_probability_array(values, name, (self.n_intentions,))

    # -- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The language as plain JSON types (schema: docs/language_format.md)."""
        return {
            "format": "tinylatent-language",
            "version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "alphabet": "".join(self.alphabet),
            "delimiter": self.delimiter,
            "initial": self.initial.tolist(),
            "transition": self.transition.tolist(),
            "first_letter": self.first_letter.tolist(),
            "letter_transition": self.letter_transition.tolist(),
            "length_probs": self.length_probs.tolist(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "Language":
        """Build a language from :meth:`to_dict`'s output, validating every field."""
        if not isinstance(data, dict):
            raise ValueError(f"a language must be a JSON object; got {type(data).__name__}")
        if data.get("format") != "tinylatent-language":
            raise ValueError("not a tinylatent language: the field 'format' must be 'tinylatent-language'")
        version = data.get("version")
        if not (is_integer(version) and version == FORMAT_VERSION):   # not true, not 1.0
            raise ValueError(f"unsupported language format version {version!r}; this tinylatent reads the integer {FORMAT_VERSION}")
        required = ["alphabet", "delimiter", "initial", "transition", "first_letter", "letter_transition", "length_probs"]
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"the language is missing the field(s) {', '.join(missing)}")
        if not isinstance(data["alphabet"], str) or not data["alphabet"]:
            raise ValueError("the field 'alphabet' must be a non-empty string of the V letters, one character each; got "
                             f"{data['alphabet']!r} (a file names its letters: the default alphabet applies only to "
                             "a Language built in code without one)")
        arrays = {key: _number_array(data[key], key)
                  for key in ["initial", "transition", "first_letter", "letter_transition", "length_probs"]}
        return cls(
            alphabet=tuple(data["alphabet"]),
            delimiter=data["delimiter"],
            name=str(data.get("name", "language")),
            description=str(data.get("description", "")),
            **arrays,
        )

    def summary(self) -> str:
        """A few lines that describe the language to a person."""
        lengths = np.nonzero(self.length_probs)[0]
        length_text = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths.min()}..{lengths.max()} (mean {self.mean_length:.2f})"
        return "\n".join([
            f"language {self.name}: {self.description}".rstrip(": "),
            f"  intentions K = {self.n_intentions}, letters V = {self.n_letters} ({''.join(self.alphabet)}), "
            f"vocabulary {self.vocab_size} tokens (delimiter {self.delimiter!r} = id 0)",
            f"  letters per message: {length_text}",
            f"  outer chain: {'identity (a mixture: one intention per document)' if np.array_equal(self.transition, np.eye(self.n_intentions)) else 'general'}; "
            f"stationary intentions {np.array2string(self.stationary_intentions(), precision=3)}",
        ])


NULL_SPACE_TOLERANCE = 1e-12  # singular values of T − I below this count as 0 (T's entries are ≤ 1)


def _null_space(matrix: np.ndarray) -> np.ndarray:
    """An orthonormal basis (columns) of {v : matrix v = 0}, from the SVD.

    (NumPy only: importing SciPy here would load a second OpenBLAS whose threads
    compete with NumPy's on a small machine.)
    """
    _, singular_values, vt = np.linalg.svd(matrix)
    rank = int((singular_values > NULL_SPACE_TOLERANCE).sum())
    return vt[rank:].conj().T


def _is_irreducible(transition: np.ndarray) -> bool:
    """True when every state reaches every other through entries > 0 (the support graph is strongly connected)."""
    reach = (np.asarray(transition) > 0.0) | np.eye(transition.shape[0], dtype=bool)
    while True:
        grown = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0      # paths of twice the length
        if np.array_equal(grown, reach):
            return bool(reach.all())
        reach = grown


def _stationary_of_irreducible(transition: np.ndarray) -> np.ndarray:
    """The stationary distribution of an irreducible chain, by GTH state reduction.

    Grassmann, Taksar & Heyman (1985): remove states K−1, …, 1 one at a time, each time
    folding the removed state's paths into the chain on the states left (the censored chain);
    then build μ back up, μ_k ∝ Σ_{i<k} μ_i P[i, k]. The probability of leaving state k is
    summed from its off-diagonal entries instead of computed as 1 − P[k, k], so there is no
    subtraction anywhere and entries of 1e-13 keep their full relative accuracy.
    """
    p = np.array(transition, dtype=np.float64)
    n = p.shape[0]
    for k in range(n - 1, 0, -1):
        leave = p[k, :k].sum()                         # > 0: k reaches a lower state (irreducible)
        p[:k, k] /= leave
        p[:k, :k] += np.outer(p[:k, k], p[k, :k])      # i → k → j, folded into i → j
    weights = np.zeros(n, dtype=np.float64)
    weights[0] = 1.0
    for k in range(1, n):
        weights[k] = weights[:k] @ p[:k, k]
    return weights / weights.sum()


def _default_alphabet(n_letters: int) -> tuple:
    letters = string.ascii_lowercase + string.ascii_uppercase + string.digits
    if n_letters > len(letters):
        raise ValueError(f"give an alphabet explicitly for more than {len(letters)} letters")
    return tuple(letters[:n_letters])


def fixed_length(n_letters: int) -> np.ndarray:
    """``length_probs`` for messages of exactly ``n_letters`` letters."""
    if not is_integer(n_letters) or n_letters < 1:
        raise ValueError(f"a message length must be a positive integer; got {n_letters!r}")
    probs = np.zeros(int(n_letters) + 1, dtype=np.float64)
    probs[int(n_letters)] = 1.0
    return probs


def save_language(language: Language, path: Union[str, os.PathLike]) -> Path:
    """Write a language as JSON, atomically."""
    return write_json(path, language.to_dict())


def _read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` (a file, or a pipe such as /dev/fd/63), read in chunks, or a
    ValueError as soon as there are more than ``limit`` of them (/dev/zero never ends)."""
    chunks, size = [], 0
    with open(path, "rb") as handle:
        while chunk := handle.read(min(READ_CHUNK_BYTES, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"{path} is not a language file: it is larger than {limit:,} bytes, the most "
                                 "a language file may be (docs/language_format.md)")
    return b"".join(chunks)


def load_language(path: Union[str, os.PathLike]) -> Language:
    """Read and validate a language JSON written by :func:`save_language` (at most
    ``MAX_LANGUAGE_FILE_BYTES``); every bad file is a ValueError naming it."""
    path = Path(path)
    try:
        text = _read_bounded(path, MAX_LANGUAGE_FILE_BYTES).decode("utf-8")
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a language file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a language file: a language is JSON text in UTF-8, and byte "
                         f"{exc.start} of this file is not UTF-8 (docs/language_format.md)") from None
    data = parse_json(text, str(path))
    try:
        return Language.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------------------
# Constructors
# ----------------------------------------------------------------------------------------

def add_noise(letter_transition: np.ndarray, first_letter: np.ndarray, eta: float,
              noisy_first_letter: bool) -> tuple:
    """The paper's noise knob: A_θ ← (A_θ + η) / row sums (and s_θ likewise if asked).

    Returns new (letter_transition, first_letter); the inputs are not changed. η must be in
    [0, ``MAX_ETA``]: far above it the row sums overflow.
    """
    _check_eta(eta)
    letter_transition = letter_transition + eta
    letter_transition /= letter_transition.sum(axis=-1, keepdims=True)
    if noisy_first_letter:
        first_letter = first_letter + eta
        first_letter /= first_letter.sum(axis=-1, keepdims=True)
    return letter_transition, first_letter


PAPER_SEED = 1713
PAPER_INTENTIONS = 6
PAPER_LETTERS_PER_INTENTION = 3
PAPER_MESSAGE_LETTERS = 21  # 1 first letter + 20 transitions


def paper_language(eta: float = 0.0, noisy_first_letter: bool = False) -> Language:
    """The paper's language (docs/claims.md §1), exactly as its generator script builds it.

    * K = 6 intentions in a circular chain: T[i, i] = T[i, i+1 mod 6] = 0.5. The chain
      starts at intention 0 and the first message's intention is one step from there, as
      in the paper's script, so ``initial`` = T[0] = (0.5, 0.5, 0, 0, 0, 0).
    * 18 letters a..r; intention k owns letters 3k..3k+2. s_θ is uniform over them.
    * A_θ's only non-zero block is a 3×3 matrix of uniform random rows, normalised, drawn
      for k = 0..5 from NumPy's legacy generator seeded with 1713 (``RandomState(1713)``
      draws the same stream as the script's ``np.random.seed(1713)``).
    * Noise η ∈ [0, ``MAX_ETA``]: A_θ ← (A_θ + η) / row sums, over all 18 columns (the paper's ``epsilon``).
      The first letter stays inside the intention's block unless ``noisy_first_letter``:
      then s_θ ← (s_θ + η) / sum as well, so that the first letter no longer reveals θ
      and ε(x) > 0 for real (docs/claims.md §8).
    * Each message has 21 letters, then ``\\n``.

    With η = 0, the rows of A_θ for letters outside θ's block are never used (θ never
    writes those letters); they are set to uniform, the η → 0 limit of the noised rows,
    so that every row is a distribution. The η = 0 language is unambiguous.
    """
    eta = _check_eta(eta)
    n_intentions, per = PAPER_INTENTIONS, PAPER_LETTERS_PER_INTENTION
    n_letters = n_intentions * per
    legacy = np.random.RandomState(PAPER_SEED)  # a local generator, not the global state
    letter_transition = np.zeros((n_intentions, n_letters, n_letters), dtype=np.float64)
    for k in range(n_intentions):
        block = legacy.rand(per, per)
        block = block / block.sum(axis=-1, keepdims=True)
        letter_transition[k, k * per:(k + 1) * per, k * per:(k + 1) * per] = block
    first_letter = np.zeros((n_intentions, n_letters), dtype=np.float64)
    for k in range(n_intentions):
        first_letter[k, k * per:(k + 1) * per] = 1.0 / per
    if eta > 0.0:
        letter_transition, first_letter = add_noise(letter_transition, first_letter, eta, noisy_first_letter)
    else:
        unused_rows = letter_transition.sum(axis=-1) == 0.0
        letter_transition[unused_rows] = 1.0 / n_letters
    transition = np.zeros((n_intentions, n_intentions), dtype=np.float64)
    for k in range(n_intentions):
        transition[k, k] = 0.5
        transition[k, (k + 1) % n_intentions] = 0.5
    kind = "paper-noisy-first" if noisy_first_letter else "paper"
    return Language(
        initial=transition[0].copy(),
        transition=transition,
        first_letter=first_letter,
        letter_transition=letter_transition,
        length_probs=fixed_length(PAPER_MESSAGE_LETTERS),
        alphabet=tuple("abcdefghijklmnopqr"),
        delimiter="\n",
        name=f"{kind}(eta={eta:g})",
        description=(
            "the paper's doubly-embedded Markov chain (arXiv 2304.09960): 6 intentions, 18 letters, "
            f"21 letters a message, noise eta={eta:g}"
            + (", first letter noised too" if noisy_first_letter else ", first letter inside the intention's block")
        ),
    )


def random_language(
    n_intentions: int = 3,
    n_letters: int = 6,
    letters_per_intention: Optional[int] = None,
    message_length: Union[int, tuple] = 5,
    concentration: float = 1.0,
    eta: float = 0.0,
    noisy_first_letter: bool = True,
    transition: Union[str, np.ndarray] = "random",
    seed: SeedLike = 0,
    name: Optional[str] = None,
) -> Language:
    """A random language of any size, for tests and experiments.

    Args:
        n_intentions: K.
        n_letters: V.
        letters_per_intention: each intention writes only a block of this many letters
            (intention k owns letters k·b .. k·b + b − 1, wrapping around the alphabet),
            which makes the language sparse; ``None`` lets every intention use every letter.
        message_length: an int for a fixed number of letters, or ``(low, high)`` for a
            length uniform on low..high.
        concentration: the Dirichlet concentration of each row (small = peaked rows).
        eta: noise added to every row then renormalised, as in :func:`paper_language`.
        noisy_first_letter: whether the noise also touches the first-letter distributions.
        transition: ``"random"`` (Dirichlet rows), ``"identity"`` (a mixture language),
            ``"uniform"``, ``"circular"`` (the paper's 0.5/0.5 shape), or a K×K matrix.
        seed: a seed or ``numpy.random.Generator``.
    """
    rng = as_generator(seed)
    for label, value in [("n_intentions", n_intentions), ("n_letters", n_letters)]:
        if not is_integer(value) or value < 1:
            raise ValueError(f"{label} must be a positive integer; got {value!r}")
    n_intentions, n_letters = int(n_intentions), int(n_letters)
    if not (is_finite_real(concentration) and concentration > 0.0):
        raise ValueError(f"concentration must be a finite number > 0; got {concentration!r}")
    eta = _check_eta(eta)
    block = n_letters if letters_per_intention is None else letters_per_intention
    if not is_integer(block) or not 1 <= block <= n_letters:
        raise ValueError(f"letters_per_intention must be an integer in 1..{n_letters} (or None); got {letters_per_intention!r}")
    block = int(block)

    def own_letters(k: int) -> np.ndarray:
        return (k * block + np.arange(block)) % n_letters if block < n_letters else np.arange(n_letters)

    first_letter = np.zeros((n_intentions, n_letters), dtype=np.float64)
    letter_transition = np.full((n_intentions, n_letters, n_letters), 1.0 / n_letters, dtype=np.float64)
    for k in range(n_intentions):
        letters = own_letters(k)
        first_letter[k, letters] = rng.dirichlet(np.full(block, concentration))
        rows = rng.dirichlet(np.full(block, concentration), size=block)
        letter_transition[k, letters, :] = 0.0
        letter_transition[k, letters[:, None], letters[None, :]] = rows
        # rows of letters k never writes are unreachable under k; keep them uniform.
    if eta > 0.0:
        letter_transition, first_letter = add_noise(letter_transition, first_letter, eta, noisy_first_letter)

    if isinstance(transition, str):
        if transition == "random":
            transition_matrix = rng.dirichlet(np.full(n_intentions, concentration), size=n_intentions)
        elif transition == "identity":
            transition_matrix = np.eye(n_intentions, dtype=np.float64)
        elif transition == "uniform":
            transition_matrix = np.full((n_intentions, n_intentions), 1.0 / n_intentions, dtype=np.float64)
        elif transition == "circular":
            transition_matrix = 0.5 * (np.eye(n_intentions) + np.roll(np.eye(n_intentions), 1, axis=1))
        else:
            raise ValueError(f"transition must be 'random', 'identity', 'uniform', 'circular' or a K×K matrix; got {transition!r}")
    else:
        transition_matrix = np.asarray(transition, dtype=np.float64)
    initial = rng.dirichlet(np.full(n_intentions, max(concentration, 1.0)))

    if isinstance(message_length, (tuple, list)):
        if len(message_length) != 2 or not all(is_integer(v) for v in message_length):
            raise ValueError(f"message_length must be an integer or a pair (low, high) of integers; got {message_length!r}")
        low, high = (int(v) for v in message_length)
        if not 1 <= low <= high:
            raise ValueError(f"message_length (low, high) needs 1 ≤ low ≤ high; got {message_length}")
        length_probs = np.zeros(high + 1, dtype=np.float64)
        length_probs[low:high + 1] = 1.0 / (high - low + 1)
    else:
        length_probs = fixed_length(message_length)
    return Language(
        initial=initial,
        transition=transition_matrix,
        first_letter=first_letter,
        letter_transition=letter_transition,
        length_probs=length_probs,
        name=name or f"random(K={n_intentions},V={n_letters})",
        description=f"random language: K={n_intentions}, V={n_letters}, block={block}, concentration={concentration:g}, eta={eta:g}",
    )


def mixture_language(language: Language, prior: Optional[np.ndarray] = None) -> Language:
    """The same inner chains with the intention fixed for a whole document (T = I).

    This is the setting of the ICL theorem (docs/claims.md §4): given θ, the messages of a
    document are independent. ``prior`` (default: the language's stationary intentions)
    becomes ``initial``.
    """
    prior = language.stationary_intentions() if prior is None else np.asarray(prior, dtype=np.float64)
    return Language(
        initial=prior,
        transition=np.eye(language.n_intentions, dtype=np.float64),
        first_letter=language.first_letter,
        letter_transition=language.letter_transition,
        length_probs=language.length_probs,
        alphabet=language.alphabet,
        delimiter=language.delimiter,
        name=f"mixture:{language.name}",
        description=f"{language.description}; intention fixed per document (identity outer chain)",
    )


PRESETS = ("paper", "paper-noisy-first", "paper-mixture", "paper-noisy-first-mixture")


def preset(name: str, eta: float = 0.0) -> Language:
    """A named language: ``paper``, ``paper-noisy-first``, and their ``-mixture`` versions."""
    if name not in PRESETS:
        raise ValueError(f"unknown language preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = paper_language(eta, noisy_first_letter=name.startswith("paper-noisy-first"))
    if name.endswith("-mixture"):
        return mixture_language(base, prior=np.full(base.n_intentions, 1.0 / base.n_intentions))
    return base


# ----------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------

def _draw(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws, one per row: ``probs`` (N, M) rows of a distribution, ``uniforms`` (N,) in [0, 1).

    Returns the index i with cdf[i-1] ≤ u·total < cdf[i], so a zero-probability entry is
    never chosen, even with rounding in the cumulative sums.
    """
    cdf = np.cumsum(probs, axis=-1)
    scaled = uniforms * cdf[:, -1]
    return (cdf <= scaled[:, None]).sum(axis=-1)


class Corpus(NamedTuple):
    """A sampled stream of messages.

    tokens: (N_tokens,) int64, the messages one after another, each ended by the delimiter.
    intentions: (M,) int64, the intention of each message.
    message_starts: (M,) int64, the index in ``tokens`` of each message's first letter.
    """

    tokens: np.ndarray
    intentions: np.ndarray
    message_starts: np.ndarray


def sample_intentions(language: Language, n_messages: int, rng: SeedLike, first: Optional[int] = None) -> np.ndarray:
    """The outer chain: intentions θ_1..θ_M, θ_1 ~ initial (or ``first``), θ_{j+1} ~ T[θ_j]."""
    rng = as_generator(rng)
    if not is_integer(n_messages) or n_messages < 0:
        raise ValueError(f"the number of messages must be a non-negative integer; got {n_messages!r}")
    n_messages = int(n_messages)
    uniforms = rng.random(n_messages)
    intentions = np.empty(n_messages, dtype=np.int64)
    if n_messages == 0:
        return intentions
    cdf = np.cumsum(language.transition, axis=-1)
    if first is None:
        current = int(_draw(language.initial[None, :], uniforms[:1])[0])
    else:
        if not is_integer(first) or not 0 <= first < language.n_intentions:
            raise ValueError(f"the first intention must be an integer in 0..{language.n_intentions - 1}; got {first!r}")
        current = int(first)
    intentions[0] = current
    # A Markov chain is sequential; this loop does one searchsorted per message.
    for j in range(1, n_messages):
        row = cdf[current]
        current = int(min(np.searchsorted(row, uniforms[j] * row[-1], side="right"), language.n_intentions - 1))
        intentions[j] = current
    return intentions


def _sample_message_matrix(language: Language, intentions: np.ndarray, rng: np.random.Generator):
    """Messages as a padded matrix: token ids (M, n_max + 1) and lengths (M,) in letters,
    n_max the longest message drawn.

    Row j holds message j's letters (ids 1..V) then the delimiter (id 0) at column
    ``lengths[j]``; columns after it are padding (also 0). The inner chain is sampled
    one position at a time, vectorised over all messages.
    """
    n_messages = intentions.shape[0]
    n_lengths = language.length_probs.shape[0]
    lengths = _draw(np.broadcast_to(language.length_probs, (n_messages, n_lengths)), rng.random(n_messages))
    max_length = int(lengths.max()) if n_messages else 0
    letters = np.zeros((n_messages, max_length), dtype=np.int64)  # letter indices 0..V-1
    if max_length:
        letters[:, 0] = _draw(language.first_letter[intentions], rng.random(n_messages))
    for position in range(1, max_length):
        rows = language.letter_transition[intentions, letters[:, position - 1]]  # (M, V)
        letters[:, position] = _draw(rows, rng.random(n_messages))
    tokens = np.zeros((n_messages, max_length + 1), dtype=np.int64)
    inside = np.arange(max_length)[None, :] < lengths[:, None]
    tokens[:, :max_length] = np.where(inside, letters + 1, DELIMITER_ID)
    return tokens, lengths


def _flatten_messages(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The padded message matrix as one stream: each row's letters and its delimiter."""
    keep = np.arange(tokens.shape[1])[None, :] <= lengths[:, None]
    return tokens[keep]


def sample_message_matrix(language: Language, intentions, rng: SeedLike) -> tuple:
    """One message per given intention, as a padded matrix: token ids (M, n_max + 1) int64
    (n_max the longest message drawn) and lengths (M,) in letters; row j is message j's
    letters, its delimiter at column ``lengths[j]``, then padding. The same draws as
    :func:`sample_messages`, without a Python array per message (for many messages)."""
    rng = as_generator(rng)
    intentions = language.check_intentions(intentions).ravel()
    return _sample_message_matrix(language, intentions, rng)


def sample_messages(language: Language, intentions, rng: SeedLike) -> list:
    """One message per given intention: a list of int64 arrays, letters then the delimiter."""
    tokens, lengths = sample_message_matrix(language, intentions, rng)
    return [tokens[j, :lengths[j] + 1].copy() for j in range(tokens.shape[0])]


def sample_corpus(language: Language, n_messages: int, seed: SeedLike, first_intention: Optional[int] = None) -> Corpus:
    """A stream of ``n_messages`` messages from one run of the outer chain (the paper's corpus)."""
    rng = as_generator(seed)
    intentions = sample_intentions(language, n_messages, rng, first=first_intention)
    tokens, lengths = _sample_message_matrix(language, intentions, rng)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)[: len(intentions)]
    return Corpus(tokens=_flatten_messages(tokens, lengths), intentions=intentions, message_starts=starts)


def sample_windows(language: Language, n_windows: int, window_length: int, seed: SeedLike,
                   burn_in_messages: int = 50) -> np.ndarray:
    """``n_windows`` windows of ``window_length`` tokens cut at random from one fresh stream.

    The stream runs ``burn_in_messages`` messages before the first possible window start,
    and each window starts at a uniformly random token after that, so it can begin
    anywhere inside a message (unknown phase), as the paper's training windows do. For a
    mixing outer chain such a start is (close to) stationary: the start that
    :class:`tinylatent.oracle.Oracle` assumes for ``phase="unknown"``. Windows may overlap.
    Returns an (n_windows, window_length) int64 array.
    """
    rng = as_generator(seed)
    if not is_integer(window_length) or window_length < 1:
        raise ValueError(f"window_length must be a positive integer; got {window_length!r}")
    if not is_integer(n_windows) or n_windows < 1:
        raise ValueError(f"n_windows must be a positive integer; got {n_windows!r}")
    if not is_integer(burn_in_messages) or burn_in_messages < 0:
        raise ValueError(f"burn_in_messages must be an integer ≥ 0; got {burn_in_messages!r}")
    n_windows, window_length, burn_in_messages = int(n_windows), int(window_length), int(burn_in_messages)
    shortest_message = int(language.length_probs.nonzero()[0].min()) + 1  # tokens, delimiter included
    start_region_messages = max(20, n_windows)
    n_messages = burn_in_messages + start_region_messages + window_length // shortest_message + 2
    corpus = sample_corpus(language, n_messages, rng)
    first_start = int(corpus.message_starts[burn_in_messages])
    last_start = int(corpus.message_starts[burn_in_messages + start_region_messages])
    starts = rng.integers(first_start, last_start, size=n_windows)
    return corpus.tokens[starts[:, None] + np.arange(window_length)[None, :]]
