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

The backend follows the tokens: NumPy arrays give NumPy results, CuPy arrays give CuPy
results (the float recursion runs on the GPU; the integer bookkeeping of the prompt,
checked on the host before any indexing, is done there and moved once).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from tinylatent.backend import to_host, xp_of
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
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
        xp = xp_of(tokens)
        tokens = xp.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be a (T,) or (B, T) array of token ids; got shape {tokens.shape}")
        if tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise ValueError("the prompt is empty: give at least one token")
        host_tokens = to_host(tokens)
        if not np.issubdtype(host_tokens.dtype, np.integer):
            raise ValueError(f"prompt: token ids must be integers; got dtype {host_tokens.dtype}")
        if host_tokens.min() < 0 or host_tokens.max() >= self.language.vocab_size:
            bad = int(host_tokens.min()) if host_tokens.min() < 0 else int(host_tokens.max())
            raise ValueError(f"prompt: token id {bad} is outside the vocabulary [0, {self.language.vocab_size})")
        tokens = host_tokens.astype(np.int64, copy=False)  # validated on the host, before any indexing
        n_intentions = self.language.n_intentions
        if prior is not None:
            if phase != "start":
                raise ValueError("a prior over the first intention applies to phase='start' only")
            prior = np.asarray(prior, dtype=np.float64)
            if prior.shape != (n_intentions,) or np.any(prior < 0) or not np.isclose(prior.sum(), 1.0):
                raise ValueError(f"prior must be a distribution over the {n_intentions} intentions")
        if known_intention is not None:
            known_intention = np.broadcast_to(to_host(known_intention), (tokens.shape[0],)).astype(np.int64)
            if known_intention.min() < 0 or known_intention.max() >= n_intentions:
                raise ValueError(f"known_intention must be in 0..{n_intentions - 1}")
        return xp, tokens, prior, known_intention

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
        # n_before[t, b]: letters of the current message before token t (0 = token t opens one)
        positions = np.arange(length, dtype=np.int32)[:, None]
        last_delimiter = np.maximum.accumulate(np.where(is_delimiter, positions, -1), axis=0)
        n_before = positions - 1 - np.concatenate([np.full((1, batch), -1, np.int32), last_delimiter[:-1]])
        np.minimum(n_before, self.max_length + 1, out=n_before)  # past L letters every token is impossible anyway
        # likelihood[t, b, θ] = q(x_t | x_{<t}, θ), θ the intention of token t's message:
        #   a letter opening a message: s_θ[c]; a letter inside one: (1 − h[n]) A_θ[ℓ, c];
        #   a delimiter: h[n] (the same for every θ; 0 right after another delimiter).
        likelihood = xp.take(tables.pair_likelihood, xp.asarray(previous * vocab + token), axis=0)  # (T, B, K)
        length_factor = self.length_factor_by_kind[n_before + is_delimiter * self.stop.shape[0]]  # (T, B)
        partial = np.nonzero(length_factor != 1.0)                                      # sparse: message ends
        if len(partial[0]):
            rows_t, rows_b = xp.asarray(partial[0]), xp.asarray(partial[1])
            likelihood[rows_t, rows_b] *= xp.asarray(length_factor[partial])[:, None]
        any_opens, any_delimiter = opens_message.any(axis=1), is_delimiter.any(axis=1)  # (T,) host flags
        opens_on_device, delimiter_on_device = xp.asarray(opens_message), xp.asarray(is_delimiter)

        prior = xp.asarray(prior, dtype=xp.float64)
        filtered = xp.tile(prior, (batch, 1))       # q(θ of the current message | x_{≤t}); the prior before token 1
        upcoming = filtered.copy()                  # q(θ of the next message | x_{≤t}), used when a message opens
        token_probs = xp.empty((length, batch), dtype=xp.float64)                      # q(x_t | x_{<t})
        posterior = xp.empty((length, batch, n_intentions), dtype=xp.float64)          # time-major while filling
        ones = xp.ones(n_intentions, dtype=xp.float64)
        with np.errstate(invalid="ignore"):  # 0/0 in a row that became impossible: fixed up below
            for t in range(length):
                current = xp.where(opens_on_device[t][:, None], upcoming, filtered) if any_opens[t] else filtered
                joint = current * likelihood[t]                                         # q(θ, x_t | x_{<t})
                xp.matmul(joint, ones, out=token_probs[t])                              # Σ_θ, as one BLAS call
                filtered = xp.divide(joint, token_probs[t][:, None], out=posterior[t])  # q(θ | x_{≤t})
                if any_delimiter[t]:  # a message ended: its intention moves on by T
                    upcoming = xp.where(delimiter_on_device[t][:, None], filtered @ tables.transition, upcoming)
        outputs = _Outputs(xp, batch, length, n_intentions, vocab, want_predictive, known_intention is not None,
                           want_posterior=False)
        outputs.record_all_tokens(token_probs)
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
        tables = self._tables(xp)
        batch, length = tokens.shape
        n_intentions, vocab = self.language.n_intentions, self.language.vocab_size
        n_states = self.max_length + 1
        rows = xp.arange(batch)
        stop, go_on = tables.stop[:n_states], tables.go_on[:n_states]            # (L + 1,)
        tokens = xp.asarray(tokens)
        theta = None if known_intention is None else xp.asarray(known_intention)
        # alpha[b, θ, n] = q(θ, n | x_{≤t}); n = 0 means "token t ended a message of θ".
        alpha = xp.tile(tables.stationary_state, (batch, 1, 1))
        previous_letter = None                                                  # unknown before token 1
        outputs = _Outputs(xp, batch, length, n_intentions, vocab, want_predictive, known_intention is not None)
        for t in range(length):
            token = tokens[:, t]
            is_delimiter = token == DELIMITER_ID
            letter = xp.maximum(token - 1, 0)
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
            ok = outputs.record_token(t, token_prob)
            alpha = xp.where(ok[:, None, None], joint / xp.where(ok, token_prob, 1.0)[:, None, None], alpha)
            if previous_letter is None:
                previous_letter = xp.where(ok & ~is_delimiter, letter, 0)
            else:
                previous_letter = xp.where(ok & ~is_delimiter, letter, previous_letter)
            outputs.posterior[:, t] = alpha.sum(axis=2)
            if not (want_predictive or known_intention is not None):
                continue
            at_boundary = alpha[:, :, 1:].sum(axis=(1, 2)) == 0.0                 # (B,) token t was a delimiter
            next_rows = tables.letter_transition[:, previous_letter, :]           # (K, B, V)
            upcoming = alpha[:, :, 0] @ tables.transition                         # (B, K)
            if want_predictive:
                continue_mass = (alpha * go_on).sum(axis=2)                       # (B, K)
                outputs.predictive[:, t, DELIMITER_ID] = (alpha * stop).sum(axis=(1, 2))
                outputs.predictive[:, t, 1:] = (xp.einsum("bk,kbv->bv", continue_mass, next_rows)
                                                + upcoming @ tables.first_letter)
            if known_intention is not None:
                # q(n | x_{≤t}, θ): the phase given the intention; where θ has posterior 0 the
                # conditional is undefined and we use the phase marginal q(n | x_{≤t}).
                phase_given_theta = alpha[rows, theta, :]                         # (B, L + 1)
                phase_marginal = alpha.sum(axis=1)
                mass = phase_given_theta.sum(axis=1, keepdims=True)
                phase = xp.where(mass > 0.0, phase_given_theta, phase_marginal)
                phase = phase / phase.sum(axis=1, keepdims=True)
                own_rows = next_rows[theta, rows]                                 # (B, V)
                letters = (phase @ go_on)[:, None] * own_rows
                outputs.known[:, t, DELIMITER_ID] = xp.where(at_boundary, 0.0, phase @ stop)
                outputs.known[:, t, 1:] = xp.where(at_boundary[:, None], tables.first_letter[theta], letters)
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
        xp = xp_of(result.posterior)
        batch = result.posterior.shape[0]
        true_intentions = xp.asarray(np.broadcast_to(to_host(true_intentions).astype(np.int64), (batch,)))
        ambiguity = 1.0 - result.posterior[xp.arange(batch), -1, true_intentions]
        return xp.clip(ambiguity, 0.0, 1.0)


