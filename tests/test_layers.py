"""Every layer's backward against central finite differences, plus the layers' invariants.

The check, for a layer out = f(inputs) and a fixed random upstream gradient R:
the scalar objective  L(inputs) = sum(f(inputs) * R)  has  dL/dinput = backward(R).
Each input entry is nudged by +-eps and (L(+eps) - L(-eps)) / (2 eps) is compared with
the analytic gradient (error O(eps^2) in float64). Tensors too big to nudge entry by
entry get a random-direction directional-derivative check instead.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylatent import layers
from tinylatent.layers import (
    attention_backward,
    attention_backward_reference,
    attention_forward,
    attention_forward_cached,
    attention_forward_reference,
    block_backward,
    block_forward,
    causal_self_attention_backward,
    causal_self_attention_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_backward_reference,
    gelu_forward,
    gelu_reference,
    layernorm_backward,
    layernorm_backward_reference,
    layernorm_forward,
    layernorm_forward_reference,
    linear_backward,
    linear_forward,
    lm_head_backward,
    lm_head_forward,
    log_softmax_backward,
    log_softmax_forward,
    mlp_backward,
    mlp_forward,
    row_blocks,
    softmax_backward,
    softmax_forward,
)

EPS = 1e-6                 # finite-difference step in float64
RTOL, ATOL = 1e-6, 1e-8    # central differences are accurate to ~eps^2 plus rounding
FULL_CHECK_LIMIT = 1500    # entries above which a tensor gets a directional check instead
FEW = settings(max_examples=15, deadline=None)


# --------------------------------------------------------------------------------------
# the finite-difference checker
# --------------------------------------------------------------------------------------

def numerical_gradient(objective, x, eps=EPS):
    """Central differences of the scalar ``objective()`` with respect to every entry of x."""
    grad = np.zeros_like(x)
    x_flat, grad_flat = x.reshape(-1), grad.reshape(-1)
    for i in range(x_flat.size):
        original = x_flat[i]
        x_flat[i] = original + eps
        plus = objective()
        x_flat[i] = original - eps
        minus = objective()
        x_flat[i] = original
        grad_flat[i] = (plus - minus) / (2 * eps)
    return grad


def directional_derivative(objective, x, direction, eps=EPS):
    """(objective(x + eps d) - objective(x - eps d)) / (2 eps), restoring x."""
    original = x.copy()
    x[...] = original + eps * direction
    plus = objective()
    x[...] = original - eps * direction
    minus = objective()
    x[...] = original
    return (plus - minus) / (2 * eps)


def check_gradients(forward, backward, inputs: dict, rng, names=None):
    """Assert that ``backward`` matches finite differences of ``forward`` for each named input.

    forward(**inputs) -> (out, cache); backward(dout, cache) -> {name: gradient}.
    """
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)

    def objective():
        return float(np.sum(forward(**inputs)[0] * dout))

    for name in names or inputs:
        x = inputs[name]
        assert grads[name].shape == x.shape, name
        if x.size <= FULL_CHECK_LIMIT:
            numeric = numerical_gradient(objective, x)
            np.testing.assert_allclose(grads[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)
        else:
            for _ in range(3):
                direction = rng.standard_normal(x.shape)
                numeric = directional_derivative(objective, x, direction)
                analytic = float(np.sum(grads[name] * direction))
                assert analytic == pytest.approx(numeric, rel=RTOL, abs=ATOL), name
    return grads


def as_named(names, backward):
    """Adapt a tuple-returning backward to the checker's dict of named gradients."""
    def named(dout, cache):
        result = backward(dout, cache)
        if not isinstance(result, tuple):
            result = (result,)
        return dict(zip(names, result))
    return named


def composite(forward, backward, **fixed):
    """Adapt a layer with a params dict: inputs are x plus the params, gradients a flat dict."""
    def forward_flat(x, **params):
        return forward(x, params, **fixed)

    def backward_flat(dout, cache):
        dx, dparams = backward(dout, cache)
        return {"x": dx, **dparams}
    return forward_flat, backward_flat


