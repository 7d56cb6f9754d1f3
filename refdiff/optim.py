"""Optimisation over a params dict: AdamW, EMA with warm-up, learning-rate schedules, gradient clipping.

Params and grads are flat dicts of arrays with identical dotted keys (docs/design.md rule 5), on any backend
and in any floating dtype. Every function returns new dicts and leaves its inputs untouched; optimizer
state is an explicit dict of plain arrays, so a checkpoint stores it as is:

  AdamW state   "step"        0-d int64 NumPy array on the host: the number of steps taken
                "m.<key>"     first moment of params[key] (same shape, dtype, device)
                "v.<key>"     second moment of params[key]
  EMA           a params dict with the same keys as params

Sources: Kingma & Ba 2015 (Adam, Alg. 1), Loshchilov & Hutter 2019 (AdamW, Alg. 2, as
torch.optim.AdamW computes it), TensorFlow's ExponentialMovingAverage(num_updates) and diffusers'
EMAModel (EMA warm-up), Loshchilov & Hutter 2017 (cosine decay), Pascanu et al. 2013 (clipping).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from refdiff.backend import namespace

DECAYS = ("constant", "cosine", "linear")


def adamw_init(params: dict) -> dict:
    """Zero AdamW state for ``params``: {"step": 0, "m.<key>": 0, "v.<key>": 0} (keys in the module docstring)."""
    state = {"step": np.zeros((), dtype=np.int64)}
    for key, p in params.items():
        xp = namespace(p)
        state[f"m.{key}"], state[f"v.{key}"] = xp.zeros_like(p), xp.zeros_like(p)
    return state


def adamw_step(params: dict, grads: dict, state: dict, lr: float | dict, beta1: float = 0.9, beta2: float = 0.999,
               eps: float = 1e-8, weight_decay: float = 0.0) -> tuple[dict, dict]:
    """One AdamW step with bias correction and decoupled weight decay.

    Math (k = state["step"] + 1; Loshchilov & Hutter 2019, Alg. 2, with Kingma & Ba's bias correction):
      m = beta1 m + (1 - beta1) g                  v = beta2 v + (1 - beta2) g^2
      m_hat = m / (1 - beta1^k)                    v_hat = v / (1 - beta2^k)
      p = p - lr (m_hat / (sqrt(v_hat) + eps) + weight_decay p)
    Weight decay is decoupled: it shrinks p by lr * weight_decay * p whatever the gradient, instead
    of being added to g (where Adam would rescale it). Applied to every key.

    lr: one learning rate for every key, or {key: lr} with a rate per key (torch's parameter groups).
    Returns (new params, new state); the inputs are left untouched.
    """
    _check_adamw(params, grads, state, lr, beta1, beta2, eps, weight_decay)
    k = int(state["step"]) + 1
    correction1, correction2 = 1.0 - beta1**k, 1.0 - beta2**k
    new_params, new_state = {}, {"step": np.asarray(k, dtype=np.int64)}
    for key, p in params.items():
        xp, g = namespace(p), grads[key]
        m = beta1 * state[f"m.{key}"] + (1.0 - beta1) * g
        v = beta2 * state[f"v.{key}"] + (1.0 - beta2) * (g * g)
        step = (m / correction1) / (xp.sqrt(v / correction2) + eps)
        rate = lr[key] if isinstance(lr, dict) else lr
        new_params[key] = p - rate * (step + weight_decay * p)
        new_state[f"m.{key}"], new_state[f"v.{key}"] = m, v
    return new_params, new_state


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """The EMA decay used at update number ``step`` (0 for the first update).

    warmup=True: 0 at step 0 (the EMA starts as a copy of the params), then
                 min(decay, (1 + step) / (10 + step))
      the warm-up of TensorFlow's ExponentialMovingAverage(num_updates) and of diffusers' EMAModel
      (use_ema_warmup=False), which also returns 0 at its first update. Early averages then forget
      the random initialisation quickly; the decay reaches 0.9999 after about 90000 updates.
    warmup=False: ``decay`` at every step (improved DDPM, with the EMA initialised to the params).
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
    if not warmup:
        return float(decay)
    return 0.0 if step == 0 else min(float(decay), (1.0 + step) / (10.0 + step))


def ema_update(ema: dict, params: dict, decay: float, step: int, warmup: bool = True) -> dict:
    """The exponential moving average of params after one more update.

    Math: ema = d ema + (1 - d) p, written p + d (ema - p) so that d = 0 gives p exactly and the
    EMA of a constant stays that constant exactly; d = ema_decay(step, decay, warmup).
    Returns a new dict with params' keys.
    """
    _check_same_keys("ema", ema, params)
    d = ema_decay(step, decay, warmup)
    return {key: p + d * (ema[key] - p) for key, p in params.items()}


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, decay: str = "constant",
                  min_lr: float = 0.0) -> float:
    """The learning rate at optimizer step ``step`` (0-based): linear warm-up, then constant or decay.

    Math: step < W:  base_lr * step / W                                    (linear warm-up from 0)
          else:      q = min((step - W) / (total_steps - W), 1)
                     constant: base_lr
                     linear:   min_lr + (base_lr - min_lr) (1 - q)
                     cosine:   min_lr + (base_lr - min_lr) (1 + cos(pi q)) / 2  (Loshchilov & Hutter 2017)
    The endpoints: lr(0) = 0 when W > 0, lr(W) = base_lr, lr(total_steps) = min_lr for the decays;
    past total_steps the rate stays at min_lr. transformers' get_*_schedule_with_warmup with
    min_lr = 0.
    """
    _check_schedule(step, base_lr, warmup_steps, total_steps, decay, min_lr)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if decay == "constant":
        return float(base_lr)
    q = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    shape = 1.0 - q if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * q))
    return base_lr * shape + min_lr * (1.0 - shape)  # exact at both ends: shape = 1 and shape = 0


