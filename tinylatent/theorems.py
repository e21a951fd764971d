"""The paper's claims as functions: each returns what the exact oracle measures and the bound.

Hui Jiang, "A Latent Space Theory for Emergent Abilities in Large Language Models"
(arXiv 2304.09960); the statements we implement are in docs/claims.md §2–6, and
docs/theory.md gives each one's proof, the test that checks it and a measured example.
Notation: q is the true language, θ an intention, θ* the true one, π a prior q(θ),
ε(x) = 1 − q(θ* | x) the ambiguity of x.

=====================================================  ===================================
claim                                                  function
=====================================================  ===================================
1. sparsity: q(θ*, x) = q(θ* | x) q(x) ≥ (1 − ε) q(x)   :func:`sparsity`
2./3. understanding, next token                         :func:`understanding_next_token`
2./3. understanding, whole k-token continuations        :func:`understanding_continuations`
4. ICL: error ≤ max π ratio · Π ε_i / (1 − ε_i)         :func:`icl_posterior_concentration`
   (and the decay rate of a curve)                      :func:`fit_decay`
5. ICL, unambiguous language: one example suffices       :func:`icl_unambiguous`
6. chain-of-thought conditions on more                   :func:`chain_of_thought`
7. instruction tuning: p(y|x) = Σ_θ q(θ|θ_x) q(y|θ)     :func:`instruction_tuning`
=====================================================  ===================================

``python -m tinylatent.theorems`` prints one measured example of each (:func:`demo`).

Every result is a NamedTuple whose fields are documented by the math they hold; most
carry ``measured``, ``bound``, ``slack`` (= how far inside the bound, ≥ 0 when it holds)
and ``holds`` (the inequality, with :data:`ROUNDING_TOLERANCE` for float64 rounding).
Everything is float64 and vectorised over a batch of prompts (B); the only Python loops
are over intentions, distinct prompt lengths, or steps of a chain.

Numerics: a posterior error 1 − q(θ* | x) is computed as Σ_{θ ≠ θ*} q(θ | x), never by
subtracting from one, so an error of 1e-30 is reported as 1e-30, not as 0 or 1e-16.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from tinylatent._checks import is_finite_real, is_integer
from tinylatent.language import DELIMITER_ID, Language, SeedLike, as_generator, sample_messages
from tinylatent.oracle import Oracle, check_phase, describe_impossible, posterior_error

ROUNDING_TOLERANCE = 1e-12  # absolute slack that ``holds`` allows for float64 rounding of probabilities
MAX_CONTINUATIONS = 200_000  # the most k-token continuations understanding_continuations enumerates


# ----------------------------------------------------------------------------------------
# Small pieces every claim uses
# ----------------------------------------------------------------------------------------

def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """TV(p, q) = ½ Σ_y |p(y) − q(y)| = max over events A of |p(A) − q(A)|, over the last axis."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=-1)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) = Σ_y p(y) log(p(y) / q(y)) in nats, over the last axis.

    0 · log 0 = 0; a y with p(y) > 0 = q(y) makes the divergence +inf.
    """
    with np.errstate(divide="ignore"):
        return kl_divergence_log(p, np.log(np.asarray(q, dtype=np.float64)))


def kl_divergence_log(p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) = Σ_y p(y) (log p(y) − log q(y)) from log q itself, over the last axis: a model's
    log-probabilities below float64's range (log q = −800, where q = exp(−800) reads 0) give a
    finite divergence, as they should. 0 · log 0 = 0; log q(y) = −inf with p(y) > 0 gives +inf.
    """
    p, log_q = np.asarray(p, dtype=np.float64), np.asarray(log_q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0.0, p * (np.log(np.where(p > 0.0, p, 1.0)) - log_q), 0.0)
    return terms.sum(axis=-1)


def entropy(p: np.ndarray) -> np.ndarray:
    """H(p) = −Σ p log p in nats, over the last axis (0 · log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0.0, p * np.log(np.where(p > 0.0, p, 1.0)), 0.0).sum(axis=-1)


def kl_bound(ambiguity) -> np.ndarray:
    """−log(1 − ε), the KL bound of an ε-ambiguous reading (+inf at ε = 1)."""
    with np.errstate(divide="ignore"):
        return -np.log1p(-np.asarray(ambiguity, dtype=np.float64))


def _holds(measured, bound) -> np.ndarray:
    return np.asarray(measured) <= np.asarray(bound) + ROUNDING_TOLERANCE


def _prior_or_stationary(language: Language, prior) -> np.ndarray:
    """π: the given prior (checked), or the language's stationary intentions μ (a message read from a boundary)."""
    if prior is not None:
        return language.check_prior(prior)
    return language.stationary_intentions()


def _prior_or_initial(language: Language, prior) -> np.ndarray:
    """π: the given prior (checked), or the language's ``initial`` (the first message of a document)."""
    return language.initial if prior is None else language.check_prior(prior)


# ----------------------------------------------------------------------------------------
# Checking what a caller passes: one place, so every claim refuses bad input the same way
# (a wrapped negative index or a broadcast intention would give a wrong answer, not an error)
# ----------------------------------------------------------------------------------------

def _check_intentions(language: Language, intentions, n_sequences: int, what: str) -> np.ndarray:
    """(B,) int64: exactly one intention id per sequence, each an integer in 0..K−1."""
    values = language.check_intentions(intentions, what)
    if values.ndim != 1 or values.shape[0] != n_sequences:
        raise ValueError(f"{what} must hold one intention per sequence: shape ({n_sequences},) for the "
                         f"{n_sequences} given; got shape {values.shape}")
    return values


def _check_sequences(language: Language, sequences, what: str):
    """A (B, T) int64 array, or a list of B one-dimensional int64 arrays, every token id checked.

    Refused: a single 1-D array (one prompt must be passed as ``[x]`` or ``x[None]``, not
    read as B one-token prompts), empty sequences, non-integer or out-of-vocabulary ids.
    """
    if isinstance(sequences, np.ndarray):
        if sequences.ndim != 2:
            raise ValueError(f"{what} must be a (B, T) array or a list of B token arrays; got an array of shape "
                             f"{sequences.shape} (pass one sequence x as [x] or x[None])")
        if sequences.shape[1] == 0:
            raise ValueError(f"{what}: each sequence needs at least one token; got shape {sequences.shape}")
        return language.check_tokens(sequences, what)
    checked = []
    for b, sequence in enumerate(sequences):
        sequence = np.asarray(sequence)
        if sequence.ndim != 1 or sequence.size == 0:
            raise ValueError(f"{what}[{b}] must be a non-empty one-dimensional array of token ids; got shape {sequence.shape}")
        checked.append(language.check_tokens(sequence, f"{what}[{b}]"))
    return checked


def _require_messages(sequences, what: str, end: str) -> None:
    """Each checked sequence is one message or its beginning: at least one letter, no delimiter
    before the last token, and at the end a delimiter as ``end`` says: ``"none"`` (a message
    prefix, letters only), ``"optional"`` or ``"required"`` (a whole message)."""
    allowed = {"none": "the first letters of one message (at least one letter, no delimiter)",
               "optional": "one message (at least one letter, then optionally the delimiter; no delimiter before the end)",
               "required": "one whole message (at least one letter, then the delimiter; no delimiter before it)"}[end]
    for b, tokens in enumerate(sequences):
        is_delimiter = np.asarray(tokens) == DELIMITER_ID
        ends_message = bool(is_delimiter[-1])
        good_end = {"none": not ends_message, "optional": True, "required": ends_message}[end]
        if is_delimiter[:-1].any() or is_delimiter.size - ends_message < 1 or not good_end:
            raise ValueError(f"{what}[{b}] must be {allowed}; got token ids {np.asarray(tokens).tolist()}")


def _check_phase(phase: str, prior) -> None:
    check_phase(phase)
    if phase != "start" and prior is not None:
        raise ValueError("a prior over the first intention applies to phase='start' only: a window of unknown "
                         "phase starts from the stationary state; pass prior=None")


def by_length(sequences):
    """Yield (rows, tokens (b, T)) for each distinct length T: a batch of the oracle needs equal lengths.

    ``sequences`` is a (B, T) array (one group) or a list of B one-dimensional token arrays.
    """
    if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
        yield np.arange(sequences.shape[0]), sequences
        return
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        yield rows, np.stack([np.asarray(sequences[i], dtype=np.int64) for i in rows])


