"""The exact Bayesian oracle: q(x), q(θ | x) and q(x_{t+1} | x_{≤t}) for any prompt.

A language (:mod:`tinylatent.language`) is a hidden Markov model whose letters are
observed. After reading token t, what is hidden is

* θ, the intention of the current message, and
* n, how many letters the current message has so far (n = 0: token t was the
  delimiter that ended the message of intention θ).

Everything else the next token depends on, the previous letter, is observed. So the
oracle keeps the **filtered distribution** α_t(θ, n) = q(θ_t = θ, n_t = n | x_{≤t}), a
K × (L + 1) table per sequence, and updates it token by token (the forward recursion of
an HMM, normalised at every step; **Underflow** below says when that is not enough):

    letter c after letter ℓ:  α'(θ, n+1) ∝ α(θ, n) (1 − h[n]) A_θ[ℓ, c]          (same message)
    letter c after a delimiter: α'(θ', 1) ∝ Σ_θ α(θ, 0) T[θ, θ'] s_θ'[c]           (new message)
    delimiter:                α'(θ, 0)   ∝ Σ_{n≥1} α(θ, n) h[n]                      (message ends)

where h[n] = q(length = n | length ≥ n) is the chance that a message stops after n
letters. The normaliser of each step is exactly q(x_t | x_{<t}); their logs add up to
log q(x) (the chain rule).

Two starts:

* ``phase="start"``: the prompt begins at a message boundary. Then n is observed too
  (count the letters since the last delimiter), only θ is hidden, and the filter is a
  K-vector per sequence: the fast path.
* ``phase="unknown"``: the prompt is a window cut from anywhere in the stream. The
  state before the first token is the stationary distribution of (θ, n, previous
  letter): π(θ, n) = μ(θ) q(length ≥ n) / (E[length] + 1), with the previous letter
  distributed as s_θ A_θ^{n−1}; so the first letter after state (θ, n) has the
  distribution s_θ A_θ^n.

All numbers are float64 and batched over sequences: the only Python loop is over time.

**Underflow.** The normalised recursion is exact only while every positive entry of the
filter stays a normal float64 number. When one intention explains the prompt far better
than another (a likelihood ratio beyond ~1e308, e.g. a long message), the smaller
posterior would round to 0, and a later token that only that intention can write would
wrongly read as impossible. So the fast pass also marks every sequence whose filter
holds a positive entry p below a floor f, chosen so that p ≥ f implies p × (any one-step
factor of the language) ≥ 1e-300 (see ``UNDERFLOW_MARGIN``); only those sequences are run
again by the same recursion in log space, where log q(θ | x_{≤t}), log q(x_t | x_{<t})
and log q(x) never underflow. (Reported probabilities, the posteriors and predictives,
are float64 numbers: a true value below ~5e-324 reads as 0; their logs do not.)

The backend follows the tokens: NumPy arrays give NumPy results, CuPy arrays give CuPy
results (the float recursion runs on the GPU; the integer bookkeeping of the prompt,
checked on the host before any indexing, is done there and moved once).
"""
from __future__ import annotations

import math
import sys
from typing import NamedTuple, Optional

import numpy as np

from tinylatent.backend import check_token_ids, to_host, xp_of
from tinylatent.language import DELIMITER_ID, Language

PHASES = ("start", "unknown")


