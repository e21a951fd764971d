"""Emergence: language understanding and in-context learning along training, for three model sizes.

docs/claims.md §3–4 and the paper's thesis: an LLM's abilities are properties of the *true*
language q (its sparse joint q(θ, x)); a model p shows them to the degree that it
approximates q. So an ability should "emerge" as the model's approximation error falls,
whatever the model's size or training step, and a smaller model should show it later or
not at all. This script trains three GPTs of different sizes on one language, takes
checkpoints along each run, and measures at each one (with :mod:`tinylatent.evaluate`):

* the **approximation error**: excess cross-entropy over the exact Bayes cross-entropy on
  fixed windows of the stream, E KL(q(·|x) ‖ p(·|x)) in nats/token;
* **language understanding**: prompts ``\\n`` + the first n = 1…6 letters of a message of
  θ*; KL(q(·|x, θ*) ‖ p(·|x)), averaged over n, split into the ambiguity part (what the
  exact reader q still scores) and the approximation part (the model's own share);
* **in-context learning**: m examples of θ*, then the first letter of a query message of
  θ*; KL(q(·|query, θ*) ‖ p(·|prompt)) at every m, split the same way. A model "does ICL"
  when its KL falls with m as the Bayes reader's does (the language's ambiguity part falls
  from its m = 0 value to about 0 by m = 4).

The language is the one where every one of these numbers means something: the paper's
letter chains with the first letter noised too and the intention fixed for a whole
document (``paper-noisy-first-mixture``, η = 0.02, docs/claims.md §4, §8): a single message is
genuinely ambiguous (ε(x) > 0), and examples from the same θ* remove the ambiguity.

"Checkpoints along one run": each size trains with a constant learning rate after a short
warm-up, and the run is continued from its checkpoint to each next snapshot step
(:func:`tinylatent.train.train` with ``resume=True``). With a constant rate the
schedule does not depend on where the run stops, so the snapshot at step s is exactly the
state that one uninterrupted run passes through at step s (resume is bit for bit,
docs/training.md). A cosine schedule would make every snapshot the end of a different run.

The report gives, per size, the first snapshot at which each ability's approximation part
falls below ``--threshold`` (default 0.05 nats), and plots every metric against the step
and against the approximation error.

Usage (from the repository root):
    python examples/emergence.py            # default budget
    python examples/emergence.py --quick
    python examples/emergence.py --smoke    # seconds; the numbers mean nothing
    python examples/emergence.py --device gpu    # the models on a GPU (CuPy)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402  (first: it sets OPENBLAS_NUM_THREADS before NumPy loads)

import math  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Optional  # noqa: E402

import numpy as np  # noqa: E402

from tinylatent import evaluate as ev  # noqa: E402
from tinylatent import theorems as th  # noqa: E402
from tinylatent._io import json_ready  # noqa: E402
from tinylatent.gpt import GPTConfig  # noqa: E402
from tinylatent.language import DELIMITER_ID, PRESETS, Language, preset  # noqa: E402
from tinylatent.oracle import Oracle  # noqa: E402
from tinylatent.train import TrainConfig, stream_windows, train  # noqa: E402

PROGRAM = "emergence.py"
NAME = "emergence"
DRAWN_FLOOR = 1e-3  # nats: the lowest KL the log-scale plots show
SURE = 1e-3         # q(\n | x) above 1 − SURE: the message surely ends here; below SURE: it surely goes on


@dataclass(frozen=True)
class ModelSize:
    name: str
    n_layer: int
    n_head: int
    d_model: int


SIZES = (  # all at or below GPTConfig.small (2 layers, 4 heads, width 64)
    ModelSize("tiny", 1, 2, 16),
    ModelSize("mini", 2, 2, 32),
    ModelSize("small", 2, 4, 64),
)


@dataclass(frozen=True)
class Budget:
    snapshots: tuple      # the steps at which each run is measured (increasing)
    warmup_steps: int     # linear warm-up, then a constant rate
    batch_size: int
    context_length: int
    max_examples: int     # ICL with m = 0..max_examples (what fits the context)
    max_letters: int      # understanding prompts of 1..max_letters letters
    prompts: int          # prompts per prompt length and per m
    windows: int          # convergence windows per snapshot
    eval_windows: int     # validation windows inside each training segment


BUDGETS = {
    "smoke": Budget(snapshots=(2, 4), warmup_steps=1, batch_size=2, context_length=48, max_examples=1, max_letters=3,
                    prompts=4, windows=4, eval_windows=4),
    "quick": Budget(snapshots=(100, 300, 600, 1000), warmup_steps=25, batch_size=12, context_length=128,
                    max_examples=4, max_letters=6, prompts=100, windows=32, eval_windows=16),
    "default": Budget(snapshots=(100, 200, 400, 600, 900, 1400, 2000, 3000), warmup_steps=25, batch_size=12,
                      context_length=128, max_examples=5, max_letters=6, prompts=200, windows=64, eval_windows=32),
}


# ----------------------------------------------------------------------------------------
# Measuring one checkpoint
# ----------------------------------------------------------------------------------------

class Probes:
    """The fixed windows, understanding prompts and ICL tasks every checkpoint is measured on.

    Fixed across checkpoints and sizes, so differences between two measurements are the
    models' and not the prompts' (the intervals are over prompts, per checkpoint).
    """

    def __init__(self, language: Language, budget: Budget, seed: int):
        window_seed, prompt_seed, task_seed = np.random.SeedSequence([seed, 4]).spawn(3)
        self.windows = stream_windows(language, budget.windows, budget.context_length + 1,
                                      np.random.default_rng(window_seed))
        self.prompts = ev.sample_understanding_prompts(language, budget.prompts, budget.max_letters,
                                                       np.random.default_rng(prompt_seed))
        self.tasks = th.sample_icl_tasks(language, budget.prompts, budget.max_examples, query_letters=1,
                                         seed=np.random.default_rng(task_seed), prior=language.stationary_intentions())


def _parts(split: ev.KLSplit) -> dict:
    return {part: ev.Estimate.of(getattr(split, part))._asdict() for part in ev.KLSplit._fields}


def message_end_probability(model, language: Language, windows: np.ndarray) -> dict:
    """Mean p(``\n`` | x) over the positions where the exact reader is sure a message ends (q(``\n`` | x) > 0.999).

    A skill every KL here depends on and none is about: counting the letters since the
    last delimiter (21 in the paper's messages). Windows need room for a delimiter and a
    whole message after it (more than 44 tokens) for the reader to be sure of an end. A model that has not learned it spreads
    some probability on the delimiter everywhere, and pays for it at every position.
    Also returns the mean p(``\n``) where the reader is sure the message goes on.
    """
    inputs = windows[:, :-1]
    bayes = Oracle(language).filter(inputs, phase="unknown").predictive[..., DELIMITER_ID]   # (B, T)
    model_delimiter = np.exp(ev.predictor_log_probs(model, inputs)[..., DELIMITER_ID])
    ends, inside = bayes > 1.0 - SURE, bayes < SURE
    return {"at_message_ends": ev.Estimate.of(model_delimiter[ends])._asdict(),
            "inside_messages": ev.Estimate.of(model_delimiter[inside])._asdict(),
            "positions": {"at_message_ends": int(ends.sum()), "inside_messages": int(inside.sum())}}


def measure(model, language: Language, probes: Probes, max_examples: int) -> dict:
    """Approximation error, understanding and ICL of one model, each an Estimate dict (mean, low, high)."""
    convergence = ev.convergence(model, language, probes.windows)
    understanding = ev.language_understanding(model, language, probes.prompts, leading_delimiter=True)
    # per prompt: the mean over the lengths n = 1..N of each part; then a mean and interval over prompts
    averaged = ev.KLSplit(*(np.mean([getattr(row.known_intention, part) for row in understanding.rows], axis=0)
                            for part in ev.KLSplit._fields))
    icl = ev.in_context_learning(model, language, probes.tasks, max_examples)
    return {
        "excess_cross_entropy": ev.Estimate.of(convergence.excess_cross_entropy)._asdict(),
        "understanding": _parts(averaged),
        "icl": {row.n_examples: _parts(row.known_intention) for row in icl.rows},
        "icl_skipped": [m for m, _ in icl.skipped],
        "delimiter": message_end_probability(model, language, probes.windows),
    }


# ----------------------------------------------------------------------------------------
# One run per size, measured at each snapshot
# ----------------------------------------------------------------------------------------

def model_config(size: ModelSize, vocab_size: int, context_length: int) -> GPTConfig:
    return common.small_model(vocab_size, context_length, size.n_layer, size.n_head, size.d_model)


def run_size(size: ModelSize, language: Language, budget: Budget, probes: Probes, args) -> dict:
    """Train one size to each snapshot in turn (one run, continued) and measure every snapshot."""
    config = model_config(size, language.vocab_size, budget.context_length)
    out_dir = args.out / size.name
    measurements, parameters = [], None
    for index, step in enumerate(budget.snapshots):
        # constant rate after warm-up (min_lr = max_lr): the schedule is the same whatever `steps` says
        train_config = TrainConfig(steps=step, batch_size=budget.batch_size, max_lr=args.lr, min_lr=args.lr,
                                   warmup_steps=budget.warmup_steps, eval_interval=max(1, budget.snapshots[-1] // 8),
                                   eval_windows=budget.eval_windows, checkpoint_interval=budget.snapshots[-1],
                                   seed=args.seed, device=args.device)
        if index == 0:
            model, summary = common.train_fresh(language, config, train_config, out_dir, progress=False)
        else:
            model, summary = train(language, config, train_config, out_dir, resume=True, progress=False)
        parameters = summary["parameters"]
        measurement = measure(model, language, probes, budget.max_examples)
        measurement["step"] = step
        measurements.append(measurement)
        if not args.no_progress:
            icl = measurement["icl"][max(measurement["icl"])]["total"]["mean"]
            print(f"  {size.name:<6} step {step:>5}: excess {measurement['excess_cross_entropy']['mean']:.4f}  "
                  f"understanding KL {measurement['understanding']['total']['mean']:.4f}  "
                  f"ICL KL (m={max(measurement['icl'])}) {icl:.4f}", file=sys.stderr)
    return {"size": asdict(size), "parameters": parameters, "measurements": measurements}


def emerged_at(measurements: list, ability: str, threshold: float, m: Optional[int] = None) -> Optional[int]:
    """The first snapshot step whose approximation part is below ``threshold``, or None."""
    for measurement in measurements:
        value = measurement[ability] if m is None else measurement[ability][m]
        if value["approximation"]["mean"] < threshold:
            return measurement["step"]
    return None


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------

def _with_interval(estimate: dict) -> str:
    """``mean ±half-width`` of a 95% interval."""
    return f"{estimate['mean']:.4f} ±{(estimate['high'] - estimate['low']) / 2:.4f}"


def format_tables(report: dict) -> str:
    m_max = report["settings"]["icl_m"]
    lines = []
    for run in report["runs"]:
        size = run["size"]
        lines.append(f"{size['name']}: {size['n_layer']} layer(s), {size['n_head']} heads, width {size['d_model']}, "
                     f"{run['parameters']:,} parameters")
        header = (f"  {'step':>5}  {'excess CE':>14}  {'p(end)':>6}  {'underst. KL':>14}  {'(approx.)':>9}  "
                  + "  ".join(f"{'ICL m=' + str(m):>7}" for m in range(m_max)) + f"  {'ICL m=' + str(m_max):>14}"
                  + f"  {'(approx.)':>9}")
        lines.append(header)
        for measurement in run["measurements"]:
            icl = measurement["icl"]
            lines.append(
                f"  {measurement['step']:>5}  {_with_interval(measurement['excess_cross_entropy']):>14}  "
                f"{measurement['delimiter']['at_message_ends']['mean']:6.3f}  "
                f"{_with_interval(measurement['understanding']['total']):>14}  "
                f"{measurement['understanding']['approximation']['mean']:9.4f}  "
                + "  ".join(f"{icl[m]['total']['mean']:7.4f}" for m in range(m_max))
                + f"  {_with_interval(icl[m_max]['total']):>14}  {icl[m_max]['approximation']['mean']:9.4f}")
        lines.append("")
    bayes = report["bayes_floor"]
    lines.append("p(end): the model's mean p(\\n) where the exact reader is sure the message ends (1 for q)")
    lines.append(f"exact Bayes reader (ambiguity parts, the floor of every KL): understanding {bayes['understanding']:.4f}; "
                 "ICL " + ", ".join(f"m={m}: {v:.4f}" for m, v in enumerate(bayes["icl"])))
    threshold = report["settings"]["threshold"]
    lines.append(f"first snapshot whose approximation part is below {threshold:g} nats "
                 f"(understanding; ICL at m = {m_max}):")
    for run in report["runs"]:
        found = run["emerged_at"]
        lines.append(f"  {run['size']['name']:<6} understanding: {found['understanding'] or 'not within the run'}; "
                     f"ICL: {found['icl'] or 'not within the run'}")
    return "\n".join(lines)


def save_plot(report: dict, path: Path):
    plt = common.pyplot()
    if plt is None:
        return None
    m_max = report["settings"]["icl_m"]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    (ax_excess, ax_understanding), (ax_icl, ax_versus) = axes
    bayes = report["bayes_floor"]
    for index, run in enumerate(report["runs"]):
        color = f"C{index}"
        label = f"{run['size']['name']} ({run['parameters']:,} params)"
        steps = [m["step"] for m in run["measurements"]]
        excess = [m["excess_cross_entropy"]["mean"] for m in run["measurements"]]
        understanding = [m["understanding"]["total"]["mean"] for m in run["measurements"]]
        icl_last = [m["icl"][m_max]["total"]["mean"] for m in run["measurements"]]
        icl_first = [m["icl"][0]["total"]["mean"] for m in run["measurements"]]
        ax_excess.plot(steps, excess, "o-", color=color, label=label)
        missed_ends = [1.0 - m["delimiter"]["at_message_ends"]["mean"] for m in run["measurements"]]
        ax_excess.plot(steps, missed_ends, "x:", color=color, label=f"{run['size']['name']}: 1 − p(\\n) at message ends")
        ax_understanding.plot(steps, understanding, "o-", color=color, label=label)
        ax_icl.plot(steps, icl_last, "o-", color=color, label=f"{label}, m={m_max}")
        ax_icl.plot(steps, icl_first, "o:", color=color, alpha=0.6, label=f"{run['size']['name']}, m=0")
        ax_versus.plot(excess, understanding, "o-", color=color, label=f"{run['size']['name']}: understanding")
        ax_versus.plot(excess, icl_last, "s--", color=color, label=f"{run['size']['name']}: ICL m={m_max}")
    ax_understanding.axhline(bayes["understanding"], color="k", linestyle="--", label="exact Bayes")
    for m, style in ((m_max, "--"), (0, ":")):
        if bayes["icl"][m] >= DRAWN_FLOOR:   # the exact reader's KL is often 0 up to rounding: nothing to draw
            ax_icl.axhline(bayes["icl"][m], color="k", linestyle=style, label=f"exact Bayes, m={m}")
        else:
            ax_icl.plot([], [], " ", label=f"exact Bayes, m={m}: {bayes['icl'][m]:.0e} (below the axis)")
    ax_icl.set_ylim(bottom=DRAWN_FLOOR)
    for ax, title in ((ax_excess, "approximation error: excess cross-entropy (nats/token); dotted: 1 − p(\\n) at ends"),
                      (ax_understanding, "understanding: KL(q(·|x,θ*) ‖ p(·|x)), mean over 1–6 letters"),
                      (ax_icl, f"ICL: KL(q(·|query,θ*) ‖ p(·|prompt)) with m={m_max} and m=0 examples")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    ax_versus.set_xscale("log")
    ax_versus.set_yscale("log")
    from matplotlib.ticker import NullFormatter
    ax_versus.xaxis.set_minor_formatter(NullFormatter())   # the minor labels of a short log axis overlap
    ax_versus.set_xlabel("excess cross-entropy (nats/token)")
    ax_versus.set_ylabel("KL (nats)")
    ax_versus.set_title("abilities against the approximation error (all sizes, all steps)", fontsize=9)
    ax_versus.legend(fontsize=6)
    figure.suptitle(f"Emergence on {report['language']}", fontsize=10)
    return common.save_figure(figure, path, plt, dpi=110)


def outputs(args) -> list:
    """Every file this script writes inside --out, relative to it: one training folder per model size,
    the plot and the JSON. Checked before any work (``_common.check_outputs``)."""
    return common.run_files(*(size.name for size in SIZES)) + common.report_files(NAME, args)


def parse_args(argv):
    parser = common.experiment_parser(PROGRAM, __doc__.splitlines()[0], default_out=f"out/{NAME}",
                                     json_name=f"{NAME}.json")
    parser.add_argument("--language", choices=PRESETS, default="paper-noisy-first-mixture",
                        help="the language preset (default paper-noisy-first-mixture)")
    parser.add_argument("--eta", type=float, default=0.02, help="its noise η (default 0.02)")
    parser.add_argument("--lr", type=float, default=3e-3, help="the constant learning rate after warm-up (default 3e-3)")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="an ability counts as present when its approximation part is below this (nats, default 0.05)")
    args = parser.parse_args(argv)
    common.check_common(args, PROGRAM, outputs(args))
    common.require(math.isfinite(args.eta) and args.eta >= 0.0, f"--eta must be ≥ 0; got {args.eta}")
    common.require(math.isfinite(args.lr) and args.lr > 0.0, f"--lr must be > 0; got {args.lr}")
    common.require(math.isfinite(args.threshold) and args.threshold > 0.0, f"--threshold must be > 0; got {args.threshold}")
    return args


def run(args) -> dict:
    started = time.perf_counter()
    budget = BUDGETS[common.budget_of(args)]
    language = preset(args.language, args.eta)
    probes = Probes(language, budget, args.seed)
    bayes_reader = ev.OraclePredictor(language)
    floor = measure(bayes_reader, language, probes, budget.max_examples)
    m_max = max(floor["icl"])
    report = {
        "settings": {"budget": common.budget_of(args), **asdict(budget), "seed": args.seed, "device": args.device,
                     "lr": args.lr, "threshold": args.threshold, "icl_m": m_max, "schedule": "linear warm-up, then constant",
                     "understanding": "prompt \\n + 1..N letters of a message of θ*, target q(·|x, θ*), mean over N",
                     "icl": "prompt \\n + m examples of θ* + the query's first letter, target q(·|query, θ*)"},
        "language": language.name,
        "bayes_floor": {"understanding": floor["understanding"]["ambiguity"]["mean"],
                        "icl": [floor["icl"][m]["ambiguity"]["mean"] for m in range(m_max + 1)]},
        "runs": [],
    }
    for size in SIZES:
        if not args.no_progress:
            print(f"training {size.name} to steps {', '.join(map(str, budget.snapshots))}", file=sys.stderr)
        result = run_size(size, language, budget, probes, args)
        result["emerged_at"] = {"understanding": emerged_at(result["measurements"], "understanding", args.threshold),
                                "icl": emerged_at(result["measurements"], "icl", args.threshold, m=m_max)}
        report["runs"].append(result)
    report = json_ready(report)
    for run_report in report["runs"]:  # JSON keys are strings; index the ICL rows by m again for the tables
        for measurement in run_report["measurements"]:
            measurement["icl"] = {int(m): value for m, value in measurement["icl"].items()}
    print()
    print(f"{language.name}: {budget.prompts} prompts per length and per m, {budget.windows} windows of "
          f"{budget.context_length + 1} tokens; constant lr {args.lr:g} after {budget.warmup_steps} warm-up steps")
    print(format_tables(report))
    return common.finish(report, args, NAME, save_plot, started)


def main(argv=None) -> int:
    return common.run_main(PROGRAM, parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
