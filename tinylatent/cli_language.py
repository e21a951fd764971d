"""Command-line subcommands about languages: ``language``, ``sample``, ``ambiguity``, ``posterior``.

Every subcommand that reports numbers takes ``--json`` to print them machine-readably.
The language is a preset (``--preset NAME --eta X``) or a file (``--language-file PATH``,
docs/language_format.md), never both. Size options have upper bounds (the ``MAX_*``
constants below) so that a request no machine could hold fails at once, with the range.
"""
from __future__ import annotations

import argparse

import numpy as np

from tinylatent._io import json_text, write_json, write_text
from tinylatent.cli import add_device_argument, check_optional_output, int_in, path_arg, positive_int
from tinylatent.backend import array_module, to_device, to_host
from tinylatent.ambiguity import measure_ambiguity
from tinylatent.language import (
    PRESETS, Language, load_language, preset, random_language, sample_corpus,
)
from tinylatent.oracle import Oracle, describe_impossible

DEFAULT_PRESET = "paper"
MAX_INTENTIONS = 1_000            # K of --random: its letter chains are K × V × V numbers
MAX_LETTERS = 62                  # V of --random: the default alphabet a–z, A–Z, 0–9
MAX_MESSAGE_LETTERS = 10_000      # --length of --random and of ambiguity
MAX_MESSAGES = 1_000_000          # --messages of sample (the paper's: 22 tokens each, ~0.7 GB at the bound)
MAX_AMBIGUITY_MESSAGES = 1_000_000  # --messages of ambiguity: about 0.7 KB of memory per sampled message (0.7 GB, 20 s at the bound)

# ``language``'s options that only make sense with --random, and their defaults there
RANDOM_DEFAULTS = {"intentions": 3, "letters": 6, "letters_per_intention": None, "length": 5,
                   "concentration": 1.0, "transition": "random", "seed": 0}