def block_params(rng, C, bias, dtype=np.float64):
    """Random parameters of one residual block (random LayerNorm weights, so they matter)."""
    shapes = {
        "ln_1.weight": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_proj.weight": (C, C),
        "ln_2.weight": (C,), "mlp.c_fc.weight": (C, 4 * C), "mlp.c_proj.weight": (4 * C, C),
    }
    if bias:
        shapes.update({"ln_1.bias": (C,), "attn.c_attn.bias": (3 * C,), "attn.c_proj.bias": (C,),
                       "ln_2.bias": (C,), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.bias": (C,)})
    params = {name: (0.3 * rng.standard_normal(shape)).astype(dtype) for name, shape in shapes.items()}
    for name in ("ln_1.weight", "ln_2.weight"):
        params[name] += 1.0
    return params


# --------------------------------------------------------------------------------------
# finite-difference checks, layer by layer
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("C", [4, 8], ids=["V>C scatter", "V<=C one-hot matmul"])
def test_embedding_backward_accumulates_repeated_token_ids(C):
    rng = np.random.default_rng(0)
    V, context_length = 5, 6
    idx = np.array([[1, 1, 2, 1], [0, 1, 3, 3]])  # token 1 four times, 3 twice, 4 never
    inputs = {"wte": rng.standard_normal((V, C)), "wpe": rng.standard_normal((context_length, C))}
    grads = check_gradients(
        lambda wte, wpe: embedding_forward(idx, wte, wpe),
        as_named(["wte", "wpe"], embedding_backward), inputs, rng)
    assert np.all(grads["wte"][4] == 0.0)           # an unused token gets no gradient
    assert np.all(grads["wpe"][idx.shape[1]:] == 0.0)  # nor do positions past T


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_backward(bias):
    rng = np.random.default_rng(1)
    C = 6
    inputs = {"x": rng.standard_normal((2, 3, C)) * 2.0 + 0.5,
              "weight": rng.standard_normal(C)}
    if bias:
        inputs["bias"] = rng.standard_normal(C)
    grads = check_gradients(layernorm_forward, as_named(["x", "weight", "bias"], layernorm_backward),
                            inputs, rng)
    assert (grads["bias"] is None) == (not bias)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward(bias):
    rng = np.random.default_rng(2)
    inputs = {"x": rng.standard_normal((2, 3, 4)), "weight": rng.standard_normal((4, 5))}
    if bias:
        inputs["bias"] = rng.standard_normal(5)
    check_gradients(linear_forward, as_named(["x", "weight", "bias"], linear_backward), inputs, rng)


def test_lm_head_backward():
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal((2, 3, 4)), "weight": rng.standard_normal((7, 4))}
    check_gradients(lm_head_forward, as_named(["x", "weight"], lm_head_backward), inputs, rng)


def test_gelu_backward_and_textbook_values():
    rng = np.random.default_rng(4)
    inputs = {"x": rng.standard_normal((3, 7)) * 3.0}
    check_gradients(gelu_forward, as_named(["x"], gelu_backward), inputs, rng)
    # the tanh approximation at hand-computed points, and its closeness to x * Phi(x)
    out, _ = gelu_forward(np.array([-1.0, 0.0, 1.0, 2.0]))
    tanh_values = [0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
                   for x in (-1.0, 0.0, 1.0, 2.0)]
    np.testing.assert_allclose(out, tanh_values, rtol=1e-15)
    assert out[2] == pytest.approx(0.8411919906082768, rel=1e-15)
    exact = [x * 0.5 * (1 + math.erf(x / math.sqrt(2))) for x in (-1.0, 0.0, 1.0, 2.0)]
    np.testing.assert_allclose(out, exact, atol=1e-3)


def test_softmax_backward_including_masked_entries():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6))
    x[0, 4:] = -np.inf  # masked entries: probability exactly 0, gradient exactly 0
    probs, cache = softmax_forward(x)
    assert np.all(probs[0, 4:] == 0.0)
    dprobs = rng.standard_normal(x.shape)
    dx = softmax_backward(dprobs, cache)
    assert np.all(dx[0, 4:] == 0.0)
    finite = {"x": rng.standard_normal((3, 6)) * 4.0}
    check_gradients(softmax_forward, as_named(["x"], softmax_backward), finite, rng)


