"""Sampling speed with a key-value cache versus recomputing the whole context for every token.

For each prompt length L, ``GPT.generate`` is timed twice, once for 1 new token and once
for 1 + n, on the same prompt and seed, in rounds over all lengths (the medians of
``--repeats`` rounds are reported); the difference divided by n is the cost of one
more token at a context of about L + n/2 tokens, and the 1-token run is the prompt's cost
(the cache's prefill, or one full forward). With ``use_cache=True`` a new token runs one
position through the model (its attention reads the cached keys and values), so its
cost should not grow with L; without the cache the whole window is recomputed, so it
grows linearly. Both modes sample the same tokens for the same seed (checked, and
reported).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_generate.py [--config paper] [--batch 1]
        [--contexts 8,16,32,64,96] [--new-tokens 16] [--repeats 3] [--threads N]
        [--clock cpu|wall] [--device cpu|gpu] [--json PATH [--force]]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402  (first: then a Ctrl-C while the rest loads is one line, not a traceback)

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from _bench import blas_threads, set_blas_threads, synchroniser  # noqa: E402
from bench_train import CONFIGS  # noqa: E402
from tinylatent import backend  # noqa: E402
from tinylatent._io import write_json  # noqa: E402
from tinylatent.cli import add_device_argument, int_in  # noqa: E402
from tinylatent.gpt import GPT  # noqa: E402

PROGRAM = "bench_generate.py"


def time_generate(model: GPT, prompt, n_new: int, use_cache: bool, sync, clock):
    """(seconds by ``clock``, tokens) of one ``model.generate(prompt, n_new)`` with a fixed seed."""
    return _bench.timed(lambda: model.generate(prompt, n_new, np.random.default_rng(1), use_cache=use_cache),
                        sync, clock)


def main(argv=None) -> int:
    parser = _bench.parser(PROGRAM, __doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="paper")
    parser.add_argument("--batch", type=int_in(1, 1_024), default=1, help="sequences sampled together")
    parser.add_argument("--contexts", default="8,16,32,64,96", help="prompt lengths L, comma-separated")
    parser.add_argument("--new-tokens", type=int_in(1, 1_024), default=16, help="n: tokens whose cost is averaged")
    parser.add_argument("--repeats", type=int_in(1, 1_000), default=3)
    add_device_argument(parser, "generation runs")
    _bench.add_threads_argument(parser, "BLAS threads (default: as the environment sets)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU time (steady on a shared machine, for one thread); "
                             "wall: the wall clock (default cpu; wall on a GPU)")
    _bench.add_json_arguments(parser)
    args = parser.parse_args(argv)
    config = CONFIGS[args.config][0]
    try:
        contexts = [int(c) for c in args.contexts.split(",") if c]
    except ValueError:
        parser.error(f"--contexts takes comma-separated integers; got {args.contexts!r}")
    if not contexts or min(contexts) < 1 or max(contexts) + args.new_tokens + 1 > config.context_length:
        parser.error(f"every prompt length L needs 1 <= L and L + new tokens + 1 <= context_length "
                     f"= {config.context_length}")
    return _bench.run(PROGRAM, args, lambda: run(args, config, contexts))


def run(args, config, contexts: list) -> int:
    backend.array_module(args.device)  # a missing GPU: one line, before anything is timed
    limits = set_blas_threads(args.threads) if args.threads else None  # noqa: F841 (kept alive)
    sync = synchroniser(args.device)
    clock_name = "wall" if args.device == "gpu" else args.clock
    clock = time.process_time if clock_name == "cpu" else time.perf_counter

    rng = np.random.default_rng(0)
    model = GPT.create(config, rng, device=args.device)
    figures = {"config": args.config, "model": config.to_dict(), "batch": args.batch, "new_tokens": args.new_tokens,
               "device": args.device, "blas_threads": blas_threads(), "clock": clock_name,
               "load_average_at_start": os.getloadavg()[0], "rows": []}
    print(f"generation, {args.config} model ({config.num_params() / 1e6:.2f} M parameters), batch {args.batch}, "
          f"float32, device {args.device}, BLAS threads {figures['blas_threads']}")
    print(f"per-token cost = (time for 1 + {args.new_tokens} tokens - time for 1) / {args.new_tokens}, "
          f"by {'CPU time' if clock_name == 'cpu' else 'wall clock'}; load average {figures['load_average_at_start']:.2f}")
    print(f"{'prompt L':>8} | {'KV cache: prompt ms':>19} {'ms/token':>9} {'tokens/s':>9} | "
          f"{'recompute: prompt ms':>20} {'ms/token':>9} {'tokens/s':>9} | {'speed-up':>8} {'same tokens':>11}")
    warm_up_prompt = rng.integers(0, config.vocab_size, size=(args.batch, 4))
    for use_cache in (True, False):  # warm up both ways (on a GPU, each compiles its own kernels on first use)
        model.generate(warm_up_prompt, 2, np.random.default_rng(0), use_cache=use_cache)
    prompts = {L: rng.integers(0, config.vocab_size, size=(args.batch, L)) for L in contexts}
    modes = (("cache", True), ("recompute", False))
    samples = {(L, mode): {"prompt": [], "per_token": []} for L in contexts for mode, _ in modes}
    tokens = {}
    for _ in range(args.repeats):  # rounds over every length and mode, so that load drift hits all alike
        for L in contexts:
            for mode, use_cache in modes:
                first, _ = time_generate(model, prompts[L], 1, use_cache, sync, clock)
                total, tokens[L, mode] = time_generate(model, prompts[L], 1 + args.new_tokens, use_cache, sync, clock)
                samples[L, mode]["prompt"].append(first)
                samples[L, mode]["per_token"].append(max(total - first, 0.0) / args.new_tokens)
    for L in contexts:
        row = {"prompt_length": L}
        for mode, _ in modes:
            per_token = statistics.median(samples[L, mode]["per_token"])
            row[mode] = {"prompt_seconds": statistics.median(samples[L, mode]["prompt"]),
                         "seconds_per_token": per_token,
                         "tokens_per_s": args.batch / per_token if per_token > 0 else float("inf")}
        cache_per_token = row["cache"]["seconds_per_token"]
        row["speedup"] = row["recompute"]["seconds_per_token"] / cache_per_token if cache_per_token > 0 else float("inf")
        row["same_tokens"] = bool(np.array_equal(tokens[L, "cache"], tokens[L, "recompute"]))
        figures["rows"].append(row)
        c, r = row["cache"], row["recompute"]
        print(f"{L:>8} | {c['prompt_seconds'] * 1e3:>19.1f} {c['seconds_per_token'] * 1e3:>9.2f} "
              f"{c['tokens_per_s']:>9.1f} | {r['prompt_seconds'] * 1e3:>20.1f} {r['seconds_per_token'] * 1e3:>9.2f} "
              f"{r['tokens_per_s']:>9.1f} | {row['speedup']:>7.1f}× {'yes' if row['same_tokens'] else 'NO':>11}")
    cached = [row["cache"]["seconds_per_token"] for row in figures["rows"]]
    figures["cache_per_token_max_over_min"] = max(cached) / min(cached) if min(cached) > 0 else float("inf")
    print(f"with the cache, the slowest per-token cost is {figures['cache_per_token_max_over_min']:.2f}× the "
          f"fastest across prompt lengths {contexts[0]}..{contexts[-1]}")
    if args.json:
        write_json(args.json, figures)
        print(f"wrote {args.json}")
    return 0 if all(row["same_tokens"] for row in figures["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
