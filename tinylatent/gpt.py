"""A GPT (GPT-2 / nanoGPT architecture) built from :mod:`tinylatent.layers`.

The model p(x_{t+1} | x_{<=t}) of a language q, trained by next-token cross-entropy::

    x      = wte[idx] + wpe[:T]                     token + learned position embedding
    x      = block_l(x)   for l = 0 .. n_layer-1     pre-LN residual blocks
    logits = ln_f(x) @ wte^T                         (tied) or @ lm_head.weight^T
    loss   = mean over positions of -log softmax(logits)[target]

Parameters live in one flat dict whose names are GPT-2 / nanoGPT checkpoint names
(``wte``, ``wpe``, ``h.0.ln_1.weight``, ``h.0.attn.c_attn.weight``, ..., ``ln_f.weight``,
and ``lm_head.weight`` only when the head is not tied to ``wte``). Gradients use the
same names and shapes, so the optimiser and checkpoints are loops over names.

Weight orientation (documented once, here): every linear weight is stored (C_in, C_out)
and applied as ``x @ W``, as in GPT-2's original ``Conv1D`` checkpoint; ``wte`` and
``lm_head.weight`` are (V, C), and the head computes ``x @ W^T``. A PyTorch
``nn.Linear`` keeps the transpose, (C_out, C_in).

Size letters as in :mod:`tinylatent.layers`: B batch, T time, C = d_model,
NH heads, HS head size, V vocabulary, L layers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np

from tinylatent import backend
from tinylatent._checks import as_python_scalars, is_finite_real, is_integer
from tinylatent.language import SeedLike, as_generator
from tinylatent.layers import (
    add_prefix,
    block_backward,
    block_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    lm_head_backward,
    lm_head_forward,
    log_softmax_forward,
    sub_params,
)

DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------

@dataclass
class GPTConfig:
    """The shape of a GPT. The defaults are the paper's model (docs/claims.md §7).

    Each default's comment says why it is what it is, as nanoGPT's config does.
    """

    vocab_size: int = 19        # the paper's language: 18 letters a..r plus the delimiter "\n"
    context_length: int = 128   # block size: the paper trained on windows of 128 tokens
    n_layer: int = 3            # the paper's model: 3 blocks (nanoGPT's "baby" scale)
    n_head: int = 12            # 12 heads of size 64, as GPT-2 small
    d_model: int = 768          # GPT-2 small's width; 21,351,936 parameters (21,253,632 without wpe)
    bias: bool = False          # nanoGPT: no biases in linears and LayerNorms is a bit better and faster
    tie_embeddings: bool = True  # the head reuses wte (GPT-2; Press & Wolf 2017): V*C fewer parameters
    dtype: str = "float32"      # float32 to train; "float64" for finite-difference gradient checks
    init_std: float = 0.02      # GPT-2's initialisation; residual projections get 0.02/sqrt(2*n_layer)

    def __post_init__(self) -> None:
        as_python_scalars(self)
        self.validate()

    # ---- checks -----------------------------------------------------------------------

    def validate(self) -> "GPTConfig":
        """Raise ``ValueError`` naming the bad field and what is allowed; return self if fine."""
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not is_integer(value) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer; got {value!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head}) "
                f"so that every head has the same size; try d_model = {self.n_head * max(1, self.d_model // self.n_head)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"GPTConfig.dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"GPTConfig.{name} must be True or False; got {getattr(self, name)!r}")
        if not (is_finite_real(self.init_std) and self.init_std > 0):
            raise ValueError(f"GPTConfig.init_std must be a positive finite number; got {self.init_std!r}")
        return self

    @property
    def head_size(self) -> int:
        """HS = C / NH."""
        return self.d_model // self.n_head

    # ---- presets ----------------------------------------------------------------------

    @classmethod
    def paper(cls, vocab_size: int = 19) -> "GPTConfig":
        """The paper's nanoGPT: 3 layers, 12 heads, d_model 768, no bias, tied embeddings,
        learned position embeddings, context 128; with 19 tokens 21,351,936 parameters, or
        21,253,632 without the position embeddings (nanoGPT's count, the paper's number)."""
        return cls(vocab_size=vocab_size, context_length=128, n_layer=3, n_head=12, d_model=768,
                   bias=False, tie_embeddings=True)

    @classmethod
    def small(cls, vocab_size: int = 19) -> "GPTConfig":
        """A CPU-sized model for the paper's 19-token languages: 2 layers, 4 heads of
        size 16, d_model 64, context 128 (about 0.1 M parameters).

        The task needs little width (19 tokens, one 3-letter block per intention) but
        two layers of attention: one to find the last delimiter and count the position
        in the message, one to read the previous message's intention.
        """
        return cls(vocab_size=vocab_size, context_length=128, n_layer=2, n_head=4, d_model=64,
                   bias=False, tie_embeddings=True)

    # ---- checkpoints ------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A plain dict of the fields (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        """The inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    # ---- sizes ------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters, counted from the shapes (nothing is allocated).

        As nanoGPT: ``non_embedding=True`` leaves out the position embeddings ``wpe``;
        the token embeddings stay in because the tied head uses them as weights.
        """
        shapes = param_shapes(self)
        total = sum(math.prod(shape) for shape in shapes.values())
        if non_embedding:
            total -= math.prod(shapes["wpe"])
        return total


def param_shapes(config: GPTConfig) -> dict:
    """The name -> shape schema of a model's parameters, in a fixed order.

    This order is also the order in which :func:`init_params` draws random numbers.
    """
    V, C, L = config.vocab_size, config.d_model, config.n_layer
    shapes = {"wte": (V, C), "wpe": (config.context_length, C)}
    for layer in range(L):
        prefix = f"h.{layer}."
        block = {
            "ln_1.weight": (C,), "ln_1.bias": (C,),
            "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
            "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
            "ln_2.weight": (C,), "ln_2.bias": (C,),
            "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
            "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
        }
        for name, shape in block.items():
            if config.bias or not name.endswith(".bias"):
                shapes[prefix + name] = shape
    shapes["ln_f.weight"] = (C,)
    if config.bias:
        shapes["ln_f.bias"] = (C,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


# --------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------

def init_params(config: GPTConfig, rng: SeedLike, device: str = "cpu") -> dict:
    """GPT-2's initialisation, drawn on the host from ``rng`` (a Generator or a seed) and moved to ``device``.

    - every weight matrix and both embeddings ~ Normal(0, init_std);
    - the two projections that write into the residual stream (``attn.c_proj`` and
      ``mlp.c_proj``) ~ Normal(0, init_std / sqrt(2 * n_layer)), so that the stream's
      variance does not grow with depth (GPT-2 paper, §2.3);
    - LayerNorm weights 1, every bias 0.

    Numbers are drawn in float64 in the fixed order of :func:`param_shapes` and then cast,
    so one seed gives the same weights on either device and in either dtype's rounding.
    """
    config.validate()
    backend.check_device(device)
    rng = as_generator(rng)
    residual_std = config.init_std / math.sqrt(2 * config.n_layer)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            host = np.zeros(shape, dtype=np.float64)
        elif name.startswith("ln_") or ".ln_" in name:
            host = np.ones(shape, dtype=np.float64)  # a LayerNorm weight
        elif name.endswith("c_proj.weight"):
            host = rng.normal(0.0, residual_std, size=shape)
        else:
            host = rng.normal(0.0, config.init_std, size=shape)
        params[name] = backend.to_device(host.astype(config.dtype), device)
    return params


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------

@dataclass
class ForwardCache:
    """What :meth:`GPT.backward` needs from one :meth:`GPT.forward`."""

    embedding: tuple
    blocks: list
    ln_f: tuple
    lm_head: tuple
    loss: Optional[tuple]  # None when forward had no targets


class GPT:
    """A GPT: a config and a flat dict of parameter arrays (NumPy or CuPy).

    Create one with ``GPT.create(config, rng, device)`` or, from a checkpoint,
    ``GPT(config, params)``.
    """

    def __init__(self, config: GPTConfig, params: dict):
        config.validate()
        expected = param_shapes(config)
        if set(params) != set(expected):
            missing = sorted(set(expected) - set(params))
            extra = sorted(set(params) - set(expected))
            raise ValueError(f"parameters do not match the config: missing {missing}, unexpected {extra}")
        for name, shape in expected.items():
            array = params[name]
            if tuple(array.shape) != shape:
                raise ValueError(f"parameter {name} has shape {tuple(array.shape)}; the config needs {shape}")
            if str(array.dtype) != config.dtype:
                raise ValueError(f"parameter {name} has dtype {array.dtype}; the config needs {config.dtype}")
        self.config = config
        self.params = {name: params[name] for name in expected}  # the canonical order

    @classmethod
    def create(cls, config: GPTConfig, rng: SeedLike, device: str = "cpu") -> "GPT":
        """A freshly initialised model (see :func:`init_params`); ``rng`` a Generator or a seed."""
        return cls(config, init_params(config, rng, device))

    @property
    def device(self) -> str:
        return backend.device_of(self.params["wte"])

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters held; without ``wpe`` when ``non_embedding`` (nanoGPT's count)."""
        total = sum(int(p.size) for p in self.params.values())
        if non_embedding:
            total -= int(self.params["wpe"].size)
        return total

    # ---- input checks -----------------------------------------------------------------

    def _check_idx(self, idx, what: str = "idx"):
        """Validate token ids on the host, then move them to the model's device. -> (B, T)."""
        host = np.asarray(backend.to_host(idx))
        if host.ndim != 2:
            raise ValueError(f"{what} must have shape (batch, time); got shape {host.shape}")
        B, T = host.shape
        if B < 1 or T < 1:
            raise ValueError(f"{what} must hold at least one sequence of at least one token; got shape {host.shape}")
        if T > self.config.context_length:
            raise ValueError(
                f"{what} has {T} tokens per sequence; at most context_length = "
                f"{self.config.context_length} are allowed"
            )
        backend.check_token_ids(host, self.config.vocab_size, what=what)
        return self._on_device(idx, host)

    def _on_device(self, given, host):
        """``given`` if it is already an array on the model's device, else ``host`` moved there."""
        if hasattr(given, "shape") and backend.device_of(given) == self.device:
            return given
        return backend.to_device(host, self.device)

    def _check_targets(self, targets, idx_shape):
        host = np.asarray(backend.to_host(targets))
        if tuple(host.shape) != tuple(idx_shape):
            raise ValueError(f"targets must have the shape of idx, {tuple(idx_shape)}; got {host.shape}")
        backend.check_token_ids(host, self.config.vocab_size, what="targets")
        return self._on_device(targets, host)

    # ---- forward and backward ---------------------------------------------------------

    def _head_weight(self):
        return self.params["wte"] if self.config.tie_embeddings else self.params["lm_head.weight"]

    def forward(self, idx, targets=None):
        """idx (B, T) token ids; targets (B, T) or None -> (logits (B, T, V), loss, cache).

        ``loss`` is the mean next-token cross-entropy in nats as a 0-d array on the
        model's device (None without targets); ``cache`` feeds :meth:`backward`.
        """
        idx = self._check_idx(idx)
        if targets is not None:
            targets = self._check_targets(targets, idx.shape)
        p, cfg = self.params, self.config
        x, embedding_cache = embedding_forward(idx, p["wte"], p["wpe"])      # (B, T, C)
        block_caches = []
        for layer in range(cfg.n_layer):
            x, block_cache = block_forward(x, sub_params(p, f"h.{layer}."), cfg.n_head)
            block_caches.append(block_cache)
        x, ln_f_cache = layernorm_forward(x, p["ln_f.weight"], p.get("ln_f.bias"))
        logits, lm_head_cache = lm_head_forward(x, self._head_weight())     # (B, T, V)
        loss, loss_cache = None, None
        if targets is not None:
            loss, loss_cache = cross_entropy_forward(logits, targets)
        cache = ForwardCache(embedding_cache, block_caches, ln_f_cache, lm_head_cache, loss_cache)
        return logits, loss, cache

    def backward(self, cache: ForwardCache, dlogits=None) -> dict:
        """Gradients of the loss (or of ``sum(logits * dlogits)`` when ``dlogits`` is given)
        with respect to every parameter: a dict with exactly ``params``' keys and shapes."""
        cfg = self.config
        if dlogits is None:
            if cache.loss is None:
                raise ValueError("backward needs a forward with targets (or an explicit dlogits)")
            dlogits = cross_entropy_backward(1.0, cache.loss)
        else:
            _, _, x_shape = cache.lm_head                                      # lm_head_forward's cache: (x_rows, weight, x.shape)
            expected = tuple(x_shape[:-1]) + (cfg.vocab_size,)                  # the logits' (B, T, V)
            if tuple(dlogits.shape) != tuple(expected) or dlogits.dtype != np.dtype(cfg.dtype):
                raise ValueError(f"dlogits must have the logits' shape {tuple(expected)} and the model's dtype "
                                 f"{cfg.dtype}; got shape {tuple(dlogits.shape)}, dtype {dlogits.dtype}")
            if backend.device_of(dlogits) != self.device:
                raise ValueError(f"dlogits must be on the model's device ({self.device})")
        grads = {}
        dx, dhead_weight = lm_head_backward(dlogits, cache.lm_head)
        dx, dln_f_weight, dln_f_bias = layernorm_backward(dx, cache.ln_f, out=dx)  # dx is ours: reuse it
        grads["ln_f.weight"] = dln_f_weight
        if dln_f_bias is not None:
            grads["ln_f.bias"] = dln_f_bias
        for layer in reversed(range(cfg.n_layer)):
            dx, dblock = block_backward(dx, cache.blocks[layer])
            grads.update(add_prefix(dblock, f"h.{layer}."))
        dwte, dwpe = embedding_backward(dx, cache.embedding)
        if cfg.tie_embeddings:
            dwte += dhead_weight  # wte is used twice: as the embedding and as the head
        else:
            grads["lm_head.weight"] = dhead_weight
        grads["wte"], grads["wpe"] = dwte, dwpe
        return {name: grads[name] for name in self.params}

    def loss_and_grads(self, idx, targets):
        """(loss, grads) for one batch: forward with targets, then backward."""
        _, loss, cache = self.forward(idx, targets)
        return loss, self.backward(cache)

    # ---- evaluation and sampling ------------------------------------------------------

    def logits(self, idx):
        """idx (B, T) -> logits (B, T, V), keeping no activations for a backward."""
        idx = self._check_idx(idx)
        p, cfg = self.params, self.config
        x, _ = embedding_forward(idx, p["wte"], p["wpe"])
        for layer in range(cfg.n_layer):
            x, _ = block_forward(x, sub_params(p, f"h.{layer}."), cfg.n_head)
        x, _ = layernorm_forward(x, p["ln_f.weight"], p.get("ln_f.bias"))
        logits, _ = lm_head_forward(x, self._head_weight())
        return logits

    def log_probs(self, idx):
        """idx (B, T) -> (B, T, V): log p(x_{t+1} = v | x_{<=t}) for every position t and token v.

        This is what is compared with an exact oracle's q(x_{t+1} | x_{<=t}).
        """
        logp, _ = log_softmax_forward(self.logits(idx))
        return logp

    def generate(self, idx, n_new_tokens: int, rng: SeedLike,
                 temperature: float = 1.0, top_k: Optional[int] = None, use_cache: bool = True) -> np.ndarray:
        """Append ``n_new_tokens`` sampled tokens to each prompt.

        idx (B, T) or (T,) prompt ids -> a NumPy array (B, T + n_new_tokens) or (T + n_new_tokens,).
        Each step takes the logits of the last position given the last ``context_length``
        tokens, divides them by ``temperature``, keeps the ``top_k`` largest (ties at the
        k-th value kept), and samples by inverting the CDF with uniforms drawn from the
        host ``rng``, so a seed gives the same text on either device.

        ``use_cache=True`` keeps every layer's keys and values (:class:`KVCache`), so a new
        token costs one position's forward pass whatever the length so far; ``False``
        recomputes the whole window for every token (the reference: both give the same
        tokens to float rounding). Once the text is longer than ``context_length`` the
        window slides, every position's embedding changes, and the cache is rebuilt for
        each token, which costs what recomputing does.
        """
        if not is_integer(n_new_tokens) or n_new_tokens < 0:
            raise ValueError(f"n_new_tokens must be a non-negative integer; got {n_new_tokens!r}")
        V = self.config.vocab_size
        _check_sampling(temperature, top_k, V)
        rng = as_generator(rng)
        tokens = np.array(backend.to_host(idx))
        one_sequence = tokens.ndim == 1
        if one_sequence:
            tokens = tokens[None, :]
        if tokens.ndim != 2 or tokens.shape[1] < 1:
            raise ValueError(f"the prompt must have shape (batch, time) or (time,) with time >= 1; got {np.shape(idx)}")
        backend.check_token_ids(tokens, V, what="prompt token ids")
        tokens = tokens.astype(np.int64)
        kv_cache = None
        for _ in range(n_new_tokens):
            if use_cache:
                last_logits, kv_cache = self._next_logits_cached(tokens, kv_cache)
            else:
                last_logits = self.logits(tokens[:, -self.config.context_length:])[:, -1, :]
            next_tokens = sample_next_tokens(backend.to_host(last_logits), rng, temperature, top_k)
            tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
        return tokens[0] if one_sequence else tokens

    def new_kv_cache(self, batch_size: int) -> "KVCache":
        """An empty :class:`KVCache` for ``batch_size`` sequences on the model's device."""
        cfg = self.config
        xp = backend.array_module(self.device)
        shape = (batch_size, cfg.n_head, cfg.context_length, cfg.head_size)
        return KVCache(keys=[xp.empty(shape, dtype=cfg.dtype) for _ in range(cfg.n_layer)],
                       values=[xp.empty(shape, dtype=cfg.dtype) for _ in range(cfg.n_layer)], length=0)

    def logits_cached(self, idx_new, kv_cache: "KVCache"):
        """idx_new (B, T_new): the tokens at positions kv_cache.length, ... -> logits (B, T_new, V).

        Each layer's attention reads the keys and values of the earlier positions from
        ``kv_cache`` and appends those of the new ones; ``kv_cache.length`` grows by T_new.
        The logits equal those of :meth:`logits` on the whole sequence at these positions.
        """
        p, cfg = self.params, self.config
        idx_new = self._check_idx(idx_new)
        start = kv_cache.length
        B_new, T_new = idx_new.shape
        cached_batch = kv_cache.keys[0].shape[0]
        if B_new != cached_batch:
            raise ValueError(f"idx_new holds {B_new} sequences but the cache was made for {cached_batch}; "
                             f"use new_kv_cache({B_new})")
        if start + T_new > cfg.context_length:
            raise ValueError(f"the cache holds {start} positions; {T_new} more exceed "
                             f"context_length = {cfg.context_length}")
        x = p["wte"][idx_new] + p["wpe"][start:start + T_new]                # (B, T_new, C)
        for layer in range(cfg.n_layer):
            layer_cache = (kv_cache.keys[layer], kv_cache.values[layer], start)
            x, _ = block_forward(x, sub_params(p, f"h.{layer}."), cfg.n_head, kv_cache=layer_cache)
        kv_cache.length = start + T_new
        x, _ = layernorm_forward(x, p["ln_f.weight"], p.get("ln_f.bias"))
        logits, _ = lm_head_forward(x, self._head_weight())
        return logits

    def _next_logits_cached(self, tokens: np.ndarray, kv_cache: Optional["KVCache"]):
        """The last position's logits (B, V) for host ``tokens`` (B, T), feeding only what
        ``kv_cache`` has not seen; a fresh cache when there is none or the window slid."""
        T = tokens.shape[1]
        if kv_cache is None or T > self.config.context_length:
            kv_cache = self.new_kv_cache(tokens.shape[0])
            new = tokens[:, -self.config.context_length:]                    # the whole window, from position 0
        else:
            new = tokens[:, kv_cache.length:]                                # the tokens since the last call
        logits = self.logits_cached(new, kv_cache)
        return logits[:, -1, :], kv_cache


