"""The flat grid: a "same" stride-1 convolution as one contiguous 2-D product per kernel offset.

A speed form of refdiff.layers.conv (which chooses it: stride 1, k = 2p + 1, k > 1, an input deeper
than its im2col depth). Derivation: docs/derivations/conv2d.md, "The flat grid".

The batch (N, H, W, C) is laid out with p zero columns after every image row and p zero rows after
every image, the padding shared between neighbours, and an image of zeros before the first image and
after the last, then flattened to rows: ((N + 2) G Wg, C) with G = H + p, Wg = W + p (``rows``).
Pixel (n, h, w) is row q = (n + 1) G Wg + h Wg + w, and kernel offset (i, j) reads row q + d with

    d_ij = (i - p) Wg + (j - p)

whether that pixel lies inside its image or on the padding, so the whole batch's window of an offset
is one contiguous row slice, R[m + d : m + d + P] with m = G Wg and P = N G Wg (``geometry``):

    Y = sum_{i, j} R[m + d_ij : m + d_ij + P] @ w[i, j]           (P, C_out), every grid position
    dw[i, j] = R[m + d_ij : m + d_ij + P]^T dY[m : m + P]          dY zero on the padding

Each term is a plain 2-D product that BLAS adds into its output in place (backend.add_product): no
window copies, temporaries or separate additions. The price is the padding positions, G Wg / (H W)
of the work: 1.27x at 8x8, 1.56x at 4x4, 1.07x at 28x28. dx is the same correlation of dy's grid with
the flipped kernel (k - 1 - p = p: the same grid).
"""

from __future__ import annotations

from typing import Any

from refdiff.backend import add_product, device, namespace
from refdiff.layers.fast import along_rows


def rows(a: Any, p: int) -> Any:
    """a (N, H, W, C) on the flat grid as rows: ((N + 2) G Wg, C), G = H + p, Wg = W + p; the rows
    before a pixel's are its left padding, the rows after it its right padding."""
    xp = namespace(a)
    N, H, W, C = a.shape
    grid = xp.zeros((N + 2, H + p, W + p, C), dtype=a.dtype, device=device(a))
    grid[1 : N + 1, :H, :W, :] = a
    return xp.reshape(grid, ((N + 2) * (H + p) * (W + p), C))


def geometry(N: int, H: int, W: int, k: int) -> tuple[int, int, list[int]]:
    """(P, m, d) of the flat grid of N images for a k x k kernel, p = k // 2: P = N G Wg positions from
    row m = G Wg on (after the image of zeros), and d[i k + j] = (i - p) Wg + (j - p), the row shift of
    kernel offset (i, j)."""
    p = k // 2
    G, Wg = H + p, W + p
    return N * G * Wg, G * Wg, [(i - p) * Wg + (j - p) for i in range(k) for j in range(k)]


def shifted_products(grid_rows: Any, taps: list, m: int, P: int) -> Any:
    """sum over (d, K) in taps of grid_rows[m + d : m + d + P] @ K: (P, C_out). The first product starts
    the sum; BLAS adds each other one into it (backend.add_product)."""
    (d_0, K_0), rest = taps[0], taps[1:]
    y = grid_rows[m + d_0 : m + d_0 + P, :] @ K_0
    for d, K in rest:
        add_product(y, grid_rows[m + d : m + d + P, :], K)
    return y


def correlate(grid_rows: Any, w: Any, N: int, H: int, W: int) -> Any:
    """Y = sum over kernel offsets (i, j) of grid_rows[m + d_ij : m + d_ij + P] @ w[i, j]: the "same"
    correlation at every grid position, (P, C_out), no bias: shifted_products of the k k offsets."""
    k = w.shape[0]
    P, m, d = geometry(N, H, W, k)
    return shifted_products(grid_rows, [(d[i * k + j], w[i, j, :, :]) for i in range(k) for j in range(k)], m, P)


def crop(grid_rows: Any, N: int, H: int, W: int, p: int) -> Any:
    """The image positions of (N G Wg, C) grid rows, each image row's W pixels side by side: an
    (N, H, W C) view (a grid row holds (W + p) C numbers, its image pixels the first W C)."""
    xp = namespace(grid_rows)
    C = grid_rows.shape[1]
    grid = xp.reshape(grid_rows, (N, H + p, (W + p) * C))  # (N, G, Wg C)
    return grid[:, :H, : W * C]


