"""Specification of refdiff.layers.fast: every speed form equals the textbook form it speeds up.

Each test runs the textbook form on the reference path (``speed.reference_path()``) and the speed form
directly, in float64 on hypothesis-drawn shapes, and compares them to float64's tolerance times the
number of terms a result sums (the two forms add the same terms in different orders). conv2d's speed
forms live in refdiff/layers/conv.py and are held against its textbook forms in tests/test_layers_conv.py.
"""

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refdiff import speed
from refdiff.backend import to_numpy
from refdiff.layers import basic as B
from refdiff.layers import fast
from refdiff.layers import norm as Nm
from support import assert_close, assert_same_array_kind, host_data

seeds = st.integers(0, 2**16)
sides = st.integers(1, 4)
spatial_shapes = st.lists(sides, min_size=0, max_size=2).map(tuple)  # the (...) of (N, ..., C)


def reference(layer, *args):
    """layer(*args) on the reference path: the textbook form."""
    with speed.reference_path():
        return layer(*args)


def assert_forms_agree(got, expected, like, scale: float = 1.0):
    """Each array of the speed form's result ``got`` equals the textbook form's ``expected`` to
    float64's tolerance times ``scale``, and keeps ``like``'s library, device and dtype."""
    for g, e in zip(got, expected):
        assert_same_array_kind(g, like)
        assert g.shape == e.shape
        assert_close(g, to_numpy(e), scale=scale)


@given(lead=st.lists(sides, min_size=0, max_size=2).map(tuple), M=sides, C=sides, seed=seeds)
def test_column_sums_is_the_sum_over_the_second_to_last_axis(backend, lead, M, C, seed):
    """column_sums(a) == xp.sum(a, axis=-2) for a of shape (..., M, C), to M roundings."""
    a = backend.asarray(host_data(seed, lead + (M, C)))
    assert_forms_agree([fast.column_sums(a)], [backend.xp.sum(a, axis=-2)], a, scale=M)


@given(lead=st.lists(sides, min_size=0, max_size=2).map(tuple), c_in=sides, c_out=sides, seed=seeds)
def test_linear_backward_forms_agree(backend, lead, c_in, c_out, seed):
    """fast.linear_backward(dy, cache) == basic.linear_backward(dy, cache) (db by a ones-vector product)."""
    x, w = backend.asarray(host_data(seed, lead + (c_in,))), backend.asarray(host_data(seed + 1, (c_in, c_out)))
    _, cache = B.linear_forward(x, w, backend.asarray(host_data(seed + 2, (c_out,))))
    dy = backend.asarray(host_data(seed + 3, lead + (c_out,)))
    rows = math.prod(lead)
    assert_forms_agree(fast.linear_backward(dy, cache), reference(B.linear_backward, dy, cache), x,
                       scale=max(rows, c_out))


@given(shape=st.lists(sides, min_size=1, max_size=3).map(tuple), seed=seeds)
def test_sigmoid_and_silu_backward_forms_agree(backend, shape, seed):
    """fast.sigmoid(x) == basic.sigmoid(x) and fast.silu_backward == basic.silu_backward (in place,
    sig factored out), elementwise to a few roundings."""
    x = backend.asarray(host_data(seed, shape, scale=3.0))
    dy = backend.asarray(host_data(seed + 1, shape))
    _, cache = reference(B.silu_forward, x)
    assert_forms_agree([fast.sigmoid(x)], [reference(B.sigmoid, x)], x)
    assert_forms_agree([fast.silu_backward(dy, cache)], [reference(B.silu_backward, dy, cache)], x, scale=4.0)


@st.composite
def group_shapes(draw):
    """(shape, groups): shape (N, ..., C) with C = groups * channels per group."""
    groups, per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (draw(st.integers(1, 2)),) + draw(spatial_shapes) + (groups * per_group,), groups


