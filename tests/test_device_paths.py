"""Whole workflows on the device: training, resuming, checkpoints, evaluation, generation, the CLI,
the experiments.

``test_backend.py`` checks the pieces (each layer, one step, the oracle). These run what a
user runs with ``device="gpu"``, end to end, against the same run on the CPU. Each runs
on the fake CuPy (always; see ``fake_cupy.py``) and on real CuPy where there is a GPU:

* on the fake CuPy the arithmetic is NumPy's, so the device run must equal the CPU run
  **bit for bit**: any difference is a code path that differs by device (the CPU's blocks
  of rows aside, which tensors this small do not have, or a test turns off: fake_cupy.py);
* on a real GPU, float64 runs must agree to ``rtol`` 1e-9 (cuBLAS and atomic scatter-adds
  sum in another order; a few optimiser steps amplify that little).
"""
import json

import numpy as np
import pytest

import fake_cupy
from examples_loader import load_example
from tinylatent import backend, cli, layers
from tinylatent.ambiguity import measure_ambiguity
from tinylatent.checkpoint import load_checkpoint
from tinylatent.evaluate import evaluate
from tinylatent.gpt import GPT, GPTConfig
from tinylatent.language import paper_language, preset
from tinylatent.optim import AdamW
from tinylatent.oracle import posterior_error
from tinylatent.train import TrainConfig, batches_loss_and_grads, stream_windows, train, validation_loss

REAL_GPU_TOLERANCE = dict(rtol=1e-9, atol=1e-12)
MODEL = GPTConfig(vocab_size=19, context_length=16, n_layer=1, n_head=2, d_model=16, dtype="float64")


def _assert_same(device_value, cpu_value, gpu, where=""):
    """Equal bit for bit on the fake CuPy; within REAL_GPU_TOLERANCE on a real GPU."""
    fake_cupy.assert_matches_cpu(device_value, cpu_value, gpu, **REAL_GPU_TOLERANCE, err_msg=where)


def _assert_same_report(device_report, cpu_report, gpu, where="report"):
    """Two JSON-ready reports (nested dicts, lists, numbers, strings) agree leaf by leaf."""
    assert type(device_report) is type(cpu_report), where
    if isinstance(cpu_report, dict):
        assert device_report.keys() == cpu_report.keys(), where
        for key in cpu_report:
            _assert_same_report(device_report[key], cpu_report[key], gpu, f"{where}.{key}")
    elif isinstance(cpu_report, list):
        assert len(device_report) == len(cpu_report), where
        for i, (a, b) in enumerate(zip(device_report, cpu_report)):
            _assert_same_report(a, b, gpu, f"{where}[{i}]")
    elif isinstance(cpu_report, float):
        _assert_same(np.float64(device_report), cpu_report, gpu, where)     # NaN equals NaN here
    else:
        assert device_report == cpu_report, where


def _train_config(device, steps=6, **overrides):
    settings = dict(steps=steps, batch_size=4, context_length=16, max_lr=3e-3, eval_interval=3, eval_windows=8,
                    checkpoint_interval=3, short_windows=2, short_context=4, seed=5, device=device)
    return TrainConfig(**{**settings, **overrides})


def _losses(log_path):
    return [(record["step"], record.get("loss"), record.get("val_loss"))
            for record in map(json.loads, log_path.read_text().splitlines())]


@pytest.mark.parametrize("language_name, data", [("paper", "stream"), ("paper-mixture", "stream"),
                                                 ("paper", "corpus")])
def test_training_on_the_device_matches_the_cpu_run(gpu, tmp_path, language_name, data):
    language = preset(language_name, 0.02)
    settings = dict(data=data, corpus_messages=200)
    on_cpu = train(language, MODEL, _train_config("cpu", **settings), tmp_path / "cpu", progress=False)
    on_gpu = train(language, MODEL, _train_config("gpu", **settings), tmp_path / "gpu", progress=False)
    assert on_gpu.model.device == "gpu"
    for name, value in on_cpu.model.params.items():
        _assert_same(on_gpu.model.params[name], value, gpu)
    for key in ("train_loss", "val_loss", "excess_val_loss", "tokens_seen"):
        assert isinstance(on_gpu.summary[key], (int, float)), key  # host numbers, not device scalars
        _assert_same_report(on_gpu.summary[key], on_cpu.summary[key], gpu, key)
    cpu_log, gpu_log = _losses(tmp_path / "cpu" / "log.jsonl"), _losses(tmp_path / "gpu" / "log.jsonl")
    assert [row[0] for row in gpu_log] == [row[0] for row in cpu_log]
    _assert_same(np.array([row[1:] for row in gpu_log], dtype=float), np.array([row[1:] for row in cpu_log], dtype=float), gpu)


