"""Training a GPT p on a language q from latent intentions, with checkpoints that resume bit for bit.

One training step (nanoGPT's loop, docs/claims.md §7):

1. draw a batch of B windows of T + 1 tokens from the language (fresh windows of a
   new stream, one stream per window when the outer chain never mixes, as in a mixture
   language; or random windows of a fixed corpus);
2. inputs = window[:, :-1], targets = window[:, 1:]: the model reads x_{1..t} and is
   scored on x_{t+1}, for every t of every window at once;
3. loss = mean over the B·T positions of −log p(x_{t+1} | x_{≤t}) (nats/token), and
   its gradient by :meth:`tinylatent.gpt.GPT.backward`; with ``short_windows`` S > 0,
   also S windows of L = ``short_context`` tokens, and the loss is the mean over all
   B·T + S·L positions (see "Short windows" below);
4. clip the gradients to a global norm of at most ``grad_clip``;
5. one AdamW update with the learning rate of this step (linear warm-up, cosine decay).

What the loss can reach: on windows cut from the stream, the cross-entropy of any model
is at least the Bayes loss  E[−log q(x_{t+1} | x_{≤t})], which the exact oracle
(:mod:`tinylatent.oracle`, ``phase="unknown"``) computes on the very same validation
windows; the run reports both, so the model's *excess* loss over Bayes is visible.

Short windows. The prediction at position t of a window is trained by one token per
window: with B = 12 windows of T = 192 tokens, the first positions (a prompt of a few
letters with nothing before it) get 12 examples a step, against 12·192 for the model as
a whole. What the model says there is then an estimate from few examples, and it stays
noisy long after the loss has converged (docs/results.md, "Short windows"). S extra
windows of L tokens add S examples a step to each of the first L positions, for S·L
more tokens; they come from the same data stream, and the loss stays a mean over
tokens, so its minimiser is still q. ``short_windows=0`` (the default) is the paper's
training.

Randomness. Four independent streams are spawned from ``numpy.random.SeedSequence(seed)``:

* ``init``: the model's initial weights (used once, at step 0);
* ``data``: every training window, step after step. This Generator's state is saved in
  each checkpoint, so a resumed run draws exactly the windows the uninterrupted run
  would have drawn;
* ``validation``: the fixed validation windows, drawn once, so that validation losses
  are comparable across steps (and across resumes);
* ``corpus``: the fixed corpus of ``data="corpus"`` runs (re-drawn identically on resume).

Nothing else in a step is random, and the optimiser's moments and step count are saved
exactly, so an interrupted-and-resumed run ends with the same parameters, bit for bit,
as an uninterrupted one (same seed, configs and device).

Files in ``out_dir``: ``ckpt.npz`` (the latest checkpoint, :mod:`tinylatent.checkpoint`)
and ``log.jsonl`` (one JSON object per step). See docs/training.md.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from tinylatent._checks import as_python_scalars, is_finite_real, is_integer
from tinylatent._io import atomic_write, json_ready, remove_leftover_temporaries
from tinylatent._signals import Terminated, raise_terminated, sigterm_as_interrupt  # Terminated: train's, for users
from tinylatent.backend import check_device, to_device, to_host, xp_of
from tinylatent.checkpoint import CHECKPOINT_FILENAME, load_checkpoint, save_checkpoint
from tinylatent.gpt import GPT, GPTConfig
from tinylatent.language import Language, sample_corpus, sample_windows
from tinylatent.optim import AdamW, clip_grad_norm, lr_at
from tinylatent.oracle import Oracle

DATA_MODES = ("stream", "corpus")
LOG_FILENAME = "log.jsonl"
EVAL_BATCH_SIZE = 64  # validation windows per forward pass: big enough for fast matmuls, small enough for memory
DEFAULT_WARMUP_STEPS = 100  # nanoGPT's shakespeare-char warm-up; capped at a tenth of a short run
DEFAULT_MIN_LR_FRACTION = 0.1  # cosine decay ends at max_lr / 10 (nanoGPT, after Chinchilla)

# Train-config fields that may differ when a run is resumed: none of them changes which
# windows are drawn or how the parameters are updated, except ``steps``, which also
# stretches the cosine schedule (so a resume that changes it is not bit-for-bit
# comparable with the original plan; it is how one extends a run).
RESUMABLE_CHANGES = ("steps", "eval_interval", "eval_windows", "checkpoint_interval", "device")
# Train-config fields that may be None ("derive me"); :meth:`TrainConfig.resolved` fills them in.
RESOLVED_FIELDS = ("context_length", "warmup_steps", "min_lr")


# ----------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """How to train. The defaults are the paper's run (docs/claims.md §7) unless a comment says otherwise.

    ``context_length``, ``warmup_steps`` and ``min_lr`` may be left ``None``; :meth:`resolved`
    fills them in from the model and the other fields, and the resolved values are what
    a checkpoint stores.
    """

    steps: int = 5000                      # the paper: 5000 iterations
    batch_size: int = 12                   # the paper (nanoGPT's default): 12 windows a step
    context_length: Optional[int] = None   # tokens the model reads per window; None: the model's context (the paper: 128)
    max_lr: float = 6e-4                   # the paper's peak learning rate (nanoGPT's GPT-2 setting)
    warmup_steps: Optional[int] = None     # linear warm-up; None: min(100, steps // 10), so short runs still decay
    min_lr: Optional[float] = None         # where the cosine ends; None: max_lr / 10 (nanoGPT, after Chinchilla)
    weight_decay: float = 0.1              # the paper: AdamW decay 0.1 on matrices
    betas: tuple = (0.9, 0.95)             # the paper: Adam's betas; 0.95 reacts faster than 0.999 at small batch
    grad_clip: float = 1.0                 # the paper: clip the global gradient norm at 1.0
    eval_interval: int = 100               # steps between validation losses: 50 points over the paper's 5000 steps
    eval_windows: int = 256                # validation windows: 256 x 128 tokens puts the standard error near 0.005 nats
    checkpoint_interval: int = 500         # steps between checkpoints: the paper model's file is ~255 MB (params + 2 moments)
    seed: int = 0                          # spawns the init, data, validation and corpus random streams
    data: str = "stream"                   # "stream": fresh windows every step (no overfitting); "corpus": the paper's fixed corpus
    corpus_messages: int = 100_000         # data="corpus": the paper's 100,000 lines
    validation_fraction: float = 0.1      # data="corpus": the last 10% of the corpus's tokens are held out (nanoGPT's split)
    device: str = "cpu"                    # "cpu" (NumPy) or "gpu" (CuPy)
    short_windows: int = 0                 # extra windows of short_context tokens a step (0: none, the paper); see the module docstring
    short_context: int = 8                 # tokens of each short window: the first positions they add examples to

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):   # JSON gives back a list
            self.betas = tuple(self.betas)
        as_python_scalars(self)
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the bad field and what is allowed; return self if fine."""
        def integer_at_least(name, minimum, allow_none=False):
            value = getattr(self, name)
            if allow_none and value is None:
                return
            if not is_integer(value) or value < minimum:
                kind = "positive" if minimum == 1 else "non-negative"
                raise ValueError(f"TrainConfig.{name} must be a {kind} integer; got {value!r}")

        for name in ("steps", "batch_size", "eval_interval", "eval_windows", "checkpoint_interval", "corpus_messages",
                     "short_context"):
            integer_at_least(name, 1)
        integer_at_least("context_length", 1, allow_none=True)
        integer_at_least("short_windows", 0)
        integer_at_least("seed", 0)
        if self.warmup_steps is not None and (not is_integer(self.warmup_steps) or not 0 <= self.warmup_steps < self.steps):
            raise ValueError(f"TrainConfig.warmup_steps must be an integer in [0, steps) = [0, {self.steps}); "
                             f"got {self.warmup_steps!r}")
        if not is_finite_real(self.max_lr) or self.max_lr <= 0:
            raise ValueError(f"TrainConfig.max_lr must be a positive number; got {self.max_lr!r}")
        if self.min_lr is not None and (not is_finite_real(self.min_lr) or not 0 <= self.min_lr <= self.max_lr):
            raise ValueError(f"TrainConfig.min_lr must be a number in [0, max_lr] = [0, {self.max_lr}]; got {self.min_lr!r}")
        if not is_finite_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be a non-negative number; got {self.weight_decay!r}")
        if not isinstance(self.betas, tuple) or len(self.betas) != 2 \
                or not all(is_finite_real(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1); got {self.betas!r}")
        if not is_finite_real(self.grad_clip) or self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be a positive number; got {self.grad_clip!r}")
        if self.data not in DATA_MODES:
            raise ValueError(f"TrainConfig.data must be one of {', '.join(DATA_MODES)}; got {self.data!r}")
        if not is_finite_real(self.validation_fraction) or not 0 < self.validation_fraction < 1:
            raise ValueError(f"TrainConfig.validation_fraction must lie in (0, 1); got {self.validation_fraction!r}")
        check_device(self.device)
        return self

    def resolved(self, model_config: GPTConfig) -> "TrainConfig":
        """This config with ``context_length``, ``warmup_steps`` and ``min_lr`` filled in."""
        context_length = model_config.context_length if self.context_length is None else self.context_length
        if context_length > model_config.context_length:
            raise ValueError(f"TrainConfig.context_length ({context_length}) exceeds the model's "
                             f"context_length ({model_config.context_length})")
        if self.short_windows and self.short_context > context_length:
            raise ValueError(f"TrainConfig.short_context ({self.short_context}) must be at most the "
                             f"context_length ({context_length}); short windows are the first positions of a window")
        return replace(
            self,
            context_length=context_length,
            warmup_steps=min(DEFAULT_WARMUP_STEPS, self.steps // 10) if self.warmup_steps is None else self.warmup_steps,
            min_lr=self.max_lr * DEFAULT_MIN_LR_FRACTION if self.min_lr is None else self.min_lr,
        )

    @property
    def tokens_per_step(self) -> int:
        """B·T + S·L: the positions scored per step (needs a resolved context_length)."""
        return self.batch_size * self.context_length + self.short_windows * self.short_context

    def to_dict(self) -> dict:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)


class TrainingDiverged(ValueError):
    """The loss, the gradient norm or (at a step due for a checkpoint) the updated parameters
    became NaN or infinite; the last good checkpoint is kept."""


def _no_overflow_warnings():
    """NumPy's overflow, invalid-value and divide-by-zero warnings, off for a training step: a step that overflows
    makes its loss or gradient norm non-finite, which :func:`train` checks and reports as one
    :class:`TrainingDiverged` (the warnings would only print the same news first, in many lines)."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


class TrainResult(NamedTuple):
    """What :func:`train` returns: the trained model and a summary dict (see :func:`train`)."""

    model: GPT
    summary: dict


# ----------------------------------------------------------------------------------------
# randomness and data
# ----------------------------------------------------------------------------------------

class RandomStreams(NamedTuple):
    """Independent seed sequences spawned from one seed (see the module docstring)."""

    init: np.random.SeedSequence
    data: np.random.SeedSequence
    validation: np.random.SeedSequence
    corpus: np.random.SeedSequence

    @classmethod
    def from_seed(cls, seed: int) -> "RandomStreams":
        return cls(*np.random.SeedSequence(seed).spawn(4))

    @staticmethod
    def generator(seed_sequence: np.random.SeedSequence) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(seed_sequence))


def random_windows(tokens: np.ndarray, n_windows: int, window_length: int, rng: np.random.Generator) -> np.ndarray:
    """(n_windows, window_length) windows of a token stream, each starting at a uniform random position."""
    n_starts = tokens.shape[0] - window_length + 1
    starts = rng.integers(0, n_starts, size=n_windows)
    return tokens[starts[:, None] + np.arange(window_length)[None, :]]


def outer_chain_mixes(language: Language) -> bool:
    """Whether one long stream of the language meets every intention in its long-run shares.

    True when the outer chain T has a single closed class, i.e. the eigenvalue 1 of T is
    simple: rank(T − I) = K − 1. Then a stream forgets where it started, and windows cut
    from one stream are (nearly) independent draws of the stationary process. False for
    a mixture language (T = I, one intention per document): there one stream is one
    document, and all its windows share that document's θ.
    """
    n_intentions = language.n_intentions
    return int(np.linalg.matrix_rank(language.transition - np.eye(n_intentions))) == n_intentions - 1


def stream_windows(language: Language, n_windows: int, window_length: int, rng: np.random.Generator) -> np.ndarray:
    """(n_windows, window_length) windows of the language's stream, each at a uniformly random place.

    If the outer chain mixes (:func:`outer_chain_mixes`), all windows are cut from one
    fresh stream (:func:`tinylatent.language.sample_windows`). If it does not, each window
    is cut from its own stream, so that its intentions are drawn afresh (θ ~ ``initial``
    for a mixture language) instead of every window repeating one document's θ. Both give
    windows from the start that the oracle's ``phase="unknown"`` assumes.
    """
    if outer_chain_mixes(language):
        return sample_windows(language, n_windows, window_length, rng)
    # One document per window: a loop over documents, each a call of the vectorised sampler.
    return np.concatenate([sample_windows(language, 1, window_length, rng) for _ in range(n_windows)])


class TrainingData:
    """Where the windows come from: training batches drawn step by step, and a fixed validation set.

    Attributes:
        validation: (eval_windows, T + 1) int64, fixed for the whole run.
        window_length: T + 1 tokens (inputs are the first T, targets the last T).
    """

    def __init__(self, language: Language, config: TrainConfig, streams: RandomStreams):
        self.language = language
        self.config = config
        self.window_length = config.context_length + 1
        validation_rng = RandomStreams.generator(streams.validation)
        if config.data == "stream":
            self.train_tokens = None
            self.validation = stream_windows(language, config.eval_windows, self.window_length, validation_rng)
        else:
            corpus = sample_corpus(language, config.corpus_messages, RandomStreams.generator(streams.corpus))
            n_train = int(round(corpus.tokens.shape[0] * (1.0 - config.validation_fraction)))
            self.train_tokens = corpus.tokens[:n_train]
            validation_tokens = corpus.tokens[n_train:]
            for part, tokens in (("training", self.train_tokens), ("validation", validation_tokens)):
                if tokens.shape[0] < self.window_length:
                    raise ValueError(
                        f"the corpus's {part} part has {tokens.shape[0]} tokens, fewer than one window of "
                        f"{self.window_length}; sample more messages (corpus_messages={config.corpus_messages})"
                    )
            self.validation = random_windows(validation_tokens, config.eval_windows, self.window_length, validation_rng)

    def train_batch(self, rng: np.random.Generator) -> list:
        """One step's windows; all their randomness comes from ``rng``.

        A list of int64 arrays: (batch_size, T + 1) windows, then, if ``short_windows``
        S > 0, (S, L + 1) short windows drawn after them.
        """
        shapes = [(self.config.batch_size, self.window_length)]
        if self.config.short_windows:
            shapes.append((self.config.short_windows, self.config.short_context + 1))
        if self.train_tokens is None:
            return [stream_windows(self.language, n, length, rng) for n, length in shapes]
        return [random_windows(self.train_tokens, n, length, rng) for n, length in shapes]


def batches_loss_and_grads(model: GPT, batches: list) -> tuple:
    """The mean loss over every target token of ``batches`` (windows of any lengths) and its gradient.

    Each batch (B_i, T_i + 1) is scored as inputs ``[:, :-1]``, targets ``[:, 1:]``. With
    N_i = B_i·T_i scored tokens, ℓ_i the batch's mean −log p(x_{t+1} | x_{≤t}) and g_i its
    gradient, loss = Σ N_i·ℓ_i / Σ N_i and grads = Σ N_i·g_i / Σ N_i (``share`` = N_i / Σ N_i):
    the same as one batch holding every window, were they all of one length. Returns
    ``(loss, grads)`` on the model's device. The windows stay on the host: the model checks
    their token ids there and moves them to its device once (no device-to-host round trip).
    """
    total = float(sum(windows[:, 1:].size for windows in batches))                   # Σ N_i
    loss, grads = None, None
    for windows in batches:
        inputs, targets = windows[:, :-1], windows[:, 1:]                               # (B_i, T_i): x_{1..T}, x_{2..T+1}
        batch_loss, batch_grads = model.loss_and_grads(inputs, targets)
        share = targets.size / total                                                    # N_i / Σ N_i
        if share != 1.0:                                                                # one batch: already its mean
            batch_loss = batch_loss * share
            for grad in batch_grads.values():                                           # fresh arrays: scale in place
                grad *= share
        if grads is None:
            loss, grads = batch_loss, batch_grads
        else:
            loss = loss + batch_loss
            for name, grad in batch_grads.items():
                grads[name] += grad
    return loss, grads


# ----------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------

def validation_loss(model: GPT, windows: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Mean −log p(x_{t+1} | x_{≤t}) over every target position of ``windows`` (B, T + 1), in nats."""
    shape = windows.shape if hasattr(windows, "shape") else np.shape(windows)   # np.shape refuses a device array
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 2:
        raise ValueError(f"windows must be a (B, T + 1) array with B ≥ 1 and T ≥ 1 (a target after each input); "
                         f"got shape {shape}")
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start:start + batch_size]
        log_probs = model.log_probs(chunk[:, :-1])                                  # (b, T, V), checked on the host
        xp = xp_of(log_probs)
        targets = to_device(chunk[:, 1:], model.device)                            # (b, T)
        picked = xp.take_along_axis(log_probs, targets[..., None], axis=-1)       # (b, T, 1)
        total -= float(to_host(picked.sum(dtype=xp.float64)))
        count += targets.size
    return total / count