def test_log_softmax_backward_and_large_logits():
    rng = np.random.default_rng(6)
    check_gradients(log_softmax_forward, as_named(["x"], log_softmax_backward),
                    {"x": rng.standard_normal((2, 3, 5)) * 4.0}, rng)
    logp, _ = log_softmax_forward(np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(logp, [[0.0, -1000.0, -2000.0]])  # no overflow, no -inf


def test_cross_entropy_value_and_backward():
    rng = np.random.default_rng(7)
    B, T, V = 2, 3, 5
    logits = rng.standard_normal((B, T, V)) * 2.0
    targets = np.array([[0, 4, 4], [2, 2, 1]])
    loss, cache = cross_entropy_forward(logits, targets)
    direct = -np.mean([math.log(math.exp(logits[b, t, targets[b, t]]) / np.exp(logits[b, t]).sum())
                       for b in range(B) for t in range(T)])
    assert float(loss) == pytest.approx(direct, rel=1e-14)
    assert loss.shape == ()

    def objective():
        return float(cross_entropy_forward(logits, targets)[0])
    dlogits = cross_entropy_backward(1.0, cache)
    np.testing.assert_allclose(dlogits, numerical_gradient(objective, logits), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(cross_entropy_backward(2.5, cache), 2.5 * dlogits, rtol=1e-15)


def test_attention_backward():
    rng = np.random.default_rng(8)
    B, T, NH, HS = 2, 5, 2, 3
    inputs = {"qkv": rng.standard_normal((B, T, 3 * NH * HS))}
    check_gradients(lambda qkv: attention_forward(qkv, NH), as_named(["qkv"], attention_backward),
                    inputs, rng)


@pytest.mark.parametrize("bias", [True, False])
def test_causal_self_attention_backward(bias):
    rng = np.random.default_rng(9)
    C, NH = 8, 2
    params = {name[len("attn."):]: value for name, value in block_params(rng, C, bias).items()
              if name.startswith("attn.")}
    forward, backward = composite(causal_self_attention_forward, causal_self_attention_backward, n_head=NH)
    grads = check_gradients(forward, backward, {"x": rng.standard_normal((2, 4, C)), **params}, rng)
    assert set(grads) == {"x", *params}


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_backward(bias):
    rng = np.random.default_rng(10)
    C = 4
    params = {name[len("mlp."):]: value for name, value in block_params(rng, C, bias).items()
              if name.startswith("mlp.")}
    forward, backward = composite(mlp_forward, mlp_backward)
    grads = check_gradients(forward, backward, {"x": rng.standard_normal((2, 3, C)), **params}, rng)
    assert set(grads) == {"x", *params}


@pytest.mark.parametrize("bias", [True, False])
def test_block_backward(bias):
    rng = np.random.default_rng(11)
    C, NH = 8, 2
    params = block_params(rng, C, bias)
    forward, backward = composite(block_forward, block_backward, n_head=NH)
    grads = check_gradients(forward, backward, {"x": rng.standard_normal((2, 4, C)), **params}, rng)
    assert set(grads) == {"x", *params}


def test_directional_check_on_a_wide_block():
    """A block too wide to nudge entry by entry: random-direction derivatives instead."""
    rng = np.random.default_rng(12)
    C, NH = 24, 4  # mlp.c_fc.weight has 2304 entries
    params = block_params(rng, C, bias=False)
    forward, backward = composite(block_forward, block_backward, n_head=NH)
    inputs = {"x": rng.standard_normal((2, 3, C)), **params}
    check_gradients(forward, backward, inputs, rng, names=["x", "mlp.c_fc.weight", "attn.c_attn.weight"])


def test_attention_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="n_head"):
        attention_forward(np.zeros((1, 2, 3 * 10)), 4)


# --------------------------------------------------------------------------------------
# properties (hypothesis)
# --------------------------------------------------------------------------------------

@FEW
@given(seed=st.integers(0, 2 ** 32 - 1), rows=st.integers(1, 4), width=st.integers(1, 9),
       scale=st.floats(0.1, 50.0))
def test_softmax_rows_sum_to_one_and_masked_entries_are_exactly_zero(seed, rows, width, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width)) * scale
    masked = rng.random((rows, width)) < 0.4
    masked[:, 0] = False  # every row keeps one finite entry
    x[masked] = -np.inf
    probs, _ = softmax_forward(x)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(probs[masked] == 0.0)
    assert np.all(np.isfinite(probs))