def test_input_checks_read_device_arrays_on_the_device(gpu):
    """posterior_error's and validation_loss's shape checks take device arrays as they are (they
    used np.shape, which a device array refuses), and the answers are the host's."""
    posterior = np.random.default_rng(0).dirichlet(np.ones(6), size=3)
    intentions = np.array([0, 5, 2])
    on_device = posterior_error(backend.to_device(posterior, "gpu"), backend.to_device(intentions, "gpu"))
    _assert_same(on_device, posterior_error(posterior, intentions), gpu)
    language, rng = paper_language(eta=0.02), np.random.default_rng(0)
    windows = stream_windows(language, 4, 17, rng)
    model_cpu, model_gpu = GPT.create(MODEL, 1), GPT.create(MODEL, 1, device="gpu")
    _assert_same_report(validation_loss(model_gpu, backend.to_device(windows, "gpu")),
                        validation_loss(model_cpu, windows), gpu, "validation_loss")


def test_a_training_step_copies_to_the_host_only_its_loss_and_gradient_norm(tmp_path):
    """On a GPU each copy to the host waits for every queued kernel. A step's windows are
    drawn and checked on the host before they move, so its forward and backward copy
    nothing back; the loop then reads the loss and the gradient norm (to log them and to
    stop on divergence), two copies per step. Counted on the fake CuPy."""
    def copies_to_host(steps):
        config = _train_config("gpu", steps=steps, eval_interval=100, checkpoint_interval=100)
        with fake_cupy.installed(), fake_cupy.counting() as counts:
            train(paper_language(eta=0.02), MODEL, config, tmp_path / f"run{steps}", progress=False)
        return counts[fake_cupy.TO_HOST]

    assert copies_to_host(3) - copies_to_host(2) == 2

    language, rng = paper_language(eta=0.02), np.random.default_rng(0)
    windows = [stream_windows(language, 4, 17, rng), stream_windows(language, 2, 5, rng)]
    on_cpu_loss, on_cpu_grads = batches_loss_and_grads(GPT.create(MODEL, np.random.default_rng(1)), windows)
    with fake_cupy.installed():
        model = GPT.create(MODEL, np.random.default_rng(1), device="gpu")
        with fake_cupy.counting() as counts:
            loss, grads = batches_loss_and_grads(model, windows)
        assert counts[fake_cupy.TO_HOST] == 0, "the forward and backward copied something back to the host"
        assert backend.device_of(loss) == "gpu" and all(backend.device_of(g) == "gpu" for g in grads.values())
        _assert_same(loss, on_cpu_loss, "fake-cupy", "loss")
        for name, grad in on_cpu_grads.items():
            _assert_same(grads[name], grad, "fake-cupy", name)


def test_a_training_step_writes_its_gradients_in_place_without_hidden_copies():
    """LayerNorm's and GELU's backward write dx over the gradient they received (``out=dout``).
    CuPy copies an input that overlaps a *different* output view before computing, which
    would undo that; each block must be read and written through one view. Counted on the
    fake CuPy for a two-layer model (it found 7 such copies per step)."""
    config = GPTConfig(vocab_size=19, context_length=16, n_layer=2, n_head=2, d_model=16)
    windows = np.random.default_rng(0).integers(0, 19, size=(4, 17))
    with fake_cupy.installed():
        model = GPT.create(config, np.random.default_rng(1), device="gpu")
        optimizer = AdamW()
        with fake_cupy.counting() as counts:
            _, grads = model.loss_and_grads(windows[:, :-1], windows[:, 1:])
            optimizer.step(model.params, grads, 1e-3)
    assert counts[fake_cupy.HIDDEN_COPY] == 0


