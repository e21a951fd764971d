"""Instruction tuning as an edit of the intention transitions: suppress a "bad" intention, keep the rest.

docs/claims.md §6 (the paper's Section 7). A response y to a prompt x is a mixture

    q(y | x) = Σ_θ q(θ | θ_x) q(y | θ),

so the best fine-tuning changes only the intention transitions q(θ | θ_x) = T[θ_x, θ]
(for instance, never answer with a "bad" intention) and leaves q(y | θ), the way each
intention writes, intact. This script pre-trains a GPT on a language, fine-tunes it on
the same language with an edited outer chain T' (the column of the bad intention zeroed,
every row renormalised), and measures, before and after:

(a) the **response-intention distribution**: after a prompt ``\\n x`` (x a message of
    intention θ_x) the model writes one message; the exact oracle reads that message's
    intention (MAP, uniform prior). The share of each intention, per θ_x, against the
    old row T[θ_x] and the new row T'[θ_x] (total variation), and the share of the bad
    intention. Beside it the model's exact first-letter distribution turned into an
    intention distribution (a cross-check without sampling noise: in this language a
    message's first letter already names its intention);
(b) the **inner chains**: inside messages of each intention θ (read after ``\\n``), the
    model's next-letter distribution against A_θ's row of the previous letter (which the
    edit does not touch), KL(A_θ[prev] ‖ p(· | prefix)) averaged over the letters 2…n of
    the message. Since the first letter names θ, the Bayes reader knows θ there, so
    this is the model's approximation error alone.

The language: the paper's letter chains (6 intentions, 18 letters, each intention its own
3-letter block; η = 0: unambiguous), messages of 8 letters (the paper's 21 make training
and sampling 2.5 times dearer and change nothing here), and a richer outer chain than the
paper's two-way circle, so that the edit moves several rows at once:
T[θ, θ] = 0.4, T[θ, θ+1] = 0.3, T[θ, θ+2] = 0.2, T[θ, θ+3] = 0.1 (mod 6).

Fine-tuning is an ordinary :func:`tinylatent.train.train` run whose step-0 checkpoint
holds the pre-trained weights (and fresh optimiser moments): see :func:`fine_tune`.

Usage (from the repository root):
    python examples/instruction_tuning.py            # default budget
    python examples/instruction_tuning.py --quick
    python examples/instruction_tuning.py --smoke    # seconds; the numbers mean nothing
    python examples/instruction_tuning.py --device gpu    # the models on a GPU (CuPy)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402  (first: it sets OPENBLAS_NUM_THREADS before NumPy loads)

import dataclasses  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

import numpy as np  # noqa: E402

from tinylatent import theorems as th  # noqa: E402
from tinylatent._io import json_ready  # noqa: E402
from tinylatent.checkpoint import CHECKPOINT_FILENAME, save_checkpoint  # noqa: E402
from tinylatent.evaluate import predictor_log_probs  # noqa: E402
from tinylatent.gpt import GPT  # noqa: E402
from tinylatent.language import Language, as_generator, fixed_length, paper_language, sample_messages  # noqa: E402
from tinylatent.optim import AdamW  # noqa: E402
from tinylatent.oracle import Oracle  # noqa: E402
from tinylatent.train import (LOG_FILENAME, RandomStreams, TrainConfig, bayes_validation_loss,  # noqa: E402
                              stream_windows, train, validation_loss)

PROGRAM = "instruction_tuning.py"
NAME = "instruction_tuning"
STAGES = ("pretrained", "fine_tuned")  # each has its training folder of that name inside --out
BASE_ROW = (0.4, 0.3, 0.2, 0.1)  # T[θ, θ + j] for j = 0..3: stay, then one, two, three intentions on


# ----------------------------------------------------------------------------------------
# The languages: the base, and the base with one intention suppressed
# ----------------------------------------------------------------------------------------

def base_language(message_letters: int = 8) -> Language:
    """The paper's inner chains (η = 0) under a four-way circulant outer chain (see the module docstring)."""
    paper = paper_language(0.0)
    n_intentions = paper.n_intentions
    transition = np.zeros((n_intentions, n_intentions), dtype=np.float64)
    for theta in range(n_intentions):
        for offset, probability in enumerate(BASE_ROW):
            transition[theta, (theta + offset) % n_intentions] += probability
    return dataclasses.replace(
        paper, transition=transition, initial=np.full(n_intentions, 1.0 / n_intentions),
        length_probs=fixed_length(message_letters), name=f"paper-chains(T=0.4/0.3/0.2/0.1, {message_letters} letters)",
        description=(f"the paper's letter chains (eta=0), {message_letters} letters a message, outer chain "
                     "T[i,i]=0.4, T[i,i+1]=0.3, T[i,i+2]=0.2, T[i,i+3]=0.1"))


