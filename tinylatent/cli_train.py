"""Command-line subcommands about models: ``train`` and ``generate``.

``tinylatent train`` trains a GPT on a language (:func:`tinylatent.train.train`);
``tinylatent generate`` samples text from a checkpoint. Both take ``--json``.

Resuming: ``tinylatent train --out DIR --resume`` continues the run in DIR with the
language, model and settings stored in its checkpoint; options given next to
``--resume`` replace the stored ones, and the run refuses any change that would alter
the parameters (only ``--steps``, the eval/checkpoint intervals and ``--device`` may
change). See docs/training.md.

A fresh run refuses an --out that holds a ``log.jsonl`` (of a run that saved no
checkpoint) unless ``--force``; one that holds a checkpoint needs ``--resume`` or another
folder. Size options have upper bounds (the ``MAX_*`` constants below) so that a request no
machine could hold fails at once, with the range, instead of running out of memory.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tinylatent._io import json_text
from tinylatent.checkpoint import CHECKPOINT_FILENAME, load_checkpoint
from tinylatent.cli import add_device_argument, check_output_folder, int_in, non_negative_int, path_arg, positive_int
from tinylatent.cli_language import DEFAULT_PRESET, language_from_args, prompt_text
from tinylatent.gpt import DTYPES, GPTConfig
from tinylatent.language import PRESETS, as_generator
from tinylatent.train import DATA_MODES, LOG_FILENAME, TrainConfig, train

MODEL_PRESETS = ("small", "paper")
DEFAULT_MODEL = "small"
DEFAULT_OUT = "runs/train"
DEFAULT_NEW_TOKENS = 200  # about nine messages of the paper's language (22 tokens each)

# Upper bounds of the size options, each alone: far above the paper's model (3 layers, 12 heads,
# width 768, context 128, batch 12), below what fails for want of memory. A combination too big
# for the machine (64 layers of width 4,096) ends in the one-line out-of-memory error instead.
MAX_CONTEXT = 2_048
MAX_D_MODEL = 4_096
MAX_LAYERS = 64
MAX_HEADS = 64
MAX_BATCH = 1_024
MAX_CORPUS_MESSAGES = 10_000_000
MAX_EVAL_WINDOWS = 100_000
MAX_NEW_TOKENS = 1_000_000


# -- tinylatent train ------------------------------------------------------------------------

# (command-line option's dest, TrainConfig field) for the options that map one to one
_TRAIN_OPTIONS = (
    ("steps", "steps"), ("batch_size", "batch_size"), ("lr", "max_lr"), ("warmup", "warmup_steps"),
    ("min_lr", "min_lr"), ("weight_decay", "weight_decay"),
    ("short_windows", "short_windows"), ("short_context", "short_context"),
    ("seed", "seed"), ("data", "data"), ("corpus_messages", "corpus_messages"), ("device", "device"),
    ("eval_interval", "eval_interval"), ("eval_windows", "eval_windows"),
    ("checkpoint_interval", "checkpoint_interval"),
)
# (command-line option's dest, GPTConfig field)
_MODEL_OPTIONS = (("n_layer", "n_layer"), ("n_head", "n_head"), ("d_model", "d_model"), ("context", "context_length"),
                  ("dtype", "dtype"))


def _language_from_args(args, stored=None):
    """The language named on the command line, or the checkpoint's when none is named."""
    if args.language_file is None and args.preset is None and args.eta is None and stored is not None:
        return stored
    return language_from_args(args)


def _model_config_from_args(args, vocab_size: int, stored=None) -> GPTConfig:
    """A model preset (or the checkpoint's config) with the command line's overrides applied."""
    if args.model is None and stored is not None:
        config = stored
    else:
        config = GPTConfig.paper(vocab_size) if (args.model or DEFAULT_MODEL) == "paper" else GPTConfig.small(vocab_size)
    overrides = {field: getattr(args, dest) for dest, field in _MODEL_OPTIONS if getattr(args, dest) is not None}
    return replace(config, **overrides)  # replace() re-runs GPTConfig's validation


def _train_config_from_args(args, stored=None) -> TrainConfig:
    overrides = {field: getattr(args, dest) for dest, field in _TRAIN_OPTIONS if getattr(args, dest) is not None}
    config = TrainConfig(**overrides) if stored is None else TrainConfig.from_dict({**stored, **overrides})
    # an option the run would ignore is a mistake the user should hear of, not a silent no-op
    if args.corpus_messages is not None and config.data != "corpus":
        raise ValueError(f"--corpus-messages sizes the corpus of --data corpus; this run's data is {config.data!r}")
    if args.short_context is not None and config.short_windows == 0:
        raise ValueError("--short-context is the length of the --short-windows windows; this run has none "
                         "(give --short-windows N too)")
    return config


