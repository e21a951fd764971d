"""How ambiguous is a language? Three statistics of ε(x) = 1 − q(θ* | x) (docs/claims.md §2).

For a message x written under intention θ* (θ* drawn from the long-run share of
intentions μ, the prior of a message picked from the stream):

* ``map_error``: the paper code's statistic. The MAP intention from the letter
  transitions alone (uniform prior, the first letter ignored, ties to the lowest
  index as ``np.argmax`` breaks them) is wrong. The paper reports this number as its
  language's "ambiguity".
* ``mean_posterior_error``: E[ε(x)], with the exact posterior given the whole message
  (first letter included) and the prior μ.
* ``fraction_ambiguous``: q(ε(x) > 0), the share of messages that more than one
  intention could have written. It is decided on supports: x is ambiguous iff at least
  two intentions θ with μ(θ) > 0 have q(x | θ) > 0 (a finite log q(x | θ)). Testing the
  float ε(x) > 0 instead would call x unambiguous whenever ε(x) rounds to 0, which
  happens for long messages and small noise (ε < 1e-308 here, < 1.1e-16 as 1 − q(θ* | x)).

ε(x) itself is computed without cancellation, as Σ_{θ ≠ θ*} q(θ | x) with
q(θ | x) = exp(log μ(θ) + log q(x | θ) − log Σ_θ' μ(θ') q(x | θ')), from the K
log-likelihoods log q(x | θ) of the oracle started with θ for sure (:meth:`Oracle.log_likelihoods`).

Each is estimated by sampling messages, with a 95% confidence interval, or computed
exactly by enumerating every message when the message space is small.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple, Optional

import numpy as np

from tinylatent._checks import is_integer
from tinylatent.backend import array_module, to_device, to_host
from tinylatent.language import (DELIMITER_ID, Language, SeedLike, _draw, as_generator, fixed_length,
                                 sample_message_matrix)
from tinylatent.oracle import Oracle, logsumexp, posterior_error

Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal
MAX_ENUMERATED_MESSAGES = 200_000
SAMPLED_CHUNK = 32_768  # sampled messages per oracle call: the filters' memory (~6 KB a message) stays bounded


class Estimate(NamedTuple):
    """A statistic with its 95% confidence interval (``low == high == value`` when exact)."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


class AmbiguityReport(NamedTuple):
    """The three statistics of module docstring, and how they were obtained.

    method: ``"exact"`` (every message enumerated) or ``"sampled"``.
    n_messages: messages sampled (or enumerated with positive probability).
    message_length: the letters per message used (``None``: the language's own rule).
    """

    map_error: Estimate
    mean_posterior_error: Estimate
    fraction_ambiguous: Estimate
    method: str
    n_messages: int
    message_length: Optional[int]

    def as_dict(self) -> dict:
        return {
            "map_error": self.map_error.as_dict(),
            "mean_posterior_error": self.mean_posterior_error.as_dict(),
            "fraction_ambiguous": self.fraction_ambiguous.as_dict(),
            "method": self.method,
            "n_messages": self.n_messages,
            "message_length": self.message_length,
        }


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Estimate:
    """A proportion with its Wilson score interval (good also near 0 and 1)."""
    if not (is_integer(successes) and is_integer(trials) and 0 <= successes <= trials and trials >= 1):
        raise ValueError(f"wilson_interval needs integers 0 ≤ successes ≤ trials, trials ≥ 1; "
                         f"got successes={successes!r}, trials={trials!r}")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2.0 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z * z / (4.0 * trials * trials)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: np.ndarray, z: float = Z_95) -> Estimate:
    """A sample mean with its normal-approximation interval (mean ± z · standard error)."""
    mean = float(values.mean())
    half = z * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return Estimate(mean, mean - half, mean + half)


def with_message_length(language: Language, message_length: Optional[int]) -> Language:
    """The same language with messages of exactly ``message_length`` letters (None: unchanged)."""
    if message_length is None:
        return language
    return dataclasses.replace(language, length_probs=fixed_length(message_length))


