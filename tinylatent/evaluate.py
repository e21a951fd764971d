"""Evaluating a model p of a language against the exact oracle q: convergence, understanding, ICL.

q is the true language, p the model, θ an intention, θ* the true one (docs/claims.md §1).
Everything a model is asked goes through a **predictor**: any object with

    log_probs(idx) -> (B, T, V + 1),   log p(x_{t+1} = v | x_{≤t}) for every position t,

so the same code scores a trained :class:`~tinylatent.gpt.GPT` and the two references
here: :class:`OraclePredictor` (q itself, the best possible model) and
:class:`UniformPredictor` (a model that learned nothing). A predictor may have a
``context_length`` (or a ``config.context_length``, as a GPT does): the most tokens it reads.

What is measured (docs/evaluation.md has every definition, docs/claims.md the theorems):

1. **Convergence** (:func:`convergence`). On windows cut at random from the stream, the
   model's cross-entropy CE_p = mean_t −log p(x_{t+1} | x_{≤t}) and the exact Bayes
   cross-entropy CE_q of the same positions (the oracle with ``phase="unknown"``). Since
   the windows are drawn from q, E[CE_p − CE_q] = E_x[KL(q(·|x_{≤t}) ‖ p(·|x_{≤t}))] ≥ 0:
   the **excess** is the model's approximation error, in nats/token. The paper's own
   measure, |log p(x) − log q(x)| / T over a window, is reported beside it.

2. **Language understanding** (:func:`language_understanding`, docs/claims.md §3). A prompt x
   is the first n letters of a message written under θ*, with or without a leading
   delimiter. With a target distribution t over the next token, the model's error splits
   exactly:

       KL(t ‖ p(·|x)) = KL(t ‖ q(·|x)) + E_t[log q(y|x) − log p(y|x)]
          total      =   ambiguity part +     approximation part

   (add and subtract log q(y|x) inside the first sum). The ambiguity part is what a
   perfect model (p = q) still scores; the approximation part is the model's own doing.
   Two targets: ``known_intention`` t = q(·|x, θ*), the Bayes reader told θ* (and no more
   about the phase than the model is told); its ambiguity part obeys docs/claims.md §3,
   ≤ −log(1 − ε(x)). ``paper``: the paper's "true next letter given θ*", the generator's
   own next-token distribution, which also knows that x begins a message.

3. **In-context learning** (:func:`in_context_learning`, docs/claims.md §4, §7, §8). m examples
   under θ*, behind a leading delimiter, the same three numbers for two protocols:
   ``known_intention``: prompt = examples then a query (the first letter of one more
   message under θ*), target q(·|query, θ*), the exact Bayes/known-intention target;
   ``paper``: prompt = the examples alone, target uniform over the first letters of θ*
   and θ* + 1 (the paper's). The paper's target is **not** the Bayes answer of the task:
   it is q(next first letter | the last example's intention is θ*) in the paper's
   circular-chain language (the chain moves on with probability ½), and in any other
   outer chain it is no conditional of q at all; it is computed only for the circular chain.

Every number comes with a 95% confidence interval over the trials
(:func:`tinylatent.theorems.mean_and_ci`). All arithmetic is float64 on the host; the
only Python loops are over prompt lengths, numbers of examples, and chunks of a batch.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Protocol

import numpy as np

from tinylatent import theorems as th
from tinylatent._checks import checked_ids, checked_tokens, is_integer
from tinylatent.backend import to_host
from tinylatent.language import DELIMITER_ID, Language, SeedLike
from tinylatent.oracle import Oracle, check_phase
from tinylatent.train import EVAL_BATCH_SIZE, stream_windows

UNDERSTANDING_LETTERS = 6     # the paper's understanding prompts had 1–6 letters (docs/claims.md §7)
ICL_MAX_EXAMPLES = 8          # m = 0..8 examples; with 22 tokens a message, m = 8 needs 178 tokens
DEFAULT_WINDOWS = 256         # convergence windows: 256 × 192 tokens puts the excess's CI near ±0.002
DEFAULT_PROMPTS = 300         # prompts per prompt length and per m: CIs of about ±0.003 nats on the parts


class Predictor(Protocol):
    """Anything that gives log p(x_{t+1} | x_{≤t}): ``log_probs(idx (B, T)) -> (B, T, V + 1)``."""

    def log_probs(self, idx): ...


class OraclePredictor:
    """q itself as a predictor: log q(x_{t+1} | x_{≤t}) from the exact oracle (log 0 = −inf).

    ``phase="unknown"`` reads each prompt as a window from anywhere in the stream, as a
    model trained on random windows must; ``"start"`` as the beginning of a message.
    """

    context_length = None  # the oracle reads prompts of any length

    def __init__(self, language: Language, phase: str = "unknown"):
        check_phase(phase)   # refused here, not at the first read
        self.language = language
        self.phase = phase
        self.oracle = Oracle(language)

    def log_probs(self, idx) -> np.ndarray:
        predictive = self.oracle.filter(idx, phase=self.phase).predictive
        with np.errstate(divide="ignore"):
            return np.log(predictive)


class UniformPredictor:
    """A model that learned nothing: p(v | x) = 1 / (V + 1) for every token v."""

    context_length = None

    def __init__(self, vocab_size: int):
        if not is_integer(vocab_size) or vocab_size < 1:
            raise ValueError(f"vocab_size (V + 1, the tokens a model scores) must be a positive integer; got {vocab_size!r}")
        self.vocab_size = int(vocab_size)

    def log_probs(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        return np.full(idx.shape + (self.vocab_size,), -math.log(self.vocab_size), dtype=np.float64)


def context_length_of(predictor) -> Optional[int]:
    """The most tokens a predictor reads: its ``context_length``, a GPT's ``config.context_length``, or None."""
    limit = getattr(predictor, "context_length", None)
    if limit is None and getattr(predictor, "config", None) is not None:
        limit = getattr(predictor.config, "context_length", None)
    return None if limit is None else int(limit)


