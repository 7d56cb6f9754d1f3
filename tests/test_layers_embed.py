"""Specification of refdiff.layers.embed: sinusoidal timestep embeddings and class-label embeddings."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff.backend import to_numpy
from refdiff.layers import embed as E
from support import DTYPES, assert_close, assert_same_array_kind, host_data, float64_tripwire

seeds = st.integers(0, 2**16)
steps = st.lists(st.integers(0, 999), min_size=1, max_size=5)


def host_timestep_embedding(t, dim, max_period=10000.0):
    """[cos(t f), sin(t f)] with f_i = max_period^(-i / half), by a loop over i in float64 (+ zero pad)."""
    half, t = dim // 2, np.asarray(t, dtype=np.float64)
    out = np.zeros((len(t), dim))
    for i in range(half):
        f = max_period ** (-i / half)
        out[:, i], out[:, half + i] = np.cos(t * f), np.sin(t * f)
    return out


def embedding_tolerance_scale(t):
    """float32 rounds t * f_i with absolute error about |t| * 2^-23 ~ |t| * 1.2e-7, which cos and sin
    pass on unchanged; relative to the float32 atol of 1e-6 that is a factor of at most 1 + |t|."""
    return 1.0 + float(np.max(np.abs(t)))


# ------------------------------------------------------------------------------ timestep embedding

@pytest.mark.parametrize("order", E.ORDERS)
def test_timestep_embedding_known_values(backend, order):
    """dim = 4, max_period = 1e4 gives freqs (1, 1e-2): t = 0 -> cos = 1, sin = 0; t = 1 ->
    cos(1), cos(0.01), sin(1), sin(0.01), in the order asked for; dim = 5 adds a zero column."""
    t = backend.asarray(np.array([0, 1]))
    cos_sin = np.array([[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]])
    expected = cos_sin if order == "cos_sin" else np.concatenate([cos_sin[:, 2:], cos_sin[:, :2]], axis=1)
    assert_close(E.timestep_embedding(t, 4, order=order), expected)
    assert_close(E.timestep_embedding(t, 5, order=order), np.concatenate([expected, np.zeros((2, 1))], axis=1))


@given(t=steps, dim=st.integers(1, 12), max_period=st.sampled_from([10000, 1000.0, 10.0]),
       dtype=st.sampled_from(DTYPES))
def test_timestep_embedding_matches_the_host_formula(backend, t, dim, max_period, dtype):
    """timestep_embedding(t, dim)[:, i] == cos(t f_i), [:, half + i] == sin(t f_i), f_i =
    max_period^(-i / half), last column 0 for odd dim; returned in the requested dtype on t's device,
    to the dtype's tolerance times 1 + max|t| (rounding of the argument t f_i)."""
    tb = backend.asarray(np.array(t))
    out = E.timestep_embedding(tb, dim, max_period=max_period, dtype=backend.dtype(dtype))
    assert out.shape == (len(t), dim) and out.dtype == backend.dtype(dtype) and out.device == tb.device
    assert_close(out, host_timestep_embedding(t, dim, max_period), scale=embedding_tolerance_scale(t))


@given(t=steps, dim=st.integers(1, 12))
def test_timestep_embedding_order_switch_swaps_the_halves(backend, t, dim):
    """"sin_cos" == "cos_sin" with its two halves swapped; the zero pad of an odd dim stays last."""
    tb = backend.asarray(np.array(t))
    half = dim // 2
    a = to_numpy(E.timestep_embedding(tb, dim, order="cos_sin"))
    b = to_numpy(E.timestep_embedding(tb, dim, order="sin_cos"))
    np.testing.assert_array_equal(b[:, :half], a[:, half:2 * half])
    np.testing.assert_array_equal(b[:, half:2 * half], a[:, :half])
    np.testing.assert_array_equal(b[:, 2 * half:], a[:, 2 * half:])


@given(t=st.lists(st.floats(0, 999, allow_nan=False), min_size=1, max_size=5), dim=st.integers(1, 8))
def test_timestep_embedding_accepts_float_and_integer_steps(backend, t, dim):
    """Fractional t (respaced or continuous time) follows the same formula; integer t equals float t."""
    out = E.timestep_embedding(backend.asarray(np.array(t)), dim, dtype=backend.xp.float64)
    assert_close(out, host_timestep_embedding(t, dim), scale=embedding_tolerance_scale(t))
    ints = np.floor(t).astype(np.int64)
    np.testing.assert_array_equal(to_numpy(E.timestep_embedding(backend.asarray(ints), dim)),
                                  to_numpy(E.timestep_embedding(backend.asarray(ints.astype(np.float32)), dim)))


