"""The paper's simulation, reproduced: train GPTs on its languages and score them against the exact oracle.

Hui Jiang's paper (arXiv 2304.09960; docs/claims.md §7) trained a GPT on its doubly-embedded
Markov-chain language at noise levels η and measured convergence, language understanding
and in-context learning (ICL) against an approximate reference. This script does the same
with tinylatent's exact oracle, so each model number splits into the language's share (what
a perfect model p = q still scores) and the model's share (docs/evaluation.md):

    KL(target ‖ p) = KL(target ‖ q) + E_target[log q − log p]
        total      =  ambiguity part +  approximation part

Experiments (one model each):

* ``paper`` at η = 0, 0.02, 0.04 (its convergence and ICL figures) and 0.03, 0.06 (its
  understanding bar chart): the paper's own language, circular outer chain.
* ``mixture`` at η = 0, 0.02, 0.04: the same letter chains with the intention fixed for a
  whole document (T = I), the setting of the ICL theorem (docs/claims.md §4), with the first
  letter noised too (``paper-noisy-first-mixture``): in the faithful mixture the first letter
  of the query names θ* exactly (docs/claims.md §8), so every ICL ambiguity part would be 0.

Usage (from the repository root; the plots need matplotlib, ``pip install -e '.[plot]'``):

    python examples/reproduce_paper.py                 # the small CPU model, under 30 min on 2 cores
    python examples/reproduce_paper.py --quick         # the same steps, a smaller budget: under 3 min
    python examples/reproduce_paper.py --smoke         # seconds: checks that everything runs (the tests)
    python examples/reproduce_paper.py --preset paper --device gpu   # the paper's 21M-parameter model
    python examples/reproduce_paper.py --steps 20000 --only paper-eta0 paper-eta0.02 paper-eta0.04 --jobs 3 --out out/long
                                                       # the run that measures the approximation targets (32–38 min)

``--jobs N`` trains N experiments at once, one worker process each (default: the cores on a
CPU, 1 on a GPU); the numbers do not depend on it.

docs/results.md has the measured tables, timings and what each budget reaches.

Writes into ``--out`` (default ``out/reproduce_paper``): ``results.md`` (the tables, printed
too), ``results.json`` (every number; ``--json PATH`` puts it elsewhere), ``convergence.png``,
``understanding.png``, ``icl.png``, and one training run per experiment in ``runs/<name>/``
(a checkpoint and its log). Run again with the same ``--out`` and the trained checkpoints
are reused (an interrupted run continues from its last checkpoint). In a folder that holds no
earlier run of this script (examples/_common.py, ``check_outputs``), any of these files that
exists already is refused before any work, unless ``--force``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402  (first: it sets OPENBLAS_NUM_THREADS=1 before NumPy loads; docs/results.md)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import NamedTuple, Optional  # noqa: E402

from tinylatent._io import write_json, write_text  # noqa: E402
from tinylatent._signals import sigterm_as_interrupt  # noqa: E402
from tinylatent.checkpoint import CHECKPOINT_FILENAME  # noqa: E402
from tinylatent.cli import stdout_reader_may_leave  # noqa: E402
from tinylatent.evaluate import evaluate  # noqa: E402
from tinylatent.gpt import GPTConfig  # noqa: E402
from tinylatent.language import preset  # noqa: E402
from tinylatent.paper_results import PAPER_RESULTS  # noqa: E402
from tinylatent.train import LOG_FILENAME, TrainConfig, outer_chain_mixes, train  # noqa: E402

PROGRAM = "reproduce_paper.py"
RESULTS_JSON = "results.json"  # in --out, unless --json puts it elsewhere
APPROXIMATION_TARGET = 0.01  # nats: the model's share of every understanding and ICL KL should stay below this

class Experiment(NamedTuple):
    """One model: trained on ``preset(language, eta)`` and evaluated on the same language."""

    name: str
    family: str      # "paper" or "mixture"
    language: str    # a tinylatent.language preset
    eta: float


EXPERIMENTS = (
    [Experiment(f"paper-eta{eta:g}", "paper", "paper", eta) for eta in (0.0, 0.02, 0.03, 0.04, 0.06)]
    + [Experiment(f"mixture-eta{eta:g}", "mixture", "paper-noisy-first-mixture", eta) for eta in (0.0, 0.02, 0.04)]
)


class ModelPreset(NamedTuple):
    """A model and how to train it (``steps`` at the default budget)."""

    config: GPTConfig
    max_lr: float
    steps: int
    batch_size: int
    weight_decay: float
    min_lr: Optional[float]   # where the cosine ends; None: TrainConfig's max_lr / 10
    short_windows: int        # extra windows of SHORT_CONTEXT tokens a step (TrainConfig.short_windows)


SHORT_CONTEXT = 8  # the longest understanding prompt, a delimiter and 6 letters, is 7 tokens


def model_presets(vocab_size: int) -> dict:
    """The model and its training, per ``--preset``. Both read 192 tokens, enough for m = 8
    examples (a delimiter, 8 × 22 tokens, a query: 178).

    ``small``: tinylatent's CPU model, lr 3e-3, no weight decay, the cosine down to 0, 6000
    steps, and 64 short windows of 8 tokens a step besides the 12 of 192. Two rare positions
    dominate the evaluation:

    * the first letter of a message (one token in 22): q puts exactly 0 outside the six
      letters of θ and θ + 1 there, and the model's leak outside them is most of its
      approximation part. With the paper's decay 0.1 and a floor of lr/10 that leak stayed
      at 2–3% however long the model trained (12,000 steps: 0.030 nats on the paper's ICL
      target at η = 0.04); without decay and with the learning rate going to 0 the same
      12,000 steps reach 0.011 (docs/results.md, "Tuning");
    * the first positions of a window, where the understanding prompts of 1–6 letters and
      the ICL prompt of m = 0 are read: 12 examples a step, so the model's answer there
      stays a noisy estimate (its block masses off by about ±0.007 after 30,000 steps).
      The short windows give them 76 a step for about 19% more time (docs/results.md,
      "Short windows").
      Only on the paper's language: a mixture language's windows are each drawn from their
      own document, one sampler call per window, and 64 more of them a step made those
      models train 1.7× slower, past the 30-minute budget. The targets name the paper's
      language; the mixture models train without short windows.
    ``paper``: the paper's nanoGPT and its AdamW settings (docs/claims.md §7), for a GPU.
    """
    return {
        "small": ModelPreset(replace(GPTConfig.small(vocab_size), context_length=192), 3e-3, 6000, 12,
                             weight_decay=0.0, min_lr=0.0, short_windows=64),
        "paper": ModelPreset(replace(GPTConfig.paper(vocab_size), context_length=192), 6e-4, 5000, 12,
                             weight_decay=0.1, min_lr=None, short_windows=0),
    }


class Budget(NamedTuple):
    """How much to train and evaluate. ``steps=None``: the model preset's own number."""

    steps: Optional[int]
    context_length: Optional[int]   # None: the preset's 192; shorter skips the ICL m that do not fit
    windows: int                    # convergence windows in the evaluation
    prompts: int                    # prompts per prompt length and per m
    eval_windows: int               # validation windows during training (the convergence curve)
    tiny_model: bool                # shrink the model to 1 block of width 16 (the smoke test)