@dataclass
class KVCache:
    """Every layer's attention keys and values for the positions seen so far (generation).

    keys[l], values[l]: (B, NH, context_length, HS), filled for positions < ``length``.
    A new token needs these from every earlier position and nothing else, so with them
    its forward pass costs one position's worth of work instead of the whole window's.
    """

    keys: list
    values: list
    length: int


def _check_sampling(temperature, top_k, vocab_size: int) -> None:
    """ValueError unless temperature is a positive finite number and top_k None or an integer in [1, vocab_size]."""
    if not (is_finite_real(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
    if top_k is not None and (not is_integer(top_k) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an integer in [1, {vocab_size}]; got {top_k!r}")


def sample_next_tokens(last_logits, rng: SeedLike, temperature: float = 1.0,
                       top_k: Optional[int] = None) -> np.ndarray:
    """One token per row of ``last_logits`` (B, V), sampled from softmax(logits / temperature)
    restricted to the ``top_k`` largest logits (ties at the k-th value kept) -> (B,) int64.

    Inverse-CDF sampling with one uniform per row from ``rng`` (on the host, in float64).
    """
    last_logits = np.array(last_logits, dtype=np.float64)
    if last_logits.ndim != 2 or last_logits.shape[-1] < 1:
        raise ValueError(f"last_logits must have shape (batch, vocabulary); got {last_logits.shape}")
    V = last_logits.shape[-1]
    _check_sampling(temperature, top_k, V)
    largest = last_logits.max(axis=-1, keepdims=True)                              # (B, 1)
    # NaN or +inf (a diverged model: NaN used to sample token 0 every time), or a row of −inf only
    if np.isnan(last_logits).any() or not np.isfinite(largest).all():
        raise ValueError("the logits must be numbers, some finite in each row, −inf allowed (for a token never to "
                         "be drawn); these hold NaN or inf (has the model diverged?): nothing to sample from")
    rng = as_generator(rng)
    # softmax(l / τ) = softmax((l − max l) / τ): every scaled logit is ≤ 0, so a tiny τ sends the
    # others to −inf (probability 0, the greedy choice) instead of overflowing to inf − inf = NaN
    with np.errstate(over="ignore"):
        scaled = (last_logits - largest) / temperature                             # (B, V), max 0
    if top_k is not None:
        kth_largest = np.sort(scaled, axis=-1)[:, V - top_k][:, None]
        scaled = np.where(scaled < kth_largest, -np.inf, scaled)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)
    uniforms = rng.random(last_logits.shape[0])[:, None]
    # the first token whose cdf exceeds u; one with probability 0 (cut by top_k) is
    # never chosen, since the cdf does not rise there
    return np.minimum((cdf <= uniforms * cdf[:, -1:]).sum(axis=-1), V - 1).astype(np.int64)