def global_norm(grads: dict):
    """sqrt(sum over keys and entries of g^2): a 0-d array in the grads' backend and dtype."""
    if not grads:
        raise ValueError("grads must be a non-empty dict of arrays")
    total = None
    for g in grads.values():
        xp = namespace(g)
        square = xp.sum(g * g)
        total = square if total is None else total + square
    return xp.sqrt(total)


def clip_grad_norm(grads: dict, max_norm: float) -> tuple[dict, Any]:
    """Scale all gradients together so that their global norm is at most max_norm.

    Math: g <- g * max_norm / max(||g||, max_norm),  ||g|| = global_norm(grads)   (Pascanu et al. 2013)
    The factor is exactly 1 when ||g|| <= max_norm, so small gradients come back unchanged bit for
    bit; the direction is always kept. Unlike torch.nn.utils.clip_grad_norm_ there is no 1e-6 in the
    denominator, so a clipped norm equals max_norm up to rounding. The factor stays on the device (no
    host read); a non-finite norm is returned for the caller to check.

    Returns (new grads, the norm before clipping as a 0-d array).
    """
    if not 0.0 < max_norm < math.inf:
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}")
    norm = global_norm(grads)
    xp = namespace(norm)
    factor = max_norm / xp.maximum(norm, xp.full_like(norm, max_norm))
    return {key: g * factor for key, g in grads.items()}, norm


# --- validation at the boundary ---------------------------------------------------------------


def _check_same_keys(name: str, d: dict, params: dict, shapes: bool = True) -> None:
    if set(d) != set(params):
        missing, extra = sorted(set(params) - set(d)), sorted(set(d) - set(params))
        raise ValueError(f"{name} must have the keys of params; missing {missing}, unexpected {extra}")
    for key, p in params.items() if shapes else ():
        if d[key].shape != p.shape:
            raise ValueError(f"{name}[{key!r}] must have shape {p.shape}, got {d[key].shape}")


def _check_adamw(params, grads, state, lr, beta1, beta2, eps, weight_decay) -> None:
    _check_same_keys("grads", grads, params)
    moments = {k: v for k, v in state.items() if k != "step"}
    expected = {f"{s}.{k}": p for k in params for s, p in (("m", params[k]), ("v", params[k]))}
    if "step" not in state:
        raise ValueError("state must hold 'step' (make it with adamw_init(params))")
    _check_same_keys("state", moments, expected)
    if isinstance(lr, dict):
        _check_same_keys("lr", lr, params, shapes=False)
    for key, rate in (lr.items() if isinstance(lr, dict) else [(None, lr)]):
        if not 0.0 <= rate < math.inf:
            raise ValueError(f"lr{'' if key is None else f'[{key!r}]'} must be a finite number >= 0, got {rate!r}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {beta!r}")
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not 0.0 <= weight_decay < math.inf:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def _check_schedule(step, base_lr, warmup_steps, total_steps, decay, min_lr) -> None:
    for name, value in (("step", step), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps must be < total_steps, got {warmup_steps} and {total_steps}")
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")
    if not 0.0 <= min_lr <= base_lr < math.inf:
        raise ValueError(f"need 0 <= min_lr <= base_lr < inf, got min_lr={min_lr!r}, base_lr={base_lr!r}")
