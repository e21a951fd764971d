"""Command-line subcommands about languages: ``language``, ``sample``, ``ambiguity``, ``posterior``.

Every subcommand that reports numbers takes ``--json`` to print them machine-readably.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tinylatent._io import write_json, write_text
from tinylatent.backend import DEVICES, array_module, to_device, to_host
from tinylatent.ambiguity import measure_ambiguity
from tinylatent.language import (
    PRESETS, Language, load_language, preset, random_language, sample_corpus,
)
from tinylatent.oracle import Oracle, describe_impossible

def add_language_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preset NAME --eta X`` or ``--language-file PATH``: which language to use."""
    group = parser.add_argument_group("language")
    group.add_argument("--preset", choices=PRESETS, default="paper",
                       help="a named language (default: paper, THEORY.md §1)")
    group.add_argument("--eta", type=float, default=0.0, help="the noise level η ≥ 0 of a preset (default 0)")
    group.add_argument("--language-file", metavar="PATH", help="a language JSON (overrides --preset)")

def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device cpu|gpu``: where the arrays of the computation live."""
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu (NumPy, default) or gpu (CuPy; needs `pip install tinylatent[gpu]`)")


def language_from_args(args: argparse.Namespace) -> Language:
    if getattr(args, "language_file", None):
        return load_language(args.language_file)
    return preset(args.preset, args.eta)

def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to replace it (nothing is overwritten without it)")

def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))

# -- tinylatent language -------------------------------------------------------------------

def cmd_language(args) -> int:
    if args.random:
        language = random_language(
            n_intentions=args.intentions, n_letters=args.letters, letters_per_intention=args.letters_per_intention,
            message_length=args.length, concentration=args.concentration, eta=args.eta,
            transition=args.transition, seed=args.seed,
        )
    else:
        language = language_from_args(args)
    if args.out:
        out = Path(args.out)
        _refuse_overwrite(out, args.force)
        write_json(out, language.to_dict())
    if args.json:
        summary = {"name": language.name, "n_intentions": language.n_intentions, "n_letters": language.n_letters,
                   "vocab_size": language.vocab_size, "max_length": language.max_length,
                   "mean_length": language.mean_length,
                   "stationary_intentions": language.stationary_intentions().tolist(),
                   "written_to": args.out}
        _print_json(summary)
    else:
        print(language.summary())
        if args.out:
            print(f"wrote {args.out}")
    return 0

# -- tinylatent sample ----------------------------------------------------------------------

def cmd_sample(args) -> int:
    language = language_from_args(args)
    if args.messages < 1:
        raise ValueError(f"--messages must be ≥ 1; got {args.messages}")
    corpus = sample_corpus(language, args.messages, args.seed)
    text = language.decode(corpus.tokens)
    if args.out:
        out = Path(args.out)
        _refuse_overwrite(out, args.force)
        write_text(out, text)
    counts = np.bincount(corpus.intentions, minlength=language.n_intentions)
    if args.json:
        _print_json({"language": language.name, "messages": args.messages, "tokens": int(len(corpus.tokens)),
                     "seed": args.seed, "intention_counts": counts.tolist(), "written_to": args.out})
    elif args.out:
        print(f"wrote {args.messages} messages ({len(corpus.tokens)} tokens) of {language.name} to {args.out}")
        print(f"intention counts: {counts.tolist()}")
    else:
        print(text, end="")
    return 0

# -- tinylatent ambiguity -------------------------------------------------------------------

def cmd_ambiguity(args) -> int:
    language = language_from_args(args)
    if args.length is not None and args.length < 1:
        raise ValueError(f"--length must be ≥ 1 letters; got {args.length}")
    exact = True if args.exact else (False if args.sample else None)
    report = measure_ambiguity(language, n_messages=args.messages, seed=args.seed,
                               message_length=args.length, exact=exact, device=args.device)
    if args.json:
        _print_json({"language": language.name, **report.as_dict()})
        return 0
    how = "exact (every message enumerated)" if report.method == "exact" else f"sampled ({report.n_messages} messages, 95% CI)"
    length = f"{report.message_length} letters" if report.message_length else "the language's own length rule"
    print(f"ambiguity of {language.name}, messages of {length}, {how}")
    for label, estimate in [
        ("MAP-intention error (paper's statistic: transitions only, uniform prior)", report.map_error),
        ("mean posterior error E[ε(x)] = E[1 − q(θ*|x)]", report.mean_posterior_error),
        ("fraction of messages with ε(x) > 0", report.fraction_ambiguous),
    ]:
        interval = "" if report.method == "exact" else f"  [{estimate.low:.5f}, {estimate.high:.5f}]"
        print(f"  {label:<74} {estimate.value:.5f}{interval}")
    return 0

# -- tinylatent posterior -------------------------------------------------------------------

def _unescape(prompt: str) -> str:
    """Let a shell user type the delimiter as ``\\n``."""
    return prompt.replace("\\n", "\n")

def cmd_posterior(args) -> int:
    language = language_from_args(args)
    prompt = _unescape(args.prompt)
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character")
    tokens = language.encode(prompt)
    array_module(args.device)  # a clear error now if the device is missing
    result = Oracle(language).filter(to_device(tokens, args.device), phase=args.phase)
    if not to_host(result.possible)[0]:
        raise ValueError(describe_impossible(language, tokens, result))
    posterior = to_host(result.posterior[0, -1])
    next_token = to_host(result.predictive[0, -1])
    log_marginal = to_host(result.log_marginal)
    vocabulary = language.vocabulary
    if args.json:
        _print_json({
            "language": language.name, "prompt": prompt, "phase": args.phase,
            "log_marginal": float(log_marginal[0]),
            "posterior": posterior.tolist(),
            "next_token": {vocabulary[i]: float(p) for i, p in enumerate(next_token)},
        })
        return 0
    print(f"prompt {prompt!r} under {language.name}, phase {args.phase}: log q(x) = {log_marginal[0]:.6f}")
    print("posterior over the intention of the current message, q(θ | x):")
    for theta, p in enumerate(posterior):
        print(f"  θ = {theta}: {p:.6f}")
    order = np.argsort(-next_token)[: args.top]
    print(f"next token q(x_next | x), top {len(order)}:")
    for i in order:
        print(f"  {vocabulary[i]!r:>6}: {next_token[i]:.6f}")
    return 0

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value

def register(subparsers) -> None:
    p = subparsers.add_parser("language", help="write a language JSON from a preset (or a random one) and summarise it")
    add_language_arguments(p)
    p.add_argument("--random", action="store_true", help="a random language instead of a preset")
    p.add_argument("--intentions", type=_positive_int, default=3, help="K, for --random")
    p.add_argument("--letters", type=_positive_int, default=6, help="V, for --random")
    p.add_argument("--letters-per-intention", type=_positive_int, default=None, help="block size, for --random")
    p.add_argument("--length", type=_positive_int, default=5, help="letters per message, for --random")
    p.add_argument("--concentration", type=float, default=1.0, help="Dirichlet concentration, for --random")
    p.add_argument("--transition", choices=["random", "identity", "uniform", "circular"], default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="PATH", help="write the language JSON here")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_language)

    p = subparsers.add_parser("sample", help="sample a corpus, one message per line")
    add_language_arguments(p)
    p.add_argument("--messages", type=int, default=1000, help="number of messages (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="PATH", help="write the corpus here (default: print it)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    p.set_defaults(func=cmd_sample)

    p = subparsers.add_parser("ambiguity", help="how ambiguous a language is: MAP error, E[ε(x)], q(ε(x) > 0)")
    add_language_arguments(p)
    p.add_argument("--length", type=int, default=None, help="letters per message (default: the language's own)")
    p.add_argument("--messages", type=int, default=20_000, help="messages to sample (default 20000)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true", help="enumerate every message (small languages only)")
    mode.add_argument("--sample", action="store_true", help="sample even when enumeration is possible")
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ambiguity)

    p = subparsers.add_parser("posterior", help="for a prompt: the posterior over intentions and the next-token distribution")
    add_language_arguments(p)
    p.add_argument("--prompt", required=True, help="the prompt text; type the delimiter as \\n")
    p.add_argument("--phase", choices=["start", "unknown"], default="start",
                   help="start: the prompt begins a message; unknown: a window from anywhere in the stream")
    p.add_argument("--top", type=_positive_int, default=5, help="how many next tokens to list")
    add_device_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_posterior)

