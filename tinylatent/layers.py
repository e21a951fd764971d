"""A transformer's layers, forward and backward side by side.

Every layer is a pair of pure functions over plain arrays::

    out, cache = xxx_forward(inputs...)        # cache: what the backward needs
    dinputs... = xxx_backward(dout, cache)     # same order as the forward's inputs

The backward's results are named like the forward's inputs with a ``d`` prefix
(``layernorm_forward(x, weight, bias)`` -> ``dx, dweight, dbias``). Layers made of
other layers (MLP, self-attention, the residual block) take their parameters as a dict
whose keys are GPT-2 checkpoint names relative to the layer (``"c_fc.weight"``), and
return the gradient as a dict with exactly those keys: one schema for parameters and
gradients, so the optimiser, checkpoints and tests are loops over names.

Size letters, used in every shape contract below:

    B   batch size: sequences processed together
    T   time: tokens per sequence, T <= context_length
    C   channels: the model width d_model
    NH  number of attention heads
    HS  head size, C = NH * HS
    V   vocabulary size
    ... any leading dimensions (a layer that works row by row does not care)

Orientation of weights: a linear layer computes ``x @ weight`` with ``weight`` of shape
(C_in, C_out), the layout of GPT-2's original checkpoint (its ``Conv1D``), which gives
BLAS one plain (B*T, C_in) @ (C_in, C_out) product. The token embedding ``wte`` is
(V, C); the output head multiplies by its transpose.

One code path for NumPy and CuPy: each function asks ``xp = xp_of(x)`` for the array
module and uses only ``xp.*``. Every op keeps the input's dtype (float32 or float64):
constants are Python floats (a NumPy float64 scalar would promote a float32 array) and
every allocation passes ``dtype=``.
"""
from __future__ import annotations

import math

from tinylatent.backend import scatter_add, xp_of

LAYERNORM_EPS = 1e-5  # PyTorch's and GPT-2's default
GELU_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # the tanh approximation's inner scale
GELU_CUBIC = 0.044715  # the tanh approximation's cubic coefficient (Hendrycks & Gimpel)


# --------------------------------------------------------------------------------------
# helpers for composite layers: parameter dicts with relative names
# --------------------------------------------------------------------------------------

def sub_params(params: dict, prefix: str) -> dict:
    """The entries of ``params`` whose names start with ``prefix``, with it stripped.

    ``sub_params({"h.0.ln_1.weight": w, ...}, "h.0.")`` -> ``{"ln_1.weight": w, ...}``.
    """
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


def add_prefix(grads: dict, prefix: str) -> dict:
    """The inverse of :func:`sub_params`: ``{"ln_1.weight": g}`` -> ``{prefix + "ln_1.weight": g}``."""
    return {prefix + name: value for name, value in grads.items()}


# --------------------------------------------------------------------------------------
# token + position embedding
# --------------------------------------------------------------------------------------

def embedding_forward(idx, wte, wpe):
    """x[b, t] = wte[idx[b, t]] + wpe[t].

    idx (B, T) integers in [0, V); wte (V, C); wpe (context_length, C) -> x (B, T, C).
    The caller checks the ids (``backend.check_token_ids``): CuPy wraps a bad index.
    """
    T = idx.shape[1]
    x = wte[idx] + wpe[:T]  # (B, T, C) + (T, C) broadcast over the batch
    cache = (idx, wte.shape, wpe.shape, wte.dtype)
    return x, cache


def embedding_backward(dx, cache):
    """dx (B, T, C) -> dwte (V, C), dwpe (context_length, C).

    Forward was ``x[b, t] = wte[idx[b, t]] + wpe[t]``, so
      dwte[v] = sum of dx[b, t] over every (b, t) with idx[b, t] == v
                (a repeated token id accumulates: scatter_add, never ``dwte[idx] += dx``),
      dwpe[t] = sum over b of dx[b, t]   (and 0 for positions t >= T).
    """
    idx, wte_shape, wpe_shape, dtype = cache
    xp = xp_of(dx)
    B, T, C = dx.shape
    dwte = xp.zeros(wte_shape, dtype=dtype)
    scatter_add(dwte, idx.reshape(B * T), dx.reshape(B * T, C))
    dwpe = xp.zeros(wpe_shape, dtype=dtype)
    dwpe[:T] = dx.sum(axis=0)
    return dwte, dwpe