def forward(x: Any, w: Any, b: Any, p: int) -> tuple[Any, Any]:
    """y = conv(x, w) + b on the grid: returns y (N, H, W, C_out) and the grid's rows (the cache).

    The bias is added as the image positions are copied out, one (W C_out) row of b repeated per image
    row: the same sums as (N, H, W, C_out) + b, with W times longer rows (NumPy's elementwise loops run
    along the last axis; against a C_out-long b they measured 2.5-7x a same-shape pass).
    """
    xp = namespace(x, w, b)
    N, H, W, _ = x.shape
    C_out = w.shape[3]
    R = rows(x, p)  # 1. the zero padding: ((N + 2) G Wg, C_in)
    y = correlate(R, w, N, H, W)  # 2. one product per kernel offset: (N G Wg, C_out)
    b_row = along_rows(b, W)  # 3. bias, b repeated W times: (W C_out,)
    return xp.reshape(crop(y, N, H, W, p) + b_row, (N, H, W, C_out)), R


def weight_gradient(grid_rows: Any, dy_rows: Any, k: int, N: int, H: int, W: int) -> Any:
    """dw[i, j] = R[m + d_ij : m + d_ij + P]^T dY, dY = dy_rows[m : m + P] (zero on the padding, so the
    grid's extra positions add nothing): one (C_in, P) @ (P, C_out) product of contiguous slices per
    offset. Returns (k, k, C_in, C_out)."""
    xp = namespace(grid_rows, dy_rows)
    P, m, d = geometry(N, H, W, k)
    dY = dy_rows[m : m + P, :]  # (P, C_out)
    dw = xp.zeros((k, k, grid_rows.shape[1], dy_rows.shape[1]), dtype=grid_rows.dtype, device=device(grid_rows))
    for i in range(k):
        for j in range(k):
            d_ij = d[i * k + j]
            dw[i, j, :, :] = xp.matrix_transpose(grid_rows[m + d_ij : m + d_ij + P, :]) @ dY  # (C_in, C_out)
    return dw


# Nearest 2x upsampling then a 3x3 "same" convolution (ADM's Upsample), by output phase: output row
# 2h + a reads upsampled rows 2h + a - 1, 2h + a, 2h + a + 1, which are x's rows h + a - 1 + r for the
# kernel rows that PHASE_TAPS[a][r] marks (a = 0: row h - 1 takes kernel row 0, row h rows 1 and 2;
# a = 1: row h rows 0 and 1, row h + 1 row 2); columns the same.
PHASE_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))  # [a][r][i]


def upsampled_forward(x: Any, w: Any, b: Any) -> Any:
    """y = conv3x3(nearest_2x(x)) + b, "same" padding, computed on x's own grid (p = 1), one output
    phase (a, c) at a time (the sub-pixel decomposition of an upsampling convolution):

        K_ac[r, s] = sum_{i, j} T[a, r, i] T[c, s, j] w[i, j]          (T = PHASE_TAPS; 2 x 2 taps)
        y[:, 2h + a, 2w + c] = b + sum_{r, s} x[:, h + a - 1 + r, w + c - 1 + s] @ K_ac[r, s]

    16 products on x's grid, where the convolution of the upsampled input makes 9 products four times
    as long (2.25x the work, and the 4x copy of x). x: (N, H, W, C_in); w: (3, 3, C_in, C_out); b:
    (C_out,). Returns y (N, 2H, 2W, C_out), no cache (a sampling forward's Upsample).
    """
    xp = namespace(x, w, b)
    N, H, W, _ = x.shape
    C_out = w.shape[3]
    T = xp.asarray(PHASE_TAPS, dtype=w.dtype, device=device(w))  # (2, 2, 3): [a, r, i]
    K = xp.tensordot(T, xp.tensordot(T, w, axes=([2], [0])), axes=([2], [2]))  # [c, s, a, r, C_in, C_out]
    K = xp.permute_dims(K, (2, 0, 3, 1, 4, 5))  # [a, c, r, s, C_in, C_out]
    K = xp.reshape(xp.reshape(K, (-1,)), K.shape)  # row-major copy: each K[a, c, r, s] a contiguous matrix
    R = rows(x, 1)  # ((N + 2)(H + 1)(W + 1), C_in)
    P, m, _ = geometry(N, H, W, 3)
    Wg = W + 1
    y = xp.empty((N, H, 2, W, 2, C_out), dtype=x.dtype, device=device(x))  # [n, h, a, w, c, :]
    for a in range(2):
        for c in range(2):
            taps = [((a - 1 + r) * Wg + (c - 1 + s), K[a, c, r, s, :, :]) for r in range(2) for s in range(2)]
            Y = shifted_products(R, taps, m, P)  # (P, C_out): phase (a, c) at every grid position
            y[:, :, a, :, c, :] = xp.reshape(crop(Y, N, H, W, 1), (N, H, W, C_out))
    y = xp.reshape(y, (N, 2 * H, 2 * W * C_out))  # rows of 2W pixels
    y += along_rows(b, 2 * W)  # the bias, b repeated 2W times
    return xp.reshape(y, (N, 2 * H, 2 * W, C_out))
