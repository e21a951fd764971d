"""The backend module, and the same code on every available backend.

The CPU cases always run. The device cases run twice: on real CuPy, and on the fake CuPy
of ``fake_cupy.py`` (NumPy behind CuPy's host/device rules). Without CuPy and a CUDA
device the real cases skip with the reason, and the suite passes; the fake ones always
run, so the device code paths are exercised in CI too. Every layer's forward and
backward, a full training step and the oracle must match the NumPy float64 reference
within ``atol + rtol·|ref|``, where rtol is a small multiple of eps(dtype) for float64
and a float32 accumulation allowance for float32 (stated below).
"""
import numpy as np
import pytest

import fake_cupy
from tinylatent import backend, layers
from tinylatent.gpt import GPT, GPTConfig
from tinylatent.language import paper_language, sample_windows
from tinylatent.optim import AdamW
from tinylatent.oracle import Oracle

HAVE_GPU = backend.gpu_available()


# Tolerances against the NumPy float64 reference: float64 on a GPU differs only by the order of
# summation (cuBLAS vs OpenBLAS); float32 carries ~1e-7 relative rounding per operation, and a
# few hundred of them accumulate through a layer's matmuls and reductions.
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-4, atol=2e-5)}


# ---------------------------------------------------------------------------------------
# The backend module on the CPU
# ---------------------------------------------------------------------------------------

def test_device_names_are_checked():
    assert backend.check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="cpu, gpu"):
        backend.check_device("tpu")
    assert backend.array_module("cpu") is np