@FEW
@given(seed=st.integers(0, 2 ** 32 - 1), B=st.integers(1, 3), T=st.integers(1, 9),
       NH=st.integers(1, 3), HS=st.integers(1, 4), scale=st.floats(0.1, 30.0))
def test_attention_rows_sum_to_one_and_the_future_is_exactly_zero(seed, B, T, NH, HS, scale):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * NH * HS)) * scale
    out, cache = attention_forward(qkv, NH)
    att = cache[3]  # (B, NH, T, T)
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, rtol=1e-12)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    assert np.all(att[..., future] == 0.0)
    assert np.all(np.isfinite(out))
    # the masked entries pass back exactly zero gradient too: a gradient on the outputs
    # before position t0 reaches no query, key or value at t0 or later
    t0 = int(rng.integers(0, T))
    dout = rng.standard_normal(out.shape)
    dout[:, t0:] = 0.0
    dqkv = attention_backward(dout, cache)
    assert np.all(np.isfinite(dqkv))
    assert np.all(dqkv[:, t0:] == 0.0)
    if t0 > 0:
        assert np.any(dqkv[:, :t0] != 0.0)


@FEW
@given(seed=st.integers(0, 2 ** 32 - 1), N=st.integers(1, 6), V=st.integers(2, 12))
def test_cross_entropy_gradient_sums_to_zero_per_position(seed, N, V):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, 2, V)) * 5.0
    targets = rng.integers(0, V, size=(N, 2))
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(1.0, cache)
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0.0, atol=1e-15)
    assert float(loss) >= 0.0


def _layer_cases(rng, dtype):
    """(name, forward, backward returning a tuple of arrays, inputs) for every layer."""
    C, NH, B, T, V = 8, 2, 2, 3, 5
    x = rng.standard_normal((B, T, C)).astype(dtype)
    params = block_params(rng, C, bias=True, dtype=dtype)
    attn = {k[5:]: v for k, v in params.items() if k.startswith("attn.")}
    mlp = {k[4:]: v for k, v in params.items() if k.startswith("mlp.")}
    idx = rng.integers(0, V, size=(B, T))
    wte, wpe = rng.standard_normal((V, C)).astype(dtype), rng.standard_normal((T + 2, C)).astype(dtype)

    def flat(backward):
        def run(dout, cache):
            dx, dparams = backward(dout, cache)
            return (dx, *dparams.values())
        return run

    return [
        ("embedding", lambda: embedding_forward(idx, wte, wpe), embedding_backward),
        ("layernorm", lambda: layernorm_forward(x, params["ln_1.weight"], params["ln_1.bias"]),
         lambda d, c: [g for g in layernorm_backward(d, c) if g is not None]),
        ("linear", lambda: linear_forward(x, params["attn.c_proj.weight"], params["attn.c_proj.bias"]),
         linear_backward),
        ("lm_head", lambda: lm_head_forward(x, wte), lm_head_backward),
        ("gelu", lambda: gelu_forward(x), lambda d, c: (gelu_backward(d, c),)),
        ("softmax", lambda: softmax_forward(x), lambda d, c: (softmax_backward(d, c),)),
        ("log_softmax", lambda: log_softmax_forward(x), lambda d, c: (log_softmax_backward(d, c),)),
        ("attention", lambda: attention_forward(x[..., :6], 2), lambda d, c: (attention_backward(d, c),)),
        ("self_attention", lambda: causal_self_attention_forward(x, attn, NH),
         flat(causal_self_attention_backward)),
        ("mlp", lambda: mlp_forward(x, mlp), flat(mlp_backward)),
        ("block", lambda: block_forward(x, params, NH), flat(block_backward)),
    ]


