"""Chain-of-thought from the locality of experience: a k-step jump answered directly or step by step.

docs/claims.md §5 (the paper's Section 6; Prystawski, Li & Goodman 2023). If the training
data shows only *local* steps of a chain of intentions θ_0 → θ_1 → θ_2 → …, a model
learns each step well but has rarely or never seen what comes k steps after θ_0; asked
for that jump directly it can only guess, while writing the intermediate messages itself,
one well-learned step at a time, composes the jump. When the training data does show
direct jumps (a non-local control), the direct answer should be as good.

The language (a "chain with skip tags"): an intention is a pair θ = (s, v).

* Every message starts with a **tag** letter ``1`` … ``5`` that says how many steps of
  the chain lie between the previous message and this one (s), then a few letters from
  its **value**'s own block (value v owns letters ``a``…, two at a time). The language
  is unambiguous: the exact oracle reads (s, v) off any message.
* The value follows a near-deterministic chain W: v → v + 1 with probability
  ``advance`` (0.8), v → v and v → v + 2 with the rest, values mod V. The value k steps
  on is distributed as the row W^k[v_0]: mostly v_0 + k, more spread as k grows.
* Consecutive messages are s steps apart, s drawn afresh for every message from the
  corpus's jump distribution; the message then has value v' ~ W^s[v, ·]. So
  T[(s, v), (s', v')] = P(s') · W^{s'}[v, v']. Every corpus is the same value chain
  observed at some of its steps; the corpora differ only in which pairs sit side by side.
* **Local** corpus: s = 1 for every message, except a fraction ``--local-jump-rate``
  (default 0) spread evenly over s = 2 … k_max. With the default, a message k ≥ 2 steps
  after its predecessor never occurs in training, and neither do the tags ``2`` … ``5``.
* **Control** (non-local) corpus: s uniform on 1 … k_max: direct jumps of every size
  are as common as single steps.

The questions, to a model trained on one corpus, after a prompt ``\\n x_0`` (x_0 a
message of value v_0):

* **direct**: we append the tag ``k`` ("the next message is k steps on") and the model
  writes the rest of that message;
* **step by step**: we append the tag ``1``, the model writes that message, we append
  ``1`` again, …; its k-th message is the answer (all k come from one chain of k_max
  messages). The tags are the scaffold; every value letter is the model's own.

The answer's value v̂ is read off the generated message by the exact oracle (MAP
intention, uniform prior); an answer that breaks off before it names any value (the
oracle's posterior is a tie) counts as wrong. Its **accuracy** is q(v_k = v̂ | x_0) = W^k[v_0, v̂], the
probability that the answer is what the chain really did (an exact expectation over the
truth, so there is no second sampling noise). References: the **Bayes MAP** accuracy
max_v W^k[v_0, v], the best any reader can do, and the **Bayes sampler** accuracy
Σ_v W^k[v_0, v]², what a perfect model sampling at temperature 1 scores by either
method: written by a perfect model the intermediate messages are draws from the chain,
so composing them samples W^k exactly. Step by step can help a *learned* model only
because its single steps are better learned than its jumps.

Usage (from the repository root; OPENBLAS_NUM_THREADS=1 on a small shared machine):
    python examples/cot_locality.py                 # default budget
    python examples/cot_locality.py --quick         # a smaller one
    python examples/cot_locality.py --smoke         # seconds; the numbers mean nothing
    python examples/cot_locality.py --device gpu    # the models on a GPU (CuPy)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402  (first: it sets OPENBLAS_NUM_THREADS before NumPy loads)

import math  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402

from tinylatent import theorems as th  # noqa: E402
from tinylatent.gpt import GPT  # noqa: E402
from tinylatent.language import Language, as_generator, fixed_length, sample_messages  # noqa: E402
from tinylatent.train import TrainConfig  # noqa: E402

PROGRAM = "cot_locality.py"
NAME = "cot_locality"
TAG_LETTERS = "123456789"             # tag s is the digit s: at most 9 steps
VALUE_LETTERS = "abcdefghijklmnopqrstuvwxyz"
METHODS = ("direct", "step_by_step")
CORPORA = ("local", "control")


# ----------------------------------------------------------------------------------------
# The language
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SkipChain:
    """The shape of a chain-with-skip-tags language (see the module docstring)."""

    max_jump: int = 5           # k_max: tags 1..k_max, questions k = 1..k_max
    values: int = 6             # V values on a cycle
    letters_per_value: int = 2  # each value writes its own block of this many letters
    value_letters: int = 3      # letters after the tag: a message is 1 + 3 letters, then "\n"
    advance: float = 0.8        # W[v, v + 1]; the rest splits evenly between v (stay) and v + 2

    def check(self) -> "SkipChain":
        if not 2 <= self.max_jump <= len(TAG_LETTERS):
            raise ValueError(f"max_jump must be in 2..{len(TAG_LETTERS)}; got {self.max_jump}")
        if self.values < 3 or self.values * self.letters_per_value > len(VALUE_LETTERS):
            raise ValueError(f"need values ≥ 3 and values × letters_per_value ≤ {len(VALUE_LETTERS)}")
        if self.letters_per_value < 1 or self.value_letters < 1:
            raise ValueError("letters_per_value and value_letters must be ≥ 1")
        if not 0.0 < self.advance <= 1.0:
            raise ValueError(f"advance must be in (0, 1]; got {self.advance}")
        return self

    def intention(self, jump, value):
        """θ = (s − 1) · V + v."""
        return (np.asarray(jump) - 1) * self.values + np.asarray(value)

    def jump_of(self, intention):
        return np.asarray(intention) // self.values + 1

    def value_of(self, intention):
        return np.asarray(intention) % self.values

    def tag_token(self, jump, size: int) -> np.ndarray:
        """(size,) token ids of the tag letter ``jump`` (tag s is letter s − 1, token id s)."""
        return np.full(size, int(jump), dtype=np.int64)

    def value_tokens(self, value: int) -> np.ndarray:
        """Token ids of the letters of one value's block."""
        return 1 + self.max_jump + value * self.letters_per_value + np.arange(self.letters_per_value)


