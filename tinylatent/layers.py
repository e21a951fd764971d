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

Speed (docs/performance.md). LayerNorm, GELU and attention, the layers that touch the
widest arrays, are written for speed: they loop over cache-sized blocks of rows
(:func:`row_blocks`), work in place, and write into their final layouts. Each keeps its
clear whole-array form beside it (``layernorm_forward_reference``, ``gelu_reference``,
``attention_forward_reference``, ...), and the tests check that both give the same
numbers. Two backward passes take ``out=``, so that a caller that owns the incoming
gradient can have it overwritten instead of allocating another array.
"""
from __future__ import annotations

import math

from tinylatent.backend import scatter_add, xp_of

LAYERNORM_EPS = 1e-5  # PyTorch's and GPT-2's default
GELU_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # the tanh approximation's inner scale
GELU_CUBIC = 0.044715  # the tanh approximation's cubic coefficient (Hendrycks & Gimpel)
BLOCK_ELEMENTS = 1 << 16  # 64K numbers (256 KB in float32): a few such blocks fit in a core's L2 cache


# --------------------------------------------------------------------------------------
# speed: elementwise work in cache-sized blocks of rows
# --------------------------------------------------------------------------------------

def row_blocks(n_rows: int, row_size: int, xp) -> list:
    """Slices that cut ``range(n_rows)`` into runs of about ``BLOCK_ELEMENTS / row_size`` rows.

    Why: a chain of k elementwise operations (GELU is ten of them) over an array larger
    than the CPU's cache streams the whole array through main memory k times; done block
    by block, each block is read from memory once and stays in the L2 cache for the rest
    of the chain (about 2x faster on the model's widest tensors). The layers below loop
    over these blocks and compute the same numbers as their one-expression references
    (``*_reference``). On a GPU (CuPy) there is nothing to gain and every block would
    cost kernel launches, so there everything is one block.
    """
    if xp.__name__ != "numpy":
        return [slice(0, n_rows)]
    step = max(1, BLOCK_ELEMENTS // max(1, row_size))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _rows(x):
    """x (..., K) as a (rows, K) view: the layers that work row by row see one 2-D array."""
    return x.reshape(-1, x.shape[-1])


def _gradient_rows(dout, out, shape, xp):
    """(dout's rows, dx's rows) for a backward that may write dx over dout (``out=dout``).

    When ``out`` is ``dout`` the two are one view object, and each block is then written
    through the very view it is read from: CuPy copies an input that overlaps a
    *different* output view before it computes, which would undo the saving.
    """
    dout_rows = _rows(dout)
    if out is None:
        return dout_rows, xp.empty(shape, dtype=dout.dtype)
    return dout_rows, (dout_rows if out is dout else _rows(out))


def block_buffer(blocks: list, row_shape: tuple, dtype, xp):
    """Scratch space for the largest of ``blocks`` (the first), reused block after block."""
    rows = blocks[0].stop - blocks[0].start if blocks else 0
    return xp.empty((rows,) + tuple(row_shape), dtype=dtype)


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
    x = wte[idx]            # (B, T, C), a new array: the position embedding is added in place
    x += wpe[:T]            # (T, C) broadcast over the batch
    cache = (idx, wte.shape, wpe.shape, wte.dtype)
    return x, cache


def embedding_backward(dx, cache):
    """dx (B, T, C) -> dwte (V, C), dwpe (context_length, C).

    Forward was ``x[b, t] = wte[idx[b, t]] + wpe[t]``, so
      dwte[v] = sum of dx[b, t] over every (b, t) with idx[b, t] == v
                (a repeated token id accumulates: scatter_add, never ``dwte[idx] += dx``),
      dwpe[t] = sum over b of dx[b, t]   (and 0 for positions t >= T).

    For a small vocabulary (V <= C, as the paper's 19 tokens) the sum is one matmul:
    the lookup is the product ``x = onehot(idx) @ wte`` with onehot(idx) of shape
    (B*T, V), so ``dwte = onehot(idx)^T @ dx``, ten times faster than the scatter and no
    bigger than dx. A large vocabulary keeps the scatter (the one-hot matrix would be huge).
    """
    idx, wte_shape, wpe_shape, dtype = cache
    xp = xp_of(dx)
    B, T, C = dx.shape
    V = wte_shape[0]
    idx_flat, dx_rows = idx.reshape(B * T), dx.reshape(B * T, C)
    if V <= C:
        one_hot_transposed = (xp.arange(V)[:, None] == idx_flat).astype(dtype)  # (V, B*T)
        dwte = one_hot_transposed @ dx_rows
    else:
        dwte = xp.zeros(wte_shape, dtype=dtype)
        scatter_add(dwte, idx_flat, dx_rows)
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

    Computed in blocks of rows (:func:`row_blocks`), in place on two buffers, with the
    mean as one matrix-vector product ``x @ (1/C, ..., 1/C)`` (BLAS; faster than ``.mean``
    on the CPU, and one cuBLAS call on a GPU) and the variance as a row-wise dot product
    (``einsum``, no squared temporary); the same numbers as
    :func:`layernorm_forward_reference` to rounding.
    """
    xp = xp_of(x)
    C = x.shape[-1]
    x_rows = _rows(x)
    N = x_rows.shape[0]
    xhat = xp.empty((N, C), dtype=x.dtype)
    rstd = xp.empty((N, 1), dtype=x.dtype)        # reciprocal standard deviation per row
    out = xp.empty((N, C), dtype=x.dtype)
    averages = xp.full(C, 1.0 / C, dtype=x.dtype)  # (C,): x_rows @ averages is each row's mean
    for rows in row_blocks(N, C, xp):
        x_block, xhat_block, rstd_block = x_rows[rows], xhat[rows], rstd[rows]
        mean = (x_block @ averages)[:, None]                                         # row means
        xp.subtract(x_block, mean, out=xhat_block)                                   # x - mean
        variance = xp.einsum("ij,ij->i", xhat_block, xhat_block)[:, None]            # sum of squares ...
        variance *= 1.0 / C                                                          # ... over C
        variance += eps
        xp.sqrt(variance, out=rstd_block)
        xp.divide(1.0, rstd_block, out=rstd_block)
        xhat_block *= rstd_block                                                     # xhat
        xp.multiply(xhat_block, weight, out=out[rows])
        if bias is not None:
            out[rows] += bias
    cache = (xhat, rstd, weight, bias is not None)
    return out.reshape(x.shape), cache


def layernorm_backward(dout, cache, out=None):
    """dout (..., C) -> dx (..., C), dweight (C,), dbias (C,) or None.

    Forward was ``out_i = xhat_i * weight_i + bias_i`` with ``xhat_i = (x_i - mean) * rstd``:
      dbias_i   = sum over rows of dout_i
      dweight_i = sum over rows of dout_i * xhat_i
      dxhat_i   = dout_i * weight_i
    and through the normalisation (derived in docs/backprop.md), three terms:
      dx_i = rstd * ( dxhat_i  -  mean_j(dxhat_j)  -  xhat_i * mean_j(dxhat_j * xhat_j) )
             (direct path) (through the mean) (through the variance)
    Blocks of rows as in the forward; :func:`layernorm_backward_reference` is the
    same formula in whole-array expressions. ``out`` (optional, C-contiguous, may be
    ``dout`` itself when the caller no longer needs it) receives dx instead of a new array.
    """
    xhat, rstd, weight, has_bias = cache
    xp = xp_of(dout)
    N, C = xhat.shape
    dout_rows, dx = _gradient_rows(dout, out, (N, C), xp)
    dweight = xp.zeros(C, dtype=dout.dtype)
    dbias = xp.zeros(C, dtype=dout.dtype) if has_bias else None
    averages = xp.full(C, 1.0 / C, dtype=dout.dtype)                     # (C,): rows @ averages = row means
    blocks = row_blocks(N, C, xp)
    products = block_buffer(blocks, (C,), dout.dtype, xp)                # scratch block: dout * xhat, then the variance term
    ones = xp.ones(len(products), dtype=dout.dtype)                      # ones @ rows = column sums
    for rows in blocks:
        dout_block, xhat_block = dout_rows[rows], xhat[rows]
        dx_block = dout_block if dx is dout_rows else dx[rows]
        n = len(dout_block)
        dweight += ones[:n] @ xp.multiply(dout_block, xhat_block, out=products[:n])  # sums of dout * xhat
        if has_bias:
            dbias += ones[:n] @ dout_block
        dxhat = xp.multiply(dout_block, weight, out=dx_block)            # dout is not read after this
        mean_dxhat = (dxhat @ averages)[:, None]
        mean_dxhat_xhat = xp.einsum("ij,ij->i", dxhat, xhat_block)[:, None]
        mean_dxhat_xhat *= 1.0 / C
        dxhat -= mean_dxhat                                               # direct - through the mean
        dxhat -= xp.multiply(xhat_block, mean_dxhat_xhat, out=products[:n])  # - through the variance
        dxhat *= rstd[rows]                                               # = dx
    return dx.reshape(dout.shape), dweight, dbias


def layernorm_forward_reference(x, weight, bias=None, eps: float = LAYERNORM_EPS):
    """:func:`layernorm_forward` written as its formulas, whole arrays at a time (the check)."""
    xp = xp_of(x)
    mean = x.mean(axis=-1, keepdims=True)                        # (..., 1)
    x_centered = x - mean                                        # (..., C)
    var = (x_centered * x_centered).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)                              # (..., 1)
    xhat = x_centered * rstd                                     # (..., C)
    out = xhat * weight
    if bias is not None:
        out = out + bias
    cache = (_rows(xhat), _rows(rstd), weight, bias is not None)
    return out, cache


def layernorm_backward_reference(dout, cache):
    """:func:`layernorm_backward` written as its formula, whole arrays at a time (the check)."""
    xhat, rstd, weight, has_bias = cache
    dout_rows = _rows(dout)
    dweight = (dout_rows * xhat).sum(axis=0)
    dbias = dout_rows.sum(axis=0) if has_bias else None
    dxhat = dout_rows * weight
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx.reshape(dout.shape), dweight, dbias


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

    It runs on the (B, T, 4C) hidden layer, the model's widest tensor, so it is written
    for speed: in blocks of rows (:func:`row_blocks`), each a chain of in-place
    operations. The cache is the input alone: the backward recomputes tanh(u) block by
    block (as PyTorch does), which costs less than writing a (B, T, 4C) array here and
    reading it back there. :func:`gelu_reference` is the formula.
    """
    xp = xp_of(x)
    x_rows = _rows(x)
    out = xp.empty(x_rows.shape, dtype=x.dtype)
    blocks = row_blocks(x_rows.shape[0], x_rows.shape[1], xp)
    tanh_buffer = block_buffer(blocks, x_rows.shape[1:], x.dtype, xp)
    for rows in blocks:
        x_block, o = x_rows[rows], out[rows]
        tanh_inner = _gelu_tanh_inner(x_block, out=tanh_buffer[: len(x_block)])
        xp.add(tanh_inner, 1.0, out=o)
        o *= x_block
        o *= 0.5                                # 0.5 x (1 + tanh(u))
    return out.reshape(x.shape), x_rows


def gelu_backward(dout, cache, out=None):
    """dout (...) -> dx (...).

    Forward was ``out = 0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``;
    by the product rule and tanh' = 1 - tanh^2 = (1 - tanh)(1 + tanh):
      d out/dx = 0.5 (1 + tanh(u))  +  0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
               = 0.5 (1 + tanh(u)) [1 + x (1 - tanh(u)) du/dx],   du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    The factored second line is what is computed, block by block, in place;
    :func:`gelu_backward_reference` is the first line. ``out`` (optional, C-contiguous,
    may be ``dout`` itself when the caller no longer needs it) receives dx instead of a new array.
    """
    x_rows = cache
    xp = xp_of(dout)
    dout_rows, dx = _gradient_rows(dout, out, x_rows.shape, xp)
    blocks = row_blocks(x_rows.shape[0], x_rows.shape[1], xp)
    tanh_buffer = block_buffer(blocks, x_rows.shape[1:], dout.dtype, xp)
    grad_buffer = block_buffer(blocks, x_rows.shape[1:], dout.dtype, xp)
    for rows in blocks:
        x_block = x_rows[rows]
        t = _gelu_tanh_inner(x_block, out=tanh_buffer[: len(x_block)])
        g = xp.multiply(x_block, x_block, out=grad_buffer[: len(x_block)])
        g *= 1.5 * GELU_CUBIC * GELU_SQRT_2_OVER_PI
        g += 0.5 * GELU_SQRT_2_OVER_PI          # du/dx / 2
        g *= x_block
        g *= xp.subtract(1.0, t)
        g += 0.5                                # [1 + x (1 - tanh) du/dx] / 2
        g *= xp.add(t, 1.0, out=t)              # ... times (1 + tanh): d out/dx
        dout_block = dout_rows[rows]
        xp.multiply(dout_block, g, out=dout_block if dx is dout_rows else dx[rows])  # chain rule: dx = dout * d out/dx
    return dx.reshape(dout.shape)


def _gelu_tanh_inner(x, out):
    """tanh(u) with u = sqrt(2/pi) (x + 0.044715 x^3) = x (sqrt(2/pi) + sqrt(2/pi) 0.044715 x^2), into out."""
    xp = xp_of(x)
    xp.multiply(x, x, out=out)
    out *= GELU_SQRT_2_OVER_PI * GELU_CUBIC
    out += GELU_SQRT_2_OVER_PI
    out *= x
    return xp.tanh(out, out=out)


def gelu_reference(x):
    """:func:`gelu_forward`'s value written as the formula (the check)."""
    xp = xp_of(x)
    return 0.5 * x * (1.0 + xp.tanh(GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x ** 3)))


