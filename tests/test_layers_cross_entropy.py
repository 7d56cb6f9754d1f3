"""Specification of refdiff.layers.cross_entropy: the loss and gradient of integer labels under a softmax.

Oracles: finite differences of the loss itself (float64, tests/gradcheck.py) for the gradient; the host
definition -log(exp(z_y) / sum_k exp(z_k)) for the value; exact answers at logits of 1e4, where the naive
form overflows.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff.backend import to_numpy
from refdiff.layers.cross_entropy import REDUCTIONS, cross_entropy
from support import DTYPES, assert_close, float64_tripwire

seeds = st.integers(0, 2**16)


@st.composite
def classification_batches(draw, max_scale=10.0):
    """Host float64 logits (N, K) times a drawn scale, and labels (N,) in [0, K)."""
    N, K = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    seed = draw(seeds)
    scale = draw(st.floats(0.1, max_scale))
    logits = scale * np.random.default_rng(seed).standard_normal((N, K))
    y = np.array(draw(st.lists(st.integers(0, K - 1), min_size=N, max_size=N)), dtype=np.int64)
    return logits, y


@given(batch=classification_batches(), reduction=st.sampled_from(REDUCTIONS))
def test_cross_entropy_gradient_matches_finite_differences(backend, batch, reduction):
    """dlogits of cross_entropy equals the float64 finite differences of the loss it returns."""
    logits, y = batch
    yb = backend.asarray(y)

    def loss(arrays):
        return float(to_numpy(cross_entropy(backend.asarray(arrays["logits"]), yb, reduction)[0]))

    _, dlogits = cross_entropy(backend.asarray(logits), yb, reduction)
    assert_gradients_match(loss, {"logits": logits}, {"logits": to_numpy(dlogits)})


@given(batch=classification_batches())
def test_cross_entropy_is_the_mean_negative_log_softmax_at_the_label(backend, batch):
    """loss == -mean_n log(exp(z_{n, y_n}) / sum_k exp(z_nk)) (the host definition), reduction "sum" is
    N times it, and -dlogits (sum) == onehot(y) - softmax(z)."""
    logits, y = batch
    N, K = logits.shape
    p = np.exp(logits) / np.sum(np.exp(logits), axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(N), y]))
    loss, dlogits = cross_entropy(backend.asarray(logits), backend.asarray(y))
    assert_close(loss, expected)
    total, dsum = cross_entropy(backend.asarray(logits), backend.asarray(y), reduction="sum")
    assert_close(total, N * expected)
    assert_close(-dsum, np.eye(K)[y] - p)
    assert_close(dlogits, (p - np.eye(K)[y]) / N)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_is_finite_and_exact_at_logits_of_1e4(backend, dtype):
    """At logits of size 1e4 (where exp overflows) the max-subtracted form is exact: a confident right
    answer costs 0 with zero gradient, a confident wrong one costs the logit gap 2e4 with gradient
    (p - onehot) = (e_wrong - e_right) / N; equal huge logits give log K. No NaN or inf, dtype kept."""
    z = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [1e4, 1e4, 1e4]])
    y = np.array([0, 1, 2])
    loss, dlogits = cross_entropy(backend.asarray(z, dtype=backend.dtype(dtype)), backend.asarray(y))
    assert loss.dtype == backend.dtype(dtype) and dlogits.dtype == backend.dtype(dtype)
    expected = (0.0 + 2e4 + math.log(3)) / 3
    np.testing.assert_allclose(float(to_numpy(loss)), expected, rtol=1e-6)
    expected_grad = np.array([[0, 0, 0], [1, -1, 0], [1 / 3, 1 / 3, -2 / 3]]) / 3
    np.testing.assert_allclose(to_numpy(dlogits), expected_grad, rtol=1e-6, atol=1e-7)


def test_cross_entropy_of_float32_creates_no_float64(backend):
    """float32 logits give a float32 loss and gradient with no float64 intermediate (strict tripwire)."""
    z = backend.asarray(np.array([[0.5, -1.0], [2.0, 3.0]]), dtype=backend.xp.float32)
    with float64_tripwire(backend):
        loss, dlogits = cross_entropy(z, backend.asarray(np.array([1, 0])))
    assert loss.dtype == dlogits.dtype == backend.xp.float32


@pytest.mark.parametrize("change, message", [
    (dict(y=np.array([0, 3])), r"y must hold labels in \[0, 3\), got values in \[0, 3\]"),
    (dict(y=np.array([-1, 0])), r"y must hold labels in \[0, 3\)"),
    (dict(y=np.array([0, 1, 2])), r"y must be an \(2,\) integer array"),
    (dict(y=np.array([0.0, 1.0])), r"y must be an \(2,\) integer array"),
    (dict(logits=np.zeros(3)), r"logits must be a real floating \(N, K\) array"),
    (dict(logits=np.zeros((2, 3), dtype=np.int64)), r"logits must be a real floating \(N, K\) array"),
    (dict(reduction="none"), "reduction must be one of mean, sum, got 'none'"),
])
def test_cross_entropy_bad_inputs_raise(backend, change, message):
    """Labels outside [0, K), a label array of the wrong length or dtype, non-(N, K) or integer logits and
    an unknown reduction raise ValueError naming the argument."""
    args = dict(dict(logits=np.zeros((2, 3)), y=np.array([0, 2]), reduction="mean"), **change)
    with pytest.raises(ValueError, match=message):
        cross_entropy(backend.asarray(args["logits"]), backend.asarray(args["y"]), args["reduction"])