# --------------------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------------------

def layernorm_forward(x, weight, bias=None, eps: float = LAYERNORM_EPS):
    """Normalise each row of x to mean 0 and variance 1, then scale and shift.

    x (..., C); weight (C,); bias (C,) or None -> out (..., C).

        mean = (1/C) sum_i x_i,    var = (1/C) sum_i (x_i - mean)^2   (biased, as PyTorch)
        rstd = 1 / sqrt(var + eps)
        xhat_i = (x_i - mean) * rstd
        out_i  = xhat_i * weight_i + bias_i
    """
    xp = xp_of(x)
    mean = x.mean(axis=-1, keepdims=True)         # (..., 1)
    x_centered = x - mean                         # (..., C)
    var = (x_centered * x_centered).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)              # (..., 1) reciprocal standard deviation
    xhat = x_centered * rstd                      # (..., C)
    out = xhat * weight
    if bias is not None:
        out += bias
    cache = (xhat, rstd, weight, bias is not None)
    return out, cache


def layernorm_backward(dout, cache):
    """dout (..., C) -> dx (..., C), dweight (C,), dbias (C,) or None.

    Forward was ``out_i = xhat_i * weight_i + bias_i`` with ``xhat_i = (x_i - mean) * rstd``:
      dbias_i   = sum over rows of dout_i
      dweight_i = sum over rows of dout_i * xhat_i
      dxhat_i   = dout_i * weight_i
    and through the normalisation (derived in docs/backprop.md), three terms:
      dx_i = rstd * ( dxhat_i  -  mean_j(dxhat_j)  -  xhat_i * mean_j(dxhat_j * xhat_j) )
             (direct path) (through the mean) (through the variance)
    """
    xhat, rstd, weight, has_bias = cache
    C = dout.shape[-1]
    dout_rows = dout.reshape(-1, C)
    dweight = (dout_rows * xhat.reshape(-1, C)).sum(axis=0)
    dbias = dout_rows.sum(axis=0) if has_bias else None
    dxhat = dout * weight
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True)
    dx -= xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx, dweight, dbias


# --------------------------------------------------------------------------------------
# linear (affine) layer
# --------------------------------------------------------------------------------------

def linear_forward(x, weight, bias=None):
    """out = x @ weight + bias.

    x (..., C_in); weight (C_in, C_out); bias (C_out,) or None -> out (..., C_out).
    The leading dimensions are flattened so BLAS sees one (rows, C_in) @ (C_in, C_out).
    """
    C_in, C_out = weight.shape
    x_rows = x.reshape(-1, C_in)
    out = x_rows @ weight
    if bias is not None:
        out += bias
    cache = (x_rows, weight, bias is not None, x.shape)
    return out.reshape(x.shape[:-1] + (C_out,)), cache


def linear_backward(dout, cache):
    """dout (..., C_out) -> dx (..., C_in), dweight (C_in, C_out), dbias (C_out,) or None.

    Forward was ``out = x @ weight + bias``:
      dx      = dout @ weight^T
      dweight = x^T @ dout        (summed over all rows)
      dbias   = sum over rows of dout
    """
    x_rows, weight, has_bias, x_shape = cache
    dout_rows = dout.reshape(-1, weight.shape[1])
    dx = (dout_rows @ weight.T).reshape(x_shape)
    dweight = x_rows.T @ dout_rows
    dbias = dout_rows.sum(axis=0) if has_bias else None
    return dx, dweight, dbias


# --------------------------------------------------------------------------------------
# output head: logits from the (tied) token embedding
# --------------------------------------------------------------------------------------