def value_chain(setup: SkipChain) -> np.ndarray:
    """W (V × V): v → v + 1 w.p. ``advance``, v → v and v → v + 2 w.p. (1 − advance) / 2 each."""
    n = setup.values
    rest = (1.0 - setup.advance) / 2.0
    chain = np.zeros((n, n), dtype=np.float64)
    for v in range(n):
        chain[v, v] += rest
        chain[v, (v + 1) % n] += setup.advance
        chain[v, (v + 2) % n] += rest
    return chain


def jump_distribution(setup: SkipChain, jump_rate: float) -> np.ndarray:
    """P(s) for s = 1..k_max: s = 1 with probability 1 − jump_rate, the rest evenly on 2..k_max.

    ``jump_rate = (k_max − 1) / k_max`` is the uniform distribution (the control corpus).
    """
    if not 0.0 <= jump_rate < 1.0:
        raise ValueError(f"a jump rate must be in [0, 1); got {jump_rate}")
    probs = np.full(setup.max_jump, jump_rate / (setup.max_jump - 1), dtype=np.float64)
    probs[0] = 1.0 - jump_rate
    return probs


def skip_chain_language(setup: SkipChain, jump_probs, name: str) -> Language:
    """The chain whose consecutive messages are s steps apart, s ~ ``jump_probs`` (over 1..k_max)."""
    setup.check()
    jump_probs = np.asarray(jump_probs, dtype=np.float64)
    if jump_probs.shape != (setup.max_jump,):
        raise ValueError(f"jump_probs must have {setup.max_jump} entries (s = 1..{setup.max_jump}); got {jump_probs.shape}")
    n_jumps, n_values, block = setup.max_jump, setup.values, setup.letters_per_value
    n_letters = n_jumps + n_values * block
    n_intentions = n_jumps * n_values
    first_letter = np.zeros((n_intentions, n_letters), dtype=np.float64)
    # rows of letters an intention never writes are never used; uniform keeps them distributions
    letter_transition = np.full((n_intentions, n_letters, n_letters), 1.0 / n_letters, dtype=np.float64)
    for s in range(1, n_jumps + 1):
        for v in range(n_values):
            theta = int(setup.intention(s, v))
            own = setup.value_tokens(v) - 1                                  # letter indices of v's block
            first_letter[theta, s - 1] = 1.0                                 # the tag s
            for letter in (s - 1, *own):                                     # tag → block, block → block
                letter_transition[theta, letter, :] = 0.0
                letter_transition[theta, letter, own] = 1.0 / block
    chain = value_chain(setup)
    # T[(s, v), (s', v')] = P(s') W^{s'}[v, v']: the same for every previous tag s
    next_block = np.concatenate([jump_probs[s - 1] * np.linalg.matrix_power(chain, s) for s in range(1, n_jumps + 1)],
                                axis=1)                                       # (V, K)
    transition = np.tile(next_block, (n_jumps, 1))                            # (K, K)
    shares = ", ".join(f"{p:.3g}" for p in jump_probs)
    return Language(
        initial=np.full(n_intentions, 1.0 / n_intentions),
        transition=transition,
        first_letter=first_letter,
        letter_transition=letter_transition,
        length_probs=fixed_length(1 + setup.value_letters),
        alphabet=tuple(TAG_LETTERS[:n_jumps] + VALUE_LETTERS[:n_values * block]),
        name=name,
        description=(f"chain with skip tags: {n_values} values, advance {setup.advance:g}; "
                     f"P(s = 1..{n_jumps}) = ({shares})"),
    )