def _n_sequences(sequences) -> int:
    return sequences.shape[0] if isinstance(sequences, np.ndarray) and sequences.ndim == 2 else len(sequences)


class FinalState(NamedTuple):
    """What the oracle knows at the end of each of B sequences (phase "start": read from a
    message boundary; phase "unknown": windows cut anywhere in the stream).

    log_marginal: (B,) log q(x).
    posterior: (B, K) q(θ_T | x), θ_T the intention of the message holding the last token.
    next_posterior: (B, K) q(θ_{T+1} | x), the intention of the message holding the next
        token: ``posterior`` itself, or ``posterior @ T`` when the last token is a delimiter.
    predictive: (B, V + 1) q(x_{T+1} | x).
    known_intention_predictive: (B, V + 1) q(x_{T+1} | x, θ_{T+1} = θ) for the given θ, or None.
    """

    log_marginal: np.ndarray
    posterior: np.ndarray
    next_posterior: np.ndarray
    predictive: np.ndarray
    known_intention_predictive: Optional[np.ndarray]


def final_state(language: Language, sequences, prior=None, known_intention=None, phase: str = "start",
                oracle: Optional[Oracle] = None) -> FinalState:
    """The oracle's beliefs after the last token of each sequence (sequences of any lengths).

    Args:
        sequences: a (B, T) array or a list of B token arrays (grouped by length internally).
        prior: q(θ_1), phase "start" only; default the language's stationary intentions μ.
        known_intention: (B,) or one θ for ``known_intention_predictive``.
        phase: ``"start"`` (each sequence begins a message) or ``"unknown"``.
    """
    _check_phase(phase, prior)
    sequences = _check_sequences(language, sequences, "sequences")
    n = _n_sequences(sequences)
    if known_intention is not None:
        if np.ndim(known_intention) == 0:
            known_intention = np.full(n, known_intention, dtype=np.asarray(known_intention).dtype)
        known_intention = _check_intentions(language, known_intention, n, "known_intention")
    prior = _prior_or_stationary(language, prior) if phase == "start" else None
    return _final_state(language, sequences, prior, oracle, known=known_intention, phase=phase)


def _final_state(language: Language, sequences, prior, oracle: Optional[Oracle] = None, known=None,
                 phase: str = "start", refuse_impossible: Optional[str] = None) -> FinalState:
    """:func:`final_state` on checked input (prior a (K,) array for phase "start", known (B,) or None).

    With ``refuse_impossible`` (the argument's name), a sequence of probability 0 raises ValueError
    saying which and why: a claim about q(θ | x) says nothing of an x that q never writes, and the
    filter's output for it (posterior and predictive frozen at the impossible token) is no answer.
    """
    oracle = Oracle(language) if oracle is None else oracle
    n = _n_sequences(sequences)
    n_intentions, vocab = language.n_intentions, language.vocab_size
    log_marginal = np.empty(n, dtype=np.float64)
    posterior = np.empty((n, n_intentions), dtype=np.float64)
    predictive = np.empty((n, vocab), dtype=np.float64)
    known_predictive = None if known is None else np.empty((n, vocab), dtype=np.float64)
    last_is_delimiter = np.empty(n, dtype=bool)
    for rows, tokens in by_length(sequences):
        result = oracle.filter(tokens, phase=phase, prior=prior,
                               known_intention=None if known is None else known[rows])
        if refuse_impossible is not None and not result.possible.all():
            first = int(np.flatnonzero(~result.possible)[0])
            raise ValueError(f"{refuse_impossible}[{rows[first]}]: "
                             f"{describe_impossible(language, tokens, result, row=first)}")
        log_marginal[rows] = result.log_marginal
        posterior[rows] = result.posterior[:, -1]
        predictive[rows] = result.predictive[:, -1]
        if known is not None:
            known_predictive[rows] = result.known_intention_predictive[:, -1]
        last_is_delimiter[rows] = tokens[:, -1] == DELIMITER_ID
    next_posterior = np.where(last_is_delimiter[:, None], posterior @ language.transition, posterior)
    return FinalState(log_marginal, posterior, next_posterior, predictive, known_predictive)


def log_likelihoods(language: Language, sequences, oracle: Optional[Oracle] = None) -> np.ndarray:
    """log q(x | θ_1 = θ) for every intention θ: (B, K), θ_1 the intention of the first message.

    :meth:`Oracle.log_likelihoods` on each batch of equal lengths: one forward filter per θ
    with the one-hot prior on θ_1 (phase "start"), the outer chain T for any later message
    in x. −inf where θ cannot write x.
    """
    return _log_likelihoods(language, _check_sequences(language, sequences, "sequences"), oracle)


def _log_likelihoods(language: Language, sequences, oracle: Optional[Oracle] = None) -> np.ndarray:
    """:func:`log_likelihoods` on checked sequences."""
    oracle = Oracle(language) if oracle is None else oracle
    out = np.empty((_n_sequences(sequences), language.n_intentions), dtype=np.float64)
    for rows, tokens in by_length(sequences):
        out[rows] = oracle.log_likelihoods(tokens)
    return out


def with_transition(language: Language, transition, name: Optional[str] = None) -> Language:
    """The same inner chains (s_θ, A_θ, lengths) with a new outer chain T' (validated)."""
    return dataclasses.replace(language, transition=np.asarray(transition, dtype=np.float64),
                               name=name or f"{language.name} with edited T")


def is_mixture(language: Language) -> bool:
    """True when the outer chain is the identity (one intention per document)."""
    return bool(np.array_equal(language.transition, np.eye(language.n_intentions)))


def ambiguous_intention_pairs(language: Language) -> np.ndarray:
    """(K, K) bool: [θ, θ'] is True when some whole message has q(x | θ) > 0 and q(x | θ') > 0.

    Decided exactly on supports (no sampling): a message c_1..c_n is possible under both
    iff s_θ[c_1] s_θ'[c_1] > 0, A_θ[c_j, c_{j+1}] A_θ'[c_j, c_{j+1}] > 0 for every j, and
    q(length = n) > 0. So we propagate the set of letters both can be at after n letters
    through the letter graph that both share. The diagonal is True for every θ.
    The language is **unambiguous** (docs/claims.md §2) iff no off-diagonal entry is True:
    then ε(x) = 0 for every message x with q(x) > 0, under any prior.
    """
    both_first = (language.first_letter > 0.0)[:, None, :] & (language.first_letter > 0.0)[None, :, :]   # (K, K, V)
    support = language.letter_transition > 0.0
    both_step = (support[:, None] & support[None, :]).astype(np.float64)                             # (K, K, V, V)
    reachable = both_first                                                                              # after 1 letter
    overlap = np.zeros(both_first.shape[:2], dtype=bool)
    for n_letters in range(1, language.max_length + 1):
        if language.length_probs[n_letters] > 0.0:
            overlap |= reachable.any(axis=-1)
        reachable = np.einsum("abv,abvw->abw", reachable.astype(np.float64), both_step) > 0.0
    return overlap


def is_unambiguous(language: Language) -> bool:
    """True when no message can be written by two intentions (see :func:`ambiguous_intention_pairs`)."""
    pairs = ambiguous_intention_pairs(language)
    return not np.any(pairs & ~np.eye(language.n_intentions, dtype=bool))


# ----------------------------------------------------------------------------------------
# Claim 1: sparsity
# ----------------------------------------------------------------------------------------

class SparsityResult(NamedTuple):
    """Claim 1 (docs/claims.md §2) for B messages x, each written under θ*.

    log_joint: (B,) log q(θ*, x) = log π(θ*) + log q(x | θ*), from a filter with θ fixed.
    log_marginal: (B,) log q(x) = log Σ_θ π(θ) q(x | θ), from a filter with prior π.
    ambiguity: (B,) ε(x) = 1 − q(θ* | x), from that filter's posterior.
    identity_residual: (B,) log q(θ*, x) − log(q(θ* | x) q(x)): zero up to rounding
        (Bayes' rule, from two independent filter runs).
    peak_share: (B,) q(θ*, x) / q(x): the share of the marginal that the joint's peak
        at θ* carries; equals 1 − ε(x).
    epsilon: the language-level ε the dominance bound uses (max ε(x) over the batch unless given).
    measured: (B,) q(θ*, x) as log_joint.
    bound: (B,) log((1 − ε) q(x)), the sparsity lower bound with the language-level ε.
    slack: (B,) measured − bound ≥ 0 (a lower bound: slack is measured minus bound).
    holds: (B,) bool, measured ≥ bound (up to rounding).
    """

    log_joint: np.ndarray
    log_marginal: np.ndarray
    ambiguity: np.ndarray
    identity_residual: np.ndarray
    peak_share: np.ndarray
    epsilon: float
    measured: np.ndarray
    bound: np.ndarray
    slack: np.ndarray
    holds: np.ndarray


