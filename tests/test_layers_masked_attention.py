"""Specification of refdiff.layers.masked_attention: attention over a sequence with a key padding mask, and
with a context's keys and values in front of its own (GLIDE's encoder_kv)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match, fake_loss
from refdiff.backend import to_numpy
from refdiff.layers import attention as At
from refdiff.layers import masked_attention as MA
from support import DTYPES, TOLERANCE, assert_close, assert_same_array_kind, float64_tripwire, host_data

seeds = st.integers(0, 2**16)
SELF = ("x", "w_qkv", "b_qkv", "w_out", "b_out")
CONTEXT = ("x", "context", "w_qkv", "b_qkv", "w_kv", "b_kv", "w_out", "b_out")


@st.composite
def problems(draw, max_L=4, max_heads=2, max_d=2):
    """(dims, masks): dims = (N, L, heads, d, Lc, C_ctx); masks = (mask, context_mask), each None or an
    (N, L) / (N, Lc) bool array whose rows may be all False (a sample with no key to attend to)."""
    N, L, Lc = draw(st.integers(1, 2)), draw(st.integers(1, max_L)), draw(st.integers(1, 3))
    dims = (N, L, draw(st.integers(1, max_heads)), draw(st.integers(1, max_d)), Lc, draw(st.integers(1, 3)))

    def mask(length):
        cells = st.lists(st.booleans(), min_size=N * length, max_size=N * length)
        return draw(st.none() | cells.map(lambda b: np.array(b).reshape(N, length)))
    return dims, (mask(L), mask(Lc))


def arrays_for(dims, seed, dtype="float64", weight_scale=2.0):
    """Host inputs of both pairs for dims = (N, L, heads, d, Lc, C_ctx); weights ~ N(0, weight_scale^2 / fan_in)
    (scale 2: logits of order 1, a softmax far from uniform)."""
    N, L, heads, d, Lc, Cc = dims
    C = heads * d
    w, wc = weight_scale / np.sqrt(C), weight_scale / np.sqrt(Cc)
    return {"x": host_data(seed, (N, L, C), dtype), "context": host_data(seed + 1, (N, Lc, Cc), dtype),
            "w_qkv": host_data(seed + 2, (C, 3 * C), dtype, w), "b_qkv": host_data(seed + 3, (3 * C,), dtype, 0.1),
            "w_kv": host_data(seed + 4, (Cc, 2 * C), dtype, wc), "b_kv": host_data(seed + 5, (2 * C,), dtype, 0.1),
            "w_out": host_data(seed + 6, (C, C), dtype, w), "b_out": host_data(seed + 7, (C,), dtype, 0.1)}


def self_forward(backend, a, heads, mask):
    """masked_self_attention_forward on ``backend`` from host arrays (a: name -> array, host or backend)."""
    m = None if mask is None else backend.asarray(mask)
    return MA.masked_self_attention_forward(*(backend.asarray(a[k]) for k in SELF), heads, mask=m)


def context_forward(backend, a, heads, mask, context_mask):
    """context_attention_forward on ``backend`` from host arrays."""
    m = None if mask is None else backend.asarray(mask)
    cm = None if context_mask is None else backend.asarray(context_mask)
    return MA.context_attention_forward(*(backend.asarray(a[k]) for k in CONTEXT), heads, mask=m, context_mask=cm)


# ------------------------------------------------------------------------------------- gradients

@settings(max_examples=10)  # each example runs ~150 forwards
@given(problem=problems(), seed=seeds)
def test_masked_self_attention_backward_matches_finite_differences(backend, problem, seed):
    """(dx, dw_qkv, db_qkv, dw_out, db_out) = masked_self_attention_backward(dy) equal the gradients of
    sum(masked_self_attention(x, ..., mask) * dy) for every input and parameter (float64), masks with
    samples of no key included."""
    dims, (mask, _) = problem
    heads, a = dims[2], arrays_for(dims, seed)
    arrays = {k: a[k] for k in SELF}
    dy = host_data(seed + 9, a["x"].shape)
    _, cache = self_forward(backend, arrays, heads, mask)
    grads = MA.masked_self_attention_backward(backend.asarray(dy), cache)
    loss = fake_loss(backend, lambda **t: MA.masked_self_attention_forward(
        *(t[k] for k in SELF), heads, mask=None if mask is None else backend.asarray(mask))[0], dy)
    assert_gradients_match(loss, arrays, dict(zip(SELF, map(to_numpy, grads))))


@settings(max_examples=10)
@given(problem=problems(), seed=seeds)
def test_context_attention_backward_matches_finite_differences(backend, problem, seed):
    """(dx, dcontext, dw_qkv, db_qkv, dw_kv, db_kv, dw_out, db_out) = context_attention_backward(dy) equal
    the gradients of sum(context_attention(x, context, ...) * dy) for every input and parameter, the
    context included (float64), with either mask or both."""
    dims, (mask, context_mask) = problem
    heads, arrays = dims[2], arrays_for(dims, seed)
    dy = host_data(seed + 9, arrays["x"].shape)
    _, cache = context_forward(backend, arrays, heads, mask, context_mask)
    grads = MA.context_attention_backward(backend.asarray(dy), cache)
    m = None if mask is None else backend.asarray(mask)
    cm = None if context_mask is None else backend.asarray(context_mask)
    loss = fake_loss(backend, lambda **t: MA.context_attention_forward(
        *(t[k] for k in CONTEXT), heads, mask=m, context_mask=cm)[0], dy)
    assert_gradients_match(loss, arrays, dict(zip(CONTEXT, map(to_numpy, grads))))


# ---------------------------------------------------------------------------------------- oracles

@given(problem=problems(max_L=5, max_heads=3, max_d=3), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_masked_attention_equals_the_per_query_loop(backend, problem, seed, dtype):
    """masked_self_attention_forward and context_attention_forward == context_attention_forward_naive (a
    loop over samples, heads and queries on the host, softmax over the list of kept keys, o = 0 where
    there is none; float64 on the same inputs), to the dtype's tolerance times 10 * C; y keeps x's kind."""
    dims, (mask, context_mask) = problem
    heads, C, a = dims[2], dims[2] * dims[3], arrays_for(dims, seed, dtype)
    a64 = {k: v.astype(np.float64) for k, v in a.items()}
    y, _ = self_forward(backend, a, heads, mask)
    assert_same_array_kind(y, backend.asarray(a["x"]))
    assert_close(y, MA.context_attention_forward_naive(*(a64[k] for k in SELF), heads, mask=mask), scale=10.0 * C)
    y, _ = context_forward(backend, a, heads, mask, context_mask)
    assert_same_array_kind(y, backend.asarray(a["x"]))
    expected = MA.context_attention_forward_naive(*(a64[k] for k in SELF), heads, mask=mask, context=a64["context"],
                                                  w_kv=a64["w_kv"], b_kv=a64["b_kv"], context_mask=context_mask)
    assert_close(y, expected, scale=10.0 * C)


@given(problem=problems(), seed=seeds)
def test_without_a_mask_it_is_the_spatial_self_attention(backend, problem, seed):
    """masked_self_attention with mask None or all True == refdiff.layers.attention.self_attention on the
    same (N, L, C) sequence, forward and backward (float64): the mask is the only new thing."""
    dims, _ = problem
    heads, a = dims[2], arrays_for(dims, seed)
    dy = backend.asarray(host_data(seed + 9, a["x"].shape))
    y_ref, cache_ref = At.self_attention_forward(*(backend.asarray(a[k]) for k in SELF), heads)
    grads_ref = At.self_attention_backward(dy, cache_ref)
    for mask in (None, np.ones(dims[:2], dtype=bool)):
        y, cache = self_forward(backend, a, heads, mask)
        assert_close(y, to_numpy(y_ref))
        for g, g_ref in zip(MA.masked_self_attention_backward(dy, cache), grads_ref):
            assert_close(g, to_numpy(g_ref), scale=10.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_sample_with_no_key_attends_to_nothing(backend, dtype):
    """With every key of sample 0 masked, its queries get A = 0: y[0] == b_out at every position, nothing
    is NaN, dx[0] == 0, and the weights' gradients are those of sample 1 alone (plus dy[0]'s column sums
    in db_out): the empty row contributes nothing else."""
    dims = (2, 3, 2, 2, 2, 3)
    a, dy = arrays_for(dims, 0, dtype), host_data(9, (2, 3, 4), dtype)
    mask = np.array([[False, False, False], [True, True, False]])
    y, cache = self_forward(backend, a, 2, mask)
    dx, dw_qkv, db_qkv, dw_out, db_out = MA.masked_self_attention_backward(backend.asarray(dy), cache)
    assert np.all(np.isfinite(to_numpy(y))) and np.all(np.isfinite(to_numpy(cache.A)))
    assert_close(y[0, ...], np.broadcast_to(a["b_out"], (3, 4)))
    assert_close(dx[0, ...], np.zeros((3, 4)))
    one = {k: (v[1:] if k == "x" else v) for k, v in a.items()}
    _, cache1 = self_forward(backend, one, 2, mask[1:])
    grads1 = MA.masked_self_attention_backward(backend.asarray(dy[1:]), cache1)
    for g, g1 in zip((dw_qkv, db_qkv, dw_out), grads1[1:4]):
        assert_close(g, to_numpy(g1), scale=10.0)
    assert_close(db_out, to_numpy(grads1[4]) + dy[0].sum(axis=0), scale=10.0)


@given(problem=problems(), seed=seeds)
def test_masked_keys_change_nothing_but_their_own_queries(backend, problem, seed):
    """Replacing x at masked positions changes y only at those positions (they are still queries), and
    replacing the context at masked context positions changes nothing (float64)."""
    dims, (mask, context_mask) = problem
    mask = np.ones(dims[:2], bool) if mask is None else mask
    context_mask = np.ones((dims[0], dims[4]), bool) if context_mask is None else context_mask
    heads, a = dims[2], arrays_for(dims, seed)
    b = dict(a, x=np.where(mask[..., None], a["x"], host_data(seed + 20, a["x"].shape)),
             context=np.where(context_mask[..., None], a["context"], host_data(seed + 21, a["context"].shape)))
    ya, yb = (to_numpy(context_forward(backend, t, heads, mask, context_mask)[0]) for t in (a, b))
    np.testing.assert_allclose(ya[mask], yb[mask], rtol=1e-12, atol=1e-12)
    ya, yb = (to_numpy(self_forward(backend, t, heads, mask)[0]) for t in (a, b))
    np.testing.assert_allclose(ya[mask], yb[mask], rtol=1e-12, atol=1e-12)


@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5)), seed=seeds, dtype=st.sampled_from(DTYPES),
       magnitude=st.sampled_from([1.0, 1e4, 1e6]), data=st.data())
def test_masked_softmax_rows_sum_to_one_or_to_zero_and_are_never_nan(backend, shape, seed, dtype, magnitude, data):
    """masked_softmax(s, keep) >= 0, 0 at every masked entry, each row sums to 1 where it keeps an entry
    and is all 0 where it keeps none; no inf or NaN for logits up to 1e6."""
    s = host_data(seed, shape, dtype, scale=magnitude)
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=s.size, max_size=s.size))).reshape(shape)
    A = to_numpy(MA.masked_softmax(backend.asarray(s), backend.asarray(keep)))
    assert np.all(np.isfinite(A)) and np.all(A >= 0) and np.all(A[~keep] == 0)
    rtol = TOLERANCE[dtype][0] * shape[-1]  # a row of length Lk sums Lk roundings; an empty row is exactly 0
    np.testing.assert_allclose(A.sum(axis=-1), keep.any(axis=-1).astype(float), rtol=rtol, atol=0)


# ---------------------------------------------------------------------------------- torch parity

def torch_context_attention(torch, t, heads, mask, context_mask, with_context):
    """The same layer written with torch: projections by hand, heads by view/transpose, then
    torch.nn.functional.scaled_dot_product_attention with a boolean attn_mask (True = take part)."""
    x = t["x"]
    N, L, C = x.shape
    d = C // heads

    def heads_of(a):  # (N, Lk, C) -> (N, heads, Lk, d)
        return a.reshape(N, a.shape[1], heads, d).transpose(1, 2)
    q, k, v = (heads_of(p) for p in (x @ t["w_qkv"] + t["b_qkv"]).split(C, dim=-1))
    keep = torch.ones(N, L, dtype=torch.bool) if mask is None else torch.tensor(mask)
    if with_context:
        k_c, v_c = (heads_of(p) for p in (t["context"] @ t["w_kv"] + t["b_kv"]).split(C, dim=-1))
        k, v = torch.cat([k_c, k], dim=2), torch.cat([v_c, v], dim=2)
        keep_c = torch.ones(N, k_c.shape[2], dtype=torch.bool) if context_mask is None else torch.tensor(context_mask)
        keep = torch.cat([keep_c, keep], dim=1)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    return o.transpose(1, 2).reshape(N, L, C) @ t["w_out"] + t["b_out"]


@pytest.mark.parametrize("with_context", [False, True], ids=["self", "context"])
@given(problem=problems(), seed=seeds)
def test_masked_attention_matches_torch(with_context, problem, seed):
    """Forward and backward of both pairs == a torch twin built on scaled_dot_product_attention with a
    boolean mask, and its autograd gradients of every input (float64, relative 1e-10). torch (2.13)
    also gives a query with no key zero weights, so empty rows are compared too."""
    torch = pytest.importorskip("torch")
    dims, (mask, context_mask) = problem
    heads, a = dims[2], arrays_for(dims, seed)
    names = CONTEXT if with_context else SELF
    mask_c = context_mask if with_context else None
    dy = host_data(seed + 9, a["x"].shape)
    if with_context:
        y, cache = MA.context_attention_forward(*(a[k] for k in names), heads, mask=mask, context_mask=mask_c)
        grads = MA.context_attention_backward(dy, cache)
    else:
        y, cache = MA.masked_self_attention_forward(*(a[k] for k in names), heads, mask=mask)
        grads = MA.masked_self_attention_backward(dy, cache)
    t = {k: torch.tensor(a[k], requires_grad=True) for k in names}
    ty = torch_context_attention(torch, t, heads, mask, mask_c, with_context)
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for k, g in zip(names, grads):
        np.testing.assert_allclose(g, t[k].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------------------ dtype discipline

def test_float32_masked_attention_creates_no_float64_and_keeps_the_array_kind(backend):
    """float32 forward and backward of both pairs, masks set, create no float64 array (tripwire on
    array_api_strict) and return arrays of the input's library, device and dtype."""
    a = arrays_for((2, 3, 2, 2, 2, 3), 0, "float32")
    mask, context_mask = np.array([[True, False, True], [False] * 3]), np.array([[True, False], [False, False]])
    x = backend.asarray(a["x"])
    with float64_tripwire(backend):
        y, cache = self_forward(backend, a, 2, mask)
        outs = [y, *MA.masked_self_attention_backward(y, cache)]
        y, cache = context_forward(backend, a, 2, mask, context_mask)
        outs += [y, *MA.context_attention_backward(y, cache)]
    for out in outs:
        assert out.dtype == x.dtype and out.device == x.device