# ----------------------------------------------------------------------------------------
# Asking a model: direct and step by step
# ----------------------------------------------------------------------------------------

class Prompts(NamedTuple):
    """B prompts ``\\n x_0``: tokens (B, 1 + message length), and x_0's value v_0 (B,)."""

    tokens: np.ndarray
    value: np.ndarray


def sample_prompts(language: Language, setup: SkipChain, n_prompts: int, rng: np.random.Generator) -> Prompts:
    """x_0 of intention (s = 1, v_0), v_0 uniform, after a delimiter that marks where it begins.

    The tag 1 is the one every corpus writes (the local corpus writes no other), so the
    prompt itself is ordinary text for both models; only the question may not be.
    """
    intentions = setup.intention(1, rng.integers(0, setup.values, size=n_prompts))
    messages = np.stack(sample_messages(language, intentions, rng))
    tokens = np.concatenate([np.zeros((n_prompts, 1), dtype=np.int64), messages], axis=1)
    return Prompts(tokens, setup.value_of(intentions))


def _write_message(model: GPT, context: np.ndarray, jump: int, setup: SkipChain, rng) -> np.ndarray:
    """Append the tag ``jump``; the model writes the rest of that message (letters and delimiter)."""
    with_tag = np.concatenate([context, setup.tag_token(jump, context.shape[0])[:, None]], axis=1)
    return model.generate(with_tag, setup.value_letters + 1, rng)


def direct_answers(model: GPT, prompts: Prompts, setup: SkipChain, k: int, rng) -> np.ndarray:
    """The message the model writes right after x_0 behind the tag ``k``: (B, message length)."""
    return _write_message(model, prompts.tokens, k, setup, rng)[:, prompts.tokens.shape[1]:]


def step_by_step_answers(model: GPT, prompts: Prompts, setup: SkipChain, n_steps: int, rng) -> list:
    """The model's own messages x̂_1 … x̂_{n_steps}, each behind the tag ``1``: a list of (B, message length)."""
    context, answers = prompts.tokens, []
    for _ in range(n_steps):
        before = context.shape[1]
        context = _write_message(model, context, 1, setup, rng)
        answers.append(context[:, before:])
    return answers


