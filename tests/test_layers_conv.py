"""Specification of refdiff.layers.conv (with its flat grid, refdiff.layers.conv_grid) and
refdiff.layers.resample: NHWC convolution, 2x resampling, and both in one (upsample2x_conv).

Oracles: conv2d_forward_naive (plain loops over output pixels, padding as a bounds test), the
textbook conv2d_forward and conv2d_backward on the reference path (the derivation page's loop, the
spec of the speed forms conv2d_forward_fast and conv2d_backward_fast), loops over pixels written here
for the resampling layers, the adjoint identity of a linear map, and centered finite differences of
the fake loss sum(forward(...) * dy) in float64 (tests/gradcheck.py). The conv2d checks run on both
paths: the speed layer and, under speed.reference_path(), the textbook forms.
"""

import contextlib
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff import parallel, speed
from refdiff.backend import to_numpy
from refdiff.layers import conv as Cv
from refdiff.layers import conv_grid as G
from refdiff.layers import resample as Rs
from support import DTYPES, assert_close, assert_same_array_kind, host_data, no_float64_intermediates

seeds = st.integers(0, 2**16)
dtypes = st.sampled_from(DTYPES)
# Inner products in the adjoint identities are compared to this fraction of the sum of |terms|.
ADJOINT_RTOL = 1e-12
both_paths = pytest.mark.parametrize("reference", [False, True], ids=["speed", "reference"])


class ConvCase(NamedTuple):
    N: int
    H: int
    W: int
    C_in: int
    C_out: int
    k: int
    stride: int
    padding: int


@st.composite
def conv_cases(draw):
    """Small NHWC convolutions: N <= 2, H, W <= 7, C <= 4, k in {1, 3}, stride {1, 2}, padding {0, 1, 2},
    with H + 2p >= k so the output is not empty."""
    k, stride, padding = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1, 2]))
    side = st.integers(max(1, k - 2 * padding), 7)
    return ConvCase(draw(st.integers(1, 2)), draw(side), draw(side), draw(st.integers(1, 4)), draw(st.integers(1, 4)),
                    k, stride, padding)


nhwc_shapes = st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
even_nhwc_shapes = nhwc_shapes.map(lambda s: (s[0], 2 * s[1], 2 * s[2], s[3]))


def conv_arrays(case: ConvCase, seed: int, dtype: str = "float64") -> dict:
    """Host x (N, H, W, C_in), w (k, k, C_in, C_out) ~ N(0, 1 / (k^2 C_in)), b (C_out,) ~ N(0, 0.1^2)."""
    fan_in = case.k * case.k * case.C_in
    return {"x": host_data(seed, (case.N, case.H, case.W, case.C_in), dtype),
            "w": host_data(seed + 1, (case.k, case.k, case.C_in, case.C_out), dtype, 1.0 / np.sqrt(fan_in)),
            "b": host_data(seed + 2, (case.C_out,), dtype, 0.1)}


def on_backend(backend, arrays: dict, dtype: str = "float64") -> dict:
    return {name: backend.asarray(a, dtype=backend.dtype(dtype)) for name, a in arrays.items()}


def fake_loss(backend, forward, dy):
    """L(arrays) = sum(forward(**arrays) * dy) on ``backend``, from float64 host arrays to a float."""
    def loss(arrays):
        y = forward(**{k: backend.asarray(v) for k, v in arrays.items()})
        return float(to_numpy(backend.xp.sum(y * backend.asarray(dy))))
    return loss


def float64_tripwire(backend, dtype: str):
    """no_float64_intermediates for float32 on array_api_strict (the only backend it can watch)."""
    watch = backend.name == "array_api_strict" and dtype == "float32"
    return no_float64_intermediates() if watch else contextlib.nullcontext()


def abs_dot(a, b) -> float:
    """sum |a| |b|: the scale of the rounding error of the inner product <a, b>."""
    return float(np.sum(np.abs(to_numpy(a)) * np.abs(to_numpy(b))))


def dot(a, b) -> float:
    return float(np.sum(to_numpy(a) * to_numpy(b)))


# --- conv2d ------------------------------------------------------------------------------------