def transition_log_likelihoods(language: Language, letters: np.ndarray) -> np.ndarray:
    """Σ_i log A_θ[ℓ_i, ℓ_{i+1}] for every θ: (K, M) for M messages of n letters, ``letters`` (M, n) in 0..V−1.

    A message containing a letter that θ can never write gets −inf under θ: the paper's
    matrices hold zero rows for such letters, and so does this statistic.
    """
    with np.errstate(divide="ignore"):
        log_a = np.log(language.letter_transition)                                 # (K, V, V)
    log_likelihood = log_a[:, letters[:, :-1], letters[:, 1:]].sum(axis=-1)        # (K, M)
    writable = language.reachable_letters()[:, letters].all(axis=-1)               # (K, M)
    return np.where(writable, log_likelihood, -np.inf)


def map_intentions(language: Language, letters: np.ndarray) -> np.ndarray:
    """The paper code's MAP intention of each message: transitions only, uniform prior. (M,)"""
    return np.argmax(transition_log_likelihoods(language, letters), axis=0)


def posterior_from_log_likelihoods(log_likelihood: np.ndarray, prior: np.ndarray):
    """q(θ | x), log q(x) and whether x is ambiguous, from log q(x | θ) (K, M) and the prior μ (K,).

    Returns:
        posterior: (K, M) q(θ | x) = exp(log μ(θ) + log q(x | θ) − log q(x)) (NaN where q(x) = 0).
        log_marginal: (M,) log q(x) = log Σ_θ μ(θ) q(x | θ) (max-shifted; −inf where impossible).
        ambiguous: (M,) bool, at least two θ with μ(θ) > 0 and q(x | θ) > 0 (decided on supports).
    """
    with np.errstate(divide="ignore"):
        log_joint = np.log(prior)[:, None] + log_likelihood                           # log q(θ, x), (K, M)
    log_marginal = logsumexp(np, log_joint, axis=0)                                  # log q(x), (M,)
    with np.errstate(invalid="ignore"):
        posterior = np.exp(log_joint - log_marginal)
    ambiguous = np.isfinite(log_joint).sum(axis=0) >= 2
    return posterior, log_marginal, ambiguous


def measure_ambiguity(language: Language, n_messages: int = 20_000, seed: SeedLike = 0,
                      message_length: Optional[int] = None, exact: Optional[bool] = None,
                      device: str = "cpu") -> AmbiguityReport:
    """The ambiguity statistics of ``language``, sampled or exact.

    Args:
        n_messages: messages to sample (ignored when exact).
        seed: a seed or Generator for the sampled estimate.
        message_length: letters per message (None: the language's own length rule).
        exact: True to enumerate every message (an error if there are more than
            200,000), False to sample, None to enumerate when small enough.
        device: where the oracle runs, ``"cpu"`` or ``"gpu"`` (messages are sampled on the host).
    """
    array_module(device)  # a clear error now if the device is missing
    language = with_message_length(language, message_length)
    space = sum(language.n_letters ** int(n) for n in np.nonzero(language.length_probs)[0])  # Python ints: no overflow
    if exact is None:
        exact = space <= MAX_ENUMERATED_MESSAGES
    elif not isinstance(exact, (bool, np.bool_)):
        raise ValueError(f"exact must be True, False or None (enumerate when feasible); got {exact!r}")
    if exact:
        if space > MAX_ENUMERATED_MESSAGES:
            raise ValueError(f"{space} possible messages are too many to enumerate (at most {MAX_ENUMERATED_MESSAGES}); "
                             "sample instead")
        return _exact(language, message_length, device)
    if not is_integer(n_messages) or n_messages < 2:
        raise ValueError(f"n_messages must be an integer ≥ 2; got {n_messages!r}")
    return _sampled(language, int(n_messages), as_generator(seed), message_length, device)