def vocab_size_of(predictor) -> Optional[int]:
    """The tokens a predictor scores, V + 1: its ``vocab_size``, a GPT's ``config.vocab_size``,
    an :class:`OraclePredictor`'s ``language.vocab_size``, or None."""
    for owner in (predictor, getattr(predictor, "config", None), getattr(predictor, "language", None)):
        size = getattr(owner, "vocab_size", None)
        if size is not None:
            return int(size)
    return None


def predictor_log_probs(predictor, tokens, batch_size: int = EVAL_BATCH_SIZE,
                        vocab_size: Optional[int] = None) -> np.ndarray:
    """(B, T, V + 1) float64 log p(x_{t+1} | x_{≤t}) on the host, read ``batch_size`` sequences at a time.

    Args:
        tokens: (B, T) integer token ids, B ≥ 1 and T ≥ 1 (one prompt is (1, T), not (T,)).
        batch_size: a positive integer, the sequences given to the predictor at once.
        vocab_size: V + 1, the tokens of the language being read (default: the predictor's
            own, :func:`vocab_size_of`). Every id must lie in [0, V + 1), and the predictor
            must answer b sequences of T tokens with (b, T, V + 1) log-probabilities.
    Anything else is refused with a ValueError (a float id is not floored, a predictor over
    another vocabulary is not read).
    """
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (sequences read at once); got {batch_size!r}")
    if vocab_size is None:
        vocab_size = vocab_size_of(predictor)
    elif not is_integer(vocab_size) or vocab_size < 1:
        raise ValueError(f"vocab_size (V + 1, the tokens there are) must be a positive integer; got {vocab_size!r}")
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"tokens must be a (B, T) array of token ids with B ≥ 1 and T ≥ 1 (one prompt is (1, T)); "
                         f"got shape {tokens.shape}")
    if vocab_size is None:   # a predictor that does not say its vocabulary: ids are checked to be integers ≥ 0
        tokens = checked_ids(tokens, np.iinfo(np.int64).max, "tokens", "integer token ids",
                             lambda bad: f"tokens: token id {bad} is " + ("negative" if bad < 0 else "beyond int64"))
    else:
        tokens = checked_tokens(tokens, vocab_size, "tokens")
    n_sequences, n_positions = tokens.shape
    limit = context_length_of(predictor)
    if limit is not None and n_positions > limit:
        raise ValueError(f"prompts of {n_positions} tokens do not fit the model's context of {limit} tokens")
    chunks = []
    for start in range(0, n_sequences, batch_size):
        chunk = to_host(predictor.log_probs(tokens[start:start + batch_size])).astype(np.float64)
        scored = vocab_size if vocab_size is not None else (chunks[0].shape[-1] if chunks else None)
        n_read = min(batch_size, n_sequences - start)
        if chunk.ndim != 3 or chunk.shape[:2] != (n_read, n_positions) or scored not in (None, chunk.shape[2]):
            vocabulary = "its vocabulary" if scored is None else f"a vocabulary of V + 1 = {scored} tokens"
            raise ValueError(f"the predictor must give (B, T, V + 1) log-probabilities: for {n_read} sequences of "
                             f"{n_positions} tokens over {vocabulary}, ({n_read}, {n_positions}, "
                             f"{'V + 1' if scored is None else scored}); got shape {chunk.shape}")
        chunks.append(chunk)
    return np.concatenate(chunks)


