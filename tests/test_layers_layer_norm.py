"""Specification of refdiff.layers.layer_norm: layer normalization over the last axis."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match, fake_loss
from refdiff import speed
from refdiff.backend import to_numpy
from refdiff.layers import layer_norm as LN
from refdiff.layers import norm as Nm
from support import DTYPES, assert_close, assert_same_array_kind, float64_tripwire, host_data

seeds = st.integers(0, 2**16)
# (..., C): one to three leading axes (a batch of vectors, of sequences, ...), C channels
shapes = st.tuples(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.integers(1, 6)).map(
    lambda t: tuple(t[0]) + (t[1],))
NAMES = ("x", "gamma", "beta")


def host_layer_norm(x, gamma, beta, eps=1e-5):
    """Layer norm by a loop over rows with np.mean / np.var, in float64."""
    x2 = x.astype(np.float64).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    for i, row in enumerate(x2):
        y[i] = (row - row.mean()) / np.sqrt(row.var() + eps)
    return (y * gamma + beta).reshape(x.shape)


def arrays_for(shape, seed, dtype="float64"):
    C = shape[-1]
    return {"x": host_data(seed, shape, dtype), "gamma": host_data(seed + 1, (C,), dtype),
            "beta": host_data(seed + 2, (C,), dtype)}


@given(shape=shapes, seed=seeds)
def test_layer_norm_backward_matches_finite_differences(backend, shape, seed):
    """(dx, dgamma, dbeta) = layer_norm_backward(dy) equal the gradients of
    sum(layer_norm(x, gamma, beta) * dy) for every input and parameter (float64)."""
    # With C = 2, xhat = +-1/sqrt(1 + eps/var) whatever x is: dx is O(eps) and drowns in the
    # finite-difference noise of the O(1) loss (C = 1 is exact: xhat = 0, dx = 0).
    assume(shape[-1] != 2)
    arrays, dy = arrays_for(shape, seed), host_data(seed + 3, shape)
    _, cache = LN.layer_norm_forward(*(backend.asarray(arrays[k]) for k in NAMES))
    grads = LN.layer_norm_backward(backend.asarray(dy), cache)
    loss = fake_loss(backend, lambda x, gamma, beta: LN.layer_norm_forward(x, gamma, beta)[0], dy)
    assert_gradients_match(loss, arrays, dict(zip(NAMES, map(to_numpy, grads))))


@given(shape=shapes, seed=seeds, dtype=st.sampled_from(DTYPES), eps=st.sampled_from([1e-5, 1e-6, 0.1]))
def test_layer_norm_matches_the_per_row_host_formula(backend, shape, seed, dtype, eps):
    """y[row] == (x - mean) / sqrt(var + eps) * gamma + beta with the biased mean and variance of the
    row (np.mean / np.var in float64), to the dtype's tolerance times 10; y keeps x's kind."""
    a = arrays_for(shape, seed, dtype)
    y, _ = LN.layer_norm_forward(*(backend.asarray(a[k]) for k in NAMES), eps=eps)
    assert_same_array_kind(y, backend.asarray(a["x"]))
    assert_close(y, host_layer_norm(a["x"], a["gamma"], a["beta"], eps), scale=10.0)


@given(shape=shapes, seed=seeds)
def test_layer_norm_is_group_norm_with_one_group_and_no_spatial_axes(backend, shape, seed):
    """layer_norm(x) == group_norm(x reshaped to (M, C), groups=1), forward and backward (float64): the
    same normalization over each row's C channels, by the group norm of refdiff.layers.norm."""
    a, dy = arrays_for(shape, seed), host_data(seed + 3, shape)
    M, C = math.prod(shape[:-1]), shape[-1]
    y, cache = LN.layer_norm_forward(*(backend.asarray(a[k]) for k in NAMES))
    x2 = backend.asarray(a["x"].reshape(M, C))
    with speed.reference_path():
        y_gn, cache_gn = Nm.group_norm_forward(x2, backend.asarray(a["gamma"]), backend.asarray(a["beta"]), 1)
        grads_gn = Nm.group_norm_backward(backend.asarray(dy.reshape(M, C)), cache_gn)
    assert_close(y, to_numpy(y_gn).reshape(shape))
    dx, dgamma, dbeta = LN.layer_norm_backward(backend.asarray(dy), cache)
    assert_close(dx, to_numpy(grads_gn[0]).reshape(shape), scale=10.0)
    assert_close(dgamma, to_numpy(grads_gn[1]), scale=10.0)
    assert_close(dbeta, to_numpy(grads_gn[2]), scale=10.0)


@given(shape=shapes, seed=seeds)
def test_layer_norm_matches_torch(shape, seed):
    """layer_norm_forward and layer_norm_backward == torch.nn.functional.layer_norm and its autograd
    gradients (float64, relative 1e-10)."""
    torch = pytest.importorskip("torch")
    a, dy = arrays_for(shape, seed), host_data(seed + 3, shape)
    y, cache = LN.layer_norm_forward(a["x"], a["gamma"], a["beta"])
    grads = LN.layer_norm_backward(dy, cache)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
    ty = torch.nn.functional.layer_norm(t["x"], (shape[-1],), t["gamma"], t["beta"], eps=1e-5)
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, g in zip(NAMES, grads):
        np.testing.assert_allclose(g, t[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_of_a_constant_row_is_beta(backend, dtype):
    """A constant row has var = 0; eps keeps rstd = 1/sqrt(eps) finite, so y == beta there, and the
    backward is finite."""
    x = np.full((2, 3, 4), 5.0, dtype=dtype)
    gamma, beta = host_data(1, (4,), dtype), host_data(2, (4,), dtype)
    y, cache = LN.layer_norm_forward(backend.asarray(x), backend.asarray(gamma), backend.asarray(beta))
    grads = LN.layer_norm_backward(backend.asarray(host_data(3, x.shape, dtype)), cache)
    assert_close(y, np.broadcast_to(beta, x.shape))
    for g in grads:
        assert np.all(np.isfinite(to_numpy(g)))


def test_float32_layer_norm_creates_no_float64_and_keeps_the_array_kind(backend):
    """float32 forward and backward of layer_norm create no float64 array (tripwire on array_api_strict)
    and return arrays of the input's library, device and dtype."""
    a = {k: backend.asarray(v) for k, v in arrays_for((2, 3, 4), 0, "float32").items()}
    with float64_tripwire(backend):
        y, cache = LN.layer_norm_forward(a["x"], a["gamma"], a["beta"])
        outs = [y, *LN.layer_norm_backward(y, cache)]
    for out in outs:
        assert_same_array_kind(out, a["x"])


@pytest.mark.parametrize("shapes_, eps, message", [
    (((2, 4), (3,), (4,)), 1e-5, r"gamma must have shape \(4,\), got \(3,\)"),
    (((2, 4), (4,), (2, 2)), 1e-5, r"beta must have shape \(4,\)"),
    (((), (1,), (1,)), 1e-5, "x must have a channel axis"),
    (((2, 4), (4,), (4,)), 0.0, "eps must be a positive finite float, got 0.0"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(backend, shapes_, eps, message):
    """Mis-shaped gamma or beta, a 0-d x and eps <= 0 raise ValueError naming the argument."""
    x, gamma, beta = (backend.asarray(np.ones(s)) for s in shapes_)
    with pytest.raises(ValueError, match=message):
        LN.layer_norm_forward(x, gamma, beta, eps)
