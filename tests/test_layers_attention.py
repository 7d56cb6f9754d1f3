"""Specification of refdiff.layers.attention: multi-head self-attention over spatial positions."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match, fake_loss
from refdiff import speed
from refdiff.backend import to_numpy
from refdiff.layers import attention as At
from support import DTYPES, assert_close, assert_same_array_kind, host_data, float64_tripwire

seeds = st.integers(0, 2**16)
NAMES = ("x", "w_qkv", "b_qkv", "w_out", "b_out")


@st.composite
def attention_shapes(draw, max_side=3, max_heads=2, max_d=2):
    """(x shape (N, H, W, C), heads) with C = heads * d."""
    heads, d = draw(st.integers(1, max_heads)), draw(st.integers(1, max_d))
    side = st.integers(1, max_side)
    return (draw(st.integers(1, 2)), draw(side), draw(side), heads * d), heads


def attention_arrays(shape, seed, dtype="float64", weight_scale=1.0):
    """Host x, w_qkv, b_qkv, w_out, b_out for x of ``shape``; weights ~ N(0, weight_scale^2 / C)."""
    C = shape[-1]
    w = weight_scale / np.sqrt(C)
    return {"x": host_data(seed, shape, dtype), "w_qkv": host_data(seed + 1, (C, 3 * C), dtype, w),
            "b_qkv": host_data(seed + 2, (3 * C,), dtype, 0.1), "w_out": host_data(seed + 3, (C, C), dtype, w),
            "b_out": host_data(seed + 4, (C,), dtype, 0.1)}


@pytest.mark.parametrize("reference", [False, True], ids=["speed", "reference"])  # its linear layers' two paths
@settings(max_examples=20)  # each example runs ~200 forwards
@given(shape_heads=attention_shapes(), seed=seeds)
def test_self_attention_backward_matches_finite_differences(backend, reference, shape_heads, seed):
    """(dx, dw_qkv, db_qkv, dw_out, db_out) = self_attention_backward(dy) equal the gradients of
    sum(self_attention(x, w_qkv, b_qkv, w_out, b_out) * dy) for every input and parameter (float64)."""
    shape, heads = shape_heads
    arrays = attention_arrays(shape, seed, weight_scale=2.0)  # logits of order 1: a non-uniform softmax
    dy = host_data(seed + 5, shape)
    with speed.reference_path(reference):
        _, cache = At.self_attention_forward(*(backend.asarray(arrays[k]) for k in NAMES), heads)
        grads = At.self_attention_backward(backend.asarray(dy), cache)
        loss = fake_loss(backend, lambda **a: At.self_attention_forward(*(a[k] for k in NAMES), heads)[0], dy)
        assert_gradients_match(loss, arrays, dict(zip(NAMES, map(to_numpy, grads))))


@given(shape_heads=attention_shapes(max_side=4, max_heads=3, max_d=3), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_self_attention_equals_the_per_head_loop(backend, shape_heads, seed, dtype):
    """self_attention_forward == self_attention_forward_naive (a loop over samples and heads on the
    host, run in float64 on the same inputs), to the dtype's tolerance times 10 * C (three chained
    C-term matmuls and a softmax), and keeps x's library, device and dtype."""
    shape, heads = shape_heads
    arrays = attention_arrays(shape, seed, dtype, weight_scale=2.0)
    y, _ = At.self_attention_forward(*(backend.asarray(arrays[k]) for k in NAMES), heads)
    assert_same_array_kind(y, backend.asarray(arrays["x"]))
    expected = At.self_attention_forward_naive(*(arrays[k].astype(np.float64) for k in NAMES), heads)
    assert_close(y, expected, scale=10.0 * shape[-1])


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5)), seed=seeds, dtype=st.sampled_from(DTYPES),
       magnitude=st.sampled_from([1.0, 1e2, 1e4, 1e6]))
def test_softmax_rows_are_probabilities_even_for_huge_logits(backend, shape, seed, dtype, magnitude):
    """softmax(s) >= 0 and each row sums to 1 (to the dtype's tolerance times the row length), with no
    inf/NaN, for logits of magnitude up to 1e6 (exp would overflow without the max subtracted)."""
    s = host_data(seed, shape, dtype, scale=magnitude)
    A = At.softmax(backend.asarray(s))
    assert_same_array_kind(A, backend.asarray(s))
    a = to_numpy(A)
    assert np.all(np.isfinite(a)) and np.all(a >= 0)
    assert_close(backend.xp.sum(A, axis=-1), np.ones(shape[:-1]), scale=shape[-1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_self_attention_is_finite_at_logits_of_1e4(backend, dtype):
    """With weights scaled so that |q k^T / sqrt(d)| reaches 1e4, forward and backward are finite, and
    in float64 the forward still equals the per-head loop (whose softmax also subtracts the max)."""
    shape, heads = (2, 3, 3, 4), 2
    arrays = attention_arrays(shape, 0, dtype, weight_scale=150.0)
    inputs = [backend.asarray(arrays[k]) for k in NAMES]
    y, cache = At.self_attention_forward(*inputs, heads)
    q, k = to_numpy(cache.q).astype(np.float64), to_numpy(cache.k).astype(np.float64)
    assert np.max(np.abs(q @ np.swapaxes(k, -1, -2))) * cache.scale > 1e4  # the regime we claim to test
    grads = At.self_attention_backward(backend.asarray(host_data(5, shape, dtype)), cache)
    for out in (y, *grads):
        assert np.all(np.isfinite(to_numpy(out)))
    if dtype == "float64":
        # Rounding in the logits is about 1e4 * 1e-16; the output moves by that times |v| ~ 1e2.
        assert_close(y, At.self_attention_forward_naive(*inputs, heads), scale=1e4)


def test_float32_attention_creates_no_float64_and_keeps_the_array_kind(backend):
    """float32 forward and backward of self_attention create no float64 array (tripwire on
    array_api_strict) and return arrays of the input's library, device and dtype."""
    arrays = attention_arrays((2, 2, 3, 4), 0, "float32")
    x = backend.asarray(arrays["x"])
    with float64_tripwire(backend):
        y, cache = At.self_attention_forward(x, *(backend.asarray(arrays[k]) for k in NAMES[1:]), 2)
        outs = [y, *At.self_attention_backward(y, cache)]
    for out in outs:
        assert_same_array_kind(out, x)


@pytest.mark.parametrize("change, message", [
    ({"heads": 3}, "heads must be a positive integer dividing C = 4, got 3"),
    ({"heads": 0}, "heads must"),
    ({"x": (2, 4)}, r"x must be \(N, H, W, C\)"),
    ({"w_qkv": (4, 8)}, r"w_qkv must have shape \(4, 12\)"),
    ({"b_qkv": (4,)}, "b_qkv must"),
    ({"w_out": (12, 4)}, "w_out must"),
    ({"b_out": (12,)}, "b_out must"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(backend, change, message):
    """A head count not dividing C and mis-shaped x or weights raise ValueError naming the argument."""
    shapes = {"x": (1, 2, 2, 4), "w_qkv": (4, 12), "b_qkv": (12,), "w_out": (4, 4), "b_out": (4,)}
    heads = change.get("heads", 2)
    shapes.update({k: v for k, v in change.items() if k != "heads"})
    inputs = [backend.asarray(np.ones(shapes[k])) for k in NAMES]
    with pytest.raises(ValueError, match=message):
        At.self_attention_forward(*inputs, heads)