@both_paths
@given(case=conv_cases(), seed=seeds, dtype=dtypes)
def test_conv2d_forward_equals_the_naive_loop(backend, reference, case, seed, dtype):
    """conv2d_forward(x, w, b) == conv2d_forward_naive(x, w, b) (loops over output pixels, run in
    float64 on the same rounded inputs), to the dtype's tolerance times k^2 C_in + 1 (the number of
    terms each output sums), and y keeps x's library, device and dtype."""
    a = on_backend(backend, conv_arrays(case, seed, dtype), dtype)
    with speed.reference_path(reference):
        y, _ = Cv.conv2d_forward(a["x"], a["w"], a["b"], stride=case.stride, padding=case.padding)
    assert_same_array_kind(y, a["x"])
    expected = Cv.conv2d_forward_naive(*(to_numpy(a[n]).astype(np.float64) for n in "xwb"), case.stride, case.padding)
    assert y.shape == expected.shape
    assert_close(y, expected, scale=case.k * case.k * case.C_in + 1)


@both_paths
@given(case=conv_cases(), seed=seeds)
def test_conv2d_backward_is_the_adjoint_of_the_forward(backend, reference, case, seed):
    """With b = 0, conv(x, w) is bilinear, so for any u shaped like y and (dx, dw) = conv2d_backward(u):
    <conv(x, w), u> == <x, dx> == <w, dw> (dx is the transposed convolution of u), in float64 to
    1e-12 of the sums of |terms|."""
    a = on_backend(backend, conv_arrays(case, seed))
    b0 = backend.xp.zeros_like(a["b"])
    with speed.reference_path(reference):
        y, cache = Cv.conv2d_forward(a["x"], a["w"], b0, stride=case.stride, padding=case.padding)
        u = backend.asarray(host_data(seed + 3, y.shape))
        dx, dw, _ = Cv.conv2d_backward(u, cache)
    lhs, scale = dot(y, u), abs_dot(y, u) + abs_dot(a["x"], dx) + abs_dot(a["w"], dw)
    assert abs(lhs - dot(a["x"], dx)) <= ADJOINT_RTOL * scale
    assert abs(lhs - dot(a["w"], dw)) <= ADJOINT_RTOL * scale


@both_paths
@given(case=conv_cases(), seed=seeds)
def test_conv2d_backward_matches_finite_differences(backend, reference, case, seed):
    """(dx, dw, db) = conv2d_backward(dy) equal the gradients of L = sum(conv2d_forward(x, w, b) * dy)
    with respect to x, w and b (centered differences, float64, relative error < 1e-6)."""
    arrays = conv_arrays(case, seed)
    with speed.reference_path(reference):
        y, cache = Cv.conv2d_forward(*on_backend(backend, arrays).values(), stride=case.stride, padding=case.padding)
        dy = host_data(seed + 3, y.shape)
        grads = Cv.conv2d_backward(backend.asarray(dy), cache)
        for g, name in zip(grads, "xwb"):
            assert_same_array_kind(g, cache.w)
            assert g.shape == arrays[name].shape
        loss = fake_loss(backend, lambda x, w, b: Cv.conv2d_forward(x, w, b, case.stride, case.padding)[0], dy)
        assert_gradients_match(loss, arrays, dict(zip("xwb", map(to_numpy, grads))))


@given(case=conv_cases(), seed=seeds, dtype=dtypes)
def test_conv2d_speed_forms_equal_the_textbook_forms(backend, case, seed, dtype):
    """conv2d_forward_fast (im2col for thin inputs) == conv2d_forward on the reference path (one
    product per offset), and conv2d_backward_fast (dw as one long product per offset; dx at stride 1
    as the correlation of the re-padded dy with the flipped kernel) == conv2d_backward on the reference
    path (the derivation page's loop: per-image dw, dx scattered window by window), to the dtype's
    tolerance times the number of terms each entry sums, in x's library, device and dtype."""
    a = on_backend(backend, conv_arrays(case, seed, dtype), dtype)
    y, cache = Cv.conv2d_forward_fast(a["x"], a["w"], a["b"], case.stride, case.padding)
    with speed.reference_path():
        y_ref, _ = Cv.conv2d_forward(a["x"], a["w"], a["b"], stride=case.stride, padding=case.padding)
    assert_same_array_kind(y, a["x"])
    assert_close(y, to_numpy(y_ref), scale=case.k * case.k * case.C_in + 1)
    dy = backend.asarray(host_data(seed + 3, y.shape), dtype=y.dtype)
    with speed.reference_path():
        reference = Cv.conv2d_backward(dy, cache)
    terms = (case.k * case.k * case.C_out, case.N * y.shape[1] * y.shape[2], case.N * y.shape[1] * y.shape[2])
    for got, expected, n in zip(Cv.conv2d_backward_fast(dy, cache), reference, terms):
        assert_same_array_kind(got, a["x"])
        assert got.shape == expected.shape
        assert_close(got, to_numpy(expected), scale=n)