def sparsity(language: Language, messages, true_intentions, prior=None, epsilon: Optional[float] = None) -> SparsityResult:
    """Claim 1: q(θ*, x) = q(θ* | x) q(x) ≥ (1 − ε) q(x) for messages read from their start.

    Args:
        messages: (B, T) array or list of B token arrays, each a message (delimiter optional).
        true_intentions: (B,) θ*.
        prior: π = q(θ) of a message; default the language's stationary intentions μ.
        epsilon: the language's ambiguity ε ≥ every ε(x), in [0, 1]; default the batch's largest ε(x).
    """
    messages = _check_sequences(language, messages, "messages")
    _require_messages(messages, "messages", end="optional")
    true_intentions = _check_intentions(language, true_intentions, _n_sequences(messages), "true_intentions")
    if epsilon is not None and not (is_finite_real(epsilon) and 0.0 <= epsilon <= 1.0):
        raise ValueError(f"epsilon is an ambiguity, a probability in [0, 1]; got {epsilon}")
    oracle = Oracle(language)
    prior = _prior_or_stationary(language, prior)
    rows = np.arange(true_intentions.shape[0])
    state = _final_state(language, messages, prior, oracle, refuse_impossible="messages")
    with np.errstate(divide="ignore"):
        log_joint = np.log(prior[true_intentions]) + _log_likelihoods(language, messages, oracle)[rows, true_intentions]
        log_posterior_true = np.log(state.posterior[rows, true_intentions])
    ambiguity = posterior_error(state.posterior, true_intentions)
    epsilon = float(ambiguity.max()) if epsilon is None else float(epsilon)
    with np.errstate(divide="ignore"):
        log_bound = np.log1p(-epsilon) + state.log_marginal
    return SparsityResult(
        log_joint=log_joint,
        log_marginal=state.log_marginal,
        ambiguity=ambiguity,
        identity_residual=log_joint - (log_posterior_true + state.log_marginal),
        peak_share=np.exp(log_joint - state.log_marginal),
        epsilon=epsilon,
        measured=log_joint,
        bound=log_bound,
        slack=log_joint - log_bound,
        holds=log_joint >= log_bound - ROUNDING_TOLERANCE,
    )


# ----------------------------------------------------------------------------------------
# Claims 2 and 3: language understanding
# ----------------------------------------------------------------------------------------

class UnderstandingResult(NamedTuple):
    """Claims 2–3 (docs/claims.md §3) for B prompts x and a distribution over continuations y.

    bayes: (B, N) q(y | x), the marginal reader (what a perfect LM p = q gives).
    known_intention: (B, N) q(y | x, θ*), the reader told the intention.
    ambiguity: (B,) ε(x) = 1 − q(θ* | x) for the intention the continuation is conditioned on.
    max_abs_difference: (B,) max_y |q(y | x) − q(y | x, θ*)|; 0 for an unambiguous reading (claim 2).
    total_variation: (B,) TV(q(·|x), q(·|x, θ*)).
    kl: (B,) KL(q(·|x, θ*) ‖ q(·|x)).
    kl_bound: (B,) −log(1 − ε(x)).
    measured: (B,) total_variation.
    bound: (B,) ε(x), the TV bound.
    slack: (B,) bound − measured.
    holds: (B,) bool: TV ≤ ε(x) and KL ≤ −log(1 − ε(x)) (up to rounding).
    """

    bayes: np.ndarray
    known_intention: np.ndarray
    ambiguity: np.ndarray
    max_abs_difference: np.ndarray
    total_variation: np.ndarray
    kl: np.ndarray
    kl_bound: np.ndarray
    measured: np.ndarray
    bound: np.ndarray
    slack: np.ndarray
    holds: np.ndarray


def _understanding_result(bayes, known, ambiguity) -> UnderstandingResult:
    tv = total_variation(bayes, known)
    kl = kl_divergence(known, bayes)
    bound_kl = kl_bound(ambiguity)
    return UnderstandingResult(
        bayes=bayes, known_intention=known, ambiguity=ambiguity,
        max_abs_difference=np.abs(bayes - known).max(axis=-1),
        total_variation=tv, kl=kl, kl_bound=bound_kl,
        measured=tv, bound=ambiguity, slack=ambiguity - tv,
        holds=_holds(tv, ambiguity) & _holds(kl, bound_kl),
    )


def understanding_next_token(language: Language, prompts, next_intentions, phase: str = "start",
                             prior=None) -> UnderstandingResult:
    """Claims 2–3 for the next token: q(x_{T+1} | x) against q(x_{T+1} | x, θ_{T+1} = θ*).

    θ_{T+1} is the intention of the message that holds token T + 1: the prompt's last
    message if the prompt ends inside it (a delimiter still to come belongs to it), the
    next message if the prompt ends with a delimiter. Its posterior q(θ_{T+1} | x) is the
    filter's posterior, or that times T after a delimiter; ε(x) = 1 − q(θ_{T+1} = θ* | x).

    Proof of the bound: q(y | x) = Σ_θ q(θ_{T+1} = θ | x) q(y | x, θ) ≥ (1 − ε) q(y | x, θ*)
    for every y. Split y into A = {q(y|x) ≥ q(y|x,θ*)} and its complement: on A the excess
    is Σ_{θ≠θ*} q(θ|x) q(y|x,θ) summed, ≤ ε; on the complement the deficit is ≤ ε q(·|x,θ*) ≤ ε.
    So TV ≤ ε, and log(q(y|x,θ*) / q(y|x)) ≤ −log(1 − ε) pointwise gives the KL bound.

    Args:
        prompts: (B, T) array or list of token arrays.
        next_intentions: (B,) θ*, the true intention of the message holding token T + 1.
        phase: "start" (prompts begin a message; prior π) or "unknown" (windows of the stream).
    """
    _check_phase(phase, prior)
    prompts = _check_sequences(language, prompts, "prompts")
    next_intentions = _check_intentions(language, next_intentions, _n_sequences(prompts), "next_intentions")
    prior = _prior_or_stationary(language, prior) if phase == "start" else None
    state = _final_state(language, prompts, prior, known=next_intentions, phase=phase, refuse_impossible="prompts")
    ambiguity = posterior_error(state.next_posterior, next_intentions)
    return _understanding_result(state.predictive, state.known_intention_predictive, ambiguity)


class ContinuationResult(NamedTuple):
    """Claims 2–3 for whole continuations y of k tokens (all (V + 1)^k of them, N in all).

    continuations: (N, k) int64, every k-token sequence y (row order of the other fields).
    understanding: :class:`UnderstandingResult` over those N continuations.
    posterior: (B, K) q(θ | x), the intention of the message x begins.
    conditional: (B, N, K) q(y | x, θ) for every θ (0 where q(x | θ) = 0).
    mixture_residual: (B,) max_y |q(y | x) − Σ_θ q(θ | x) q(y | x, θ)|: the decomposition
        the proof starts from, from independent filter runs; zero up to rounding.
    """

    continuations: np.ndarray
    understanding: UnderstandingResult
    posterior: np.ndarray
    conditional: np.ndarray
    mixture_residual: np.ndarray


def all_continuations(vocab_size: int, n_tokens: int) -> np.ndarray:
    """Every sequence of ``n_tokens`` token ids in 0..vocab_size−1: ((V+1)^k, k), lexicographic."""
    grids = np.indices((vocab_size,) * n_tokens).reshape(n_tokens, -1).T
    return grids.astype(np.int64)


