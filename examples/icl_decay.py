"""In-context learning: how fast the exact Bayes error about the task's intention falls with examples.

docs/claims.md §4: in a *mixture* language (one intention θ* per document) the posterior error
after m examples is at most max π ratio · Π_i ε_i / (1 − ε_i), so it decays exponentially
in m; the paper states the rate as ε_0^{m+2}. docs/claims.md §8: in the paper's own language
the intention of consecutive messages changes with probability 0.5, so a reader of that
language cannot be sure the query continues the examples' intention, and the error need
not go to zero. This script measures both with the exact oracle (a perfect LM, p = q);
docs/theory.md §4 has the proofs and the measured tables.

Prompt: m example messages (each with its delimiter) written under θ*, then a query: the
first letter(s) of one more message under θ* (``--query-letters``, default 1; at most the
letters of a message).
Target: q(· | query, θ*), the next token of the query's message when θ* is known.
Per m it reports, over ``--trials`` prompts: the Bayes error 1 − q(θ* | prompt) (mean and a
95% normal-approximation interval, clipped at 0), KL(target ‖ Bayes predictive), the
proven bound (mixture languages), the paper's ε_0^{m+2} (ε_0 = max_i ε_i of the prompt's
examples, each read alone under a uniform prior), and a least-squares fit of
log(mean error) against m (rate = exp(slope): the factor per example).
It then prints the paper's own ICL numbers (a trained model, docs/claims.md §7) beside the
exact Bayes values in the paper's setting.

Usage (from the repository root):
    python examples/icl_decay.py                        # the default run, under a minute on 2 cores
    python examples/icl_decay.py --eta 0.02 0.06 --trials 1000 --json out/icl.json

Everything that reads a prompt goes through a *predictor*, a map from prompts to
next-token distributions: :class:`ExactBayes` (the oracle) and, with ``--model CHECKPOINT``
or ``--train``, :class:`TrainedModel` (a GPT), whose KL curve is printed and plotted
beside the oracle's for the language it was trained on:

    python examples/icl_decay.py --model runs/train/ckpt.npz    # a checkpoint of `tinylatent train`
    python examples/icl_decay.py --train --language paper-noisy-first-mixture --eta 0.02
    python examples/icl_decay.py --train --device gpu    # train and read the model on a GPU (CuPy)

``--train`` trains into OUT/icl_decay_model_<language>/ and a later run with the same
settings reuses that model; other ``--train-steps`` (fewer) or ``--seed`` need another ``--out``.
The output paths are checked before anything is computed: ``--json PATH`` refuses an existing
file unless ``--force``, and so do OUT/icl_decay.png and the model's files unless a run of this
script wrote them and they are unchanged since (examples/_common.py, ``check_outputs``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402  (first: it sets OPENBLAS_NUM_THREADS=1 before NumPy loads; it also makes tinylatent importable)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple, Optional, Protocol, Sequence  # noqa: E402

import numpy as np  # noqa: E402

from tinylatent import theorems as th
from tinylatent._io import write_json
from tinylatent.backend import array_module, to_host
from tinylatent.cli import add_device_argument
from tinylatent.language import DELIMITER_ID, Language, mixture_language, preset
from tinylatent.paper_results import PAPER_RESULTS

PROGRAM = "icl_decay.py"
DEFAULT_ETAS = (0.0, 0.02, 0.04)
DEFAULT_LANGUAGES = ("paper-mixture", "paper-noisy-first-mixture", "paper", "paper-noisy-first")
PLOT_NAME = "icl_decay.png"

PAPER_ICL_KL = PAPER_RESULTS["icl_kl"]  # docs/claims.md §7: the paper's trained model, m = 1..4


# ----------------------------------------------------------------------------------------
# Predictors: anything that maps prompts to next-token distributions
# ----------------------------------------------------------------------------------------

class Predictor(Protocol):
    """A reader of prompts: ``next_token_distribution(prompts)`` -> (B, V + 1) rows that sum to 1."""

    name: str

    def next_token_distribution(self, prompts: Sequence[np.ndarray]) -> np.ndarray: ...


class ExactBayes:
    """The exact Bayes reader of a language (the oracle): q(x_{T+1} | prompt), prompts read from a boundary."""

    def __init__(self, language: Language, prior: np.ndarray):
        self.name = "exact Bayes"
        self.language = language
        self.prior = prior

    def next_token_distribution(self, prompts):
        return th.final_state(self.language, prompts, prior=self.prior).predictive


class TrainedModel:
    """A trained GPT as a reader: p(x_{T+1} | prompt), the prompt behind a leading delimiter.

    The model was trained on windows cut anywhere from the stream, so it is told that the
    prompt starts a message the way the stream tells it: a delimiter before the first letter.
    A prompt longer than the model's context cannot be read whole; its row is NaN and the
    report says which m were too long.
    """

    def __init__(self, model, language: Language, name: str = "model"):
        self.name = name
        self.model = model
        self.language = language
        self.context_length = model.config.context_length

    def next_token_distribution(self, prompts):
        prompts = np.stack([np.concatenate([[DELIMITER_ID], p]) for p in prompts])     # (B, 1 + T)
        if prompts.shape[1] > self.context_length:
            return np.full((len(prompts), self.language.vocab_size), np.nan)
        return np.exp(to_host(self.model.log_probs(prompts))[:, -1].astype(np.float64))


def same_language(a: Language, b: Language) -> bool:
    """True when two languages define the same q (every probability table equal)."""
    fields = ("initial", "transition", "first_letter", "letter_transition", "length_probs")
    return all(np.shape(getattr(a, f)) == np.shape(getattr(b, f)) and np.allclose(getattr(a, f), getattr(b, f),
                                                                                   rtol=0.0, atol=1e-15)
               for f in fields)


def predictors_for(language: Language, prior: np.ndarray, trained: Optional[TrainedModel] = None) -> list:
    """The predictors whose KL curves the report shows: the oracle, and the model for its own language."""
    predictors = [ExactBayes(language, prior)]
    if trained is not None and same_language(trained.language, language):
        predictors.append(trained)
    return predictors


# ----------------------------------------------------------------------------------------
# Measuring one language
# ----------------------------------------------------------------------------------------

class Summary(NamedTuple):
    mean: float
    low: float
    high: float


def summarise(values, clip_at_zero: bool = True) -> Summary:
    """Mean and 95% normal-approximation interval (clipped at 0 for a non-negative quantity)."""
    mean, (low, high) = th.mean_and_ci(values)
    if clip_at_zero:
        low = max(low, 0.0) if math.isfinite(low) else low
    return Summary(mean, low, high)


def evaluate_language(language: Language, tasks: th.ICLTasks, predictors: list, max_examples: int,
                      prior: np.ndarray) -> dict:
    """Every number of one (language, η) for m = 0..max_examples, as plain Python types.

    The Bayes error, the bound and the paper's form come from the oracle; each predictor
    contributes its KL(target ‖ predictor) curve.
    """
    theorem_applies = th.is_mixture(language)
    # ε_i is a property of a message read alone from its start, the same in the language and
    # in its mixture twin; the twin gives the per-example ambiguities for any language.
    twin = language if theorem_applies else mixture_language(language, prior=prior)
    target = th.known_intention_next_token(language, tasks.queries, tasks.intentions)
    rows = []
    for m in range(max_examples + 1):
        prompts = tasks.prompts(m)
        theorem = th.icl_posterior_concentration(twin, tasks, m, prior=prior)
        error = theorem.error if theorem_applies else th.bayes_intention_error(language, prompts, tasks.intentions, prior)
        row = {
            "m": m,
            "bayes_error": summarise(error)._asdict(),
            "kl": {},
            "bound_mean": float(theorem.bound.mean()) if theorem_applies else None,
            "bound_holds_every_prompt": bool(np.all(theorem.holds)) if theorem_applies else None,
            "kl_bound_mean": float(th.kl_bound(error).mean()),
            "paper_form_mean": float(theorem.paper_form.mean()) if m else None,
        }
        for predictor in predictors:
            distribution = predictor.next_token_distribution(prompts)
            if np.isnan(distribution).any():  # the prompt does not fit the predictor's context
                row["kl"][predictor.name] = None
                continue
            kl = th.kl_divergence(target, distribution)
            row["kl"][predictor.name] = summarise(kl, clip_at_zero=False)._asdict()
        rows.append(row)
    errors = [row["bayes_error"]["mean"] for row in rows]
    fit = th.fit_decay(np.arange(max_examples + 1), errors)
    return {
        "language": language.name,
        "theorem_applies": theorem_applies,
        "mean_message_ambiguity": _mean_message_ambiguity(twin, tasks, max_examples, prior),
        "rows": rows,
        "decay_fit": fit._asdict(),
    }


def _mean_message_ambiguity(twin: Language, tasks: th.ICLTasks, max_examples: int, prior) -> Optional[float]:
    """E[ε(x)] over all example messages drawn, each read alone under a uniform prior."""
    if max_examples == 0:
        return None
    return float(th.icl_posterior_concentration(twin, tasks, max_examples, prior=prior).example_ambiguity.mean())


def paper_setting(trials: int, seed: int, model: Optional["TrainedModel"] = None) -> dict:
    """The paper's ICL measurement (docs/claims.md §7) redone with the exact reader.

    The faithful paper language at the paper's three noise levels; prompt = m examples under
    θ*, then the next token is the first letter of the next message; the paper's target is
    uniform over the first letters of θ* and θ* + 1 (which is q(· | θ_m = θ*) in that language).
    """
    out = {"m": [1, 2, 3, 4], "paper_trained_model_kl": {}, "exact_bayes_kl": {}}
    for eta, paper_values in PAPER_ICL_KL.items():
        language = preset("paper", eta)
        prior = language.stationary_intentions()
        tasks = th.sample_icl_tasks(language, trials, 4, seed=seed, prior=prior)
        letters_per_intention = 3
        owners = np.arange(language.n_letters) // letters_per_intention                    # intention owning each letter
        target = np.zeros((trials, language.vocab_size))
        for offset in (0, 1):
            owned = owners[None, :] == ((tasks.intentions[:, None] + offset) % language.n_intentions)
            target[:, 1:] += owned / 6.0
        readers = predictors_for(language, prior, model)
        kls = [[float(th.kl_divergence(target, reader.next_token_distribution(tasks.example_prompts(m))).mean())
                for m in out["m"]] for reader in readers]
        out["paper_trained_model_kl"][f"{eta:g}"] = list(paper_values)
        out["exact_bayes_kl"][f"{eta:g}"] = kls[0]
        if len(readers) > 1:  # the --model/--train model was trained on this very language
            out.setdefault("our_model_kl", {})[f"{eta:g}"] = kls[1]
    return out


# ----------------------------------------------------------------------------------------
# Report: table, plot, JSON
# ----------------------------------------------------------------------------------------

ROUNDING_FLOOR = 1e-15  # a |KL| below this is float64 rounding of 0 (it can come out slightly negative)


def _number(value, digits: int = 2, floor: float = 0.0) -> str:
    if value is None:
        return "—"
    if value == 0.0:
        return "0"
    if abs(value) < floor:
        return f"<{floor:.0e}"
    return f"{value:.{digits}e}"


def _kl_cell(summary: Optional[dict]) -> str:
    if summary is None:
        return "too long"  # the prompt does not fit the model's context
    return _number(summary["mean"], floor=ROUNDING_FLOOR)


def format_language_table(name: str, description: str, results: list) -> str:
    """One table per language: rows (η, m)."""
    predictor_names = list(dict.fromkeys(p for result in results for p in result["rows"][0]["kl"]))
    kl_headers = "".join(f"  {'KL(target‖' + p + ')':>22}" for p in predictor_names)
    lines = [f"== {name}: {description} ==",
             f"{'eta':>6} {'m':>3}  {'Bayes error 1-q(θ*|prompt) [95% CI]':<36}{kl_headers}  {'proven bound':>12}  {'paper ε0^(m+2)':>14}"]
    for result in results:
        for row in result["rows"]:
            error = row["bayes_error"]
            interval = f"{_number(error['mean'])} [{_number(error['low'], 1)}, {_number(error['high'], 1)}]"
            kls = "".join(f"  {_kl_cell(row['kl'].get(p)):>22}" for p in predictor_names)
            bound = _number(row["bound_mean"]) if result["theorem_applies"] else "n/a"
            lines.append(f"{result['eta']:>6g} {row['m']:>3}  {interval:<36}{kls}  {bound:>12}  {_number(row['paper_form_mean']):>14}")
        fit = result["decay_fit"]
        if fit["n_points"] >= 2:
            lines.append(f"{'':>11}fitted decay: mean error ≈ {math.exp(fit['intercept']):.2g} · {fit['rate']:.3g}^m "
                         f"(slope {fit['slope']:.3g} per example, {fit['n_points']} points)")
        else:
            lines.append(f"{'':>11}fitted decay: none (the error is exactly 0 at {len(result['rows']) - fit['n_points']} "
                         f"of {len(result['rows'])} values of m)")
    return "\n".join(lines)


def format_paper_comparison(comparison: dict) -> str:
    etas = list(comparison["paper_trained_model_kl"])
    header = "".join(f"{'η=' + e:>9}" for e in etas)
    lines = ["== ICL as the paper measured it (docs/claims.md §7): faithful paper language, m examples, then the",
             "   next message's first letter; target uniform over the 6 first letters of θ* and θ*+1 ==",
             f"{'':>4} {'paper: trained model KL(target‖p)':>34}   {'ours: exact Bayes KL(target‖q)':>32}",
             f"{'m':>4} {header:>34}   {header:>32}"]
    for i, m in enumerate(comparison["m"]):
        paper = "".join(f"{comparison['paper_trained_model_kl'][e][i]:>9.4g}" for e in etas)
        ours = "".join(f"{_number(comparison['exact_bayes_kl'][e][i], 1, ROUNDING_FLOOR):>9}" for e in etas)
        lines.append(f"{m:>4} {paper:>34}   {ours:>32}")
    for eta, values in comparison.get("our_model_kl", {}).items():
        lines.append(f"   our model (trained on the paper's language, η={eta}): KL(target‖p) for m = 1..4: "
                     + ", ".join(f"{v:.4f}" for v in values))
    return "\n".join(lines)


def save_plot(results: list, path: Path) -> Optional[Path]:
    """Log-scale mean Bayes error against m, one line per (language, η), bound dashed. None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(8, 5))
    not_drawn = []
    for index, result in enumerate(results):
        m = np.array([row["m"] for row in result["rows"]])
        error = np.array([row["bayes_error"]["mean"] for row in result["rows"]])
        label = f"{result['language']}"
        if not np.any(error > 0):
            not_drawn.append(label)
            continue
        color = f"C{index % 10}"
        axes.plot(m[error > 0], error[error > 0], "o-", color=color, label=label)
        for name in [p for p in result["rows"][0]["kl"] if p != "exact Bayes"]:
            kl = np.array([np.nan if row["kl"].get(name) is None else row["kl"][name]["mean"] for row in result["rows"]])
            axes.plot(m, kl, "s:", color=color, label=f"{name}: KL(target‖p), {label}")
        if result["theorem_applies"]:
            bound = np.array([row["bound_mean"] for row in result["rows"]])
            axes.plot(m, np.minimum(bound, 1e3), "--", color=color, alpha=0.7, label=f"bound, {label}")
    axes.set_yscale("log")
    axes.set_xlabel("m, number of in-context examples")
    axes.set_ylabel("mean Bayes error 1 − q(θ* | prompt)")
    title = "Exact Bayes ICL error (dashed: proven bound)"
    if not_drawn:
        title += f"\n{len(not_drawn)} curves are exactly 0 at every m (not drawable on a log scale; see the table)"
    axes.set_title(title, fontsize=9)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------

