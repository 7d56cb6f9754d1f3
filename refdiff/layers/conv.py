"""2-D convolution in NHWC: forward/backward pair as matrix products over kernel offsets.

Math (cross-correlation, PyTorch's and every deep-learning library's "convolution"):

    y[n, h, w, o] = b[o] + sum_{i, j < k} sum_c x_pad[n, s h + i, s w + j, c] * w[i, j, c, o]

with x_pad the input zero-padded by p on each side of H and W, stride s in {1, 2} and
Ho = (H + 2p - k) // s + 1, Wo = (W + 2p - k) // s + 1. For each kernel offset (i, j) the window
x_pad[:, i : i + s Ho : s, j : j + s Wo : s, :] is an (N, Ho, Wo, C_in) array and the sum over c is one
matrix product with w[i, j] (C_in, C_out): "shifted GEMM", k*k products, no k*k-times-larger im2col
buffer. ``conv2d_forward`` is that loop and ``conv2d_backward`` its chain rule step by step, in the
same loop (derivation: docs/derivations/conv2d.md): the textbook forms.

Their speed forms are in the section "speed layer" at the end of this module (not in
refdiff/layers/fast.py, because they share the window geometry ``_pad`` / ``_window`` with the
textbook forms). At stride 1 with "same" padding (k = 2p + 1: every 3x3 convolution of the U-Nets)
they compute on the *flat grid* (refdiff/layers/conv_grid.py): the batch zero-padded with the padding
shared between neighbouring rows and images and flattened to rows, where each kernel offset's window
is one contiguous row slice, so each offset is one 2-D product that BLAS accumulates into the output
in place, with no window copies, temporaries or separate additions; the grid's padding positions are
computed too and cropped. Elsewhere ``conv2d_forward_fast`` lays the k*k windows side by side for thin
inputs (k*k*C_in <= IM2COL_DEPTH, where that buffer is small and one deep product beats k*k shallow
ones) and multiplies each window as it lies otherwise; ``conv2d_backward_fast`` computes the same
gradients with larger products: dx at stride 1 as a correlation of dy with the flipped kernel, dw as
one long product per offset, db as a product with a ones vector (measurements: docs/performance.md).
Each textbook function starts by handing over to its speed form on the speed layer (refdiff.speed); a
cache from the flat grid goes to the speed backward whichever path is selected when it runs.

Layouts: activations (N, H, W, C) (NHWC, chosen by measurement, see the derivation page); weights
(kH, kW, C_in, C_out); bias (C_out,). ``weight_from_torch`` / ``weight_to_torch`` convert to and from
PyTorch's (C_out, C_in, kH, kW). ``conv2d_forward_naive`` is the loop-over-pixels oracle of the tests.
``upsample2x_conv`` is ADM's Upsample (nearest 2x, then a 3x3 conv) for a forward that keeps no cache;
its speed form computes the four output phases as 2 x 2 correlations of the input on its flat grid.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from refdiff import speed
from refdiff.backend import device, namespace, to_numpy
from refdiff.layers import conv_grid as grid
from refdiff.layers import fast
from refdiff.layers.resample import upsample2x_forward

STRIDES = (1, 2)


class Conv2dCache(NamedTuple):
    """What conv2d_backward needs: the padded input, the weights and the geometry."""

    x_pad: Any  # (N, H + 2p, W + 2p, C_in), x itself when p = 0; or the flat grid's rows (conv_grid.rows)
    w: Any  # (k, k, C_in, C_out)
    stride: int
    padding: int
    x_shape: tuple[int, ...]  # (N, H, W, C_in)


def _check_geometry(x: Any, w: Any, b: Any, stride: Any, padding: Any) -> int:
    """Validate conv2d_forward's arguments; return the padding (k // 2 when None)."""
    if not isinstance(stride, (int, np.integer)) or isinstance(stride, bool) or stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}")
    xp = namespace(x, w, b)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must be a real floating array, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, H, W, C_in) (NHWC), got {x.shape}")
    if w.ndim != 4 or w.shape[0] != w.shape[1] or w.shape[0] < 1 or w.shape[2] != x.shape[3]:
        raise ValueError(f"w must have shape (k, k, C_in, C_out) with C_in = {x.shape[3]} (x's channels), "
                         f"got {w.shape}")
    if b.shape != (w.shape[3],):
        raise ValueError(f"b must have shape (C_out,) = ({w.shape[3]},), got {b.shape}")
    if w.dtype != x.dtype or b.dtype != x.dtype:
        raise ValueError(f"w and b must have x's dtype {x.dtype}, got {w.dtype} and {b.dtype}")
    k = w.shape[0]
    if padding is None:
        padding = k // 2
    if not isinstance(padding, (int, np.integer)) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding must be None or an integer >= 0, got {padding!r}")
    H, W = x.shape[1:3]
    if min(H, W) + 2 * padding < k:
        raise ValueError(f"x's height and width (H, W) = {(H, W)} with padding {padding} must be at least "
                         f"the kernel size {k}")
    return int(padding)