@st.composite
def grid_cases(draw):
    """Convolutions the speed forms compute on the flat grid: stride 1, k in {3, 5} with p = k // 2 and
    k^2 C_in > IM2COL_DEPTH. C_out from 1 (dx by im2col, products added by NumPy) to 9 (products
    accumulated by BLAS gemm, backend.GEMM_MIN_COLUMNS = 8); N up to 3 images, H, W from 1 to 6."""
    k = draw(st.sampled_from([3, 5]))
    least = Cv.IM2COL_DEPTH // (k * k) + 1
    side = st.integers(1, 6)
    return ConvCase(draw(st.integers(1, 3)), draw(side), draw(side), draw(st.integers(least, least + 2)),
                    draw(st.integers(1, 9)), k, 1, k // 2)


@given(N=st.integers(1, 3), H=st.integers(1, 6), W=st.integers(1, 6), C=st.integers(1, 3),
       k=st.sampled_from([3, 5]), seed=seeds)
def test_flat_grid_row_shift_d_reads_each_kernel_offsets_padded_neighbour(N, H, W, C, k, seed):
    """On the flat grid (conv_grid.rows, conv_grid.geometry) pixel (n, h, w) is row
    q = m + n G Wg + h Wg + w, and row q + d_ij holds x_pad[n, h + i, w + j] for every kernel offset
    (i, j): the pixel itself inside the image, a zero on the padding, x_pad the textbook zero padding
    by p = k // 2. conv_grid.crop of the P rows from m gives x back as (N, H, W C)."""
    p = k // 2
    x = host_data(seed, (N, H, W, C))
    R = G.rows(x, p)
    P, m, d = G.geometry(N, H, W, k)
    assert R.shape == ((N + 2) * (H + p) * (W + p), C) and P == N * (H + p) * (W + p)
    x_pad = Cv._pad(x, p)
    n, h, w = np.meshgrid(np.arange(N), np.arange(H), np.arange(W), indexing="ij")  # (N, H, W) each
    q = m + (n * (H + p) + h) * (W + p) + w
    for i in range(k):
        for j in range(k):
            np.testing.assert_array_equal(R[q + d[i * k + j]], x_pad[n, h + i, w + j])
    np.testing.assert_array_equal(G.crop(R[m : m + P], N, H, W, p), np.reshape(x, (N, H, W * C)))


@both_paths
@given(N=st.integers(1, 3), H=st.integers(1, 5), W=st.integers(1, 5), C_in=st.integers(1, 6),
       C_out=st.integers(1, 9), seed=seeds, dtype=dtypes)
def test_upsample2x_conv_is_the_conv_of_the_upsampled_input(backend, reference, N, H, W, C_in, C_out, seed,
                                                             dtype):
    """upsample2x_conv(x, w, b) == conv2d_forward_naive(nearest_2x(x), w, b) with "same" padding, x
    repeated twice along H and W on the host in float64, to the dtype's tolerance times the 9 C_in terms
    an output sums; on the speed layer each output phase is a 2 x 2 correlation of x (the kernel rows and
    columns summed per phase), which fails if a phase's taps are shifted. Keeps x's library, device and
    dtype; x is left as it was."""
    x, w, b = (host_data(seed + i, s, dtype) for i, s in enumerate(((N, H, W, C_in), (3, 3, C_in, C_out), (C_out,))))
    xb = backend.asarray(x)
    with parallel.one_blas_thread(), speed.reference_path(reference):
        y = Cv.upsample2x_conv(xb, backend.asarray(w), backend.asarray(b))
    up = np.repeat(np.repeat(x.astype(np.float64), 2, axis=1), 2, axis=2)  # (N, 2H, 2W, C_in)
    assert_same_array_kind(y, xb)
    assert_close(y, Cv.conv2d_forward_naive(up, w.astype(np.float64), b.astype(np.float64), 1, 1), scale=9 * C_in + 1)
    np.testing.assert_array_equal(to_numpy(xb), x)


@given(case=grid_cases(), seed=seeds, dtype=dtypes)
def test_conv2d_on_the_flat_grid_equals_the_naive_loop_and_the_textbook_backward(backend, case, seed, dtype):
    """On the speed layer a stride-1 "same" convolution of a deep input runs on the flat grid (its cache
    holds the grid's rows, 2-D); its y equals conv2d_forward_naive and its (dx, dw, db) equal the
    textbook backward of the reference path, each to the dtype's tolerance times the number of terms an
    entry sums, in x's library, device and dtype. Its cache gives the same gradients when the backward
    runs on the reference path: the cache, not the switch, decides the backward's form. Run in
    refdiff's one-BLAS-thread layout, where the host's products accumulate by gemm."""
    with parallel.one_blas_thread():
        check_flat_grid(backend, case, seed, dtype)


def check_flat_grid(backend, case, seed, dtype):
    a = on_backend(backend, conv_arrays(case, seed, dtype), dtype)
    y, cache = Cv.conv2d_forward(a["x"], a["w"], a["b"], stride=1, padding=case.padding)
    assert cache.x_pad.ndim == 2
    assert_same_array_kind(y, a["x"])
    expected = Cv.conv2d_forward_naive(*(to_numpy(a[n]).astype(np.float64) for n in "xwb"), 1, case.padding)
    assert y.shape == expected.shape
    assert_close(y, expected, scale=case.k * case.k * case.C_in + 1)
    dy = backend.asarray(host_data(seed + 3, y.shape), dtype=y.dtype)
    grads = Cv.conv2d_backward(dy, cache)
    with speed.reference_path():
        reference = Cv.conv2d_backward(dy, Cv.conv2d_forward(a["x"], a["w"], a["b"], 1, case.padding)[1])
        grads_on_reference_path = Cv.conv2d_backward(dy, cache)
    terms = (case.k * case.k * case.C_out, case.N * case.H * case.W, case.N * case.H * case.W)
    for got, got_there, expected, n in zip(grads, grads_on_reference_path, reference, terms):
        assert_same_array_kind(got, a["x"])
        assert got.shape == expected.shape
        assert_close(got, to_numpy(expected), scale=n)
        assert np.array_equal(to_numpy(got_there), to_numpy(got))


@given(k=st.sampled_from([1, 3, 5]), H=st.integers(5, 9), W=st.integers(5, 9))
def test_default_padding_is_half_the_kernel(k, H, W):
    """padding=None means p = k // 2: "same" output size H x W at stride 1 for odd k, and
    ceil(H / 2) x ceil(W / 2) at stride 2."""
    x = host_data(0, (1, H, W, 2))
    w, b = host_data(1, (k, k, 2, 3)), np.zeros(3)
    assert Cv.conv2d_forward(x, w, b)[0].shape == (1, H, W, 3)
    assert Cv.conv2d_forward(x, w, b, stride=2)[0].shape == (1, -(-H // 2), -(-W // 2), 3)
    np.testing.assert_array_equal(Cv.conv2d_forward(x, w, b)[0], Cv.conv2d_forward(x, w, b, padding=k // 2)[0])


# --- PyTorch weight layout ---------------------------------------------------------------------


@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 3])), data=st.data())
def test_weight_from_torch_sends_index_ocij_to_ijco(backend, shape, data):
    """A PyTorch weight (C_out, C_in, k, k) with a single 1 at [o, c, i, j] becomes ours (k, k, C_in,
    C_out) with its single 1 at [i, j, c, o]; weight_to_torch undoes it exactly, on every backend."""
    C_out, C_in, k = shape
    o, c = data.draw(st.integers(0, C_out - 1)), data.draw(st.integers(0, C_in - 1))
    i, j = data.draw(st.integers(0, k - 1)), data.draw(st.integers(0, k - 1))
    w_torch = np.zeros((C_out, C_in, k, k))
    w_torch[o, c, i, j] = 1.0
    ours = Cv.weight_from_torch(backend.asarray(w_torch))
    host = to_numpy(ours)
    assert host.shape == (k, k, C_in, C_out) and host[i, j, c, o] == 1.0 and host.sum() == 1.0
    back = Cv.weight_to_torch(ours)
    assert_same_array_kind(back, ours)
    np.testing.assert_array_equal(to_numpy(back), w_torch)


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)), seed=seeds)
def test_weight_layout_round_trips_both_ways(backend, shape, seed):
    """weight_from_torch(weight_to_torch(w)) == w and weight_to_torch(weight_from_torch(v)) == v exactly."""
    w = backend.asarray(host_data(seed, shape))
    np.testing.assert_array_equal(to_numpy(Cv.weight_from_torch(Cv.weight_to_torch(w))), to_numpy(w))
    np.testing.assert_array_equal(to_numpy(Cv.weight_to_torch(Cv.weight_from_torch(w))), to_numpy(w))


