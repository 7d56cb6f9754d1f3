"""2x resampling of NHWC activations: nearest-neighbour upsampling and 2x2 average pooling.

The U-Net's "up" path is upsample2x then a 3x3 conv (ADM's Upsample); its "down" path is a stride-2
conv (conv2d_forward(..., stride=2)) or avg_pool2x (ADM's Downsample without conv). Both are linear
maps and each one's backward is the other one up to a factor of 4:

    upsample2x^T = upsample2x_backward = 4 * avg_pool2x_forward
    avg_pool2x^T = avg_pool2x_backward = upsample2x_forward / 4

Written with reshape + broadcast / sum over the (2, 2) block axes: no loops, Array API only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from refdiff.backend import device, namespace


class Resample2xCache(NamedTuple):
    """The input's shape, all the backward of a linear resampling needs."""

    x_shape: tuple  # (N, H, W, C)


def _check_nhwc(name: str, x: Any) -> None:
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must be a real floating array, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, H, W, C) (NHWC), got {x.shape}")


def _check_dy(dy: Any, expected: tuple) -> None:
    if tuple(dy.shape) != tuple(expected):
        raise ValueError(f"dy must have the forward output's shape {tuple(expected)}, got {dy.shape}")


def _spread_2x2(a: Any) -> Any:
    """A fresh (N, H, 2, W, 2, C) array with a (N, H, 1, W, 1, C) broadcast along both 2-axes.

    Written by assignment into a new array: reshaping a broadcast_to view can return a read-only
    view of ``a`` itself (H = W = 1 on NumPy), and a layer's output must never alias its input.
    """
    xp = namespace(a)
    N, H, _, W, _, C = a.shape
    out = xp.empty((N, H, 2, W, 2, C), dtype=a.dtype, device=device(a))
    out[...] = a
    return out


def upsample2x_forward(x: Any):
    """Nearest-neighbour 2x upsampling: every pixel becomes a 2x2 block.

    Math: y[n, 2h + a, 2w + c, :] = x[n, h, w, :] for a, c in {0, 1}

    x: (N, H, W, C). Returns y: (N, 2H, 2W, C) like x, and a Resample2xCache.
    """
    _check_nhwc("x", x)
    xp = namespace(x)
    N, H, W, C = x.shape
    y = _spread_2x2(xp.reshape(x, (N, H, 1, W, 1, C)))  # (N, H, 2, W, 2, C)
    return xp.reshape(y, (N, 2 * H, 2 * W, C)), Resample2xCache(tuple(x.shape))


def upsample2x_backward(dy: Any, cache: Resample2xCache):
    """Gradient of upsample2x_forward: each input pixel was copied to 4 outputs, so their dy add up.

    Math: dx[n, h, w, :] = sum_{a, c in {0, 1}} dy[n, 2h + a, 2w + c, :]

    dy: (N, 2H, 2W, C). Returns dx: (N, H, W, C) like dy.
    """
    N, H, W, C = cache.x_shape
    _check_dy(dy, (N, 2 * H, 2 * W, C))
    xp = namespace(dy)
    return xp.sum(xp.reshape(dy, (N, H, 2, W, 2, C)), axis=(2, 4))


def avg_pool2x_forward(x: Any):
    """2x2 average pooling with stride 2.

    Math: y[n, h, w, :] = 1/4 sum_{a, c in {0, 1}} x[n, 2h + a, 2w + c, :]

    x: (N, H, W, C) with H and W even. Returns y: (N, H/2, W/2, C) like x, and a Resample2xCache.
    """
    _check_nhwc("x", x)
    N, H, W, C = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"x must have even height and width for 2x2 pooling, got (H, W) = {(H, W)}")
    xp = namespace(x)
    y = xp.mean(xp.reshape(x, (N, H // 2, 2, W // 2, 2, C)), axis=(2, 4))
    return y, Resample2xCache(tuple(x.shape))


def avg_pool2x_backward(dy: Any, cache: Resample2xCache):
    """Gradient of avg_pool2x_forward: each output spreads dy / 4 over its 2x2 block.

    Math: dx[n, 2h + a, 2w + c, :] = dy[n, h, w, :] / 4 for a, c in {0, 1}

    dy: (N, H/2, W/2, C). Returns dx: (N, H, W, C) like dy.
    """
    N, H, W, C = cache.x_shape
    _check_dy(dy, (N, H // 2, W // 2, C))
    xp = namespace(dy)
    dx = _spread_2x2(xp.reshape(dy * 0.25, (N, H // 2, 1, W // 2, 1, C)))  # (N, H/2, 2, W/2, 2, C)
    return xp.reshape(dx, (N, H, W, C))