def lm_head_forward(x, weight):
    """logits = x @ weight^T, the score of every vocabulary entry.

    x (B, T, C); weight (V, C) (``wte`` when tied, else ``lm_head.weight``) -> logits (B, T, V).
    """
    V, C = weight.shape
    x_rows = x.reshape(-1, C)
    logits = x_rows @ weight.T
    cache = (x_rows, weight, x.shape)
    return logits.reshape(x.shape[:-1] + (V,)), cache


def lm_head_backward(dlogits, cache):
    """dlogits (B, T, V) -> dx (B, T, C), dweight (V, C).

    Forward was ``logits = x @ weight^T``:
      dx      = dlogits @ weight
      dweight = dlogits^T @ x
    """
    x_rows, weight, x_shape = cache
    dlogits_rows = dlogits.reshape(-1, weight.shape[0])
    dx = (dlogits_rows @ weight).reshape(x_shape)
    dweight = dlogits_rows.T @ x_rows
    return dx, dweight


# --------------------------------------------------------------------------------------
# GELU, tanh approximation (GPT-2's)
# --------------------------------------------------------------------------------------

def gelu_forward(x):
    """GELU(x) ~= 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    x (...) -> out (...), elementwise. This is GPT-2's tanh approximation of
    x * Phi(x) (Phi the standard normal CDF); PyTorch's ``gelu(approximate="tanh")``.
    """
    xp = xp_of(x)
    # in place on two buffers: this runs on the (B, T, 4C) hidden layer, the model's widest
    inner = x * x
    inner *= x
    inner *= GELU_CUBIC
    inner += x
    inner *= GELU_SQRT_2_OVER_PI             # u = sqrt(2/pi) (x + 0.044715 x^3)
    tanh_inner = xp.tanh(inner, out=inner)   # tanh(u)
    out = tanh_inner + 1.0
    out *= x
    out *= 0.5                               # 0.5 x (1 + tanh(u))
    cache = (x, tanh_inner)
    return out, cache