def suppress_intention(transition: np.ndarray, bad: int) -> np.ndarray:
    """T' = T with column ``bad`` set to 0 and every row renormalised: no message is ever answered with ``bad``.

    Row θ becomes T[θ, ·] restricted to the other intentions, divided by 1 − T[θ, bad]:
    the odds among the remaining intentions are kept. A row with all its mass on ``bad``
    has nothing left to renormalise and is an error.
    """
    transition = np.asarray(transition, dtype=np.float64)
    n_intentions = transition.shape[0]
    if not 0 <= bad < n_intentions:
        raise ValueError(f"the bad intention must be in 0..{n_intentions - 1}; got {bad}")
    edited = transition.copy()
    edited[:, bad] = 0.0
    remaining = edited.sum(axis=1, keepdims=True)
    if np.any(remaining <= 0.0):
        rows = np.flatnonzero(remaining[:, 0] <= 0.0).tolist()
        raise ValueError(f"rows {rows} of T put all their mass on intention {bad}; suppressing it leaves nothing")
    return edited / remaining


def edited_language(language: Language, bad: int) -> Language:
    """The same inner chains with T' = :func:`suppress_intention` (and no document opening with ``bad``)."""
    initial = language.initial.copy()
    initial[bad] = 0.0
    return dataclasses.replace(
        th.with_transition(language, suppress_intention(language.transition, bad)),
        initial=initial / initial.sum(), name=f"{language.name} without intention {bad}",
        description=f"{language.description}; intention {bad} suppressed (column zeroed, rows renormalised)")


# ----------------------------------------------------------------------------------------
# Fine-tuning: a train() run that starts from given weights
# ----------------------------------------------------------------------------------------

def fine_tune(model: GPT, language: Language, train_config: TrainConfig, out_dir: Path, progress: bool = True):
    """Continue training ``model`` on ``language`` with a fresh optimiser and schedule; returns (model, summary).

    :func:`tinylatent.train.train` starts from random weights or resumes its own
    checkpoint. So we write the step-0 checkpoint of a new run whose weights are the
    pre-trained ones (optimiser moments empty, the data generator where a fresh run with
    this seed starts) and let ``train`` resume it: every step after that is an ordinary
    training step (warm-up, cosine decay, clipping, AdamW) on the new language.
    """
    out_dir = Path(out_dir)
    for name in (CHECKPOINT_FILENAME, LOG_FILENAME):
        (out_dir / name).unlink(missing_ok=True)
    config = train_config.resolved(model.config)
    data_rng = RandomStreams.generator(RandomStreams.from_seed(config.seed).data)
    save_checkpoint(out_dir / CHECKPOINT_FILENAME, params=model.params, optimizer_state=AdamW(
        config.weight_decay, config.betas).state_dict(), step=0, model_config=model.config,
        train_config=config.to_dict(), language=language, rng_state=data_rng.bit_generator.state, metrics={})
    return train(language, model.config, config, out_dir, resume=True, progress=progress)


# ----------------------------------------------------------------------------------------
# (a) Which intention does the model answer with?
# ----------------------------------------------------------------------------------------