@FEW
@given(seed=st.integers(0, 2 ** 32 - 1), a=st.floats(-3.0, 3.0), b=st.floats(-3.0, 3.0))
def test_backward_is_linear_in_the_incoming_gradient(seed, a, b):
    rng = np.random.default_rng(seed)
    for name, forward, backward in _layer_cases(rng, np.float64):
        out, cache = forward()
        d1, d2 = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
        combined = backward(a * d1 + b * d2, cache)
        separate = [a * g1 + b * g2 for g1, g2 in zip(backward(d1, cache), backward(d2, cache))]
        for g, expected in zip(combined, separate):
            np.testing.assert_allclose(g, expected, rtol=1e-9, atol=1e-9, err_msg=name)


@FEW
@given(seed=st.integers(0, 2 ** 32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_every_layer_keeps_the_input_dtype(seed, dtype):
    rng = np.random.default_rng(seed)
    for name, forward, backward in _layer_cases(rng, dtype):
        out, cache = forward()
        assert out.dtype == dtype, name
        for g in backward(rng.standard_normal(out.shape).astype(dtype), cache):
            assert g.dtype == dtype, name
    logits = rng.standard_normal((2, 3, 5)).astype(dtype)
    loss, cache = cross_entropy_forward(logits, rng.integers(0, 5, size=(2, 3)))
    assert loss.dtype == dtype
    assert cross_entropy_backward(1.0, cache).dtype == dtype


# --------------------------------------------------------------------------------------
# the fast forms against their clear references (docs/performance.md)
# --------------------------------------------------------------------------------------

# float32 agreement: a few units in the last place of the largest entries
TOLERANCE = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of a handful of numbers, so that every blocked loop runs many uneven blocks."""
    monkeypatch.setattr(layers, "BLOCK_ELEMENTS", 7)


def test_row_blocks_cover_every_row_once():
    for n_rows, row_size in [(0, 5), (1, 1), (10, 3), (100_000, 1), (3, 10 ** 6)]:
        covered = np.zeros(n_rows, dtype=int)
        blocks = row_blocks(n_rows, row_size, np)
        for block in blocks:
            covered[block] += 1
        assert np.all(covered == 1)
        assert all(b.stop - b.start <= max(1, layers.BLOCK_ELEMENTS // row_size) for b in blocks)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("blocks", ["one", "many"])
def test_fast_layers_match_their_references(dtype, blocks, monkeypatch):
    if blocks == "many":
        monkeypatch.setattr(layers, "BLOCK_ELEMENTS", 7)
    rng = np.random.default_rng(20)
    tol = TOLERANCE[dtype]
    B, T, NH, HS = 5, 7, 3, 4
    C = NH * HS

    x = (rng.standard_normal((B, T, C)) * 3.0 + 1.0).astype(dtype)
    weight, bias = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal((B, T, C)).astype(dtype)
    for b in (bias, None):
        out, cache = layernorm_forward(x, weight, b)
        out_ref, cache_ref = layernorm_forward_reference(x, weight, b)
        np.testing.assert_allclose(out, out_ref, **tol)
        grads = layernorm_backward(dout, cache)
        for g, g_ref in zip(grads, layernorm_backward_reference(dout, cache_ref)):
            assert (g is None) == (g_ref is None)
            if g is not None:
                assert g.dtype == dtype
                np.testing.assert_allclose(g, g_ref, **tol)
        overwritten = dout.copy()  # out=dout: the gradient written over the incoming one
        for g, g_in_place in zip(grads, layernorm_backward(overwritten, cache, out=overwritten)):
            if g is not None:
                np.testing.assert_array_equal(g, g_in_place)

    hidden = (rng.standard_normal((B, T, 4 * C)) * 3.0).astype(dtype)
    dhidden = rng.standard_normal(hidden.shape).astype(dtype)
    out, cache = gelu_forward(hidden)
    np.testing.assert_allclose(out, gelu_reference(hidden), **tol)
    dx = gelu_backward(dhidden, cache)
    assert out.dtype == dx.dtype == dtype
    np.testing.assert_allclose(dx, gelu_backward_reference(dhidden, hidden), **tol)
    overwritten = dhidden.copy()
    np.testing.assert_array_equal(gelu_backward(overwritten, cache, out=overwritten), dx)
    np.testing.assert_array_equal(overwritten, dx)

    qkv = (rng.standard_normal((B, T, 3 * C)) * 2.0).astype(dtype)
    out, cache = attention_forward(qkv, NH)
    out_ref, cache_ref = attention_forward_reference(qkv, NH)
    np.testing.assert_allclose(out, out_ref, **tol)
    dqkv = attention_backward(dout, cache)
    assert out.dtype == dqkv.dtype == dtype
    np.testing.assert_allclose(dqkv, attention_backward_reference(dout, cache_ref), **tol)


def test_gradients_hold_across_block_boundaries(tiny_blocks):
    rng = np.random.default_rng(21)
    check_gradients(layernorm_forward, as_named(["x", "weight", "bias"], layernorm_backward),
                    {"x": rng.standard_normal((3, 2, 5)), "weight": rng.standard_normal(5),
                     "bias": rng.standard_normal(5)}, rng)
    check_gradients(gelu_forward, as_named(["x"], gelu_backward), {"x": rng.standard_normal((4, 9)) * 3.0}, rng)
    check_gradients(lambda qkv: attention_forward(qkv, 2), as_named(["qkv"], attention_backward),
                    {"qkv": rng.standard_normal((3, 4, 12))}, rng)


@pytest.mark.parametrize("V, C", [(5, 8), (9, 4)], ids=["one-hot matmul", "scatter"])
def test_embedding_backward_both_paths_match_a_loop(V, C):
    rng = np.random.default_rng(22)
    idx = rng.integers(0, V, size=(3, 6))
    idx[0, :4] = 2  # repeats
    _, cache = embedding_forward(idx, rng.standard_normal((V, C)), rng.standard_normal((8, C)))
    dx = rng.standard_normal((3, 6, C))
    dwte, dwpe = embedding_backward(dx, cache)
    expected = np.zeros((V, C))
    for b in range(3):
        for t in range(6):
            expected[idx[b, t]] += dx[b, t]
    np.testing.assert_allclose(dwte, expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dwpe[:6], dx.sum(axis=0), rtol=1e-13)


def test_softmax_in_place_equals_a_new_array():
    rng = np.random.default_rng(23)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    x[1, 3:] = -np.inf
    expected, _ = softmax_forward(x)
    probs, _ = softmax_forward(x, out=x)
    assert probs is x
    np.testing.assert_array_equal(probs, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cached_attention_gives_the_full_attention_rows(dtype):
    """Prefill 3 positions, then 1, then 2: each call's rows equal attention on the whole sequence."""
    rng = np.random.default_rng(24)
    B, T, NH, HS, context = 2, 6, 2, 3, 9
    qkv = rng.standard_normal((B, T, 3 * NH * HS)).astype(dtype)
    full, _ = attention_forward_reference(qkv, NH)
    keys = np.full((B, NH, context, HS), np.nan, dtype=dtype)  # unfilled positions must never be read
    values = np.full((B, NH, context, HS), np.nan, dtype=dtype)
    start = 0
    for length in (3, 1, 2):
        out = attention_forward_cached(qkv[:, start:start + length], NH, (keys, values, start))
        assert out.dtype == dtype
        np.testing.assert_allclose(out, full[:, start:start + length], **TOLERANCE[dtype])
        start += length