def _window_slices(i: int, j: int, stride: int, Ho: int, Wo: int) -> tuple[slice, slice]:
    """Rows i, i + s, ..., i + s (Ho - 1) and columns j, ..., j + s (Wo - 1): where tap (i, j) reads."""
    return slice(i, i + stride * (Ho - 1) + 1, stride), slice(j, j + stride * (Wo - 1) + 1, stride)


def _window(a: Any, i: int, j: int, stride: int, Ho: int, Wo: int) -> Any:
    """The (N, Ho, Wo, C) view of padded a that kernel offset (i, j) multiplies: a[:, rows, cols, :]."""
    rows, cols = _window_slices(i, j, stride, Ho, Wo)
    return a[:, rows, cols, :]


def _pad(a: Any, p: int) -> Any:
    """a (N, H, W, C) with p zeros on each side of H and W: (N, H + 2p, W + 2p, C); a itself if p = 0.

    The Array API has no pad(), so this allocates zeros and copies a into the middle.
    """
    if p == 0:
        return a
    xp = namespace(a)
    N, H, W, C = a.shape
    out = xp.zeros((N, H + 2 * p, W + 2 * p, C), dtype=a.dtype, device=device(a))
    out[:, p : p + H, p : p + W, :] = a
    return out


def conv2d_forward(x: Any, w: Any, b: Any, stride: int = 1, padding: int | None = None):
    """2-D convolution (cross-correlation) with zero padding, as k*k matrix products.

    Math: y[n, h, w, :] = b + sum_{i, j} x_pad[n, s h + i, s w + j, :] @ w[i, j]

    x: (N, H, W, C_in); w: (k, k, C_in, C_out); b: (C_out,); stride s in {1, 2}; padding p >= 0 zeros
    on each side (default k // 2: "same" size for odd k at stride 1).
    Returns y: (N, Ho, Wo, C_out), Ho = (H + 2p - k) // s + 1 (same for Wo), like x (library, device,
    dtype), and a Conv2dCache.
    """
    p = _check_geometry(x, w, b, stride, padding)
    if speed.enabled():
        return conv2d_forward_fast(x, w, b, stride, p)
    xp = namespace(x, w, b)
    N, H, W, _ = x.shape
    k, C_out = w.shape[0], w.shape[3]
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    x_pad = _pad(x, p)  # 1. zero padding: (N, H + 2p, W + 2p, C_in)
    y = xp.zeros((N, Ho, Wo, C_out), dtype=x.dtype, device=device(x))
    for i in range(k):  # 2. one matrix product per kernel offset: (N, Ho, Wo, C_in) @ (C_in, C_out)
        for j in range(k):
            y = y + _window(x_pad, i, j, stride, Ho, Wo) @ w[i, j, :, :]
    y = y + b  # 3. bias, broadcast over (N, Ho, Wo)
    return y, Conv2dCache(x_pad, w, stride, p, tuple(x.shape))


