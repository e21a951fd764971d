"""Throughput of the exact oracle, side by side with hmmlearn on the same log-likelihoods.

The workload (the foundation issue's): 1,000 sequences of 128 letters from a mixture
language with the paper's letter chains (6 intentions × 18 letters, the intention fixed
per sequence, no delimiters).

hmmlearn sees the same model as a plain HMM: hidden state = (intention, current letter),
108 states; block-diagonal transitions A_θ; the letter as a one-hot emission; start
probabilities π(θ) s_θ[c]. Its scaling implementation computes log q(x) for every
sequence, and we check that both agree to 1e-8.

Our oracle gains from the structure: the letters are observed, so only the intention is
hidden (a 6-vector per sequence instead of 108 states), and the filter is vectorised over
the batch (one Python step per time step, not per sequence).

    python benchmarks/bench_oracle.py [--sequences 1000] [--length 128] [--eta 0.02] [--device cpu|gpu]
        [--json PATH [--force]]

With ``--device gpu`` our oracle filters CuPy arrays (the letters are moved there before the
clock starts; each timing waits for the GPU's queued work, and the fastest of ``--repeats``
runs leaves out the first run's kernel compilation); hmmlearn stays on the CPU.

A bad option is one line on stderr and exit status 2; the --json path is checked before the run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402  (first: then a Ctrl-C while the rest loads is one line, not a traceback)

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
from tinylatent import backend  # noqa: E402
from tinylatent._io import write_json  # noqa: E402
from tinylatent.cli import add_device_argument, int_in  # noqa: E402
from tinylatent.language import fixed_length, mixture_language, paper_language, sample_messages  # noqa: E402
from tinylatent.oracle import Oracle  # noqa: E402


def best_of(repeats: int, function, sync=lambda: None):
    """The fastest of ``repeats`` runs (seconds) and the last result; ``sync`` waits for a GPU's
    queued work before each clock read (the first run on a GPU also compiles its kernels)."""
    times, result = [], None
    for _ in range(repeats):
        seconds, result = _bench.timed(function, sync)   # only the last result is kept
        times.append(seconds)
    return min(times), result


def hmmlearn_model(language):
    """The language as an hmmlearn CategoricalHMM over (intention, letter) states."""
    from hmmlearn.hmm import CategoricalHMM

    n_intentions, n_letters = language.n_intentions, language.n_letters
    n_states = n_intentions * n_letters
    start = (language.initial[:, None] * language.first_letter).reshape(n_states)
    transmat = np.zeros((n_states, n_states), dtype=np.float64)
    for theta in range(n_intentions):
        block = slice(theta * n_letters, (theta + 1) * n_letters)
        transmat[block, block] = language.letter_transition[theta]
    emission = np.tile(np.eye(n_letters, dtype=np.float64), (n_intentions, 1))
    model = CategoricalHMM(n_components=n_states, implementation="scaling", init_params="", params="")
    model.n_features = n_letters
    model.startprob_, model.transmat_, model.emissionprob_ = start, transmat, emission
    return model


PROGRAM = "bench_oracle.py"
MAX_TOKENS = 20_000_000  # sequences × length: the oracle's arrays for more would not fit a small machine


def main(argv=None) -> int:
    parser = _bench.parser(PROGRAM, __doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int_in(1, MAX_TOKENS // 2), default=1000)
    parser.add_argument("--length", type=int_in(2, MAX_TOKENS // 2), default=128, help="letters per sequence")
    parser.add_argument("--eta", type=_bench.non_negative_float, default=0.02, help="noise of the paper's letter chains")
    parser.add_argument("--repeats", type=int_in(1, 1_000), default=3)
    parser.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    add_device_argument(parser, "our oracle runs (hmmlearn runs on the CPU)")
    _bench.add_json_arguments(parser)
    args = parser.parse_args(argv)
    if args.sequences * args.length > MAX_TOKENS:
        parser.error(f"--sequences × --length must be at most {MAX_TOKENS:,} letters; "
                     f"got {args.sequences:,} × {args.length:,}")
    return _bench.run(PROGRAM, args, lambda: run(args))


def run(args) -> int:
    backend.array_module(args.device)  # a missing GPU: one line, before anything is drawn or timed
    base = paper_language(args.eta)
    language = mixture_language(dataclasses.replace(base, length_probs=fixed_length(args.length)),
                                prior=np.full(base.n_intentions, 1.0 / base.n_intentions))
    rng = np.random.default_rng(args.seed)
    intentions = rng.integers(0, language.n_intentions, size=args.sequences)
    sequences = np.stack(sample_messages(language, intentions, rng))[:, :-1]  # drop the delimiter: (N, length)
    n_tokens = sequences.size
    oracle = Oracle(language)
    tokens = backend.to_device(sequences, args.device)   # the letters are on the device before the clock starts
    sync = _bench.synchroniser(args.device)

    rows = []
    where = "" if args.device == "cpu" else " (GPU)"
    seconds, ours = best_of(args.repeats, lambda: oracle.filter(tokens, predictive=False).log_marginal, sync)
    ours = backend.to_host(ours)
    rows.append((f"tinylatent log q(x) + posteriors{where}", seconds))
    seconds_pred, _ = best_of(args.repeats, lambda: oracle.filter(tokens, predictive=True), sync)
    rows.append((f"tinylatent + next-token predictive{where}", seconds_pred))

    figures = {"sequences": args.sequences, "length": args.length, "eta": args.eta, "tokens": int(n_tokens),
               "device": args.device, "threads": _bench.blas_threads(), "rows": {}}
    try:
        import hmmlearn  # noqa: F401
        have_hmmlearn = True
    except ImportError:
        have_hmmlearn = False
    if have_hmmlearn:
        model = hmmlearn_model(language)
        flat, lengths = sequences.reshape(-1, 1) - 1, np.full(args.sequences, args.length)
        seconds_hmm, total = best_of(args.repeats, lambda: model.score(flat, lengths))
        rows.append(("hmmlearn CategoricalHMM (scaling), 108 states", seconds_hmm))
        per_sequence = np.array([model.score(seq[:, None] - 1) for seq in sequences[: min(200, args.sequences)]])
        difference = float(np.abs(per_sequence - ours[: len(per_sequence)]).max())
        total_difference = abs(float(total) - float(ours.sum()))
        agree = difference <= 1e-8 and total_difference <= 1e-8 * max(1.0, abs(float(total)))
        figures.update(hmmlearn_max_abs_difference=difference, hmmlearn_total_difference=total_difference,
                       agree_to_1e_8=agree, speedup_vs_hmmlearn=seconds_hmm / rows[0][1])

    print(f"oracle throughput: {args.sequences} sequences × {args.length} letters, mixture of the paper's "
          f"letter chains (η = {args.eta:g})")
    print(f"{'method':<48} {'seconds':>9} {'sequences/s':>13} {'tokens/s':>13}")
    for name, secs in rows:
        print(f"{name:<48} {secs:>9.4f} {args.sequences / secs:>13,.0f} {n_tokens / secs:>13,.0f}")
        figures["rows"][name] = {"seconds": secs, "sequences_per_s": args.sequences / secs, "tokens_per_s": n_tokens / secs}
    if have_hmmlearn:
        print(f"agreement with hmmlearn: max |Δ log q(x)| = {figures['hmmlearn_max_abs_difference']:.2e} "
              f"(first {len(per_sequence)} sequences), total Δ = {figures['hmmlearn_total_difference']:.2e} "
              f"-> {'agree' if figures['agree_to_1e_8'] else 'DISAGREE'} to 1e-8")
        print(f"speed-up over hmmlearn: {figures['speedup_vs_hmmlearn']:.0f}× (target ≥ 100×)")
    else:
        print("hmmlearn is not installed: `pip install hmmlearn` to compare against it")
    if args.json:
        write_json(args.json, figures)
        print(f"wrote {args.json}")
    return 0 if (not have_hmmlearn or figures["agree_to_1e_8"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