def gelu_backward(dout, cache):
    """dout (...) -> dx (...).

    Forward was ``out = 0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``;
    by the product rule and tanh' = 1 - tanh^2:
      d out/dx = 0.5 (1 + tanh(u))  +  0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    x, tanh_inner = cache
    du_dx = x * x
    du_dx *= 3.0 * GELU_CUBIC
    du_dx += 1.0
    du_dx *= GELU_SQRT_2_OVER_PI                       # sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    local_grad = tanh_inner * tanh_inner
    xp_of(x).subtract(1.0, local_grad, out=local_grad)  # 1 - tanh^2
    local_grad *= x
    local_grad *= du_dx                                # x (1 - tanh^2) du/dx
    local_grad += tanh_inner
    local_grad += 1.0
    local_grad *= 0.5                                  # 0.5 (1 + tanh) + 0.5 x (1 - tanh^2) du/dx
    local_grad *= dout                                 # chain rule: dx = dout * d out/dx
    return local_grad


# --------------------------------------------------------------------------------------
# softmax and log-softmax over the last axis
# --------------------------------------------------------------------------------------

def softmax_forward(x):
    """probs_i = exp(x_i) / sum_j exp(x_j) over the last axis.

    x (..., K) -> probs (..., K). Entries equal to -inf get probability exactly 0
    (exp(-inf) = 0); each row needs at least one finite entry. The row maximum is
    subtracted first so exp never overflows.
    """
    xp = xp_of(x)
    probs = x - x.max(axis=-1, keepdims=True)   # shifted: every entry <= 0
    xp.exp(probs, out=probs)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs, probs


def softmax_backward(dprobs, cache):
    """dprobs (..., K) -> dx (..., K).

    Forward was ``probs_i = exp(x_i) / sum_j exp(x_j)``; its Jacobian is
      d probs_j / d x_i = probs_j (indicator(i == j) - probs_i),
    so  dx_i = sum_j dprobs_j probs_j (indicator(i == j) - probs_i)
             = probs_i * (dprobs_i - sum_j probs_j dprobs_j).
    Where probs_i = 0 exactly (a -inf input), dx_i = 0 exactly.
    """
    probs = cache
    dx = dprobs - (probs * dprobs).sum(axis=-1, keepdims=True)
    dx *= probs
    return dx


def log_softmax_forward(x):
    """logp_i = x_i - log sum_j exp(x_j) over the last axis.

    x (..., K) -> logp (..., K); computed as (x - max) - log sum exp(x - max), which is
    exact for large logits where log(softmax(x)) would underflow to -inf.
    """
    xp = xp_of(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
    cache = xp.exp(logp)  # the softmax probabilities
    return logp, cache


def log_softmax_backward(dlogp, cache):
    """dlogp (..., K) -> dx (..., K).

    Forward was ``logp_i = x_i - log sum_j exp(x_j)``; d logp_j / d x_i = indicator(i == j) - probs_i,
    so  dx_i = dlogp_i - probs_i * sum_j dlogp_j.
    """
    probs = cache
    return dlogp - probs * dlogp.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------
# softmax cross-entropy, forward and fused backward
# --------------------------------------------------------------------------------------

def cross_entropy_forward(logits, targets):
    """loss = -(1/N) sum_n log p(targets_n), p = softmax(logits_n), N = number of positions.

    logits (..., V); targets (...) integers in [0, V) -> loss, a 0-d array of the logits'
    dtype, on the logits' device (``float(backend.to_host(loss))`` for a Python number).
    """
    xp = xp_of(logits)
    V = logits.shape[-1]
    logits_rows = logits.reshape(-1, V)
    target_rows = targets.reshape(-1)
    N = logits_rows.shape[0]
    logp, probs = log_softmax_forward(logits_rows)                   # (N, V)
    target_logp = logp[xp.arange(N), target_rows]                   # (N,)
    loss = -target_logp.mean()
    cache = (probs, target_rows, logits.shape)
    return loss, cache


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (..., V): the fused softmax + negative-log-likelihood gradient.

    Forward was ``loss = -(1/N) sum_n [logits_n[y_n] - log sum_v exp(logits_n[v])]``;
    differentiating both terms,
      dlogits_n[v] = dloss * (probs_n[v] - indicator(v == y_n)) / N,
    so each position's gradient sums to zero over the vocabulary.
    """
    probs, target_rows, logits_shape = cache
    xp = xp_of(probs)
    N = probs.shape[0]
    dlogits = probs.copy()
    dlogits[xp.arange(N), target_rows] -= 1.0  # one write per row: no repeated index
    dlogits *= dloss / N
    return dlogits.reshape(logits_shape)


# --------------------------------------------------------------------------------------
# causal multi-head self-attention
# --------------------------------------------------------------------------------------

def _causal_mask(T: int, xp, dtype):
    """(T, T) additive mask: 0 where key position s <= query position t, -inf after it."""
    future = xp.triu(xp.ones((T, T), dtype=bool), k=1)  # True where s > t
    mask = xp.zeros((T, T), dtype=dtype)
    mask[future] = -math.inf
    return mask


