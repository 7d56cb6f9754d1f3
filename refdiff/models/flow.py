"""The RealNVP normalizing flow (Dinh et al. 2017) with hand-derived backprop: affine coupling layers, their exact
inverse and log-determinant, the exact log-likelihood and its gradient, and bits/dim of discrete data through
uniform dequantisation, over either coder (plan of couplings, masks, s/t nets):

    FlowConfig     refdiff.models.flow_conv: images; checkerboard and channel masks around squeezes, conv s/t nets
    MLPFlowConfig  refdiff.models.flow_mlp: points (the 2-D toys); alternating coordinate masks, MLP s/t nets

    coupling (mask b):  y = x * exp(s) + t,  s = (1 - b) s_bound tanh(s_raw / s_bound),  t = (1 - b) t_raw,
                        [s_raw | t_raw] = net(b * x)                      (Dinh et al. 2017, eqs. 7-9)
                        log |det dy/dx| = sum s                           (ibid., eq. 6: the Jacobian is triangular)
    flow:               z = f(x) = f_K(...f_1(x)),  log p(x) = log N(z; 0, I) + sum_k log |det J_k|   (ibid., eq. 3)

s is bounded, |s| < s_bound (2 by default: one coupling scales a value by at most e^2), by s_bound tanh(s_raw /
s_bound), which is s_raw near 0: an unbounded exp(s) can overflow early in training. Class-conditional
(cfg.num_classes = K): every s/t net also sees the label y (its embedding's row K is the null label a label-free
call uses), so p(x | y) is exact too. Parameters are one flat dict (param_shapes(cfg)); the family's functions
dispatch on the config's type.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, device, namespace
from refdiff.models import flow_conv, flow_mlp
from refdiff.models.common import (by_config, check_init, check_int, check_params, check_params_like, count_params,
                                   lecun_init, same_library)
from refdiff.models.flow_conv import FlowConfig
from refdiff.models.flow_mlp import MLPFlowConfig

LOG_2PI = math.log(2.0 * math.pi)
CODERS = {FlowConfig: flow_conv, MLPFlowConfig: flow_mlp}  # config type -> the module of its coder


def _coder(cfg: Any):
    """The coder module of cfg's type, or a ValueError naming the allowed configs."""
    return by_config(cfg, CODERS)