def check_phase(phase) -> None:
    """Refuse a phase that is not one of :data:`PHASES`."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")


# A filtered probability p with p · (smallest positive one-step factor) ≥ UNDERFLOW_MARGIN
# multiplies into a normal float64 number (≥ 2.2e-308, full relative precision), so the
# normalised recursion cannot round it to 0. Sequences whose filter goes below that floor
# are re-run in log space.
UNDERFLOW_MARGIN = 1e-300


def _smallest_positive(*arrays) -> float:
    """The smallest positive entry of the arrays (1.0 if none is positive)."""
    smallest = 1.0
    for array in arrays:
        array = np.asarray(array, dtype=np.float64)
        positive = array[array > 0.0]
        if positive.size:
            smallest = min(smallest, float(positive.min()))
    return smallest


def _underflow_floor(*smallest_factors: float) -> float:
    """UNDERFLOW_MARGIN / (the product of ``smallest_factors``), the floor below which a filtered
    probability is at risk. Computed with logs: the product of a few tiny factors (a language
    with entries near 1e-170, or subnormal ones) can itself underflow to 0; the floor is then
    inf, and every sequence is run in log space, which is exact at any size."""
    log_floor = math.log(UNDERFLOW_MARGIN) - sum(math.log(factor) for factor in smallest_factors)
    return math.exp(log_floor) if log_floor < math.log(sys.float_info.max) else math.inf


def logsumexp(xp, values, axis):
    """log Σ exp(values) along ``axis`` (max-shifted; −inf where every term is −inf)."""
    shift = values.max(axis=axis, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, 0.0)
    with np.errstate(divide="ignore"):
        return (xp.log(xp.exp(values - shift).sum(axis=axis, keepdims=True)) + shift).squeeze(axis)


def _log(xp, values):
    """log of probabilities, log 0 = −inf without a warning."""
    with np.errstate(divide="ignore"):
        return xp.log(values)


def posterior_error(posterior, true_intentions):
    """ε = 1 − q(θ* | ·), computed as Σ_{θ ≠ θ*} q(θ | ·) so that it stays accurate when tiny.

    posterior (B, K), true_intentions θ* (B,) integer ids in [0, K) -> (B,); on the posterior's backend.
    The same sum works for any non-negative (B, K) table, e.g. the joint q(x, θ): the mass off column θ*.
    """
    xp = xp_of(posterior)
    posterior = xp.asarray(posterior, dtype=xp.float64)
    true_intentions = xp.asarray(true_intentions)                  # on the posterior's backend
    if posterior.ndim != 2 or true_intentions.shape != posterior.shape[:1]:
        raise ValueError(f"posterior_error needs a (B, K) posterior and (B,) true intentions; got shapes "
                         f"{posterior.shape} and {true_intentions.shape}")
    check_token_ids(true_intentions, posterior.shape[1], what="true intentions")
    is_true = xp.arange(posterior.shape[-1])[None, :] == true_intentions[:, None]
    return xp.where(is_true, 0.0, posterior).sum(axis=-1)


class FilterResult(NamedTuple):
    """What the oracle knows about a batch of B sequences of T tokens.

    Fields (V + 1 = vocabulary size, K = intentions):
        log_marginal: (B,) log q(x_{1:T}); −inf for an impossible sequence.
        token_log_probs: (B, T) log q(x_t | x_{<t}); their sum is ``log_marginal``.
        posterior: (B, T, K) q(θ_t | x_{≤t}), the intention of the message that token t
            belongs to (a delimiter belongs to the message it ends).
        predictive: (B, T, V + 1) q(x_{t+1} | x_{≤t}), the Bayes next-token
            distribution after each prefix (None if not asked for).
        known_intention_predictive: (B, T, V + 1) q(x_{t+1} | x_{≤t}, θ_{t+1} = θ) for the
            intention θ given per sequence, where θ_{t+1} is the intention of the message
            that token t + 1 belongs to (None if no intention was given).
        first_impossible: (B,) int64, the first t with q(x_t | x_{<t}) = 0, or −1 when the
            whole sequence is possible. From that token on, ``token_log_probs`` is −inf
            and the posteriors and predictives keep the last well-defined values.
    """

    log_marginal: np.ndarray
    token_log_probs: np.ndarray
    posterior: np.ndarray
    predictive: Optional[np.ndarray]
    known_intention_predictive: Optional[np.ndarray]
    first_impossible: np.ndarray

    @property
    def possible(self) -> np.ndarray:
        """(B,) bool: q(x) > 0."""
        return self.first_impossible < 0


class Oracle:
    """Exact Bayesian inference for one :class:`~tinylatent.language.Language`.

    Example::

        oracle = Oracle(paper_language(0.02))
        result = oracle.filter(tokens, phase="unknown")   # tokens: (B, T) int ids
        result.posterior[:, -1]                           # q(θ | whole prompt), (B, K)
        result.predictive[:, -1]                          # q(next token | prompt), (B, V+1)
    """

    def __init__(self, language: Language):
        self.language = language
        max_length = language.max_length
        hazard = language.stop_probs()  # h[n], n = 0..L
        # Pad with h = 1 beyond L (a message can never have more than L letters), so that
        # indexing by a letter count n > L, which only impossible prompts reach, is safe.
        self.stop = np.concatenate([hazard, np.ones(2, dtype=np.float64)])            # (L + 3,)
        self.go_on = 1.0 - self.stop                                                   # (L + 3,)
        self.go_on[0] = 0.0  # n = 0 is "between messages": no letter of this message follows
        self.transition = language.transition                                          # (K, K)
        self.first_letter = language.first_letter                                      # (K, V)
        self.letter_transition = language.letter_transition                            # (K, V, V)
        self.max_length = max_length
        # The stationary start (phase="unknown").
        stationary = language.stationary_intentions()                                  # μ, (K,)
        at_least = np.cumsum(language.length_probs[::-1])[::-1][: max_length + 1]      # q(len ≥ n)
        tokens_per_message = language.mean_length + 1.0
        start_state = np.zeros((language.n_intentions, max_length + 1), dtype=np.float64)
        start_state[:, 1:] = stationary[:, None] * at_least[None, 1:] / tokens_per_message
        start_state[:, 0] = stationary / tokens_per_message
        self.stationary_state = start_state                                            # π(θ, n), (K, L + 1)
        # Next-letter rows from the stationary start: s_θ A_θ^n, for n = 0..L.
        rows = np.zeros((language.n_intentions, max_length + 1, language.n_letters), dtype=np.float64)
        current = language.first_letter.copy()                                         # s_θ A_θ^0
        for n in range(max_length + 1):
            rows[:, n] = current if n > 0 else 0.0
            current = np.einsum("kv,kvw->kw", current, language.letter_transition)
        self.stationary_next_letter = rows                                             # (K, L + 1, V)
        # For the known-phase filter: the likelihood of token c after token p under each θ,
        # ignoring the length rule (applied separately): s_θ[c] after a delimiter (p = 0, which
        # also stands for "before the first token"), A_θ[p, c] after a letter, 1 for a delimiter
        # after a letter, 0 for a delimiter after a delimiter. Row p·(V + 1) + c, shape ((V+1)², K).
        vocab = language.vocab_size
        pair = np.zeros((vocab, vocab, language.n_intentions), dtype=np.float64)
        pair[0, 1:] = language.first_letter.T
        pair[1:, 1:] = language.letter_transition.transpose(1, 2, 0)
        pair[1:, 0] = 1.0
        self.pair_likelihood = pair.reshape(vocab * vocab, language.n_intentions)
        # The length rule's factor for a token after n letters: (1 − h[n]) for a letter that
        # continues a message (1 for one that opens a message, n = 0); h[n] for a delimiter.
        self.letter_length_factor = np.concatenate([[1.0], self.go_on[1:]])            # (L + 3,)
        # both in one table, for one gather: [letter factors | delimiter factors h[n]]
        self.length_factor_by_kind = np.concatenate([self.letter_length_factor, self.stop])  # (2 (L + 3),)
        # Underflow floors (module docstring): a filtered probability at or above the floor,
        # times the smallest positive factor of one step, stays ≥ UNDERFLOW_MARGIN.
        #   phase "start": q(x_t | x_{<t}, θ) = pair likelihood × length factor; a message that
        #   opens mixes by T first.
        self.known_phase_floor = _underflow_floor(
            _smallest_positive(self.pair_likelihood), _smallest_positive(self.length_factor_by_kind),
            _smallest_positive(self.transition))
        #   phase "unknown": (1 − h[n]) A_θ[ℓ, c] (or s_θ A_θ^n[c] for token 1), T[θ, θ'] s_θ'[c], h[n]
        #   (the product of all the smallest factors: a floor at least as high as any one step
        #   needs, so a cautious one).
        self.unknown_phase_floor = _underflow_floor(
            _smallest_positive(self.go_on[: max_length + 1]), _smallest_positive(self.stop[: max_length + 1]),
            _smallest_positive(self.letter_transition, self.stationary_next_letter),
            _smallest_positive(self.transition), _smallest_positive(self.first_letter))
        self._device_copies = {}

    _TABLES = ("stop", "go_on", "transition", "first_letter", "letter_transition", "stationary_state",
               "stationary_next_letter", "pair_likelihood", "letter_length_factor")

    def _tables(self, xp):
        """The float64 tables above on the backend ``xp`` (copied to a GPU once, then cached)."""
        if xp is np:
            return self
        key = xp.__name__
        if key not in self._device_copies:
            copies = type("DeviceTables", (), {})()
            for name in self._TABLES:
                setattr(copies, name, xp.asarray(getattr(self, name), dtype=xp.float64))
            self._device_copies[key] = copies
        return self._device_copies[key]

    # ------------------------------------------------------------------------------------
    def _check(self, tokens, prior, known_intention, phase):
        check_phase(phase)
        xp = xp_of(tokens)
        tokens = xp.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be a (T,) or (B, T) array of token ids; got shape {tokens.shape}")
        if tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise ValueError("the prompt is empty: give at least one token")
        tokens = self.language.check_tokens(to_host(tokens), "prompt")  # on the host, before any indexing
        if prior is not None:
            if phase != "start":
                raise ValueError("a prior over the first intention applies to phase='start' only")
            prior = self.language.check_prior(to_host(prior))
        if known_intention is not None:
            known_intention = self._check_intentions(known_intention, tokens.shape[0], "known_intention")
        return xp, tokens, prior, known_intention

    def _check_intentions(self, intentions, batch: int, name: str) -> np.ndarray:
        """One intention id per sequence (or one for all), each checked by the language: a (B,) int64 array."""
        values = self.language.check_intentions(to_host(intentions), name)
        if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != batch):
            raise ValueError(f"{name} must be one intention or one per sequence ({batch}); got shape {values.shape}")
        return np.broadcast_to(values, (batch,)).copy()

    def filter(self, tokens, phase: str = "start", prior=None, predictive: bool = True,
               known_intention=None) -> FilterResult:
        """Run the exact forward filter over a batch of sequences.

        Args:
            tokens: (B, T) or (T,) token ids.
            phase: ``"start"`` (each sequence starts a message) or ``"unknown"`` (a window
                from anywhere in the stream, started from the stationary distribution).
            prior: q(θ_1) for the first message, phase "start" only: K non-negative numbers
                summing to 1 within 1e-9 (used as given, not renormalised); default the
                language's ``initial``.
            predictive: also return q(x_{t+1} | x_{≤t}) at every position.
            known_intention: an integer intention in [0, K) (or one per sequence) for the
                known-intention predictive q(x_{t+1} | x_{≤t}, θ).
        """
        xp, tokens, prior, known_intention = self._check(tokens, prior, known_intention, phase)
        if phase == "start":
            return self._filter_known_phase(xp, tokens, self.language.initial if prior is None else prior,
                                            predictive, known_intention)
        return self._filter_unknown_phase(xp, tokens, predictive, known_intention)

    # -- phase known: the hidden state is θ alone --------------------------------------------
    def _filter_known_phase(self, xp, tokens, prior, want_predictive, known_intention) -> FilterResult:
        """With the phase known, n (letters so far) is observed, so each token's likelihood
        under each θ is gathered for the whole batch before the recursion, and the recursion
        itself is a multiplication and a normalisation per step.

        ``tokens`` is the validated host copy; the float work runs on ``xp``.
        """
        tables = self._tables(xp)
        batch, length = tokens.shape
        n_intentions, vocab = self.language.n_intentions, self.language.vocab_size
        # Integer bookkeeping on the host, time-major (T, B) so that each step reads one slice
        # (int32: half the memory traffic of int64, and ids and counts are small).
        token = np.ascontiguousarray(tokens.T, dtype=np.int32)
        previous = np.concatenate([np.zeros((1, batch), np.int32), token[:-1]])        # a delimiter before token 1
        is_delimiter = token == DELIMITER_ID
        opens_message = previous == DELIMITER_ID                                        # (T, B)
        # n_before[t, b]: letters of the current message before token t (0 = token t opens one),
        # and length_factor[t, b], the length rule's factor: (1 − h[n]) for a letter, h[n] for a delimiter
        positions = np.arange(length, dtype=np.int32)[:, None]
        any_delimiter = is_delimiter.any(axis=1)                                        # (T,) host flags
        if any_delimiter.any():
            last_delimiter = np.maximum.accumulate(np.where(is_delimiter, positions, -1), axis=0)
            n_before = positions - 1 - np.concatenate([np.full((1, batch), -1, np.int32), last_delimiter[:-1]])
            np.minimum(n_before, self.max_length + 1, out=n_before)  # past L letters every token is impossible anyway
            length_factor = self.length_factor_by_kind[n_before + is_delimiter * self.stop.shape[0]]
        else:  # one message throughout: n_before[t] = t and the factor depend on t alone
            n_before = np.broadcast_to(np.minimum(positions, self.max_length + 1), (length, batch))
            length_factor = np.broadcast_to(self.letter_length_factor[n_before[:, :1]], (length, batch))
        # likelihood[t, b, θ] = q(x_t | x_{<t}, θ), θ the intention of token t's message:
        #   a letter opening a message: s_θ[c]; a letter inside one: (1 − h[n]) A_θ[ℓ, c];
        #   a delimiter: h[n] (the same for every θ; 0 right after another delimiter).
        likelihood = xp.take(tables.pair_likelihood, xp.asarray(previous * vocab + token), axis=0)  # (T, B, K)
        partial = np.nonzero(length_factor != 1.0)                                      # sparse: message ends
        if len(partial[0]):
            rows_t, rows_b = xp.asarray(partial[0]), xp.asarray(partial[1])
            likelihood[rows_t, rows_b] *= xp.asarray(length_factor[partial])[:, None]
        any_opens = opens_message.any(axis=1)                                           # (T,) host flags
        opens_on_device, delimiter_on_device = xp.asarray(opens_message), xp.asarray(is_delimiter)

        prior = xp.asarray(prior, dtype=xp.float64)
        filtered = xp.tile(prior, (batch, 1))       # q(θ of the current message | x_{≤t}); the prior before token 1
        upcoming = filtered.copy()                  # q(θ of the next message | x_{≤t}), used when a message opens
        token_probs = xp.empty((length, batch), dtype=xp.float64)                      # q(x_t | x_{<t})
        posterior = xp.empty((length, batch, n_intentions), dtype=xp.float64)          # time-major while filling
        ones = xp.ones((n_intentions, 1), dtype=xp.float64)  # a column: CuPy 13's matmul refuses a 1-D out
        with np.errstate(invalid="ignore"):  # 0/0 in a row that became impossible: fixed up below
            for t in range(length):
                current = xp.where(opens_on_device[t][:, None], upcoming, filtered) if any_opens[t] else filtered
                joint = current * likelihood[t]                                         # q(θ, x_t | x_{<t})
                xp.matmul(joint, ones, out=token_probs[t][:, None])                     # Σ_θ, as one BLAS call
                filtered = xp.divide(joint, token_probs[t][:, None], out=posterior[t])  # q(θ | x_{≤t})
                if any_delimiter[t]:  # a message ended: its intention moves on by T
                    upcoming = xp.where(delimiter_on_device[t][:, None], filtered @ tables.transition, upcoming)
        token_log_probs = _log(xp, token_probs)                                        # (T, B); NaN after a 0
        # Sequences whose filter went below the underflow floor: run them again in log space.
        at_risk = self._below_floor(xp, posterior, self.known_phase_floor)
        if _smallest_positive(to_host(prior)) < self.known_phase_floor:
            at_risk[:] = True
        rows = np.flatnonzero(to_host(at_risk))
        if rows.size:
            rows_on_device = xp.asarray(rows)
            log_posterior, row_token_log_probs = self._log_filter_known_phase(
                xp, likelihood[:, rows_on_device], opens_message[:, rows], is_delimiter[:, rows], prior)
            posterior[:, rows_on_device] = xp.exp(log_posterior)
            token_log_probs[:, rows_on_device] = row_token_log_probs
        outputs = _Outputs(xp, batch, length, n_intentions, vocab, want_predictive, known_intention is not None,
                           want_posterior=False)
        outputs.record_all_tokens(token_log_probs)
        first_impossible = to_host(outputs.first_impossible)
        if (first_impossible >= 0).any():
            # A row that became impossible at token f keeps its posterior after token f − 1
            # (the prior if f = 0) from token f on, instead of the 0/0 of an impossible event.
            f = xp.asarray(np.where(first_impossible >= 0, first_impossible, length))   # (B,)
            steps = xp.arange(length)[:, None]                                          # (T, 1)
            source = xp.where(steps >= f[None, :], f[None, :] - 1, steps)               # (T, B)
            posterior = xp.take_along_axis(posterior, xp.maximum(source, 0)[..., None], axis=0)
            posterior = xp.where((source < 0)[..., None], prior, posterior)
        outputs.posterior = posterior.transpose(1, 0, 2)                                # (B, T, K), a view
        if want_predictive or known_intention is not None:
            self._known_phase_predictives(xp, outputs, tokens, np.maximum(tokens - 1, 0), is_delimiter.T,
                                          n_before.T.astype(np.int64), want_predictive, known_intention)
        return outputs.result()

    @staticmethod
    def _below_floor(xp, probabilities, floor):
        """(B,) bool: does sequence b hold an entry 0 < p < floor anywhere in ``probabilities`` (T, B, K)?

        A cheap count over the whole array first (entries below the floor vs exact zeros);
        the per-sequence test only when the counts differ.
        """
        batch = probabilities.shape[1]
        below = probabilities < floor                                                   # NaN (after a 0): False
        if int(xp.count_nonzero(below)) == int(xp.count_nonzero(probabilities == 0.0)):
            return np.zeros(batch, dtype=bool)
        return to_host((below & (probabilities > 0.0)).any(axis=(0, 2)))

    def _log_filter_known_phase(self, xp, likelihood, opens_message, is_delimiter, prior):
        """The phase-known recursion in log space, for the few sequences near underflow.

        With λ_t(θ) = q(x_t | x_{<t}, θ) (``likelihood``, time-major (T, R, K), R the sequences
        run again) and a_t(θ) = log q(θ | x_{≤t}):

            log q(x_t | x_{<t}) = log Σ_θ exp(c_t(θ) + log λ_t(θ)),   a_t = c_t + log λ_t − log q(x_t | x_{<t})

        where c_t = a_{t−1} inside a message and, when token t opens one, c_t(θ') =
        log Σ_θ exp(a_s(θ) + log T[θ, θ']) with s the delimiter before it; for the first token
        c_1 = log prior itself (the prior is over the first message's intention: no T step).
        Returns (log posterior (T, R, K), log q(x_t | x_{<t}) (T, R)); NaN after an impossible token.
        """
        tables = self._tables(xp)
        length, n_rows, _ = likelihood.shape
        log_likelihood, log_transition = _log(xp, likelihood), _log(xp, tables.transition)
        log_filtered = xp.tile(_log(xp, xp.asarray(prior, dtype=xp.float64)), (n_rows, 1))   # (R, K)
        log_upcoming = log_filtered
        log_posterior = xp.empty_like(log_likelihood)
        token_log_probs = xp.empty((length, n_rows), dtype=xp.float64)
        opens, ends = xp.asarray(opens_message), xp.asarray(is_delimiter)
        any_opens, any_ends = opens_message.any(axis=1), is_delimiter.any(axis=1)
        with np.errstate(invalid="ignore"):  # −inf − (−inf) in a sequence that became impossible
            for t in range(length):
                log_current = xp.where(opens[t][:, None], log_upcoming, log_filtered) if any_opens[t] else log_filtered
                log_joint = log_current + log_likelihood[t]                             # log q(θ, x_t | x_{<t})
                token_log_probs[t] = logsumexp(xp, log_joint, axis=1)
                log_filtered = log_posterior[t] = log_joint - token_log_probs[t][:, None]
                if any_ends[t]:
                    mixed = logsumexp(xp, log_filtered[:, :, None] + log_transition[None], axis=1)
                    log_upcoming = xp.where(ends[t][:, None], mixed, log_upcoming)
        return log_posterior, token_log_probs

    def _known_phase_predictives(self, xp, outputs, tokens, letter, is_delimiter, n_before,
                                 want_predictive, known_intention) -> None:
        """q(x_{t+1} | x_{≤t}) and q(x_{t+1} | x_{≤t}, θ) from the filtered posteriors, all t at once."""
        tables = self._tables(xp)
        batch, length = tokens.shape
        first_impossible = to_host(outputs.first_impossible)
        frozen = (first_impossible >= 0)[:, None] & (np.arange(length)[None, :] >= first_impossible[:, None])
        # the letter count after token t, and the last letter (frozen where the prompt became impossible)
        n_after = np.where(is_delimiter, 0, n_before + 1)                               # (B, T)
        last_letter = letter
        if frozen.any():
            keep = np.where(frozen, -1, np.arange(length)[None, :])
            source = np.maximum.accumulate(keep, axis=1)                                # last good position
            n_after = np.where(source >= 0, np.take_along_axis(n_after, np.maximum(source, 0), axis=1), 0)
            last_letter = np.take_along_axis(letter, np.maximum(source, 0), axis=1)
        at_boundary = xp.asarray(n_after == 0)                                          # (B, T)
        stop = tables.stop[xp.asarray(n_after)] * ~at_boundary                          # (B, T)
        go_on = tables.go_on[xp.asarray(n_after)]                                       # (B, T); 0 at a boundary
        next_rows = tables.letter_transition[:, xp.asarray(last_letter), :]             # (K, B, T, V)
        if want_predictive:
            # the next message's intention: posterior @ T after a delimiter
            upcoming = outputs.posterior @ tables.transition                            # (B, T, K)
            letters = (xp.einsum("btk,kbtv->btv", outputs.posterior * go_on[..., None], next_rows)
                       + (upcoming * at_boundary[..., None]) @ tables.first_letter)
            outputs.predictive[..., DELIMITER_ID] = stop
            outputs.predictive[..., 1:] = letters
        if known_intention is not None:
            theta = xp.asarray(known_intention)[:, None]                                # (B, 1)
            own_rows = next_rows[theta, xp.arange(batch)[:, None], xp.arange(length)[None, :]]  # (B, T, V)
            outputs.known[..., DELIMITER_ID] = stop
            outputs.known[..., 1:] = xp.where(at_boundary[..., None], tables.first_letter[theta],
                                              go_on[..., None] * own_rows)

    # -- phase unknown: the hidden state is (θ, n) ------------------------------------------
    def _filter_unknown_phase(self, xp, tokens, want_predictive, known_intention) -> FilterResult:
        """The (θ, n) filter: a normalised pass for every sequence, then a log-space pass for
        the sequences whose filter went below the underflow floor (module docstring)."""
        batch, length = tokens.shape
        n_intentions, vocab = self.language.n_intentions, self.language.vocab_size
        outputs = _Outputs(xp, batch, length, n_intentions, vocab, want_predictive, known_intention is not None)
        at_risk = to_host(self._unknown_phase_pass(xp, xp.asarray(tokens), known_intention, outputs, log_space=False))
        if _smallest_positive(self.stationary_state) < self.unknown_phase_floor:
            at_risk[:] = True
        rows = np.flatnonzero(at_risk)
        if rows.size:
            again = _Outputs(xp, rows.size, length, n_intentions, vocab, want_predictive, known_intention is not None)
            self._unknown_phase_pass(xp, xp.asarray(tokens[rows]),
                                     None if known_intention is None else known_intention[rows], again, log_space=True)
            outputs.replace_rows(xp.asarray(rows), again)
        return outputs.result()

    def _unknown_phase_pass(self, xp, tokens, known_intention, outputs, log_space: bool):
        """One pass of the (θ, n) recursion over every token, filling ``outputs``.

        α_t(θ, n) = q(θ, n | x_{≤t}) is kept normalised (``log_space=False``) or as log α_t
        (``log_space=True``: sums become log-sum-exps, products sums, so nothing underflows).
        Returns (B,) bool, the sequences whose α went below ``unknown_phase_floor`` (all
        False in log space).
        """
        tables = self._tables(xp)
        batch, length = tokens.shape
        n_states = self.max_length + 1
        rows = xp.arange(batch)
        stop, go_on = tables.stop[:n_states], tables.go_on[:n_states]            # (L + 1,)
        theta = None if known_intention is None else xp.asarray(known_intention)
        # alpha[b, θ, n] = q(θ, n | x_{≤t}); n = 0 means "token t ended a message of θ".
        alpha = xp.tile(tables.stationary_state, (batch, 1, 1))
        if log_space:
            log_alpha = _log(xp, alpha)
            log_stop, log_go_on, log_transition = _log(xp, stop), _log(xp, go_on), _log(xp, tables.transition)
            log_first_letter, log_letter_transition = _log(xp, tables.first_letter), _log(xp, tables.letter_transition)
            log_stationary_next_letter = _log(xp, tables.stationary_next_letter)
        at_risk = xp.zeros(batch, dtype=bool)
        previous_letter = None                                                  # unknown before token 1
        for t in range(length):
            token = tokens[:, t]
            is_delimiter = token == DELIMITER_ID
            letter = xp.maximum(token - 1, 0)
            if not log_space:
                if previous_letter is None:
                    letter_prob = tables.stationary_next_letter[:, :, letter].transpose(2, 0, 1)   # (B, K, L + 1)
                else:
                    letter_prob = tables.letter_transition[:, previous_letter, letter].T[:, :, None]  # (B, K, 1)
                # letter c in the same message: (θ, n) -> (θ, n + 1)
                same_message = xp.zeros_like(alpha)
                same_message[:, :, 1:] = (alpha * go_on * letter_prob)[:, :, :-1]
                # letter c opening a new message: (θ, 0) -> (θ', 1)
                same_message[:, :, 1] += (alpha[:, :, 0] @ tables.transition) * tables.first_letter[:, letter].T
                # the delimiter: (θ, n ≥ 1) -> (θ, 0)
                ends = xp.zeros_like(alpha)
                ends[:, :, 0] = (alpha * stop).sum(axis=2)
                joint = xp.where(is_delimiter[:, None, None], ends, same_message)
                token_prob = joint.sum(axis=(1, 2))
                ok = outputs.record_token(t, _log(xp, token_prob))
                alpha = xp.where(ok[:, None, None], joint / xp.where(ok, token_prob, 1.0)[:, None, None], alpha)
                at_risk |= ((alpha < self.unknown_phase_floor) & (alpha > 0.0)).any(axis=(1, 2))
            else:  # the same three moves on log α
                if previous_letter is None:
                    log_letter_prob = log_stationary_next_letter[:, :, letter].transpose(2, 0, 1)
                else:
                    log_letter_prob = log_letter_transition[:, previous_letter, letter].T[:, :, None]
                same_message = xp.full_like(log_alpha, -xp.inf)
                same_message[:, :, 1:] = (log_alpha + log_go_on + log_letter_prob)[:, :, :-1]
                opening = (logsumexp(xp, log_alpha[:, :, 0, None] + log_transition[None], axis=1)
                           + log_first_letter[:, letter].T)                                     # (B, K)
                same_message[:, :, 1] = xp.logaddexp(same_message[:, :, 1], opening)
                ends = xp.full_like(log_alpha, -xp.inf)
                ends[:, :, 0] = logsumexp(xp, log_alpha + log_stop, axis=2)
                log_joint = xp.where(is_delimiter[:, None, None], ends, same_message)
                token_log_prob = logsumexp(xp, log_joint.reshape(batch, -1), axis=1)
                ok = outputs.record_token(t, token_log_prob)
                with np.errstate(invalid="ignore"):
                    log_alpha = xp.where(ok[:, None, None], log_joint - token_log_prob[:, None, None], log_alpha)
                alpha = xp.exp(log_alpha)                                     # for the outputs (probabilities)
            if previous_letter is None:
                previous_letter = xp.where(ok & ~is_delimiter, letter, 0)
            else:
                previous_letter = xp.where(ok & ~is_delimiter, letter, previous_letter)
            outputs.posterior[:, t] = alpha.sum(axis=2)
            if outputs.predictive is None and outputs.known is None:
                continue
            at_boundary = alpha[:, :, 1:].sum(axis=(1, 2)) == 0.0                 # (B,) token t was a delimiter
            next_rows = tables.letter_transition[:, previous_letter, :]           # (K, B, V)
            upcoming = alpha[:, :, 0] @ tables.transition                         # (B, K)
            if outputs.predictive is not None:
                continue_mass = (alpha * go_on).sum(axis=2)                       # (B, K)
                outputs.predictive[:, t, DELIMITER_ID] = (alpha * stop).sum(axis=(1, 2))
                outputs.predictive[:, t, 1:] = (xp.einsum("bk,kbv->bv", continue_mass, next_rows)
                                                + upcoming @ tables.first_letter)
            if outputs.known is not None:
                # q(n | x_{≤t}, θ): the phase given the intention; where θ has posterior 0 the
                # conditional is undefined and we use the phase marginal q(n | x_{≤t}).
                if log_space:  # rescaled before exp, so a tiny q(θ | x_{≤t}) keeps its phase
                    given = log_alpha[rows, theta, :]                             # (B, L + 1)
                    shift = given.max(axis=1, keepdims=True)
                    phase_given_theta = xp.exp(given - xp.where(xp.isfinite(shift), shift, 0.0))
                else:
                    phase_given_theta = alpha[rows, theta, :]                     # (B, L + 1)
                phase_marginal = alpha.sum(axis=1)
                mass = phase_given_theta.sum(axis=1, keepdims=True)
                phase = xp.where(mass > 0.0, phase_given_theta, phase_marginal)
                phase = phase / phase.sum(axis=1, keepdims=True)
                own_rows = next_rows[theta, rows]                                 # (B, V)
                letters = (phase @ go_on)[:, None] * own_rows
                outputs.known[:, t, DELIMITER_ID] = xp.where(at_boundary, 0.0, phase @ stop)
                outputs.known[:, t, 1:] = xp.where(at_boundary[:, None], tables.first_letter[theta], letters)
        return at_risk

    # -- conveniences --------------------------------------------------------------------
    def log_marginal(self, tokens, phase: str = "start", prior=None) -> np.ndarray:
        """(B,) log q(x) for each sequence (−inf where impossible)."""
        return self.filter(tokens, phase=phase, prior=prior, predictive=False).log_marginal

    def log_likelihoods(self, tokens) -> np.ndarray:
        """(B, K) log q(x | θ_1 = θ) for every intention θ, θ_1 the intention of the first message.

        One filter per θ with the prior one-hot on θ_1 (phase "start"); later messages of x
        follow the outer chain T. Within the first message only θ is possible, so nothing
        can underflow against another intention there (later messages can, and the filter's
        log-space rerun handles them); −inf where θ cannot write x. On the tokens' device.
        """
        xp = xp_of(tokens)
        one_hot = np.eye(self.language.n_intentions, dtype=np.float64)
        return xp.stack([self.log_marginal(tokens, prior=one_hot[theta])
                         for theta in range(self.language.n_intentions)], axis=-1)

    def posterior(self, tokens, phase: str = "start", prior=None) -> np.ndarray:
        """(B, T, K) q(θ_t | x_{≤t}) at every position."""
        return self.filter(tokens, phase=phase, prior=prior, predictive=False).posterior

    def predictive(self, tokens, phase: str = "start", prior=None) -> np.ndarray:
        """(B, T, V + 1) q(x_{t+1} | x_{≤t}) at every position."""
        return self.filter(tokens, phase=phase, prior=prior).predictive

    def known_intention_predictive(self, tokens, intention, phase: str = "start", prior=None) -> np.ndarray:
        """(B, T, V + 1) q(x_{t+1} | x_{≤t}, θ_{t+1} = intention) at every position."""
        return self.filter(tokens, phase=phase, prior=prior, predictive=False,
                           known_intention=intention).known_intention_predictive

    def message_ambiguity(self, messages, true_intentions, prior=None) -> np.ndarray:
        """ε(x) = 1 − q(θ* | x) for whole messages read from their start (docs/claims.md §2).

        Computed as Σ_{θ ≠ θ*} q(θ | x), not as 1 − q(θ* | x): the subtraction would round
        every ε below ~1.1e-16 to 0. The filter's posteriors keep full relative precision
        down to ~1e-308 (module docstring), so ε does too; below that it reads 0 although
        the message may still be ambiguous (decide that on supports, as
        :func:`tinylatent.ambiguity.measure_ambiguity` does).

        Args:
            messages: (B, T) token ids, each row one message (its delimiter may be included).
            true_intentions: θ*, the intention each message was written under: an integer in
                [0, K), or one per message.
            prior: q(θ) of a message; default the language's stationary intentions μ.
        """
        prior = self.language.stationary_intentions() if prior is None else prior
        result = self.filter(messages, phase="start", prior=prior, predictive=False)
        xp = xp_of(result.posterior)
        last = result.posterior[:, -1]                                                   # q(θ | x), (B, K)
        true_intentions = self._check_intentions(true_intentions, last.shape[0], "true_intentions")
        return xp.minimum(posterior_error(last, true_intentions), 1.0)                   # ≤ 1 up to rounding


class _Outputs:
    """The arrays a filter fills in, and the bookkeeping of impossible tokens."""

    def __init__(self, xp, batch, length, n_intentions, vocab, want_predictive, want_known, want_posterior=True):
        self.xp = xp
        self.token_log_probs = xp.zeros((batch, length), dtype=xp.float64)
        self.posterior = xp.zeros((batch, length, n_intentions), dtype=xp.float64) if want_posterior else None
        self.predictive = xp.zeros((batch, length, vocab), dtype=xp.float64) if want_predictive else None
        self.known = xp.zeros((batch, length, vocab), dtype=xp.float64) if want_known else None
        self.first_impossible = xp.full(batch, -1, dtype=xp.int64)

    def record_token(self, t, token_log_prob):
        """Store log q(x_t | x_{<t}); return which sequences are still possible after token t."""
        xp = self.xp
        still_possible = self.first_impossible < 0
        possible = token_log_prob > -xp.inf
        ok = possible & still_possible
        self.first_impossible = xp.where(~possible & still_possible, t, self.first_impossible)
        self.token_log_probs[:, t] = xp.where(ok, token_log_prob, -xp.inf)
        return ok

    def record_all_tokens(self, token_log_probs) -> None:
        """Store every log q(x_t | x_{<t}) at once from time-major (T, B) logs; −inf from the first −inf on."""
        xp = self.xp
        if bool(token_log_probs.min() > -xp.inf):                                      # NaN compares False
            self.first_impossible = xp.full(token_log_probs.shape[1], -1, dtype=xp.int64)
            self.token_log_probs = token_log_probs.T                                   # (B, T), a view
            return
        impossible = token_log_probs == -xp.inf                                         # NaN after a −inf: False
        any_impossible = impossible.any(axis=0)
        self.first_impossible = xp.where(any_impossible, impossible.argmax(axis=0), -1)
        first_bad = xp.where(any_impossible, self.first_impossible, token_log_probs.shape[0])
        after = xp.arange(token_log_probs.shape[0])[:, None] >= first_bad[None, :]
        self.token_log_probs = xp.where(after, -xp.inf, token_log_probs).T

    def replace_rows(self, rows, other: "_Outputs") -> None:
        """Overwrite the sequences ``rows`` with ``other``'s (a pass over those sequences alone)."""
        self.token_log_probs[rows] = other.token_log_probs
        self.first_impossible[rows] = other.first_impossible
        for name in ("posterior", "predictive", "known"):
            if getattr(self, name) is not None:
                getattr(self, name)[rows] = getattr(other, name)

    def result(self) -> FilterResult:
        return FilterResult(
            log_marginal=self.token_log_probs.sum(axis=1),
            token_log_probs=self.token_log_probs,
            posterior=self.posterior,
            predictive=self.predictive,
            known_intention_predictive=self.known,
            first_impossible=self.first_impossible,
        )


def describe_impossible(language: Language, tokens, result: FilterResult, row: int = 0) -> str:
    """One sentence saying why a prompt has probability zero (empty if it is possible)."""
    position = int(to_host(result.first_impossible)[row])
    if position < 0:
        return ""
    tokens = to_host(tokens)
    tokens = tokens[None, :] if tokens.ndim == 1 else tokens
    token = int(tokens[row, position])
    before = language.decode(tokens[row, max(0, position - 5):position])
    return (f"the prompt is impossible under {language.name}: token {language.decode([token])!r} at position "
            f"{position} (after {before!r}) has probability 0")