@settings(max_examples=10)  # PyTorch is only a cross-check here; the oracles above are the spec
@given(case=conv_cases(), seed=seeds)
def test_conv2d_matches_torch_conv2d(case, seed):
    """conv2d_forward on NHWC with weight_from_torch(w_t) equals torch.nn.functional.conv2d on NCHW
    with w_t (same stride and padding), and the gradients of sum(y * dy) agree too (float64)."""
    torch = pytest.importorskip("torch")
    x = host_data(seed, (case.N, case.C_in, case.H, case.W))  # NCHW
    w_t = host_data(seed + 1, (case.C_out, case.C_in, case.k, case.k))
    b = host_data(seed + 2, (case.C_out,))
    y, cache = Cv.conv2d_forward(x.transpose(0, 2, 3, 1), Cv.weight_from_torch(w_t), b, case.stride, case.padding)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w_t, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=case.stride, padding=case.padding)
    np.testing.assert_allclose(y.transpose(0, 3, 1, 2), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    dy = host_data(seed + 3, y.shape)
    dx, dw, db = Cv.conv2d_backward(dy, cache)
    (ty * torch.tensor(dy.transpose(0, 3, 1, 2))).sum().backward()
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Cv.weight_to_torch(dw), tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-12, atol=1e-12)


# --- upsample2x, avg_pool2x --------------------------------------------------------------------