def upsample2x_conv(x: Any, w: Any, b: Any) -> Any:
    """ADM's Upsample with no cache (a sampling forward): nearest 2x upsampling, then a 3x3 "same"
    convolution.

    Math: y = conv2d_forward(upsample2x_forward(x), w, b)  (stride 1, padding 1)

    x: (N, H, W, C_in); w: (3, 3, C_in, C_out); b: (C_out,). Returns y (N, 2H, 2W, C_out) like x. The
    speed form (refdiff.layers.conv_grid.upsampled_forward) computes each of the four output phases as a
    2 x 2 correlation of x itself: 16 products where the convolution of the upsampled input makes 9 four
    times as long.
    """
    _check_geometry(x, w, b, 1, 1)
    if w.shape[0] != 3:
        raise ValueError(f"w must be a 3 x 3 kernel (3, 3, C_in, C_out), got shape {tuple(w.shape)}")
    if speed.enabled():
        return grid.upsampled_forward(x, w, b)
    h, _ = upsample2x_forward(x)
    return conv2d_forward(h, w, b)[0]


def _check_dy(dy: Any, cache: Conv2dCache) -> tuple[int, int]:
    """Raise unless dy has the forward output's shape and dtype; return (Ho, Wo)."""
    _, w, stride, p, (N, H, W, _) = cache
    k, C_out = w.shape[0], w.shape[3]
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    if dy.shape != (N, Ho, Wo, C_out) or dy.dtype != w.dtype:
        raise ValueError(f"dy must have the forward output's shape {(N, Ho, Wo, C_out)} and dtype "
                         f"{w.dtype}, got {dy.shape}, {dy.dtype}")
    return Ho, Wo


def conv2d_backward(dy: Any, cache: Conv2dCache):
    """Gradients of conv2d_forward: each forward step's chain rule, in the same loop.

    Math (for L with dL/dy = dy; derivation in docs/derivations/conv2d.md):
        db = sum_{n, h, w} dy[n, h, w, :]
        dw[i, j] = sum_{n, h, w} x_pad[n, s h + i, s w + j, :]^T dy[n, h, w, :]
        dx_pad[n, s h + i, s w + j, :] += dy[n, h, w, :] @ w[i, j]^T     for every (i, j), then
        dx = dx_pad[:, p : p + H, p : p + W, :]                          (undo the padding)

    dy: (N, Ho, Wo, C_out) like the forward's y. Returns fresh dx (N, H, W, C_in), dw (k, k, C_in,
    C_out), db (C_out,), like the forward's inputs. dx is the adjoint (transposed convolution) of the
    map x -> conv2d_forward(x, w, 0).
    """
    Ho, Wo = _check_dy(dy, cache)
    if speed.enabled() or cache.x_pad.ndim == 2:  # the flat grid's cache: its forward was the speed form
        return conv2d_backward_fast(dy, cache)
    x_pad, w, stride, p, _ = cache
    xp = namespace(dy, x_pad)
    N, Hp, Wp, C_in = x_pad.shape
    k, C_out = w.shape[0], w.shape[3]
    # 3. bias: y = ... + b broadcast over (N, Ho, Wo), so db sums dy over them.
    db = xp.sum(dy, axis=(0, 1, 2))
    # 2. every offset's product y += X_ij @ w[i, j] sends dy to w[i, j] and to the window X_ij.
    dy_3d = xp.reshape(dy, (N, Ho * Wo, C_out))
    dy_2d = xp.reshape(dy, (N * Ho * Wo, C_out))
    dw = xp.zeros(w.shape, dtype=w.dtype, device=device(w))
    dx_pad = xp.zeros(x_pad.shape, dtype=x_pad.dtype, device=device(x_pad))
    for i in range(k):
        for j in range(k):
            x_ij = xp.reshape(_window(x_pad, i, j, stride, Ho, Wo), (N, Ho * Wo, C_in))
            dw[i, j, :, :] = xp.sum(xp.matrix_transpose(x_ij) @ dy_3d, axis=0)  # (N, C_in, C_out) summed
            dx_ij = dy_2d @ xp.matrix_transpose(w[i, j, :, :])  # (N Ho Wo, C_out) @ (C_out, C_in)
            # The windows of different offsets overlap, so their gradients add up (slice +=).
            rows, cols = _window_slices(i, j, stride, Ho, Wo)
            dx_pad[:, rows, cols, :] += xp.reshape(dx_ij, (N, Ho, Wo, C_in))
    # 1. padding: x sits in the middle of x_pad; the zero border has no input behind it.
    H, W = Hp - 2 * p, Wp - 2 * p
    dx = dx_pad[:, p : p + H, p : p + W, :]
    return dx, dw, db


