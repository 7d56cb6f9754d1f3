"""Specification of refdiff.layers.norm: group normalization, scale-shift (AdaGN) modulation and both
followed by SiLU in one step (group_norm_silu)."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match, fake_loss
from refdiff import speed
from refdiff.backend import to_numpy
from refdiff.layers import norm as Nm
from support import DTYPES, assert_close, assert_same_array_kind, host_data, float64_tripwire

seeds = st.integers(0, 2**16)
spatial_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)  # the (...) of (N, ..., C)
# The finite-difference and dtype checks hold on both paths: the speed layer and, under
# speed.reference_path(), the textbook forms (tests/test_layers_fast.py holds the two equal).
both_paths = pytest.mark.parametrize("reference", [False, True], ids=["speed", "reference"])


@st.composite
def group_shapes(draw):
    """(shape, groups): shape (N, ..., C) with C = groups * channels per group."""
    groups, per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (draw(st.integers(1, 2)),) + draw(spatial_shapes) + (groups * per_group,), groups


def host_group_norm(x, gamma, beta, groups, eps=1e-5):
    """Group norm by a loop over samples and groups with np.mean / np.var, in float64."""
    x = x.astype(np.float64)
    C = x.shape[-1]
    per = C // groups
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        for g in range(groups):
            block = x[n, ..., g * per:(g + 1) * per]
            y[n, ..., g * per:(g + 1) * per] = (block - block.mean()) / np.sqrt(block.var() + eps)
    return y * gamma + beta


# ------------------------------------------------------------------------------------- group norm

@both_paths
@given(shape_groups=group_shapes(), seed=seeds)
def test_group_norm_backward_matches_finite_differences(backend, reference, shape_groups, seed):
    """(dx, dgamma, dbeta) = group_norm_backward(dy) equal the gradients of
    sum(group_norm(x, gamma, beta) * dy) for every input and parameter (float64)."""
    shape, groups = shape_groups
    C = shape[-1]
    # With M = 2 entries per group xhat is +-1/sqrt(1 + eps/var) whatever x is: dx is O(eps) and
    # drowns in the finite-difference noise of the O(1) loss. (M = 1 is exact: xhat = 0, dx = 0.)
    assume(math.prod(shape[1:-1]) * (C // groups) != 2)
    arrays = {"x": host_data(seed, shape), "gamma": host_data(seed + 1, (C,)), "beta": host_data(seed + 2, (C,))}
    dy = host_data(seed + 3, shape)
    with speed.reference_path(reference):
        _, cache = Nm.group_norm_forward(*(backend.asarray(arrays[k]) for k in ("x", "gamma", "beta")), groups)
        grads = Nm.group_norm_backward(backend.asarray(dy), cache)
        loss = fake_loss(backend, lambda x, gamma, beta: Nm.group_norm_forward(x, gamma, beta, groups)[0], dy)
        assert_gradients_match(loss, arrays, dict(zip(("x", "gamma", "beta"), map(to_numpy, grads))))


@both_paths
@given(shape_groups=group_shapes(), seed=seeds, dtype=st.sampled_from(DTYPES),
       eps=st.sampled_from([1e-5, 1e-6, 0.1]))
def test_group_norm_matches_the_per_group_host_formula(backend, reference, shape_groups, seed, dtype, eps):
    """y[n, ..., group g] == (x - mean) / sqrt(var + eps) * gamma + beta with the biased mean and
    variance of that block (np.mean / np.var in float64), to the dtype's tolerance times 10 (the
    normalization divides by a std that carries the rounding of M-term sums); y keeps x's kind."""
    shape, groups = shape_groups
    x = host_data(seed, shape, dtype)
    gamma, beta = host_data(seed + 1, shape[-1:], dtype), host_data(seed + 2, shape[-1:], dtype)
    with speed.reference_path(reference):
        y, _ = Nm.group_norm_forward(backend.asarray(x), backend.asarray(gamma), backend.asarray(beta), groups, eps)
    assert_same_array_kind(y, backend.asarray(x))
    assert_close(y, host_group_norm(x, gamma, beta, groups, eps), scale=10.0)


@given(shape_groups=group_shapes(), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_group_norm_matches_torch(shape_groups, seed, dtype):
    """group_norm_forward(x) == torch.nn.functional.group_norm on x moved to NCHW (channels first), torch
    run in float64 on the same values (in float32 its own rounding, times rstd = 1 / sqrt(eps) ~ 316 in a
    group of one value, exceeds float32's tolerance)."""
    torch = pytest.importorskip("torch")
    shape, groups = shape_groups
    # torch refuses N * C/G * S == 1 ("Expected more than 1 value per channel when training").
    assume(shape[0] * (shape[-1] // groups) * math.prod(shape[1:-1]) > 1)
    x = host_data(seed, shape, dtype)
    gamma, beta = host_data(seed + 1, shape[-1:], dtype), host_data(seed + 2, shape[-1:], dtype)
    y, _ = Nm.group_norm_forward(x, gamma, beta, groups)
    first = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))  # (N, ..., C) -> (N, C, ...)
    x64, gamma64, beta64 = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
                            for a in (x.transpose(first), gamma, beta))
    expected = torch.nn.functional.group_norm(x64, groups, gamma64, beta64, eps=1e-5)
    assert_close(y, np.moveaxis(expected.numpy(), 1, -1), scale=10.0)


