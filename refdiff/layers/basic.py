"""Elementwise and dense layers as forward/backward pairs: linear, SiLU, inverted dropout.

Each ``*_forward`` returns ``(y, cache)``; each ``*_backward(dy, cache)`` returns fresh gradients
(docs/design.md rule 5). Activations are channels-last: images (N, H, W, C), vectors (N, C). SiLU is
Elfwing et al. 2018 / Hendrycks & Gimpel 2016 ("swish"); dropout is Srivastava et al. 2014 in its
inverted form (scaled at training time, identity at evaluation).

Each function here is the textbook form, one derivative step a line; where a faster form of the same
math exists (``linear_backward``, ``sigmoid``, ``silu_backward``) it is in refdiff/layers/fast.py,
and the function starts by handing over to it on the speed layer (refdiff.speed).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff import speed
from refdiff.backend import namespace
from refdiff.layers import fast


def check_shape(name: str, a: Any, expected: tuple[int, ...]) -> None:
    """Raise a ValueError naming ``name`` unless ``a.shape == expected``."""
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(a.shape)}")


# ----------------------------------------------------------------------------------------- linear

class LinearCache(NamedTuple):
    x2: Any  # (M, C_in) the input with its leading axes flattened
    w: Any  # (C_in, C_out)
    x_shape: tuple[int, ...]  # (..., C_in) the input's shape, to restore dx


def linear_forward(x: Any, w: Any, b: Any) -> tuple[Any, LinearCache]:
    """Affine map of the last axis.

    Math: y = x @ w + b

    x: (..., C_in); w: (C_in, C_out); b: (C_out,). Returns y (..., C_out) like x.
    Caches x (flattened to (M, C_in)) and w.
    """
    if x.ndim < 1:
        raise ValueError("x must have a channel axis (..., C_in), got a 0-d array")
    if w.ndim != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(f"w must have shape ({x.shape[-1]}, C_out) to match x's last axis, got {tuple(w.shape)}")
    check_shape("b", b, (w.shape[1],))
    xp = namespace(x, w, b)
    lead = tuple(x.shape[:-1])
    x2 = xp.reshape(x, (math.prod(lead), x.shape[-1]))  # (M, C_in), M = prod(...)
    y2 = xp.matmul(x2, w) + b  # (M, C_out)
    y = xp.reshape(y2, lead + (w.shape[1],))  # (..., C_out)
    return y, LinearCache(x2, w, tuple(x.shape))


def linear_backward(dy: Any, cache: LinearCache) -> tuple[Any, Any, Any]:
    """Gradients of linear_forward: returns (dx, dw, db).

    Math: dx = dy @ w^T,  dw = x^T @ dy,  db = sum over rows of dy

    dy: (..., C_out). Returns dx (..., C_in), dw (C_in, C_out), db (C_out,).
    """
    if speed.enabled():
        return fast.linear_backward(dy, cache)
    xp = namespace(dy)
    x2, w, x_shape = cache
    dy2 = xp.reshape(dy, (x2.shape[0], w.shape[1]))  # (M, C_out)
    dx = xp.reshape(xp.matmul(dy2, xp.matrix_transpose(w)), x_shape)  # (M, C_in) -> (..., C_in)
    dw = xp.matmul(xp.matrix_transpose(x2), dy2)  # (C_in, M) @ (M, C_out) -> (C_in, C_out)
    db = xp.sum(dy2, axis=0)  # (C_out,)
    return dx, dw, db


# ------------------------------------------------------------------------------------------- silu

class SiluCache(NamedTuple):
    x: Any  # the input
    sig: Any  # sigmoid(x), like x


def sigmoid(x: Any) -> Any:
    """Logistic sigmoid 1 / (1 + exp(-x)), elementwise, without overflow.

    Math: sigmoid(x) = (1 + tanh(x / 2)) / 2

    The same function written with tanh, which is bounded: no exp of a large number (the naive form
    computes exp(-x) = inf for x < -88 in float32), and one transcendental (4x faster on NumPy than
    exp(-|x|) with a where(); measured in docs/performance.md). The absolute error is about one
    rounding of 1 (6e-8 in float32), so for x < -17 the float32 result is 0 where the true value is
    below 3e-8.
    """
    if speed.enabled():
        return fast.sigmoid(x)
    return 0.5 + 0.5 * namespace(x).tanh(0.5 * x)


def silu_forward(x: Any) -> tuple[Any, SiluCache]:
    """SiLU / swish activation.

    Math: y = x * sigmoid(x)

    x: any shape. Returns y like x; caches x and sigmoid(x).
    """
    sig = sigmoid(x)
    return x * sig, SiluCache(x, sig)


def silu_backward(dy: Any, cache: SiluCache) -> Any:
    """Gradient of silu_forward: returns dx.

    Math: dx = dy * (sig + x * sig * (1 - sig)),  sig = sigmoid(x): the product rule on y = x * sig,
          with sig' = sig * (1 - sig)
    """
    if speed.enabled():
        return fast.silu_backward(dy, cache)
    x, sig = cache
    return dy * (sig + x * sig * (1.0 - sig))


# ---------------------------------------------------------------------------------------- dropout

class DropoutCache(NamedTuple):
    keep: Any  # mask / (1 - p) in x's dtype, or None when the layer was the identity


def dropout_forward(x: Any, p: float, generator: Any = None, train: bool = True) -> tuple[Any, DropoutCache]:
    """Inverted dropout: zero each entry with probability p, scale the survivors by 1 / (1 - p).

    Math: m = [u >= p], u ~ U[0, 1) drawn by ``generator``;  y = x * m / (1 - p)   (so E[y] = x)

    x: any shape; p: drop probability in [0, 1); generator: a refdiff.backend.Generator (host
    draws, so one seed gives the same mask on every backend), required when train and p > 0.
    When not training or p == 0 the layer is the identity and returns x itself.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a drop probability in [0, 1), got {p!r}")
    if not train or p == 0.0:
        return x, DropoutCache(None)
    if generator is None:
        raise ValueError(f"generator is required for dropout when train=True and p > 0 (got p={p}); "
                         "pass a refdiff.backend.Generator, or train=False")
    xp = namespace(x)
    u = generator.uniform(tuple(x.shape), like=x)  # like x: library, device, dtype
    keep = xp.astype(u >= p, x.dtype) * (1.0 / (1.0 - p))  # m / (1 - p)
    return x * keep, DropoutCache(keep)


def dropout_backward(dy: Any, cache: DropoutCache) -> Any:
    """Gradient of dropout_forward: returns dx = dy * m / (1 - p) (a copy of dy for the identity)."""
    if cache.keep is None:
        return namespace(dy).asarray(dy, copy=True)
    return dy * cache.keep