def conv2d_forward_naive(x: Any, w: Any, b: Any, stride: int = 1, padding: int | None = None) -> np.ndarray:
    """The test oracle: conv2d_forward by plain loops over output pixels and kernel taps, on the host.

    Math: y[n, h, w, :] = b + sum_{i, j} x[n, s h + i - p, s w + j - p, :] @ w[i, j]
          over the taps whose input pixel lies inside x (0 <= s h + i - p < H, 0 <= s w + j - p < W)

    Padding is the bounds test on the input index (no padded buffer), so the oracle shares no
    indexing code with conv2d_forward. Any backend in; host NumPy out, in x's dtype.
    """
    x, w, b = to_numpy(x), to_numpy(w), to_numpy(b)
    p = _check_geometry(x, w, b, stride, padding)
    N, H, W, _ = x.shape
    k, C_out = w.shape[0], w.shape[3]
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    y = np.empty((N, Ho, Wo, C_out), dtype=x.dtype)
    for n in range(N):
        for ho in range(Ho):
            for wo in range(Wo):
                acc = b.copy()  # (C_out,)
                for i in range(k):
                    for j in range(k):
                        r, c = stride * ho + i - p, stride * wo + j - p  # input pixel under tap (i, j)
                        if 0 <= r < H and 0 <= c < W:
                            acc += x[n, r, c, :] @ w[i, j]  # (C_in,) @ (C_in, C_out)
                y[n, ho, wo, :] = acc
    return y


def weight_from_torch(w: Any) -> Any:
    """PyTorch's (C_out, C_in, kH, kW) weight as ours, (kH, kW, C_in, C_out): ours[i, j, c, o] = w[o, c, i, j].

    Any Array API array (host NumPy, CuPy, ...); the result is in w's library (a view where it allows).
    """
    if w.ndim != 4:
        raise ValueError(f"w must have PyTorch's shape (C_out, C_in, kH, kW), got {w.shape}")
    return namespace(w).permute_dims(w, (2, 3, 1, 0))


def weight_to_torch(w: Any) -> Any:
    """Our (kH, kW, C_in, C_out) weight in PyTorch's (C_out, C_in, kH, kW): torch[o, c, i, j] = w[i, j, c, o]."""
    if w.ndim != 4:
        raise ValueError(f"w must have shape (kH, kW, C_in, C_out), got {w.shape}")
    return namespace(w).permute_dims(w, (3, 2, 0, 1))


# ------------------------------------------------------------------------------------ speed layer
# The speed forms of conv2d_forward and conv2d_backward, tested equal to them
# (tests/test_layers_conv.py); they run unless refdiff.speed selects the reference path.

# Below this product depth (k*k*C_in) the input is thin enough to copy k*k times (im2col): the
# U-Net's 1-channel input makes nine products of depth 1 otherwise, measured 20x slower.
IM2COL_DEPTH = 64


