"""The exact Bayesian oracle: q(x), q(θ | x) and q(x_{t+1} | x_{≤t}) for any prompt.

A language (:mod:`tinylatent.language`) is a hidden Markov model whose letters are
observed. After reading token t, what is hidden is

* θ, the intention of the current message, and
* n, how many letters the current message has so far (n = 0: token t was the
  delimiter that ended the message of intention θ).

Everything else the next token depends on, the previous letter, is observed. So the
oracle keeps the **filtered distribution** α_t(θ, n) = q(θ_t = θ, n_t = n | x_{≤t}), a
K × (L + 1) table per sequence, and updates it token by token (the forward recursion of
an HMM, normalised at every step so that nothing underflows):

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
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from tinylatent.language import DELIMITER_ID, Language

PHASES = ("start", "unknown")


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

    # ------------------------------------------------------------------------------------
    def _check(self, tokens, prior, known_intention, phase):
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be a (T,) or (B, T) array of token ids; got shape {tokens.shape}")
        if tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise ValueError("the prompt is empty: give at least one token")
        tokens = self.language.check_tokens(tokens, "prompt")
        n_intentions = self.language.n_intentions
        if prior is not None:
            if phase != "start":
                raise ValueError("a prior over the first intention applies to phase='start' only")
            prior = np.asarray(prior, dtype=np.float64)
            if prior.shape != (n_intentions,) or np.any(prior < 0) or not np.isclose(prior.sum(), 1.0):
                raise ValueError(f"prior must be a distribution over the {n_intentions} intentions")
        if known_intention is not None:
            known_intention = np.broadcast_to(np.asarray(known_intention), (tokens.shape[0],)).astype(np.int64)
            if known_intention.min() < 0 or known_intention.max() >= n_intentions:
                raise ValueError(f"known_intention must be in 0..{n_intentions - 1}")
        return tokens, prior, known_intention

    def filter(self, tokens, phase: str = "start", prior=None, predictive: bool = True,
               known_intention=None) -> FilterResult:
        """Run the exact forward filter over a batch of sequences.

        Args:
            tokens: (B, T) or (T,) token ids.
            phase: ``"start"`` (each sequence starts a message) or ``"unknown"`` (a window
                from anywhere in the stream, started from the stationary distribution).
            prior: q(θ_1) for the first message, phase "start" only; default the
                language's ``initial``.
            predictive: also return q(x_{t+1} | x_{≤t}) at every position.
            known_intention: an intention (or one per sequence) for the known-intention
                predictive q(x_{t+1} | x_{≤t}, θ).
        """
        tokens, prior, known_intention = self._check(tokens, prior, known_intention, phase)
        if phase == "start":
            return self._filter_known_phase(tokens, self.language.initial if prior is None else prior,
                                            predictive, known_intention)
        return self._filter_unknown_phase(tokens, predictive, known_intention)

    # -- phase known: the hidden state is θ alone --------------------------------------------
    def _filter_known_phase(self, tokens, prior, want_predictive, known_intention) -> FilterResult:
        batch, length = tokens.shape
        n_intentions, vocab = self.language.n_intentions, self.language.vocab_size
        rows = np.arange(batch)
        filtered = np.zeros((batch, n_intentions), dtype=np.float64)   # q(θ | x_{≤t}), current message
        upcoming = np.tile(prior, (batch, 1))                          # q(θ of the next message | x_{≤t})
        letters_so_far = np.zeros(batch, dtype=np.int64)               # n: 0 = at a boundary
        previous_letter = np.zeros(batch, dtype=np.int64)
        outputs = _Outputs(batch, length, n_intentions, vocab, want_predictive, known_intention is not None)
        for t in range(length):
            token = tokens[:, t]
            is_delimiter = token == DELIMITER_ID
            letter = np.maximum(token - 1, 0)
            at_boundary = letters_so_far == 0
            # Joint q(θ, x_t | x_{<t}) for each case; exactly one applies per sequence.
            same_message = (filtered * self.go_on[letters_so_far][:, None]
                            * self.letter_transition[:, previous_letter, letter].T)
            new_message = upcoming * self.first_letter[:, letter].T
            ends = filtered * self.stop[letters_so_far][:, None] * (~at_boundary)[:, None]
            joint = np.where(is_delimiter[:, None], ends, np.where(at_boundary[:, None], new_message, same_message))
            token_prob = joint.sum(axis=1)
            ok = outputs.record_token(t, token_prob)
            filtered = np.where(ok[:, None], joint / np.where(ok, token_prob, 1.0)[:, None], filtered)
            letters_so_far = np.where(ok, np.where(is_delimiter, 0, letters_so_far + 1), letters_so_far)
            previous_letter = np.where(ok & ~is_delimiter, letter, previous_letter)
            upcoming = np.where((ok & is_delimiter)[:, None], filtered @ self.transition, upcoming)
            at_boundary = letters_so_far == 0
            outputs.posterior[:, t] = filtered
            if want_predictive or known_intention is not None:
                stop = self.stop[letters_so_far] * ~at_boundary                     # (B,)
                go_on = self.go_on[letters_so_far]                                  # (B,), 0 at a boundary
                next_rows = self.letter_transition[:, previous_letter, :]           # (K, B, V)
            if want_predictive:
                continue_mass = filtered * go_on[:, None]                           # (B, K)
                letters = (np.einsum("bk,kbv->bv", continue_mass, next_rows)
                           + (upcoming * at_boundary[:, None]) @ self.first_letter)
                outputs.predictive[:, t, DELIMITER_ID] = (filtered.sum(axis=1)) * stop
                outputs.predictive[:, t, 1:] = letters
            if known_intention is not None:
                theta = known_intention
                own_rows = next_rows[theta, rows]                                   # (B, V)
                letters = np.where(at_boundary[:, None], self.first_letter[theta], go_on[:, None] * own_rows)
                outputs.known[:, t, DELIMITER_ID] = stop
                outputs.known[:, t, 1:] = letters
        return outputs.result()

    # -- phase unknown: the hidden state is (θ, n) ------------------------------------------
    def _filter_unknown_phase(self, tokens, want_predictive, known_intention) -> FilterResult:
        batch, length = tokens.shape
        n_intentions, vocab = self.language.n_intentions, self.language.vocab_size
        n_states = self.max_length + 1
        rows = np.arange(batch)
        counts = np.arange(n_states)
        stop, go_on = self.stop[:n_states], self.go_on[:n_states]              # (L + 1,)
        # alpha[b, θ, n] = q(θ, n | x_{≤t}); n = 0 means "token t ended a message of θ".
        alpha = np.tile(self.stationary_state, (batch, 1, 1))
        previous_letter = None                                                  # unknown before token 1
        outputs = _Outputs(batch, length, n_intentions, vocab, want_predictive, known_intention is not None)
        for t in range(length):
            token = tokens[:, t]
            is_delimiter = token == DELIMITER_ID
            letter = np.maximum(token - 1, 0)
            if previous_letter is None:
                letter_prob = self.stationary_next_letter[:, :, letter].transpose(2, 0, 1)   # (B, K, L + 1)
            else:
                letter_prob = self.letter_transition[:, previous_letter, letter].T[:, :, None]  # (B, K, 1)
            # letter c in the same message: (θ, n) -> (θ, n + 1)
            same_message = np.zeros_like(alpha)
            same_message[:, :, 1:] = (alpha * go_on * letter_prob)[:, :, :-1]
            # letter c opening a new message: (θ, 0) -> (θ', 1)
            same_message[:, :, 1] += (alpha[:, :, 0] @ self.transition) * self.first_letter[:, letter].T
            # the delimiter: (θ, n ≥ 1) -> (θ, 0)
            ends = np.zeros_like(alpha)
            ends[:, :, 0] = (alpha * stop).sum(axis=2)
            joint = np.where(is_delimiter[:, None, None], ends, same_message)
            token_prob = joint.sum(axis=(1, 2))
            ok = outputs.record_token(t, token_prob)
            alpha = np.where(ok[:, None, None], joint / np.where(ok, token_prob, 1.0)[:, None, None], alpha)
            if previous_letter is None:
                previous_letter = np.where(ok & ~is_delimiter, letter, 0)
            else:
                previous_letter = np.where(ok & ~is_delimiter, letter, previous_letter)
            outputs.posterior[:, t] = alpha.sum(axis=2)
            if not (want_predictive or known_intention is not None):
                continue
            at_boundary = alpha[:, :, 1:].sum(axis=(1, 2)) == 0.0                 # (B,) token t was a delimiter
            next_rows = self.letter_transition[:, previous_letter, :]             # (K, B, V)
            upcoming = alpha[:, :, 0] @ self.transition                           # (B, K)
            if want_predictive:
                continue_mass = (alpha * go_on).sum(axis=2)                       # (B, K)
                outputs.predictive[:, t, DELIMITER_ID] = (alpha * stop).sum(axis=(1, 2))
                outputs.predictive[:, t, 1:] = (np.einsum("bk,kbv->bv", continue_mass, next_rows)
                                                + upcoming @ self.first_letter)
            if known_intention is not None:
                theta = known_intention
                # q(n | x_{≤t}, θ): the phase given the intention; where θ has posterior 0 the
                # conditional is undefined and we use the phase marginal q(n | x_{≤t}).
                phase_given_theta = alpha[rows, theta, :]                         # (B, L + 1)
                phase_marginal = alpha.sum(axis=1)
                mass = phase_given_theta.sum(axis=1, keepdims=True)
                phase = np.where(mass > 0.0, phase_given_theta, phase_marginal)
                phase = phase / phase.sum(axis=1, keepdims=True)
                own_rows = next_rows[theta, rows]                                 # (B, V)
                letters = (phase @ go_on)[:, None] * own_rows
                outputs.known[:, t, DELIMITER_ID] = phase @ stop
                outputs.known[:, t, 1:] = np.where(at_boundary[:, None], self.first_letter[theta], letters)
                outputs.known[at_boundary, t, DELIMITER_ID] = 0.0
        return outputs.result()

    # -- conveniences --------------------------------------------------------------------
    def log_marginal(self, tokens, phase: str = "start", prior=None) -> np.ndarray:
        """(B,) log q(x) for each sequence (−inf where impossible)."""
        return self.filter(tokens, phase=phase, prior=prior, predictive=False).log_marginal

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
        """ε(x) = 1 − q(θ* | x) for whole messages read from their start (THEORY.md §2).

        Args:
            messages: (B, T) token ids, each row one message (its delimiter may be included).
            true_intentions: (B,) θ*, the intention each message was written under.
            prior: q(θ) of a message; default the language's stationary intentions μ.
        """
        prior = self.language.stationary_intentions() if prior is None else prior
        result = self.filter(messages, phase="start", prior=prior, predictive=False)
        true_intentions = np.broadcast_to(np.asarray(true_intentions, dtype=np.int64), (result.posterior.shape[0],))
        ambiguity = 1.0 - result.posterior[np.arange(len(true_intentions)), -1, true_intentions]
        return np.clip(ambiguity, 0.0, 1.0)


class _Outputs:
    """The arrays a filter fills in, and the bookkeeping of impossible tokens."""

    def __init__(self, batch, length, n_intentions, vocab, want_predictive, want_known):
        self.token_log_probs = np.zeros((batch, length), dtype=np.float64)
        self.posterior = np.zeros((batch, length, n_intentions), dtype=np.float64)
        self.predictive = np.zeros((batch, length, vocab), dtype=np.float64) if want_predictive else None
        self.known = np.zeros((batch, length, vocab), dtype=np.float64) if want_known else None
        self.first_impossible = np.full(batch, -1, dtype=np.int64)

    def record_token(self, t, token_prob) -> np.ndarray:
        """Store log q(x_t | x_{<t}); return which sequences are still possible after token t."""
        ok = (token_prob > 0.0) & (self.first_impossible < 0)
        newly_impossible = (token_prob <= 0.0) & (self.first_impossible < 0)
        self.first_impossible[newly_impossible] = t
        with np.errstate(divide="ignore"):
            self.token_log_probs[:, t] = np.where(ok, np.log(np.where(ok, token_prob, 1.0)), -np.inf)
        return ok

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
    position = int(result.first_impossible[row])
    if position < 0:
        return ""
    tokens = np.asarray(tokens)
    tokens = tokens[None, :] if tokens.ndim == 1 else tokens
    token = int(tokens[row, position])
    before = language.decode(tokens[row, max(0, position - 5):position])
    return (f"the prompt is impossible under {language.name}: token {language.decode([token])!r} at position "
            f"{position} (after {before!r}) has probability 0")
