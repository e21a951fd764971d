"""AdamW, the learning-rate schedule and gradient clipping, as nanoGPT trains with them.

Parameters and gradients are dicts of arrays with the same keys and shapes (see
:mod:`tinylatent.gpt`); everything here works in place, on whichever device the arrays
live (NumPy or CuPy).
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from tinylatent import backend
from tinylatent._checks import is_finite_real, is_integer, is_real
from tinylatent.layers import block_buffer, row_blocks


class _StepScalars(NamedTuple):
    """The numbers one AdamW step multiplies by, the same for every parameter (Python floats)."""

    beta1: float
    beta2: float
    moves: bool                   # False when lr = 0 or 1/step_size overflows: only the moments update
    denominator_scale: float      # 1 / (sqrt(1 - beta2^t) * step_size)
    denominator_shift: float      # eps / step_size
    decay_factor: float           # 1 - lr * weight_decay


def _moment_and_parameter_passes(p, g, m, v, scratch, xp, scalars: _StepScalars) -> None:
    """The in-place passes of one update, after the weight decay; p, g, m, v, scratch of one shape.

        m <- beta1 m + (1 - beta1) g
        v <- beta2 v + (1 - beta2) g^2
        p <- p - m / ((sqrt(v) * denominator_scale) + denominator_shift)
    """
    m *= scalars.beta1
    m += xp.multiply(g, 1.0 - scalars.beta1, out=scratch)
    v *= scalars.beta2
    xp.multiply(g, 1.0 - scalars.beta2, out=scratch)
    scratch *= g
    v += scratch
    if scalars.moves:
        xp.sqrt(v, out=scratch)                             # (sqrt(v_hat) + eps) / step_size
        scratch *= scalars.denominator_scale
        scratch += scalars.denominator_shift
        p -= xp.divide(m, scratch, out=scratch)            # p <- p - step_size m_hat / (...)


class _AllAtOnce(NamedTuple):
    """Every parameter's moments in one flat buffer each (the parameters that decay first),
    for :meth:`AdamW.step` on a GPU; ``AdamW.m`` / ``AdamW.v`` hold views of them."""

    layout: tuple                 # ((name, shape, dtype), ...) of the parameters it was built for
    names: tuple                  # the flat order: decaying parameters first, then the rest
    rows: tuple                   # each name's slice of the flat buffers
    n_decaying: int               # entries of the decaying parameters, at the front
    m: object                     # (P,) first moments
    v: object                     # (P,) second moments
    scratch: object               # (P,) work buffer


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p <- p * (1 - lr * weight_decay)          only for matrices (p.ndim >= 2)
        m <- beta1 * m + (1 - beta1) * g           first moment
        v <- beta2 * v + (1 - beta2) * g^2         second moment
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Which parameters decay follows nanoGPT: every parameter with two or more dimensions,
    which means the linear weights and also the embeddings ``wte`` and ``wpe`` (and the
    head, tied to ``wte`` or not); LayerNorm weights and all biases do not decay.

    Moments are created on the first :meth:`step` with the parameters' shapes, dtype and
    device. :meth:`state_dict` / :meth:`load_state_dict` save and restore them with the
    step count, so a resumed run continues bit for bit.
    """

    def __init__(self, weight_decay: float = 0.1, betas: tuple = (0.9, 0.95), eps: float = 1e-8):
        # nanoGPT / the paper: weight_decay 0.1, betas (0.9, 0.95); PyTorch's eps 1e-8
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(is_real(b) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1); got {betas!r}")
        beta1, beta2 = float(betas[0]), float(betas[1])
        if not (is_finite_real(eps) and eps > 0.0):
            raise ValueError(f"eps must be a positive number; got {eps!r}")
        if not (is_finite_real(weight_decay) and weight_decay >= 0.0):
            raise ValueError(f"weight_decay must be a non-negative number; got {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        self.beta1, self.beta2 = beta1, beta2
        self.eps = float(eps)
        self.step_count = 0        # t: how many updates have been applied
        self.m = {}                # name -> first-moment estimate, shape of the parameter
        self.v = {}                # name -> second-moment estimate, shape of the parameter
        self._all_at_once = None   # on a GPU: the flat moment buffers behind m and v (see step)

    @staticmethod
    def decays(param) -> bool:
        """Whether weight decay applies to a parameter: matrices yes, vectors no (nanoGPT)."""
        return param.ndim >= 2

    def _prepare(self, params: dict, grads: dict) -> None:
        if set(grads) != set(params):
            raise ValueError(f"grads must have exactly the keys of params; "
                             f"missing {sorted(set(params) - set(grads))}, extra {sorted(set(grads) - set(params))}")
        for name, param in params.items():
            if grads[name].shape != param.shape:
                raise ValueError(f"gradient {name} has shape {grads[name].shape}; its parameter has {param.shape}")
            if not param.flags.c_contiguous:  # step() updates it through a flat view
                raise ValueError(f"parameter {name} must be C-contiguous to be updated in place")
            xp = backend.xp_of(param)
            for moments in (self.m, self.v):
                if name not in moments:
                    moments[name] = xp.zeros(param.shape, dtype=param.dtype)
                    self._all_at_once = None           # the flat buffers no longer hold every moment
                elif moments[name].shape != param.shape:
                    raise ValueError(f"optimizer state for {name} has shape {moments[name].shape}; "
                                     f"the parameter has {param.shape}")
                elif backend.device_of(moments[name]) != backend.device_of(param) or moments[name].dtype != param.dtype:
                    moments[name] = backend.to_device(backend.to_host(moments[name]),
                                                      backend.device_of(param), dtype=param.dtype)
                    self._all_at_once = None

    def step(self, params: dict, grads: dict, lr: float) -> None:
        """Apply one AdamW update to every parameter, in place.

        The update is the class docstring's, rearranged so that each line is one in-place
        pass (:func:`_moment_and_parameter_passes`): the step size is folded into the
        denominator,

            p <- p - m / ((sqrt(v) / sqrt(1 - beta2^t) + eps) / step_size),
            step_size = lr / (1 - beta1^t).

        On the CPU each parameter is updated in blocks (:func:`tinylatent.layers.row_blocks`)
        so that p, g, m, v and one scratch block stay in the L2 cache for all the passes.
        On a GPU the passes run once over every parameter together (:meth:`_step_all_at_once`):
        one pass is one kernel launch, and launches rather than arithmetic can bound a small
        model's step there (12 or 13 per parameter, 266 for the paper's model, against 36 all at
        once). The passes are elementwise, so both ways give the same numbers bit for bit
        (the tests check this on the fake CuPy), and the suite checks them against the
        formulas written out as such.
        """
        if not (is_finite_real(lr) and lr >= 0.0):
            raise ValueError(f"lr must be a finite number ≥ 0; got {lr!r}")
        self._prepare(params, grads)
        self.step_count += 1
        t = self.step_count
        step_size = float(lr) / (1.0 - self.beta1 ** t)              # lr with the first moment's bias correction
        inv_sqrt_correction2 = 1.0 / math.sqrt(1.0 - self.beta2 ** t)  # the second moment's, under the root
        # lr = 0 (a schedule's end) updates the moments only; so does a step so small that
        # 1 / step_size overflows the parameters' dtype (its update, at most about
        # step_size / sqrt(1 - beta2), would be lost to rounding anyway, and inf * 0 is NaN)
        largest = min((float(np.finfo(param.dtype).max) for param in params.values()), default=math.inf)
        moves = step_size != 0.0 and max(inv_sqrt_correction2, self.eps) / step_size < largest
        scalars = _StepScalars(
            beta1=self.beta1, beta2=self.beta2, moves=moves,
            denominator_scale=inv_sqrt_correction2 / step_size if moves else 0.0,
            denominator_shift=self.eps / step_size if moves else 0.0,
            decay_factor=1.0 - float(lr) * self.weight_decay,
        )
        xp = backend.xp_of(*params.values())
        if xp is not np and len({param.dtype for param in params.values()}) == 1:
            self._step_all_at_once(params, grads, xp, scalars)
            return
        for name, param in params.items():
            decays = self.decays(param) and self.weight_decay != 0.0
            p, g, m, v = (a.reshape(-1) for a in (param, grads[name], self.m[name], self.v[name]))
            blocks = row_blocks(p.size, 1, xp)
            scratch_buffer = block_buffer(blocks, (), param.dtype, xp)
            for block in blocks:
                p_ = p[block]
                if decays:
                    p_ *= scalars.decay_factor                       # p <- p (1 - lr wd)
                _moment_and_parameter_passes(p_, g[block], m[block], v[block], scratch_buffer[: p_.size], xp, scalars)

    def _step_all_at_once(self, params: dict, grads: dict, xp, scalars: _StepScalars) -> None:
        """The update on flat copies: gather every parameter and gradient into one array each
        (decaying parameters first), run the passes once, write the parameters back.

        The moments live flat between steps (:class:`_AllAtOnce`, built on the first such
        step and again whenever the parameters' layout or the moments change).
        """
        flat = self._flat_moments(params, xp)
        p = xp.concatenate([params[name].reshape(-1) for name in flat.names])        # (P,)
        g = xp.concatenate([grads[name].reshape(-1) for name in flat.names])         # (P,)
        if self.weight_decay != 0.0 and flat.n_decaying:
            decaying = p[: flat.n_decaying]
            decaying *= scalars.decay_factor                                          # p <- p (1 - lr wd)
        _moment_and_parameter_passes(p, g, flat.m, flat.v, flat.scratch, xp, scalars)
        for name, rows in zip(flat.names, flat.rows):
            params[name][...] = p[rows].reshape(params[name].shape)

    def _flat_moments(self, params: dict, xp) -> _AllAtOnce:
        """The flat moment buffers for these parameters: the last ones if the layout is the
        same, else new ones filled from ``self.m`` / ``self.v``, whose entries become views."""
        layout = tuple((name, param.shape, param.dtype) for name, param in params.items())
        if self._all_at_once is not None and self._all_at_once.layout == layout:
            return self._all_at_once
        names = tuple(sorted(params, key=lambda name: not self.decays(params[name])))  # stable: decaying first
        sizes = [params[name].size for name in names]
        rows = tuple(slice(end - size, end) for size, end in zip(sizes, itertools.accumulate(sizes)))
        n_decaying = sum(size for name, size in zip(names, sizes) if self.decays(params[name]))
        m, v = (xp.concatenate([moments[name].reshape(-1) for name in names]) for moments in (self.m, self.v))
        for name, row in zip(names, rows):
            self.m[name] = m[row].reshape(params[name].shape)
            self.v[name] = v[row].reshape(params[name].shape)
        scratch = xp.empty(m.shape, dtype=m.dtype)
        self._all_at_once = _AllAtOnce(layout, names, rows, n_decaying, m, v, scratch)
        return self._all_at_once

    def state_dict(self) -> dict:
        """Hyperparameters, the step count and host (NumPy) copies of every moment."""
        return {
            "step": self.step_count,
            "weight_decay": self.weight_decay,
            "betas": (self.beta1, self.beta2),
            "eps": self.eps,
            "m": {name: np.array(backend.to_host(value)) for name, value in self.m.items()},
            "v": {name: np.array(backend.to_host(value)) for name, value in self.v.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; moments move to the parameters' device at the next step.

        Raises ``ValueError`` saying what is wrong for a state that is not one: missing
        keys, a step that is not a non-negative integer, moments that are not numeric
        arrays or whose names or shapes differ, or hyperparameters AdamW would refuse.
        """
        if not isinstance(state, dict):
            raise ValueError(f"optimizer state must be a dict with 'step', 'm' and 'v'; got {type(state).__name__}")
        missing = {"step", "m", "v"} - set(state)
        if missing:
            raise ValueError(f"optimizer state is missing {sorted(missing)}")
        step = state["step"]
        if not is_integer(step) or step < 0:
            raise ValueError(f"optimizer state 'step' must be a non-negative integer; got {step!r}")
        if not (isinstance(state["m"], dict) and isinstance(state["v"], dict)):
            raise ValueError("optimizer state 'm' and 'v' must map parameter names to arrays")
        if set(state["m"]) != set(state["v"]):
            raise ValueError("optimizer state has first and second moments for different parameters")
        m = {name: np.array(value) for name, value in state["m"].items()}
        v = {name: np.array(value) for name, value in state["v"].items()}
        for name in m:
            if m[name].dtype.kind != "f" or v[name].dtype.kind != "f" or m[name].shape != v[name].shape:
                raise ValueError(f"optimizer state: the moments of {name!r} must be float arrays of one shape; "
                                 f"got {m[name].dtype} {m[name].shape} and {v[name].dtype} {v[name].shape}")
        checked = AdamW(state.get("weight_decay", self.weight_decay), state.get("betas", (self.beta1, self.beta2)),
                        state.get("eps", self.eps))            # the constructor's checks, with their messages
        self.step_count = int(step)
        self.weight_decay, self.beta1, self.beta2, self.eps = checked.weight_decay, checked.beta1, checked.beta2, checked.eps
        self.m, self.v = m, v
        self._all_at_once = None


def lr_at(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> float:
    """nanoGPT's learning rate at ``step`` (0-based): linear warm-up, then cosine decay.

        step <  warmup_steps:               max_lr * (step + 1) / (warmup_steps + 1)
        warmup_steps <= step <= total_steps: min_lr + (max_lr - min_lr) * (1 + cos(pi * r)) / 2,
                                             r = (step - warmup_steps) / (total_steps - warmup_steps)
        step >  total_steps:                min_lr

    So the rate is max_lr when warm-up ends, (max_lr + min_lr) / 2 halfway through the
    decay, and min_lr at ``total_steps``. The warm-up's ``+ 1`` keeps step 0 from being
    a wasted step with lr = 0.
    """
    if not is_integer(step) or step < 0:
        raise ValueError(f"step must be a non-negative integer; got {step!r}")
    if not (is_integer(warmup_steps) and is_integer(total_steps) and 0 <= warmup_steps < total_steps):
        raise ValueError(f"need integers 0 <= warmup_steps < total_steps; got warmup_steps={warmup_steps!r}, "
                         f"total_steps={total_steps!r}")
    if not (is_finite_real(min_lr) and is_finite_real(max_lr) and 0.0 <= min_lr <= max_lr):
        raise ValueError(f"need finite numbers 0 <= min_lr <= max_lr; got min_lr={min_lr!r}, max_lr={max_lr!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step > total_steps:
        return min_lr
    decay_ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    cosine_coefficient = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return min_lr + cosine_coefficient * (max_lr - min_lr)


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients together, in place, so that their global norm is at most ``max_norm``.

    global norm = sqrt(sum over every gradient entry of g^2). If it exceeds ``max_norm``,
    every gradient is multiplied by max_norm / norm, so the new global norm is exactly
    ``max_norm`` (PyTorch adds 1e-6 to the denominator; this does not). Returns the norm
    *before* clipping as a Python float (one device-to-host transfer). A non-finite norm
    is returned as is and the gradients are left untouched, for the caller to act on.
    """
    if not (is_real(max_norm) and max_norm > 0.0):   # inf is allowed: measure the norm, clip nothing
        raise ValueError(f"max_norm must be a number > 0; got {max_norm!r}")
    squared_norms = [backend.xp_of(g).vdot(g.reshape(-1), g.reshape(-1)) for g in grads.values()]
    total_norm = math.sqrt(float(backend.to_host(sum(squared_norms))))
    if math.isfinite(total_norm) and total_norm > max_norm:
        scale = max_norm / total_norm
        for g in grads.values():
            g *= scale
    return total_norm