def _correlate(a_pad: Any, w: Any, stride: int, Ho: int, Wo: int) -> Any:
    """sum over kernel offsets (i, j) of window_ij(a_pad) @ w[i, j]: (N, Ho, Wo, C_out), no bias.

    One product per offset: the strided window goes to matmul as it is, a stack of (Wo, C_in)
    matrices (no copy to (N Ho Wo, C_in), which measured slower). For thin inputs
    (k > 1, k*k*C_in <= IM2COL_DEPTH) the k*k windows are laid side by side instead,
    (N Ho Wo, k*k*C_in), and one product of that depth does it all (im2col).
    """
    xp = namespace(a_pad, w)
    k, C_in, C_out = w.shape[0], w.shape[2], w.shape[3]
    N = a_pad.shape[0]
    if k > 1 and k * k * C_in <= IM2COL_DEPTH:
        cols = xp.concat([_window(a_pad, i, j, stride, Ho, Wo) for i in range(k) for j in range(k)], axis=-1)
        cols = xp.reshape(cols, (N * Ho * Wo, k * k * C_in))  # column (i, j, c) = offset (i, j), channel c
        return xp.reshape(cols @ xp.reshape(w, (k * k * C_in, C_out)), (N, Ho, Wo, C_out))
    # (N, Ho, Wo, C_in) @ (C_in, C_out) for each offset; the first product starts the sum
    products = (_window(a_pad, i, j, stride, Ho, Wo) @ w[i, j, :, :] for i in range(k) for j in range(k))
    y = next(products)
    for product in products:
        y += product
    return y


def _on_grid(k: int, stride: int, p: int, C_in: int) -> bool:
    """Whether the speed forms compute on the flat grid: stride 1, "same" padding (k = 2p + 1), k > 1,
    and an input too deep for im2col."""
    return stride == 1 and k == 2 * p + 1 and k > 1 and k * k * C_in > IM2COL_DEPTH


def conv2d_forward_fast(x: Any, w: Any, b: Any, stride: int, p: int):
    """Speed form of conv2d_forward (which validates the arguments).

    At stride 1 with "same" padding (k = 2p + 1, every 3x3 conv of the U-Nets) on the flat grid:
    k*k products on contiguous row slices, accumulated in place, then the image positions cropped
    with the bias added in the same pass; the cache keeps the grid's rows. Elsewhere the textbook
    steps with step 2 by _correlate (im2col for thin inputs, the products accumulated in place).
    """
    N, H, W, C_in = x.shape
    k = w.shape[0]
    if _on_grid(k, stride, p, C_in):
        y, rows = grid.forward(x, w, b, p)
        return y, Conv2dCache(rows, w, stride, p, tuple(x.shape))
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    x_pad = _pad(x, p)  # 1. zero padding: (N, H + 2p, W + 2p, C_in)
    y = _correlate(x_pad, w, stride, Ho, Wo)  # 2. one matrix product per kernel offset, accumulated
    y += b  # 3. bias, broadcast over (N, Ho, Wo)
    return y, Conv2dCache(x_pad, w, stride, p, tuple(x.shape))


def _flipped(w: Any) -> Any:
    """w~[i, j] = w[k-1-i, k-1-j]^T, (k, k, C_out, C_in), row-major (the kernel of dx as a correlation).

    A copy: reshaping the view to 1-D copies it in row-major order (the Array API has no
    ascontiguousarray); matmul with the strided view measured 2-3x slower.
    """
    xp = namespace(w)
    w_flip = xp.permute_dims(xp.flip(w, axis=(0, 1)), (0, 1, 3, 2))  # (k, k, C_out, C_in), a view
    return xp.reshape(xp.reshape(w_flip, (-1,)), w_flip.shape)