def add_language_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preset NAME --eta X`` or ``--language-file PATH``: which language to use.

    Both default to None so that :func:`language_from_args` can tell what the user gave.
    """
    group = parser.add_argument_group("language")
    group.add_argument("--preset", choices=PRESETS, default=None,
                       help=f"a named language (default {DEFAULT_PRESET}: the paper's, docs/claims.md §1; "
                            "`tinylatent language --preset NAME` summarises one)")
    group.add_argument("--eta", type=float, default=None, help="the noise level η ≥ 0 of a preset (default 0)")
    group.add_argument("--language-file", type=path_arg, metavar="PATH",
                       help="a language JSON (docs/language_format.md); not with --preset or --eta")

HOST_ONLY_DEVICE_NOTE = ("Every command takes --device; this one works on the host either way (random numbers are "
                         "always drawn there, so that a seed gives the same result on either device), so gpu only "
                         "checks that CuPy sees a GPU")


def language_from_args(args: argparse.Namespace) -> Language:
    """The language of ``--language-file``, or the preset ``--preset`` at noise ``--eta``."""
    if args.language_file is not None:
        given = [option for option, value in (("--preset", args.preset), ("--eta", args.eta)) if value is not None]
        if given:
            one = len(given) == 1
            raise ValueError(f"{' and '.join(given)} {'sets' if one else 'set'} a preset language; "
                             f"{'it' if one else 'they'} cannot be combined with --language-file "
                             "(the file holds every number of its language)")
        return load_language(args.language_file)
    return preset(args.preset or DEFAULT_PRESET, 0.0 if args.eta is None else args.eta)

# -- tinylatent language -------------------------------------------------------------------

def _random_options_given(args) -> list:
    return ["--" + name.replace("_", "-") for name in RANDOM_DEFAULTS if getattr(args, name) is not None]


def cmd_language(args) -> int:
    check_optional_output(args.out, args.force, "--out")
    array_module(args.device)  # a clear error now if the device is missing (the work stays on the host)
    if args.random:
        given = [option for option, value in (("--preset", args.preset), ("--language-file", args.language_file))
                 if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} {'names' if len(given) == 1 else 'name'} a language; "
                             "--random makes a new one: give one or the other")
        options = {name: default if getattr(args, name) is None else getattr(args, name)
                   for name, default in RANDOM_DEFAULTS.items()}
        language = random_language(
            n_intentions=options["intentions"], n_letters=options["letters"],
            letters_per_intention=options["letters_per_intention"], message_length=options["length"],
            concentration=options["concentration"], eta=0.0 if args.eta is None else args.eta,
            transition=options["transition"], seed=options["seed"],
        )
    else:
        ignored = _random_options_given(args)
        if ignored:
            one = len(ignored) == 1
            raise ValueError(f"{', '.join(ignored)} only {'shapes' if one else 'shape'} a random language: "
                             f"add --random, or leave {'it' if one else 'them'} out")
        language = language_from_args(args)
    if args.out:
        write_json(args.out, language.to_dict())
    if args.json:
        summary = {"name": language.name, "n_intentions": language.n_intentions, "n_letters": language.n_letters,
                   "vocab_size": language.vocab_size, "max_length": language.max_length,
                   "mean_length": language.mean_length,
                   "stationary_intentions": language.stationary_intentions().tolist(),
                   "written_to": args.out}
        print(json_text(summary))
    else:
        print(language.summary())
        if args.out:
            print(f"wrote {args.out}")
    return 0

# -- tinylatent sample ----------------------------------------------------------------------

def cmd_sample(args) -> int:
    check_optional_output(args.out, args.force, "--out")
    array_module(args.device)  # a clear error now if the device is missing (sampling stays on the host)
    language = language_from_args(args)
    corpus = sample_corpus(language, args.messages, args.seed)
    text = language.decode(corpus.tokens)
    if args.out:
        write_text(args.out, text)
    counts = np.bincount(corpus.intentions, minlength=language.n_intentions)
    if args.json:
        print(json_text({"language": language.name, "messages": args.messages, "tokens": int(len(corpus.tokens)),
                         "seed": args.seed, "intention_counts": counts.tolist(), "written_to": args.out}))
    elif args.out:
        print(f"wrote {args.messages} messages ({len(corpus.tokens)} tokens) of {language.name} to {args.out}")
        print(f"intention counts: {counts.tolist()}")
    else:
        print(text, end="")
    return 0

# -- tinylatent ambiguity -------------------------------------------------------------------

def cmd_ambiguity(args) -> int:
    language = language_from_args(args)
    exact = True if args.exact else (False if args.sample else None)
    report = measure_ambiguity(language, n_messages=args.messages, seed=args.seed,
                               message_length=args.length, exact=exact, device=args.device)
    if args.json:
        print(json_text({"language": language.name, **report.as_dict()}))
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

def prompt_text(prompt: str, delimiter: str) -> str:
    """The prompt with the two characters ``\\n`` read as the language's delimiter, whatever
    character that is (a shell cannot easily type a newline); ``posterior`` and ``generate``."""
    return prompt.replace("\\n", delimiter)

def cmd_posterior(args) -> int:
    language = language_from_args(args)
    prompt = prompt_text(args.prompt, language.delimiter)
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
        print(json_text({
            "language": language.name, "prompt": prompt, "phase": args.phase,
            "log_marginal": float(log_marginal[0]),
            "posterior": posterior.tolist(),
            "next_token": {vocabulary[i]: float(p) for i, p in enumerate(next_token)},
        }))
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

def register(subparsers) -> None:
    p = subparsers.add_parser("language", help="write a language JSON from a preset (or a random one) and summarise it",
                              description="Summarise a language (a preset, a file, or with --random a new random "
                                          "one) and with --out write it as JSON (docs/language_format.md).")
    add_language_arguments(p)
    r = p.add_argument_group("random language (only with --random; --eta sets its noise too)")
    r.add_argument("--random", action="store_true", help="a random language instead of a preset or a file")
    r.add_argument("--intentions", type=int_in(1, MAX_INTENTIONS), default=None,
                   help=f"K, 1..{MAX_INTENTIONS:,} (default {RANDOM_DEFAULTS['intentions']})")
    r.add_argument("--letters", type=int_in(1, MAX_LETTERS), default=None,
                   help=f"V, 1..{MAX_LETTERS} (default {RANDOM_DEFAULTS['letters']})")
    r.add_argument("--letters-per-intention", type=int_in(1, MAX_LETTERS), default=None,
                   help="each intention writes a block of this many letters (default: all V)")
    r.add_argument("--length", type=int_in(1, MAX_MESSAGE_LETTERS), default=None,
                   help=f"letters per message, 1..{MAX_MESSAGE_LETTERS:,} (default {RANDOM_DEFAULTS['length']})")
    r.add_argument("--concentration", type=float, default=None,
                   help=f"Dirichlet concentration > 0 (default {RANDOM_DEFAULTS['concentration']:g})")
    r.add_argument("--transition", choices=["random", "identity", "uniform", "circular"], default=None,
                   help=f"the outer chain between messages (default {RANDOM_DEFAULTS['transition']})")
    r.add_argument("--seed", type=int, default=None, help=f"seed (default {RANDOM_DEFAULTS['seed']})")
    p.add_argument("--out", type=path_arg, metavar="PATH", help="write the language JSON here")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_device_argument(p, "the arrays live", note=HOST_ONLY_DEVICE_NOTE)
    p.set_defaults(func=cmd_language)

    p = subparsers.add_parser("sample", help="sample a corpus, one message per line")
    add_language_arguments(p)
    p.add_argument("--messages", type=int_in(1, MAX_MESSAGES), default=1000,
                   help=f"number of messages, 1..{MAX_MESSAGES:,} (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=path_arg, metavar="PATH", help="write the corpus here (default: print it)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    add_device_argument(p, "the arrays live", note=HOST_ONLY_DEVICE_NOTE)
    p.set_defaults(func=cmd_sample)

    p = subparsers.add_parser("ambiguity", help="how ambiguous a language is: MAP error, E[ε(x)], q(ε(x) > 0)")
    add_language_arguments(p)
    p.add_argument("--length", type=int_in(1, MAX_MESSAGE_LETTERS), default=None,
                   help=f"letters per message, 1..{MAX_MESSAGE_LETTERS:,} (default: the language's own)")
    p.add_argument("--messages", type=int_in(2, MAX_AMBIGUITY_MESSAGES), default=20_000,
                   help=f"messages to sample, 2..{MAX_AMBIGUITY_MESSAGES:,} (default 20000)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true", help="enumerate every message (small languages only)")
    mode.add_argument("--sample", action="store_true", help="sample even when enumeration is possible")
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p, "the oracle runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ambiguity)

    p = subparsers.add_parser("posterior", help="for a prompt: the posterior over intentions and the next-token distribution")
    add_language_arguments(p)
    p.add_argument("--prompt", required=True, help="the prompt text; type the delimiter as \\n")
    p.add_argument("--phase", choices=["start", "unknown"], default="start",
                   help="start: the prompt begins a message; unknown: a window from anywhere in the stream")
    p.add_argument("--top", type=positive_int, default=5, help="how many next tokens to list")
    add_device_argument(p, "the oracle runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_posterior)