def _check_resume_steps(args, checkpoint, out_dir: Path) -> None:
    """Say plainly when --steps is too few for the stored run (before TrainConfig's own checks,
    which would name the stored warm-up instead)."""
    if args.steps is None:
        return
    if checkpoint.step > args.steps:
        raise ValueError(f"the checkpoint in {out_dir} is at step {checkpoint.step}, already past the {args.steps} "
                         f"steps asked for; ask for more --steps, or train into another --out")
    warmup = checkpoint.train_config.get("warmup_steps")
    if args.warmup is None and isinstance(warmup, int) and warmup >= args.steps:
        raise ValueError(f"the run in {out_dir} warms up for {warmup} steps; --steps must be more than that "
                         f"(got {args.steps})")


def _check_run_files_are_not_folders(out_dir: Path) -> None:
    """The run writes OUT/ckpt.npz and OUT/log.jsonl: refuse, before any work, a folder in their place."""
    for name, what in ((CHECKPOINT_FILENAME, "checkpoint"), (LOG_FILENAME, "log")):
        if (out_dir / name).is_dir():
            raise ValueError(f"{out_dir / name} is a folder, where the run writes its {what} file: "
                             "move it away, or choose another --out")


def _check_fresh_out(out_dir: Path, force: bool) -> None:
    """A fresh run must not silently replace another run's files in ``out_dir``."""
    if (out_dir / CHECKPOINT_FILENAME).exists():
        raise ValueError(f"{out_dir / CHECKPOINT_FILENAME} already exists: continue that run with --resume, "
                         "or choose another --out")
    log = out_dir / LOG_FILENAME
    if log.exists() and not force:
        raise ValueError(f"{log} exists (a run that saved no checkpoint); a new run would replace it: "
                         "pass --force, or choose another --out")


def cmd_train(args) -> int:
    out_dir = check_output_folder(args.out, "--out")
    _check_run_files_are_not_folders(out_dir)
    checkpoint = None
    if args.resume and args.force:
        raise ValueError("--force starts a new run over an old log; --resume continues a run: give one or the other")
    if args.resume:
        checkpoint_path = out_dir / CHECKPOINT_FILENAME
        if not checkpoint_path.exists():
            raise ValueError(f"nothing to resume: {checkpoint_path} does not exist")
        checkpoint = load_checkpoint(checkpoint_path)
        _check_resume_steps(args, checkpoint, out_dir)
    else:
        _check_fresh_out(out_dir, args.force)
    language = _language_from_args(args, checkpoint.language if checkpoint else None)
    model_config = _model_config_from_args(args, language.vocab_size, checkpoint.model_config if checkpoint else None)
    train_config = _train_config_from_args(args, checkpoint.train_config if checkpoint else None)
    _, summary = train(language, model_config, train_config, out_dir, resume=args.resume,
                       progress=not args.no_progress)
    if args.json:
        print(json_text(summary))
        return 0
    excess = summary["excess_val_loss"]
    print(f"trained {summary['language']} for {summary['steps']} steps "
          f"({summary['tokens_seen']:,} tokens, {summary['parameters']:,} parameters)"
          + (f" in {summary['train_seconds']:.1f} s, {summary['tokens_per_s']:,.0f} tokens/s"
             if summary["tokens_per_s"] else ""))
    print(f"validation loss {summary['val_loss']:.4f} nats/token"
          + (f"; Bayes {summary['bayes_val_loss']:.4f}; excess {excess:.4f}" if excess is not None else ""))
    print(f"checkpoint {summary['checkpoint']}; log {summary['log']}")
    return 0


# -- tinylatent generate ---------------------------------------------------------------------

def cmd_generate(args) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    language = checkpoint.language
    prompt = language.delimiter if args.prompt is None else prompt_text(args.prompt, language.delimiter)
    if not prompt:
        raise ValueError("the prompt is empty; give at least one character (the default is the delimiter, "
                         "which starts a new message)")
    prompt_ids = language.encode(prompt)  # a ValueError naming the bad character and the vocabulary
    model = checkpoint.model(args.device)
    tokens = model.generate(prompt_ids, args.tokens, as_generator(args.seed),
                            temperature=args.temperature, top_k=args.top_k)
    completion = language.decode(tokens[len(prompt_ids):])
    if args.json:
        print(json_text({"checkpoint": str(args.checkpoint), "step": checkpoint.step, "language": language.name,
                         "prompt": prompt, "completion": completion, "seed": args.seed,
                         "temperature": args.temperature, "top_k": args.top_k}))
        return 0
    print(prompt + completion, end="" if (prompt + completion).endswith("\n") else "\n")
    return 0