def attention_forward(qkv, n_head: int):
    """Causal multi-head scaled dot-product attention, all heads at once.

    qkv (B, T, 3C): queries, keys and values side by side (nanoGPT's ``c_attn`` output)
    -> out (B, T, C), cache. With q, k, v split into NH heads of size HS:

        scores[b, h, t, s] = q[b, h, t] . k[b, h, s] / sqrt(HS)     for s <= t
                           = -inf                                   for s > t (the future)
        att[b, h, t, :]    = softmax(scores[b, h, t, :])            (att = 0 exactly for s > t)
        y[b, h, t]         = sum_s att[b, h, t, s] v[b, h, s]
        out[b, t]          = the NH heads' y[b, :, t] concatenated
    """
    xp = xp_of(qkv)
    B, T, C3 = qkv.shape
    if C3 % 3 != 0 or (C3 // 3) % n_head != 0:
        raise ValueError(f"qkv's last axis must be 3*C with C divisible by n_head={n_head}; got {C3}")
    C = C3 // 3
    HS = C // n_head
    # (B, T, 3C) -> (B, T, 3, NH, HS) -> (3, B, NH, T, HS): q, k, v with heads as a batch axis
    q, k, v = qkv.reshape(B, T, 3, n_head, HS).transpose(2, 0, 3, 1, 4)
    q = xp.ascontiguousarray(q)
    v = xp.ascontiguousarray(v)
    k_transposed = xp.ascontiguousarray(k.transpose(0, 1, 3, 2))  # (B, NH, HS, T), contiguous for BLAS
    scale = 1.0 / math.sqrt(HS)
    scores = q @ k_transposed                   # (B, NH, T, T)
    scores *= scale
    scores += _causal_mask(T, xp, qkv.dtype)     # exact -inf above the diagonal
    att, _ = softmax_forward(scores)            # (B, NH, T, T), rows sum to 1, future = 0
    y = att @ v                                 # (B, NH, T, HS)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # re-assemble heads side by side
    cache = (q, k_transposed, v, att, scale)
    return out, cache


def attention_backward(dout, cache):
    """dout (B, T, C) -> dqkv (B, T, 3C).

    Forward, per batch and head, was
      scores = q @ k^T * scale (masked),   att = softmax(scores),   y = att @ v.
    So, each product's rule  d(A @ B) -> dA = dC @ B^T, dB = A^T @ dC:
      datt    = dy @ v^T                  dv = att^T @ dy
      dscores = att * (datt - sum_s att * datt)          (softmax's Jacobian, row by row;
                                                          0 exactly where att = 0: the future)
      dq = dscores @ k * scale            dk = dscores^T @ q * scale
    """
    q, k_transposed, v, att, scale = cache
    xp = xp_of(dout)
    B, NH, T, HS = q.shape
    C = NH * HS
    dy = xp.ascontiguousarray(dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3))  # (B, NH, T, HS)
    datt = dy @ v.transpose(0, 1, 3, 2)                            # (B, NH, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dy                            # (B, NH, T, HS)
    dscores = softmax_backward(datt, att)                          # (B, NH, T, T)
    dscores *= scale
    dq = dscores @ k_transposed.transpose(0, 1, 3, 2)              # (B, NH, T, HS)
    dk = dscores.transpose(0, 1, 3, 2) @ q                         # (B, NH, T, HS)
    dqkv = xp.empty((B, T, 3, NH, HS), dtype=dout.dtype)
    dqkv[:, :, 0] = dq.transpose(0, 2, 1, 3)
    dqkv[:, :, 1] = dk.transpose(0, 2, 1, 3)
    dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)
    return dqkv.reshape(B, T, 3 * C)


def causal_self_attention_forward(x, params: dict, n_head: int):
    """nanoGPT's CausalSelfAttention: project to q, k, v; attend; project back.

    x (B, T, C); params ``c_attn.weight`` (C, 3C), ``c_proj.weight`` (C, C), and
    ``c_attn.bias`` (3C,), ``c_proj.bias`` (C,) when the model has biases -> out (B, T, C).

        qkv = x @ c_attn.weight + c_attn.bias
        y   = attention(qkv)
        out = y @ c_proj.weight + c_proj.bias
    """
    qkv, c_attn_cache = linear_forward(x, params["c_attn.weight"], params.get("c_attn.bias"))
    y, attention_cache = attention_forward(qkv, n_head)
    out, c_proj_cache = linear_forward(y, params["c_proj.weight"], params.get("c_proj.bias"))
    return out, (c_attn_cache, attention_cache, c_proj_cache)