@given(shape_groups=group_shapes(), seed=seeds)
def test_group_norm_forward_forms_agree(backend, shape_groups, seed):
    """fast.group_norm_forward == norm.group_norm_forward: y and the cached xc and rstd, to M
    roundings (M entries per group; the speed form sums them per channel, then per group)."""
    shape, groups = shape_groups
    C = shape[-1]
    x, gamma, beta = (backend.asarray(host_data(seed + i, s)) for i, s in enumerate((shape, (C,), (C,))))
    M = math.prod(shape[1:-1]) * (C // groups)
    y, cache = fast.group_norm_forward(x, gamma, beta, groups, 1e-5)
    y_ref, cache_ref = reference(Nm.group_norm_forward, x, gamma, beta, groups, 1e-5)
    assert_forms_agree([y, cache.xc, cache.rstd], [y_ref, cache_ref.xc, cache_ref.rstd], x, scale=M)


@given(shape_groups=group_shapes(), seed=seeds)
def test_group_norm_backward_forms_agree(backend, shape_groups, seed):
    """fast.group_norm_backward (closed form) == norm.group_norm_backward (steps 7 to 1), to M
    roundings of the terms' size, max |dy * gamma| * max rstd: dx subtracts two group means from
    dxhat * rstd, so it can be far smaller than its terms."""
    shape, groups = shape_groups
    C = shape[-1]
    x, gamma, beta = (backend.asarray(host_data(seed + i, s)) for i, s in enumerate((shape, (C,), (C,))))
    dy = backend.asarray(host_data(seed + 3, shape))
    _, cache = reference(Nm.group_norm_forward, x, gamma, beta, groups)
    M = math.prod(shape[1:-1]) * (C // groups)
    terms = np.max(np.abs(to_numpy(dy))) * np.max(np.abs(to_numpy(gamma))) * np.max(to_numpy(cache.rstd))
    got, expected = fast.group_norm_backward(dy, cache), reference(Nm.group_norm_backward, dy, cache)
    assert_forms_agree(got[:1], expected[:1], x, scale=10 * M * max(1.0, terms))
    assert_forms_agree(got[1:], expected[1:], x, scale=shape[0] * M)


@given(shape_groups=group_shapes(), adagn=st.booleans(), seed=seeds)
def test_group_norm_silu_forms_agree(backend, shape_groups, adagn, seed):
    """fast.group_norm_silu (GN's and AdaGN's affine maps folded into one, the SiLU by one tanh, passes on
    rows of several pixels) == norm.group_norm_silu (the three layers' forwards in turn), to M roundings."""
    shape, groups = shape_groups
    N, C = shape[0], shape[-1]
    x, gamma, beta = (backend.asarray(host_data(seed + i, s, scale=2.0)) for i, s in enumerate((shape, (C,), (C,))))
    modulation = ((backend.asarray(host_data(seed + 3, (N, C))), backend.asarray(host_data(seed + 4, (N, C))))
                  if adagn else (None, None))
    M = math.prod(shape[1:-1]) * (C // groups)
    assert_forms_agree([fast.group_norm_silu(x, gamma, beta, groups, 1e-5, *modulation)],
                       [reference(Nm.group_norm_silu, x, gamma, beta, groups, 1e-5, *modulation)], x, scale=4 * M)


@given(S=st.integers(1, 300), C=st.integers(1, 300))
def test_long_rows_are_the_most_pixels_that_divide_the_image_within_LONG_ROW(S, C):
    """_long_rows(S, C) = R divides S, R C <= LONG_ROW unless R = 1, and no larger divisor of S fits."""
    R = fast._long_rows(S, C)
    assert S % R == 0 and (R == 1 or R * C <= fast.LONG_ROW)
    assert not any(S % r == 0 and r * C <= fast.LONG_ROW for r in range(R + 1, S + 1))


@given(N=st.integers(1, 2), spatial=spatial_shapes, C=sides, seed=seeds)
def test_sums_over_space_and_scale_shift_backward_forms_agree(backend, N, spatial, C, seed):
    """fast.sum_over_space == norm.sum_over_space and fast.scale_shift_backward ==
    norm.scale_shift_backward, to S roundings (S = prod of the spatial axes)."""
    shape = (N,) + spatial + (C,)
    h, dy = backend.asarray(host_data(seed, shape)), backend.asarray(host_data(seed + 1, shape))
    scale, shift = backend.asarray(host_data(seed + 2, (N, C))), backend.asarray(host_data(seed + 3, (N, C)))
    S = math.prod(spatial)
    assert_forms_agree([fast.sum_over_space(h)], [reference(Nm.sum_over_space, h)], h, scale=S)
    _, cache = Nm.scale_shift_forward(h, scale, shift)
    assert_forms_agree(fast.scale_shift_backward(dy, cache), reference(Nm.scale_shift_backward, dy, cache), h,
                       scale=S)