# -- registration ----------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a GPT on a language; checkpoints, log.jsonl, --resume",
        description="Train a GPT on a language from latent intentions. Writes OUT/ckpt.npz and OUT/log.jsonl; "
                    "a new run refuses an OUT that holds another run's checkpoint (continue it with --resume) "
                    "or log (replace it with --force). Options left out take the defaults of a new run, or "
                    "with --resume the values stored in the checkpoint. See docs/training.md.",
    )
    language = p.add_argument_group("language (default: the paper's, eta 0)")
    choice = language.add_mutually_exclusive_group()
    choice.add_argument("--language", "--preset", dest="preset", choices=PRESETS, default=None,
                        help=f"a named language (default {DEFAULT_PRESET}: the paper's, docs/claims.md §1)")
    choice.add_argument("--language-file", type=path_arg, metavar="JSON", default=None,
                        help="a language JSON file (docs/language_format.md); not with --eta")
    language.add_argument("--eta", type=float, default=None, help="the noise level η ≥ 0 of a preset (default 0)")
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=MODEL_PRESETS, default=None,
                       help=f"GPT preset: small (CPU-sized) or paper (the paper's 21M parameters); default {DEFAULT_MODEL}")
    model.add_argument("--n-layer", type=int_in(1, MAX_LAYERS), default=None,
                       help=f"override the preset's number of blocks, 1..{MAX_LAYERS}")
    model.add_argument("--n-head", type=int_in(1, MAX_HEADS), default=None,
                       help=f"override the preset's attention heads, 1..{MAX_HEADS}")
    model.add_argument("--d-model", type=int_in(1, MAX_D_MODEL), default=None,
                       help=f"override the preset's width, 1..{MAX_D_MODEL:,}")
    model.add_argument("--context", type=int_in(1, MAX_CONTEXT), default=None,
                       help=f"override the context length, 1..{MAX_CONTEXT:,} tokens")
    model.add_argument("--dtype", choices=DTYPES, default=None,
                       help="the parameters' and activations' float type (default float32; float64 for "
                            "precision studies and device-against-CPU checks)")
    run = p.add_argument_group("training (defaults: TrainConfig, the paper's run)")
    run.add_argument("--steps", type=positive_int, default=None, help="optimiser steps (default 5000)")
    run.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=None,
                     help=f"windows per step, 1..{MAX_BATCH:,} (default 12)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate (default 6e-4); the cosine decays it to --min-lr")
    run.add_argument("--min-lr", type=float, default=None,
                     help="where the cosine ends, 0 ≤ MIN_LR ≤ LR (default: a tenth of --lr)")
    run.add_argument("--weight-decay", type=float, default=None,
                     help="AdamW's decoupled decay of the matrices, ≥ 0 (default 0.1)")
    run.add_argument("--short-windows", type=int_in(0, MAX_BATCH), default=None,
                     help=f"extra windows of --short-context tokens a step, for more examples of short prompts, "
                          f"0..{MAX_BATCH:,} (default 0)")
    run.add_argument("--short-context", type=int_in(1, MAX_CONTEXT), default=None,
                     help="tokens of each short window, at most the context (default 8)")
    run.add_argument("--warmup", type=non_negative_int, default=None,
                     help="warm-up steps (default min(100, steps/10))")
    run.add_argument("--seed", type=non_negative_int, default=None, help="seed of every random stream (default 0)")
    run.add_argument("--data", choices=DATA_MODES, default=None,
                     help="stream: fresh windows every step (default); corpus: a fixed corpus, 10%% held out")
    run.add_argument("--corpus-messages", type=int_in(1, MAX_CORPUS_MESSAGES), default=None,
                     help=f"messages in the corpus for --data corpus, 1..{MAX_CORPUS_MESSAGES:,} (default 100000)")
    run.add_argument("--eval-interval", type=positive_int, default=None, help="steps between validations (default 100)")
    run.add_argument("--eval-windows", type=int_in(1, MAX_EVAL_WINDOWS), default=None,
                     help=f"validation windows, 1..{MAX_EVAL_WINDOWS:,} (default 256)")
    run.add_argument("--checkpoint-interval", type=positive_int, default=None,
                     help="steps between checkpoints (default 500)")
    add_device_argument(run, "the model trains", default=None, default_text="cpu, or with --resume the run's")
    p.add_argument("--out", type=path_arg, default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    p.add_argument("--force", action="store_true",
                   help="start a new run even though --out holds a log.jsonl (of a run that saved no checkpoint); "
                        "the log is replaced")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_train)

    g = subparsers.add_parser("generate", help="sample text from a trained checkpoint",
                              description="Continue a prompt with text sampled from a trained model.")
    g.add_argument("--checkpoint", type=path_arg, required=True, metavar="PATH", help="a checkpoint file (OUT/ckpt.npz)")
    g.add_argument("--prompt", default=None,
                   help="text to continue, over the language's vocabulary; the two characters \\n stand for the "
                        "delimiter (default: the delimiter alone, i.e. start a new message)")
    g.add_argument("--tokens", type=int_in(0, MAX_NEW_TOKENS), default=DEFAULT_NEW_TOKENS,
                   help=f"tokens to generate, 0..{MAX_NEW_TOKENS:,} (default {DEFAULT_NEW_TOKENS})")
    g.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this (default 1: the model's own p)")
    g.add_argument("--top-k", type=positive_int, default=None, help="sample among the k likeliest tokens only")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampling (default 0)")
    add_device_argument(g, "the model runs")
    g.add_argument("--json", action="store_true", help="print prompt and completion as JSON")
    g.set_defaults(func=cmd_generate)