def prompts_by_intention(language: Language, per_intention: int, rng) -> tuple:
    """``\\n x`` for ``per_intention`` messages x of every intention: tokens (K·N, 2 + letters), θ_x (K·N,)."""
    intentions = np.repeat(np.arange(language.n_intentions), per_intention)
    messages = np.stack(sample_messages(language, intentions, rng))
    return np.concatenate([np.zeros((len(intentions), 1), dtype=np.int64), messages], axis=1), intentions


def response_intentions(model: GPT, reader: Language, prompts: np.ndarray, prompt_intentions: np.ndarray,
                        rng) -> dict:
    """The model writes one message after each prompt; the oracle reads its intention.

    Returns ``sampled`` (K, K): row θ_x the share of responses read as each intention
    (among the responses that name one: ``readable_by_prompt_intention``),
    ``first_letter`` (K, K): the model's exact first-letter distribution pushed through
    q(θ | first letter) (uniform prior), and ``well_formed``: the share of responses
    that are one whole possible message (``well_formed_by_prompt_intention``: per θ_x).
    """
    n_intentions = reader.n_intentions
    responses = model.generate(prompts, reader.max_length + 1, rng)[:, prompts.shape[1]:]
    reading = common.read_intentions(reader, responses)
    sampled = np.zeros((n_intentions, n_intentions))
    readable = reading.readable
    np.add.at(sampled, (prompt_intentions[readable], reading.intention[readable]), 1.0)
    sampled /= np.maximum(sampled.sum(axis=1, keepdims=True), 1.0)                    # shares among readable responses
    first_letter_probs = common.next_token_probs(model, prompts)[:, 1:]                # (B, V) letters only
    first_letter_probs /= first_letter_probs.sum(axis=1, keepdims=True)
    intention_given_letter = reader.first_letter / reader.first_letter.sum(axis=0, keepdims=True)  # q(θ | c), uniform prior
    per_prompt = first_letter_probs @ np.nan_to_num(intention_given_letter).T           # (B, K)
    first_letter = np.zeros((n_intentions, n_intentions))
    np.add.at(first_letter, prompt_intentions, per_prompt)
    first_letter /= first_letter.sum(axis=1, keepdims=True)
    def by_prompt(flags):
        return np.array([flags[prompt_intentions == theta].mean() for theta in range(n_intentions)])

    return {"sampled": sampled, "first_letter": first_letter, "well_formed": float(reading.well_formed.mean()),
            "well_formed_by_prompt_intention": by_prompt(reading.well_formed),
            "readable_by_prompt_intention": by_prompt(readable)}


# ----------------------------------------------------------------------------------------
# (b) Did the way each intention writes survive?
# ----------------------------------------------------------------------------------------

def inner_chain_kl(model: GPT, language: Language, prompts: np.ndarray, prompt_intentions: np.ndarray) -> np.ndarray:
    """Per intention θ: mean over messages and letters 2..n of KL(A_θ[previous letter] ‖ p(next | ``\\n`` prefix)), (K,).

    The target q(x_{t+1} | x_{≤t}, θ) comes from the oracle told θ (phase "start": the
    message begins at its first letter); inside a message of fixed length it is exactly
    A_θ's row of the previous letter.
    """
    messages = prompts[:, 1:]                                                          # (B, n + 1) letters, delimiter
    n_letters = messages.shape[1] - 1
    target = Oracle(language).filter(messages, phase="start", predictive=False,
                                     known_intention=prompt_intentions).known_intention_predictive
    model_probs = np.exp(np.asarray(predictor_log_probs(model, prompts[:, :-1]), dtype=np.float64))
    # model position t + 1 (after "\n" x_1..x_{t+1}) is oracle position t (after x_1..x_{t+1}); t = 0..n−2 predict letters 2..n
    kl = th.kl_divergence(target[:, :n_letters - 1], model_probs[:, 1:n_letters])      # (B, n − 1)
    per_message = kl.mean(axis=1)
    return np.array([per_message[prompt_intentions == theta].mean() for theta in range(language.n_intentions)])


