"""Generation with a key-value cache against recomputing the whole window (the reference)."""
from __future__ import annotations

import numpy as np
import pytest

from tinylatent.gpt import GPT, GPTConfig, KVCache


def model(dtype="float64", **overrides) -> GPT:
    fields = dict(vocab_size=11, context_length=12, n_layer=2, n_head=2, d_model=8,
                  bias=True, tie_embeddings=False, dtype=dtype)
    fields.update(overrides)
    gpt = GPT.create(GPTConfig(**fields), np.random.default_rng(0))
    for value in gpt.params.values():  # larger weights: peaked, position-dependent attention
        value *= 10.0 if value.ndim == 2 else 1.0
    return gpt


@pytest.mark.parametrize("prompt_length, n_new", [(1, 11), (5, 4), (9, 20), (15, 3)],
                         ids=["from-one-token", "short", "past-the-context", "prompt-longer-than-context"])
@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.7, top_k=4)], ids=["plain", "top-k"])
def test_cache_and_recompute_sample_the_same_tokens(prompt_length, n_new, sampling):
    gpt = model()
    prompt = np.random.default_rng(1).integers(0, 11, size=(3, prompt_length))
    cached = gpt.generate(prompt, n_new, np.random.default_rng(2), use_cache=True, **sampling)
    recomputed = gpt.generate(prompt, n_new, np.random.default_rng(2), use_cache=False, **sampling)
    np.testing.assert_array_equal(cached, recomputed)
    np.testing.assert_array_equal(cached[:, :prompt_length], prompt)


def test_float32_cache_samples_the_same_tokens_as_recomputing():
    gpt = model("float32", bias=False, tie_embeddings=True)
    prompt = np.array([3, 1, 4, 1, 5])  # one sequence, 1-D
    cached = gpt.generate(prompt, 10, np.random.default_rng(3))
    recomputed = gpt.generate(prompt, 10, np.random.default_rng(3), use_cache=False)
    assert cached.shape == (15,)
    np.testing.assert_array_equal(cached, recomputed)


@pytest.mark.parametrize("dtype, tol", [("float64", dict(rtol=1e-12, atol=1e-12)),
                                        ("float32", dict(rtol=1e-4, atol=1e-5))])
def test_cached_logits_equal_the_full_forward_chunk_by_chunk(dtype, tol):
    gpt = model(dtype)
    idx = np.random.default_rng(4).integers(0, 11, size=(2, 12))
    full = gpt.logits(idx)
    kv_cache = gpt.new_kv_cache(batch_size=2)
    assert isinstance(kv_cache, KVCache) and kv_cache.length == 0
    assert kv_cache.keys[0].shape == (2, 2, 12, 4) and len(kv_cache.values) == 2
    start = 0
    for length in (4, 1, 1, 5, 1):  # a prefill, then single tokens and a chunk, to the full context
        logits = gpt.logits_cached(idx[:, start:start + length], kv_cache)
        assert logits.dtype == np.dtype(dtype)
        np.testing.assert_allclose(logits, full[:, start:start + length], **tol)
        start += length
        assert kv_cache.length == start


def test_cached_logits_refuse_to_run_past_the_context():
    gpt = model()
    kv_cache = gpt.new_kv_cache(batch_size=1)
    gpt.logits_cached(np.zeros((1, 10), dtype=int), kv_cache)
    with pytest.raises(ValueError, match="context_length"):
        gpt.logits_cached(np.zeros((1, 3), dtype=int), kv_cache)
    with pytest.raises(ValueError, match="must lie in"):
        gpt.logits_cached(np.array([[11]]), gpt.new_kv_cache(batch_size=1))


def test_cached_logits_refuse_a_batch_the_cache_was_not_made_for():
    gpt = model()
    kv_cache = gpt.new_kv_cache(batch_size=3)
    with pytest.raises(ValueError, match=r"holds 1 sequences but the cache was made for 3; use new_kv_cache\(1\)"):
        gpt.logits_cached(np.zeros((1, 2), dtype=int), kv_cache)
    assert kv_cache.length == 0