def conv2d_backward_fast(dy: Any, cache: Conv2dCache):
    """Speed form of conv2d_backward (which checks dy): the same gradients, each a few large products.

    Math (for L with dL/dy = dy; derivation in docs/derivations/conv2d.md):
        db = sum_{n, h, w} dy[n, h, w, :]
        dw[i, j] = X_ij^T dY, X_ij the window of offset (i, j) as an (N Ho Wo, C_in) matrix
        dx = the transposed convolution of dy; at stride 1 (and p <= k - 1) it is itself a
             correlation: dx = conv(pad(dy, k - 1 - p), w~) with w~[i, j] = w[k-1-i, k-1-j]^T

    On the flat grid (the forward's cache holds its rows) X_ij is the row slice of offset (i, j) and
    dY is dy on the grid, zero on the padding, so dw[i, j] is one product of contiguous slices, and
    dx is conv_grid.correlate of dy's grid with w~ (k = 2p + 1, so k - 1 - p = p: the same grid).
    Elsewhere X_ij is the copied window; stride 2 takes the textbook loop's scatter for dx.
    Returns what conv2d_backward returns.
    """
    x_pad, w, stride, p, (N, H, W, C_in) = cache
    xp = namespace(dy, x_pad)
    Ho, Wo = dy.shape[1:3]
    k, C_out = w.shape[0], w.shape[3]
    dy_2d = xp.reshape(dy, (N * Ho * Wo, C_out))
    db = fast.column_sums(dy_2d)  # 3. bias: sum over (N, Ho, Wo)
    on_grid = x_pad.ndim == 2  # the forward computed on the flat grid; x_pad holds its rows
    if on_grid:
        dy_rows = grid.rows(dy, p)  # ((N + 2) G Wg, C_out), zero on the padding
        dw = grid.weight_gradient(x_pad, dy_rows, k, N, H, W)  # 2. weights
    else:
        dw = xp.zeros(w.shape, dtype=w.dtype, device=device(w))
        for i in range(k):  # 2. weights: one (C_in, N Ho Wo) @ (N Ho Wo, C_out) product per offset
            for j in range(k):
                x_ij = xp.reshape(_window(x_pad, i, j, stride, Ho, Wo), (N * Ho * Wo, C_in))  # copied if strided
                dw[i, j, :, :] = xp.matrix_transpose(x_ij) @ dy_2d
    # 1. input: at stride 1 a correlation of the re-padded dy with the flipped kernel, on the grid
    # unless dy is thin enough for im2col (the head's one channel)
    if on_grid and k * k * C_out > IM2COL_DEPTH:
        dx = xp.reshape(grid.crop(grid.correlate(dy_rows, _flipped(w), N, H, W), N, H, W, p), (N, H, W, C_in))
    elif stride == 1 and p <= k - 1:
        dx = _correlate(_pad(dy, k - 1 - p), _flipped(w), 1, H, W)
    else:
        dx = _input_gradient_by_taps(dy, w, stride, p, x_pad.shape)
    return dx, dw, db


def _input_gradient_by_taps(dy: Any, w: Any, stride: int, p: int, x_pad_shape: tuple) -> Any:
    """dx of conv2d_forward by scattering each offset's dy @ w[i, j]^T into its window of dx_pad."""
    xp = namespace(dy, w)
    N, Hp, Wp, C_in = x_pad_shape
    Ho, Wo = dy.shape[1:3]
    k, C_out = w.shape[0], w.shape[3]
    dy_2d = xp.reshape(dy, (N * Ho * Wo, C_out))
    dx_pad = xp.zeros(x_pad_shape, dtype=dy.dtype, device=device(dy))
    for i in range(k):
        for j in range(k):
            dx_ij = dy_2d @ xp.matrix_transpose(w[i, j, :, :])  # (N Ho Wo, C_out) @ (C_out, C_in)
            # The windows of different offsets overlap, so their gradients add up (slice +=).
            rows, cols = _window_slices(i, j, stride, Ho, Wo)
            dx_pad[:, rows, cols, :] += xp.reshape(dx_ij, (N, Ho, Wo, C_in))
    return dx_pad[:, p : Hp - p, p : Wp - p, :]  # undo the padding (a view of the fresh dx_pad)