def upsample_loop(x: np.ndarray) -> np.ndarray:
    """y[n, 2h + a, 2w + c] = x[n, h, w] by loops over input pixels."""
    N, H, W, C = x.shape
    y = np.empty((N, 2 * H, 2 * W, C))
    for h in range(H):
        for w in range(W):
            for a in range(2):
                for c in range(2):
                    y[:, 2 * h + a, 2 * w + c, :] = x[:, h, w, :]
    return y


def avg_pool_loop(x: np.ndarray) -> np.ndarray:
    """y[n, h, w] = (x[n, 2h, 2w] + x[n, 2h, 2w+1] + x[n, 2h+1, 2w] + x[n, 2h+1, 2w+1]) / 4 by loops."""
    N, H, W, C = x.shape
    y = np.empty((N, H // 2, W // 2, C))
    for h in range(H // 2):
        for w in range(W // 2):
            block = x[:, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2, :]
            y[:, h, w, :] = (block[:, 0, 0] + block[:, 0, 1] + block[:, 1, 0] + block[:, 1, 1]) / 4
    return y


@given(shape=even_nhwc_shapes, seed=seeds, dtype=dtypes)
def test_upsample2x_and_avg_pool2x_equal_pixel_loops(backend, shape, seed, dtype):
    """upsample2x_forward(x) == upsample_loop(x) exactly (it copies); avg_pool2x_forward(x) ==
    avg_pool_loop(x) to the dtype's tolerance times 4; both keep x's library, device and dtype."""
    x = backend.asarray(host_data(seed, shape), dtype=backend.dtype(dtype))
    host = to_numpy(x).astype(np.float64)
    up, _ = Rs.upsample2x_forward(x)
    pooled, _ = Rs.avg_pool2x_forward(x)
    assert_same_array_kind(up, x)
    assert_same_array_kind(pooled, x)
    np.testing.assert_array_equal(to_numpy(up), upsample_loop(host))
    assert_close(pooled, avg_pool_loop(host), scale=4.0)


@given(shape=even_nhwc_shapes, seed=seeds)
def test_resample_backward_matches_finite_differences(backend, shape, seed):
    """upsample2x_backward(dy) and avg_pool2x_backward(dy) equal the gradients of sum(forward(x) * dy)
    (centered differences, float64, relative error < 1e-6)."""
    x = host_data(seed, shape)
    for forward, backward in [(Rs.upsample2x_forward, Rs.upsample2x_backward),
                              (Rs.avg_pool2x_forward, Rs.avg_pool2x_backward)]:
        y, cache = forward(backend.asarray(x))
        dy = host_data(seed + 1, y.shape)
        dx = backward(backend.asarray(dy), cache)
        assert_same_array_kind(dx, y)
        loss = fake_loss(backend, lambda x, forward=forward: forward(x)[0], dy)
        assert_gradients_match(loss, {"x": x}, {"x": to_numpy(dx)})


@given(shape=nhwc_shapes, seed=seeds)
def test_resample_backwards_are_adjoints_and_each_others_forward(backend, shape, seed):
    """For x (N, H, W, C), v (N, 2H, 2W, C), z = v's shape and u = x's shape, with up = upsample2x and
    pool = avg_pool2x: <up(x), v> == <x, up_backward(v)>, <pool(z), u> == <z, pool_backward(u)>
    (adjoints); up_backward(v) == 4 pool(v) and pool_backward(u) == up(u) / 4 (each one's transpose
    is the other up to the factor 4); pool(up(x)) == x."""
    x, u = (backend.asarray(host_data(seed + s, shape)) for s in (0, 1))
    N, H, W, C = shape
    v = backend.asarray(host_data(seed + 2, (N, 2 * H, 2 * W, C)))
    up_x, up_cache = Rs.upsample2x_forward(x)
    pool_v, pool_cache = Rs.avg_pool2x_forward(v)
    up_back, pool_back = Rs.upsample2x_backward(v, up_cache), Rs.avg_pool2x_backward(u, pool_cache)
    assert abs(dot(up_x, v) - dot(x, up_back)) <= ADJOINT_RTOL * abs_dot(up_x, v)
    assert abs(dot(pool_v, u) - dot(v, pool_back)) <= ADJOINT_RTOL * abs_dot(pool_v, u)
    assert_close(up_back, 4.0 * to_numpy(pool_v))
    assert_close(pool_back, to_numpy(Rs.upsample2x_forward(u)[0]) / 4.0)
    assert_close(Rs.avg_pool2x_forward(up_x)[0], to_numpy(x))


# --- dtype, device, aliasing, errors -----------------------------------------------------------


@both_paths
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_keep_library_device_and_dtype_with_no_float64_intermediates(backend, reference, dtype):
    """Every output and gradient of conv2d (k 3, stride 1 and 2, k 1) and of the resampling layers is
    in its input's library, device and dtype; float32 inputs create no float64 array at all on
    array_api_strict (docs/design.md rule 6)."""
    case = ConvCase(2, 6, 5, 3, 4, 3, 1, 1)
    a = on_backend(backend, conv_arrays(case, 0, dtype), dtype)
    one_by_one = backend.asarray(host_data(5, (1, 1, 3, 2)), dtype=a["x"].dtype)
    outs = []
    with float64_tripwire(backend, dtype), speed.reference_path(reference):
        for w, stride, padding in [(a["w"], 1, 1), (a["w"], 2, 2), (one_by_one, 1, 0)]:
            b = a["b"][: w.shape[3], ...]
            y, cache = Cv.conv2d_forward(a["x"], w, b, stride=stride, padding=padding)
            outs += [y, *Cv.conv2d_backward(y, cache)]
        for forward, backward in [(Rs.upsample2x_forward, Rs.upsample2x_backward),
                                  (Rs.avg_pool2x_forward, Rs.avg_pool2x_backward)]:
            y, cache = forward(a["x"][:, :4, :4, :])
            outs += [y, backward(y, cache)]
    for out in outs:
        assert_same_array_kind(out, a["x"])


@both_paths
def test_outputs_never_alias_inputs(reference):
    """Writing into any output or gradient leaves the inputs, the cache and dy untouched (forward and
    backward return fresh arrays), for the shapes where a view would be tempting: padding 0, a 1x1
    kernel, and 1x1 images for upsampling."""
    x, w, b = host_data(0, (2, 1, 1, 3)), host_data(1, (1, 1, 3, 2)), host_data(2, (2,))
    inputs = [x, w, b]
    saved = [a.copy() for a in inputs]
    dy = host_data(3, (2, 1, 1, 2))
    saved_dy = dy.copy()
    with speed.reference_path(reference):
        y, cache = Cv.conv2d_forward(x, w, b, padding=0)
        outs = [y, *Cv.conv2d_backward(dy, cache)]
    up, up_cache = Rs.upsample2x_forward(x)
    pool, pool_cache = Rs.avg_pool2x_forward(up)
    outs += [up, pool, Rs.upsample2x_backward(up, up_cache), Rs.avg_pool2x_backward(pool, pool_cache)]
    for out in outs:
        out[...] = np.nan
    for a, s in zip(inputs + [dy], saved + [saved_dy]):
        np.testing.assert_array_equal(a, s)


def test_bad_inputs_raise_naming_the_argument(backend):
    """Wrong ranks, mismatched channels, non-square kernels, a bias of the wrong length, strides other
    than 1 or 2, negative or non-integer padding, images smaller than the kernel, mixed dtypes, a dy
    that is not the output's shape, odd sizes for 2x2 pooling and an upsampling convolution's kernel
    other than 3 x 3 are refused with the argument's name."""
    x = backend.asarray(host_data(0, (1, 4, 4, 2)))
    w, b = backend.asarray(host_data(1, (3, 3, 2, 3))), backend.asarray(host_data(2, (3,)))
    f32 = backend.dtype("float32")
    cases = [
        (lambda: Cv.conv2d_forward(x[0, ...], w, b), "x must have shape"),
        (lambda: Cv.conv2d_forward(x, backend.asarray(host_data(1, (3, 3, 5, 3))), b), "w must have shape"),
        (lambda: Cv.conv2d_forward(x, backend.asarray(host_data(1, (3, 1, 2, 3))), b), "w must have shape"),
        (lambda: Cv.conv2d_forward(x, w, backend.asarray(host_data(2, (4,)))), r"b must have shape \(C_out,\)"),
        (lambda: Cv.conv2d_forward(x, w, b, stride=3), r"stride must be one of \(1, 2\), got 3"),
        (lambda: Cv.conv2d_forward(x, w, b, stride=True), "stride must"),
        (lambda: Cv.conv2d_forward(x, w, b, padding=-1), "padding must be None or an integer >= 0, got -1"),
        (lambda: Cv.conv2d_forward(x, w, b, padding=1.5), "padding must"),
        (lambda: Cv.conv2d_forward(x[:, :2, ...], w, b, padding=0), "x's height and width"),
        (lambda: Cv.conv2d_forward(x, backend.asarray(host_data(1, (3, 3, 2, 3)), dtype=f32), b), "w and b must"),
        (lambda: Cv.conv2d_backward(backend.asarray(host_data(3, (1, 4, 4, 2))), Cv.conv2d_forward(x, w, b)[1]),
         "dy must have the forward output's shape"),
        (lambda: Cv.weight_from_torch(w[0, ...]), "w must have PyTorch's shape"),
        (lambda: Cv.weight_to_torch(w[0, ...]), "w must have shape"),
        (lambda: Rs.upsample2x_forward(x[0, ...]), "x must have shape"),
        (lambda: Cv.upsample2x_conv(x, backend.asarray(host_data(1, (1, 1, 2, 3))), b), "w must be a 3 x 3 kernel"),
        (lambda: Cv.upsample2x_conv(x, backend.asarray(host_data(1, (3, 3, 5, 3))), b), "w must have shape"),
        (lambda: Rs.avg_pool2x_forward(x[:, :3, ...]), "x must have even height and width"),
        (lambda: Rs.upsample2x_backward(x, Rs.upsample2x_forward(x)[1]), "dy must have the forward output's shape"),
        (lambda: Rs.avg_pool2x_backward(x, Rs.avg_pool2x_forward(x)[1]), "dy must have the forward output's shape"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    integer_x = backend.asarray(np.ones((1, 4, 4, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="x must be a real floating array"):
        Cv.conv2d_forward(integer_x, w, b)
    with pytest.raises(TypeError, match="x must be a real floating array"):
        Rs.upsample2x_forward(integer_x)