def direct_value_distribution(model: GPT, prompts: Prompts, setup: SkipChain, k: int) -> tuple:
    """p(v | x_0, tag k), exactly, from the model's first letter after the tag: ((B, V), (B,)).

    The first value letter reveals the value, so the model's next-letter probabilities
    summed over each value's block, renormalised over the value letters, are the
    distribution its direct answer samples from when it writes a value at all. The second
    array is the probability it gives to value letters there (1 for q; the rest goes to
    tags and the delimiter, which no message of this language writes after a tag).
    """
    with_tag = np.concatenate([prompts.tokens, setup.tag_token(k, prompts.tokens.shape[0])[:, None]], axis=1)
    probs = common.next_token_probs(model, with_tag)                                     # (B, V + 1 tokens)
    by_value = np.stack([probs[:, setup.value_tokens(v)].sum(axis=1) for v in range(setup.values)], axis=1)
    mass = by_value.sum(axis=1)
    return by_value / mass[:, None], mass


def bayes_values(language: Language, setup: SkipChain, prompts: Prompts, k: int) -> np.ndarray:
    """q(v_k | x_0) = q(v_0 | x_0) · W^k, with q(v_0 | x_0) from the exact oracle: (B, V)."""
    uniform = np.full(language.n_intentions, 1.0 / language.n_intentions)
    posterior = th.final_state(language, prompts.tokens[:, 1:], prior=uniform).posterior          # q(θ_0 | x_0)
    value_posterior = posterior.reshape(-1, setup.max_jump, setup.values).sum(axis=1)           # q(v_0 | x_0)
    return value_posterior @ np.linalg.matrix_power(value_chain(setup), k)


# ----------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------

def score_answers(language: Language, setup: SkipChain, prompts: Prompts, answers: np.ndarray,
                  bayes: np.ndarray) -> dict:
    """Accuracy, form and offsets of B answer messages to one k-step question."""
    reading = common.read_intentions(language, answers)
    value = setup.value_of(np.maximum(reading.intention, 0))
    # q(v_k = v̂ | x_0); an answer that names no value (unreadable) is not right
    accuracy = np.where(reading.readable, bayes[np.arange(len(value)), value], 0.0)
    offsets = (value - prompts.value)[reading.readable] % setup.values
    return {
        "accuracy": th.mean_and_ci(accuracy),
        "per_prompt_accuracy": accuracy,
        "well_formed": float(reading.well_formed.mean()),
        "unreadable": float(1.0 - reading.readable.mean()),
        # shares of all answers, so a row sums to 1 − unreadable
        "offset_histogram": np.bincount(offsets, minlength=setup.values) / len(value),
    }


def offset_distribution(setup: SkipChain, k: int) -> np.ndarray:
    """W^k[v_0, v_0 + d] for d = 0…V − 1 (the same for every v_0: W is circulant)."""
    return np.linalg.matrix_power(value_chain(setup), k)[0]


def _interval(mean_and_ci, lowest: float = -math.inf, highest: float = math.inf) -> dict:
    """A mean and its 95% interval as a dict, the interval clipped to [lowest, highest]."""
    mean, (low, high) = mean_and_ci
    return {"mean": mean, "low": max(low, lowest), "high": min(high, highest)}


