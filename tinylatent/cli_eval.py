"""Command-line subcommand ``eval``: a trained checkpoint against the exact oracle.

``tinylatent eval --checkpoint PATH`` reads the model and its language from the
checkpoint and reports, each number with a 95% confidence interval over trials
(:func:`tinylatent.evaluate.evaluate`; definitions in docs/evaluation.md):

* convergence: the model's cross-entropy on fresh windows against the exact Bayes
  cross-entropy of the same windows, and the excess;
* language understanding: KL(target ‖ p) = ambiguity part + approximation part for
  prompts of 1..6 letters, without and with a leading delimiter;
* in-context learning: the same split for m = 0..8 examples (an m whose prompt does not fit
  the model's context is skipped, and the reason said).

``--json`` prints every number as JSON; ``--json FILE`` writes it to FILE atomically
(an existing FILE only with ``--force``; the path is checked before the evaluation starts).
"""
from __future__ import annotations

from tinylatent._io import json_text, write_json
from tinylatent.checkpoint import load_checkpoint
from tinylatent.cli import add_device_argument, check_optional_output, int_in, non_negative_int, path_arg
from tinylatent.cli_train import MAX_CONTEXT
from tinylatent.evaluate import DEFAULT_PROMPTS, DEFAULT_WINDOWS, ICL_MAX_EXAMPLES, UNDERSTANDING_LETTERS, evaluate

STDOUT = "-"
PAPER_LABEL = "paper's"  # the row of the paper's target
MAX_TRIALS = 100_000      # --windows and --prompts: a confidence interval needs at least 2
MAX_PROMPT_PARTS = MAX_CONTEXT  # --max-letters, --max-examples: a longer prompt fits no model `train` makes


def _fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, and no minus sign on a number that rounds to zero."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def _estimate(estimate: dict, digits: int = 4) -> str:
    """``mean [low, high]``."""
    return (f"{_fixed(estimate['mean'], digits)} [{_fixed(estimate['low'], digits)}, "
            f"{_fixed(estimate['high'], digits)}]")


def _split_columns(split: dict) -> str:
    return "  ".join(f"{_estimate(split[part]):>26}" for part in ("total", "ambiguity", "approximation"))