@both_paths
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_of_a_constant_group_is_beta(backend, reference, dtype):
    """A constant group has var = 0; eps keeps rstd = 1/sqrt(eps) finite, so y == beta exactly there,
    and the backward is finite."""
    x = np.full((2, 3, 3, 4), 5.0, dtype=dtype)
    gamma, beta = host_data(1, (4,), dtype), host_data(2, (4,), dtype)
    with speed.reference_path(reference):
        y, cache = Nm.group_norm_forward(backend.asarray(x), backend.asarray(gamma), backend.asarray(beta), 2)
        grads = Nm.group_norm_backward(backend.asarray(host_data(3, x.shape, dtype)), cache)
    assert_close(y, np.broadcast_to(beta, x.shape))
    for g in grads:
        assert np.all(np.isfinite(to_numpy(g)))


# ------------------------------------------------------------------------------------ scale-shift

@both_paths
@given(N=st.integers(1, 2), spatial=spatial_shapes, C=st.integers(1, 4), seed=seeds)
def test_scale_shift_backward_matches_finite_differences(backend, reference, N, spatial, C, seed):
    """(dh, dscale, dshift) = scale_shift_backward(dy) equal the gradients of
    sum((h * (1 + scale) + shift) * dy) (float64)."""
    arrays = {"h": host_data(seed, (N,) + spatial + (C,)), "scale": host_data(seed + 1, (N, C)),
              "shift": host_data(seed + 2, (N, C))}
    dy = host_data(seed + 3, (N,) + spatial + (C,))
    with speed.reference_path(reference):
        _, cache = Nm.scale_shift_forward(*(backend.asarray(arrays[k]) for k in ("h", "scale", "shift")))
        grads = Nm.scale_shift_backward(backend.asarray(dy), cache)
        loss = fake_loss(backend, lambda h, scale, shift: Nm.scale_shift_forward(h, scale, shift)[0], dy)
        assert_gradients_match(loss, arrays, dict(zip(("h", "scale", "shift"), map(to_numpy, grads))))


@both_paths
@given(N=st.integers(1, 2), spatial=spatial_shapes, C=st.integers(1, 4), seed=seeds)
def test_sum_over_space_is_the_gradient_of_a_vector_broadcast_over_space(backend, reference, N, spatial, C, seed):
    """sum_over_space(dy) equals the gradient of sum(e[:, None, ..., None, :] * dy) with respect to
    e (N, C), the vector broadcast over the spatial axes (float64), and keeps dy's kind."""
    shape = (N,) + spatial + (C,)
    dy = host_data(seed, shape)
    with speed.reference_path(reference):
        de = Nm.sum_over_space(backend.asarray(dy))
    assert_same_array_kind(de, backend.asarray(dy))
    loss = fake_loss(backend, lambda e: backend.xp.reshape(e, (N,) + (1,) * len(spatial) + (C,)), dy)
    assert_gradients_match(loss, {"e": host_data(seed + 1, (N, C))}, {"e": to_numpy(de)})