def param_shapes(cfg: FlowConfig | MLPFlowConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and log_prob_backward."""
    return _coder(cfg).param_shapes(cfg)


def param_count(cfg: FlowConfig | MLPFlowConfig) -> int:
    """Number of scalar parameters of the flow ``cfg`` describes (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: FlowConfig | MLPFlowConfig, generator: Generator, dtype: Any = np.float32) -> dict:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: w ~ N(0, 1 / fan_in) (refdiff.models.common.lecun_init), biases 0; every s/t net's last layer 0, so
          s = t = 0 and each coupling, and the flow, starts as the identity (Glow's zero initialisation); the
          label tables of a conditional flow 0 (the labels' effect is learned from there)
    """
    _coder(cfg)  # raises, naming the allowed configs
    dt = check_init(cfg, type(cfg), generator, dtype)
    return lecun_init(param_shapes(cfg), generator, dt, zero=lambda key: key.endswith(".out.w"))


# ---------------------------------------------------------------------------------- one coupling

class CouplingCache(NamedTuple):
    coder: Any
    b: Any     # the mask, broadcastable to x
    x: Any     # the coupling's input
    tanh: Any  # tanh(s_raw / s_bound)
    exp_s: Any
    net: Any   # the s/t net's cache


def _scale_shift(params: dict, cfg: Any, step: Any, h: Any, labels: Any):
    """(b, s, t, tanh(s_raw / s_bound), net cache) of coupling ``step`` at h (its input x, or its output y: b * x =
    b * y, so the inverse sees the same s and t), with labels (N,) or None."""
    xp, coder = namespace(h), CODERS[type(cfg)]
    b = coder.mask(step, h)
    out, net = coder.st_forward(params, step.name, b * h, labels)  # (..., 2 C)
    C = h.shape[-1]
    th = xp.tanh(out[..., :C] / cfg.s_bound)
    s = (1.0 - b) * (cfg.s_bound * th)  # bounded scale: 0 on the conditioning half (Dinh et al. 2017, eq. 9)
    t = (1.0 - b) * out[..., C:]
    return b, s, t, th, net


def _per_sample_sum(a: Any) -> Any:
    """Sum over every axis but the first: (N, ...) -> (N,)."""
    xp = namespace(a)
    return xp.sum(xp.reshape(a, (a.shape[0], -1)), axis=1)  # (N, ...) -> (N, D) -> (N,)


def coupling_forward(params: dict, cfg: Any, step: Any, x: Any, labels: Any = None):
    """One affine coupling: y = x * exp(s) + t (Dinh et al. 2017, eq. 9), log |det dy/dx| = sum s (eq. 6).

    x: (N, H, W, C) or (N, D) in the flow's layout; labels: (N,) in [0, K] for a conditional flow, else None.
    Returns y like x, the log-determinant (N,), a CouplingCache.
    """
    b, s, t, th, net = _scale_shift(params, cfg, step, x, labels)
    exp_s = namespace(x).exp(s)
    return x * exp_s + t, _per_sample_sum(s), CouplingCache(CODERS[type(cfg)], b, x, th, exp_s, net)


def coupling_inverse(params: dict, cfg: Any, step: Any, y: Any, labels: Any = None) -> Any:
    """The coupling's exact inverse: x = (y - t) * exp(-s), s and t from b * y = b * x (Dinh et al. 2017, eq. 8)."""
    _, s, t, _, _ = _scale_shift(params, cfg, step, y, labels)
    return (y - t) * namespace(y).exp(-s)


def coupling_backward(dy: Any, dlogdet: Any, c: CouplingCache) -> tuple[dict, Any]:
    """Gradients of L with dL/dy = dy and dL/dlogdet = dlogdet (N,): (grads of the s/t net, dx like x).

    Math: y = x e^s + t,  logdet = sum s,  s = (1 - b) s_bound tanh(r),  r = s_raw / s_bound,  t = (1 - b) t_raw
          ds = dy x e^s + dlogdet;  ds_raw = (1 - b) ds (1 - tanh^2 r);  dt_raw = (1 - b) dy
          d(b x) from the net's backward of [ds_raw | dt_raw];  dx = dy e^s + b d(b x)
    """
    xp = namespace(dy)
    w = xp.reshape(dlogdet, (dlogdet.shape[0],) + (1,) * (dy.ndim - 1))  # (N,) -> (N, 1, ...)
    ds = dy * c.x * c.exp_s + w  # logdet = sum s: each s gets dlogdet
    ds_raw = (1.0 - c.b) * ds * (1.0 - c.tanh * c.tanh)  # d(s_bound tanh(s_raw / s_bound)) / ds_raw
    dt_raw = (1.0 - c.b) * dy
    grads, dxb = c.coder.st_backward(xp.concat((ds_raw, dt_raw), axis=-1), c.net)
    return grads, dy * c.exp_s + c.b * dxb  # x reaches y directly and, masked, through the net


# ---------------------------------------------------------------------------------- the flow

class FlowCache(NamedTuple):
    cfg: Any
    z: Any  # (N, D)
    couplings: tuple  # a CouplingCache per coupling, None per squeeze, in plan order
    h_shape: tuple  # the last activation's shape, z before flattening


def flow_forward(params: dict, cfg: FlowConfig | MLPFlowConfig, x: Any, y: Any = None):
    """z = f(x | y) and log |det df/dx|, through every step of the coder's plan.

    x: (N, C, S, S) images or (N, D) points, in params' library, device and dtype; y: (N,) labels in [0, K] (K the
    null label) of x's library and device, or None (the null label of a conditional flow; None for an
    unconditional one). Returns z (N, D) like x, the log-determinant (N,), and a FlowCache.
    """
    coder = _check(params, cfg, x)
    xp, y = namespace(x), _labels(cfg, y, x)
    h = coder.to_flow(x)  # images: (N, C, S, S) -> (N, S, S, C)
    logdet = xp.zeros((x.shape[0],), dtype=x.dtype, device=device(x))
    caches = []
    for step in coder.plan(cfg):
        if step.kind == "squeeze":
            h, c = flow_conv.squeeze(h), None  # a permutation: log |det| = 0
        else:
            h, ld, c = coupling_forward(params, cfg, step, h, y)
            logdet = logdet + ld  # log |det| of a composition is the sum (Dinh et al. 2017, eq. 3)
        caches.append(c)
    z = xp.reshape(h, (x.shape[0], cfg.dims))  # (N, ...) -> (N, D)
    return z, logdet, FlowCache(cfg, z, tuple(caches), tuple(h.shape))


def flow_inverse(params: dict, cfg: FlowConfig | MLPFlowConfig, z: Any, y: Any = None) -> Any:
    """x = f^{-1}(z | y), exactly: every step's inverse in reverse order.

    z: (N, D) in params' library, device and dtype; y: as flow_forward's. Returns x (N, C, S, S) or (N, D) like z.
    """
    coder = _coder(cfg)
    check_params(params, cfg, type(cfg), param_shapes)
    xp, like = namespace(z), next(iter(params.values()))
    if z.ndim != 2 or z.shape[1] != cfg.dims or not same_library(z, like) or z.dtype != like.dtype:
        raise ValueError(f"z must be an (N, {cfg.dims}) array (N, cfg.dims) of params' library, device and dtype "
                         f"({like.dtype}), got shape {tuple(z.shape)} and dtype {z.dtype}")
    y = _labels(cfg, y, z)
    h = xp.reshape(z, coder.latent_shape(cfg, z.shape[0]))  # (N, D) -> the last activation's shape
    for step in reversed(coder.plan(cfg)):
        h = flow_conv.unsqueeze(h) if step.kind == "squeeze" else coupling_inverse(params, cfg, step, h, y)
    return coder.from_flow(h)


class LogProb(NamedTuple):
    """log p(x) of each sample and its two terms, in nats: log_prob = log_prior + logdet."""

    log_prob: Any   # (N,)
    log_prior: Any  # (N,) log N(z; 0, I)
    logdet: Any     # (N,) log |det df/dx|


def log_prob_forward(params: dict, cfg: FlowConfig | MLPFlowConfig, x: Any,
                     y: Any = None) -> tuple[LogProb, FlowCache]:
    """The exact log-density of each sample (change of variables).

    Math: log p(x | y) = log N(f(x | y); 0, I) + log |det df/dx|,  log N(z; 0, I) = -(1/2) sum_d (z_d^2 + log 2 pi)
          (Dinh et al. 2017, eq. 3)

    x, y: as flow_forward's. Returns (LogProb, FlowCache).
    """
    z, logdet, cache = flow_forward(params, cfg, x, y)
    log_prior = -0.5 * namespace(z).sum(z * z + LOG_2PI, axis=1)  # (N,)
    return LogProb(log_prior + logdet, log_prior, logdet), cache


def log_prob_backward(dlogp: Any, cache: FlowCache) -> dict:
    """Gradients of L = sum_n dlogp_n log p(x_n) with respect to every parameter (param_shapes' keys and order).

    Math: dz = -dlogp z (the prior's term); dlogdet = dlogp for every coupling (logdet is their sum);
          then each step's backward in reverse (a squeeze's is unsqueeze: a permutation's adjoint is its inverse)

    dlogp: (N,) (training uses -1 / (B D): the mean negative log-likelihood per dimension). Returns grads like the
    params.
    """
    xp, cfg = namespace(dlogp), cache.cfg
    dz = -xp.reshape(dlogp, (dlogp.shape[0], 1)) * cache.z  # (N, D)
    dh = xp.reshape(dz, cache.h_shape)  # (N, D) -> the last activation's shape
    grads = {}
    for step, c in zip(reversed(_coder(cfg).plan(cfg)), reversed(cache.couplings)):
        if step.kind == "squeeze":
            dh = flow_conv.unsqueeze(dh)
        else:
            g, dh = coupling_backward(dh, dlogp, c)
            grads.update(g)
    return {k: grads[k] for k in param_shapes(cfg)}  # param_shapes' order


def _labels(cfg: Any, y: Any, x: Any) -> Any:
    """The labels every coupling sees: None for an unconditional flow (y must be None), y itself, or the null label
    K for every sample when y is None; a ValueError names y unless it is an (N,) array of x's library and device."""
    if cfg.num_classes is None:
        if y is not None:
            raise ValueError("y must be None for an unconditional flow (cfg.num_classes is None)")
        return None
    xp, N = namespace(x), x.shape[0]
    if y is None:
        return xp.full((N,), cfg.num_classes, dtype=xp.int64, device=device(x))  # the null label
    if not same_library(y, x) or y.ndim != 1 or y.shape[0] != N:
        raise ValueError(f"y must be an (N,) array of labels of x's library and device with N = {N} (x's batch), "
                         f"got {type(y).__name__} of shape {tuple(y.shape)}")
    return y


def _check(params: dict, cfg: Any, x: Any):
    """params of cfg in x's library, device and dtype; x the coder's data. Returns the coder."""
    coder = _coder(cfg)
    check_params(params, cfg, type(cfg), param_shapes)
    coder.check_x(cfg, x)
    check_params_like(params, x)
    return coder


# ------------------------------------------------------------------- discrete data: dequantisation

def dequantize(x: Any, u: Any, levels: int) -> Any:
    """Uniform dequantisation of data on ``levels`` evenly spaced values of [-1, 1] (Theis et al. 2016; Dinh et al.
    2017, Sec. 4.1): each value's bin of width 2 / levels, filled uniformly.

    Math: k = (x + 1) (levels - 1) / 2 in {0, ..., levels - 1}  (the data's grid index)
          v = (k + u) / levels in [0, 1),  u ~ U[0, 1)  (x + U[0, 1 / levels) in units where the grid is k / levels)
          x' = 2 v - 1 in [-1, 1)                        (rescaled to the flow's range: Jacobian 2 per dimension)

    x: any shape, values on the grid; u: like x, in [0, 1) (drawn by the caller, docs/design.md rule 4).
    Returns x' like x.
    """
    check_int("levels", levels, 2)
    xp = namespace(x)
    if tuple(u.shape) != tuple(x.shape) or not same_library(u, x) or u.dtype != x.dtype:
        raise ValueError(f"u must be an array of x's shape {tuple(x.shape)}, library, device and dtype, got "
                         f"{type(u).__name__} of shape {tuple(u.shape)} and dtype {u.dtype}")
    low, high = float(xp.min(u)), float(xp.max(u))  # two device-to-host reads
    if not 0.0 <= low <= high < 1.0:
        raise ValueError(f"u must lie in [0, 1), got values in [{low}, {high}]")
    k = xp.round((x + 1.0) * ((levels - 1) / 2))
    return (k + u) * (2.0 / levels) - 1.0


def quantize(v: Any, levels: int) -> Any:
    """dequantize's left inverse: the bin of x' in [-1, 1) back to the data's grid value (values outside [-1, 1)
    go to the end bins). Math: k = clip(floor((x' + 1) levels / 2), 0, levels - 1); x = 2 k / (levels - 1) - 1."""
    check_int("levels", levels, 2)
    xp = namespace(v)
    k = xp.clip(xp.floor((v + 1.0) * (levels / 2)), 0.0, float(levels - 1))
    return k * (2.0 / (levels - 1)) - 1.0


def bits_per_dim(log_prob: Any, dims: int, levels: int | None = None) -> Any:
    """-log2 of a density per dimension, or with ``levels`` an upper bound on -log2 P(x) / D of the discrete data.

    Math: continuous: -log p(x) / (D ln 2)
          discrete, log_prob the flow's log p(x') at x' = dequantize(x, u):
              log P(x) = log E_u[p(x') (2 / levels)^D] >= E_u[log p(x')] - D log(levels / 2)   (Jensen)
              bits/dim <= E_u[-log p(x')] / (D ln 2) + log2(levels / 2)
          the log2(levels / 2) is the rescaling's Jacobian: bins of probability mass p(x') (2 / levels)^D

    log_prob: any shape, in nats; dims: D >= 1; levels: None or >= 2. Returns like log_prob.
    """
    check_int("dims", dims, 1)
    bpd = -log_prob / (dims * math.log(2.0))
    if levels is None:
        return bpd
    check_int("levels", levels, 2)
    return bpd + math.log2(levels / 2)