def causal_self_attention_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dparams (the forward's keys)."""
    c_attn_cache, attention_cache, c_proj_cache = cache
    dy, dparams = _linear_backward_named(dout, c_proj_cache, "c_proj")
    dqkv = attention_backward(dy, attention_cache)
    dx, dc_attn = _linear_backward_named(dqkv, c_attn_cache, "c_attn")
    dparams.update(dc_attn)
    return dx, dparams


def _linear_backward_named(dout, cache, name: str):
    """linear_backward with the weight (and bias) gradients as ``{name.weight, name.bias}``."""
    dx, dweight, dbias = linear_backward(dout, cache)
    grads = {f"{name}.weight": dweight}
    if dbias is not None:
        grads[f"{name}.bias"] = dbias
    return dx, grads


# --------------------------------------------------------------------------------------
# MLP: linear - GELU - linear
# --------------------------------------------------------------------------------------

def mlp_forward(x, params: dict):
    """The block's feed-forward network, 4x wide in the middle.

    x (B, T, C); params ``c_fc.weight`` (C, 4C), ``c_proj.weight`` (4C, C), and
    ``c_fc.bias`` (4C,), ``c_proj.bias`` (C,) when present -> out (B, T, C).

        out = GELU(x @ c_fc.weight + c_fc.bias) @ c_proj.weight + c_proj.bias
    """
    hidden, c_fc_cache = linear_forward(x, params["c_fc.weight"], params.get("c_fc.bias"))
    activated, gelu_cache = gelu_forward(hidden)
    out, c_proj_cache = linear_forward(activated, params["c_proj.weight"], params.get("c_proj.bias"))
    return out, (c_fc_cache, gelu_cache, c_proj_cache)


def mlp_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dparams (the forward's keys)."""
    c_fc_cache, gelu_cache, c_proj_cache = cache
    dactivated, dparams = _linear_backward_named(dout, c_proj_cache, "c_proj")
    dhidden = gelu_backward(dactivated, gelu_cache)
    dx, dc_fc = _linear_backward_named(dhidden, c_fc_cache, "c_fc")
    dparams.update(dc_fc)
    return dx, dparams


# --------------------------------------------------------------------------------------
# the residual block, pre-LayerNorm as GPT-2 / nanoGPT
# --------------------------------------------------------------------------------------

def block_forward(x, params: dict, n_head: int):
    """One transformer block: two residual branches, each reading a LayerNorm of the stream.

    x (B, T, C); params with the keys ``ln_1.weight``, ``attn.c_attn.weight``,
    ``attn.c_proj.weight``, ``ln_2.weight``, ``mlp.c_fc.weight``, ``mlp.c_proj.weight``
    (and the ``.bias`` of each when the model has biases) -> out (B, T, C).

        h   = x + attn(ln_1(x))
        out = h + mlp(ln_2(h))
    """
    ln_1_out, ln_1_cache = layernorm_forward(x, params["ln_1.weight"], params.get("ln_1.bias"))
    attn_out, attn_cache = causal_self_attention_forward(ln_1_out, sub_params(params, "attn."), n_head)
    h = x + attn_out
    ln_2_out, ln_2_cache = layernorm_forward(h, params["ln_2.weight"], params.get("ln_2.bias"))
    mlp_out, mlp_cache = mlp_forward(ln_2_out, sub_params(params, "mlp."))
    out = h + mlp_out
    return out, (ln_1_cache, attn_cache, ln_2_cache, mlp_cache)


def block_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dparams (the forward's keys).

    A residual connection copies its gradient to both summands:
      out = h + mlp(ln_2(h))   ->  dh = dout + d/dh of the MLP branch
      h   = x + attn(ln_1(x))  ->  dx = dh   + d/dx of the attention branch
    """
    ln_1_cache, attn_cache, ln_2_cache, mlp_cache = cache
    dparams = {}
    # out = h + mlp(ln_2(h))
    dln_2_out, dmlp = mlp_backward(dout, mlp_cache)
    dh_through_mlp, dln_2_weight, dln_2_bias = layernorm_backward(dln_2_out, ln_2_cache)
    dh = dout + dh_through_mlp
    # h = x + attn(ln_1(x))
    dln_1_out, dattn = causal_self_attention_backward(dh, attn_cache)
    dx_through_attn, dln_1_weight, dln_1_bias = layernorm_backward(dln_1_out, ln_1_cache)
    dx = dh + dx_through_attn

    dparams["ln_1.weight"] = dln_1_weight
    if dln_1_bias is not None:
        dparams["ln_1.bias"] = dln_1_bias
    dparams.update(add_prefix(dattn, "attn."))
    dparams["ln_2.weight"] = dln_2_weight
    if dln_2_bias is not None:
        dparams["ln_2.bias"] = dln_2_bias
    dparams.update(add_prefix(dmlp, "mlp."))
    return dx, dparams