def gelu_backward_reference(dout, x):
    """:func:`gelu_backward` written as the unfactored derivative (the check); x is the forward's input."""
    xp = xp_of(x)
    tanh_inner = xp.tanh(GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x ** 3))
    du_dx = GELU_SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x ** 2)
    return dout * (0.5 * (1.0 + tanh_inner) + 0.5 * x * (1.0 - tanh_inner ** 2) * du_dx)


# --------------------------------------------------------------------------------------
# softmax and log-softmax over the last axis
# --------------------------------------------------------------------------------------

def softmax_forward(x, out=None):
    """probs_i = exp(x_i) / sum_j exp(x_j) over the last axis.

    x (..., K) -> probs (..., K). Entries equal to -inf get probability exactly 0
    (exp(-inf) = 0); each row needs at least one finite entry. The row maximum is
    subtracted first so exp never overflows. ``out`` (optional, may be ``x`` itself)
    receives the probabilities instead of a new array.
    """
    xp = xp_of(x)
    K = x.shape[-1]
    probs = xp.subtract(x, x.max(axis=-1, keepdims=True), out=out)  # shifted: every entry <= 0
    xp.exp(probs, out=probs)
    # row sums as one matrix-vector product (BLAS: faster than .sum on short rows)
    row_sums = (probs.reshape(-1, K) @ xp.ones(K, dtype=probs.dtype)).reshape(probs.shape[:-1] + (1,))
    probs *= 1.0 / row_sums                           # one division per row, then multiplications
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