def understanding_continuations(language: Language, message_prefixes, true_intentions, n_tokens: int,
                                prior=None) -> ContinuationResult:
    """Claims 2–3 for whole k-token continuations y of the beginning x of a message.

    x is the start of one message (its first letters, no delimiter) whose intention θ has
    prior ``prior``; y is any k tokens after it, which may end the message and run into
    the next ones. The intention conditioned on is θ, that of the message x begins:

        q(y | x, θ) = q(x y | θ) / q(x | θ),   q(y | x) = q(x y) / q(x),

    each a forward filter (a one-hot prior on θ for the first, the prior π for the second);
    the filter follows T across any delimiter in y. Since q(y | x) = Σ_θ q(θ | x) q(y | x, θ)
    for every y, the proof of :func:`understanding_next_token` applies with ε(x) = 1 − q(θ* | x).

    A prompt with earlier messages x_head before x reduces to this one by the Markov
    property: pass ``prior = q(θ | x_head)`` (the filter's posterior after x_head's last
    delimiter, times T); then q(y | x_head x, θ) = q(y | x, θ) and the posteriors agree.

    Args:
        message_prefixes: (B, t) array or list of token arrays: letters only, t ≥ 1.
        true_intentions: (B,) θ*.
        n_tokens: k ≥ 1; (V + 1)^k continuations are enumerated for each prompt.
        prior: q(θ) of the message x begins; default the stationary intentions μ.
    """
    if not is_integer(n_tokens) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer; got {n_tokens!r}")
    n_tokens = int(n_tokens)
    vocab, n_intentions = language.vocab_size, language.n_intentions
    n_continuations = vocab ** n_tokens
    if n_continuations > MAX_CONTINUATIONS:
        raise ValueError(f"{vocab}^{n_tokens} = {n_continuations} continuations is too many to enumerate "
                         f"(at most {MAX_CONTINUATIONS}); use fewer tokens")
    prefixes = list(_check_sequences(language, message_prefixes, "message_prefixes"))
    _require_messages(prefixes, "message_prefixes", end="none")
    true_intentions = _check_intentions(language, true_intentions, len(prefixes), "true_intentions")
    prior = _prior_or_stationary(language, prior)
    oracle = Oracle(language)
    continuations = all_continuations(vocab, n_tokens)                                      # (N, k)
    batch = len(prefixes)
    extended = [np.concatenate([prefixes[b], y]) for b in range(batch) for y in continuations]  # B·N rows, prompt-major
    prompt_state = _final_state(language, prefixes, prior, oracle, refuse_impossible="message_prefixes")
    extended_log_marginal = _final_state(language, extended, prior, oracle).log_marginal.reshape(batch, -1)
    prompt_log_likelihood = _log_likelihoods(language, prefixes, oracle)                     # (B, K)
    extended_log_likelihood = _log_likelihoods(language, extended, oracle).reshape(batch, n_continuations, n_intentions)
    possible = np.isfinite(prompt_log_likelihood)[:, None, :]
    with np.errstate(invalid="ignore"):
        conditional = np.where(possible, np.exp(extended_log_likelihood - np.where(possible, prompt_log_likelihood[:, None, :], 0.0)), 0.0)
    bayes = np.exp(extended_log_marginal - prompt_state.log_marginal[:, None])               # (B, N)
    known = conditional[np.arange(batch), :, true_intentions]                                # (B, N)
    mixture = np.einsum("bk,bnk->bn", prompt_state.posterior, conditional)
    return ContinuationResult(
        continuations=continuations,
        understanding=_understanding_result(bayes, known, posterior_error(prompt_state.posterior, true_intentions)),
        posterior=prompt_state.posterior,
        conditional=conditional,
        mixture_residual=np.abs(bayes - mixture).max(axis=-1),
    )


# ----------------------------------------------------------------------------------------
# Claims 4 and 5: in-context learning
# ----------------------------------------------------------------------------------------

class ICLTasks(NamedTuple):
    """B in-context-learning tasks, all messages of task b written under one intention θ*_b.

    intentions: (B,) int64 θ*.
    examples: B lists of M example messages (int64 arrays, letters then the delimiter).
    queries: B int64 arrays: the first letters of one more message under θ*.

    The prompt with m ≤ M examples is examples[:m] then the query (:meth:`prompts`); the
    same examples are reused for every m, so curves over m compare like with like.
    """

    intentions: np.ndarray
    examples: list
    queries: list

    @property
    def max_examples(self) -> int:
        return len(self.examples[0]) if self.examples else 0

    def example_prompts(self, n_examples: int) -> list:
        """The B prompts of the first m examples alone (no query); m ≥ 1."""
        return [np.concatenate(examples[:n_examples]) for examples in self.examples]

    def prompts(self, n_examples: int) -> list:
        """The B prompts x_1 … x_m then the query."""
        return [np.concatenate(list(examples[:n_examples]) + [query]) for examples, query in zip(self.examples, self.queries)]

    def example_messages(self, n_examples: int) -> list:
        """The B·m example messages, task-major (task b's examples at rows b·m … b·m + m − 1)."""
        return [message for examples in self.examples for message in examples[:n_examples]]


def sample_icl_tasks(language: Language, n_tasks: int, max_examples: int, query_letters: int = 1,
                     seed: SeedLike = 0, prior=None) -> ICLTasks:
    """Sample B tasks: θ* ~ prior (default μ), M + 1 messages under θ*, the last cut to a query.

    The query is the first ``query_letters`` letters of message M + 1 (all of its letters,
    without the delimiter, if it is shorter).
    """
    rng = as_generator(seed)
    for label, value, low in [("n_tasks", n_tasks, 1), ("max_examples", max_examples, 0), ("query_letters", query_letters, 1)]:
        if not is_integer(value) or value < low:
            raise ValueError(f"{label} must be an integer ≥ {low}; got {value!r}")
    n_tasks, max_examples, query_letters = int(n_tasks), int(max_examples), int(query_letters)
    prior = _prior_or_stationary(language, prior)
    intentions = rng.choice(language.n_intentions, size=n_tasks, p=prior).astype(np.int64)
    per_task = max_examples + 1
    messages = sample_messages(language, np.repeat(intentions, per_task), rng)
    examples = [messages[b * per_task: b * per_task + max_examples] for b in range(n_tasks)]
    queries = [messages[b * per_task + max_examples][:min(query_letters, len(messages[b * per_task + max_examples]) - 1)]
               for b in range(n_tasks)]
    return ICLTasks(intentions=intentions, examples=examples, queries=queries)


def bayes_intention_error(language: Language, prompts, true_intentions, prior=None) -> np.ndarray:
    """(B,) 1 − q(θ_T = θ* | x), θ_T the intention of the message holding the prompt's last token.

    Prompts begin at a message boundary; prior q(θ_1) default μ. Works for any outer chain.
    ``true_intentions`` holds one θ* per prompt (it is not broadcast).
    """
    prompts = _check_sequences(language, prompts, "prompts")
    true_intentions = _check_intentions(language, true_intentions, _n_sequences(prompts), "true_intentions")
    state = _final_state(language, prompts, _prior_or_stationary(language, prior), refuse_impossible="prompts")
    return posterior_error(state.posterior, true_intentions)


def known_intention_next_token(language: Language, queries, intentions) -> np.ndarray:
    """(B, V + 1) q(x_{T+1} | query, θ* ): the next token of a message begun by the query, θ* known.

    This is the ICL target: by the Markov property it equals q(x_{T+1} | prompt, θ_{T+1} = θ*)
    for any examples before the query, in any language of this kind. ``intentions``: (B,), one per query.
    """
    queries = _check_sequences(language, queries, "queries")
    intentions = _check_intentions(language, intentions, _n_sequences(queries), "intentions")
    return _known_intention_next_token(language, queries, intentions, None)


def _known_intention_next_token(language: Language, queries, intentions, oracle: Optional[Oracle]) -> np.ndarray:
    """:func:`known_intention_next_token` on checked input."""
    return _final_state(language, queries, language.stationary_intentions(), oracle,
                        known=intentions).known_intention_predictive


