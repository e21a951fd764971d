"""What the experiments share: the command line, which files a run may replace, plots and
JSON (all five scripts); reading a message's intention and training a model into a fresh
folder (the three trained-model experiments).

Used by ``examples/cot_locality.py``, ``examples/instruction_tuning.py``,
``examples/emergence.py``, ``examples/icl_decay.py`` and ``examples/reproduce_paper.py``
(docs/experiments.md). The three trained-model experiments train small GPTs on a
language from latent intentions and then asks what the model does with a prompt; the
answer is read with the exact oracle (:class:`tinylatent.oracle.Oracle`), never guessed
from the letters by hand.
"""
from __future__ import annotations

import os
import sys

# One BLAS thread, set before NumPy loads (import this module first): on a small machine shared
# with other runs, OpenBLAS's extra threads only fight them (docs/training.md measured 8× slower).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    import tinylatent  # noqa: F401  (its __init__ imports nothing)
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from tinylatent._signals import quiet_ctrl_c_while_loading  # noqa: E402

# Before anything slow: a Ctrl-C while the rest loads is one line and exit 130 (run_script hands it back).
quiet_ctrl_c_while_loading(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, NamedTuple, Optional  # noqa: E402

import numpy as np  # noqa: E402

from tinylatent._io import write_json  # noqa: E402
from tinylatent.backend import array_module  # noqa: E402
from tinylatent.checkpoint import CHECKPOINT_FILENAME  # noqa: E402
from tinylatent.cli import (OneLineParser, add_device_argument, check_output_file, check_output_folder,  # noqa: E402
                            path_arg, run_script)
from tinylatent.evaluate import predictor_log_probs  # noqa: E402
from tinylatent.gpt import GPTConfig  # noqa: E402
from tinylatent.language import DELIMITER_ID, Language  # noqa: E402
from tinylatent.oracle import Oracle  # noqa: E402
from tinylatent.train import LOG_FILENAME, TrainConfig, keyboard_interrupt_deferred, train  # noqa: E402

TIE_TOLERANCE = 1e-9  # two posterior entries closer than this are a tie: the message names no single intention
FORCE_HELP = "replace existing outputs: the --json file, and files in --out that no run of this script wrote"
PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install tinylatent[plot])"


# ----------------------------------------------------------------------------------------
# Reading off the intention of a message
# ----------------------------------------------------------------------------------------

class Reading(NamedTuple):
    """The exact oracle's reading of B messages, each read alone from its start.

    intention: (B,) int64, the MAP intention argmax_θ q(θ | message) under a uniform prior,
        or −1 where the message does not single one out (see ``readable``).
    confidence: (B,) q(MAP intention | message).
    well_formed: (B,) bool: the message has q > 0 and its only delimiter is its last token.
        For a message that is not, the reading is taken at its last letter before the
        first delimiter, or where it became impossible, whichever comes first.
    readable: (B,) bool: the posterior where the message is read has one largest entry.
        A message that breaks before it says anything (say, a tag and then a token no
        intention writes there) leaves a tie, and taking ``argmax`` of a tie would
        silently answer "the first intention of the tie".
    """

    intention: np.ndarray
    confidence: np.ndarray
    well_formed: np.ndarray
    readable: np.ndarray


def read_intentions(language: Language, messages: np.ndarray, oracle: Optional[Oracle] = None) -> Reading:
    """The intention each message (B, T) was written under, as the exact oracle reads it.

    A uniform prior over intentions, so that the reading depends on the message's own
    letters only (not on what the outer chain makes likely). In an unambiguous language
    (every message has one possible intention) this recovers the true intention exactly.
    """
    messages = np.asarray(messages, dtype=np.int64)
    if messages.ndim != 2 or messages.shape[1] < 2:
        raise ValueError(f"messages must be a (B, T) array with T ≥ 2 (letters, then the delimiter); got {messages.shape}")
    oracle = Oracle(language) if oracle is None else oracle
    uniform = np.full(language.n_intentions, 1.0 / language.n_intentions)
    result = oracle.filter(messages, phase="start", prior=uniform, predictive=False)
    is_delimiter = messages == DELIMITER_ID
    first_delimiter = np.where(is_delimiter.any(axis=1), is_delimiter.argmax(axis=1), messages.shape[1])
    # the last letter of the first message (the posterior is frozen from an impossible token on)
    where = np.clip(first_delimiter - 1, 0, messages.shape[1] - 1)
    posterior = result.posterior[np.arange(messages.shape[0]), where]                  # (B, K)
    well_formed = result.possible & (first_delimiter == messages.shape[1] - 1)
    top_two = np.sort(posterior, axis=1)[:, -2:] if posterior.shape[1] > 1 else np.c_[np.zeros(len(posterior)), posterior]
    readable = top_two[:, 1] - top_two[:, 0] > TIE_TOLERANCE
    intention = np.where(readable, posterior.argmax(axis=1), -1)
    return Reading(intention, posterior.max(axis=1), well_formed, readable)


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------