# ----------------------------------------------------------------------------------------
# Budgets, the run, the report
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    context_length: int
    n_layer: int
    n_head: int
    d_model: int
    per_intention: int    # prompts per intention, for (a) and (b)
    eval_windows: int


BUDGETS = {
    "smoke": Budget(pretrain_steps=20, finetune_steps=10, batch_size=4, context_length=32, n_layer=1, n_head=2,
                    d_model=16, per_intention=8, eval_windows=8),
    "quick": Budget(pretrain_steps=1500, finetune_steps=500, batch_size=12, context_length=64, n_layer=2, n_head=4,
                    d_model=64, per_intention=100, eval_windows=64),
    "default": Budget(pretrain_steps=3000, finetune_steps=1000, batch_size=12, context_length=64, n_layer=2,
                      n_head=4, d_model=64, per_intention=300, eval_windows=128),
}


def measure(model: GPT, base: Language, edited: Language, prompts, prompt_intentions, validation: dict, rng) -> dict:
    """Everything measured on one model (before or after fine-tuning)."""
    responses = response_intentions(model, base, prompts, prompt_intentions, rng)
    return {
        "response_intentions": responses,
        "tv_to_old_T": th.total_variation(responses["sampled"], base.transition),
        "tv_to_new_T": th.total_variation(responses["sampled"], edited.transition),
        "first_letter_tv_to_old_T": th.total_variation(responses["first_letter"], base.transition),
        "first_letter_tv_to_new_T": th.total_variation(responses["first_letter"], edited.transition),
        "inner_chain_kl": inner_chain_kl(model, base, prompts, prompt_intentions),
        "val_loss": {name: validation_loss(model, windows) for name, windows in validation.items()},
    }


def format_report(report: dict, bad: int) -> str:
    base_T = np.array(report["T"]["old"])
    new_T = np.array(report["T"]["new"])
    before, after = (report["stages"][stage] for stage in STAGES)
    n = base_T.shape[0]
    lines = [f"(a) response intentions after a prompt of intention θ_x (the oracle reads each response); bad = {bad}",
             "    θ_x  " + "  ".join(f"{'to ' + str(j):>6}" for j in range(n)) + "   TV to old T  TV to new T"]
    for theta in range(n):
        lines.append(f"    {theta}  old T  " + "  ".join(f"{p:6.3f}" for p in base_T[theta]))
        lines.append("       new T  " + "  ".join(f"{p:6.3f}" for p in new_T[theta]))
        for label, stage in (("before", before), ("after ", after)):
            row = np.array(stage["response_intentions"]["sampled"][theta])
            lines.append(f"       {label} " + "  ".join(f"{p:6.3f}" for p in row)
                         + f"   {stage['tv_to_old_T'][theta]:11.3f}  {stage['tv_to_new_T'][theta]:11.3f}")
    lines.append("")
    for label, stage in (("before", before), ("after", after)):
        sampled = np.array(stage["response_intentions"]["sampled"])
        first = np.array(stage["response_intentions"]["first_letter"])
        lines.append(f"    {label:<6}: mean TV to old T {np.mean(stage['tv_to_old_T']):.3f}, to new T "
                     f"{np.mean(stage['tv_to_new_T']):.3f}; share of responses with the bad intention "
                     f"{sampled[:, bad].mean():.4f} (exact first-letter version {first[:, bad].mean():.4f}); "
                     f"well-formed {stage['response_intentions']['well_formed']:.3f}")
    for label, stage in (("before", before), ("after", after)):
        shares = ", ".join(f"{share:.2f}" for share in stage["response_intentions"]["well_formed_by_prompt_intention"])
        readable = ", ".join(f"{share:.2f}" for share in stage["response_intentions"]["readable_by_prompt_intention"])
        lines.append(f"    well-formed responses by prompt intention θ_x = 0..{n - 1}, {label}: {shares}; "
                     f"naming an intention: {readable}")
    lines.append(f"    sampling noise: each row holds {report['settings']['per_intention']} responses")
    lines.append("")
    lines.append("(b) inner chains: KL(A_θ[prev] ‖ model's next letter) inside messages of θ, nats per letter")
    lines.append("    θ      " + "  ".join(f"{theta:>8}" for theta in range(n)))
    for label, stage in (("before", before), ("after", after)):
        lines.append(f"    {label:<6} " + "  ".join(f"{v:8.4f}" for v in stage["inner_chain_kl"]))
    lines.append("")
    lines.append("validation loss (nats/token) on windows of each language, and the exact Bayes loss")
    for name in ("old", "new"):
        values = ", ".join(f"{label} {report['stages'][stage]['val_loss'][name]:.4f}"
                           for label, stage in (("before", "pretrained"), ("after", "fine_tuned")))
        lines.append(f"    {name} T: {values}; Bayes {report['bayes_val_loss'][name]:.4f}")
    return "\n".join(lines)