def format_report(report: dict, header: str) -> str:
    """The evaluation as text tables (every number: mean [95% CI])."""
    settings, convergence = report["settings"], report["convergence"]
    lines = [header,
             f"{settings['windows']} windows of {settings['window_tokens']} tokens; {settings['prompts']} prompts per "
             f"prompt length and per m; mean [95% CI] over them; nats",
             "",
             "convergence (per token, the first token of a window is context only)",
             f"  model cross-entropy        {_estimate(convergence['model_cross_entropy'])}",
             f"  exact Bayes cross-entropy  {_estimate(convergence['bayes_cross_entropy'])}",
             f"  excess (model − Bayes)     {_estimate(convergence['excess_cross_entropy'])}",
             f"  paper's |log p − log q|/T  {_estimate(convergence['paper_abs_log_ratio'])}",
             "",
             "language understanding: KL(target ‖ p) = KL(target ‖ q) + E_target[log q − log p]",
             f"  {'prompt':<10} {'n':>2}  {'target':<10}  {'total':>26}  {'ambiguity':>26}  {'approximation':>26}  "
             f"{'ε(x) = 1 − q(θ*|x)':>26}"]
    for condition, label in (("without_delimiter", "letters"), ("with_delimiter", "\\n+letters")):
        for row in report["understanding"][condition]["rows"]:
            for target, target_label in (("known_intention", "q(·|x,θ*)"), ("paper", PAPER_LABEL)):
                lines.append(f"  {label:<10} {row['n_letters']:>2}  {target_label:<10}  {_split_columns(row[target])}  "
                             f"{_estimate(row['ambiguity_epsilon']) if target == 'known_intention' else '':>26}")
    icl = report["icl"]
    lines += ["",
              "in-context learning: m examples under θ*, behind a delimiter",
              "  known-intention target: prompt \\n x_1..x_m query, target q(·|query, θ*)",
              f"  paper's target: prompt \\n x_1..x_m; {icl['paper_target']}",
              f"  {'m':>2} {'tokens':>6}  {'target':<10}  {'total':>26}  {'ambiguity':>26}  {'approximation':>26}  "
              f"{'Bayes error ε_m':>26}"]
    for row in icl["rows"]:
        lines.append(f"  {row['m']:>2} {row['prompt_tokens']:>6}  {'q(·|q,θ*)':<10}  {_split_columns(row['known_intention'])}  "
                     f"{_estimate(row['bayes_error']):>26}")
        if row["paper"] is not None:
            lines.append(f"  {'':>2} {'':>6}  {PAPER_LABEL:<10}  {_split_columns(row['paper'])}  "
                         f"{_estimate(row['paper_off_target']):>26}  (model's p off the target's letters)")
    for skipped in icl["skipped"]:
        lines.append(f"  m = {skipped['m']} skipped: {skipped['reason']}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    check_optional_output(args.json, args.force, stdout=STDOUT, metavar="FILE")
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model(args.device)
    report = evaluate(model, checkpoint.language, n_windows=args.windows, n_prompts=args.prompts,
                      max_letters=args.max_letters, max_examples=args.max_examples, seed=args.seed)
    report = {"checkpoint": str(args.checkpoint), "step": checkpoint.step, **report}
    if args.json == STDOUT:
        print(json_text(report))
    elif args.json is not None:
        write_json(args.json, report)
        print(f"evaluation written to {args.json}")
    else:
        print(format_report(report, f"{args.checkpoint} (step {checkpoint.step}) against the exact oracle of "
                                    f"{checkpoint.language.name}"))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint against the exact oracle: convergence, understanding, ICL",
        description="Evaluate a trained model against the exact Bayes oracle of its language: cross-entropy "
                    "against the Bayes cross-entropy, and for understanding and in-context learning "
                    "KL(target ‖ p) split into the language's ambiguity part and the model's approximation "
                    "part. Every number has a 95% confidence interval. See docs/evaluation.md.",
    )
    p.add_argument("--checkpoint", type=path_arg, required=True, metavar="PATH", help="a checkpoint file (OUT/ckpt.npz)")
    p.add_argument("--windows", type=int_in(2, MAX_TRIALS), default=DEFAULT_WINDOWS,
                   help=f"convergence windows of the model's context + 1 tokens, 2..{MAX_TRIALS:,} "
                        f"(default {DEFAULT_WINDOWS})")
    p.add_argument("--prompts", type=int_in(2, MAX_TRIALS), default=DEFAULT_PROMPTS,
                   help=f"prompts per prompt length and per m, 2..{MAX_TRIALS:,} (default {DEFAULT_PROMPTS})")
    p.add_argument("--max-letters", type=int_in(1, MAX_PROMPT_PARTS), default=UNDERSTANDING_LETTERS,
                   help=f"understanding prompts of 1..N letters, N in 1..{MAX_PROMPT_PARTS:,} "
                        f"(default {UNDERSTANDING_LETTERS})")
    p.add_argument("--max-examples", type=int_in(0, MAX_PROMPT_PARTS), default=ICL_MAX_EXAMPLES,
                   help=f"ICL with m = 0..M examples, M in 0..{MAX_PROMPT_PARTS:,} (default {ICL_MAX_EXAMPLES})")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the windows, prompts and tasks (default 0)")
    add_device_argument(p, "the model runs (the oracle runs on the CPU)")
    p.add_argument("--json", type=path_arg, nargs="?", const=STDOUT, default=None, metavar="FILE",
                   help="print every number as JSON, or with FILE write it there (atomically)")
    p.add_argument("--force", action="store_true", help="replace the --json FILE if it exists")
    p.set_defaults(func=cmd_eval)