def bayes_validation_loss(language: Language, windows: np.ndarray) -> Optional[float]:
    """Mean −log q(x_{t+1} | x_{≤t}) over the same target positions, from the exact oracle.

    The windows were cut from anywhere in a stream, so the oracle starts from the
    stationary state (``phase="unknown"``); the first token of each window is context
    only, as it is for the model. ``None`` if some window is impossible under q (which
    a window of q's own stream never is).
    """
    result = Oracle(language).filter(windows, phase="unknown", predictive=False)
    loss = -float(result.token_log_probs[:, 1:].mean())
    return loss if math.isfinite(loss) else None


# ----------------------------------------------------------------------------------------
# progress, log, Ctrl-C
# ----------------------------------------------------------------------------------------

class Progress:
    """Progress on stderr: a tqdm bar (loss, tokens/s, ETA) on a terminal, plain lines otherwise.

    Plain lines are printed at each validation and look like
    ``step 200/1000 | loss 1.0512 | val 1.0498 (Bayes 0.9480) | 41,200 tok/s | eta 0:01:10``.
    """

    def __init__(self, enabled: bool, total_steps: int, start_step: int, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.total_steps = total_steps
        self.bar = None
        self.enabled = enabled
        self.last_val_loss = None
        if enabled and hasattr(self.stream, "isatty") and self.stream.isatty():
            from tqdm import tqdm  # a runtime dependency, imported only when a bar is drawn

            self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit="step",
                            dynamic_ncols=True, smoothing=0.1)

    def step(self, loss: float, tokens_per_s: float, val_loss: Optional[float] = None) -> None:
        """One more step on the bar (plain lines are printed by :meth:`report` only)."""
        if val_loss is not None:
            self.last_val_loss = val_loss
        if self.bar is not None:
            postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_s:,.0f}"}
            if self.last_val_loss is not None:
                postfix["val"] = f"{self.last_val_loss:.4f}"  # the latest validation, kept on the bar
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def report(self, step: int, loss: Optional[float], val_loss: float, bayes_loss: Optional[float],
               tokens_per_s: Optional[float], eta_s: Optional[float]) -> None:
        """A validation result: a plain line, or (on a terminal) the value the bar shows from now on."""
        self.last_val_loss = val_loss
        if not self.enabled or self.bar is not None:
            return
        parts = [f"step {step}/{self.total_steps}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"val {val_loss:.4f}" + (f" (Bayes {bayes_loss:.4f})" if bayes_loss is not None else ""))
        if tokens_per_s:
            parts.append(f"{tokens_per_s:,.0f} tok/s")
        if eta_s is not None:
            parts.append(f"eta {_format_seconds(eta_s)}")
        self.message(" | ".join(parts))

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class JsonLog:
    """``log.jsonl``: one JSON object per line, flushed line by line.

    A fresh run starts an empty log. A resumed run keeps the lines up to the checkpoint's
    step and drops the rest (steps the interrupted run made after its last checkpoint,
    which the resumed run makes again), so the log reads as one run.
    """

    def __init__(self, path: Path, keep_through_step: Optional[int] = None):
        self.path = path
        kept = []
        if keep_through_step is not None and path.exists():
            # a byte that is not UTF-8 (a damaged line) becomes U+FFFD, and its line is dropped like a cut one
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= keep_through_step:
                    kept.append(line)
        # the kept lines replace the file atomically, so a crash here loses none of them
        atomic_write(path, lambda handle: handle.writelines(line + "\n" for line in kept))
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """One record as one JSON line (NaN and ±inf as null: :func:`tinylatent._io.json_ready`), flushed."""
        self.handle.write(json.dumps(json_ready(record)) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


@contextlib.contextmanager
def keyboard_interrupt_deferred():
    """Hold a Ctrl-C (or a SIGTERM that :func:`train` turns into one) that arrives inside the
    block until the block has finished.

    The optimiser updates the parameters in place, one array after another; an
    interrupt in the middle would leave half of them updated, a state that no
    uninterrupted run ever passes through. Inside this block SIGINT is only recorded;
    when the block ends the handler it held back runs (Python's default one raises
    KeyboardInterrupt). Only in the main thread, and only while a Python handler is
    installed: an ignored SIGINT stays ignored. SIGTERM is held the same way while its
    handler is :func:`tinylatent._signals.raise_terminated` (inside
    :func:`~tinylatent._signals.sigterm_as_interrupt`); otherwise it is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signum: handler for signum, handler in ((signal.SIGINT, signal.getsignal(signal.SIGINT)),
                                                    (signal.SIGTERM, signal.getsignal(signal.SIGTERM)))
            if callable(handler) and (signum == signal.SIGINT or handler is raise_terminated)}
    if not held:
        yield
        return
    received = []
    for signum in held:
        signal.signal(signum, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
    if received:
        signum, frame = received[0]
        held[signum](signum, frame)


# ----------------------------------------------------------------------------------------
# resuming
# ----------------------------------------------------------------------------------------

def _same_language(a: Language, b: Language) -> bool:
    """Equal up to the last bits of rounding (a JSON round trip renormalises every row)."""
    if a.alphabet != b.alphabet or a.delimiter != b.delimiter:
        return False
    for name in ("initial", "transition", "first_letter", "letter_transition", "length_probs"):
        x, y = getattr(a, name), getattr(b, name)
        if x.shape != y.shape or not np.allclose(x, y, rtol=0.0, atol=1e-12):
            return False
    return True


def _same_setting(saved, given) -> bool:
    """Equal, or for two floats equal up to rounding: ``--min-lr 6e-5`` is the run whose stored
    min_lr is 6e-4 / 10 = 5.9999999999999995e-05 (the resumed run then uses the stored value)."""
    if isinstance(saved, float) and isinstance(given, float):
        return math.isclose(saved, given, rel_tol=1e-12, abs_tol=0.0)
    return saved == given


def check_resumable(checkpoint, language: Language, model_config: GPTConfig, config: TrainConfig) -> None:
    """Raise ``ValueError`` unless the checkpoint's run is the one described by these configs.

    Only the fields in :data:`RESUMABLE_CHANGES` may differ; anything else would change
    which windows are drawn or how parameters are updated.
    """
    if not _same_language(checkpoint.language, language):
        raise ValueError(f"the checkpoint was trained on language {checkpoint.language.name!r}, "
                         f"not on the given {language.name!r}")
    saved_model = checkpoint.model_config.to_dict()
    differences = [f"{key} {saved_model[key]!r} -> {value!r}" for key, value in model_config.to_dict().items()
                   if saved_model.get(key) != value]
    if differences:
        raise ValueError("the checkpoint's model config differs: " + ", ".join(differences))
    saved_train = TrainConfig.from_dict(checkpoint.train_config).to_dict()
    differences = [f"{key} {saved_train[key]!r} -> {value!r}" for key, value in config.to_dict().items()
                   if key not in RESUMABLE_CHANGES and not _same_setting(saved_train.get(key), value)]
    if differences:
        raise ValueError("cannot resume with a different train config (only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change): " + ", ".join(differences))
    if checkpoint.step > config.steps:
        raise ValueError(f"the checkpoint is at step {checkpoint.step}, past the {config.steps} steps asked for")


# ----------------------------------------------------------------------------------------
# the training loop
# ----------------------------------------------------------------------------------------

def train(language: Language, model_config: GPTConfig, train_config: TrainConfig,
          out_dir, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a GPT on ``language`` and return ``TrainResult(model, summary)``.

    Writes ``out_dir/ckpt.npz`` every ``checkpoint_interval`` steps and at the end, and
    ``out_dir/log.jsonl`` every step. With ``resume=True`` it continues the run whose
    checkpoint is in ``out_dir`` (the configs must agree with it, see
    :func:`check_resumable`); without it, an ``out_dir`` that already holds a checkpoint
    is an error rather than silently overwritten.

    Stops early

    * on Ctrl-C (KeyboardInterrupt): writes a checkpoint of the last completed step,
      then re-raises; the same on SIGTERM, while it has its default action and this runs in
      the main thread, which then raises :class:`Terminated` (a
      KeyboardInterrupt);
    * when the loss or gradient norm is NaN or infinite: raises :class:`TrainingDiverged`
      (a ValueError) before the bad step touches the parameters, and writes nothing,
      so the last good checkpoint stays;
    * when an update makes a parameter NaN or infinite at a step due for a checkpoint:
      raises :class:`TrainingDiverged` instead of saving (the log holds that step's line).

    ``summary`` holds: ``language``, ``parameters``, ``steps``, ``tokens_seen``,
    ``train_loss`` (last batch), ``val_loss``, ``bayes_val_loss`` and
    ``excess_val_loss`` (val − Bayes) on the fixed validation windows, ``train_seconds``,
    ``tokens_per_s``, ``resumed_from_step``, ``checkpoint`` and ``log`` (paths).
    """
    if model_config.vocab_size != language.vocab_size:
        raise ValueError(f"the model's vocab_size ({model_config.vocab_size}) must equal the language's "
                         f"({language.vocab_size} tokens)")
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_FILENAME

    # -- the state of the run: model, optimiser, step, data generator ----------------------
    if resume:
        if not checkpoint_path.exists():
            raise ValueError(f"nothing to resume: {checkpoint_path} does not exist")
        checkpoint = load_checkpoint(checkpoint_path)
        # Fields left to their defaults keep the values the run resolved them to, not
        # what they would resolve to now (the warm-up follows ``steps``, which may change).
        saved = TrainConfig.from_dict(checkpoint.train_config)   # the run's settings (load_checkpoint checked them)
        train_config = replace(train_config, **{name: getattr(saved, name) for name in RESOLVED_FIELDS
                                                if getattr(train_config, name) is None})
        config = train_config.resolved(model_config)
        check_resumable(checkpoint, language, model_config, config)
        # what may not change is equal up to rounding (check_resumable): keep the stored bits, for a bit-for-bit run
        config = replace(config, **{field.name: getattr(saved, field.name) for field in fields(TrainConfig)
                                    if field.name not in RESUMABLE_CHANGES})
        model = checkpoint.model(config.device)
        optimizer = AdamW(config.weight_decay, config.betas)
        optimizer.load_state_dict(checkpoint.optimizer_state)
        step = checkpoint.step
        if optimizer.step_count != step:
            raise ValueError(f"the checkpoint is at step {step} but its optimizer state at step "
                             f"{optimizer.step_count}: the file was not written by one training run")
        data_rng = checkpoint.generator()
        metrics = dict(checkpoint.metrics)
        resumed_from = step
    else:
        if checkpoint_path.exists():
            raise ValueError(f"{checkpoint_path} already exists: resume that run (--resume) or choose another output folder")
        config = train_config.resolved(model_config)
        streams = RandomStreams.from_seed(config.seed)
        model = GPT.create(model_config, RandomStreams.generator(streams.init), config.device)
        optimizer = AdamW(config.weight_decay, config.betas)
        step = 0
        data_rng = RandomStreams.generator(streams.data)
        metrics = {}
        resumed_from = None

    data = TrainingData(language, config, RandomStreams.from_seed(config.seed))  # validation (and corpus) streams
    bayes_loss = bayes_validation_loss(language, data.validation)
    bar = Progress(progress, config.steps, step)  # before any file is written (a terminal's bar imports tqdm)
    log = None  # log.jsonl, opened in the try below
    last_checkpoint_step = step if resume else None

    def diverged(at_step: int, what: str) -> TrainingDiverged:
        kept = (f"the checkpoint of step {last_checkpoint_step} in {checkpoint_path} is kept"
                if last_checkpoint_step is not None else "no checkpoint had been written yet")
        return TrainingDiverged(f"training diverged at step {at_step}: {what}; nothing was saved after it, {kept}; "
                                f"train again with a lower learning rate (now max_lr={config.max_lr:g})")

    def save() -> None:
        nonlocal last_checkpoint_step
        save_checkpoint(
            checkpoint_path, params=model.params, optimizer_state=optimizer.state_dict(), step=step,
            model_config=model_config, train_config=config.to_dict(), language=language,
            rng_state=data_rng.bit_generator.state, metrics=metrics,
        )
        last_checkpoint_step = step

    def evaluate() -> float:
        metrics["val_loss"] = validation_loss(model, data.validation)
        metrics["bayes_val_loss"] = bayes_loss
        return metrics["val_loss"]

    for path in (checkpoint_path, out_dir / LOG_FILENAME):  # what a save killed mid-write (SIGKILL) left
        remove_leftover_temporaries(path)
    train_seconds = 0.0
    tokens_at_last_report, seconds_at_last_report = 0, 0.0
    evaluated_at = None
    # The data generator's state after the last completed step: what a checkpoint must hold.
    rng_state_at_step_boundary = data_rng.bit_generator.state
    # SIGTERM (kill, a scheduler's time limit) stops the run as Ctrl-C does: the step in progress is
    # finished and saved, then Terminated (a KeyboardInterrupt) is raised; tinylatent._signals.
    with sigterm_as_interrupt():
        try:
            # Opening the log and (a fresh run) step 0, its validation and its log line: all or nothing.
            # A Ctrl-C before it leaves the folder as it was; one inside waits for the line, so the
            # checkpoint saved below and the log agree (the resumed run writes no step 0 line).
            with keyboard_interrupt_deferred():
                log = JsonLog(out_dir / LOG_FILENAME, keep_through_step=step if resume else None)
                if not resume:
                    evaluate()
                    evaluated_at = 0
                    log.write({"step": 0, "val_loss": metrics["val_loss"], "bayes_val_loss": bayes_loss})
            if not resume:
                bar.report(0, None, metrics["val_loss"], bayes_loss, None, None)
            while step < config.steps:
                started = time.perf_counter()
                lr = lr_at(step, config.max_lr, config.warmup_steps, config.steps, config.min_lr)
                with _no_overflow_warnings():
                    loss, grads = batches_loss_and_grads(model, data.train_batch(data_rng))
                    train_loss = float(to_host(loss))
                    grad_norm = clip_grad_norm(grads, config.grad_clip) if math.isfinite(train_loss) else math.nan
                if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
                    raise diverged(step + 1, f"the loss is {train_loss} and the gradient norm {grad_norm} (lr {lr:.3g})")
                # A step is done when its update, its metrics and its log line (and validation, when
                # due) are: a Ctrl-C in the middle waits for all of them, so the checkpoint it saves
                # and the log agree, and the resumed run's log has no gap.
                with keyboard_interrupt_deferred():
                    with _no_overflow_warnings():
                        optimizer.step(model.params, grads, lr)
                    step += 1
                    rng_state_at_step_boundary = data_rng.bit_generator.state
                    step_seconds = time.perf_counter() - started
                    train_seconds += step_seconds
                    tokens_per_s = config.tokens_per_step / step_seconds
                    metrics["train_loss"] = train_loss
                    record = {"step": step, "loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                              "tokens_per_s": tokens_per_s}
                    val_loss = None
                    if step % config.eval_interval == 0 or step == config.steps:
                        val_loss = evaluate()
                        evaluated_at = step
                        record.update(val_loss=val_loss, bayes_val_loss=bayes_loss)
                    log.write(record)
                bar.step(train_loss, tokens_per_s, val_loss)
                if val_loss is not None:
                    tokens_done = (step - (resumed_from or 0)) * config.tokens_per_step
                    interval_rate = (tokens_done - tokens_at_last_report) / max(train_seconds - seconds_at_last_report, 1e-9)
                    tokens_at_last_report, seconds_at_last_report = tokens_done, train_seconds
                    eta = (config.steps - step) * config.tokens_per_step / interval_rate
                    bar.report(step, train_loss, val_loss, bayes_loss, interval_rate, eta)
                if step % config.checkpoint_interval == 0 or step == config.steps:
                    if not all(bool(xp_of(p).isfinite(p).all()) for p in model.params.values()):
                        # the update itself overflowed (its loss was finite): this state must not replace a good
                        # checkpoint (save_checkpoint would refuse it too; here it is reported as a divergence)
                        raise diverged(step, f"its update (lr {lr:.3g}) made parameters infinite or NaN")
                    save()
            if evaluated_at != step:  # a resume of a finished run: nothing was trained
                evaluate()
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
            if log is None:  # before the log was opened: nothing was written, and nothing is saved
                raise
            data_rng.bit_generator.state = rng_state_at_step_boundary
            try:
                with keyboard_interrupt_deferred():  # a second Ctrl-C waits for the checkpoint ...
                    save()
            except KeyboardInterrupt:                # ... and is the same request: the first is raised below
                pass
            bar.close()
            what = "terminated" if isinstance(stop, Terminated) else "interrupted"
            bar.message(f"{what}: saved the checkpoint of step {step} to {checkpoint_path}; continue with resume")
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()

    val_loss = metrics["val_loss"]
    summary = {
        "language": language.name,
        "parameters": model.num_params(non_embedding=False),
        "steps": step,
        "tokens_seen": step * config.tokens_per_step,
        "train_loss": metrics.get("train_loss"),
        "val_loss": val_loss,
        "bayes_val_loss": bayes_loss,
        "excess_val_loss": None if bayes_loss is None else val_loss - bayes_loss,
        "train_seconds": train_seconds,
        "tokens_per_s": ((step - (resumed_from or 0)) * config.tokens_per_step / train_seconds) if train_seconds else None,
        "resumed_from_step": resumed_from,
        "checkpoint": str(checkpoint_path),
        "log": str(out_dir / LOG_FILENAME),
    }
    return TrainResult(model, summary)
