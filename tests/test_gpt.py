"""The whole GPT: gradients against finite differences, causality, the paper's parameter
count, sampling, bad input, and (when PyTorch is importable) an independent reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylatent.gpt import GPT, GPTConfig, init_params, param_shapes, sample_next_tokens

EPS = 1e-6
FEW = settings(max_examples=10, deadline=None)


def tiny_config(**overrides) -> GPTConfig:
    """A model small enough to nudge every parameter: about 2,000 numbers."""
    fields = dict(vocab_size=7, context_length=6, n_layer=2, n_head=2, d_model=8,
                  bias=True, tie_embeddings=False, dtype="float64")
    fields.update(overrides)
    return GPTConfig(**fields)


def perturbed_model(config, seed=0) -> GPT:
    """A model whose LayerNorm weights and biases are random too, so every gradient is generic."""
    rng = np.random.default_rng(seed)
    model = GPT.create(config, rng)
    for name, value in model.params.items():
        if value.ndim == 1:
            value += 0.3 * rng.standard_normal(value.shape)
    # larger weights than 0.02 make the attention non-uniform and the check sharper
    for name, value in model.params.items():
        if value.ndim == 2:
            value *= 10.0
    return model


def batch(config, rng, B=2, T=None):
    T = config.context_length if T is None else T
    return (rng.integers(0, config.vocab_size, size=(B, T)),
            rng.integers(0, config.vocab_size, size=(B, T)))


# --------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [dict(), dict(bias=False, tie_embeddings=True)],
                         ids=["bias-untied", "nobias-tied"])
def test_every_parameter_gradient_matches_finite_differences(overrides):
    config = tiny_config(**overrides)
    model = perturbed_model(config)
    rng = np.random.default_rng(1)
    idx, targets = batch(config, rng, T=5)
    idx[0, :3] = 3  # repeated token ids

    def loss():
        return float(model.forward(idx, targets)[1])

    _, grads = model.loss_and_grads(idx, targets)
    assert list(grads) == list(model.params)
    for name, param in model.params.items():
        assert grads[name].shape == param.shape and grads[name].dtype == param.dtype, name
        flat, grad_flat = param.reshape(-1), grads[name].reshape(-1)
        for i in range(flat.size):
            original = flat[i]
            flat[i] = original + EPS
            plus = loss()
            flat[i] = original - EPS
            minus = loss()
            flat[i] = original
            numeric = (plus - minus) / (2 * EPS)
            assert grad_flat[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8), f"{name}[{i}]"
    # positions past T get no gradient; they were never used
    assert np.all(grads["wpe"][5:] == 0.0)


def test_backward_of_explicit_dlogits_is_linear():
    config = tiny_config()
    model = perturbed_model(config)
    rng = np.random.default_rng(2)
    idx, _ = batch(config, rng)
    logits, _, cache = model.forward(idx)
    d1, d2 = rng.standard_normal(logits.shape), rng.standard_normal(logits.shape)
    combined = model.backward(cache, 2.0 * d1 - 0.5 * d2)
    g1, g2 = model.backward(cache, d1), model.backward(cache, d2)
    for name in model.params:
        np.testing.assert_allclose(combined[name], 2.0 * g1[name] - 0.5 * g2[name], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------
# causality and probabilities
# --------------------------------------------------------------------------------------

CAUSAL_MODEL = perturbed_model(tiny_config(context_length=8), seed=3)


@FEW
@given(seed=st.integers(0, 2 ** 32 - 1), t=st.integers(0, 7))
def test_changing_later_tokens_changes_no_earlier_logit(seed, t):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 7, size=(2, 8))
    changed = idx.copy()
    changed[:, t + 1:] = rng.integers(0, 7, size=changed[:, t + 1:].shape)
    before, _, _ = CAUSAL_MODEL.forward(idx)
    after, _, _ = CAUSAL_MODEL.forward(changed)
    assert np.array_equal(before[:, :t + 1], after[:, :t + 1])  # exactly, not approximately


def test_log_probs_are_normalised_and_agree_with_the_loss():
    config = tiny_config()
    model = perturbed_model(config)
    idx, targets = batch(config, np.random.default_rng(4))
    logp = model.log_probs(idx)
    assert logp.shape == (2, config.context_length, config.vocab_size)
    np.testing.assert_allclose(np.exp(logp).sum(axis=-1), 1.0, rtol=1e-12)
    _, loss, _ = model.forward(idx, targets)
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)
    assert float(loss) == pytest.approx(-picked.mean(), rel=1e-12)
    np.testing.assert_array_equal(model.logits(idx), model.forward(idx)[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_from_parameters_to_gradients(dtype):
    config = tiny_config(dtype=dtype)
    model = GPT.create(config, np.random.default_rng(5))
    idx, targets = batch(config, np.random.default_rng(6))
    logits, loss, cache = model.forward(idx, targets)
    assert logits.dtype == loss.dtype == np.dtype(dtype)
    assert all(g.dtype == np.dtype(dtype) for g in model.backward(cache).values())
    assert model.log_probs(idx).dtype == np.dtype(dtype)


def test_float32_forward_keeps_nothing_in_float64():
    """A NumPy float64 scalar would silently promote a float32 array: nothing in the
    forward cache, the logits, the loss or the gradients may be float64."""
    config = tiny_config(dtype="float32", bias=True)
    model = GPT.create(config, np.random.default_rng(5))
    idx, targets = batch(config, np.random.default_rng(6))
    logits, loss, cache = model.forward(idx, targets)
    floats, stack = [], [cache]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif hasattr(item, "__dataclass_fields__"):
            stack.extend(getattr(item, name) for name in item.__dataclass_fields__)
        elif isinstance(item, np.ndarray) and item.dtype.kind == "f":
            floats.append(item)
    assert len(floats) > 20 and all(a.dtype == np.float32 for a in floats)
    assert logits.dtype == loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.backward(cache).values())


def test_initial_loss_is_near_log_vocab():
    config = GPTConfig.small()
    model = GPT.create(config, np.random.default_rng(7))
    idx, targets = batch(config, np.random.default_rng(8), B=4)
    _, loss, _ = model.forward(idx, targets)
    assert float(loss) == pytest.approx(math.log(config.vocab_size), abs=0.1)


# --------------------------------------------------------------------------------------
# configuration, initialisation, parameter counts
# --------------------------------------------------------------------------------------

def test_paper_preset_has_exactly_21_253_632_parameters():
    config = GPTConfig.paper(vocab_size=19)
    assert (config.n_layer, config.n_head, config.d_model, config.context_length) == (3, 12, 768, 128)
    assert not config.bias and config.tie_embeddings
    assert config.num_params(non_embedding=True) == 21_253_632
    assert config.num_params(non_embedding=False) == 21_253_632 + 128 * 768
    assert GPTConfig() == config  # the defaults are the paper's model


def test_paper_preset_count_from_a_real_initialisation():
    model = GPT.create(GPTConfig.paper(), np.random.default_rng(0))
    assert model.num_params() == 21_253_632
    assert model.num_params(non_embedding=False) == GPTConfig.paper().num_params(non_embedding=False)


def test_small_preset_is_small_and_counted_consistently():
    config = GPTConfig.small()
    model = GPT.create(config, np.random.default_rng(0))
    assert model.num_params() == config.num_params() < 500_000
    assert config.vocab_size == 19


def test_parameter_names_follow_gpt2_checkpoints():
    names = list(param_shapes(tiny_config(n_layer=1, bias=False, tie_embeddings=True)))
    assert names == ["wte", "wpe", "h.0.ln_1.weight", "h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight",
                     "h.0.ln_2.weight", "h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.weight", "ln_f.weight"]
    assert "lm_head.weight" in param_shapes(tiny_config(tie_embeddings=False))


def test_initialisation_is_reproducible_and_follows_gpt2():
    config = GPTConfig(vocab_size=50, context_length=64, n_layer=4, n_head=4, d_model=128, bias=True)
    a = init_params(config, np.random.default_rng(42))
    b = init_params(config, np.random.default_rng(42))
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert all(a[name].dtype == np.float32 for name in a)
    assert np.std(a["h.0.mlp.c_fc.weight"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(a["h.0.mlp.c_proj.weight"]) == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert np.std(a["wpe"]) == pytest.approx(0.02, rel=0.05)
    assert np.all(a["h.1.ln_2.weight"] == 1.0) and np.all(a["h.1.ln_2.bias"] == 0.0)
    assert np.all(a["h.3.attn.c_attn.bias"] == 0.0)
    # float64 is the same draw, before rounding to float32
    c = init_params(GPTConfig.from_dict({**config.to_dict(), "dtype": "float64"}), np.random.default_rng(42))
    np.testing.assert_array_equal(c["wte"].astype(np.float32), a["wte"])


def test_config_round_trips_through_a_dict():
    config = GPTConfig.small(vocab_size=23)
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig.from_dict({**config.to_dict(), "n_embd": 64})


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=10, n_head=4), "divisible by n_head"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=-3), "vocab_size must be a positive integer"),
    (dict(context_length=2.5), "context_length must be a positive integer"),
    (dict(dtype="float16"), "dtype must be one of float32, float64"),
    (dict(init_std=0.0), "init_std"),
    (dict(init_std=True), "init_std"),
    (dict(bias="no"), "bias must be True or False"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**tiny_config().to_dict(), **overrides})


def test_model_rejects_parameters_that_do_not_match_the_config():
    config = tiny_config()
    params = init_params(config, np.random.default_rng(0))
    with pytest.raises(ValueError, match="missing"):
        GPT(config, {k: v for k, v in params.items() if k != "wpe"})
    with pytest.raises(ValueError, match="shape"):
        GPT(config, {**params, "wte": np.zeros((3, 8))})
    with pytest.raises(ValueError, match="dtype"):
        GPT(config, {**params, "wte": params["wte"].astype(np.float32)})


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    return GPT.create(tiny_config(), np.random.default_rng(0))


def test_a_seed_stands_for_its_generator_in_create_and_generate(tiny_model):
    """Randomness comes from a Generator or a seed, everywhere (a seed used to be an AttributeError)."""
    seeded, from_generator = GPT.create(tiny_config(), 0), tiny_model
    for name in from_generator.params:
        np.testing.assert_array_equal(seeded.params[name], from_generator.params[name])
    np.testing.assert_array_equal(tiny_model.generate(np.array([[1, 2]]), 4, rng=5),
                                  tiny_model.generate(np.array([[1, 2]]), 4, rng=np.random.default_rng(5)))
    with pytest.raises(ValueError, match="seed must be an int, a numpy.random.Generator or None"):
        GPT.create(tiny_config(), "0")


@pytest.mark.parametrize("logits, kwargs, message", [
    (np.full((2, 5), np.nan), {}, "these hold NaN or inf"),          # used to sample token 0 for ever
    (np.array([[0.0, np.inf, 1.0]]), {}, "these hold NaN or inf"),
    (np.array([[-np.inf, -np.inf]]), {}, "some finite in each row"),
    (np.zeros(5), {}, r"shape \(batch, vocabulary\); got \(5,\)"),
    (np.zeros((2, 5)), dict(top_k=9), r"top_k must be None or an integer in \[1, 5\]; got 9"),  # dropped the best
    (np.zeros((2, 5)), dict(top_k=0), "top_k"),
    (np.zeros((2, 5)), dict(temperature=-1.0), "temperature must be a positive finite number"),  # inverted p
    (np.zeros((2, 5)), dict(temperature=0.0), "temperature"),
])
def test_sampling_refuses_what_it_cannot_sample_from(logits, kwargs, message):
    """Each of these used to sample something anyway (or raise an IndexError)."""
    with pytest.raises(ValueError, match=message):
        sample_next_tokens(logits, np.random.default_rng(0), **kwargs)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("temperature", [1e-300, 1e-320, 5e-324])
def test_a_tiny_temperature_samples_the_largest_logit(temperature):
    """softmax(l / τ) → the argmax as τ → 0; 1e-320 used to overflow l / τ to inf and sample NaN
    probabilities (token 0 every time, with warnings)."""
    logits = np.array([[0.1, 2.5, -1.0, 2.4], [3.0, -2.0, 0.0, -np.inf]])
    for seed in range(20):
        np.testing.assert_array_equal(sample_next_tokens(logits, seed, temperature=temperature), [1, 0])


def test_sampling_draws_softmax_frequencies_and_never_a_minus_infinity_token():
    """Against the textbook softmax: 20,000 draws, each frequency within 5 standard errors."""
    logits = np.array([[1.0, 0.0, -np.inf, 2.0]])
    probs = np.exp(logits[0] - logits.max()) / np.exp(logits[0] - logits.max()).sum()
    draws = sample_next_tokens(np.repeat(logits, 20000, axis=0), 0, temperature=1.0)
    counts = np.bincount(draws, minlength=4) / 20000
    assert counts[2] == 0.0
    assert np.all(np.abs(counts - probs) <= 5 * np.sqrt(probs * (1 - probs) / 20000)), (counts, probs)


@pytest.mark.parametrize("idx, message", [
    (np.array([[0, 1, 7]]), r"must lie in \[0, 7\); found 7"),
    (np.array([[0, -1, 2]]), r"must lie in \[0, 7\); found -1"),
    (np.zeros((1, 7), dtype=np.int64), "7 tokens per sequence; at most context_length = 6"),
    (np.array([0, 1, 2]), r"shape \(batch, time\)"),
    (np.zeros((1, 3)), "must be integers"),
    (np.zeros((1, 0), dtype=np.int64), "at least one token"),
])
def test_forward_rejects_bad_token_ids(tiny_model, idx, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.forward(idx)


def test_forward_rejects_bad_targets(tiny_model):
    idx = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"targets must have the shape of idx, \(2, 4\)"):
        tiny_model.forward(idx, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="targets must lie in"):
        tiny_model.forward(idx, np.full((2, 4), 9))
    _, _, cache = tiny_model.forward(idx)
    with pytest.raises(ValueError, match="needs a forward with targets"):
        tiny_model.backward(cache)


def test_token_ids_as_lists_give_the_numbers_of_arrays(tiny_model):
    idx, targets = [[0, 1, 2], [3, 4, 5]], ((1, 2, 3), (4, 5, 6))
    logits, loss, _ = tiny_model.forward(idx, targets)
    array_logits, array_loss, _ = tiny_model.forward(np.array(idx), np.array(targets))
    assert np.array_equal(logits, array_logits) and loss == array_loss
    assert np.array_equal(tiny_model.log_probs(tuple(map(tuple, idx))), tiny_model.log_probs(np.array(idx)))


def test_backward_rejects_dlogits_of_another_shape_or_dtype(tiny_model):
    idx = np.zeros((2, 4), dtype=np.int64)
    logits, _, cache = tiny_model.forward(idx)
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(2, 4, 7\)"):
        tiny_model.backward(cache, np.ones((2, 3, 7), dtype=logits.dtype))
    other = np.float32 if logits.dtype == np.float64 else np.float64
    with pytest.raises(ValueError, match="the model's dtype"):
        tiny_model.backward(cache, np.ones(logits.shape, dtype=other))


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------

def test_generate_is_seeded_crops_the_context_and_respects_top_k(tiny_model):
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    a = tiny_model.generate(prompt, 10, np.random.default_rng(0))  # 13 > context_length 6
    b = tiny_model.generate(prompt, 10, np.random.default_rng(0))
    assert a.shape == (2, 13) and np.array_equal(a, b) and np.array_equal(a[:, :3], prompt)
    assert a.min() >= 0 and a.max() < tiny_model.config.vocab_size
    one = tiny_model.generate(np.array([1, 2]), 3, np.random.default_rng(0))
    assert one.shape == (5,)
    # top_k = 1 is greedy decoding
    greedy = tiny_model.generate(prompt, 4, np.random.default_rng(1), top_k=1)
    tokens = prompt
    for _ in range(4):
        next_token = tiny_model.logits(tokens[:, -6:])[:, -1].argmax(axis=-1)
        tokens = np.concatenate([tokens, next_token[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, tokens)


def test_generate_samples_from_the_model_distribution():
    """With one step and many draws, token frequencies match softmax(logits / temperature)."""
    config = tiny_config(context_length=4)
    model = perturbed_model(config, seed=9)
    prompt = np.tile(np.array([[1, 2]]), (4000, 1))
    drawn = model.generate(prompt, 1, np.random.default_rng(3), temperature=2.0)[:, -1]
    logits = model.logits(prompt[:1])[0, -1] / 2.0
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    observed = np.bincount(drawn, minlength=config.vocab_size) / len(drawn)
    np.testing.assert_allclose(observed, expected, atol=0.03)


def test_generate_takes_a_numpy_temperature(tiny_model):
    as_float = tiny_model.generate(np.array([[1, 2]]), 3, np.random.default_rng(0), temperature=0.5)
    as_numpy = tiny_model.generate(np.array([[1, 2]]), 3, np.random.default_rng(0), temperature=np.float32(0.5))
    np.testing.assert_array_equal(as_numpy, as_float)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_new_tokens=-1), "n_new_tokens"),
    (dict(n_new_tokens=2, temperature=0.0), "temperature"),
    (dict(n_new_tokens=2, temperature=True), "temperature"),        # not read as 1.0
    (dict(n_new_tokens=2, temperature=float("nan")), "temperature"),
    (dict(n_new_tokens=2, top_k=0), "top_k"),
    (dict(n_new_tokens=2, top_k=8), "top_k"),
])
def test_generate_rejects_bad_arguments(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.generate(np.array([[1, 2]]), rng=np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match="prompt token ids must lie in"):
        tiny_model.generate(np.array([[1, 99]]), 1, np.random.default_rng(0))


# --------------------------------------------------------------------------------------
# an independent reference: the same weights in PyTorch (float64)
# --------------------------------------------------------------------------------------

def torch_gpt_loss(torch, params: dict, config: GPTConfig, idx, targets):
    """nanoGPT's forward written with PyTorch's own layers, on our parameter dict.

    Our linear weights are (C_in, C_out), so each F.linear gets the transpose.
    """
    F = torch.nn.functional
    B, T = idx.shape
    C, NH = config.d_model, config.n_head

    def linear(x, name):
        return F.linear(x, params[f"{name}.weight"].T, params.get(f"{name}.bias"))

    def layer_norm(x, name):
        return F.layer_norm(x, (C,), params[f"{name}.weight"], params.get(f"{name}.bias"), eps=1e-5)

    x = params["wte"][idx] + params["wpe"][:T]
    for layer in range(config.n_layer):
        h = f"h.{layer}."
        q, k, v = linear(layer_norm(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + linear(y.transpose(1, 2).reshape(B, T, C), h + "attn.c_proj")
        hidden = F.gelu(linear(layer_norm(x, h + "ln_2"), h + "mlp.c_fc"), approximate="tanh")
        x = x + linear(hidden, h + "mlp.c_proj")
    x = layer_norm(x, "ln_f")
    head = params["wte"] if config.tie_embeddings else params["lm_head.weight"]
    logits = x @ head.T
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return logits, loss


@pytest.mark.parametrize("overrides", [dict(), dict(bias=False, tie_embeddings=True)],
                         ids=["bias-untied", "nobias-tied"])
def test_matches_pytorch_logits_loss_gradients_and_adamw_steps(overrides):
    torch = pytest.importorskip("torch")
    from tinylatent.optim import AdamW

    config = tiny_config(context_length=8, d_model=16, n_head=4, vocab_size=11, **overrides)
    model = perturbed_model(config, seed=10)
    rng = np.random.default_rng(11)
    idx, targets = batch(config, rng, B=3)

    torch_params = {name: torch.tensor(value, requires_grad=True) for name, value in model.params.items()}
    torch_logits, torch_loss = torch_gpt_loss(torch, torch_params, config,
                                              torch.tensor(idx), torch.tensor(targets))
    torch_loss.backward()

    logits, loss, cache = model.forward(idx, targets)
    grads = model.backward(cache)
    np.testing.assert_allclose(logits, torch_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-12)
    for name in model.params:
        np.testing.assert_allclose(grads[name], torch_params[name].grad.numpy(),
                                   rtol=1e-8, atol=1e-12, err_msg=name)

    # several optimiser steps: the loss trajectories agree (llm.c's test_gpt2 check)
    decay = [p for n, p in torch_params.items() if p.ndim >= 2]
    no_decay = [p for n, p in torch_params.items() if p.ndim < 2]
    torch_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ours = AdamW(weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for step in range(4):
        torch_opt.zero_grad()
        _, torch_loss = torch_gpt_loss(torch, torch_params, config, torch.tensor(idx), torch.tensor(targets))
        torch_loss.backward()
        torch_opt.step()
        loss, grads = model.loss_and_grads(idx, targets)
        ours.step(model.params, grads, lr=1e-2)
        assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-10), step
    for name in model.params:
        np.testing.assert_allclose(model.params[name], torch_params[name].detach().numpy(),
                                   rtol=1e-8, atol=1e-10, err_msg=name)
