"""Speed of conv2d forward/backward variants on the host, float32, at mnist28's U-Net shapes.

Run: python benchmarks/bench_conv.py [--batch 32] [--threads 1] [--repeats 15]   (about two minutes)

The defaults are the setting the library runs in: the U-Net splits a host batch into parts of up to
refdiff.parallel.PART_SIZE = 32 images, each on one thread with BLAS on one thread, and glibc's malloc
keeps freed memory (refdiff.parallel._keep_freed_memory, applied here too). Prints the BLAS
library and its thread count (threadpoolctl), NumPy's float32 GEMM peak (a 2048 x 2048 matmul) on
those threads, then for each convolution shape the fastest forward and backward time of
``repeats`` runs, timed round-robin over the variants, and GFLOP/s of:

  library      refdiff.layers.conv's speed forms: at stride 1 with "same" padding the flat grid (the
               padding shared between neighbouring rows and images, every offset one contiguous row
               slice, BLAS accumulating each product in place); elsewhere shifted GEMM in NHWC (one
               batched matmul per kernel offset, or one im2col product for inputs of k*k*C_in <= 64);
               backward: dw one long product per offset, dx at stride 1 the correlation of dy with the
               flipped kernel (on the grid where the forward was)
  windows      the library's speed forms off the grid at every shape (before issue 13's flat grid):
               shifted GEMM on the strided windows, dw on copied windows, dx by the windows' correlation
  reference    conv2d_forward + conv2d_backward on the reference path (refdiff.speed): the textbook
               forms (per-image dw products summed over the batch, dx scattered window by window)
  shift-2d     shifted GEMM, NHWC, each window copied to (N*Ho*Wo, C_in) before a 2-D GEMM; dw as one
               long-K product (C_in, N*Ho*Wo) @ (N*Ho*Wo, C_out)
  im2col       NHWC im2col: one (N*Ho*Wo, k*k*C_in) buffer, one GEMM; caches it (k*k times x's memory)
  im2col-x     the same, caching x and rebuilding the columns in the backward (the shifted GEMM's memory)
  nchw-shift   shifted GEMM in NCHW: per offset w[:, :, i, j] (C_out, C_in) @ x window (N, C_in, Ho*Wo)
  flat-s1      stride 1 only: the padded input flattened to rows, every offset a contiguous row slice
               (no window copy; computes on the padded grid and crops, (H+2p)(W+2p)/(H W) extra work)
  flat-gemm    flat-s1 with every product accumulated in place by BLAS (gemm with beta = 1 through
               scipy.linalg.blas): no temporaries, no separate additions
  rows         the k offsets of a kernel row side by side along the channels: k products of depth
               k*C_in instead of k*k of depth C_in (3 copies of the input)
  winograd     Winograd F(2x2, 3x3) (Lavin & Gray 2016) for 3x3 stride 1, even H and W: 16 products
               instead of 36 per 2x2 output tile, input and output transforms as strided adds; dx
               the same on the flipped kernel; dw as the library's

FLOPs: forward 2 N Ho Wo k^2 C_in C_out; backward twice that (dx and dw), counted for the direct
convolution whatever the variant computes. Every variant's output is checked against the library's
before it is timed. The variants other than library and reference are written here in plain NumPy;
the measurements and the decisions are in docs/performance.md and docs/derivations/conv2d.md.
"""

import argparse
import os
import time

import numpy as np
from scipy.linalg import blas  # SciPy's BLAS (flat-gemm), loaded before threadpool_limits
from threadpoolctl import threadpool_limits

from refdiff import parallel, speed
from refdiff.layers.conv import conv2d_backward, conv2d_forward

# (H, W, C_in, C_out, k, stride) of mnist28's convolutions (padding k // 2); the batch is --batch.
SHAPES = [
    (28, 28, 1, 32, 3, 1),    # input conv
    (28, 28, 32, 32, 3, 1),   # down.0 ResBlock, up.0 conv2
    (28, 28, 96, 32, 3, 1),   # up.0.res.0.conv1
    (28, 28, 64, 64, 3, 1),   # up.1.upsample (after nearest 2x)
    (14, 14, 64, 64, 3, 1),   # level-1 ResBlocks
    (14, 14, 128, 64, 3, 1),  # up.1.res.0.conv1
    (7, 7, 64, 64, 3, 1),     # level-2 and middle ResBlocks
    (28, 28, 32, 32, 3, 2),   # down.0.downsample
    (28, 28, 96, 32, 1, 1),   # 1x1 skip of up.0.res.0
]