@given(N=st.integers(1, 3), spatial=spatial_shapes, C=st.integers(1, 4), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_scale_shift_broadcasts_per_sample_over_space(backend, N, spatial, C, seed, dtype):
    """scale_shift(h, s, b)[n, ..., c] == h[n, ..., c] * (1 + s[n, c]) + b[n, c], and keeps h's kind."""
    h = host_data(seed, (N,) + spatial + (C,), dtype)
    s, b = host_data(seed + 1, (N, C), dtype), host_data(seed + 2, (N, C), dtype)
    y, _ = Nm.scale_shift_forward(backend.asarray(h), backend.asarray(s), backend.asarray(b))
    assert_same_array_kind(y, backend.asarray(h))
    bshape = (N,) + (1,) * len(spatial) + (C,)
    assert_close(y, h.astype(np.float64) * (1.0 + s.reshape(bshape)) + b.reshape(bshape), scale=2.0)


# ------------------------------------------------------------------------ normalize and activate

@both_paths
@given(shape_groups=group_shapes(), adagn=st.booleans(), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_group_norm_silu_is_silu_of_the_per_group_host_formula(backend, reference, shape_groups, adagn, seed,
                                                               dtype):
    """group_norm_silu(x, gamma, beta, G[, scale, shift]) == silu(h), h = host_group_norm(x) [* (1 + scale)
    + shift] per sample and channel, silu(h) = h / (1 + exp(-h)) in float64, to the dtype's tolerance times
    the M entries a group's statistics sum; the result keeps x's library, device and dtype, and x is left
    as it was."""
    shape, groups = shape_groups
    N, C = shape[0], shape[-1]
    x, gamma, beta, scale, shift = (host_data(seed + i, s, dtype, scale=2.0) for i, s in
                                    enumerate((shape, (C,), (C,), (N, C), (N, C))))
    h = host_group_norm(x, gamma.astype(np.float64), beta.astype(np.float64), groups)
    modulation = ()
    if adagn:
        per_sample = (N,) + (1,) * (len(shape) - 2) + (C,)  # (N, 1, ..., 1, C): broadcast over space
        h = h * (1.0 + np.reshape(scale, per_sample)) + np.reshape(shift, per_sample)
        modulation = (backend.asarray(scale), backend.asarray(shift))
    xb = backend.asarray(x)
    with speed.reference_path(reference):
        y = Nm.group_norm_silu(xb, backend.asarray(gamma), backend.asarray(beta), groups, 1e-5, *modulation)
    assert_same_array_kind(y, xb)
    assert_close(y, h / (1.0 + np.exp(-h)), scale=4 * math.prod(shape[1:-1]) * (C // groups))
    np.testing.assert_array_equal(to_numpy(xb), x)  # the input is left as it was


# ------------------------------------------------------------------------------- dtype discipline

@both_paths
def test_float32_norm_layers_create_no_float64_and_keep_the_array_kind(backend, reference):
    """float32 forward and backward of group_norm and scale_shift, sum_over_space and group_norm_silu create no float64
    array (tripwire on array_api_strict) and return arrays of the input's library, device and dtype."""
    x = backend.asarray(host_data(0, (2, 3, 3, 4), "float32"))
    gamma, beta = backend.asarray(host_data(1, (4,), "float32")), backend.asarray(host_data(2, (4,), "float32"))
    scale, shift = backend.asarray(host_data(3, (2, 4), "float32")), backend.asarray(host_data(4, (2, 4), "float32"))
    with float64_tripwire(backend), speed.reference_path(reference):
        y, cache = Nm.group_norm_forward(x, gamma, beta, 2)
        outs = [y, *Nm.group_norm_backward(x, cache)]
        y, cache = Nm.scale_shift_forward(x, scale, shift)
        outs += [y, *Nm.scale_shift_backward(x, cache), Nm.sum_over_space(x)]
        outs += [Nm.group_norm_silu(x, gamma, beta, 2), Nm.group_norm_silu(x, gamma, beta, 2, 1e-5, scale, shift)]
    for out in outs:
        assert_same_array_kind(out, x)


# ------------------------------------------------------------------------------------- bad inputs

def _gn(bk, shape=(2, 3, 3, 4), C=4, groups=2, eps=1e-5, beta_shape=None):
    return Nm.group_norm_forward(bk.asarray(np.ones(shape)), bk.asarray(np.ones(C)),
                                 bk.asarray(np.ones(beta_shape or C)), groups, eps)


@pytest.mark.parametrize("call, message", [
    (lambda bk: _gn(bk, groups=3), "groups must be a positive integer dividing C = 4, got 3"),
    (lambda bk: _gn(bk, groups=0), "groups must"),
    (lambda bk: _gn(bk, C=3), r"gamma must have shape \(4,\)"),
    (lambda bk: _gn(bk, beta_shape=(2, 2)), "beta must"),
    (lambda bk: _gn(bk, eps=0.0), "eps must"),
    (lambda bk: _gn(bk, shape=(4,)), "x must"),
    (lambda bk: Nm.scale_shift_forward(bk.asarray(np.ones((2, 3, 3, 4))), bk.asarray(np.ones((2, 3))),
                                       bk.asarray(np.ones((2, 4)))), r"scale must have shape \(2, 4\)"),
    (lambda bk: Nm.scale_shift_forward(bk.asarray(np.ones((2, 3, 3, 4))), bk.asarray(np.ones((2, 4))),
                                       bk.asarray(np.ones((1, 4)))), "shift must"),
    (lambda bk: Nm.group_norm_silu(bk.asarray(np.ones((2, 3, 3, 4))), bk.asarray(np.ones(4)), bk.asarray(np.ones(4)),
                                   2, scale=bk.asarray(np.ones((2, 4)))), r"scale and shift must be given together"),
    (lambda bk: Nm.group_norm_silu(bk.asarray(np.ones((2, 3, 3, 4))), bk.asarray(np.ones(4)), bk.asarray(np.ones(4)),
                                   2, 1e-5, bk.asarray(np.ones((2, 4))), bk.asarray(np.ones((2, 3)))),
     r"shift must have shape \(2, 4\)"),
    (lambda bk: Nm.group_norm_silu(bk.asarray(np.ones((2, 3, 3, 4))), bk.asarray(np.ones(4)), bk.asarray(np.ones(4)),
                                   3), "groups must"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(backend, call, message):
    """Groups not dividing C, mis-shaped gamma/beta/scale/shift, scale without shift and eps <= 0 raise
    ValueError."""
    with pytest.raises(ValueError, match=message):
        call(backend)