def save_plot(report: dict, bad: int, path: Path):
    plt = common.pyplot()
    if plt is None:
        return None
    old, new = np.array(report["T"]["old"]), np.array(report["T"]["new"])
    n = old.shape[0]
    figure, axes = plt.subplots(2, n // 2 + 1, figsize=(13, 6))
    axes = axes.ravel()
    width = 0.2
    x = np.arange(n)
    for theta in range(n):
        ax = axes[theta]
        ax.bar(x - 1.5 * width, old[theta], width, color="0.7", label="old T row")
        ax.bar(x - 0.5 * width, report["stages"]["pretrained"]["response_intentions"]["sampled"][theta], width,
               color="C0", label="model before")
        ax.bar(x + 0.5 * width, new[theta], width, color="0.3", label="new T' row")
        ax.bar(x + 1.5 * width, report["stages"]["fine_tuned"]["response_intentions"]["sampled"][theta], width,
               color="C3", label="model after")
        ax.set_title(f"prompt intention {theta}" + (" (bad)" if theta == bad else ""), fontsize=9)
        ax.set_xticks(x)
        ax.set_ylim(0, 1)
        ax.axvline(bad, color="C3", alpha=0.2, linewidth=8)
        if theta == 0:
            ax.legend(fontsize=6)
    ax = axes[n]
    ax.bar(x - 0.2, report["stages"]["pretrained"]["inner_chain_kl"], 0.4, color="C0", label="before")
    ax.bar(x + 0.2, report["stages"]["fine_tuned"]["inner_chain_kl"], 0.4, color="C3", label="after")
    ax.set_title("inner chains: KL(A_θ ‖ model)", fontsize=9)
    ax.set_xlabel("intention θ")
    ax.set_xticks(x)
    ax.legend(fontsize=6)
    for extra in axes[n + 1:]:
        extra.axis("off")
    figure.suptitle(f"Instruction tuning: intention {bad} suppressed in T; response intentions and inner chains",
                    fontsize=10)
    return common.save_figure(figure, path, plt, dpi=110)


def outputs(args) -> list:
    """Every file this script writes inside --out, relative to it: the training folders of the two
    stages, the plot and the JSON. Checked before any work (``_common.check_outputs``)."""
    return common.run_files(*STAGES) + common.report_files(NAME, args)


def parse_args(argv):
    parser = common.experiment_parser(PROGRAM, __doc__.splitlines()[0], default_out=f"out/{NAME}",
                                     json_name=f"{NAME}.json")
    parser.add_argument("--bad", type=int, default=2, help="the intention to suppress, 0..5 (default 2)")
    parser.add_argument("--lr", type=float, default=3e-3, help="pre-training peak learning rate (default 3e-3)")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning peak learning rate (default 1e-3)")
    parser.add_argument("--message-letters", type=int, default=8, help="letters in a message (default 8; the paper: 21)")
    args = parser.parse_args(argv)
    common.check_common(args, PROGRAM, outputs(args))
    common.require(0 <= args.bad < 6, f"--bad must be an intention in 0..5; got {args.bad}")
    for name in ("lr", "finetune_lr"):
        value = getattr(args, name)
        common.require(math.isfinite(value) and value > 0.0, f"--{name.replace('_', '-')} must be > 0; got {value}")
    common.require(2 <= args.message_letters <= 21, f"--message-letters must be in 2..21; got {args.message_letters}")
    return args


def run(args) -> dict:
    started = time.perf_counter()
    budget = BUDGETS[common.budget_of(args)]
    base = base_language(args.message_letters)
    edited = edited_language(base, args.bad)
    model_config = common.small_model(base.vocab_size, budget.context_length, budget.n_layer, budget.n_head,
                                      budget.d_model)
    common_settings = dict(batch_size=budget.batch_size, eval_windows=budget.eval_windows, seed=args.seed,
                           device=args.device)
    pretrain_config = TrainConfig(steps=budget.pretrain_steps, max_lr=args.lr, checkpoint_interval=budget.pretrain_steps,
                                  eval_interval=max(1, budget.pretrain_steps // 5), **common_settings)
    finetune_config = TrainConfig(steps=budget.finetune_steps, max_lr=args.finetune_lr,
                                  checkpoint_interval=budget.finetune_steps,
                                  eval_interval=max(1, budget.finetune_steps // 5), **common_settings)
    progress = not args.no_progress
    pretrained_dir, fine_tuned_dir = (args.out / stage for stage in STAGES)
    if progress:
        print(f"pre-training on {base.description}", file=sys.stderr)
    pretrained, pretrain_summary = common.train_fresh(base, model_config, pretrain_config, pretrained_dir,
                                                      progress=progress)
    if progress:
        print(f"fine-tuning on the edited language: {edited.description}", file=sys.stderr)
    # fine_tune leaves ``pretrained`` as it is: train() resumes into new arrays read from the checkpoint
    fine_tuned, finetune_summary = fine_tune(pretrained, edited, finetune_config, fine_tuned_dir, progress=progress)

    rng = as_generator(np.random.SeedSequence([args.seed, 2]).generate_state(1)[0])
    prompts, prompt_intentions = prompts_by_intention(base, budget.per_intention, rng)
    window_rng = np.random.default_rng(np.random.SeedSequence([args.seed, 3]))
    validation = {name: stream_windows(lang, budget.eval_windows, budget.context_length + 1, window_rng)
                  for name, lang in (("old", base), ("new", edited))}
    report = {
        "settings": {"budget": common.budget_of(args), **asdict(budget), "seed": args.seed, "device": args.device,
                     "bad": args.bad,
                     "lr": args.lr, "finetune_lr": args.finetune_lr, "message_letters": args.message_letters,
                     "parameters": pretrain_summary["parameters"],
                     "response_reading": "MAP intention of the generated message, exact oracle, uniform prior"},
        "language": base.description,
        "T": {"old": base.transition, "new": edited.transition},
        "bayes_val_loss": {name: bayes_validation_loss(lang, validation[name])
                           for name, lang in (("old", base), ("new", edited))},
        "training": {"pretrain": pretrain_summary, "finetune": finetune_summary},
        "stages": {},
    }
    for stage, model in zip(STAGES, (pretrained, fine_tuned)):
        report["stages"][stage] = measure(model, base, edited, prompts, prompt_intentions, validation, rng)
    report = json_ready(report)
    print()
    print(f"model: {report['settings']['parameters']:,} parameters; pre-trained {budget.pretrain_steps} steps, "
          f"fine-tuned {budget.finetune_steps} steps")
    print(format_report(report, args.bad))
    return common.finish(report, args, NAME, lambda data, path: save_plot(data, args.bad, path), started)


def main(argv=None) -> int:
    return common.run_main(PROGRAM, parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