def train_fresh(language: Language, model_config: GPTConfig, train_config: TrainConfig, out_dir: Path,
                progress: bool = True) -> tuple:
    """``tinylatent.train.train`` into ``out_dir``, replacing a checkpoint and log left there
    by an earlier run of the same experiment. Returns (model, summary).

    Only for a run folder named in the script's outputs: :func:`check_outputs` has made sure,
    before any work, that what is there is the script's own (or that ``--force`` was given)."""
    out_dir = Path(out_dir)
    for name in (CHECKPOINT_FILENAME, LOG_FILENAME):
        (out_dir / name).unlink(missing_ok=True)
    model, summary = train(language, model_config, train_config, out_dir, progress=progress)
    return model, summary


def small_model(vocab_size: int, context_length: int, n_layer: int = 2, n_head: int = 4, d_model: int = 64) -> GPTConfig:
    """``GPTConfig.small``'s shape (2 layers, 4 heads, width 64) with this context, or a smaller one."""
    base = GPTConfig.small(vocab_size)
    return GPTConfig(vocab_size=vocab_size, context_length=context_length, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, bias=base.bias, tie_embeddings=base.tie_embeddings)


def next_token_probs(model, prompts: np.ndarray) -> np.ndarray:
    """p(next token | prompt) after each of B prompts of equal length: (B, V + 1) float64 on the host."""
    log_probs = predictor_log_probs(model, prompts)[:, -1, :]
    probs = np.exp(log_probs)
    return probs / probs.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Command line: --smoke / --quick / default, --out, --seed, --json; errors are one line, exit 2
# ----------------------------------------------------------------------------------------

class UsageError(Exception):
    """A bad option or setting: one line on stderr, exit status 2."""


class RaisingParser(OneLineParser):
    """``tinylatent``'s parser (``-1e-3`` is a value), whose usage errors are raised, not printed."""

    def error(self, message: str) -> None:  # argparse calls this on a bad option; it must not return
        raise UsageError(message)


def path_type(text: str) -> Path:
    """An argparse type for the scripts' paths: :func:`tinylatent.cli.path_arg` (not empty), as a Path."""
    return Path(path_arg(text))


def experiment_parser(program: str, description: str, default_out: str, json_name: str,
                      device_default: Optional[str] = "cpu", device_default_text: Optional[str] = None) -> argparse.ArgumentParser:
    """A parser with the options every experiment has; each script adds its own. ``json_name``:
    the JSON file the script writes in ``--out`` unless ``--json`` says otherwise."""
    parser = RaisingParser(prog=program, description=description)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="a tiny budget (seconds): checks that everything runs")
    size.add_argument("--quick", action="store_true", help="a small budget (a few minutes on 2 cores)")
    parser.add_argument("--out", type=path_type, default=Path(default_out), help=f"output folder (default {default_out})")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random stream (default 0)")
    parser.add_argument("--json", type=path_type, default=None,
                        help=f"where to write the numbers (default OUT/{json_name})")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="print nothing while training")
    add_device_argument(parser, "the models train and run (the exact oracle reads on the CPU)",
                        default=device_default, default_text=device_default_text)
    return parser