class ICLResult(NamedTuple):
    """Claim 4 (docs/claims.md §4) for B prompts of m examples and a query, in a mixture language.

    n_examples: m.
    example_ambiguity: (B, m) ε_i = 1 − q_uniform(θ* | x_i), each example read alone
        under a uniform prior.
    query_ambiguity: (B,) ε_q, the same for the query (a message prefix).
    prior_ratio: (B,) max_θ π(θ) / π(θ*) ≥ 1.
    error_examples: (B,) 1 − q(θ* | x_1..x_m), the intention of the message after the
        examples (1 − π(θ*) at m = 0).
    bound_examples: (B,) prior_ratio · Π_i ε_i / (1 − ε_i).
    error: (B,) ε_m = 1 − q(θ* | x_1..x_m, query), the query's intention.
    bound: (B,) bound_examples · ε_q / (1 − ε_q), the proven bound on ``error``.
    bayes_predictive: (B, V + 1) q(x_{T+1} | prompt).
    target: (B, V + 1) q(x_{T+1} | query, θ*).
    total_variation: (B,) TV(bayes_predictive, target) ≤ error.
    kl: (B,) KL(target ‖ bayes_predictive) ≤ −log(1 − error) = kl_bound.
    kl_bound: (B,).
    paper_form: (B,) ε_0^{m+2} with ε_0 = max_i ε_i, the paper's stated (unproven) form;
        NaN at m = 0. It is *not* a valid bound (see docs/theory.md, the counterexample).
    measured: (B,) error.  slack: (B,) bound − error.
    holds: (B,) bool: error ≤ bound, error_examples ≤ bound_examples, TV ≤ error and
        KL ≤ −log(1 − error) (up to rounding).
    """

    n_examples: int
    example_ambiguity: np.ndarray
    query_ambiguity: np.ndarray
    prior_ratio: np.ndarray
    error_examples: np.ndarray
    bound_examples: np.ndarray
    error: np.ndarray
    bound: np.ndarray
    bayes_predictive: np.ndarray
    target: np.ndarray
    total_variation: np.ndarray
    kl: np.ndarray
    kl_bound: np.ndarray
    paper_form: np.ndarray
    measured: np.ndarray
    slack: np.ndarray
    holds: np.ndarray


def _require_mixture(language: Language, what: str) -> None:
    if not is_mixture(language):
        raise ValueError(f"{what} is a statement about mixture languages (identity outer chain, one intention per "
                         f"document); {language.name} has another chain: build one with mixture_language()")


def _check_tasks(language: Language, tasks: ICLTasks, n_examples: int) -> np.ndarray:
    """θ* of each task, (B,) int64, after checking the tasks: one intention, example list and
    query per task; at least ``n_examples`` whole example messages in every task; each query
    the first letters of one message."""
    n_tasks = len(tasks.queries)
    if n_tasks == 0:
        raise ValueError("tasks must hold at least one task")
    if len(tasks.examples) != n_tasks:
        raise ValueError(f"tasks must have one example list per query; got {len(tasks.examples)} lists for {n_tasks} queries")
    truth = _check_intentions(language, tasks.intentions, n_tasks, "tasks.intentions")
    short = [b for b, examples in enumerate(tasks.examples) if len(examples) < n_examples]
    if short:
        raise ValueError(f"n_examples = {n_examples}, but task {short[0]} has only {len(tasks.examples[short[0]])} "
                         f"example(s); every task needs at least n_examples")
    _require_messages(_check_sequences(language, tasks.queries, "tasks.queries"), "tasks.queries", end="none")
    if n_examples:
        examples = _check_sequences(language, tasks.example_messages(n_examples), "tasks.example_messages")
        _require_messages(examples, "tasks.example_messages", end="required")
    return truth


def _odds_factors(posterior, true_intentions) -> np.ndarray:
    """ε / (1 − ε) = Σ_{θ ≠ θ*} q_u(θ | x) / q_u(θ* | x): (N, K), (N,) -> (N,).

    The sum of likelihood ratios of one message, from its uniform-prior posterior; computed
    from the posterior entries themselves, so it stays accurate for ε near 0 and near 1.
    """
    error = posterior_error(posterior, true_intentions)
    true_share = posterior[np.arange(posterior.shape[0]), true_intentions]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(error > 0.0, error / true_share, 0.0)


def icl_posterior_concentration(language: Language, tasks: ICLTasks, n_examples: int, prior=None) -> ICLResult:
    """Claim 4: in a mixture language the posterior error decays geometrically in m.

    Posterior odds, the examples independent given θ:
        q(θ | x_1..m) / q(θ* | x_1..m) = (π(θ)/π(θ*)) Π_i r_i(θ),  r_i(θ) = q(x_i|θ) / q(x_i|θ*).
    Then 1 − q(θ*|·) = Σ_{θ≠θ*} q(θ|·) ≤ Σ_{θ≠θ*} q(θ|·)/q(θ*|·)
        ≤ max_{θ≠θ*} (π(θ)/π(θ*)) · Σ_{θ≠θ*} Π_i r_i(θ)
        ≤ max_{θ≠θ*} (π(θ)/π(θ*)) · Π_i Σ_{θ≠θ*} r_i(θ)        (a product of sums of
                                                                non-negative terms holds the diagonal)
    and Σ_{θ≠θ*} r_i(θ) = ε_i / (1 − ε_i) with ε_i read under a uniform prior. The query is
    one more independent factor. The prior factor is docs/claims.md's max_θ π(θ)/π(θ*) ≥ 1, θ = θ*
    included: the last step needs at least one factor, and at m = 0 (no examples, no query)
    the bound is 1 − π(θ*) ≤ max_θ π(θ)/π(θ*), true only because that factor is ≥ 1.
    (The "tighter" max over θ ≠ θ* fails there: π = (2/3, 1/6, 1/6), θ* = 0 gives
    1/3 > 1/4. Hypothesis found it.)

    The predictive inherits it (claim 3 with the query's posterior): TV ≤ ε_m, KL ≤ −log(1 − ε_m).
    When some ε_i ≥ 1/2 the factor exceeds 1 and the bound can exceed 1: still valid, just vacuous.

    Args:
        tasks: from :func:`sample_icl_tasks` (or built by hand), with at least m examples each.
        n_examples: m ≥ 0.
        prior: π, the document's prior over θ; default ``language.initial`` (T = I keeps it).
    """
    _require_mixture(language, "the ICL bound")
    if not is_integer(n_examples) or not 0 <= n_examples <= tasks.max_examples:
        raise ValueError(f"n_examples must be an integer in 0..{tasks.max_examples}; got {n_examples!r}")
    n_examples = int(n_examples)
    n_intentions = language.n_intentions
    truth = _check_tasks(language, tasks, n_examples)
    prior = _prior_or_initial(language, prior)
    batch = truth.shape[0]
    uniform = np.full(n_intentions, 1.0 / n_intentions)
    oracle = Oracle(language)

    query_posterior = _final_state(language, tasks.queries, uniform, oracle).posterior
    query_ambiguity = posterior_error(query_posterior, truth)
    query_odds = _odds_factors(query_posterior, truth)
    if n_examples:
        example_truth = np.repeat(truth, n_examples)
        example_posterior = _final_state(language, tasks.example_messages(n_examples), uniform, oracle).posterior
        example_ambiguity = posterior_error(example_posterior, example_truth).reshape(batch, n_examples)
        example_odds = _odds_factors(example_posterior, example_truth).reshape(batch, n_examples)
        error_examples = posterior_error(_final_state(language, tasks.example_prompts(n_examples), prior,
                                                      oracle).next_posterior, truth)
    else:
        example_ambiguity = example_odds = np.zeros((batch, 0), dtype=np.float64)
        error_examples = posterior_error(np.tile(prior, (batch, 1)), truth)
    with np.errstate(divide="ignore"):
        prior_ratio = prior.max() / prior[truth]                                          # max_θ π(θ)/π(θ*) ≥ 1
    with np.errstate(invalid="ignore"):   # inf · 0 = nan only if a factor is inf and another 0: take 0
        bound_examples = np.nan_to_num(prior_ratio * np.prod(example_odds, axis=1), nan=0.0, posinf=np.inf)
        bound = np.nan_to_num(bound_examples * query_odds, nan=0.0, posinf=np.inf)

    prompts = tasks.prompts(n_examples)
    state = _final_state(language, prompts, prior, oracle)
    error = posterior_error(state.posterior, truth)
    target = _known_intention_next_token(language, tasks.queries, truth, oracle)
    tv = total_variation(state.predictive, target)
    kl = kl_divergence(target, state.predictive)
    bound_kl = kl_bound(error)
    paper_form = example_ambiguity.max(axis=1) ** (n_examples + 2) if n_examples else np.full(batch, np.nan)
    return ICLResult(
        n_examples=n_examples, example_ambiguity=example_ambiguity, query_ambiguity=query_ambiguity,
        prior_ratio=prior_ratio, error_examples=error_examples, bound_examples=bound_examples,
        error=error, bound=bound, bayes_predictive=state.predictive, target=target,
        total_variation=tv, kl=kl, kl_bound=bound_kl, paper_form=paper_form,
        measured=error, slack=bound - error,
        holds=_holds(error, bound) & _holds(error_examples, bound_examples) & _holds(tv, error) & _holds(kl, bound_kl),
    )


