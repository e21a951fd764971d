"""Training-step throughput of tinylatent's NumPy GPT, side by side with PyTorch eager.

One step = forward, backward and one AdamW update (no gradient clipping, on both sides)
on a batch of random token windows, float32. For each configuration it reports:

* tokens/s and achieved GFLOP/s. Model FLOPs per token are nanoGPT's / PaLM's estimate
  6 N + 12 L C T: 6 N for the forward and backward of the weight matmuls (N = parameters
  without ``wpe``, so the tied head counts) and 12 L C T for the attention products
  q·kᵀ and att·v over the full T×T square (causality is not credited);
* the float32 matmul peak measured on this machine in the same run (a 2048³ product, or
  larger on a GPU until one takes 10 ms; best of several, by the same clock), and
  MFU = achieved / peak;
* the step's own matmuls replayed back to back (the same shapes and layouts as
  :mod:`tinylatent.layers` uses, on random arrays), timed in the same rounds as the
  steps, and the ratio step / matmuls: how much everything that is not a matmul costs;
* the time split by layer kind (an instrumented extra step: each layer function is
  wrapped with a timer; "other" is the rest: residual adds, reshapes, Python);
* on a GPU, the host time to issue one step (every kernel launched, none waited for),
  ours and PyTorch's, as a share of the step: near 100% the step is bound by the Python
  and launch overhead of its many small kernels, not by the GPU; and that issue time split
  by layer kind (a second instrumented step that waits for nothing), to show which layers
  a launch-bound step should fuse first;
* peak memory: the largest amount of NumPy memory allocated during one step above what
  was held before it (``tracemalloc``, which NumPy reports its allocations to), next to
  the activations the backward pass keeps (the forward cache's arrays, each buffer once).

Every timed step is measured on two clocks: the wall clock, and the CPU time of this
process. On a machine shared with other work the wall clock also counts the time slices
that other processes took; with one thread the CPU time does not, so it gives the steadier
ratios (with several threads it sums them, so only the wall clock means anything there).

With ``--vs torch`` (when PyTorch is importable) the same architecture with the same
weights runs in PyTorch eager on the same device and the same number of threads
(``torch.set_num_threads``), nanoGPT's way (``F.scaled_dot_product_attention``,
``torch.optim.AdamW``); steps alternate ours, torch, ours, torch, ... so that both see
the same machine load, and each pair gives a ratio of throughputs ours/PyTorch
(= PyTorch's step time / ours). On a GPU both sides' float32 matrix products run at the
same precision: PyTorch's ``set_float32_matmul_precision`` follows CuPy's ``CUPY_TF32``
(off unless set), so neither side's cuBLAS gets TF32 the other lacks. One difference is
PyTorch's own: its float32 attention (``scaled_dot_product_attention``, the
memory-efficient kernel) computes q·kᵀ and att·v on tensor cores at float32 accuracy
(3×TF32), whatever that setting; those products are about 3% of the paper model's FLOPs.
On a GPU only the wall clock is reported (the CPU time of a process that waits for the
device says nothing).

Threads: BLAS reads its thread count at start-up, so set it in the environment
(``OPENBLAS_NUM_THREADS=1``) or pass ``--threads N`` (needs threadpoolctl). The count in
use is read with threadpoolctl when installed, else from OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS, else reported as "default".

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_train.py --vs torch [--configs small,medium,paper]
        [--steps 5] [--threads N] [--device cpu|gpu] [--json PATH [--force]]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402  (first: then a Ctrl-C while the rest loads is one line, not a traceback)

import gc  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
from _bench import blas_threads, set_blas_threads, synchroniser  # noqa: E402

from tinylatent import backend, gpt, layers  # noqa: E402
from tinylatent._io import write_json  # noqa: E402
from tinylatent.cli import add_device_argument, int_in  # noqa: E402
from tinylatent.gpt import GPT, GPTConfig  # noqa: E402
from tinylatent.optim import AdamW  # noqa: E402

CONTEXT = 128          # tokens per window, the paper's context
LEARNING_RATE = 1e-4   # constant: the schedule is not what is measured

# glibc's allocator settings that decide whether the memory a step frees is kept for the
# next step or returned to the OS (and page-faulted in again): see docs/performance.md
MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")

CONFIGS = {
    # name: (config, batch size)
    "small": (GPTConfig.small(), 32),                                    # the CPU default (d_model 64)
    "medium": (GPTConfig(n_layer=3, n_head=8, d_model=256), 32),
    "paper": (GPTConfig.paper(), 16),                                    # 21.3 M parameters
}


# --------------------------------------------------------------------------------------
# the machine: threads, synchronisation, matmul peak
# --------------------------------------------------------------------------------------

def seconds_of(function, sync) -> float:
    return _bench.timed(function, sync)[0]


def wall_and_cpu_seconds(function, sync) -> tuple:
    """(wall-clock seconds, CPU seconds of this process) of one call.

    On a shared machine the wall clock also counts the time slices other processes took
    from ours; the CPU time does not. With one thread they agree on an idle machine.
    """
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def issue_seconds(function, sync) -> float:
    """Host seconds to call ``function`` without waiting for the device: on a GPU, the time
    to launch its kernels (they run meanwhile); on the CPU, the same as the wall clock."""
    sync()
    start = time.perf_counter()
    function()
    issued = time.perf_counter() - start
    sync()
    return issued


PEAK_SECONDS = 0.01     # the matmul peak's product is made big enough to take at least this long ...
LARGEST_PEAK_SIZE = 8192  # ... up to this size (three 8192² float32 arrays: 768 MiB)


def peak_size(multiply, sync) -> int:
    """The side n of the square product for the peak: 2048, doubled while one product takes
    less than PEAK_SECONDS (a 2048³ product is ~0.1 s on two CPU cores but ~0.3 ms on an
    H100, where the waits around it would lower the peak by a few percent). ``multiply(n)``
    returns a function that runs one n³ product."""
    n = 2048
    while n < LARGEST_PEAK_SIZE:
        run = multiply(n)
        run()                                             # warm up
        if seconds_of(run, sync) >= PEAK_SECONDS:
            break
        n *= 2
    return n


def _best_gflops(multiply, sync, repeats: int) -> dict:
    """GFLOP/s of the best of ``repeats`` n³ products (n from :func:`peak_size`), by each clock, and ``"n"``."""
    n = peak_size(multiply, sync)
    run = multiply(n)
    run()  # warm up
    times = [wall_and_cpu_seconds(run, sync) for _ in range(repeats)]
    peaks = {clock: 2.0 * n ** 3 / min(t[i] for t in times) / 1e9 for i, clock in enumerate(("wall", "cpu"))}
    return {**peaks, "n": n}


def matmul_peak(device: str, sync, repeats: int = 5) -> dict:
    """float32 GFLOP/s of an (n, n) @ (n, n) product (n from :func:`peak_size`), the best of
    ``repeats``, by each clock, and ``"n"``."""
    xp = backend.array_module(device)
    rng = np.random.default_rng(0)

    def multiply(n):
        a, b = (backend.to_device(rng.standard_normal((n, n)), device, dtype=np.float32) for _ in range(2))
        out = xp.empty((n, n), dtype=xp.float32)
        return lambda: xp.matmul(a, b, out=out)

    return _best_gflops(multiply, sync, repeats)


def cupy_tf32() -> bool:
    """Whether CuPy's float32 matmuls use TF32 tensor cores: CuPy's own test, ``CUPY_TF32`` > 0."""
    try:
        return int(os.environ.get("CUPY_TF32", "0") or "0") > 0
    except ValueError:
        return False


def torch_matmul_peak(torch, device, repeats: int = 5) -> dict:
    """:func:`matmul_peak` for PyTorch on ``device``."""
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)

    def multiply(n):
        a, b = (torch.randn(n, n, device=device) for _ in range(2))
        return lambda: a @ b

    return _best_gflops(multiply, sync, repeats)


# --------------------------------------------------------------------------------------
# what a step should cost
# --------------------------------------------------------------------------------------

def flops_per_token(config: GPTConfig, T: int) -> float:
    """6 N + 12 L C T (nanoGPT's ``estimate_mfu``; PaLM, appendix B)."""
    return 6.0 * config.num_params(non_embedding=True) + 12.0 * config.n_layer * config.d_model * T


def step_matmuls(config: GPTConfig, B: int, T: int) -> list:
    """Every matrix product of one training step, as :mod:`tinylatent.layers` computes it.

    Each entry is (lhs shape, rhs shape, lhs transposed, rhs transposed, count): a
    transposed operand is a ``.T`` view of an array stored the other way round, as in the
    layers' backward passes (``dout @ weight.T``, ``x_rows.T @ dout``).
    """
    C, NH, HS, V = config.d_model, config.n_head, config.head_size, config.vocab_size
    N = B * T
    products = []

    def linear(C_in, C_out):
        products.append(((N, C_in), (C_in, C_out), False, False))   # forward:  x @ weight
        products.append(((N, C_out), (C_out, C_in), False, True))   # dx      = dout @ weight.T
        products.append(((C_in, N), (N, C_out), True, False))       # dweight = x.T @ dout

    heads = (B, NH)
    for _ in range(config.n_layer):
        linear(C, 3 * C)                                                  # c_attn
        products.append(((*heads, T, HS), (*heads, HS, T), False, False))  # scores = q @ kᵀ
        products.append(((*heads, T, T), (*heads, T, HS), False, False))   # y = att @ v
        products.append(((*heads, T, HS), (*heads, HS, T), False, True))   # datt = dy @ v.T
        products.append(((*heads, T, T), (*heads, T, HS), True, False))    # dv = att.T @ dy
        products.append(((*heads, T, T), (*heads, T, HS), False, True))    # dq = dscores @ kᵀ.T
        products.append(((*heads, T, T), (*heads, T, HS), True, False))    # dk = dscores.T @ q
        linear(C, C)                                                      # attn.c_proj
        linear(C, 4 * C)                                                  # mlp.c_fc
        linear(4 * C, C)                                                  # mlp.c_proj
    if V <= C:
        products.append(((V, N), (N, C), False, False))  # dwte = onehot(idx)^T @ dx (embedding_backward)
    products.append(((N, C), (C, V), False, True))   # logits = x @ wte.T
    products.append(((N, V), (V, C), False, False))  # dx = dlogits @ wte
    products.append(((V, N), (N, C), True, False))   # dwte = dlogits.T @ x
    return products


def matmul_replay(products, device: str):
    """A function that computes all ``products`` back to back, on random arrays (one array
    per distinct operand shape and layout, shared by the products that use it)."""
    xp = backend.array_module(device)
    rng = np.random.default_rng(0)
    arrays = {}

    def operand(shape, transposed):
        stored = shape[:-2] + (shape[-1], shape[-2]) if transposed else shape
        if stored not in arrays:
            arrays[stored] = backend.to_device(rng.standard_normal(stored).astype(np.float32), device)
        return xp.swapaxes(arrays[stored], -1, -2) if transposed else arrays[stored]

    operands = [(operand(lhs, lt), operand(rhs, rt)) for lhs, rhs, lt, rt in products]

    def run():
        for a, b in operands:
            a @ b
    return run


# --------------------------------------------------------------------------------------
# our step, its time by layer kind, its memory
# --------------------------------------------------------------------------------------

def our_step(model: GPT, optimizer: AdamW, idx, targets):
    loss, grads = model.loss_and_grads(idx, targets)
    optimizer.step(model.params, grads, LEARNING_RATE)
    return loss


LAYER_KINDS = {  # kind -> the layer functions timed under it
    "linear (matmul + bias)": ["linear_forward", "linear_backward", "lm_head_forward", "lm_head_backward"],
    "attention core (q·kᵀ, softmax, att·v)": ["attention_forward", "attention_backward"],
    "layernorm": ["layernorm_forward", "layernorm_backward"],
    "gelu": ["gelu_forward", "gelu_backward"],
    "embedding": ["embedding_forward", "embedding_backward"],
    "cross-entropy": ["cross_entropy_forward", "cross_entropy_backward"],
}


def time_by_layer_kind(model: GPT, optimizer: AdamW, idx, targets, sync, clock, steps: int = 2,
                       wait_for_device: bool = True) -> dict:
    """Seconds per step spent in each kind of layer, AdamW, and the rest ("other"), by ``clock``
    (``time.perf_counter`` or ``time.process_time``).

    Every function in :data:`LAYER_KINDS` is replaced, in :mod:`tinylatent.layers` and in
    :mod:`tinylatent.gpt` (which imports some by name), by a wrapper that times it; the
    originals are put back afterwards. None of these functions calls another of them, so
    the times do not overlap.

    With ``wait_for_device`` (the default) every timed piece waits for the device before
    and after, so on a GPU a time is its kernels' run. Without it (GPU only) nothing waits
    within a step: each time is what the host takes to *issue* that layer's kernels, which
    is what bounds a launch-bound step, layer kind by layer kind.
    """
    totals = {kind: 0.0 for kind in LAYER_KINDS}
    saved = []
    wait = sync if wait_for_device else (lambda: None)

    def timed(function, kind):
        def wrapper(*args, **kwargs):
            wait()
            start = clock()
            result = function(*args, **kwargs)
            wait()
            totals[kind] += clock() - start
            return result
        return wrapper

    for kind, names in LAYER_KINDS.items():
        for name in names:
            wrapper = timed(getattr(layers, name), kind)
            for module in (layers, gpt):
                if hasattr(module, name):
                    saved.append((module, name, getattr(module, name)))
                    setattr(module, name, wrapper)
    totals["adamw"] = 0.0
    whole = 0.0
    try:
        for _ in range(steps):
            sync()                                       # each step starts with an empty queue
            start = clock()
            _, grads = model.loss_and_grads(idx, targets)
            wait()
            middle = clock()
            optimizer.step(model.params, grads, LEARNING_RATE)
            wait()
            end = clock()
            totals["adamw"] += end - middle
            whole += end - start
        sync()
    finally:
        for module, name, function in saved:
            setattr(module, name, function)
    split = {kind: seconds / steps for kind, seconds in totals.items()}
    split["other (residual adds, reshapes, Python)"] = whole / steps - sum(split.values())
    return split


def unique_buffer_bytes(obj, exclude_ids=frozenset()) -> int:
    """Bytes of the distinct array buffers reachable from ``obj`` (tuples, lists, dataclasses),
    each buffer counted once however many views of it there are; ``exclude_ids`` are
    buffers not to count (the parameters)."""
    seen = set(exclude_ids)
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif hasattr(item, "__dataclass_fields__"):
            stack.extend(getattr(item, name) for name in item.__dataclass_fields__)
        elif hasattr(item, "nbytes") and hasattr(item, "shape"):
            root = item
            while getattr(root, "base", None) is not None:
                root = root.base
            if id(root) not in seen:
                seen.add(id(root))
                total += int(root.nbytes)
    return total


def activation_bytes(model: GPT, idx, targets) -> int:
    """Bytes of the activations one forward keeps for the backward (parameters not counted)."""
    _, _, cache = model.forward(idx, targets)
    return unique_buffer_bytes(cache, exclude_ids={id(p) for p in model.params.values()})


def step_peak_bytes(model: GPT, optimizer: AdamW, idx, targets) -> int:
    """The peak of NumPy allocations during one step above what was allocated before it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        our_step(model, optimizer, idx, targets)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before


# --------------------------------------------------------------------------------------
# the same model in PyTorch
# --------------------------------------------------------------------------------------

class TorchGPT:
    """nanoGPT's forward written with PyTorch's own layers, on a copy of our weights.

    Linear weights are stored as ``nn.Linear`` keeps them, (C_out, C_in) — the transpose
    of ours — so PyTorch runs in its own natural layout.
    """

    def __init__(self, torch, model: GPT, device: str):
        self.torch, self.config = torch, model.config
        self.params = {}
        for name, value in model.params.items():
            host = np.array(backend.to_host(value))
            if host.ndim == 2 and name not in ("wte", "wpe", "lm_head.weight"):
                host = np.ascontiguousarray(host.T)
            self.params[name] = torch.tensor(host, device=device, requires_grad=True)
        decay = [p for p in self.params.values() if p.ndim >= 2]
        no_decay = [p for p in self.params.values() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8)

    def loss(self, idx, targets):
        F = self.torch.nn.functional
        p, cfg = self.params, self.config
        B, T = idx.shape
        C, NH = cfg.d_model, cfg.n_head

        def linear(x, name):
            return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))

        def layer_norm(x, name):
            return F.layer_norm(x, (C,), p[f"{name}.weight"], p.get(f"{name}.bias"), eps=1e-5)

        x = p["wte"][idx] + p["wpe"][:T]
        for layer in range(cfg.n_layer):
            h = f"h.{layer}."
            q, k, v = linear(layer_norm(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + linear(y.transpose(1, 2).reshape(B, T, C), h + "attn.c_proj")
            x = x + linear(F.gelu(linear(layer_norm(x, h + "ln_2"), h + "mlp.c_fc"), approximate="tanh"),
                           h + "mlp.c_proj")
        x = layer_norm(x, "ln_f")
        logits = F.linear(x, p["wte"] if cfg.tie_embeddings else p["lm_head.weight"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def step(self, idx, targets):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(idx, targets)
        loss.backward()
        self.optimizer.step()
        return loss


# --------------------------------------------------------------------------------------
# one configuration
# --------------------------------------------------------------------------------------

def bench_config(name: str, args, sync, torch, torch_device) -> dict:
    config, B = CONFIGS[name]
    T = CONTEXT
    rng = np.random.default_rng(0)
    model = GPT.create(config, rng, device=args.device)
    optimizer = AdamW()
    idx_host = rng.integers(0, config.vocab_size, size=(B, T))
    targets_host = rng.integers(0, config.vocab_size, size=(B, T))
    idx, targets = (backend.to_device(a, args.device) for a in (idx_host, targets_host))
    result = {"config": config.to_dict(), "batch_size": B, "context": T, "device": args.device,
              "parameters": config.num_params(non_embedding=True),
              "flops_per_token": flops_per_token(config, T)}

    torch_model = None
    if torch is not None:
        torch_model = TorchGPT(torch, model, torch_device)
        torch_idx = torch.tensor(idx_host, device=torch_device)
        torch_targets = torch.tensor(targets_host, device=torch_device)
        torch_sync = (lambda: torch.cuda.synchronize()) if torch_device == "cuda" else (lambda: None)
        # same weights, same batch: the first losses agree (a check that this is the same model)
        result["loss_ours"] = float(backend.to_host(model.forward(idx, targets)[1]))
        result["loss_torch"] = float(torch_model.loss(torch_idx, torch_targets).detach())

    replay = matmul_replay(step_matmuls(config, B, T), args.device)
    # warm-up: moments allocated, caches and BLAS buffers touched
    for _ in range(args.warmup):
        our_step(model, optimizer, idx, targets)
        if torch_model is not None:
            torch_model.step(torch_idx, torch_targets)
        replay()
    # rounds of: our step, PyTorch's step, our step's matmuls alone; each ratio compares
    # times taken moments apart, so that both sides see the same machine load
    ours, theirs, matmuls, faults, system = [], [], [], [], []
    ours_issued, theirs_issued = [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        ours.append(wall_and_cpu_seconds(lambda: our_step(model, optimizer, idx, targets), sync))
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults.append(after.ru_minflt - before.ru_minflt)   # pages the OS had to map (and zero) afresh
        system.append(after.ru_stime - before.ru_stime)     # CPU time spent in the kernel, mostly on those
        if torch_model is not None:
            theirs.append(wall_and_cpu_seconds(lambda: torch_model.step(torch_idx, torch_targets), torch_sync))
        matmuls.append(wall_and_cpu_seconds(replay, sync))
        if args.device == "gpu":
            ours_issued.append(issue_seconds(lambda: our_step(model, optimizer, idx, targets), sync))
            if torch_model is not None:
                theirs_issued.append(issue_seconds(lambda: torch_model.step(torch_idx, torch_targets), torch_sync))
    del replay
    result.update(page_faults_per_step=statistics.median(faults), system_seconds_per_step=statistics.median(system))
    tokens = B * T
    for clock, index in (("wall", 0), ("cpu", 1)):
        ours_s = [pair[index] for pair in ours]
        matmul_s = [pair[index] for pair in matmuls]
        median = statistics.median(ours_s)
        figures = {"step_seconds": ours_s, "step_seconds_median": median, "tokens_per_s": tokens / median,
                   "gflops": tokens * result["flops_per_token"] / median / 1e9,
                   "matmul_seconds": matmul_s, "matmul_seconds_median": statistics.median(matmul_s),
                   "step_over_matmuls_per_round": [o / m for o, m in zip(ours_s, matmul_s)]}
        figures["step_over_matmuls"] = statistics.median(figures["step_over_matmuls_per_round"])
        if theirs:
            theirs_s = [pair[index] for pair in theirs]
            figures.update(torch_step_seconds=theirs_s, torch_step_seconds_median=statistics.median(theirs_s),
                           torch_tokens_per_s=tokens / statistics.median(theirs_s),
                           # throughput ours / PyTorch = PyTorch's time / ours, round by round
                           ratio_per_pair=[t / o for o, t in zip(ours_s, theirs_s)])
            figures["ratio_median"] = statistics.median(figures["ratio_per_pair"])
        result[clock] = figures
    if ours_issued:
        result["issue_seconds_median"] = statistics.median(ours_issued)
        result["issue_share_of_step"] = result["issue_seconds_median"] / result["wall"]["step_seconds_median"]
    if theirs_issued:
        result["torch_issue_seconds_median"] = statistics.median(theirs_issued)
        result["torch_issue_share_of_step"] = (result["torch_issue_seconds_median"]
                                               / result["wall"]["torch_step_seconds_median"])
    # CPU time when one thread does all the work (immune to other processes' time slices), else wall
    single_threaded = args.device == "cpu" and blas_threads() == "1"
    result["split_clock"] = "cpu" if single_threaded else "wall"
    result["split_seconds"] = time_by_layer_kind(model, optimizer, idx, targets, sync,
                                                 time.process_time if single_threaded else time.perf_counter)
    if args.device == "gpu":  # where the host's time to issue a step goes, layer kind by layer kind
        result["issue_split_seconds"] = time_by_layer_kind(model, optimizer, idx, targets, sync, time.perf_counter,
                                                           wait_for_device=False)
    if args.device == "cpu":
        result["activation_bytes"] = activation_bytes(model, idx, targets)
        result["step_peak_bytes"] = step_peak_bytes(model, optimizer, idx, targets)
        result["peak_over_activations"] = result["step_peak_bytes"] / result["activation_bytes"]
    return result


def print_config(name: str, r: dict, peak: dict) -> None:
    cfg = r["config"]
    print(f"\n== {name}: d_model {cfg['d_model']}, {cfg['n_layer']} layers, {cfg['n_head']} heads, "
          f"{r['parameters'] / 1e6:.2f} M parameters, batch {r['batch_size']} × context {r['context']}")
    if "loss_torch" in r:
        print(f"   same weights, same batch: loss ours {r['loss_ours']:.6f}, PyTorch {r['loss_torch']:.6f}")
    for clock in ("wall",) if r["device"] == "gpu" else ("wall", "cpu"):
        c = r[clock]
        label = "wall clock" if clock == "wall" else "CPU time  "
        print(f"   [{label}] step {c['step_seconds_median'] * 1e3:8.1f} ms  {c['tokens_per_s']:9,.0f} tokens/s  "
              f"{c['gflops']:6.1f} GFLOP/s  MFU {c['gflops'] / peak[clock]:5.1%}")
        if "ratio_median" in c:
            pairs = " ".join(f"{x:.2f}" for x in c["ratio_per_pair"])
            print(f"   [{label}] PyTorch {c['torch_step_seconds_median'] * 1e3:8.1f} ms  "
                  f"{c['torch_tokens_per_s']:9,.0f} tokens/s   ours/PyTorch per pair: {pairs}   "
                  f"median {c['ratio_median']:.2f}")
        rounds = " ".join(f"{x:.2f}" for x in c["step_over_matmuls_per_round"])
        print(f"   [{label}] its matmuls alone {c['matmul_seconds_median'] * 1e3:.1f} ms   step / matmuls per round: "
              f"{rounds}   median {c['step_over_matmuls']:.2f}")
    if "issue_seconds_median" in r:
        theirs = (f"; PyTorch {r['torch_issue_seconds_median'] * 1e3:.1f} ms = {r['torch_issue_share_of_step']:.0%}"
                  if "torch_issue_seconds_median" in r else "")
        print(f"   host time to issue one step (no waiting): ours {r['issue_seconds_median'] * 1e3:.1f} ms "
              f"= {r['issue_share_of_step']:.0%} of its step{theirs} (near 100%: bound by kernel launches)")
    total = sum(r["split_seconds"].values())
    clock = "CPU time" if r["split_clock"] == "cpu" else "wall clock"
    issue = r.get("issue_split_seconds")
    issue_header = f" {'host issue ms':>14}" if issue else ""
    print(f"   {'time by layer kind (instrumented step, ' + clock + ')':<52} {'ms':>8} {'share':>7}{issue_header}")
    for kind, seconds in r["split_seconds"].items():
        issue_column = f" {issue[kind] * 1e3:14.2f}" if issue else ""
        print(f"   {kind:<52} {seconds * 1e3:8.1f} {seconds / total:7.1%}{issue_column}")
    if r["device"] == "cpu":
        print(f"   our step's page faults {r['page_faults_per_step']:,.0f}, kernel time "
              f"{r['system_seconds_per_step'] * 1e3:.0f} ms (freed activations go back to the OS and are faulted in "
              "again next step)")
    if "step_peak_bytes" in r:
        print(f"   memory: activations kept for backward {r['activation_bytes'] / 2**20:.1f} MiB; "
              f"step peak (tracemalloc, above the parameters and moments) {r['step_peak_bytes'] / 2**20:.1f} MiB "
              f"= {r['peak_over_activations']:.2f}×")


PROGRAM = "bench_train.py"


def main(argv=None) -> int:
    parser = _bench.parser(PROGRAM, __doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,medium,paper", help="comma-separated: " + ",".join(CONFIGS))
    parser.add_argument("--steps", type=int_in(1, 10_000), default=5, help="timed steps per model")
    parser.add_argument("--warmup", type=int_in(0, 10_000), default=1, help="untimed steps first")
    parser.add_argument("--vs", choices=["torch"], help="also time PyTorch eager on the same weights")
    add_device_argument(parser, "the training step runs (ours, and PyTorch's with --vs torch)")
    _bench.add_threads_argument(parser, "BLAS and PyTorch threads (default: as the environment sets)")
    _bench.add_json_arguments(parser)
    args = parser.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        parser.error(f"--configs takes a comma-separated list of {', '.join(CONFIGS)}; got {args.configs!r}")
    return _bench.run(PROGRAM, args, lambda: run(args, names))


def run(args, names: list) -> int:
    backend.array_module(args.device)  # a missing GPU: one line, before anything is timed
    limits = set_blas_threads(args.threads) if args.threads else None  # noqa: F841 (kept alive)
    threads = blas_threads()
    sync = synchroniser(args.device)

    torch, torch_device = None, None
    if args.vs == "torch":
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: the comparison is skipped "
                  "(`pip install torch`, the CPU wheel is enough)")
        if torch is not None:
            torch_device = "cuda" if args.device == "gpu" else "cpu"
            if torch_device == "cuda" and not torch.cuda.is_available():
                print("this PyTorch sees no CUDA device: the comparison is skipped")
                torch = None
            elif torch_device == "cpu":
                torch.set_num_threads(args.threads or (int(threads) if threads.isdigit() else os.cpu_count()))
            else:  # the same float32 matmuls on both sides: CuPy uses TF32 only when CUPY_TF32 > 0
                torch.set_float32_matmul_precision("high" if cupy_tf32() else "highest")

    peak = matmul_peak(args.device, sync)
    figures = {"device": args.device, "machine": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
               "blas_threads": threads, "numpy": np.__version__, "matmul_peak_gflops": peak, "configs": {}}
    header = f"training step, float32, device {args.device}, BLAS threads {threads}"
    if args.device == "gpu":
        figures["tf32"] = cupy_tf32()
        header += ", TF32 matmuls " + ("on (CUPY_TF32 > 0)" if figures["tf32"] else "off")
    if torch is not None:
        figures["torch"] = torch.__version__
        figures["torch_threads"] = torch.get_num_threads() if torch_device == "cpu" else None
        figures["torch_matmul_peak_gflops"] = torch_matmul_peak(torch, torch_device)
        header += f", PyTorch {torch.__version__}" + (f" threads {figures['torch_threads']}" if torch_device == "cpu"
                                                       else " (its float32 attention kernel uses tensor cores)")
    print(header)
    print(f"{os.cpu_count()} CPUs, load average {figures['load_average_at_start']:.2f} at the start "
          "(other processes share the cores: compare ratios within a round, not times across runs)")
    figures["malloc_environment"] = {name: os.environ[name] for name in MALLOC_VARIABLES if name in os.environ}
    print("glibc malloc: " + (", ".join(f"{k}={v}" for k, v in figures["malloc_environment"].items())
                              or "default settings (freed memory is returned to the OS)"))
    clocks = (("wall", "wall clock"),) if args.device == "gpu" else (("wall", "wall clock"), ("cpu", "CPU time"))
    for clock, label in clocks:
        print(f"float32 matmul peak ({peak['n']}³, {label}): {'CuPy' if args.device == 'gpu' else 'NumPy'} "
              f"{peak[clock]:.0f} GFLOP/s"
              + (f", PyTorch {figures['torch_matmul_peak_gflops'][clock]:.0f} GFLOP/s" if torch is not None else ""))
    for name in names:
        result = bench_config(name, args, sync, torch, torch_device)
        figures["configs"][name] = result
        print_config(name, result, peak)
    figures["load_average_at_end"] = os.getloadavg()[0]
    print(f"\nload average at the end {figures['load_average_at_end']:.2f}")
    if args.json:
        write_json(args.json, figures)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