def budget_of(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "default"


def check_common(args: argparse.Namespace, program: str, outputs: list) -> None:
    """The options every experiment has; the device and the output paths are checked now, before
    any training (``outputs``: :func:`check_outputs`)."""
    if args.seed < 0:
        raise UsageError(f"--seed must be ≥ 0; got {args.seed}")
    array_module(args.device)  # a missing GPU: one line (run_script), before any work
    check_outputs(args, program, outputs)


# ----------------------------------------------------------------------------------------
# Outputs: nothing a user made is replaced without --force
# ----------------------------------------------------------------------------------------

MARKER_FILENAME = ".tinylatent-experiment.json"  # in --out: which script wrote which file there, and its size and time


def run_files(*folders) -> list:
    """What :func:`tinylatent.train.train` writes in each run folder, as paths relative to ``--out``."""
    return [Path(folder) / name for folder in folders for name in (CHECKPOINT_FILENAME, LOG_FILENAME)]


def report_files(name: str, args: argparse.Namespace) -> list:
    """What :func:`finish` writes, relative to ``--out``: the plot, and the JSON unless ``--json`` puts it elsewhere."""
    return [Path(f"{name}.png")] + ([Path(f"{name}.json")] if args.json is None else [])


def fingerprint(path: Path) -> Optional[list]:
    """[size, modification time in ns] of a file, or None if there is none: a file rewritten since
    it was recorded (by anyone) has another fingerprint."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return [status.st_size, status.st_mtime_ns]


def recorded_files(folder: Path) -> Optional[dict]:
    """The record in ``folder`` (:func:`record_outputs`): {path relative to it: {"by": script,
    "fingerprint": [size, ns]}}; {} when there is none, None when a file of the record's name is
    there but is not one (the user's file, then)."""
    try:
        record = json.loads((Path(folder) / MARKER_FILENAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not (isinstance(files, dict) and all(isinstance(entry, dict) for entry in files.values())):
        return None
    return files


def check_outputs(args: argparse.Namespace, program: str, outputs: list) -> None:
    """Refuse, before any work, outputs that could not be written or must not be replaced.

    ``--out`` must be a folder (or not exist yet) and an explicit ``--json`` a new file, or one that
    ``--force`` may replace, and not one of the script's other outputs. ``outputs`` are the files
    the script writes inside ``--out`` (paths relative to it). One that exists is replaced without
    ``--force`` only if a run of this script wrote it and it has not changed since (its size and
    time are those :func:`record_outputs` recorded): a checkpoint, a JSON file or a plot that
    someone else put there, even later into a folder the script used, is never overwritten silently.
    Keeps ``outputs`` and their fingerprints now on ``args``, for :func:`record_outputs`.
    """
    try:
        check_output_folder(args.out, "--out")
        if args.json:
            check_output_file(args.json, args.force, "--json")
            if Path(args.json).resolve() in {(args.out / output).resolve() for output in [MARKER_FILENAME, *outputs]}:
                raise ValueError(f"--json {args.json} is a file {program} writes in --out already; give another path")
        for path in (args.out / output for output in outputs):
            check_output_folder(path.parent, "--out")
            if path.is_dir():
                raise ValueError(f"{path} is a folder, where {program} writes a file; choose another --out")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    args.outputs_before = {str(Path(output)): fingerprint(args.out / output) for output in outputs}
    if args.force:
        return
    recorded = recorded_files(args.out)
    if recorded is None:                # a file of the record's name that is not one: not ours either
        raise UsageError(f"{args.out / MARKER_FILENAME} exists, and is not a record of {program}'s files: "
                         "pass --force to replace it, or choose another --out")
    for output, before in args.outputs_before.items():
        ours = recorded.get(output) == {"by": program, "fingerprint": before}
        if before is not None and not ours:
            raise UsageError(f"{args.out / output} exists, and no run of {program} recorded it (a run that was "
                             "killed records nothing): pass --force to replace the files it writes there, or "
                             "choose another --out")


def record_outputs(args: argparse.Namespace, program: str) -> None:
    """After a run (finished or not): record in ``--out`` each output it wrote (whose fingerprint
    changed since :func:`check_outputs`), so that the next run of ``program`` may replace it."""
    fingerprints_now = {output: fingerprint(args.out / output) for output in args.outputs_before}
    written = {output: now for output, now in fingerprints_now.items() if now != args.outputs_before[output]}
    if not written:
        return
    files = {**(recorded_files(args.out) or {})}
    for output, now in written.items():
        if now is None:
            files.pop(output, None)
        else:
            files[output] = {"by": program, "fingerprint": now}
    write_json(args.out / MARKER_FILENAME, {
        "note": "the files tinylatent's example scripts wrote here, with their size and modification time: "
                "a script replaces one of them without --force only while it is unchanged "
                "(examples/_common.py, check_outputs)",
        "files": dict(sorted(files.items()))})


def require(condition: bool, message: str) -> None:
    """Raise a :class:`UsageError` with ``message`` unless ``condition``."""
    if not condition:
        raise UsageError(message)


def run_main(program: str, parse: Callable, run: Callable, argv=None) -> int:
    """Parse (which checks the outputs), run, and record the files the run wrote; turn a bad option or
    setting into one line on stderr and exit status 2. A reader of standard output that leaves early
    (``| head -1``) stops nothing."""
    def parse_run_record() -> None:
        args = parse(argv)
        try:
            run(args)
        finally:                      # also after an error or Ctrl-C: what was written is the script's
            with keyboard_interrupt_deferred():  # a second Ctrl-C waits for the record
                record_outputs(args, program)

    try:
        return run_script(program, parse_run_record)
    except UsageError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------
# Output: JSON (tinylatent._io.write_json: NaN as null) and optional plots
# ----------------------------------------------------------------------------------------

def finish(report: dict, args: argparse.Namespace, name: str, save_plot: Callable, started: float) -> dict:
    """Save the plot (``save_plot(report, path)`` returns the path, or None without matplotlib),
    then the JSON (atomically, ``tinylatent._io.write_json``) to ``--json`` or OUT/<name>.json."""
    plot = save_plot(report, args.out / f"{name}.png")
    report["plot"] = str(plot) if plot else None
    print(f"plot saved to {plot}" if plot else PLOT_SKIPPED)
    report["seconds"] = time.perf_counter() - started
    json_path = args.json or args.out / f"{name}.json"
    write_json(json_path, report)
    print(f"numbers written to {json_path}")
    return report


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(figure, path: Path, plt, dpi: int = 120) -> Path:
    """Lay the figure out, write it to ``path`` (folders made as needed) and close it."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def format_row(cells, widths) -> str:
    """One line of a table: each cell right-aligned in its width (the first left-aligned)."""
    out = []
    for i, (cell, width) in enumerate(zip(cells, widths)):
        out.append(f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}")
    return "  ".join(out)