def test_generation_copies_one_row_of_logits_per_token_to_the_host():
    """Each new token needs its logits on the host (sampling draws from the host generator),
    and nothing else: feeding several positions at once (the prompt, and every token once
    the text is longer than the context) masks the future without a boolean-mask write,
    which on CuPy reads a count back to the host in every layer."""
    config = GPTConfig(vocab_size=19, context_length=16, n_layer=2, n_head=2, d_model=16)
    prompt = np.random.default_rng(0).integers(0, 19, size=(3, 12))
    with fake_cupy.installed():
        model = GPT.create(config, np.random.default_rng(1), device="gpu")
        for use_cache in (True, False):
            with fake_cupy.counting() as counts:
                text = model.generate(prompt, 8, np.random.default_rng(2), use_cache=use_cache)
            assert text.shape == (3, 20)                      # past the context: the window slides
            assert counts[fake_cupy.TO_HOST] == 8, use_cache


def test_a_device_run_resumes_on_either_device_as_if_uninterrupted(gpu, tmp_path):
    """With a constant learning rate, 3 steps then a resume to 6 is the run of 6 straight."""
    language = paper_language(0.0)
    constant_lr = dict(warmup_steps=0, min_lr=3e-3)

    def run(device, steps, out, resume=False):
        config = _train_config(device, steps=steps, **constant_lr)
        return train(language, MODEL, config, tmp_path / out, resume=resume, progress=False).model

    whole = run("gpu", 6, "whole")
    run("gpu", 3, "split")
    resumed = run("gpu", 6, "split", resume=True)
    run("gpu", 3, "moved")
    moved = run("cpu", 6, "moved", resume=True)
    assert resumed.device == "gpu" and moved.device == "cpu"
    whole_on_host = {name: backend.to_host(value) for name, value in whole.params.items()}
    for name, value in whole_on_host.items():
        _assert_same(resumed.params[name], value, gpu)
        _assert_same(moved.params[name], value, gpu)
    # the device run's checkpoint is plain NumPy: it loads on the CPU with the same weights
    on_cpu = load_checkpoint(tmp_path / "whole" / "ckpt.npz").model("cpu")
    for name, value in whole_on_host.items():
        np.testing.assert_array_equal(on_cpu.params[name], value)


def test_evaluating_a_device_model_gives_the_cpu_report(gpu):
    language = paper_language(0.02)
    cpu_model = GPT.create(MODEL, np.random.default_rng(3), device="cpu")
    gpu_model = GPT(MODEL, {name: backend.to_device(value, "gpu") for name, value in cpu_model.params.items()})
    settings = dict(n_windows=4, n_prompts=3, max_letters=2, max_examples=2, seed=1)
    cpu_report = evaluate(cpu_model, language, **settings)
    gpu_report = evaluate(gpu_model, language, **settings)
    json.dumps(gpu_report, allow_nan=True)  # JSON-ready: no device array leaked into the report
    _assert_same_report(gpu_report, cpu_report, gpu)


@pytest.mark.parametrize("exact", [True, False])
def test_measuring_ambiguity_on_the_device_gives_the_cpu_report(gpu, exact):
    language = paper_language(0.05)
    settings = dict(n_messages=300, seed=0, message_length=3, exact=exact)
    on_cpu = measure_ambiguity(language, device="cpu", **settings).as_dict()
    _assert_same_report(measure_ambiguity(language, device="gpu", **settings).as_dict(), on_cpu, gpu)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generating_on_the_device_gives_the_cpu_tokens(gpu, use_cache):
    cpu_model = GPT.create(MODEL, np.random.default_rng(4), device="cpu")
    gpu_model = GPT(MODEL, {name: backend.to_device(value, "gpu") for name, value in cpu_model.params.items()})
    prompt = np.array([[0, 3, 4], [0, 9, 10]])
    # 20 new tokens pass the 16-token context, so the window slides and the cache is rebuilt
    kwargs = dict(n_new_tokens=20, temperature=0.8, top_k=10, use_cache=use_cache)
    on_cpu = cpu_model.generate(prompt, rng=np.random.default_rng(0), **kwargs)
    on_gpu = gpu_model.generate(backend.to_device(prompt, "gpu"), rng=np.random.default_rng(0), **kwargs)
    assert isinstance(on_gpu, np.ndarray)  # the tokens come back to the host
    np.testing.assert_array_equal(on_gpu, on_cpu)