def _time(fn, repeats: int) -> float:
    """Fastest seconds per call of fn() over ``repeats`` calls, after one warm-up call.

    The minimum, not the median: on a shared (virtual) machine other tenants only ever add time, so
    the fastest run is the best estimate of the code's own cost.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def _geometry(x, w, s, p):
    N, H, W, C = x.shape
    k, Co = w.shape[0], w.shape[3]
    return N, H, W, C, k, Co, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1


def _pad(x, p):
    """Zero-pad NHWC x by p on both sides of H and W."""
    N, H, W, C = x.shape
    out = np.zeros((N, H + 2 * p, W + 2 * p, C), x.dtype)
    out[:, p : p + H, p : p + W, :] = x
    return out


def _win(i, j, s, Ho, Wo):
    return slice(i, i + s * (Ho - 1) + 1, s), slice(j, j + s * (Wo - 1) + 1, s)


# --- shift-2d: windows copied to 2-D before each GEMM -------------------------------------------
def shift2d_forward(x, w, b, s, p):
    N, H, W, C, k, Co, Ho, Wo = _geometry(x, w, s, p)
    xp_ = _pad(x, p)
    y = np.zeros((N * Ho * Wo, Co), x.dtype)
    for i in range(k):
        for j in range(k):
            r, c = _win(i, j, s, Ho, Wo)
            y += xp_[:, r, c, :].reshape(-1, C) @ w[i, j]
    return (y + b).reshape(N, Ho, Wo, Co), (xp_, w, s, p, x.shape)


def shift2d_backward(dy, cache):
    xp_, w, s, p, (N, H, W, C) = cache
    k, Co = w.shape[0], w.shape[3]
    Ho, Wo = dy.shape[1:3]
    dy2 = dy.reshape(-1, Co)
    dxp, dw = np.zeros_like(xp_), np.empty_like(w)
    for i in range(k):
        for j in range(k):
            r, c = _win(i, j, s, Ho, Wo)
            dw[i, j] = xp_[:, r, c, :].reshape(-1, C).T @ dy2
            dxp[:, r, c, :] += (dy2 @ w[i, j].T).reshape(N, Ho, Wo, C)
    return dxp[:, p : p + H, p : p + W, :], dw, dy2.sum(0)


# --- im2col: one big buffer, one GEMM ------------------------------------------------------------
def _columns(x, k, s, p):
    """The (N*Ho*Wo, k*k*C_in) im2col matrix of NHWC x: row (n, h, w) holds its k x k x C_in patch."""
    N, H, W, C = x.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp_ = _pad(x, p)
    cols = np.empty((N, Ho, Wo, k, k, C), x.dtype)  # (N, Ho, Wo, k, k, C_in)
    for i in range(k):
        for j in range(k):
            r, c = _win(i, j, s, Ho, Wo)
            cols[:, :, :, i, j, :] = xp_[:, r, c, :]
    return cols.reshape(N * Ho * Wo, k * k * C)


def im2col_forward(x, w, b, s, p):
    N, H, W, C, k, Co, Ho, Wo = _geometry(x, w, s, p)
    cols = _columns(x, k, s, p)
    y = cols @ w.reshape(k * k * C, Co) + b
    return y.reshape(N, Ho, Wo, Co), (cols, w, s, p, x.shape)


def im2col_backward(dy, cache):
    cols, w, s, p, (N, H, W, C) = cache
    k, Co = w.shape[0], w.shape[3]
    Ho, Wo = dy.shape[1:3]
    dy2 = dy.reshape(-1, Co)
    dw = (cols.T @ dy2).reshape(w.shape)
    dcols = (dy2 @ w.reshape(k * k * C, Co).T).reshape(N, Ho, Wo, k, k, C)
    dxp = np.zeros((N, H + 2 * p, W + 2 * p, C), dy.dtype)
    for i in range(k):
        for j in range(k):
            r, c = _win(i, j, s, Ho, Wo)
            dxp[:, r, c, :] += dcols[:, :, :, i, j, :]
    return dxp[:, p : p + H, p : p + W, :], dw, dy2.sum(0)


def im2colx_forward(x, w, b, s, p):
    """im2col that caches x instead of the columns (the shifted GEMM's memory)."""
    y, _ = im2col_forward(x, w, b, s, p)
    return y, (x, w, s, p)


def im2colx_backward(dy, cache):
    x, w, s, p = cache
    return im2col_backward(dy, (_columns(x, w.shape[0], s, p), w, s, p, x.shape))  # columns rebuilt


# --- nchw-shift: the same offsets loop in NCHW ---------------------------------------------------
def nchw_forward(x, w, b, s, p):
    """x: (N, C_in, H, W); w: (C_out, C_in, k, k) (PyTorch layouts)."""
    N, C, H, W = x.shape
    Co, k = w.shape[0], w.shape[2]
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp_ = np.zeros((N, C, H + 2 * p, W + 2 * p), x.dtype)
    xp_[:, :, p : p + H, p : p + W] = x
    y = np.zeros((N, Co, Ho * Wo), x.dtype)
    for i in range(k):
        for j in range(k):
            r, c = _win(i, j, s, Ho, Wo)
            y += w[:, :, i, j] @ xp_[:, :, r, c].reshape(N, C, Ho * Wo)  # (Co, C) @ (N, C, HoWo)
    return (y + b[:, None]).reshape(N, Co, Ho, Wo), (xp_, w, s, p, x.shape)


def nchw_backward(dy, cache):
    xp_, w, s, p, (N, C, H, W) = cache
    Co, k = w.shape[0], w.shape[2]
    Ho, Wo = dy.shape[2:]
    dy3 = dy.reshape(N, Co, Ho * Wo)
    dxp, dw = np.zeros_like(xp_), np.empty_like(w)
    for i in range(k):
        for j in range(k):
            r, c = _win(i, j, s, Ho, Wo)
            dw[:, :, i, j] = np.tensordot(dy3, xp_[:, :, r, c].reshape(N, C, Ho * Wo), axes=([0, 2], [0, 2]))
            dxp[:, :, r, c] += (w[:, :, i, j].T @ dy3).reshape(N, C, Ho, Wo)
    return dxp[:, :, p : p + H, p : p + W], dw, dy3.sum(axis=(0, 2))


# --- flat-s1: contiguous row slices of the flattened padded input (stride 1) ---------------------
def flat_forward(x, w, b, s, p):
    N, H, W, C, k, Co, Ho, Wo = _geometry(x, w, s, p)
    assert s == 1
    Hp, Wp = H + 2 * p, W + 2 * p
    rows = _pad(x, p).reshape(N * Hp * Wp, C)
    L = N * Hp * Wp - (k - 1) * (Wp + 1)  # rows every offset can read
    y = np.zeros((N * Hp * Wp, Co), x.dtype)
    for i in range(k):
        for j in range(k):
            off = i * Wp + j
            y[:L] += rows[off : off + L] @ w[i, j]
    return (y.reshape(N, Hp, Wp, Co)[:, :Ho, :Wo, :] + b), (rows, w, p, x.shape)


def flat_backward(dy, cache):
    rows, w, p, (N, H, W, C) = cache
    k, Co = w.shape[0], w.shape[3]
    Hp, Wp = H + 2 * p, W + 2 * p
    Ho, Wo = dy.shape[1:3]
    L = N * Hp * Wp - (k - 1) * (Wp + 1)
    dy_full = np.zeros((N, Hp, Wp, Co), dy.dtype)  # dy on the padded grid, 0 where no output is
    dy_full[:, :Ho, :Wo, :] = dy
    dy_rows = dy_full.reshape(-1, Co)[:L]
    drows, dw = np.zeros_like(rows), np.empty_like(w)
    for i in range(k):
        for j in range(k):
            off = i * Wp + j
            dw[i, j] = rows[off : off + L].T @ dy_rows
            drows[off : off + L] += dy_rows @ w[i, j].T
    return drows.reshape(N, Hp, Wp, C)[:, p : p + H, p : p + W, :], dw, dy.reshape(-1, Co).sum(0)


# --- flat-gemm: flat-s1 with BLAS accumulating in place -----------------------------------------
def _gemm_into(c, a, b, beta):
    """c = a @ b + beta c in place for C-ordered 2-D arrays: BLAS on the transposed (Fortran) views.

    SciPy links its own OpenBLAS: it must be loaded before threadpool_limits is entered (see the
    import at the top), or its pool keeps its default threads beside NumPy's (measured 30-70x slower
    on small products on 2 cores)."""
    gemm = blas.sgemm if c.dtype == np.float32 else blas.dgemm
    gemm(1.0, b.T, a.T, beta=beta, c=c.T, overwrite_c=1)


def flatgemm_forward(x, w, b, s, p):
    N, H, W, C, k, Co, Ho, Wo = _geometry(x, w, s, p)
    assert s == 1
    Hp, Wp = H + 2 * p, W + 2 * p
    rows = _pad(x, p).reshape(N * Hp * Wp, C)
    L = N * Hp * Wp - (k - 1) * (Wp + 1)
    y = np.empty((N * Hp * Wp, Co), x.dtype)
    for i in range(k):
        for j in range(k):
            off = i * Wp + j
            _gemm_into(y[:L], rows[off : off + L], w[i, j], 0.0 if off == 0 else 1.0)
    return (y.reshape(N, Hp, Wp, Co)[:, :Ho, :Wo, :] + b), (rows, w, p, x.shape)


def flatgemm_backward(dy, cache):
    rows, w, p, (N, H, W, C) = cache
    k, Co = w.shape[0], w.shape[3]
    Hp, Wp = H + 2 * p, W + 2 * p
    Ho, Wo = dy.shape[1:3]
    L = N * Hp * Wp - (k - 1) * (Wp + 1)
    dy_full = np.zeros((N, Hp, Wp, Co), dy.dtype)
    dy_full[:, :Ho, :Wo, :] = dy
    dy_rows = dy_full.reshape(-1, Co)[:L]
    drows, dw = np.zeros_like(rows), np.empty_like(w)
    for i in range(k):
        for j in range(k):
            off = i * Wp + j
            dw[i, j] = rows[off : off + L].T @ dy_rows
            _gemm_into(drows[off : off + L], dy_rows, np.ascontiguousarray(w[i, j].T), 1.0)
    return drows.reshape(N, Hp, Wp, C)[:, p : p + H, p : p + W, :], dw, dy.reshape(-1, Co).sum(0)


# --- rows: the k offsets of a kernel row side by side -------------------------------------------
def _rows_correlate(a_pad, w, Ho, Wo):
    """stride-1 correlation of padded a_pad with w: cols (N, Hp, Wo, k C) once, k products."""
    k, C, Co = w.shape[0], w.shape[2], w.shape[3]
    cols = np.concatenate([a_pad[:, :, j : j + Wo, :] for j in range(k)], axis=-1)  # (N, Hp, Wo, k C)
    y = cols[:, 0:Ho] @ w[0].reshape(k * C, Co)
    for i in range(1, k):
        y += cols[:, i : i + Ho] @ w[i].reshape(k * C, Co)
    return y


def _flipped(w):
    """w~[i, j] = w[k-1-i, k-1-j]^T, contiguous: the kernel of the transposed convolution."""
    return np.ascontiguousarray(np.transpose(w[::-1, ::-1], (0, 1, 3, 2)))


def rows_forward(x, w, b, s, p):
    N, H, W, C, k, Co, Ho, Wo = _geometry(x, w, s, p)
    assert s == 1
    x_pad = _pad(x, p)
    return _rows_correlate(x_pad, w, Ho, Wo) + b, (x_pad, w, s, p)


def rows_backward(dy, cache):
    x_pad, w, s, p = cache
    k = w.shape[0]
    _, dw, db = conv2d_backward(dy, _library_cache(cache))
    H, W = x_pad.shape[1] - 2 * p, x_pad.shape[2] - 2 * p
    return _rows_correlate(_pad(dy, k - 1 - p), _flipped(w), H, W), dw, db


# --- winograd: F(2x2, 3x3) ------------------------------------------------------------------------
# Lavin & Gray 2016: y = A^T [(G g G^T) * (B^T d B)] A for a 4x4 input tile d and a 3x3 kernel g.
WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _wino_correlate(a_pad, w):
    """stride-1 correlation of a_pad (N, H + 2, W + 2, C), H and W even, with a 3x3 w: (N, H, W, Co)."""
    N, Hp, Wp, C = a_pad.shape
    Co = w.shape[3]
    Th, Tw = (Hp - 2) // 2, (Wp - 2) // 2
    d = [[a_pad[:, r : r + 2 * Th : 2, c : c + 2 * Tw : 2, :] for c in range(4)] for r in range(4)]

    def bt(v0, v1, v2, v3):  # B^T applied along one tile axis
        return v0 - v2, v1 + v2, v2 - v1, v1 - v3

    t = [bt(*[d[r][c] for r in range(4)]) for c in range(4)]  # t[c][r'], rows transformed
    V = np.empty((4, 4, N, Th, Tw, C), a_pad.dtype)
    for r in range(4):
        for s_, v in enumerate(bt(*[t[c][r] for c in range(4)])):
            V[r, s_] = v
    U = np.einsum("ai,ijco,bj->abco", WINO_G.astype(w.dtype), w, WINO_G.astype(w.dtype))  # (4, 4, C, Co)
    M = (V.reshape(16, N * Th * Tw, C) @ U.reshape(16, C, Co)).reshape(4, 4, N, Th, Tw, Co)
    u = [(M[r, 0] + M[r, 1] + M[r, 2], M[r, 1] - M[r, 2] - M[r, 3]) for r in range(4)]  # A^T on columns
    y = np.empty((N, Th, 2, Tw, 2, Co), a_pad.dtype)
    for q in range(2):
        y[:, :, 0, :, q] = u[0][q] + u[1][q] + u[2][q]
        y[:, :, 1, :, q] = u[1][q] - u[2][q] - u[3][q]
    return y.reshape(N, 2 * Th, 2 * Tw, Co)


def winograd_forward(x, w, b, s, p):
    assert s == 1 and w.shape[0] == 3 and p == 1 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
    x_pad = _pad(x, p)
    return _wino_correlate(x_pad, w) + b, (x_pad, w, s, p)


def winograd_backward(dy, cache):
    _, dw, db = conv2d_backward(dy, _library_cache(cache))
    return _wino_correlate(_pad(dy, 1), _flipped(cache[1])), dw, db


def _library_cache(cache):
    """A variant's (x_pad, w, stride, padding) as the library's window-form cache."""
    from refdiff.layers.conv import Conv2dCache

    x_pad, w, s, p = cache
    N, Hp, Wp, C = x_pad.shape
    return Conv2dCache(x_pad, w, s, p, (N, Hp - 2 * p, Wp - 2 * p, C))


def library_forward(x, w, b, s, p):
    return conv2d_forward(x, w, b, stride=s, padding=p)


def windows_forward(x, w, b, s, p):
    """The library's speed forms off the grid (its form for strided convolutions) at every shape."""
    from refdiff.layers import conv as Cv

    N, H, W, C, k, Co, Ho, Wo = _geometry(x, w, s, p)
    x_pad = Cv._pad(x, p)
    return Cv._correlate(x_pad, w, s, Ho, Wo) + b, Cv.Conv2dCache(x_pad, w, s, p, x.shape)


def reference_forward(x, w, b, s, p):
    with speed.reference_path():
        return conv2d_forward(x, w, b, stride=s, padding=p)


def reference_backward(dy, cache):
    with speed.reference_path():
        return conv2d_backward(dy, cache)


VARIANTS = {
    "library": (library_forward, conv2d_backward, "nhwc"),
    "reference": (reference_forward, reference_backward, "nhwc"),
    "windows": (windows_forward, conv2d_backward, "nhwc"),
    "shift-2d": (shift2d_forward, shift2d_backward, "nhwc"),
    "im2col": (im2col_forward, im2col_backward, "nhwc"),
    "im2col-x": (im2colx_forward, im2colx_backward, "nhwc"),
    "nchw-shift": (nchw_forward, nchw_backward, "nchw"),
    "flat-s1": (flat_forward, flat_backward, "nhwc"),
    "flat-gemm": (flatgemm_forward, flatgemm_backward, "nhwc"),
    "rows": (rows_forward, rows_backward, "nhwc"),
    "winograd": (winograd_forward, winograd_backward, "nhwc"),
}
STRIDE_1_ONLY = ("flat-s1", "flat-gemm", "rows", "winograd")


def gemm_peak(repeats: int) -> float:
    """GFLOP/s of a float32 (2048 x 2048) @ (2048 x 2048) matmul."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    return 2 * 2048**3 / _time(lambda: a @ a, repeats) / 1e9


def _case(x, w, dy, layout):
    """The variant's arguments in its layout, and the maps that bring its (y, dx, dw, db) back to ours."""
    if layout == "nhwc":
        return (x, w), dy, (lambda a: a,) * 4
    to_nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    from_nchw = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    return ((to_nchw(x), np.ascontiguousarray(w.transpose(3, 2, 0, 1))), to_nchw(dy),
            (from_nchw, from_nchw, lambda a: a.transpose(2, 3, 1, 0), lambda a: a))


def bench_shape(shape, N: int, repeats: int, peak: float) -> dict:
    """Check every variant against the library, then time them round-robin (noise hits all alike)."""
    H, W, C, Co, k, s = shape
    p = k // 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, H, W, C), dtype=np.float32)
    w = rng.standard_normal((k, k, C, Co), dtype=np.float32) / np.sqrt(k * k * C, dtype=np.float32)
    b = rng.standard_normal(Co, dtype=np.float32)
    y_ref, cache = conv2d_forward(x, w, b, stride=s, padding=p)
    dy = rng.standard_normal(y_ref.shape, dtype=np.float32)
    expected = (y_ref, *conv2d_backward(dy, cache))
    Ho, Wo = y_ref.shape[1:3]
    flops = 2 * N * Ho * Wo * k * k * C * Co
    calls = {}
    for name, (forward, backward, layout) in VARIANTS.items():
        if name in STRIDE_1_ONLY and (s != 1 or (name in ("rows", "winograd") and (k != 3 or H % 2 or W % 2))):
            continue
        args, dy_v, back = _case(x, w, dy, layout)
        y, c = forward(*args, b, s, p)
        for fix, got, ref in zip(back, (y, *backward(dy_v, c)), expected):
            np.testing.assert_allclose(fix(got), ref, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(ref))))
        calls[name] = (lambda f=forward, a=args: f(*a, b, s, p), lambda g=backward, d=dy_v, c=c: g(d, c))
    times = {name: ([], []) for name in calls}
    for _ in range(repeats):
        for name, (fwd, bwd) in calls.items():
            for fn, record in zip((fwd, bwd), times[name]):
                start = time.perf_counter()
                fn()
                record.append(time.perf_counter() - start)
    label = f"{N}x{H}x{W}x{C}->{Co} k{k} s{s}"
    rows = {}
    for name, (t_fwd, t_bwd) in times.items():
        t_f, t_b = min(t_fwd), min(t_bwd)  # fastest run: other tenants only ever add time
        pct = 100 * 3 * flops / (t_f + t_b) / 1e9 / peak
        rows[name] = {"fwd_ms": 1e3 * t_f, "bwd_ms": 1e3 * t_b}
        print(f"| {label:<24} | {name:<10} | {t_f * 1e3:8.2f} | {flops / t_f / 1e9:6.0f} | {t_b * 1e3:8.2f} "
              f"| {2 * flops / t_b / 1e9:6.0f} | {pct:5.0f}% |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32, help="images per call (the library's part size)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (threadpoolctl)")
    args = parser.parse_args()
    parallel._keep_freed_memory()  # the library's setting: its models run with it (refdiff.parallel)
    layout = parallel.one_blas_thread() if args.threads == 1 else threadpool_limits(args.threads, "blas")
    with layout:  # one thread: refdiff's layout, where the flat grid's products accumulate in place
        print(f"NumPy {np.__version__}, BLAS: {parallel.blas_summary()}, load average {os.getloadavg()[0]:.2f}")
        peak = gemm_peak(args.repeats)
        print(f"float32 GEMM peak (2048^3 matmul, {args.threads} BLAS threads): {peak:.0f} GFLOP/s")
        print("| shape (N x H x W x C_in -> C_out) | variant | fwd ms | fwd GF/s | bwd ms | bwd GF/s "
              "| fwd+bwd % peak |")
        print("|---|---|---:|---:|---:|---:|---:|")
        totals = {}
        for shape in SHAPES:
            for name, r in bench_shape(shape, args.batch, args.repeats, peak).items():
                if shape[5] == 1:  # totals over the stride-1 shapes every variant runs
                    t = totals.setdefault(name, [0.0, 0.0])
                    t[0], t[1] = t[0] + r["fwd_ms"], t[1] + r["bwd_ms"]
        print("totals over the stride-1 shapes (ms, fwd + bwd):",
              ", ".join(f"{name} {f:.1f} + {b:.1f} = {f + b:.1f}" for name, (f, b) in totals.items()))
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