class DecayFit(NamedTuple):
    """A least-squares line through log(error) against m: log error ≈ intercept + slope · m.

    slope: per example (negative when the error decays).
    intercept: log error at m = 0 on the line.
    rate: exp(slope), the factor the error shrinks by per example.
    n_points: how many (m, error) pairs had a finite positive error and were fitted.
    All NaN (n_points < 2) when fewer than two errors are positive: e.g. an error that is
    exactly 0, as in an unambiguous language, has no rate.
    """

    slope: float
    intercept: float
    rate: float
    n_points: int


def fit_decay(n_examples, errors) -> DecayFit:
    """Fit error ≈ exp(intercept) · rate^m by least squares on log(error); zeros are left out."""
    n_examples = np.asarray(n_examples, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if n_examples.ndim != 1 or errors.shape != n_examples.shape:
        raise ValueError(f"fit_decay needs two 1-D arrays of the same length (m and the error at m); got shapes "
                         f"{n_examples.shape} and {errors.shape}")
    if not np.all(np.isfinite(n_examples)):
        raise ValueError("fit_decay: every number of examples m must be finite")
    usable = np.isfinite(errors) & (errors > 0.0)
    if usable.sum() < 2 or np.ptp(n_examples[usable]) == 0:
        return DecayFit(float("nan"), float("nan"), float("nan"), int(usable.sum()))
    slope, intercept = np.polyfit(n_examples[usable], np.log(errors[usable]), deg=1)
    return DecayFit(float(slope), float(intercept), float(np.exp(slope)), int(usable.sum()))


class UnambiguousICLResult(NamedTuple):
    """Claim 5 (docs/claims.md §4): in an unambiguous mixture language one example fixes θ*.

    language_is_unambiguous: bool, from :func:`is_unambiguous` (exact, on supports).
    error_query_only: (B,) 1 − q(θ* | query). Reported, but no bound is claimed for it:
        unambiguity is about whole messages, and a query is the beginning of one, which
        two intentions can share (θ0 writes "abc", θ1 writes "abd": the query "a" or "ab"
        leaves the error at 1/2 under a uniform prior, in an unambiguous language).
    error_one_example: (B,) 1 − q(θ* | x_1), the intention after one example.
    error_one_example_and_query: (B,) 1 − q(θ* | x_1, query).
    kl_one_example: (B,) KL(q(·|query, θ*) ‖ q(·|x_1, query)).
    measured: (B,) the larger of the two errors after one example (with and without the query).
    bound: 0.0 when the language is unambiguous (else 1.0: no claim).
    holds: (B,) bool, measured ≤ bound, compared exactly (no tolerance): the errors are sums
        of posterior entries that are exactly 0.
    """

    language_is_unambiguous: bool
    error_query_only: np.ndarray
    error_one_example: np.ndarray
    error_one_example_and_query: np.ndarray
    kl_one_example: np.ndarray
    measured: np.ndarray
    bound: float
    holds: np.ndarray


def icl_unambiguous(language: Language, tasks: ICLTasks, prior=None) -> UnambiguousICLResult:
    """Claim 5: for an unambiguous language ε(x) = 0, so every factor of claim 4 is 0.

    A message x with q(x | θ*) > 0 has q(x | θ) = 0 for all θ ≠ θ*, hence q(θ* | x) = 1
    under any prior with π(θ*) > 0: one example gives the error 0, exactly, and a query
    after it keeps it 0 (the posterior is already one-hot on θ*).

    The query alone is *not* covered: it is a message prefix, not a whole message, and
    unambiguity says nothing about prefixes. Its error is 0 only when its letters already
    rule out every other θ (as in the paper's faithful language, where the first letter
    does); in general it is not (the shared-prefix example in
    :class:`UnambiguousICLResult`). So ``error_query_only`` is reported without a bound,
    and docs/claims.md §4's "even the query alone" over-claims (docs/theory.md §5).
    """
    _require_mixture(language, "one-example ICL")
    if tasks.max_examples < 1:
        raise ValueError("the tasks need at least one example")
    result = icl_posterior_concentration(language, tasks, 1, prior=prior)
    query_only = bayes_intention_error(language, tasks.queries, tasks.intentions, prior=prior)
    measured = np.maximum(result.error_examples, result.error)      # the query alone is not bounded (see above)
    unambiguous = is_unambiguous(language)
    bound = 0.0 if unambiguous else 1.0
    return UnambiguousICLResult(
        language_is_unambiguous=unambiguous,
        error_query_only=query_only,
        error_one_example=result.error_examples,
        error_one_example_and_query=result.error,
        kl_one_example=result.kl,
        measured=measured,
        bound=bound,
        holds=measured <= bound,
    )


# ----------------------------------------------------------------------------------------
# Claim 6: chain-of-thought
# ----------------------------------------------------------------------------------------

def _draw_rows(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One inverse-CDF draw per row of ``probs`` (N, K); a zero-probability entry is never drawn."""
    cdf = np.cumsum(probs, axis=-1)
    return (cdf <= (uniforms * cdf[:, -1])[:, None]).sum(axis=-1)


def chain_of_thought_posteriors(language: Language, documents, n_steps: int, prior=None) -> tuple:
    """The direct and the step-by-step posterior of θ_m, for B documents x_0 x_1 … x_{m−1}.

    Returns (direct, step_by_step), each (B, K):
        direct[b]       = q(θ_m | x_0)           = q(θ_0 | x_0) · T^m,
        step_by_step[b] = q(θ_m | x_0 … x_{m−1}) = q(θ_{m−1} | x_0 … x_{m−1}) · T.
    ``documents`` start at a message boundary (θ_0 ~ prior, default ``language.initial``)
    and hold exactly m whole messages, so they end with x_{m−1}'s delimiter; x_0 is each
    document's tokens up to and including its first delimiter. All of this is checked:
    without the last delimiter the filter's ``next_posterior`` would skip the step ·T and
    give q(θ_{m−1} | ·), the wrong intention, without a word.
    """
    if not is_integer(n_steps) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
    n_steps = int(n_steps)
    documents = list(_check_sequences(language, documents, "documents"))
    first_messages = []                                                        # x_0 of each document
    for b, document in enumerate(documents):
        delimiters = np.flatnonzero(document == DELIMITER_ID)
        if document[-1] != DELIMITER_ID or delimiters.size != n_steps or np.any(np.diff(np.concatenate([[-1], delimiters])) < 2):
            raise ValueError(f"documents[{b}] must be m = {n_steps} whole messages x_0 … x_{{m−1}}, each at least one "
                             f"letter then the delimiter, ending with the delimiter; it has {delimiters.size} "
                             f"delimiter(s) and ends with token id {int(document[-1])}")
        first_messages.append(document[:delimiters[0] + 1])
    prior = _prior_or_initial(language, prior)
    oracle = Oracle(language)
    after_first = _final_state(language, first_messages, prior, oracle).posterior      # q(θ_0 | x_0)
    direct = after_first @ np.linalg.matrix_power(language.transition, n_steps)
    # documents of probability 0 are allowed (an expectation over every document weights them by 0);
    # their rows hold the filter's state frozen at the impossible token
    step_by_step = _final_state(language, documents, prior, oracle).next_posterior
    return direct, step_by_step


class ChainOfThoughtResult(NamedTuple):
    """Claim 6 (docs/claims.md §5) over B sampled chains θ_0 → … → θ_m and messages x_0 … x_{m−1}.

    n_steps: m.
    final_intention: (B,) the θ_m that was drawn.
    direct_posterior: (B, K) q(θ_m | x_0).
    step_posterior: (B, K) q(θ_m | x_0 … x_{m−1}).
    direct_accuracy, step_accuracy: (B,) max_θ q(θ_m = θ | ·): the probability that the
        MAP answer is right, given what each reader has seen (Bayes accuracy).
    direct_entropy, step_entropy: (B,) H(θ_m | ·) in nats.
    direct_hit, step_hit: (B,) 1.0 where the MAP answer equals the drawn θ_m (a noisier
        estimate of the same accuracies).
    accuracy_gain, accuracy_gain_ci: E[step_accuracy − direct_accuracy], with a 95%
        normal-approximation interval over the B chains (paired differences).
    entropy_reduction, entropy_reduction_ci: E[direct_entropy − step_entropy], likewise.
    measured: accuracy_gain.  bound: 0.0, the theorem's lower bound on both expectations.
    holds: True unless a 95% interval lies entirely below 0 (by more than rounding): a Monte
        Carlo check of an expectation; the exact check for small languages is in
        tests/test_theorems.py.
    """

    n_steps: int
    final_intention: np.ndarray
    direct_posterior: np.ndarray
    step_posterior: np.ndarray
    direct_accuracy: np.ndarray
    step_accuracy: np.ndarray
    direct_entropy: np.ndarray
    step_entropy: np.ndarray
    direct_hit: np.ndarray
    step_hit: np.ndarray
    accuracy_gain: float
    accuracy_gain_ci: tuple
    entropy_reduction: float
    entropy_reduction_ci: tuple
    measured: float
    bound: float
    holds: bool


def mean_and_ci(values, z: float = 1.959963984540054) -> tuple:
    """(mean, (low, high)): the sample mean and its normal-approximation 95% interval."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    half = z * float(values.std(ddof=1)) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return mean, (float(mean - half), float(mean + half))


def chain_of_thought(language: Language, n_steps: int, n_chains: int, seed: SeedLike = 0, prior=None) -> ChainOfThoughtResult:
    """Claim 6: answering θ_m step by step conditions on more than answering it directly.

    Since q(θ_m | x_0) = E[q(θ_m | x_0 … x_{m−1}) | x_0] (the tower rule), Jensen's inequality
    for the convex maps p ↦ max_θ p(θ) and p ↦ −H(p) gives, for every x_0,
        E[max q(θ_m | x_0 … x_{m−1}) | x_0] ≥ max q(θ_m | x_0),
        E[H(θ_m | x_0 … x_{m−1}) | x_0] ≤ H(θ_m | x_0):
    in expectation the step-by-step answer is no less accurate and no more uncertain.
    This function estimates both gains by Monte Carlo over ``n_chains`` sampled chains.

    Args:
        n_steps: m ≥ 1 (m = 1: nothing in between; the two readers are the same).
        prior: q(θ_0); default ``language.initial``.
    """
    rng = as_generator(seed)
    if not is_integer(n_chains) or n_chains < 2:
        raise ValueError(f"n_chains must be an integer ≥ 2; got {n_chains!r}")
    if not is_integer(n_steps) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
    n_chains, n_steps = int(n_chains), int(n_steps)
    prior = _prior_or_initial(language, prior)
    chains = np.empty((n_chains, n_steps + 1), dtype=np.int64)                # θ_0 … θ_m
    chains[:, 0] = _draw_rows(np.broadcast_to(prior, (n_chains, prior.shape[0])), rng.random(n_chains))
    for step in range(1, n_steps + 1):
        chains[:, step] = _draw_rows(language.transition[chains[:, step - 1]], rng.random(n_chains))
    messages = sample_messages(language, chains[:, :n_steps].ravel(), rng)     # x_0 … x_{m−1}, chain-major
    documents = [np.concatenate(messages[b * n_steps:(b + 1) * n_steps]) for b in range(n_chains)]
    direct, step = chain_of_thought_posteriors(language, documents, n_steps, prior=prior)
    final = chains[:, -1]
    direct_accuracy, step_accuracy = direct.max(axis=1), step.max(axis=1)
    direct_entropy, step_entropy = entropy(direct), entropy(step)
    gain, gain_ci = mean_and_ci(step_accuracy - direct_accuracy)
    reduction, reduction_ci = mean_and_ci(direct_entropy - step_entropy)
    return ChainOfThoughtResult(
        n_steps=n_steps, final_intention=final, direct_posterior=direct, step_posterior=step,
        direct_accuracy=direct_accuracy, step_accuracy=step_accuracy,
        direct_entropy=direct_entropy, step_entropy=step_entropy,
        direct_hit=(direct.argmax(axis=1) == final).astype(np.float64),
        step_hit=(step.argmax(axis=1) == final).astype(np.float64),
        accuracy_gain=gain, accuracy_gain_ci=gain_ci, entropy_reduction=reduction, entropy_reduction_ci=reduction_ci,
        measured=gain, bound=0.0,
        holds=not (gain_ci[1] < -ROUNDING_TOLERANCE or reduction_ci[1] < -ROUNDING_TOLERANCE),
    )


# ----------------------------------------------------------------------------------------
# Claim 7: instruction tuning
# ----------------------------------------------------------------------------------------

class InstructionTuningResult(NamedTuple):
    """Claim 7 (docs/claims.md §6) for B (prompt x, response y) pairs of whole messages.

    response_given_intention: (B,) q(y | x, θ_x), the oracle reading x y with x's intention fixed.
    mixture: (B,) Σ_θ T[θ_x, θ] q(y | θ), the response mixture written out.
    bayes_response: (B,) q(y | x), θ_x not given.
    bayes_mixture: (B,) Σ_θ (q(θ_x | x) T)[θ] q(y | θ).
    per_intention_response: (B, K) q(y | θ), the response under each intention alone.
    edited_response_given_intention: (B,) q'(y | x, θ_x) in the language with T' (None if no edit).
    edited_mixture: (B,) Σ_θ T'[θ_x, θ] q(y | θ) with the *original* q(y | θ) (None if no edit).
    per_intention_change: (B,) max_θ |q'(y | θ) − q(y | θ)|: what the edit did to the
        per-intention response distributions (0: untouched) (None if no edit).
    measured: (B,) the largest relative gap between each identity's two sides.
    bound: 0.0 (an identity).  holds: (B,) bool, measured ≤ 1e-9 (rounding of products).
    """

    response_given_intention: np.ndarray
    mixture: np.ndarray
    bayes_response: np.ndarray
    bayes_mixture: np.ndarray
    per_intention_response: np.ndarray
    edited_response_given_intention: Optional[np.ndarray]
    edited_mixture: Optional[np.ndarray]
    per_intention_change: Optional[np.ndarray]
    measured: np.ndarray
    bound: float
    holds: np.ndarray


IDENTITY_RELATIVE_TOLERANCE = 1e-9  # relative gap allowed between two float64 routes to one probability


def _relative_gap(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    scale = np.maximum(np.abs(a), np.abs(b))
    return np.where(scale > 0.0, np.abs(a - b) / np.where(scale > 0.0, scale, 1.0), 0.0)


def instruction_tuning(language: Language, prompts, prompt_intentions, responses, edited_transition=None,
                       prior=None) -> InstructionTuningResult:
    """Claim 7: a response is a mixture over intentions, p(y | x) = Σ_θ q(θ | θ_x) q(y | θ).

    Given the prompt's intention θ_x, the response message's intention is θ ~ T[θ_x] and its
    letters depend on θ alone, so q(y | x, θ_x) = Σ_θ T[θ_x, θ] q(y | θ) exactly; without θ_x,
    q(y | x) = Σ_θ (q(θ_x | x) T)[θ] q(y | θ). Editing the outer chain to T' (fine-tuning
    the intention transitions) leaves every q(y | θ) as it was, so the responses change only
    through the mixture weights: q'(y | x, θ_x) = Σ_θ T'[θ_x, θ] q(y | θ).

    Left side: the forward filter reading x y (it crosses the delimiter with T or T').
    Right side: the mixture written out, q(y | θ) from a filter reading y alone.

    Args:
        prompts, responses: B whole messages each (letters then the delimiter), arrays or lists.
        prompt_intentions: (B,) θ_x.
        edited_transition: an edited outer chain T' (K × K), or None.
        prior: q(θ_x) for the Bayes version; default the stationary intentions μ.
    """
    prompts = list(_check_sequences(language, prompts, "prompts"))
    responses = list(_check_sequences(language, responses, "responses"))
    _require_messages(prompts, "prompts", end="required")
    _require_messages(responses, "responses", end="required")
    batch = len(prompts)
    if len(responses) != batch:
        raise ValueError(f"give one response per prompt; got {batch} prompts and {len(responses)} responses")
    prompt_intentions = _check_intentions(language, prompt_intentions, batch, "prompt_intentions")
    rows = np.arange(batch)
    prior = _prior_or_stationary(language, prior)
    oracle = Oracle(language)
    dialogues = [np.concatenate([x, y]) for x, y in zip(prompts, responses)]
    per_intention = np.exp(_log_likelihoods(language, responses, oracle))                    # q(y | θ), (B, K)

    def given_intention(lang, lang_oracle):
        with np.errstate(invalid="ignore"):
            log_ratio = _log_likelihoods(lang, dialogues, lang_oracle) - _log_likelihoods(lang, prompts, lang_oracle)
        return np.exp(log_ratio[rows, prompt_intentions])

    response = given_intention(language, oracle)
    mixture = np.einsum("bk,bk->b", language.transition[prompt_intentions], per_intention)
    prompt_state = _final_state(language, prompts, prior, oracle, refuse_impossible="prompts")
    bayes = np.exp(_final_state(language, dialogues, prior, oracle).log_marginal - prompt_state.log_marginal)
    bayes_mixture = np.einsum("bk,bk->b", prompt_state.next_posterior, per_intention)
    gaps = [_relative_gap(response, mixture), _relative_gap(bayes, bayes_mixture)]
    edited_response = edited_mixture = change = None
    if edited_transition is not None:
        edited = with_transition(language, edited_transition)
        edited_oracle = Oracle(edited)
        edited_response = given_intention(edited, edited_oracle)
        edited_mixture = np.einsum("bk,bk->b", edited.transition[prompt_intentions], per_intention)
        change = np.abs(np.exp(_log_likelihoods(edited, responses, edited_oracle)) - per_intention).max(axis=1)
        gaps.append(_relative_gap(edited_response, edited_mixture))
    measured = np.max(np.stack(gaps), axis=0)
    return InstructionTuningResult(
        response_given_intention=response, mixture=mixture, bayes_response=bayes, bayes_mixture=bayes_mixture,
        per_intention_response=per_intention, edited_response_given_intention=edited_response,
        edited_mixture=edited_mixture, per_intention_change=change,
        measured=measured, bound=0.0, holds=measured <= IDENTITY_RELATIVE_TOLERANCE,
    )


# ----------------------------------------------------------------------------------------
# One measured example per claim: python -m tinylatent.theorems
# ----------------------------------------------------------------------------------------

def demo(seed: int = 0, n: int = 200) -> str:
    """One measured example of every claim on the paper's languages (the numbers in docs/theory.md)."""
    from tinylatent.language import paper_language, preset, random_language

    rng = as_generator(seed)
    lines = []
    noisy, faithful = paper_language(0.04, noisy_first_letter=True), paper_language(0.04)
    truth = rng.integers(0, 6, size=n)
    noisy_messages = np.stack(sample_messages(noisy, truth, rng))
    faithful_messages = np.stack(sample_messages(faithful, truth, rng))

    result = sparsity(noisy, noisy_messages, truth)
    lines.append(f"1 sparsity, {noisy.name}, {n} whole messages: max |log q(θ*,x) − log q(θ*|x)q(x)| = "
                 f"{np.abs(result.identity_residual).max():.1e}; ε = max ε(x) = {result.epsilon:.3f}; "
                 f"min [log q(θ*,x) − log (1−ε)q(x)] = {result.slack.min():.1e} (≥ 0 up to rounding; the message attaining ε "
                 f"is the equality case); mean ε(x) = {result.ambiguity.mean():.4f}")
    for letters in (1, 5):
        result = understanding_next_token(faithful, faithful_messages[:, :letters], truth)
        lines.append(f"2 understanding, {faithful.name}, first {letters} letter(s) from the boundary: "
                     f"max ε(x) = {result.ambiguity.max():.1g}, max_y |q(y|x) − q(y|x,θ*)| = {result.max_abs_difference.max():.1g}")
    for letters in (1, 5):
        result = understanding_next_token(noisy, noisy_messages[:, :letters], truth)
        lines.append(f"3 understanding, {noisy.name}, first {letters} letter(s), next token: mean TV = {result.total_variation.mean():.4f} "
                     f"≤ mean ε(x) = {result.ambiguity.mean():.4f} (max TV/ε = {np.max(result.total_variation / np.maximum(result.ambiguity, 1e-300)):.3f}); "
                     f"mean KL = {result.kl.mean():.4f} ≤ mean −log(1−ε) = {result.kl_bound[np.isfinite(result.kl_bound)].mean():.4f}")
    result = understanding_continuations(noisy, noisy_messages[:20, :2], truth[:20], 3).understanding
    lines.append(f"3 understanding, {noisy.name}, first 2 letters, all 19^3 three-token continuations: "
                 f"mean TV = {result.total_variation.mean():.4f} ≤ mean ε(x) = {result.ambiguity.mean():.4f}; "
                 f"mean KL = {result.kl.mean():.4f} ≤ {result.kl_bound.mean():.4f}")
    mixture = preset("paper-noisy-first-mixture", 0.04)
    tasks = sample_icl_tasks(mixture, n, 4, seed=rng)
    for m in range(5):
        result = icl_posterior_concentration(mixture, tasks, m)
        paper = f"{np.mean(result.paper_form):.3g}" if m else "—"
        lines.append(f"4 ICL, {mixture.name}, m = {m}: mean error {result.error.mean():.3g} ≤ mean bound {result.bound.mean():.3g} "
                     f"(all {n} hold: {bool(result.holds.all())}); error without the query {result.error_examples.mean():.3g}; "
                     f"paper ε0^(m+2) {paper}; prompts where error_examples > ε0^(m+2): "
                     f"{int(np.sum(result.error_examples > result.paper_form)) if m else '—'}")
    unambiguous = preset("paper-mixture", 0.04)
    result = icl_unambiguous(unambiguous, sample_icl_tasks(unambiguous, n, 1, seed=rng))
    lines.append(f"5 ICL, {unambiguous.name} (unambiguous: {result.language_is_unambiguous}): "
                 f"max error after the query alone {result.error_query_only.max():g}, after one example {result.error_one_example.max():g}")
    sparse_chain = 0.9 * np.roll(np.eye(4), 1, axis=1) + 0.1 * np.eye(4)
    chain_language = random_language(4, 8, letters_per_intention=2, message_length=3, eta=0.01, transition=sparse_chain, seed=2)
    for steps in (1, 2, 4, 6):
        result = chain_of_thought(chain_language, steps, 400, seed=rng)
        lines.append(f"6 CoT, sparse chain (0.9 next, 0.1 stay), m = {steps}: MAP accuracy direct {result.direct_accuracy.mean():.3f} "
                     f"→ step-by-step {result.step_accuracy.mean():.3f} (gain {result.accuracy_gain:.3f}, 95% CI "
                     f"[{result.accuracy_gain_ci[0]:.3f}, {result.accuracy_gain_ci[1]:.3f}]); entropy −{result.entropy_reduction:.3f} nats")
    flat = random_language(4, 8, letters_per_intention=2, message_length=3, eta=0.01, transition="uniform", seed=2)
    result = chain_of_thought(flat, 4, 400, seed=rng)
    lines.append(f"6 CoT, uniform chain, m = 4: gain {result.accuracy_gain:.1e}, entropy reduction {result.entropy_reduction:.1e} "
                 f"(both 0 up to rounding)")
    prompts = sample_messages(faithful, truth[:50], rng)
    responses = sample_messages(faithful, rng.integers(0, 6, size=50), rng)
    next_intention = np.roll(np.eye(6), 1, axis=1)
    result = instruction_tuning(faithful, prompts, truth[:50], responses, edited_transition=next_intention)
    lines.append(f"7 instruction tuning, {faithful.name}, 50 (prompt, response) pairs, T' = always θ+1: "
                 f"max relative gap between each identity's sides {result.measured.max():.1e}; "
                 f"max change of q(y|θ) {result.per_intention_change.max():g}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(demo())
