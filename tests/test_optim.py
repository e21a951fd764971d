"""AdamW against a hand-written reference, exact resume, the schedule, and clipping."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fake_cupy
from tinylatent import backend, layers
from tinylatent.optim import AdamW, clip_grad_norm, lr_at


def make_params(rng, dtype=np.float64):
    return {
        "wte": rng.standard_normal((5, 3)).astype(dtype),        # a matrix: decays
        "h.0.ln_1.weight": rng.standard_normal(3).astype(dtype),  # a vector: does not
        "h.0.attn.c_attn.bias": rng.standard_normal(9).astype(dtype),
    }


def make_grads(rng, params):
    return {name: rng.standard_normal(p.shape).astype(p.dtype) for name, p in params.items()}


def reference_adamw(params, grad_sequence, lrs, weight_decay, beta1, beta2, eps):
    """AdamW written out line by line from Loshchilov & Hutter, Algorithm 2 (decoupled decay)."""
    params = {name: p.copy() for name, p in params.items()}
    m = {name: np.zeros_like(p) for name, p in params.items()}
    v = {name: np.zeros_like(p) for name, p in params.items()}
    for t, (grads, lr) in enumerate(zip(grad_sequence, lrs), start=1):
        for name in params:
            g = grads[name]
            if params[name].ndim >= 2:
                params[name] = params[name] - lr * weight_decay * params[name]
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat = m[name] / (1 - beta1 ** t)
            v_hat = v[name] / (1 - beta2 ** t)
            params[name] = params[name] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def test_adamw_matches_a_hand_written_reference_for_three_steps():
    rng = np.random.default_rng(0)
    params = make_params(rng)
    grad_sequence = [make_grads(rng, params) for _ in range(3)]
    lrs = [1e-2, 3e-2, 2e-2]
    expected = reference_adamw(params, grad_sequence, lrs, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    optimizer = AdamW(weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for grads, lr in zip(grad_sequence, lrs):
        optimizer.step(params, grads, lr)
    assert optimizer.step_count == 3
    for name in params:
        # the formulas differ only in where eps meets the bias correction: sqrt(v)/sqrt(c2) + eps
        # versus sqrt(v/c2) + eps are equal, so agreement is to rounding
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-13, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_in_blocks_matches_the_reference(dtype, monkeypatch):
    """The in-place update runs block by block (7 numbers here, so many uneven blocks)."""
    monkeypatch.setattr(layers, "BLOCK_ELEMENTS", 7)
    rng = np.random.default_rng(10)
    params = make_params(rng, dtype)
    grad_sequence = [make_grads(rng, params) for _ in range(3)]
    lrs = [1e-2, 0.0, 2e-2]  # lr = 0 still updates the moments
    expected = reference_adamw({n: p.astype(np.float64) for n, p in params.items()},
                               [{n: g.astype(np.float64) for n, g in grads.items()} for grads in grad_sequence],
                               lrs, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    optimizer = AdamW(weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for grads, lr in zip(grad_sequence, lrs):
        optimizer.step(params, grads, lr)
    tol = dict(rtol=1e-13, atol=1e-15) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-7)
    for name in params:
        assert params[name].dtype == dtype
        np.testing.assert_allclose(params[name], expected[name], err_msg=name, **tol)


def test_adamw_with_zero_learning_rate_moves_nothing_but_the_moments():
    rng = np.random.default_rng(11)
    params = make_params(rng)
    before = {name: p.copy() for name, p in params.items()}
    optimizer = AdamW()
    optimizer.step(params, make_grads(rng, params), lr=0.0)
    for name in params:
        np.testing.assert_array_equal(params[name], before[name])
        assert np.all(np.isfinite(optimizer.v[name])) and np.any(optimizer.m[name] != 0.0)


def test_adamw_rejects_a_parameter_it_cannot_update_in_place():
    params = {"w": np.ones((3, 2)).T}  # a transposed view: not C-contiguous
    with pytest.raises(ValueError, match="C-contiguous"):
        AdamW().step(params, {"w": np.ones((2, 3))}, lr=0.1)


def test_adamw_decays_matrices_only():
    params = {"matrix": np.ones((2, 2)), "vector": np.ones(2)}
    zero_grads = {name: np.zeros_like(p) for name, p in params.items()}
    AdamW(weight_decay=0.5).step(params, zero_grads, lr=0.1)
    np.testing.assert_array_equal(params["matrix"], 0.95)  # 1 - lr * wd
    np.testing.assert_array_equal(params["vector"], 1.0)


def test_adamw_keeps_float32():
    rng = np.random.default_rng(1)
    params = make_params(rng, np.float32)
    optimizer = AdamW()
    optimizer.step(params, make_grads(rng, params), lr=1e-3)
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(m.dtype == np.float32 for m in optimizer.m.values())


def test_adamw_resumes_exactly_from_its_state_dict():
    rng = np.random.default_rng(2)
    params = make_params(rng)
    grad_sequence = [make_grads(rng, params) for _ in range(4)]

    straight = {name: p.copy() for name, p in params.items()}
    optimizer = AdamW()
    for grads in grad_sequence:
        optimizer.step(straight, grads, lr=1e-2)

    resumed = {name: p.copy() for name, p in params.items()}
    first = AdamW()
    for grads in grad_sequence[:2]:
        first.step(resumed, grads, lr=1e-2)
    state = first.state_dict()
    second = AdamW(weight_decay=0.0, betas=(0.5, 0.5))  # overwritten by the state
    second.load_state_dict(state)
    for grads in grad_sequence[2:]:
        second.step(resumed, grads, lr=1e-2)
    for name in params:
        np.testing.assert_array_equal(resumed[name], straight[name])
    assert second.step_count == 4


def test_adamw_matches_torch_when_available():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    params = make_params(rng)
    grad_sequence = [make_grads(rng, params) for _ in range(3)]
    torch_params = {name: torch.tensor(p.copy(), requires_grad=True) for name, p in params.items()}
    torch_opt = torch.optim.AdamW(
        [{"params": [p for p in torch_params.values() if p.ndim >= 2], "weight_decay": 0.1},
         {"params": [p for p in torch_params.values() if p.ndim < 2], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    optimizer = AdamW()
    for grads in grad_sequence:
        for name, p in torch_params.items():
            p.grad = torch.tensor(grads[name])
        torch_opt.step()
        optimizer.step(params, grads, lr=1e-2)
    for name in params:
        np.testing.assert_allclose(params[name], torch_params[name].detach().numpy(), rtol=1e-13, atol=1e-15)


def test_adamw_on_a_gpu_updates_all_at_once_with_the_cpu_numbers(gpu):
    """On a GPU every parameter is updated in one set of passes over flat buffers; the numbers
    are the CPU's per-parameter blocks' (bit for bit on the fake CuPy, to rounding on a GPU),
    through a zero learning rate, a resume from the state dict, a parameter added on the
    way (the flat buffers are rebuilt), and mixed dtypes (per parameter again)."""
    def same(device_value, cpu_value):
        fake_cupy.assert_matches_cpu(device_value, cpu_value, gpu, rtol=1e-12, atol=1e-15)

    rng = np.random.default_rng(5)
    cpu_params = make_params(rng)
    cpu_params["h.0.mlp.c_fc.weight"] = rng.standard_normal((3, 4))              # a second matrix, after a vector
    gpu_params = {name: backend.to_device(p, "gpu") for name, p in cpu_params.items()}
    cpu_opt, gpu_opt = AdamW(), AdamW()

    def step(lr):
        grads = make_grads(rng, cpu_params)
        cpu_opt.step(cpu_params, grads, lr)
        gpu_opt.step(gpu_params, {name: backend.to_device(g, "gpu") for name, g in grads.items()}, lr)
        for name in cpu_params:
            same(gpu_params[name], cpu_params[name])
            same(gpu_opt.m[name], cpu_opt.m[name])
            same(gpu_opt.v[name], cpu_opt.v[name])

    for lr in (1e-2, 0.0, 5e-3):
        step(lr)
    assert gpu_opt._all_at_once is not None
    resumed = AdamW()
    resumed.load_state_dict(gpu_opt.state_dict())
    gpu_opt = resumed
    step(1e-2)
    cpu_params["h.1.ln_2.bias"] = rng.standard_normal(3)
    gpu_params["h.1.ln_2.bias"] = backend.to_device(cpu_params["h.1.ln_2.bias"], "gpu")
    step(1e-2)
    step(2e-3)
    cpu_params["wte"] = cpu_params["wte"].astype(np.float32)                      # mixed dtypes: per parameter
    gpu_params["wte"] = backend.to_device(cpu_params["wte"], "gpu")
    step(1e-2)


def test_adamw_on_a_gpu_launches_the_same_passes_for_any_number_of_parameters():
    """Counted on the fake CuPy: besides one view and one write-back per parameter, the update
    is two gathers and the 13 passes (with decay), however many parameters there are; per
    parameter it would be 13 passes each."""
    def passes(n_matrices):
        rng = np.random.default_rng(0)
        params = {f"w{i}": backend.to_device(rng.standard_normal((4, 3)), "gpu") for i in range(n_matrices)}
        params["bias"] = backend.to_device(rng.standard_normal(3), "gpu")
        grads = {name: backend.to_device(rng.standard_normal(p.shape), "gpu") for name, p in params.items()}
        optimizer = AdamW()
        optimizer.step(params, grads, lr=1e-2)                      # builds the flat moments
        with fake_cupy.counting() as counts:
            optimizer.step(params, grads, lr=1e-2)
        per_parameter = {"ndarray.reshape", "ndarray.__getitem__", "ndarray.__setitem__"}
        assert counts["ndarray.__setitem__"] == len(params)         # each parameter written back once
        return sum(n for where, n in counts.items() if where not in per_parameter)

    with fake_cupy.installed():
        assert passes(2) == passes(20) == 2 + 13


@pytest.mark.parametrize("dtype, lr", [("float32", 1e-39), ("float32", 1e-45), ("float64", 1e-310)])
def test_a_vanishing_learning_rate_moves_nothing_and_makes_no_nan(dtype, lr):
    """1 / step_size overflows the dtype here: the moments update, the parameters do not."""
    params = {"w": np.array([[0.0, 1.0], [-2.0, 3.0]], dtype=dtype), "b": np.zeros(2, dtype=dtype)}
    grads = {"w": np.array([[0.0, 1.0], [0.0, -1.0]], dtype=dtype), "b": np.array([0.0, 2.0], dtype=dtype)}
    before = {name: p.copy() for name, p in params.items()}
    optimizer = AdamW(weight_decay=0.0)
    optimizer.step(params, grads, lr=lr)
    for name in params:
        assert np.array_equal(params[name], before[name]), name
        assert np.all(np.isfinite(optimizer.m[name])) and np.all(np.isfinite(optimizer.v[name]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(betas=(1.0, 0.95)), "betas"),
    (dict(eps=0.0), "eps"),
    (dict(eps="x"), "eps"),
    (dict(betas=5), "betas"),
    (dict(weight_decay=None), "weight_decay"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamW(**kwargs)


def _saved_state():
    optimizer = AdamW()
    params = {"w": np.ones((2, 2)), "b": np.zeros(2)}
    optimizer.step(params, {name: np.full_like(p, 0.5) for name, p in params.items()}, lr=1e-2)
    return optimizer.state_dict()


@pytest.mark.parametrize("edit, message", [
    (lambda s: ["not", "a", "dict"], "must be a dict with 'step', 'm' and 'v'"),
    (lambda s: {**s, "step": -1}, "'step' must be a non-negative integer"),
    (lambda s: {**s, "step": 1.5}, "'step' must be a non-negative integer"),
    (lambda s: {**s, "m": [1, 2]}, "must map parameter names to arrays"),
    (lambda s: {**s, "v": {"w": s["v"]["w"]}}, "moments for different parameters"),
    (lambda s: {**s, "m": {**s["m"], "w": np.ones(3)}}, "moments of 'w' must be float arrays of one shape"),
    (lambda s: {**s, "m": {**s["m"], "b": np.array(["x", "y"])}}, "moments of 'b'"),
    (lambda s: {**s, "betas": (0.9, 1.5)}, "betas"),
    (lambda s: {**s, "eps": "tiny"}, "eps"),
])
def test_adamw_refuses_a_state_that_is_not_one(edit, message):
    state = edit(_saved_state())
    optimizer = AdamW()
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(state)
    assert optimizer.step_count == 0 and optimizer.m == {}          # nothing was half restored


@pytest.mark.parametrize("lr", [math.nan, math.inf, -1e-3, "0.1", True, None])
def test_adamw_rejects_a_learning_rate_that_is_not_a_finite_number_at_least_0(lr):
    params = {"w": np.ones((2, 3)), "b": np.ones(3)}
    grads = {"w": np.full((2, 3), 0.5), "b": np.full(3, 0.5)}
    optimizer = AdamW()
    with pytest.raises(ValueError, match="lr must be a finite number ≥ 0"):
        optimizer.step(params, grads, lr)
    assert optimizer.step_count == 0 and np.all(params["w"] == 1.0)        # nothing moved, no NaN written


def test_adamw_rejects_mismatched_gradients():
    params = {"w": np.ones((2, 2))}
    with pytest.raises(ValueError, match="exactly the keys"):
        AdamW().step(params, {"u": np.ones((2, 2))}, lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        AdamW().step(params, {"w": np.ones(4)}, lr=0.1)


# --------------------------------------------------------------------------------------
# learning-rate schedule
# --------------------------------------------------------------------------------------

def test_lr_schedule_values():
    max_lr, min_lr, warmup, total = 6e-4, 6e-5, 100, 1100
    assert lr_at(0, max_lr, warmup, total, min_lr) == pytest.approx(max_lr / 101)
    assert lr_at(49, max_lr, warmup, total, min_lr) == pytest.approx(max_lr * 50 / 101)
    assert lr_at(warmup, max_lr, warmup, total, min_lr) == pytest.approx(max_lr)        # warm-up ends
    assert lr_at(600, max_lr, warmup, total, min_lr) == pytest.approx((max_lr + min_lr) / 2)  # midpoint
    assert lr_at(total, max_lr, warmup, total, min_lr) == pytest.approx(min_lr)          # end
    assert lr_at(total + 500, max_lr, warmup, total, min_lr) == min_lr
    quarter = lr_at(350, max_lr, warmup, total, min_lr)
    assert quarter == pytest.approx(min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi / 4)) / 2)
    rates = [lr_at(s, max_lr, warmup, total, min_lr) for s in range(total + 1)]
    assert all(a <= b for a, b in zip(rates[:warmup + 1], rates[1:warmup + 1]))  # rising
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))       # then falling


@pytest.mark.parametrize("args, message", [
    ((-1, 1e-3, 10, 100, 0.0), "step"),
    ((0, 1e-3, 100, 100, 0.0), "warmup_steps < total_steps"),
    ((0, 1e-3, -1, 100, 0.0), "warmup_steps"),
    ((0, 1e-3, 10, 100, 1e-2), "min_lr <= max_lr"),
    ((0, 1e-3, 1.5, 100, 0.0), "integers 0 <= warmup_steps < total_steps"),
    ((0, 1e-3, True, 100, 0.0), "integers 0 <= warmup_steps < total_steps"),
    ((0, 1e-3, 10, math.nan, 0.0), "integers 0 <= warmup_steps < total_steps"),
    ((0, 1e-3, None, 100, 0.0), "integers 0 <= warmup_steps < total_steps"),
    ((0, "1e-3", 10, 100, 0.0), "finite numbers 0 <= min_lr <= max_lr"),
    ((0, math.inf, 10, 100, 0.0), "finite numbers 0 <= min_lr <= max_lr"),
])
def test_lr_schedule_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        lr_at(*args)


# --------------------------------------------------------------------------------------
# gradient clipping
# --------------------------------------------------------------------------------------

def global_norm(grads):
    return math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))


def test_clipping_scales_the_global_norm_exactly():
    rng = np.random.default_rng(4)
    grads = make_grads(rng, make_params(rng))
    before = {name: g.copy() for name, g in grads.items()}
    norm = global_norm(grads)
    returned = clip_grad_norm(grads, max_norm=norm / 3)
    assert isinstance(returned, float) and returned == pytest.approx(norm, rel=1e-14)
    assert global_norm(grads) == pytest.approx(norm / 3, rel=1e-14)
    for name in grads:  # one common factor: directions are kept
        np.testing.assert_allclose(grads[name], before[name] / 3, rtol=1e-14)


def test_clipping_leaves_small_gradients_alone():
    rng = np.random.default_rng(5)
    grads = make_grads(rng, make_params(rng))
    before = {name: g.copy() for name, g in grads.items()}
    norm = clip_grad_norm(grads, max_norm=1e6)
    assert norm == pytest.approx(global_norm(before), rel=1e-14)
    for name in grads:
        np.testing.assert_array_equal(grads[name], before[name])


def test_clipping_reports_a_non_finite_norm_without_touching_the_gradients():
    grads = {"w": np.array([[1.0, np.inf]]), "b": np.array([2.0])}
    assert math.isinf(clip_grad_norm(grads, 1.0))
    assert grads["b"][0] == 2.0
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, 0.0)
    for bad in (math.nan, "1.0", None, True):
        with pytest.raises(ValueError, match="max_norm must be a number > 0"):
            clip_grad_norm(grads, bad)