def _sampled(language: Language, n_messages: int, rng: np.random.Generator, message_length, device) -> AmbiguityReport:
    prior = language.stationary_intentions()
    true_intentions = _draw(np.broadcast_to(prior, (n_messages, language.n_intentions)), rng.random(n_messages))
    tokens, lengths = sample_message_matrix(language, true_intentions, rng)       # (M, n_max + 1) padded, (M,) letters
    oracle = Oracle(language)
    map_wrong = np.zeros(n_messages, dtype=bool)
    epsilon = np.zeros(n_messages, dtype=np.float64)
    ambiguous = np.zeros(n_messages, dtype=bool)
    for length in np.unique(lengths):  # equal-length messages form one batch, in chunks: memory does not grow with M
        same_length = np.nonzero(lengths == length)[0]
        for start in range(0, len(same_length), SAMPLED_CHUNK):
            rows = same_length[start:start + SAMPLED_CHUNK]
            batch = tokens[rows, :length + 1]                                          # (m, n + 1), delimiter last
            letters = batch[:, :-1] - 1
            map_wrong[rows] = map_intentions(language, letters) != true_intentions[rows]
            log_likelihood = to_host(oracle.log_likelihoods(to_device(batch, device))).T   # log q(x | θ), (K, m)
            posterior, _, ambiguous[rows] = posterior_from_log_likelihoods(log_likelihood, prior)
            epsilon[rows] = posterior_error(posterior.T, true_intentions[rows])    # Σ_{θ ≠ θ*} q(θ | x)
    return AmbiguityReport(
        map_error=wilson_interval(int(map_wrong.sum()), n_messages),
        mean_posterior_error=mean_interval(epsilon),
        fraction_ambiguous=wilson_interval(int(ambiguous.sum()), n_messages),
        method="sampled",
        n_messages=n_messages,
        message_length=message_length,
    )


def _exact(language: Language, message_length, device) -> AmbiguityReport:
    prior = language.stationary_intentions()
    oracle = Oracle(language)
    map_error = mean_error = fraction = 0.0
    n_possible = 0
    others = 1.0 - np.eye(language.n_intentions, dtype=np.float64)                 # [θ*, θ] = 1 where θ ≠ θ*
    for length in np.nonzero(language.length_probs)[0]:
        letters = np.array(list(itertools.product(range(language.n_letters), repeat=int(length))), dtype=np.int64)
        tokens = np.concatenate([letters + 1, np.full((len(letters), 1), DELIMITER_ID)], axis=1)
        # q(θ, x) = μ(θ) q(x | θ), with q(x | θ) from the oracle started with θ for sure
        log_likelihood = to_host(oracle.log_likelihoods(to_device(tokens, device))).T      # log q(x | θ), (K, M)
        posterior, log_marginal, ambiguous = posterior_from_log_likelihoods(log_likelihood, prior)
        possible = log_marginal > -np.inf
        posterior, log_marginal, ambiguous = posterior[:, possible], log_marginal[possible], ambiguous[possible]
        letters = letters[possible]
        n_possible += int(possible.sum())
        marginal = np.exp(log_marginal)                                            # q(x), (M,)
        joint = posterior * marginal                                               # q(θ, x), (K, M)
        map_guess = map_intentions(language, letters)                              # (M,)
        # q(MAP wrong) = Σ_x Σ_{θ ≠ MAP(x)} q(θ, x): a sum, not q(x) − q(MAP(x), x), so no cancellation
        map_error += float(posterior_error(joint.T, map_guess).sum())
        # E[ε] = Σ_x Σ_θ* q(θ*, x) ε(x; θ*), with ε(x; θ*) = Σ_{θ ≠ θ*} q(θ | x): a sum, no 1 − q(θ* | x)
        mean_error += float((joint * (others @ posterior)).sum())
        # q(ε(x) > 0): the probability of the messages two or more intentions can write
        fraction += float(marginal[ambiguous].sum())
    return AmbiguityReport(
        map_error=Estimate(map_error, map_error, map_error),
        mean_posterior_error=Estimate(mean_error, mean_error, mean_error),
        fraction_ambiguous=Estimate(fraction, fraction, fraction),
        method="exact",
        n_messages=n_possible,
        message_length=message_length,
    )
