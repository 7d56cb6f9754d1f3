"""Specification of refdiff.layers.basic: linear, SiLU and inverted dropout forward/backward pairs."""

import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match, fake_loss
from refdiff import speed
from refdiff.backend import Generator, get_backend, to_numpy
from refdiff.layers import basic as B
from support import DTYPES, assert_close, assert_same_array_kind, host_data, float64_tripwire

seeds = st.integers(0, 2**16)
lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)  # the (...) of (..., C)
channels = st.integers(1, 4)
# The finite-difference and dtype checks hold on both paths: the speed layer and, under
# speed.reference_path(), the textbook forms (tests/test_layers_fast.py holds the two equal).
both_paths = pytest.mark.parametrize("reference", [False, True], ids=["speed", "reference"])


# ----------------------------------------------------------------------------------------- linear

@both_paths
@given(lead=lead_shapes, c_in=channels, c_out=channels, seed=seeds)
def test_linear_backward_matches_finite_differences(backend, reference, lead, c_in, c_out, seed):
    """(dx, dw, db) = linear_backward(dy) equal the gradients of sum(linear(x, w, b) * dy) (float64)."""
    arrays = {"x": host_data(seed, lead + (c_in,)), "w": host_data(seed + 1, (c_in, c_out)),
              "b": host_data(seed + 2, (c_out,))}
    dy = host_data(seed + 3, lead + (c_out,))
    with speed.reference_path(reference):
        _, cache = B.linear_forward(*(backend.asarray(arrays[k]) for k in ("x", "w", "b")))
        grads = B.linear_backward(backend.asarray(dy), cache)
        loss = fake_loss(backend, lambda x, w, b: B.linear_forward(x, w, b)[0], dy)
        assert_gradients_match(loss, arrays, dict(zip(("x", "w", "b"), map(to_numpy, grads))))


@given(lead=lead_shapes, c_in=channels, c_out=channels, seed=seeds, dtype=st.sampled_from(DTYPES))
def test_linear_equals_the_host_affine_map(backend, lead, c_in, c_out, seed, dtype):
    """linear_forward(x, w, b) == x @ w + b computed in float64 NumPy, to the dtype's tolerance
    times C_in (a sum of C_in products), and keeps x's library, device and dtype."""
    x, w = host_data(seed, lead + (c_in,), dtype), host_data(seed + 1, (c_in, c_out), dtype)
    b = host_data(seed + 2, (c_out,), dtype)
    y, _ = B.linear_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    assert_same_array_kind(y, backend.asarray(x))
    assert_close(y, x.astype(np.float64) @ w.astype(np.float64) + b, scale=c_in)


# ------------------------------------------------------------------------------------------- silu

@both_paths
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), seed=seeds)
def test_silu_backward_matches_finite_differences(backend, reference, shape, seed):
    """dx = silu_backward(dy) equals the gradient of sum(x * sigmoid(x) * dy) (float64)."""
    arrays = {"x": host_data(seed, shape, scale=3.0)}
    dy = host_data(seed + 1, shape)
    with speed.reference_path(reference):
        _, cache = B.silu_forward(backend.asarray(arrays["x"]))
        dx = B.silu_backward(backend.asarray(dy), cache)
        loss = fake_loss(backend, lambda x: B.silu_forward(x)[0], dy)
        assert_gradients_match(loss, arrays, {"x": to_numpy(dx)})


@both_paths
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_matches_expit_without_overflow_at_large_inputs(backend, reference, dtype):
    """silu(x) == x * expit(x) (SciPy, float64) over x in [-1e4, 1e4], with no inf/NaN and no
    overflow warning: the stable sigmoid never evaluates exp of a positive number."""
    x = np.concatenate([np.linspace(-1e4, 1e4, 101), np.linspace(-30, 30, 121)]).astype(dtype)
    with np.errstate(over="raise", invalid="raise"), speed.reference_path(reference):
        y, _ = B.silu_forward(backend.asarray(x))
    assert np.all(np.isfinite(to_numpy(y)))
    assert_close(y, x.astype(np.float64) * scipy.special.expit(x.astype(np.float64)))


# ---------------------------------------------------------------------------------------- dropout

def _dropout(x, p, seed):
    """dropout_forward with a fresh generator of ``seed``: the same mask on every call."""
    return B.dropout_forward(x, p, generator=Generator(seed), train=True)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), p=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
       seed=seeds)