@pytest.mark.skipif(HAVE_GPU, reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_one_clear_error():
    with pytest.raises(ValueError, match="gpu"):
        backend.array_module("gpu")
    with pytest.raises(ValueError, match="gpu"):
        GPT.create(GPTConfig.small(), np.random.default_rng(0), device="gpu")


def test_xp_of_numpy_and_to_host():
    x = np.arange(3.0)
    assert backend.xp_of(x, None, 1.0) is np
    assert backend.device_of(x) == "cpu"
    assert backend.to_host(x) is x or np.array_equal(backend.to_host(x), x)


def test_scatter_add_accumulates_repeated_indices():
    target = np.zeros((4, 2))
    backend.scatter_add(target, np.array([1, 1, 3, 1]), np.ones((4, 2)))
    np.testing.assert_array_equal(target[:, 0], [0.0, 3.0, 0.0, 1.0])


@pytest.mark.parametrize("ids, fragment", [
    (np.array([0, 19]), "found 19"), (np.array([-1, 2]), "found -1"), (np.array([0.5]), "integers"),
    (np.array([2**63 + 5], dtype=np.uint64), "found 9223372036854775813"),   # not wrapped to a negative id
])
def test_token_ids_are_checked_on_the_host(ids, fragment):
    with pytest.raises(ValueError, match=fragment):
        backend.check_token_ids(ids, 19)


def test_the_fake_cupy_refuses_what_it_promises_to():
    """The device cases below are only as strict as the fake: each rule of fake_cupy.py, checked."""
    with fake_cupy.installed() as cupy:
        assert backend.array_module("gpu") is cupy
        host = np.arange(6.0).reshape(2, 3)
        x = backend.to_device(host, "gpu")
        assert backend.device_of(x) == "gpu" and backend.xp_of(x) is cupy
        host[0, 0] = 100.0                                   # the host-to-device copy is a copy
        assert float(x[0, 0]) == 0.0
        refused = {
            "implicit conversion": lambda: np.asarray(x),
            "a NumPy ufunc": lambda: np.exp(x),
            "a NumPy function": lambda: np.concatenate([x, x]),
            "device + host array": lambda: x + host,
            "host + device array": lambda: host + x,
            "a host array in a cupy function": lambda: cupy.maximum(x, host),
            "a host array assigned in": lambda: x.__setitem__(0, host[0]),
            "a device scalar as a list index": lambda: [1, 2, 3][x[0, 1].astype(np.int64)],
            "mixing in xp_of": lambda: backend.xp_of(x, host),
        }
        for what, action in refused.items():
            with pytest.raises((TypeError, ValueError)):
                action()
                pytest.fail(f"the fake CuPy allowed {what}")
        with pytest.raises(AttributeError, match="host"):
            cupy.random
        total = x.sum()                                      # reductions stay on the device, as 0-d arrays
        assert backend.device_of(total) == "gpu" and total.shape == () and float(total) == 15.0
        assert backend.device_of(x[1, 2]) == "gpu"
        np.testing.assert_array_equal(backend.to_host(x * 2.0 + x[np.array([1, 0])]), 2.0 * np.arange(6.0).reshape(2, 3)
                                      + np.arange(6.0).reshape(2, 3)[[1, 0]])
        target = cupy.zeros(3)
        backend.scatter_add(target, backend.to_device(np.array([2, 2, 0]), "gpu"), cupy.ones(3))
        np.testing.assert_array_equal(backend.to_host(target), [1.0, 0.0, 2.0])
    assert backend.device_of(np.zeros(1)) == "cpu"


def test_the_fake_cupy_counts_what_reads_back_to_the_host():
    """What CuPy must read back to the host (and so wait for the GPU's queue for) is
    counted as TO_HOST; the tests that count a step's copies rely on it."""
    with fake_cupy.installed() as cupy:
        x = cupy.arange(6.0)
        reads_back = {
            "get": lambda: x.get(), "float": lambda: float(x[0]), "bool": lambda: bool(x[0]),
            "tolist": lambda: x.tolist(), "item": lambda: x[1].item(),
            "a boolean mask read": lambda: x[x > 2.0], "a boolean mask write": lambda: x.__setitem__(x > 4.0, 0.0),
            "a host boolean mask": lambda: x[np.arange(6) > 3], "a mask in a tuple": lambda: x[(x > 2.0,)],
            "nonzero": lambda: cupy.nonzero(x), "the nonzero method": lambda: x.nonzero(),
            "flatnonzero": lambda: cupy.flatnonzero(x), "unique": lambda: cupy.unique(x),
        }
        for what, action in reads_back.items():
            with fake_cupy.counting() as counts:
                action()
            assert counts[fake_cupy.TO_HOST] == 1, what
        stays = {"slices": lambda: x[1:4], "integer ids": lambda: x[cupy.arange(3)], "where": lambda: cupy.where(x > 2.0, x, 0.0),
                 "triu": lambda: cupy.triu(cupy.full((3, 3), -np.inf), k=1), "a sum": lambda: x.sum()}
        for what, action in stays.items():
            with fake_cupy.counting() as counts:
                action()
            assert counts[fake_cupy.TO_HOST] == 0, what


def test_the_fake_cupy_counts_inputs_cupy_copies_and_refuses_a_1d_matmul_out():
    """CuPy copies an input that overlaps another view given as ``out=`` (the fake counts it as
    HIDDEN_COPY); the very same object as input and output is no copy. And CuPy 13's
    matmul raises on a 1-D ``out``, so the fake does too."""
    with fake_cupy.installed() as cupy:
        x = cupy.arange(12.0).reshape(3, 4)
        copies = {
            "another view of the output's memory": lambda: cupy.multiply(x[0:2], 2.0, out=x.reshape(-1, 4)[0:2]),
            "an overlapping in-place operand": lambda: x.__isub__(x[::-1]),
            "matmul into its own input": lambda: cupy.matmul(x[:, :3], cupy.ones((3, 3)), out=x[:, :3]),
        }
        for what, action in copies.items():
            with fake_cupy.counting() as counts:
                action()
            assert counts[fake_cupy.HIDDEN_COPY] == 1, what
        no_copies = {"the same object": lambda: cupy.multiply(x, 2.0, out=x), "a disjoint output": lambda: cupy.add(
            x[0], 1.0, out=x[1]), "in place": lambda: x.__imul__(3.0)}
        for what, action in no_copies.items():
            with fake_cupy.counting() as counts:
                action()
            assert counts[fake_cupy.HIDDEN_COPY] == 0, what
        with pytest.raises(ValueError, match="1-D out"):
            cupy.matmul(x, cupy.ones(4), out=cupy.empty(3))
        np.testing.assert_array_equal(backend.to_host(cupy.matmul(x, cupy.ones((4, 1)), out=cupy.empty((3, 1)))),
                                      backend.to_host(x).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------------------------------
# The same code on CuPy, against NumPy float64
# ---------------------------------------------------------------------------------------

def _gpu(array, dtype):
    return backend.to_device(np.asarray(array, dtype=dtype), "gpu")


def _close(device_value, reference, dtype):
    np.testing.assert_allclose(backend.to_host(device_value), reference, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_layer_forward_and_backward_matches_numpy(gpu, dtype):
    rng = np.random.default_rng(0)
    B, T, C, NH = 2, 5, 8, 2
    x = rng.normal(size=(B, T, C))
    weight, bias = rng.normal(size=(C, 3 * C)), rng.normal(size=3 * C)
    ln_weight, ln_bias = rng.normal(size=C), rng.normal(size=C)
    dout_qkv = rng.normal(size=(B, T, 3 * C))
    cases = [
        ("linear", layers.linear_forward, layers.linear_backward, (x, weight, bias), dout_qkv),
        ("layernorm", layers.layernorm_forward, layers.layernorm_backward, (x, ln_weight, ln_bias), x),
        ("gelu", layers.gelu_forward, layers.gelu_backward, (x,), x),
        ("softmax", layers.softmax_forward, layers.softmax_backward, (x,), x),
        ("attention", lambda qkv: layers.attention_forward(qkv, NH), layers.attention_backward,
         (rng.normal(size=(B, T, 3 * C)),), x),
    ]
    for name, forward, backward, inputs, dout in cases:
        out_ref, cache_ref = forward(*[np.asarray(a, dtype=np.float64) for a in inputs])
        grads_ref = backward(dout, cache_ref)
        out, cache = forward(*[_gpu(a, dtype) for a in inputs])
        assert out.dtype == np.dtype(dtype), name
        _close(out, out_ref, dtype)
        grads = backward(_gpu(dout, dtype), cache)
        grads, grads_ref = (grads, grads_ref) if isinstance(grads, tuple) else ((grads,), (grads_ref,))
        for g, g_ref in zip(grads, grads_ref):
            if g_ref is not None:
                _close(g, g_ref, dtype)
    idx = rng.integers(0, 19, size=(B, T))
    wte, wpe = rng.normal(size=(19, C)), rng.normal(size=(T, C))
    out_ref, cache_ref = layers.embedding_forward(idx, wte, wpe)
    out, cache = layers.embedding_forward(backend.to_device(idx, "gpu"), _gpu(wte, dtype), _gpu(wpe, dtype))
    _close(out, out_ref, dtype)
    for g, g_ref in zip(layers.embedding_backward(_gpu(x, dtype), cache), layers.embedding_backward(x, cache_ref)):
        _close(g, g_ref, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_training_step_matches_numpy(gpu, dtype):
    config = GPTConfig(vocab_size=19, context_length=16, n_layer=2, n_head=2, d_model=16, dtype=dtype)
    reference_config = GPTConfig(**{**config.to_dict(), "dtype": "float64"})
    windows = sample_windows(paper_language(0.02), 4, 17, seed=0)
    idx, targets = windows[:, :-1], windows[:, 1:]
    models = {"cpu": GPT.create(reference_config, np.random.default_rng(1), device="cpu"),
              "gpu": GPT.create(config, np.random.default_rng(1), device="gpu")}
    optimisers = {device: AdamW() for device in models}
    for device, model in models.items():
        data = (idx, targets) if device == "cpu" else (backend.to_device(idx, "gpu"), backend.to_device(targets, "gpu"))
        loss, grads = model.loss_and_grads(*data)
        optimisers[device].step(model.params, grads, lr=1e-3)
        models[device].loss = backend.to_host(loss)
    _close(models["gpu"].loss, models["cpu"].loss, dtype)
    for name, value in models["cpu"].params.items():
        _close(models["gpu"].params[name], value, dtype)


def test_the_oracle_matches_numpy(gpu):
    language = paper_language(0.02)
    windows = sample_windows(language, 8, 40, seed=2)
    oracle = Oracle(language)
    for phase in ("start", "unknown"):
        reference = oracle.filter(windows, phase=phase, known_intention=1)
        on_gpu = oracle.filter(backend.to_device(windows, "gpu"), phase=phase, known_intention=1)
        for field in ("token_log_probs", "posterior", "predictive", "known_intention_predictive"):
            np.testing.assert_allclose(backend.to_host(getattr(on_gpu, field)), getattr(reference, field),
                                       **TOLERANCE["float64"])
        np.testing.assert_array_equal(backend.to_host(on_gpu.first_impossible), reference.first_impossible)


def test_out_of_range_token_ids_are_rejected_before_they_reach_the_device(gpu):
    bad = backend.to_device(np.array([[0, 1, 19]]), "gpu")  # CuPy would wrap index 19 silently
    model = GPT.create(GPTConfig(vocab_size=19, context_length=8, n_layer=1, n_head=1, d_model=4),
                       np.random.default_rng(0), device="gpu")
    with pytest.raises(ValueError, match="19"):
        model.forward(bad)
    with pytest.raises(ValueError, match="19"):
        Oracle(paper_language(0.0)).filter(bad)