# ----------------------------------------------------------------------------------------
# Numbers with confidence intervals, and the three-way split of a KL
# ----------------------------------------------------------------------------------------

class Estimate(NamedTuple):
    """A mean over trials and its 95% normal-approximation interval [low, high]."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values) -> "Estimate":
        mean, (low, high) = th.mean_and_ci(np.asarray(values, dtype=np.float64).ravel())
        return cls(mean, low, high)


class KLSplit(NamedTuple):
    """KL(t ‖ p) = KL(t ‖ q) + E_t[log q − log p] for B prompts, each field (B,) in nats.

    total: KL(t ‖ p(·|x)), the model's error against the target t.
    ambiguity: KL(t ‖ q(·|x)), what the exact reader q still scores: the language's part.
    approximation: Σ_y t(y) (log q(y|x) − log p(y|x)), the model's part; it can be
        negative (p can sit closer to t than q does), and is 0 for p = q.
    """

    total: np.ndarray
    ambiguity: np.ndarray
    approximation: np.ndarray

    def summary(self) -> dict:
        return {name: Estimate.of(values)._asdict() for name, values in self._asdict().items()}


def split_kl(target, bayes, model_log_probs) -> KLSplit:
    """The three-way split of KL(target ‖ p) over the last axis (see :class:`KLSplit`).

    Args:
        target: (B, V + 1) t, the distribution the next token should have.
        bayes: (B, V + 1) q(·|x), the exact reader's predictive for the same prompts.
        model_log_probs: (B, V + 1) log p(·|x).
    Terms with t(y) = 0 count 0 (0 · log 0 = 0).
    """
    target = np.asarray(target, dtype=np.float64)
    bayes = np.asarray(bayes, dtype=np.float64)
    model_log_probs = np.asarray(model_log_probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(bayes) - model_log_probs                          # log q(y|x) − log p(y|x)
        approximation = np.where(target > 0.0, target * log_ratio, 0.0).sum(axis=-1)
    return KLSplit(
        total=th.kl_divergence_log(target, model_log_probs),   # not exp(log p): it rounds p < ~1e-308 to 0

        ambiguity=th.kl_divergence(target, bayes),
        approximation=approximation,
    )


# ----------------------------------------------------------------------------------------
# 1. Convergence: cross-entropy against the exact Bayes cross-entropy
# ----------------------------------------------------------------------------------------

class Convergence(NamedTuple):
    """A predictor on B windows of T + 1 tokens: it reads x_{1..T} and is scored on x_{2..T+1}.

    All fields (B,), one number per window, in nats per token:
    model_cross_entropy: −(1/T) Σ_t log p(x_{t+1} | x_{≤t}).
    bayes_cross_entropy: −(1/T) Σ_t log q(x_{t+1} | x_{≤t}), the oracle reading the window
        with ``phase="unknown"`` (it may begin anywhere in a message).
    excess_cross_entropy: model − Bayes; its expectation is the mean KL(q(·|x_{≤t}) ‖ p(·|x_{≤t})).
    paper_abs_log_ratio: |log p(x_{2..T+1} | x_1) − log q(x_{2..T+1} | x_1)| / T, the paper's
        whole-sequence gap; errors of opposite sign cancel in it, so it is no divergence.
    """

    model_cross_entropy: np.ndarray
    bayes_cross_entropy: np.ndarray
    excess_cross_entropy: np.ndarray
    paper_abs_log_ratio: np.ndarray

    def summary(self) -> dict:
        return {name: Estimate.of(values)._asdict() for name, values in self._asdict().items()}


def convergence(predictor, language: Language, windows) -> Convergence:
    """Score ``predictor`` and the exact oracle on the same windows (B, T + 1)."""
    windows = language.check_tokens(windows, "windows")
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (B, T + 1) with T ≥ 1; got shape {windows.shape}")
    targets = windows[:, 1:]                                                           # (B, T) x_{2..T+1}
    model = predictor_log_probs(predictor, windows[:, :-1], vocab_size=language.vocab_size)   # (B, T, V + 1)
    model_token_log_probs = np.take_along_axis(model, targets[..., None], axis=-1)[..., 0]   # (B, T)
    bayes_token_log_probs = Oracle(language).filter(windows, phase="unknown", predictive=False).token_log_probs[:, 1:]
    n_targets = targets.shape[1]
    model_ce = -model_token_log_probs.mean(axis=1)
    bayes_ce = -bayes_token_log_probs.mean(axis=1)
    return Convergence(
        model_cross_entropy=model_ce,
        bayes_cross_entropy=bayes_ce,
        excess_cross_entropy=model_ce - bayes_ce,
        paper_abs_log_ratio=np.abs(model_token_log_probs.sum(axis=1) - bayes_token_log_probs.sum(axis=1)) / n_targets,
    )


# ----------------------------------------------------------------------------------------
# 2. Language understanding: prompts of 1..6 letters, with and without a leading delimiter
# ----------------------------------------------------------------------------------------

def _check_evaluation_tasks(language: Language, tasks: th.ICLTasks, what: str) -> np.ndarray:
    """``tasks.intentions`` as a (B,) int64 array, once the tasks are seen to be well formed
    (not ``theorems._check_tasks``: here every task holds the same M examples, and the messages'
    structure is not required).

    B ≥ 1 tasks: B intentions (each checked by ``language.check_intentions``: a float such
    as 1.7 is refused, not truncated), B example lists of equal length, B queries, every
    example and query a 1-D array of token ids (all checked at once by
    ``language.check_tokens``, on one concatenation: no loop over tokens).
    """
    n_tasks = len(tasks.queries)
    intentions = language.check_intentions(tasks.intentions, f"{what}.intentions")
    if n_tasks == 0 or intentions.shape != (n_tasks,) or len(tasks.examples) != n_tasks:
        raise ValueError(f"{what} must hold B ≥ 1 tasks: a (B,) array of intentions, B example lists and B queries; "
                         f"got intentions of shape {intentions.shape}, {len(tasks.examples)} example lists and "
                         f"{n_tasks} queries")
    if any(len(examples) != tasks.max_examples for examples in tasks.examples):
        raise ValueError(f"{what}: every task must hold the same number of examples; got "
                         f"{sorted({len(examples) for examples in tasks.examples})}")
    sequences = [np.asarray(query) for query in tasks.queries]
    sequences += [np.asarray(message) for examples in tasks.examples for message in examples]
    if any(sequence.ndim != 1 for sequence in sequences):
        raise ValueError(f"{what}: every example and query must be a 1-D array of token ids")
    nonempty = [sequence for sequence in sequences if sequence.size]   # an empty list reads as float64: leave it out
    if nonempty:
        language.check_tokens(np.concatenate(nonempty), f"{what} (examples and queries)")
    return intentions


def sample_understanding_prompts(language: Language, n_prompts: int, n_letters: int = UNDERSTANDING_LETTERS,
                                 seed: SeedLike = 0) -> th.ICLTasks:
    """B prompts: θ* ~ μ (the stationary intentions, as in the stream), then the first n letters of a message under θ*.

    These are ICL tasks with no examples (:func:`tinylatent.theorems.sample_icl_tasks`):
    ``tasks.queries`` holds the letters, ``tasks.intentions`` θ*.
    """
    tasks = th.sample_icl_tasks(language, n_prompts, 0, query_letters=n_letters, seed=seed,
                                prior=language.stationary_intentions())
    if any(len(query) != n_letters for query in tasks.queries):
        raise ValueError(f"{language.name} has messages of fewer than {n_letters} letters; "
                         f"understanding prompts of {n_letters} letters need messages at least that long")
    return tasks


class UnderstandingAtLength(NamedTuple):
    """Prompts of n letters (B of them), each followed by a next token of θ*'s message.

    n_letters: n.
    leading_delimiter: whether the prompt is ``\\n`` + letters (the reader then knows the
        message starts there) or the letters alone (the reader does not know the phase).
    ambiguity_epsilon: (B,) ε(x) = 1 − q(θ* | x), the reader's posterior error.
    kl_bound: (B,) −log(1 − ε(x)), docs/claims.md §3's bound on ``known_intention.ambiguity``.
    known_intention: :class:`KLSplit` with t = q(·|x, θ*), the oracle told θ* and nothing
        about the phase that the prompt does not show.
    paper: :class:`KLSplit` with t = the generator's next token given θ* and the message
        start (the paper's "true next letter given θ*"); equal to ``known_intention``
        when the prompt has a leading delimiter.
    """

    n_letters: int
    leading_delimiter: bool
    ambiguity_epsilon: np.ndarray
    kl_bound: np.ndarray
    known_intention: KLSplit
    paper: KLSplit


class Understanding(NamedTuple):
    """The understanding measurements for one reading of the prompts.

    rows: one :class:`UnderstandingAtLength` per n = 1..N.
    start_phase_difference: with a leading delimiter, max |q(·| \\n x) − q_start(·| x)| over
        every prompt, position and token: the unknown-phase oracle after the delimiter
        against the known-phase oracle (prior μT = μ) on the letters alone. 0 up to rounding;
        None without the delimiter.
    """

    rows: list
    start_phase_difference: Optional[float]


def language_understanding(predictor, language: Language, prompts: th.ICLTasks,
                           leading_delimiter: bool) -> Understanding:
    """Understanding of message beginnings of 1..N letters (docs/claims.md §3), every length in one pass.

    The prediction after the n-th letter of the (B, N) letters is position n − 1 (n with
    the delimiter) of one causal read of the whole prompt, by the model and by the oracle.
    ``prompts`` are B tasks (:func:`sample_understanding_prompts`) whose queries all have
    the same N ≥ 1 letters; bad ids or intentions are refused (:func:`_check_evaluation_tasks`).
    """
    intentions = _check_evaluation_tasks(language, prompts, "prompts")
    lengths = sorted({len(query) for query in prompts.queries})
    if lengths[0] == 0 or len(lengths) > 1:
        raise ValueError(f"prompts.queries must all hold the same number N ≥ 1 of letters; got lengths {lengths}")
    letters = np.stack(prompts.queries).astype(np.int64)                               # (B, N)
    offset = 1 if leading_delimiter else 0
    tokens = np.concatenate([np.full((letters.shape[0], offset), DELIMITER_ID), letters], axis=1)
    oracle = Oracle(language)
    after_delimiter = language.stationary_intentions() @ language.transition          # q(θ of a message after a \n) = μT
    reading = oracle.filter(tokens, phase="unknown", known_intention=intentions)      # what the reader can know
    known_phase = oracle.filter(letters, phase="start", prior=after_delimiter, known_intention=intentions)  # start known too
    model = predictor_log_probs(predictor, tokens, vocab_size=language.vocab_size)    # (B, N + offset, V + 1)
    start_phase_difference = None
    if leading_delimiter:
        start_phase_difference = float(np.abs(reading.predictive[:, offset:] - known_phase.predictive).max())
    rows = []
    for n in range(1, letters.shape[1] + 1):
        position = n - 1 + offset                                                      # the n-th letter
        bayes = reading.predictive[:, position]
        epsilon = th.posterior_error(reading.posterior[:, position], intentions)
        rows.append(UnderstandingAtLength(
            n_letters=n,
            leading_delimiter=leading_delimiter,
            ambiguity_epsilon=epsilon,
            kl_bound=th.kl_bound(epsilon),
            known_intention=split_kl(reading.known_intention_predictive[:, position], bayes, model[:, position]),
            paper=split_kl(known_phase.known_intention_predictive[:, n - 1], bayes, model[:, position]),
        ))
    return Understanding(rows, start_phase_difference)


# ----------------------------------------------------------------------------------------
# 3. In-context learning: m examples under θ*, the paper's target and the Bayes target
# ----------------------------------------------------------------------------------------

def has_circular_chain(language: Language) -> bool:
    """True for the paper's outer chain: T[θ, θ] = T[θ, θ + 1 mod K] = ½ (docs/claims.md §1)."""
    eye = np.eye(language.n_intentions)
    return bool(np.allclose(language.transition, 0.5 * (eye + np.roll(eye, 1, axis=1)), rtol=0.0, atol=1e-12))


def paper_icl_target(language: Language, intentions) -> np.ndarray:
    """(B, V + 1) the paper's ICL target: ½ s_θ* + ½ s_{θ*+1 mod K} on the letters, 0 on the delimiter.

    In the paper's language s_θ is uniform over θ's 3-letter block, so this is uniform over
    the 6 first letters of θ* and θ* + 1 (docs/claims.md §7). It is q(first letter of the next
    message | last example's intention θ*) under the circular chain, not the Bayes answer
    for a task whose next message is under θ*.

    ``intentions``: (B,) integer θ* in 0..K−1 (checked by ``language.check_intentions``).
    """
    intentions = language.check_intentions(intentions)
    if intentions.ndim != 1:
        raise ValueError(f"intentions must be a (B,) array, one θ* per task; got shape {intentions.shape}")
    successors = (intentions + 1) % language.n_intentions
    target = np.zeros((intentions.shape[0], language.vocab_size), dtype=np.float64)
    target[:, 1:] = 0.5 * (language.first_letter[intentions] + language.first_letter[successors])
    return target


class _Reading(NamedTuple):
    """The model and the oracle after the last token of each prompt (``\\n`` + prompt).

    model_log_probs: (B, V + 1) log p(x_{T+1} | prompt).
    bayes: (B, V + 1) q(x_{T+1} | prompt), the oracle with phase "unknown".
    known_intention: (B, V + 1) q(x_{T+1} | prompt, θ_{T+1} = θ*).
    posterior: (B, K) q(θ_T | prompt), the intention of the last token's message.
    longest: the most tokens a prompt had (the leading delimiter included).
    """

    model_log_probs: np.ndarray
    bayes: np.ndarray
    known_intention: np.ndarray
    posterior: np.ndarray
    longest: int


def _read_behind_delimiter(predictor, oracle: Oracle, prompts, intentions) -> _Reading:
    """Read ``\\n`` + each prompt (prompts of any lengths, grouped by length)."""
    n_prompts, vocab = len(prompts), oracle.language.vocab_size
    model_log_probs = np.empty((n_prompts, vocab))
    bayes = np.empty((n_prompts, vocab))
    known = np.empty((n_prompts, vocab))
    posterior = np.empty((n_prompts, oracle.language.n_intentions))
    longest = 0
    for rows, group in th.by_length(prompts):
        tokens = np.concatenate([np.full((len(rows), 1), DELIMITER_ID), group], axis=1)
        result = oracle.filter(tokens, phase="unknown", known_intention=intentions[rows])
        model_log_probs[rows] = predictor_log_probs(predictor, tokens, vocab_size=vocab)[:, -1]
        bayes[rows] = result.predictive[:, -1]
        known[rows] = result.known_intention_predictive[:, -1]
        posterior[rows] = result.posterior[:, -1]
        longest = max(longest, tokens.shape[1])
    return _Reading(model_log_probs, bayes, known, posterior, longest)


class ICLAtExamples(NamedTuple):
    """m examples under θ* (B tasks), read behind a leading delimiter.

    n_examples: m.
    prompt_tokens: the longest prompt, delimiter and query included.
    bayes_error: (B,) ε_m = 1 − q(θ* | \\n x_1..x_m query), the query's intention.
    kl_bound: (B,) −log(1 − ε_m), docs/claims.md §4's bound on ``known_intention.ambiguity``.
    known_intention: :class:`KLSplit`, prompt ``\\n`` x_1..x_m query, target q(·|query, θ*).
    paper: :class:`KLSplit`, prompt ``\\n`` x_1..x_m, target :func:`paper_icl_target`
        (None unless the outer chain is the paper's circular chain).
    paper_off_target: (B,) the model's probability p(x | \\n x_1..x_m) summed over the tokens
        the paper's target gives 0 (None with ``paper``). In the faithful paper language q
        gives them 0 too from m = 1 on, so there this is the model's leak; a leak δ alone
        costs −log(1 − δ) ≈ δ nats of the KL. (With noised first letters, ``paper-noisy-first``,
        q itself puts mass η-order on them, so part of it is not a leak.)
    """

    n_examples: int
    prompt_tokens: int
    bayes_error: np.ndarray
    kl_bound: np.ndarray
    known_intention: KLSplit
    paper: Optional[KLSplit]
    paper_off_target: Optional[np.ndarray]


class InContextLearning(NamedTuple):
    """rows: one :class:`ICLAtExamples` per m that fits; skipped: (m, reason) for the others;
    paper_target: how the paper's target was treated, in words."""

    rows: list
    skipped: list
    paper_target: str


def in_context_learning(predictor, language: Language, tasks: th.ICLTasks,
                        max_examples: Optional[int] = None) -> InContextLearning:
    """ICL with m = 0..M examples (docs/claims.md §4, §7); an m whose prompt exceeds the model's context is skipped.

    Both protocols put a delimiter first, so that the reader knows where the first example
    begins, as it knows where every later one begins. Bad ids or intentions in ``tasks``
    are refused (:func:`_check_evaluation_tasks`); ``max_examples`` is an integer in 0..M.
    """
    intentions = _check_evaluation_tasks(language, tasks, "tasks")
    if max_examples is None:
        max_examples = tasks.max_examples
    elif not is_integer(max_examples) or not 0 <= max_examples <= tasks.max_examples:
        raise ValueError(f"max_examples must be an integer in 0..{tasks.max_examples} (the examples the tasks hold); "
                         f"got {max_examples!r}")
    oracle = Oracle(language)
    circular = has_circular_chain(language)
    paper_target = paper_icl_target(language, intentions) if circular else None
    note = ("uniform over the first letters of θ* and θ*+1: q(next first letter | last example's intention θ*) under "
            "the circular chain, not the Bayes answer of the task" if circular else
            f"not computed: {language.name} does not have the paper's circular chain, so the paper's target "
            "(θ* moves on to θ*+1 with probability ½) is no conditional of q")
    limit = context_length_of(predictor)
    rows, skipped = [], []
    no_examples = [np.zeros(0, dtype=np.int64)] * intentions.shape[0]
    for m in range(max_examples + 1):
        query_prompts = tasks.prompts(m)
        needed = 1 + max(len(prompt) for prompt in query_prompts)
        if limit is not None and needed > limit:
            skipped.append((m, f"the prompt needs {needed} tokens (a delimiter, {m} examples, the query); "
                               f"the model reads at most {limit}"))
            continue
        with_query = _read_behind_delimiter(predictor, oracle, query_prompts, intentions)
        error = th.posterior_error(with_query.posterior, intentions)
        paper = paper_off_target = None
        if circular:
            examples_only = _read_behind_delimiter(predictor, oracle, tasks.example_prompts(m) if m else no_examples,
                                                   intentions)
            paper = split_kl(paper_target, examples_only.bayes, examples_only.model_log_probs)
            paper_off_target = np.where(paper_target == 0.0, np.exp(examples_only.model_log_probs), 0.0).sum(axis=-1)
        rows.append(ICLAtExamples(
            n_examples=m,
            prompt_tokens=with_query.longest,
            bayes_error=error,
            kl_bound=th.kl_bound(error),
            known_intention=split_kl(with_query.known_intention, with_query.bayes, with_query.model_log_probs),
            paper=paper,
            paper_off_target=paper_off_target,
        ))
    return InContextLearning(rows, skipped, note)


# ----------------------------------------------------------------------------------------
# Everything at once, as plain JSON types
# ----------------------------------------------------------------------------------------

def _understanding_dict(understanding: Understanding) -> dict:
    rows = understanding.rows
    per_prompt_mean = {  # the paper's bars average over the lengths: the mean over n per prompt, then a CI over prompts
        target: {part: np.mean([getattr(getattr(row, target), part) for row in rows], axis=0)
                 for part in KLSplit._fields}
        for target in ("known_intention", "paper")
    }
    return {
        "start_phase_difference": understanding.start_phase_difference,
        "rows": [{
            "n_letters": row.n_letters,
            "ambiguity_epsilon": Estimate.of(row.ambiguity_epsilon)._asdict(),
            "kl_bound": Estimate.of(row.kl_bound)._asdict(),
            "kl_bound_holds": bool(np.all(row.known_intention.ambiguity <= row.kl_bound + th.ROUNDING_TOLERANCE)),
            "known_intention": row.known_intention.summary(),
            "paper": row.paper.summary(),
        } for row in rows],
        "mean_over_lengths": {target: {part: Estimate.of(values)._asdict() for part, values in parts.items()}
                              for target, parts in per_prompt_mean.items()},
    }


def _icl_dict(icl: InContextLearning) -> dict:
    return {
        "paper_target": icl.paper_target,
        "rows": [{
            "m": row.n_examples,
            "prompt_tokens": row.prompt_tokens,
            "bayes_error": Estimate.of(row.bayes_error)._asdict(),
            "kl_bound": Estimate.of(row.kl_bound)._asdict(),
            "kl_bound_holds": bool(np.all(row.known_intention.ambiguity <= row.kl_bound + th.ROUNDING_TOLERANCE)),
            "known_intention": row.known_intention.summary(),
            "paper": None if row.paper is None else row.paper.summary(),
            "paper_off_target": None if row.paper_off_target is None else Estimate.of(row.paper_off_target)._asdict(),
        } for row in icl.rows],
        "skipped": [{"m": m, "reason": reason} for m, reason in icl.skipped],
    }


def evaluate(predictor, language: Language, n_windows: int = DEFAULT_WINDOWS, window_length: Optional[int] = None,
             n_prompts: int = DEFAULT_PROMPTS, max_letters: int = UNDERSTANDING_LETTERS,
             max_examples: int = ICL_MAX_EXAMPLES, seed: int = 0) -> dict:
    """Convergence, understanding (with and without a leading delimiter) and ICL, as a JSON-ready dict.

    Args:
        n_windows: convergence windows, each ``window_length`` tokens (an integer ≥ 2; default:
            the predictor's context + 1, or 129 without a context limit).
        n_prompts: prompts per prompt length and per m (the trials of every interval).
        max_letters: understanding prompts of 1..max_letters letters.
        max_examples: ICL with m = 0..max_examples.
        seed: spawns the windows', the understanding prompts' and the ICL tasks' randomness.
    Every number is an :class:`Estimate` dict ``{"mean", "low", "high"}`` (95% interval over trials).
    """
    for name, value, low, reason in [("n_windows", n_windows, 2, " (an interval needs two trials)"),
                                     ("n_prompts", n_prompts, 2, " (an interval needs two trials)"),
                                     ("max_letters", max_letters, 1, ""), ("max_examples", max_examples, 0, ""),
                                     ("seed", seed, 0, "")]:
        if not is_integer(value) or value < low:   # not a bool, not 2.0, not None or inf
            raise ValueError(f"{name} must be an integer ≥ {low}{reason}; got {value!r}")
    if window_length is not None and (not is_integer(window_length) or window_length < 2):
        raise ValueError(f"window_length must be an integer ≥ 2 (a window reads T ≥ 1 tokens and is scored on the "
                         f"next T); got {window_length!r}")
    limit = context_length_of(predictor)
    window_length = (limit if limit is not None else 128) + 1 if window_length is None else int(window_length)
    window_seed, prompt_seed, task_seed = np.random.SeedSequence(seed).spawn(3)
    windows = stream_windows(language, n_windows, window_length, np.random.default_rng(window_seed))
    prompts = sample_understanding_prompts(language, n_prompts, max_letters, np.random.default_rng(prompt_seed))
    tasks = th.sample_icl_tasks(language, n_prompts, max_examples, query_letters=1, seed=np.random.default_rng(task_seed),
                                prior=language.stationary_intentions())
    return {
        "language": language.name,
        "settings": {"windows": int(n_windows), "window_tokens": window_length, "prompts": int(n_prompts),
                     "max_letters": int(max_letters), "max_examples": int(max_examples), "seed": int(seed),
                     "context_length": limit,
                     "interval": "95% normal approximation over trials (windows or prompts)"},
        "convergence": convergence(predictor, language, windows).summary(),
        "understanding": {
            "without_delimiter": _understanding_dict(language_understanding(predictor, language, prompts, False)),
            "with_delimiter": _understanding_dict(language_understanding(predictor, language, prompts, True)),
        },
        "icl": _icl_dict(in_context_learning(predictor, language, tasks, max_examples)),
    }