def test_timestep_embedding_is_float32_by_default_and_never_float64_from_float32(backend):
    """Integer t and float64 t requested as float32 (the default) give float32 on t's device, and no
    float64 array is created on the way (tripwire on array_api_strict)."""
    for t in (backend.asarray(np.array([0, 5, 999])), backend.asarray(np.array([0.5, 5.0, 999.0]))):
        with float64_tripwire(backend):
            out = E.timestep_embedding(t, 7)
        assert out.dtype == backend.xp.float32 and out.device == t.device


@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 0}, "dim must be a positive integer, got 0"),
    ({"dim": 4.0}, "dim must"),
    ({"order": "sincos"}, "order must be one of cos_sin, sin_cos, got 'sincos'"),
    ({"max_period": 0}, "max_period must"),
    ({"dtype": "int64"}, "dtype must be a real floating dtype"),
    ({"t": np.zeros((2, 1))}, r"t must be an \(N,\) integer or float array"),
])
def test_timestep_embedding_bad_inputs_raise(backend, kwargs, message):
    """dim < 1, an unknown order, max_period <= 0, a non-float dtype and a non-(N,) t raise ValueError."""
    args = {"t": np.array([1, 2]), "dim": 4, **kwargs}
    args["t"] = backend.asarray(args["t"])
    if args.get("dtype") == "int64":
        args["dtype"] = backend.xp.int64
    with pytest.raises(ValueError, match=message):
        E.timestep_embedding(**args)


# ------------------------------------------------------------------------------- label embedding

@st.composite
def labels_and_table(draw):
    """(y, K, C): N labels in [0, K] (repeats likely, the null label K included in the range)."""
    K, C = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    y = draw(st.lists(st.integers(0, K), min_size=1, max_size=6))
    return np.array(y), K, C


@given(ykc=labels_and_table(), seed=seeds)
def test_embedding_backward_matches_finite_differences(backend, ykc, seed):
    """dtable = embedding_backward(dout) equals the gradient of sum(table[y] * dout) (float64)."""
    y, K, C = ykc
    arrays = {"table": host_data(seed, (K + 1, C))}
    dout = host_data(seed + 1, (len(y), C))
    yb = backend.asarray(y)
    _, cache = E.embedding_forward(yb, backend.asarray(arrays["table"]))
    dtable = E.embedding_backward(backend.asarray(dout), cache)

    def loss(a):
        out, _ = E.embedding_forward(yb, backend.asarray(a["table"]))
        return float(to_numpy(backend.xp.sum(out * backend.asarray(dout))))
    assert_gradients_match(loss, arrays, {"table": to_numpy(dtable)})