def _causal_mask(n_queries: int, n_keys: int, xp, dtype):
    """(n_queries, n_keys) additive mask for the last ``n_queries`` of ``n_keys`` positions:
    0 where key position s <= the query's position t, -inf after it.

    Query row i is position t = n_keys - n_queries + i, so the -inf are the entries above
    diagonal n_keys - n_queries + 1, which ``triu`` keeps while zeroing the rest (for the
    whole sequence, n_queries = n_keys = T: above the main diagonal). Not ``mask[future] =
    -inf``: on CuPy a boolean-mask assignment reads the count of True entries back to the
    host, which makes every layer's forward wait for the GPU's whole queue.
    """
    full = xp.full((n_queries, n_keys), -math.inf, dtype=dtype)
    return xp.triu(full, k=n_keys - n_queries + 1)                    # -inf where s > t


def _split_heads(qkv, n_head: int):
    """qkv (B, T, 3C) -> q, k, v, each a (B, NH, T, HS) view (no copy): heads as a batch axis."""
    B, T, C3 = qkv.shape
    if C3 % 3 != 0 or (C3 // 3) % n_head != 0:
        raise ValueError(f"qkv's last axis must be 3*C with C divisible by n_head={n_head}; got {C3}")
    HS = C3 // 3 // n_head
    # (B, T, 3C) -> (B, T, 3, NH, HS) -> (3, B, NH, T, HS)
    return qkv.reshape(B, T, 3, n_head, HS).transpose(2, 0, 3, 1, 4)


def attention_forward(qkv, n_head: int):
    """Causal multi-head scaled dot-product attention, all heads at once.

    qkv (B, T, 3C): queries, keys and values side by side (nanoGPT's ``c_attn`` output)
    -> out (B, T, C), cache. With q, k, v split into NH heads of size HS:

        scores[b, h, t, s] = q[b, h, t] . k[b, h, s] / sqrt(HS)     for s <= t
                           = -inf                                   for s > t (the future)
        att[b, h, t, :]    = softmax(scores[b, h, t, :])            (att = 0 exactly for s > t)
        y[b, h, t]         = sum_s att[b, h, t, s] v[b, h, s]
        out[b, t]          = the NH heads' y[b, :, t] concatenated

    :func:`attention_forward_reference` computes exactly this, whole arrays at a time.
    This one gives the same numbers faster:

    - q is scaled by 1/sqrt(HS) once, (B, NH, T, HS), instead of the (B, NH, T, T) scores;
    - k is copied transposed, (B, NH, HS, T), so that q @ k^T is a plain BLAS product;
    - the (B, NH, T, T) work (q @ k^T, mask, softmax, @ v) runs over blocks of sequences
      (:func:`row_blocks`) with the scores softmaxed in place, so each block stays in cache;
    - att @ v is written straight into ``out``'s (B, T, NH, HS) layout (``matmul(out=)``
      with a transposed view), so re-assembling the heads is no copy.
    """
    xp = xp_of(qkv)
    B, T, _ = qkv.shape
    q, k, v = _split_heads(qkv, n_head)
    NH, HS = q.shape[1], q.shape[3]
    scale = 1.0 / math.sqrt(HS)
    q_scaled = xp.multiply(q, scale)                             # (B, NH, T, HS), contiguous
    k_transposed = xp.ascontiguousarray(k.transpose(0, 1, 3, 2))  # (B, NH, HS, T), contiguous for BLAS
    v = xp.ascontiguousarray(v)                                  # (B, NH, T, HS)
    mask = _causal_mask(T, T, xp, qkv.dtype)
    att = xp.empty((B, NH, T, T), dtype=qkv.dtype)
    out = xp.empty((B, T, NH, HS), dtype=qkv.dtype)
    y = out.transpose(0, 2, 1, 3)                                # (B, NH, T, HS) view of out
    for seqs in row_blocks(B, NH * T * T, xp):
        scores = xp.matmul(q_scaled[seqs], k_transposed[seqs], out=att[seqs])  # q . k / sqrt(HS)
        scores += mask                                           # exact -inf above the diagonal
        softmax_forward(scores, out=scores)                      # att, in place
        xp.matmul(att[seqs], v[seqs], out=y[seqs])               # y = att @ v
    out = out.reshape(B, T, NH * HS)
    cache = (q_scaled, k_transposed, v, att, out, scale)
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

    Computed as :func:`attention_backward_reference` does, with three savings:

    - the softmax's row sums need no (B, NH, T, T) product: since datt = dy @ v^T,
        sum_s att[t, s] datt[t, s] = sum_s att[t, s] (dy[t] . v[s]) = dy[t] . y[t],
      a dot product of head size (FlashAttention's trick), from the forward's output;
    - the scale was applied to q in the forward: dk = dscores^T @ (q * scale) needs no
      further scaling and dq = (dscores @ k) * scale scales a (B, NH, T, HS) array;
    - dq, dk and dv are written straight into dqkv's (B, T, 3, NH, HS) layout.
    """
    q_scaled, k_transposed, v, att, out, scale = cache
    xp = xp_of(dout)
    B, NH, T, HS = q_scaled.shape
    C = NH * HS
    dy = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)                  # (B, NH, T, HS) view
    # dy . y for every (b, t, head): one row per head-sized piece of dout and out, both
    # contiguous (B*T*NH, HS), so CuPy contracts them without transposed copies
    row_dots = xp.einsum("ij,ij->i", dout.reshape(-1, HS), out.reshape(-1, HS))
    row_dots = xp.ascontiguousarray(row_dots.reshape(B, T, NH).transpose(0, 2, 1))[..., None]  # (B, NH, T, 1)
    dqkv = xp.empty((B, T, 3, NH, HS), dtype=dout.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                             # (B, NH, T, HS) views
    blocks = row_blocks(B, NH * T * T, xp)
    dscores_buffer = block_buffer(blocks, (NH, T, T), dout.dtype, xp)
    for seqs in blocks:
        dscores = dscores_buffer[: seqs.stop - seqs.start]
        xp.matmul(dy[seqs], v[seqs].transpose(0, 1, 3, 2), out=dscores)     # datt = dy @ v^T
        xp.matmul(att[seqs].transpose(0, 1, 3, 2), dy[seqs], out=dv[seqs])  # dv = att^T @ dy
        dscores -= row_dots[seqs]
        dscores *= att[seqs]                                               # att * (datt - dy . y)
        dq_block = xp.matmul(dscores, k_transposed[seqs].transpose(0, 1, 3, 2), out=dq[seqs])
        dq_block *= scale                                                  # dscores @ k * scale
        xp.matmul(dscores.transpose(0, 1, 3, 2), q_scaled[seqs], out=dk[seqs])      # dscores^T @ q * scale
    return dqkv.reshape(B, T, 3 * C)


def attention_forward_reference(qkv, n_head: int):
    """:func:`attention_forward` in whole-array expressions, the formulas as written (the check)."""
    xp = xp_of(qkv)
    B, T, _ = qkv.shape
    q, k, v = _split_heads(qkv, n_head)
    NH, HS = q.shape[1], q.shape[3]
    scale = 1.0 / math.sqrt(HS)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale + _causal_mask(T, T, xp, qkv.dtype)  # (B, NH, T, T)
    att, _ = softmax_forward(scores)
    y = att @ v                                                   # (B, NH, T, HS)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)           # heads side by side
    return out, (q, k, v, att, scale)


def attention_backward_reference(dout, cache):
    """:func:`attention_backward` in whole-array expressions (the check)."""
    q, k, v, att, scale = cache
    xp = xp_of(dout)
    B, NH, T, HS = q.shape
    dy = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)          # (B, NH, T, HS)
    datt = dy @ v.transpose(0, 1, 3, 2)
    dv = att.transpose(0, 1, 3, 2) @ dy
    dscores = softmax_backward(datt, att) * scale
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    dqkv = xp.stack([dq, dk, dv], axis=2)                           # (B, NH, 3, T, HS)
    return dqkv.transpose(0, 3, 2, 1, 4).reshape(B, T, 3 * NH * HS)


def attention_forward_cached(qkv, n_head: int, kv_cache):
    """Attention for generation: new positions attend to the cached keys and values and to themselves.

    qkv (B, T_new, 3C) for the positions start .. start + T_new - 1; ``kv_cache`` is
    ``(keys, values, start)`` with keys, values (B, NH, context_length, HS) filled for the
    positions before ``start``. The new keys and values are written into them, and
    -> out (B, T_new, C): for every new position, the row :func:`attention_forward` would
    give on the whole sequence, at the cost of T_new rows instead of all of them. Inference
    only (there is no backward).

        scores[b, h, i, s] = q[b, h, i] . keys[b, h, s] / sqrt(HS)  for s <= start + i, else -inf
    """
    xp = xp_of(qkv)
    keys, values, start = kv_cache
    B, T_new, _ = qkv.shape
    q, k, v = _split_heads(qkv, n_head)
    HS = q.shape[3]
    end = start + T_new
    keys[:, :, start:end] = k
    values[:, :, start:end] = v
    scores = q @ keys[:, :, :end].transpose(0, 1, 3, 2)             # (B, NH, T_new, end)
    scores *= 1.0 / math.sqrt(HS)
    if T_new > 1:  # one new position sees every key; several must not see each other's future
        scores += _causal_mask(T_new, end, xp, scores.dtype)        # new row i is position start + i
    att, _ = softmax_forward(scores, out=scores)
    y = att @ values[:, :, :end]                                     # (B, NH, T_new, HS)
    return y.transpose(0, 2, 1, 3).reshape(B, T_new, n_head * HS)


def causal_self_attention_forward(x, params: dict, n_head: int, kv_cache=None):
    """nanoGPT's CausalSelfAttention: project to q, k, v; attend; project back.

    x (B, T, C); params ``c_attn.weight`` (C, 3C), ``c_proj.weight`` (C, C), and
    ``c_attn.bias`` (3C,), ``c_proj.bias`` (C,) when the model has biases -> out (B, T, C).

        qkv = x @ c_attn.weight + c_attn.bias
        y   = attention(qkv)
        out = y @ c_proj.weight + c_proj.bias

    With ``kv_cache`` (generation; see :func:`attention_forward_cached`) x holds only
    the new positions, and the returned cache cannot be used for a backward.
    """
    qkv, c_attn_cache = linear_forward(x, params["c_attn.weight"], params.get("c_attn.bias"))
    if kv_cache is None:
        y, attention_cache = attention_forward(qkv, n_head)
    else:
        y, attention_cache = attention_forward_cached(qkv, n_head, kv_cache), None
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
    dhidden = gelu_backward(dactivated, gelu_cache, out=dactivated)  # dactivated is ours: reuse it
    dx, dc_fc = _linear_backward_named(dhidden, c_fc_cache, "c_fc")
    dparams.update(dc_fc)
    return dx, dparams


# --------------------------------------------------------------------------------------
# the residual block, pre-LayerNorm as GPT-2 / nanoGPT
# --------------------------------------------------------------------------------------

def block_forward(x, params: dict, n_head: int, kv_cache=None):
    """One transformer block: two residual branches, each reading a LayerNorm of the stream.

    x (B, T, C); params with the keys ``ln_1.weight``, ``attn.c_attn.weight``,
    ``attn.c_proj.weight``, ``ln_2.weight``, ``mlp.c_fc.weight``, ``mlp.c_proj.weight``
    (and the ``.bias`` of each when the model has biases) -> out (B, T, C).

        h   = x + attn(ln_1(x))
        out = h + mlp(ln_2(h))

    ``kv_cache``: generation only, passed on to :func:`causal_self_attention_forward`.
    """
    xp = xp_of(x)
    ln_1_out, ln_1_cache = layernorm_forward(x, params["ln_1.weight"], params.get("ln_1.bias"))
    attn_out, attn_cache = causal_self_attention_forward(ln_1_out, sub_params(params, "attn."), n_head, kv_cache)
    h = xp.add(x, attn_out, out=attn_out)  # the sum goes into the branch's fresh output (nothing else holds it)
    ln_2_out, ln_2_cache = layernorm_forward(h, params["ln_2.weight"], params.get("ln_2.bias"))
    mlp_out, mlp_cache = mlp_forward(ln_2_out, sub_params(params, "mlp."))
    out = xp.add(h, mlp_out, out=mlp_out)
    return out, (ln_1_cache, attn_cache, ln_2_cache, mlp_cache)


def block_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dparams (the forward's keys).

    A residual connection copies its gradient to both summands:
      out = h + mlp(ln_2(h))   ->  dh = dout + d/dh of the MLP branch
      h   = x + attn(ln_1(x))  ->  dx = dh   + d/dx of the attention branch
    """
    ln_1_cache, attn_cache, ln_2_cache, mlp_cache = cache
    xp = xp_of(dout)
    dparams = {}
    # out = h + mlp(ln_2(h))
    dln_2_out, dmlp = mlp_backward(dout, mlp_cache)
    dh_through_mlp, dln_2_weight, dln_2_bias = layernorm_backward(dln_2_out, ln_2_cache, out=dln_2_out)
    dh = xp.add(dout, dh_through_mlp, out=dh_through_mlp)  # into the fresh term's buffer, as in the forward
    # h = x + attn(ln_1(x))
    dln_1_out, dattn = causal_self_attention_backward(dh, attn_cache)
    dx_through_attn, dln_1_weight, dln_1_bias = layernorm_backward(dln_1_out, ln_1_cache, out=dln_1_out)
    dx = xp.add(dh, dx_through_attn, out=dx_through_attn)

    dparams["ln_1.weight"] = dln_1_weight
    if dln_1_bias is not None:
        dparams["ln_1.bias"] = dln_1_bias
    dparams.update(add_prefix(dattn, "attn."))
    dparams["ln_2.weight"] = dln_2_weight
    if dln_2_bias is not None:
        dparams["ln_2.bias"] = dln_2_bias
    dparams.update(add_prefix(dmlp, "mlp."))
    return dx, dparams