def evaluate_model(model: GPT, language: Language, setup: SkipChain, prompts: Prompts, bayes: dict, rng) -> list:
    """Every number for one trained model: one row per k, direct and step by step."""
    chain = step_by_step_answers(model, prompts, setup, len(bayes), rng)
    rows = []
    for k in sorted(bayes):
        direct = score_answers(language, setup, prompts, direct_answers(model, prompts, setup, k, rng), bayes[k])
        step = score_answers(language, setup, prompts, chain[k - 1], bayes[k])
        gain = step["per_prompt_accuracy"] - direct["per_prompt_accuracy"]
        exact_direct, value_mass = direct_value_distribution(model, prompts, setup, k)
        target = offset_distribution(setup, k)
        row = {"k": k}
        for method, scored in (("direct", direct), ("step_by_step", step)):
            row[method] = {"accuracy": _interval(scored["accuracy"], 0.0, 1.0), "well_formed": scored["well_formed"],
                           "unreadable": scored["unreadable"], "offset_histogram": scored["offset_histogram"],
                           "offset_tv_to_bayes": float(th.total_variation(scored["offset_histogram"], target))}
        row["gain_step_minus_direct"] = _interval(th.mean_and_ci(gain))
        row["direct_exact"] = {"accuracy": float((exact_direct * bayes[k]).sum(axis=1).mean()),
                               "tv_to_bayes": float(th.total_variation(exact_direct, bayes[k]).mean()),
                               "value_letter_mass": float(value_mass.mean())}
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------
# Budgets, training, report
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    steps: int            # optimiser steps per model
    batch_size: int
    context_length: int
    n_layer: int
    n_head: int
    d_model: int
    prompts: int          # x_0 prompts (the same for both models)
    eval_windows: int     # validation windows of each training run


BUDGETS = {
    "smoke": Budget(steps=20, batch_size=4, context_length=32, n_layer=1, n_head=2, d_model=16,
                    prompts=24, eval_windows=8),
    "quick": Budget(steps=4500, batch_size=12, context_length=64, n_layer=2, n_head=4, d_model=64,
                    prompts=400, eval_windows=64),
    "default": Budget(steps=6000, batch_size=12, context_length=64, n_layer=2, n_head=4, d_model=64,
                      prompts=1000, eval_windows=128),
}


def corpus_languages(setup: SkipChain, local_jump_rate: float) -> dict:
    uniform_rate = (setup.max_jump - 1) / setup.max_jump
    return {
        "local": skip_chain_language(setup, jump_distribution(setup, local_jump_rate), name="skip-chain-local"),
        "control": skip_chain_language(setup, jump_distribution(setup, uniform_rate), name="skip-chain-control"),
    }