@given(ykc=labels_and_table(), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_embedding_looks_up_rows_and_accumulates_repeated_labels(backend, ykc, seed, dtype):
    """embedding(y, table) == table[y] exactly, and dtable[k] == sum of dout[n] over n with y[n] == k
    (a host loop), zero for labels that do not occur; both keep table's library, device and dtype."""
    y, K, C = ykc
    table, dout = host_data(seed, (K + 1, C), dtype), host_data(seed + 1, (len(y), C), dtype)
    tb = backend.asarray(table)
    out, cache = E.embedding_forward(backend.asarray(y), tb)
    np.testing.assert_array_equal(to_numpy(out), table[y])
    dtable = E.embedding_backward(backend.asarray(dout), cache)
    expected = np.zeros((K + 1, C))
    for n, k in enumerate(y):
        expected[k] += dout[n]
    assert_close(dtable, expected, scale=len(y))
    for a in (out, dtable):
        assert_same_array_kind(a, tb)


def test_embedding_float32_creates_no_float64(backend):
    """float32 forward and backward of embedding create no float64 array (tripwire on array_api_strict)."""
    table = backend.asarray(host_data(0, (4, 3), "float32"))
    y = backend.asarray(np.array([3, 0, 3, 1]))
    with float64_tripwire(backend):
        out, cache = E.embedding_forward(y, table)
        dtable = E.embedding_backward(out, cache)
    assert_same_array_kind(dtable, table)


@pytest.mark.parametrize("y, table_shape, message", [
    ([0, 4], (4, 3), r"y must hold labels in \[0, 3\] .* got values in \[0, 4\]"),
    ([-1, 2], (4, 3), r"y must hold labels in \[0, 3\]"),
    ([0.0, 1.0], (4, 3), r"y must be an \(N,\) integer array"),
    ([[0, 1]], (4, 3), r"y must be an \(N,\) integer array"),
    ([0, 1], (4,), r"table must be \(K \+ 1, C\)"),
])
def test_embedding_bad_inputs_raise(backend, y, table_shape, message):
    """Labels outside [0, K] (K = the null label), non-integer or non-(N,) y and a non-2-D table raise."""
    with pytest.raises(ValueError, match=message):
        E.embedding_forward(backend.asarray(np.array(y)), backend.asarray(np.ones(table_shape)))


# ------------------------------------------------------------------------------- token embedding

@st.composite
def tokens_and_table(draw):
    """(tokens (N, L), V, C): ids in [0, V), repeats likely."""
    V, C, N, L = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    ids = draw(st.lists(st.integers(0, V - 1), min_size=N * L, max_size=N * L))
    return np.array(ids).reshape(N, L), V, C


@given(tvc=tokens_and_table(), seed=seeds)
def test_token_embedding_backward_matches_finite_differences(backend, tvc, seed):
    """dtable = token_embedding_backward(dout) equals the gradient of sum(table[tokens] * dout) (float64)."""
    tokens, V, C = tvc
    arrays = {"table": host_data(seed, (V, C))}
    dout = host_data(seed + 1, tokens.shape + (C,))
    tb = backend.asarray(tokens)
    _, cache = E.token_embedding_forward(tb, backend.asarray(arrays["table"]))
    dtable = E.token_embedding_backward(backend.asarray(dout), cache)

    def loss(a):
        out, _ = E.token_embedding_forward(tb, backend.asarray(a["table"]))
        return float(to_numpy(backend.xp.sum(out * backend.asarray(dout))))
    assert_gradients_match(loss, arrays, {"table": to_numpy(dtable)})


@given(tvc=tokens_and_table(), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_token_embedding_looks_up_rows_and_scatter_adds_repeated_tokens(backend, tvc, seed, dtype):
    """token_embedding(tokens, table) == table[tokens] exactly, and dtable[v] == the sum of dout[n, l] over
    the (n, l) with tokens[n, l] == v (a host loop: the scatter-add), zero for ids that do not occur; both
    keep table's library, device and dtype."""
    tokens, V, C = tvc
    table, dout = host_data(seed, (V, C), dtype), host_data(seed + 1, tokens.shape + (C,), dtype)
    tb = backend.asarray(table)
    out, cache = E.token_embedding_forward(backend.asarray(tokens), tb)
    np.testing.assert_array_equal(to_numpy(out), table[tokens])
    dtable = E.token_embedding_backward(backend.asarray(dout), cache)
    expected = np.zeros((V, C))
    for (n, l), v in np.ndenumerate(tokens):
        expected[v] += dout[n, l]
    assert_close(dtable, expected, scale=tokens.size)
    for a in (out, dtable):
        assert_same_array_kind(a, tb)


def test_token_embedding_float32_creates_no_float64(backend):
    """float32 forward and backward of token_embedding create no float64 array (tripwire on array_api_strict)."""
    table = backend.asarray(host_data(0, (5, 3), "float32"))
    tokens = backend.asarray(np.array([[4, 0, 4], [1, 1, 2]]))
    with float64_tripwire(backend):
        out, cache = E.token_embedding_forward(tokens, table)
        dtable = E.token_embedding_backward(out, cache)
    assert_same_array_kind(dtable, table)


@pytest.mark.parametrize("tokens, table_shape, message", [
    ([[0, 5]], (5, 3), r"tokens must hold ids in \[0, 4\] \(V = 5 rows of table\), got values in \[0, 5\]"),
    ([[-1, 2]], (5, 3), r"tokens must hold ids in \[0, 4\]"),
    ([[0.0, 1.0]], (5, 3), r"tokens must be an \(N, L\) integer array"),
    ([0, 1], (5, 3), r"tokens must be an \(N, L\) integer array"),
    ([[0, 1]], (5,), r"table must be \(V, C\)"),
])
def test_token_embedding_bad_inputs_raise(backend, tokens, table_shape, message):
    """Ids outside [0, V), non-integer or non-(N, L) tokens and a non-2-D table raise ValueError."""
    with pytest.raises(ValueError, match=message):
        E.token_embedding_forward(backend.asarray(np.array(tokens)), backend.asarray(np.ones(table_shape)))