class _Outputs:
    """The arrays a filter fills in, and the bookkeeping of impossible tokens."""

    def __init__(self, xp, batch, length, n_intentions, vocab, want_predictive, want_known, want_posterior=True):
        self.xp = xp
        self.token_log_probs = xp.zeros((batch, length), dtype=xp.float64)
        self.posterior = xp.zeros((batch, length, n_intentions), dtype=xp.float64) if want_posterior else None
        self.predictive = xp.zeros((batch, length, vocab), dtype=xp.float64) if want_predictive else None
        self.known = xp.zeros((batch, length, vocab), dtype=xp.float64) if want_known else None
        self.first_impossible = xp.full(batch, -1, dtype=xp.int64)

    def record_token(self, t, token_prob):
        """Store log q(x_t | x_{<t}); return which sequences are still possible after token t."""
        xp = self.xp
        still_possible = self.first_impossible < 0
        ok = (token_prob > 0.0) & still_possible
        self.first_impossible = xp.where((token_prob <= 0.0) & still_possible, t, self.first_impossible)
        with np.errstate(divide="ignore"):
            self.token_log_probs[:, t] = xp.where(ok, xp.log(xp.where(ok, token_prob, 1.0)), -xp.inf)
        return ok

    def record_all_tokens(self, token_probs) -> None:
        """Store every log q(x_t | x_{<t}) at once from time-major (T, B) probabilities; −inf from the first zero on."""
        xp = self.xp
        impossible = token_probs <= 0.0                                                 # NaN after a zero: False
        any_impossible = impossible.any(axis=0)
        self.first_impossible = xp.where(any_impossible, impossible.argmax(axis=0), -1)
        if not bool(any_impossible.any()):
            self.token_log_probs = xp.log(token_probs).T                               # (B, T), a view
            return
        first_bad = xp.where(any_impossible, self.first_impossible, token_probs.shape[0])
        after = xp.arange(token_probs.shape[0])[:, None] >= first_bad[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            self.token_log_probs = xp.where(after, -xp.inf, xp.log(xp.where(after, 1.0, token_probs))).T

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