BUDGETS = {
    "default": Budget(steps=None, context_length=None, windows=256, prompts=300, eval_windows=128, tiny_model=False),
    "quick": Budget(steps=300, context_length=96, windows=64, prompts=100, eval_windows=32, tiny_model=False),
    "smoke": Budget(steps=3, context_length=48, windows=4, prompts=4, eval_windows=4, tiny_model=True),
}
CURVE_POINTS = 20  # validations per training run: the points of a convergence curve


# ----------------------------------------------------------------------------------------
# Training and evaluating one experiment
# ----------------------------------------------------------------------------------------

def configs_for(model_preset: ModelPreset, budget: Budget, seed: int, device: str, steps: Optional[int] = None) -> tuple:
    """(GPTConfig, TrainConfig) of every experiment under this preset and budget (``steps``: override both)."""
    model = model_preset.config
    if budget.context_length is not None:
        model = replace(model, context_length=budget.context_length)
    if budget.tiny_model:
        model = replace(model, n_layer=1, n_head=2, d_model=16)
    steps = steps or budget.steps or model_preset.steps
    training = TrainConfig(steps=steps, batch_size=model_preset.batch_size, max_lr=model_preset.max_lr,
                           weight_decay=model_preset.weight_decay, min_lr=model_preset.min_lr,
                           short_windows=model_preset.short_windows,
                           short_context=min(SHORT_CONTEXT, model.context_length),
                           eval_interval=max(1, steps // CURVE_POINTS), eval_windows=budget.eval_windows,
                           checkpoint_interval=steps, seed=seed, device=device)
    return model, training


def read_curve(run_dir: Path) -> dict:
    """The validation losses of a run's log: {"step": [...], "val_loss": [...], "bayes_val_loss": float}."""
    steps, losses, bayes = [], [], None
    for line in (run_dir / LOG_FILENAME).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("val_loss") is not None:
            steps.append(record["step"])
            losses.append(record["val_loss"])
            bayes = record.get("bayes_val_loss")
    return {"step": steps, "val_loss": losses, "bayes_val_loss": bayes}


def available_cores() -> int:
    """The CPU cores this process may run on (``--jobs``'s default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _print_line(line: str) -> None:
    print(line, flush=True)


def _print_nothing(line: str) -> None:
    pass


def run_experiments(experiments: list, model_config: GPTConfig, train_config: TrainConfig, budget: Budget,
                    out_dir: Path, seed: int, jobs: int, verbose: bool) -> list:
    """:func:`run_experiment` for each experiment, ``jobs`` at a time; the results in the experiments' order.

    Each experiment is trained and evaluated by a worker process on one BLAS thread, so on
    a machine with ``jobs`` idle cores the wall time falls by about that factor. The results
    do not depend on ``jobs``: every experiment draws from its own seeded streams, and
    every one runs in a worker process, never in this one, also when ``jobs`` is 1 (one
    worker runs them one after another). The worker's BLAS reads
    ``OPENBLAS_NUM_THREADS`` (which ``_common`` sets to 1 unless it is given) when it
    starts, whereas this process's BLAS may have started with another thread count (NumPy
    imported before ``_common``, as in a notebook or the tests), and OpenBLAS's float32
    products can change in the last bit with the thread count (a (2048, 64) @ (64, 64)
    product does, with OpenBLAS 0.3.31).

    An experiment is handed to a worker only when one is free, so that after Ctrl-C or a
    failed experiment no further one starts. (Handed all at once, the pool would queue the
    next one behind each worker, and it would start training after Ctrl-C.) Ctrl-C, or an
    experiment that fails, stops the running ones, whether the Ctrl-C came from a terminal
    (to every process) or to this process alone (passed on): each saves its checkpoint and
    stops, and a worker still loading starts nothing. A run started with Ctrl-C ignored
    (``cmd &`` from a script, ``trap '' INT``) keeps its workers deaf to it too. SIGTERM
    (``kill PID``, a scheduler) is taken as Ctrl-C, here and in a worker that trains
    (:func:`tinylatent.train.train`); the script then says ``terminated`` and exits 143. (A run
    deaf to Ctrl-C passes it on to no worker: their running experiments finish first.)
    """
    log = _print_line if verbose else _print_nothing
    jobs = max(1, min(jobs, len(experiments)))
    waiting = [(index, (experiment, model_config, train_config, budget, out_dir, seed, log))
               for index, experiment in enumerate(experiments)]
    waiting.reverse()  # popped from the end: the experiments' order
    results = [None] * len(experiments)
    deaf = not callable(signal.getsignal(signal.SIGINT))  # SIGINT ignored: the workers ignore it too
    # "spawn": a fresh interpreter per worker (a forked copy of a process holding BLAS threads can hang).
    context = multiprocessing.get_context("spawn")
    stopped = context.Event()  # set on Ctrl-C or a failure: no worker starts an experiment after it
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_started,
                               initargs=(stopped, deaf))
    with sigterm_as_interrupt():  # `kill PID` too: Terminated, a KeyboardInterrupt, and the same path
        try:
            running = {}  # future -> the experiment's index
            while waiting or running:
                while waiting and len(running) < jobs:
                    index, arguments = waiting.pop()
                    with _ctrl_c_held():  # a worker started here loads deaf to Ctrl-C (no traceback of its imports)
                        future = pool.submit(_run_experiment_in_worker, *arguments)
                    running[future] = index
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    results[running.pop(future)] = future.result()  # a failed experiment raises here
        except BaseException:  # Ctrl-C, or a failed experiment: the running ones save and stop
            stopped.set()
            if not deaf and os.name == "posix":  # elsewhere os.kill would terminate, not interrupt
                for worker in multiprocessing.active_children():  # this script's only children: the pool's workers
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGINT)  # a second one (a terminal's Ctrl-C) is ignored there
            raise
        finally:
            _shut_down(pool)
    return results


def _shut_down(pool: ProcessPoolExecutor) -> None:
    """``pool.shutdown(wait=True)`` that a Ctrl-C cannot cut short: the workers have the signal
    already, and a main process that left early would hang at exit (Python's exit handler
    closes the queue that the pool's own thread still needs to tell idle workers to stop)."""
    while True:
        try:
            with _ctrl_c_ignored():  # signal.signal runs a pending Ctrl-C before it ignores the next
                pool.shutdown(wait=True)
            return
        except KeyboardInterrupt:  # one that was pending: the workers have it too; wait for them still
            continue


@contextlib.contextmanager
def _ctrl_c_held():
    """SIGINT blocked in this thread inside the block: one that arrives is delivered when it ends,
    and a process started inside inherits the block (the signal mask survives ``exec``)."""
    if not hasattr(signal, "pthread_sigmask"):  # not on POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _ctrl_c_ignored():
    """SIGINT ignored inside the block (main thread only; elsewhere signals are not ours)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_stopped = None  # in a worker: the main process's Event, set on Ctrl-C or a failure
_deaf = False    # in a worker: the main process ignores SIGINT, so this one does too


def _worker_started(stopped, deaf: bool) -> None:
    """A worker, once loaded: SIGINT ignored between experiments (an idle worker prints no
    traceback), then unblocked (:func:`_ctrl_c_held`). A Ctrl-C that came while it loaded
    counts as :func:`_run_experiment_in_worker`'s, which takes SIGINT back while an experiment runs."""
    global _stopped, _deaf
    _stopped, _deaf = stopped, deaf
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        if signal.SIGINT in signal.sigpending() and not deaf:
            stopped.set()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupt_once(signum, frame) -> None:
    """A worker's SIGINT handler: KeyboardInterrupt the first time, then SIGINT is ignored (the
    main process passes a terminal's Ctrl-C on, so it comes twice), so a second one can never
    cut the checkpoint the first one saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _run_experiment_in_worker(*arguments) -> dict:
    """:func:`run_experiment` in a worker process, which prints to the same standard output as
    the main one: if its reader has left (``| head -1``), the worker's line is dropped too.
    Ctrl-C stops it as it stops :func:`tinylatent.train.train` (a checkpoint, then
    ``KeyboardInterrupt``, which reaches the main process as the experiment's outcome); after
    it, or after a Ctrl-C or a failure that reached the main process first, no experiment starts."""
    if not _deaf:
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        if _stopped is not None and _stopped.is_set():  # checked once SIGINT is ours: nothing slips between
            raise KeyboardInterrupt
        with stdout_reader_may_leave():
            return run_experiment(*arguments)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_experiment(experiment: Experiment, model_config: GPTConfig, train_config: TrainConfig, budget: Budget,
                   out_dir: Path, seed: int, log) -> dict:
    """Train (or reuse a finished run in ``out_dir/runs/<name>``), then evaluate against the oracle."""
    language = preset(experiment.language, experiment.eta)
    if not outer_chain_mixes(language):
        # One document per window (train.stream_windows): a loop over windows, which would
        # make 64 short windows slow a mixture model's step 1.7× (see model_presets).
        train_config = replace(train_config, short_windows=0)
    run_dir = out_dir / "runs" / experiment.name
    reuse = (run_dir / CHECKPOINT_FILENAME).exists()
    started = time.perf_counter()
    try:
        model, summary = train(language, model_config, train_config, run_dir, resume=reuse, progress=False)
    except ValueError as exc:
        if reuse:
            raise ValueError(f"{run_dir} holds a different run ({exc}); choose another --out") from None
        raise
    trained = time.perf_counter() - started
    report = evaluate(model, language, n_windows=budget.windows, n_prompts=budget.prompts, seed=seed)
    evaluated = time.perf_counter() - started - trained
    convergence = report["convergence"]
    log(f"{experiment.name:<16} {'reused' if reuse else 'trained'} {summary['steps']} steps in {trained:6.1f} s, "
        f"evaluated in {evaluated:5.1f} s: cross-entropy {convergence['model_cross_entropy']['mean']:.4f}, "
        f"Bayes {convergence['bayes_cross_entropy']['mean']:.4f}, excess {convergence['excess_cross_entropy']['mean']:.4f}")
    return {**experiment._asdict(), "language_name": language.name, "reused_checkpoint": reuse,
            "train": summary, "train_seconds": trained, "evaluate_seconds": evaluated,
            "curve": read_curve(run_dir), "evaluation": report}


# ----------------------------------------------------------------------------------------
# Tables beside the paper's numbers
# ----------------------------------------------------------------------------------------

def _fixed(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, with no minus sign on a zero: a KL that is exactly 0 comes out
    of floating point as about −1e-17, and "-0.0000" would read as a negative divergence."""
    return f"{round(value, digits) + 0.0:.{digits}f}"  # round gives −0.0 there; −0.0 + 0.0 is +0.0


def _ci(estimate: dict, digits: int = 4) -> str:
    return f"{_fixed(estimate['mean'], digits)} [{_fixed(estimate['low'], digits)}, {_fixed(estimate['high'], digits)}]"


def _worst_approximation(rows: list, targets: tuple) -> dict:
    """The row and target whose approximation part has the largest mean."""
    candidates = [(row[target]["approximation"], row, target) for row in rows for target in targets if row.get(target)]
    estimate, row, target = max(candidates, key=lambda item: item[0]["mean"])
    return {"estimate": estimate, "at": row.get("n_letters", row.get("m")), "target": target}


def target_checks(results: list) -> list:
    """Each target of docs/results.md, measured: excess ≤ 0.01 at η = 0; every approximation part ≤ 0.01."""
    checks = []
    for result in results:
        evaluation = result["evaluation"]
        if result["family"] == "paper" and result["eta"] == 0.0:
            excess = evaluation["convergence"]["excess_cross_entropy"]
            checks.append({"experiment": result["name"], "what": "excess cross-entropy over Bayes",
                           "measured": excess, "target": APPROXIMATION_TARGET, "met": excess["mean"] <= APPROXIMATION_TARGET})
        if result["eta"] not in (0.0, 0.02, 0.04):
            continue
        for label, rows, targets in (
                ("understanding, no delimiter", evaluation["understanding"]["without_delimiter"]["rows"], ("known_intention", "paper")),
                ("understanding, leading delimiter", evaluation["understanding"]["with_delimiter"]["rows"], ("known_intention", "paper")),
                ("ICL", evaluation["icl"]["rows"], ("known_intention", "paper"))):
            worst = _worst_approximation(rows, targets)
            checks.append({"experiment": result["name"], "what": f"largest approximation part, {label}",
                           "measured": worst["estimate"], "at": worst["at"], "target_distribution": worst["target"],
                           "target": APPROXIMATION_TARGET, "met": worst["estimate"]["mean"] <= APPROXIMATION_TARGET})
    return checks


def format_tables(results: list, checks: list, description: str) -> str:
    paper_results = [r for r in results if r["family"] == "paper"]
    by_eta = {r["eta"]: r for r in paper_results}
    lines = [f"# The paper's simulation against the exact oracle ({description})", "",
             "Every number: mean [95% CI] over trials, nats. 'ambiguity' is what the exact reader q scores (a perfect",
             "model), 'approximation' the model's own share; total = ambiguity + approximation.", "",
             "## Convergence (nats/token on fresh windows; the paper: models 0.99-1.08, Bayes 0.948 at η = 0)", "",
             "| experiment | model cross-entropy | exact Bayes | excess | paper's \\|log p − log q\\|/T |",
             "|---|---|---|---|---|"]
    for r in results:
        c = r["evaluation"]["convergence"]
        lines.append(f"| {r['name']} | {_ci(c['model_cross_entropy'])} | {_ci(c['bayes_cross_entropy'])} | "
                     f"{_ci(c['excess_cross_entropy'])} | {_ci(c['paper_abs_log_ratio'])} |")
    lines += ["", "## Language understanding, prompts of 1–6 letters (mean over the lengths)", "",
              "The paper's protocol: no leading delimiter, target the true next letter given θ* (and where the",
              "message began). The known-intention target q(·|x, θ*) tells the reader θ* only.", "",
              "| η | paper's KL | target | prompt | model total | ambiguity (exact q) | approximation |",
              "|---|---|---|---|---|---|---|"]
    for eta, r in by_eta.items():
        understanding = r["evaluation"]["understanding"]
        paper_value = PAPER_RESULTS["understanding_kl"].get(eta)
        for target, target_label in (("paper", "paper's"), ("known_intention", "q(·|x,θ*)")):
            for condition, condition_label in (("without_delimiter", "letters"), ("with_delimiter", "\\n + letters")):
                mean = understanding[condition]["mean_over_lengths"][target]
                shown = f"{paper_value:g}" if (paper_value is not None and target == "paper"
                                              and condition == "without_delimiter") else ""
                lines.append(f"| {eta:g} | {shown} | {target_label} | {condition_label} | {_ci(mean['total'])} | "
                             f"{_ci(mean['ambiguity'])} | {_ci(mean['approximation'])} |")
    lines += ["", "## In-context learning: m examples under θ*, behind a leading delimiter", "",
              "paper's target: prompt = the examples, target uniform over the first letters of θ* and θ*+1 (not the",
              "Bayes answer of the task: q(next first letter | last example's θ*) under the circular chain). From m = 1",
              "on q gives the other tokens 0, so the model's probability off those six letters is its leak.",
              "known-intention target: prompt = the examples then a query letter, target q(·|query, θ*).", ""]
    for family in ("paper", "mixture"):
        family_results = [r for r in results if r["family"] == family]
        if not family_results:
            continue
        lines += [f"### {family} language ({family_results[0]['language']})", "",
                  "| η | m | paper's KL | paper's target: model total | ambiguity | approximation | model's p off the "
                  "target's letters | known-intention: model total | ambiguity | approximation | Bayes error ε_m |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in family_results:
            paper_icl = PAPER_RESULTS["icl_kl"].get(r["eta"]) if family == "paper" else None
            for row in r["evaluation"]["icl"]["rows"]:
                shown = f"{paper_icl[row['m'] - 1]:g}" if paper_icl and 1 <= row["m"] <= 4 else ""
                paper_row = row["paper"]
                paper_cells = (" | ".join([_ci(paper_row[p]) for p in ("total", "ambiguity", "approximation")]
                                          + [_ci(row["paper_off_target"])])
                               if paper_row else "n/a | n/a | n/a | n/a")
                known = " | ".join(_ci(row["known_intention"][p]) for p in ("total", "ambiguity", "approximation"))
                lines.append(f"| {r['eta']:g} | {row['m']} | {shown} | {paper_cells} | {known} | {_ci(row['bayes_error'])} |")
            for skipped in r["evaluation"]["icl"]["skipped"]:
                lines.append(f"| {r['eta']:g} | {skipped['m']} | skipped: {skipped['reason']} | | | | | | | | |")
        lines.append("")
    lines += [f"## Targets (approximation parts and the η = 0 excess ≤ {APPROXIMATION_TARGET} nats)", "",
              "| experiment | measured | where | met |", "|---|---|---|---|"]
    for check in checks:
        where = "" if "at" not in check else f"{check['target_distribution']} target, n or m = {check['at']}"
        lines.append(f"| {check['experiment']}: {check['what']} | {_ci(check['measured'])} | {where} | "
                     f"{'yes' if check['met'] else 'NO'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Plots in the style of the paper's figures (matplotlib optional)
# ----------------------------------------------------------------------------------------

def save_plots(results: list, out_dir: Path) -> list:
    """convergence.png, understanding.png, icl.png; [] when matplotlib is not installed."""
    plt = common.pyplot()
    if plt is None:
        return []
    paths = []

    # Convergence: validation loss against steps, the exact Bayes loss of the same windows dashed.
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, family in zip(axes, ("paper", "mixture")):
        for index, r in enumerate(x for x in results if x["family"] == family):
            color = f"C{index}"
            ax.plot(r["curve"]["step"], r["curve"]["val_loss"], "-", color=color, label=f"model, η = {r['eta']:g}")
            if r["curve"]["bayes_val_loss"] is not None:
                ax.axhline(r["curve"]["bayes_val_loss"], color=color, linestyle="--", linewidth=1,
                           label=f"exact Bayes, η = {r['eta']:g}")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation cross-entropy (nats/token)")
        ax.set_title(f"{family} language: model (solid) and exact Bayes (dashed)", fontsize=9)
        ax.set_yscale("log")
        _legend(ax, ncol=2)
    paths.append(str(common.save_figure(figure, out_dir / "convergence.png", plt, dpi=110)))

    # Understanding: the paper's bars beside ours (model total; exact-q ambiguity part).
    paper_results = [r for r in results if r["family"] == "paper"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, target, condition, title in (
            (axes[0], "paper", "without_delimiter", "the paper's protocol: letters, target = next letter given θ*"),
            (axes[1], "known_intention", "with_delimiter", "\\n + letters, target q(·|x, θ*)")):
        etas = [r["eta"] for r in paper_results]
        x = list(range(len(etas)))
        model = [r["evaluation"]["understanding"][condition]["mean_over_lengths"][target]["total"]["mean"] for r in paper_results]
        bayes = [r["evaluation"]["understanding"][condition]["mean_over_lengths"][target]["ambiguity"]["mean"] for r in paper_results]
        ax.bar([i - 0.27 for i in x], model, width=0.27, label="model p: KL(target ‖ p)")
        ax.bar(x, bayes, width=0.27, label="exact q: KL(target ‖ q)")
        if target == "paper":
            reported = [PAPER_RESULTS["understanding_kl"].get(eta, math.nan) for eta in etas]
            ax.bar([i + 0.27 for i in x], reported, width=0.27, label="the paper's model")
        ax.set_xticks(x, [f"η = {eta:g}" for eta in etas])
        ax.set_ylabel("KL (nats), mean over prompts of 1–6 letters")
        ax.set_title(title, fontsize=9)
        _legend(ax)
    paths.append(str(common.save_figure(figure, out_dir / "understanding.png", plt, dpi=110)))

    # ICL: KL against m; model solid, exact q dashed, the paper's crosses.
    panels = [("paper", "paper", "paper language, the paper's target"),
              ("paper", "known_intention", "paper language, target q(·|query, θ*)"),
              ("mixture", "known_intention", "mixture language, target q(·|query, θ*)")]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (family, target, title) in zip(axes, panels):
        for index, r in enumerate(x for x in results if x["family"] == family and x["eta"] in (0.0, 0.02, 0.04)):
            rows = [row for row in r["evaluation"]["icl"]["rows"] if row[target] is not None]
            m = [row["m"] for row in rows]
            color = f"C{index}"
            ax.plot(m, [row[target]["total"]["mean"] for row in rows], "o-", color=color, label=f"model, η = {r['eta']:g}")
            ax.plot(m, [row[target]["ambiguity"]["mean"] for row in rows], "--", color=color, label=f"exact q, η = {r['eta']:g}")
            if family == "paper" and target == "paper" and r["eta"] in PAPER_RESULTS["icl_kl"]:
                ax.plot([1, 2, 3, 4], PAPER_RESULTS["icl_kl"][r["eta"]], "x", color=color, markersize=8,
                        label=f"the paper, η = {r['eta']:g}")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("m, number of in-context examples")
        ax.set_ylabel("KL(target ‖ ·) (nats)")
        ax.set_title(title, fontsize=9)
        _legend(ax)
    paths.append(str(common.save_figure(figure, out_dir / "icl.png", plt, dpi=110)))
    return paths


def _legend(ax, ncol: int = 1) -> None:
    """The panel's legend, or a note that its experiments were not run (``--only``)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=ncol)
    else:
        ax.text(0.5, 0.5, "not run (see --only)", ha="center", va="center", transform=ax.transAxes)


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The options every experiment has (``--smoke``, ``--quick``, ``--out``, ``--seed``, ``--json``,
    ``--no-progress``, ``--device``; examples/_common.py), and the model's."""
    parser = common.experiment_parser(PROGRAM, __doc__.splitlines()[0], "out/reproduce_paper",
                                     json_name=RESULTS_JSON, device_default=None,
                                     device_default_text="gpu for --preset paper, cpu otherwise")
    parser.add_argument("--preset", choices=("small", "paper"), default="small",
                        help="small: the CPU model (default); paper: the paper's 21M-parameter model (for a GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of every model (default: the budget's; 6000 for the small model)")
    parser.add_argument("--only", nargs="+", choices=[e.name for e in EXPERIMENTS], default=None, metavar="NAME",
                        help=f"run only these experiments ({', '.join(e.name for e in EXPERIMENTS)})")
    parser.add_argument("--jobs", type=int, default=None,
                        help=f"experiments trained at the same time, one process each (default: on the CPU the cores, "
                             f"here {available_cores()}; on a GPU 1)")
    return parser


def selected_experiments(args: argparse.Namespace) -> list:
    """The experiments ``--only`` names, or all of them."""
    return [e for e in EXPERIMENTS if args.only is None or e.name in args.only]


def outputs(args: argparse.Namespace) -> list:
    """Every file this script writes inside --out, relative to it: each experiment's training folder,
    the tables, the plots (:func:`save_plots`) and the JSON. Checked before any work (``_common.check_outputs``)."""
    files = ["results.md", "convergence.png", "understanding.png", "icl.png"] + ([] if args.json else [RESULTS_JSON])
    return common.run_files(*(Path("runs") / e.name for e in selected_experiments(args))) + [Path(f) for f in files]


def parse_args(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.device is None:
        args.device = "gpu" if args.preset == "paper" else "cpu"
    common.check_common(args, PROGRAM, outputs(args))
    common.require(args.steps is None or args.steps >= 1, f"--steps must be a positive integer; got {args.steps}")
    common.require(args.jobs is None or args.jobs >= 1, f"--jobs must be a positive integer; got {args.jobs}")
    if args.jobs is None:
        args.jobs = 1 if args.device == "gpu" else available_cores()
    return args


def run(args: argparse.Namespace) -> dict:
    """Train and evaluate every experiment, write results.md, results.json and the plots; return the report."""
    started = time.perf_counter()
    budget_name = common.budget_of(args)
    budget = BUDGETS[budget_name]
    vocab_size = preset("paper").vocab_size
    model_config, train_config = configs_for(model_presets(vocab_size)[args.preset], budget, args.seed, args.device,
                                             args.steps)
    experiments = selected_experiments(args)
    short = (f" (+ {train_config.short_windows} × {train_config.short_context} on the paper's language)"
             if train_config.short_windows else "")
    description = (f"{args.preset} model, {budget_name} budget: {train_config.steps} steps of "
                   f"{train_config.batch_size} × {model_config.context_length} tokens{short}, lr {train_config.max_lr:g} "
                   f"(cosine to {train_config.resolved(model_config).min_lr:g}), weight decay {train_config.weight_decay:g}")

    def log(line: str) -> None:
        if not args.no_progress:
            print(line, flush=True)

    log(f"{PROGRAM}: {description}; {len(experiments)} models, {min(args.jobs, len(experiments))} at a time; "
        f"output in {args.out}")
    results = run_experiments(experiments, model_config, train_config, budget, args.out, args.seed, args.jobs,
                              verbose=not args.no_progress)
    checks = target_checks(results)
    tables = format_tables(results, checks, description)
    plots = save_plots(results, args.out)
    report = {
        "settings": {"preset": args.preset, "budget": budget_name, **budget._asdict(), "device": args.device,
                     "jobs": args.jobs,
                     "seed": args.seed, "model_config": model_config.to_dict(), "train_config": train_config.to_dict(),
                     "approximation_target": APPROXIMATION_TARGET},
        "paper": {key: ({f"{k:g}": v for k, v in value.items()} if isinstance(value, dict) else value)
                  for key, value in PAPER_RESULTS.items()},
        "experiments": results,
        "targets": checks,
        "plots": plots,
        "seconds": time.perf_counter() - started,
    }
    json_path = args.json or args.out / RESULTS_JSON
    write_text(args.out / "results.md", tables + "\n")
    write_json(json_path, report)
    print()
    print(tables)
    print()
    print(f"plots: {', '.join(plots)}" if plots else common.PLOT_SKIPPED)
    print(f"tables in {args.out / 'results.md'}, every number in {json_path}; {report['seconds']:.0f} s in all")
    return report


def main(argv=None) -> int:
    return common.run_main(PROGRAM, parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