def test_dropout_backward_matches_finite_differences(backend, shape, p, seed):
    """dx = dropout_backward(dy) equals the gradient of sum(dropout(x) * dy) for a fixed mask (float64)."""
    arrays = {"x": host_data(seed, shape)}
    dy = host_data(seed + 1, shape)
    _, cache = _dropout(backend.asarray(arrays["x"]), p, seed)
    dx = B.dropout_backward(backend.asarray(dy), cache)
    assert_gradients_match(fake_loss(backend, lambda x: _dropout(x, p, seed)[0], dy), arrays, {"x": to_numpy(dx)})


@given(p=st.sampled_from([0.0, 0.3, 0.99]), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_dropout_is_the_identity_in_eval_and_at_p0(backend, p, seed, dtype):
    """dropout(x, p, train=False) == x, dropout(x, 0) == x (no generator needed), and then dx == dy."""
    x = backend.asarray(host_data(seed, (3, 4), dtype))
    for y, cache in (B.dropout_forward(x, p, train=False), B.dropout_forward(x, 0.0, generator=None)):
        assert_close(y, to_numpy(x), scale=0.0)
        assert_same_array_kind(y, x)
        dx = B.dropout_backward(x, cache)
        assert_close(dx, to_numpy(x), scale=0.0)
        assert_same_array_kind(dx, x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keeps_a_fraction_one_minus_p_scaled_by_its_inverse(backend, p):
    """Over n = 20000 entries of ones, the kept fraction is within 5 binomial standard errors
    sqrt(p (1 - p) / n) of 1 - p, and every survivor equals 1 / (1 - p) (so E[y] = x)."""
    n = 20000
    y, _ = _dropout(backend.asarray(np.ones((n,))), p, seed=7)
    y = to_numpy(y)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - p), rtol=1e-15)


@given(seed=seeds, p=st.sampled_from([0.2, 0.5]), dtype=st.sampled_from(DTYPES))
def test_dropout_same_seed_gives_the_same_mask_on_every_backend(backend, seed, p, dtype):
    """The mask of Generator(seed) on ``backend`` equals the one on NumPy (host draws, docs/design.md rule 4)."""
    x = host_data(seed, (4, 3, 5), dtype)
    y, _ = _dropout(backend.asarray(x), p, seed)
    y_ref, _ = _dropout(get_backend("numpy").asarray(x), p, seed)
    np.testing.assert_array_equal(to_numpy(y) != 0, to_numpy(y_ref) != 0)
    assert_close(y, to_numpy(y_ref))


# ------------------------------------------------------------------------------- dtype discipline

@both_paths
def test_float32_layers_create_no_float64_and_keep_the_array_kind(backend, reference):
    """float32 forward and backward of linear, silu and dropout create no float64 array (tripwire on
    array_api_strict) and return arrays of the input's library, device and dtype."""
    x = backend.asarray(host_data(0, (2, 3, 4), "float32"))
    w, b = backend.asarray(host_data(1, (4, 5), "float32")), backend.asarray(host_data(2, (5,), "float32"))
    dy = backend.asarray(host_data(3, (2, 3, 5), "float32"))
    with float64_tripwire(backend), speed.reference_path(reference):
        y, cache = B.linear_forward(x, w, b)
        outs = [y, *B.linear_backward(dy, cache)]
        y, cache = B.silu_forward(x)
        outs += [y, B.silu_backward(x, cache)]
        y, cache = _dropout(x, 0.3, seed=1)
        outs += [y, B.dropout_backward(x, cache)]
    for out in outs:
        assert_same_array_kind(out, x)


# ------------------------------------------------------------------------------------- bad inputs

def _linear(bk, x_shape=(2, 3), w_shape=(3, 5), b_shape=(5,)):
    return B.linear_forward(*(bk.asarray(np.ones(s)) for s in (x_shape, w_shape, b_shape)))


@pytest.mark.parametrize("call, message", [
    (lambda bk: _linear(bk, w_shape=(4, 5)), r"w must have shape \(3, C_out\)"),
    (lambda bk: _linear(bk, b_shape=(4,)), r"b must have shape \(5,\)"),
    (lambda bk: _linear(bk, x_shape=()), "x must"),
    (lambda bk: B.dropout_forward(bk.asarray(np.ones(3)), 1.0, Generator(0)), r"p must be .* \[0, 1\)"),
    (lambda bk: B.dropout_forward(bk.asarray(np.ones(3)), -0.1, Generator(0)), "p must"),
    (lambda bk: B.dropout_forward(bk.asarray(np.ones(3)), 0.5), "generator is required"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(backend, call, message):
    """Wrong shapes, p outside [0, 1) and a missing generator raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=message):
        call(backend)
