"""Specification of refdiff.layers.gelu: GELU, in its tanh approximation and its exact (erf) form."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match, fake_loss
from refdiff.backend import to_numpy
from refdiff.layers import gelu as G
from support import DTYPES, assert_close, assert_same_array_kind, float64_tripwire, host_data

seeds = st.integers(0, 2**16)
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
forms = pytest.mark.parametrize("approximate", G.APPROXIMATIONS)


def host_gelu(x, approximate):
    """GELU elementwise with math.tanh / math.erf in float64."""
    x = np.asarray(x, dtype=np.float64)
    if approximate == "tanh":
        f = np.vectorize(lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))))
    else:
        f = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    return f(x)


@forms
@given(shape=shapes, seed=seeds)
def test_gelu_backward_matches_finite_differences(backend, approximate, shape, seed):
    """dx = gelu_backward(dy) equals the gradient of sum(gelu(x) * dy) (float64), both forms."""
    arrays, dy = {"x": host_data(seed, shape, scale=2.0)}, host_data(seed + 1, shape)
    _, cache = G.gelu_forward(backend.asarray(arrays["x"]), approximate)
    dx = G.gelu_backward(backend.asarray(dy), cache)
    loss = fake_loss(backend, lambda x: G.gelu_forward(x, approximate)[0], dy)
    assert_gradients_match(loss, arrays, {"x": to_numpy(dx)})


@forms
@given(shape=shapes, seed=seeds, dtype=st.sampled_from(DTYPES))
def test_gelu_matches_the_scalar_formula(backend, approximate, shape, seed, dtype):
    """gelu(x) == x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, or x (1 + erf(x / sqrt 2)) / 2, by
    math.tanh / math.erf per entry in float64, to the dtype's tolerance times 10; y keeps x's kind."""
    x = host_data(seed, shape, dtype, scale=3.0)
    y, _ = G.gelu_forward(backend.asarray(x), approximate)
    assert_same_array_kind(y, backend.asarray(x))
    assert_close(y, host_gelu(x, approximate), scale=10.0)


@forms
@given(shape=shapes, seed=seeds)
def test_gelu_matches_torch(approximate, shape, seed):
    """gelu_forward(x, a) and gelu_backward == torch.nn.functional.gelu(x, approximate=a) and its
    autograd gradient (float64, relative 1e-12)."""
    torch = pytest.importorskip("torch")
    x, dy = host_data(seed, shape, scale=3.0), host_data(seed + 1, shape)
    y, cache = G.gelu_forward(x, approximate)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.gelu(tx, approximate=approximate)
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(G.gelu_backward(dy, cache), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_the_two_forms_differ_by_at_most_5e_4(backend):
    """|gelu_tanh(x) - gelu_erf(x)| <= 5e-4 on a fine grid of [-10, 10] (the largest gap, 4.7e-4, is near
    |x| = 2.7), which the module docstring states."""
    x = backend.asarray(np.linspace(-10.0, 10.0, 4001))
    gap = to_numpy(G.gelu_forward(x, "tanh")[0] - G.gelu_forward(x, "none")[0])
    assert 4e-4 < np.max(np.abs(gap)) <= 5e-4


@forms
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_is_finite_and_tends_to_relu_at_large_inputs(backend, approximate, dtype):
    """At |x| up to 1e4, |gelu(x) - max(x, 0)| <= 64 eps |x| and the gradient is 1 or 0 to 64 eps: the
    cubic x^3 (1e12) and tanh saturate without inf or NaN. (eps |x|, not 0, for negative x: the exact
    form's 1 + erf(x / sqrt 2) rounds to a few eps where erf is a series, as on array_api_strict.)"""
    x = np.array([-1e4, -100.0, -30.0, 30.0, 100.0, 1e4], dtype=dtype)
    y, cache = G.gelu_forward(backend.asarray(x), approximate)
    dx = G.gelu_backward(backend.asarray(np.ones_like(x)), cache)
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(to_numpy(y) - np.maximum(x, 0.0)) <= 64 * eps * np.abs(x))
    assert np.all(np.abs(to_numpy(dx) - (x > 0)) <= 64 * eps)


@forms
def test_float32_gelu_creates_no_float64_and_keeps_the_array_kind(backend, approximate):
    """float32 forward and backward of gelu create no float64 array (tripwire on array_api_strict) and
    return arrays of the input's library, device and dtype."""
    x = backend.asarray(host_data(0, (2, 3, 4), "float32"))
    with float64_tripwire(backend):
        y, cache = G.gelu_forward(x, approximate)
        dx = G.gelu_backward(y, cache)
    for out in (y, dx):
        assert_same_array_kind(out, x)


def test_unknown_approximation_raises_naming_the_choices(backend):
    """An approximate other than "tanh" or "none" raises a ValueError naming both."""
    with pytest.raises(ValueError, match="approximate must be one of tanh, none, got 'erf'"):
        G.gelu_forward(backend.asarray(np.ones(3)), "erf")