@pytest.mark.parametrize("change, message", [
    ({"heads": 3}, "heads must be a positive integer dividing C = 4, got 3"),
    ({"x": (2, 4)}, r"x must be a sequence \(N, L, C\), got shape \(2, 4\)"),
    ({"w_qkv": (4, 8)}, r"w_qkv must have shape \(4, 12\)"),
    ({"b_out": (12,)}, "b_out must"),
    ({"mask": np.ones((1, 3), bool)}, r"mask must be None or an \(1, 2\) bool array"),
    ({"mask": np.ones((1, 2))}, r"mask must be None or an \(1, 2\) bool array .* dtype .*float64"),
    ({"context": (2, 3, 5)}, r"context must be a sequence \(N, Lc, C_ctx\) with N = 1"),
    ({"w_kv": (3, 8)}, r"w_kv must have shape \(5, 8\), got \(3, 8\)"),
    ({"b_kv": (4,)}, r"b_kv must have shape \(8,\)"),
    ({"context_mask": np.ones((1, 2), bool)}, r"context_mask must be None or an \(1, 3\) bool array"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(backend, change, message):
    """A head count not dividing C, a non-sequence x or context, mis-shaped weights and masks of the wrong
    shape or dtype raise ValueError naming the argument."""
    shapes = {"x": (1, 2, 4), "context": (1, 3, 5), "w_qkv": (4, 12), "b_qkv": (12,), "w_kv": (5, 8),
              "b_kv": (8,), "w_out": (4, 4), "b_out": (4,)}
    shapes.update({k: v for k, v in change.items() if k in shapes})
    a = {k: backend.asarray(np.ones(v)) for k, v in shapes.items()}
    masks = {k: backend.asarray(change[k]) for k in ("mask", "context_mask") if k in change}
    with pytest.raises(ValueError, match=message):
        MA.context_attention_forward(*(a[k] for k in CONTEXT), change.get("heads", 2), **masks)