def train_models(languages: dict, budget: Budget, args) -> dict:
    """One model per corpus: same shape, same seed, same budget."""
    out = {}
    for corpus, language in languages.items():
        config = common.small_model(language.vocab_size, budget.context_length, budget.n_layer, budget.n_head,
                                    budget.d_model)
        train_config = TrainConfig(steps=budget.steps, batch_size=budget.batch_size, max_lr=args.lr,
                                   eval_interval=max(1, budget.steps // 10), eval_windows=budget.eval_windows,
                                   checkpoint_interval=budget.steps, seed=args.seed, device=args.device)
        if not args.no_progress:
            print(f"training on the {corpus} corpus ({language.description})", file=sys.stderr)
        model, summary = common.train_fresh(language, config, train_config, args.out / corpus,
                                            progress=not args.no_progress)
        out[corpus] = (model, summary)
    return out


def format_table(report: dict) -> str:
    widths = (3, 7, 7, 7, 7, 7, 7, 21, 21)
    lines = [
        "accuracy = q(v_k = answer | x_0), mean over prompts; gain = step-by-step − direct [95% CI]; "
        f"a uniformly random answer scores {report['chance_accuracy']:.3f}",
        common.format_row(("k", "Bayes", "Bayes", "local", "local", "control", "control", "local gain",
                           "control gain"), widths),
        common.format_row(("", "MAP", "sampler", "direct", "steps", "direct", "steps", "", ""), widths),
    ]
    local, control = (report["models"][c]["rows"] for c in CORPORA)

    def gain(row):
        g = row["gain_step_minus_direct"]
        return f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"

    for bayes, a, b in zip(report["bayes"], local, control):
        lines.append(common.format_row((
            str(bayes["k"]), f"{bayes['map_accuracy']:.3f}", f"{bayes['sampler_accuracy']:.3f}",
            f"{a['direct']['accuracy']['mean']:.3f}", f"{a['step_by_step']['accuracy']['mean']:.3f}",
            f"{b['direct']['accuracy']['mean']:.3f}", f"{b['step_by_step']['accuracy']['mean']:.3f}",
            gain(a), gain(b)), widths))
    return "\n".join(lines)


def format_offsets(report: dict, setup: SkipChain) -> str:
    """Where the answers land: the share of answers at v_0 + d, against W^k."""
    lines = ["answer offsets d = v̂ − v_0 (mod V): share of answers at each d, and of answers that name no value"]
    header = "  ".join(f" d={d}" for d in range(setup.values)) + "  no value"
    for k_index, bayes in enumerate(report["bayes"]):
        lines.append(f"k={bayes['k']}  {'':<22}{header}")
        lines.append(f"     {'Bayes W^k':<22}" + "  ".join(f"{p:4.2f}" for p in bayes["offset_distribution"]))
        for corpus in CORPORA:
            row = report["models"][corpus]["rows"][k_index]
            for method in METHODS:
                label = f"{corpus} {method.replace('_', '-')}"
                lines.append(f"     {label:<22}" + "  ".join(f"{p:4.2f}" for p in row[method]["offset_histogram"])
                             + f"  {row[method]['unreadable']:8.2f}")
    return "\n".join(lines)


def save_plot(report: dict, path: Path):
    plt = common.pyplot()
    if plt is None:
        return None
    ks = [b["k"] for b in report["bayes"]]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(ks, [b["map_accuracy"] for b in report["bayes"]], "k:", label="Bayes MAP")
    axes.plot(ks, [b["sampler_accuracy"] for b in report["bayes"]], "k--", label="Bayes sampler (perfect model, T = 1)")
    axes.axhline(report["chance_accuracy"], color="0.6", linestyle="-.", label="a uniformly random value (1/V)")
    styles = {("local", "direct"): "C3o-", ("local", "step_by_step"): "C0s-",
              ("control", "direct"): "C1o--", ("control", "step_by_step"): "C2s--"}
    for corpus in CORPORA:
        rows = report["models"][corpus]["rows"]
        for method in METHODS:
            mean = np.array([r[method]["accuracy"]["mean"] for r in rows])
            low = np.array([r[method]["accuracy"]["low"] for r in rows])
            high = np.array([r[method]["accuracy"]["high"] for r in rows])
            axes.errorbar(ks, mean, yerr=[mean - low, high - mean], fmt=styles[corpus, method], capsize=3,
                          label=f"{corpus} corpus, {method.replace('_', ' ')}")
    axes.set_xlabel("k, steps between x_0 and the asked message")
    axes.set_ylabel("accuracy q(v_k = answer | x_0)")
    axes.set_xticks(ks)
    axes.set_ylim(0, 1)
    axes.set_title("Chain-of-thought from locality: direct vs step-by-step answers", fontsize=10)
    axes.legend(fontsize=7)
    return common.save_figure(figure, path, plt, dpi=120)


def outputs(args) -> list:
    """Every file this script writes inside --out, relative to it: one training folder per corpus,
    the plot and the JSON. Checked before any work (``_common.check_outputs``)."""
    return common.run_files(*CORPORA) + common.report_files(NAME, args)


def parse_args(argv):
    parser = common.experiment_parser(PROGRAM, __doc__.splitlines()[0], default_out=f"out/{NAME}",
                                     json_name=f"{NAME}.json")
    parser.add_argument("--advance", type=float, default=SkipChain.advance,
                        help=f"probability that the value moves on by exactly one (default {SkipChain.advance})")
    parser.add_argument("--local-jump-rate", type=float, default=0.0,
                        help="share of messages in the local corpus that jump 2..k_max steps (default 0)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per model (default: the budget's)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts x_0 (default: the budget's)")
    args = parser.parse_args(argv)
    common.check_common(args, PROGRAM, outputs(args))
    common.require(math.isfinite(args.advance) and 0.0 < args.advance <= 1.0, f"--advance must be in (0, 1]; got {args.advance}")
    common.require(math.isfinite(args.local_jump_rate) and 0.0 <= args.local_jump_rate < 1.0,
                   f"--local-jump-rate must be in [0, 1); got {args.local_jump_rate}")
    common.require(math.isfinite(args.lr) and args.lr > 0.0, f"--lr must be > 0; got {args.lr}")
    common.require(args.steps is None or args.steps >= 1, f"--steps must be ≥ 1; got {args.steps}")
    common.require(args.prompts is None or args.prompts >= 2, f"--prompts must be ≥ 2; got {args.prompts}")
    return args


def run(args) -> dict:
    started = time.perf_counter()
    budget = BUDGETS[common.budget_of(args)]
    overrides = {key: value for key, value in (("steps", args.steps), ("prompts", args.prompts)) if value is not None}
    budget = Budget(**{**asdict(budget), **overrides})
    setup = SkipChain(advance=args.advance).check()
    languages = corpus_languages(setup, args.local_jump_rate)
    trained = train_models(languages, budget, args)
    reader = languages["local"]                           # the inner chains (what a message says) are shared
    rng = as_generator(np.random.SeedSequence([args.seed, 1]).generate_state(1)[0])
    prompts = sample_prompts(reader, setup, budget.prompts, rng)
    bayes = {k: bayes_values(reader, setup, prompts, k) for k in range(1, setup.max_jump + 1)}
    report = {
        "settings": {"budget": common.budget_of(args), **asdict(budget), "seed": args.seed, "device": args.device,
                     "lr": args.lr, "setup": asdict(setup), "local_jump_rate": args.local_jump_rate, "temperature": 1.0,
                     "accuracy": "q(v_k = v̂ | x_0) = (q(v_0 | x_0) W^k)[v̂], v̂ read off the answer by the exact "
                                 "oracle (MAP, uniform prior); mean and 95% interval over prompts"},
        "value_chain": value_chain(setup),
        "chance_accuracy": 1.0 / setup.values,  # Σ_v (1/V) q(v | x_0): an answer that ignores x_0 and k
        "bayes": [{"k": k, "map_accuracy": float(bayes[k].max(axis=1).mean()),
                   "sampler_accuracy": float((bayes[k] ** 2).sum(axis=1).mean()),
                   "offset_distribution": offset_distribution(setup, k)} for k in bayes],
        "models": {},
    }
    for corpus in CORPORA:
        model, summary = trained[corpus]
        report["models"][corpus] = {"language": languages[corpus].description, "training": summary,
                                    "rows": evaluate_model(model, reader, setup, prompts, bayes, rng)}
    print()
    print(f"{budget.prompts} prompts x_0; each model: {budget.steps} steps, "
          f"{trained['local'][1]['parameters']:,} parameters")
    for corpus in CORPORA:
        summary = trained[corpus][1]
        print(f"  {corpus:<8} corpus: val loss {summary['val_loss']:.4f} vs Bayes {summary['bayes_val_loss']:.4f} "
              f"(excess {summary['excess_val_loss']:.4f} nats/token)")
    print()
    print(format_table(report))
    print()
    print(format_offsets(report, setup))
    print()
    for corpus in CORPORA:
        rows = report["models"][corpus]["rows"]
        worst = min(r[m]["well_formed"] for r in rows for m in METHODS)
        exact = ", ".join(f"{r['direct_exact']['accuracy']:.3f}" for r in rows)
        mass = ", ".join(f"{r['direct_exact']['value_letter_mass']:.3f}" for r in rows)
        print(f"{corpus} model, direct, k = 1..{len(rows)}: p(a value letter right after the tag) {mass}; "
              f"accuracy of the value it would write (exact, from that letter) {exact}; "
              f"lowest share of well-formed answers over k and methods: {worst:.3f}")
    return common.finish(report, args, NAME, save_plot, started)


def main(argv=None) -> int:
    return common.run_main(PROGRAM, parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