UsageError = common.UsageError  # a bad option: one line on stderr, exit status 2


LANGUAGE_DESCRIPTIONS = {
    "paper-mixture": "the paper's letter chains, θ fixed per document (theorem applies; first letter reveals θ)",
    "paper-noisy-first-mixture": "first letter noised too, θ fixed per document (theorem applies)",
    "paper": "the paper's own language: circular chain, θ changes w.p. 0.5 per message",
    "paper-noisy-first": "the paper's circular chain with the first letter noised too",
}


def build_parser() -> argparse.ArgumentParser:
    parser = common.RaisingParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400, help="prompts per (language, η, m) (default 400)")
    parser.add_argument("--eta", type=float, nargs="+", default=list(DEFAULT_ETAS),
                        help="noise levels η ≥ 0 (default 0 0.02 0.04)")
    parser.add_argument("--max-examples", type=int, default=8, help="largest m (default 8)")
    parser.add_argument("--query-letters", type=int, default=1,
                        help="letters of the query message, at most a message's letters (21 here; default 1)")
    parser.add_argument("--language", choices=DEFAULT_LANGUAGES, nargs="+", default=list(DEFAULT_LANGUAGES),
                        help="which languages (default all four)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=common.path_type, default=Path("out"), help="folder for the plot (default out/)")
    parser.add_argument("--json", type=common.path_type, default=None, help="also write every number to this JSON file")
    parser.add_argument("--force", action="store_true", help=common.FORCE_HELP)
    parser.add_argument("--model", type=common.path_type, default=None, metavar="CHECKPOINT",
                        help="a checkpoint of `tinylatent train`: add the model's KL curve for its language")
    parser.add_argument("--train", action="store_true",
                        help="train a small model on the spot on the first --language and --eta, and add its curve")
    parser.add_argument("--train-steps", type=int, default=1500, help="steps for --train (default 1500)")
    add_device_argument(parser, "the --model or --train model runs (and trains); the exact oracle reads on the CPU")
    return parser


def parse_args(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.trials < 2:
        raise UsageError(f"--trials must be at least 2 (a confidence interval needs two); got {args.trials}")
    bad_eta = [eta for eta in args.eta if not (math.isfinite(eta) and eta >= 0.0)]
    if bad_eta:
        raise UsageError(f"--eta must be finite and ≥ 0; got {bad_eta[0]:g}")
    if args.max_examples < 1:
        raise UsageError(f"--max-examples must be at least 1; got {args.max_examples}")
    letters = min(preset(name).max_length for name in args.language)  # every query is cut from one message
    if not 1 <= args.query_letters <= letters:
        raise UsageError(f"--query-letters must be in 1..{letters} (the letters of a message); got {args.query_letters}")
    if args.seed < 0:
        raise UsageError(f"--seed must be ≥ 0; got {args.seed}")
    if args.model is not None and args.train:
        raise UsageError("give --model CHECKPOINT or --train, not both")
    if args.train_steps < 1:
        raise UsageError(f"--train-steps must be at least 1; got {args.train_steps}")
    array_module(args.device)  # a missing GPU: one line (run_script), before any work
    common.check_outputs(args, PROGRAM, outputs(args))  # before anything is computed
    return args


def model_folder(args: argparse.Namespace) -> Path:
    """Where ``--train`` trains, relative to ``--out``: one folder per language."""
    name = preset(args.language[0], args.eta[0]).name
    return Path(f"icl_decay_model_{name}".replace("(", "_").replace(")", "").replace("=", ""))


def outputs(args: argparse.Namespace) -> list:
    """Every file this script writes inside --out, relative to it: the plot, and with ``--train`` the
    model's training folder. Checked before any work (``_common.check_outputs``)."""
    return [Path(PLOT_NAME)] + (common.run_files(model_folder(args)) if args.train else [])


def trained_model(args: argparse.Namespace) -> Optional[TrainedModel]:
    """The model of ``--model`` (loaded) or ``--train`` (trained now), or None."""
    from tinylatent.checkpoint import CHECKPOINT_FILENAME, load_checkpoint
    if args.model is not None:
        checkpoint = load_checkpoint(args.model)
        return TrainedModel(checkpoint.model(args.device), checkpoint.language, name="model")
    if not args.train:
        return None
    from tinylatent.gpt import GPTConfig
    from tinylatent.train import TrainConfig, TrainingDiverged, train
    language = preset(args.language[0], args.eta[0])
    # context 192 holds a leading delimiter, 8 examples of 22 tokens and the query
    config = dataclasses.replace(GPTConfig.small(language.vocab_size), context_length=192)
    settings = TrainConfig(steps=args.train_steps, batch_size=32, max_lr=3e-3, seed=args.seed,
                           eval_interval=max(1, args.train_steps // 5), checkpoint_interval=args.train_steps,
                           device=args.device)
    out_dir = args.out / model_folder(args)
    reuse = (out_dir / CHECKPOINT_FILENAME).exists()
    print(f"{'continuing the' if reuse else 'training a'} small model on {language.name} for {args.train_steps} "
          f"steps in {out_dir} ...")
    try:
        result = train(language, config, settings, out_dir, resume=reuse, progress=True)
    except TrainingDiverged:
        raise                                                   # a ValueError too, but not the settings' fault
    except ValueError as exc:
        if reuse:
            raise ValueError(f"{out_dir} holds a model trained with other settings ({exc}); choose another --out, "
                             "or use the same --train-steps and --seed") from None
        raise
    print(f"trained: validation loss {result.summary['val_loss']:.4f} nats/token, exact Bayes "
          f"{result.summary['bayes_val_loss']:.4f}")
    return TrainedModel(result.model, language, name="model")


def run(args: argparse.Namespace) -> dict:
    """Measure every (language, η), print the tables, save the plot and the JSON."""
    started = time.perf_counter()
    report = {
        "settings": {"trials": args.trials, "eta": args.eta, "max_examples": args.max_examples,
                     "query_letters": args.query_letters, "seed": args.seed, "languages": args.language,
                     "device": args.device,
                     "prior": "stationary intentions (uniform over the 6 intentions)",
                     "paper_form_epsilon_0": "max_i eps_i over the prompt's examples, each read alone, uniform prior",
                     "confidence_interval": "95% normal approximation over trials, clipped at 0"},
        "languages": [],
    }
    print(f"ICL with the exact oracle: {args.trials} prompts per (language, η, m); prompt = m examples under θ*, "
          f"then the first {args.query_letters} letter(s) of one more message under θ*; target q(next | query, θ*).")
    model = trained_model(args)
    report["settings"]["model"] = None if model is None else model.language.name
    model_read = False
    for name in args.language:
        results = []
        for eta in args.eta:
            language = preset(name, eta)
            prior = language.stationary_intentions()
            tasks = th.sample_icl_tasks(language, args.trials, args.max_examples, args.query_letters,
                                        seed=args.seed, prior=prior)
            predictors = predictors_for(language, prior, model)
            model_read |= len(predictors) > 1
            result = evaluate_language(language, tasks, predictors, args.max_examples, prior)
            result.update({"preset": name, "eta": eta})
            results.append(result)
        print()
        print(format_language_table(name, LANGUAGE_DESCRIPTIONS[name], results))
        report["languages"].extend(results)
    if model is not None and not model_read:
        print(f"\nnote: the model was trained on {model.language.name}, which is none of the languages "
              "measured here; pick it with --language and --eta to see its curve")
    comparison = paper_setting(args.trials, args.seed, model)
    report["paper_comparison"] = comparison
    print()
    print(format_paper_comparison(comparison))
    print()
    plot = save_plot(report["languages"], args.out / PLOT_NAME)
    report["plot"] = str(plot) if plot else None
    if plot:
        print(f"plot saved to {plot}")
    else:
        print(common.PLOT_SKIPPED)
    report["seconds"] = time.perf_counter() - started
    if args.json is not None:
        write_json(args.json, report)
        print(f"numbers written to {args.json}")
    return report


def main(argv=None) -> int:
    return common.run_main(PROGRAM, parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