def test_every_command_runs_on_the_device(gpu, tmp_path, capsys):
    # float64, as every device-against-CPU comparison here: on a real GPU a float32 model's
    # loss differs from the CPU's by ~1e-7 (cuBLAS against OpenBLAS), far above REAL_GPU_TOLERANCE
    common = ["--n-layer", "1", "--d-model", "16", "--n-head", "2", "--context", "16", "--steps", "4", "--dtype", "float64",
              "--batch-size", "4", "--eval-interval", "2", "--eval-windows", "4", "--no-progress", "--json"]
    reports = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / device
        assert cli.main(["train", *common, "--device", device, "--out", str(out)]) == 0
        trained = json.loads(capsys.readouterr().out)
        assert cli.main(["eval", "--checkpoint", str(out / "ckpt.npz"), "--windows", "2", "--prompts", "2",
                         "--max-letters", "1", "--max-examples", "1", "--device", device, "--json"]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        assert evaluated.pop("checkpoint") == str(out / "ckpt.npz")
        assert cli.main(["generate", "--checkpoint", str(out / "ckpt.npz"), "--tokens", "12",
                         "--device", device, "--json"]) == 0
        generated = json.loads(capsys.readouterr().out)
        assert generated.pop("checkpoint") == str(out / "ckpt.npz")
        language = ["--eta", "0.02", "--device", device, "--json"]
        assert cli.main(["posterior", "--prompt", "ab\\ncb", "--phase", "unknown", *language]) == 0
        posterior = json.loads(capsys.readouterr().out)
        assert cli.main(["ambiguity", "--length", "2", "--messages", "50", "--sample", *language]) == 0
        ambiguity = json.loads(capsys.readouterr().out)
        assert cli.main(["sample", "--messages", "20", "--seed", "3", "--device", device, "--json"]) == 0
        sampled = json.loads(capsys.readouterr().out)       # on the host either way: the same messages
        assert cli.main(["language", "--random", "--seed", "3", "--device", device, "--json"]) == 0
        described = json.loads(capsys.readouterr().out)
        reports[device] = {"val_loss": trained["val_loss"], "eval": evaluated, "generated": generated,
                           "posterior": posterior, "ambiguity": ambiguity, "sample": sampled, "language": described}
    _assert_same_report(reports["gpu"], reports["cpu"], gpu)


def _benchmark_on_the_device(name, argv, tmp_path, capsys) -> tuple:
    """``benchmarks/<name>.py --device gpu argv --json ...``, which must succeed: (module, its JSON, its stdout)."""
    module = load_example(name, folder="benchmarks")
    out = tmp_path / f"{name}.json"
    assert module.main(["--device", "gpu", *argv, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["device"] == "gpu"
    return module, figures, capsys.readouterr().out


def test_the_training_benchmark_runs_on_the_device(gpu, tmp_path, capsys):
    """What ``benchmarks/gpu_check.sh`` runs, on the smallest configuration: it finishes and writes its JSON."""
    bench_train, figures, printed = _benchmark_on_the_device(
        "bench_train", ["--configs", "small", "--steps", "1", "--warmup", "0"], tmp_path, capsys)
    assert "device gpu" in printed
    small = figures["configs"]["small"]
    assert small["wall"]["tokens_per_s"] > 0 and small["split_clock"] == "wall"
    assert 0.0 < small["issue_seconds_median"] and 0.0 < small["issue_share_of_step"]
    assert set(bench_train.LAYER_KINDS) <= set(small["split_seconds"])
    assert small["issue_split_seconds"].keys() == small["split_seconds"].keys()    # where the issue time goes
    assert all(seconds >= 0.0 for seconds in small["issue_split_seconds"].values())


def test_the_oracle_benchmark_runs_on_the_device(gpu, tmp_path, capsys):
    """``bench_oracle.py --device gpu``: our oracle filters device arrays; where hmmlearn is installed,
    its log q(x) (another algorithm, on the CPU) must agree with the device's to 1e-8."""
    _, figures, printed = _benchmark_on_the_device(
        "bench_oracle", ["--sequences", "40", "--length", "24", "--repeats", "2"], tmp_path, capsys)
    assert "(GPU)" in printed and figures["tokens"] == 40 * 24
    assert all(row["seconds"] > 0.0 for row in figures["rows"].values())
    if "agree_to_1e_8" in figures:
        assert figures["agree_to_1e_8"] and figures["hmmlearn_max_abs_difference"] <= 1e-8


def test_the_benchmark_copies_a_device_model_into_pytorch(gpu):
    """The PyTorch side of ``--vs torch``: built from our device model, the same first loss.
    (PyTorch on the CPU stands in for PyTorch on CUDA; gpu_check.sh runs the real pair.)"""
    torch = pytest.importorskip("torch")
    bench_train = load_example("bench_train", folder="benchmarks")
    model = GPT.create(GPTConfig(n_layer=1, n_head=2, d_model=16, context_length=8), np.random.default_rng(0),
                       device="gpu")
    idx_host = np.random.default_rng(1).integers(0, 19, size=(2, 8))
    targets_host = np.random.default_rng(2).integers(0, 19, size=(2, 8))
    ours = float(backend.to_host(model.forward(backend.to_device(idx_host, "gpu"),
                                               backend.to_device(targets_host, "gpu"))[1]))
    theirs = bench_train.TorchGPT(torch, model, "cpu").loss(torch.tensor(idx_host), torch.tensor(targets_host))
    np.testing.assert_allclose(float(theirs.detach()), ours, rtol=1e-5)


# What an experiment's report holds that differs by run, not by device: timings, and paths under --out.
RUN_SPECIFIC_KEYS = ("seconds", "train_seconds", "tokens_per_s", "plot", "checkpoint", "log", "device")
EXPERIMENT_ARGS = {
    "cot_locality": ["--smoke", "--no-progress"],
    "emergence": ["--smoke", "--no-progress"],
    "instruction_tuning": ["--smoke", "--no-progress"],
    "icl_decay": ["--trials", "2", "--max-examples", "1", "--language", "paper", "--eta", "0.02", "--train",
                  "--train-steps", "3"],
}


def _without(report, keys):
    if isinstance(report, dict):
        return {key: _without(value, keys) for key, value in report.items() if key not in keys}
    if isinstance(report, list):
        return [_without(value, keys) for value in report]
    return report


def _layout(report):
    """The report with every number (or null: a NaN) replaced by its kind: what a real GPU must keep."""
    if isinstance(report, dict):
        return {key: _layout(value) for key, value in report.items()}
    if isinstance(report, list):
        return [_layout(value) for value in report]
    return "number" if report is None or isinstance(report, (int, float)) and not isinstance(report, bool) else report


@pytest.mark.parametrize("script", sorted(EXPERIMENT_ARGS))
def test_the_experiments_train_and_read_their_models_on_the_device(gpu, script, tmp_path, capsys, monkeypatch):
    """``--device gpu`` on the examples: the models train on the device and are read there
    (generation, next-token probabilities, log-likelihoods); the exact oracle reads on the host.
    On the fake CuPy the report is the CPU run's bit for bit, apart from timings and paths. On a
    real GPU the models train in float32 (cuBLAS sums in another order), so the report must have
    the CPU run's every entry, each number where the CPU run has one."""
    if gpu == "fake-cupy":
        # The CPU works through large tensors in cache-sized blocks of rows (layers.row_blocks), and
        # sums LayerNorm's parameter gradients block by block: in float32 the last bit can differ
        # from the device's one pass (icl_decay's 32 × 192-token batches do). One block on the CPU
        # too leaves only the code paths that differ by device, which must not change a bit.
        monkeypatch.setattr(layers, "BLOCK_ELEMENTS", 1 << 62)
    module = load_example(script)
    reports = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / device
        assert module.main([*EXPERIMENT_ARGS[script], "--device", device, "--out", str(out),
                            "--json", str(out / "report.json")]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["settings"]["device"] == device
        reports[device] = _without(report, RUN_SPECIFIC_KEYS)
    capsys.readouterr()
    if gpu == "fake-cupy":
        assert reports["gpu"] == reports["cpu"]
    else:
        assert _layout(reports["gpu"]) == _layout(reports["cpu"])
