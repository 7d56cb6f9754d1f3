"""Specification of refdiff.backend: namespaces, host randomness, gather, erf, add_product."""

import contextlib

import numpy as np
import pytest
import scipy.linalg
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

from refdiff.backend import (GEMM_MIN_COLUMNS, Generator, add_product, asarray, erf, gather, get_backend, namespace,
                             one_thread_blas, to_numpy)
from support import DTYPES, assert_close, assert_same_array_kind, host_data

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@given(seed=st.integers(0, 2**32), shape=shapes, dtype=st.sampled_from(DTYPES))
def test_generator_gives_the_same_numbers_on_every_backend(backend, seed, shape, dtype):
    """Generator(seed).normal/uniform/integers on a backend == the same draws on the NumPy host."""
    like = backend.asarray(np.zeros(1), dtype=backend.dtype(dtype))
    on_device, on_host = Generator(seed), Generator(seed)
    for draw in ("normal", "uniform"):
        out = getattr(on_device, draw)(shape, like=like)
        assert_same_array_kind(out, like)
        np.testing.assert_array_equal(to_numpy(out), getattr(on_host, draw)(shape, dtype=dtype))
    ints = on_device.integers(-3, 7, shape, like=like)
    assert ints.dtype == backend.xp.int64 and ints.device == like.device
    np.testing.assert_array_equal(to_numpy(ints), on_host.integers(-3, 7, shape))


@given(seed=st.integers(0, 2**32), shape=shapes)
def test_float32_and_float64_draws_are_the_same_noise(seed, shape):
    """normal(dtype=float32) == float32(normal(dtype=float64)) for the same seed."""
    a = Generator(seed).normal(shape, dtype=np.float32)
    b = Generator(seed).normal(shape, dtype=np.float64)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b.astype(np.float32))


@given(seed=st.integers(0, 2**64 - 1), skip=st.integers(0, 20))
def test_generator_state_round_trips_the_stream_position(seed, skip):
    """set_state(get_state()) resumes the stream exactly where get_state was taken."""
    g = Generator(seed)
    g.normal((skip,))
    state = g.get_state()
    assert state.dtype == np.uint64 and state.shape == (6,)
    first = g.normal((5,))
    g.uniform((3,))
    g.set_state(state)
    np.testing.assert_array_equal(g.normal((5,)), first)


@given(T=st.integers(1, 50), N=st.integers(1, 6), ndim=st.integers(1, 4), dtype=st.sampled_from(DTYPES),
       data=st.data())
def test_gather_takes_table_at_t_shaped_to_broadcast(backend, T, N, ndim, dtype, data):
    """gather(table, t, x) == table[t] reshaped to (N, 1, ..., 1), in x's library, device and dtype."""
    table = np.linspace(0.1, 0.9, T) ** 3
    t_host = np.array(data.draw(st.lists(st.integers(0, T - 1), min_size=N, max_size=N)))
    x = backend.asarray(np.zeros((N,) + (2,) * (ndim - 1)), dtype=backend.dtype(dtype))
    out = gather(table, backend.asarray(t_host), x)
    assert out.shape == (N,) + (1,) * (ndim - 1)
    assert_same_array_kind(out, x)
    assert_close(out, table[t_host].astype(dtype).reshape(out.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_erf_matches_scipy_on_every_backend(backend, dtype):
    """backend.erf == scipy.special.erf: the series fallback (array_api_strict) included."""
    z = np.linspace(-8.0, 8.0, 4001)
    x = backend.asarray(z, dtype=backend.dtype(dtype))
    out = erf(x)
    assert_same_array_kind(out, x)
    atol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(to_numpy(out), scipy.special.erf(to_numpy(x).astype(np.float64)), atol=atol, rtol=0)


def test_asarray_and_to_numpy_round_trip(backend):
    """to_numpy(asarray(a, like=x)) == a, and asarray follows x's library and device."""
    like = backend.asarray(np.zeros(2))
    a = np.arange(12.0).reshape(3, 4)
    out = asarray(a, like=like, dtype=backend.dtype("float32"))
    assert namespace(out) is namespace(like) and out.device == like.device
    assert out.dtype == backend.xp.float32
    np.testing.assert_array_equal(to_numpy(out), a.astype(np.float32))


def test_strict_backend_refuses_host_device_mixing():
    """The fake device does its job: a host array and a device array cannot be combined."""
    strict = get_backend("array_api_strict")
    on_device = strict.asarray(np.ones(3))
    on_host = strict.xp.asarray(np.ones(3))
    with pytest.raises(ValueError, match="device"):
        on_device + on_host


def test_bad_backend_name_and_seed_raise_naming_the_argument():
    """Unknown backend names and negative or non-integer seeds are refused with a clear message."""
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("jax")
    for seed in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            Generator(seed)
    with pytest.raises(TypeError, match="a float draw needs a real floating dtype"):
        Generator(0).normal((2,), dtype=np.int32)
    with pytest.raises(ValueError, match="words must be"):
        Generator(0).set_state(np.zeros(5, dtype=np.uint64))



@pytest.mark.parametrize("in_block", [False, True], ids=["outside", "one_thread_blas"])
@given(M=st.integers(1, 40), K=st.integers(1, 12), C=st.integers(1, 2 * GEMM_MIN_COLUMNS), layouts=st.tuples(
       st.sampled_from(["C", "F", "strided"]), st.sampled_from(["C", "F", "strided"])), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(DTYPES))
def test_add_product_adds_a_times_b_into_c_in_place(backend, in_block, M, K, C, layouts, seed, dtype):
    """add_product(c, a, b) makes c (the same array) c + a @ b, to the dtype's tolerance times the K + 1
    terms of an entry, whether a and b are row-major, transposed views (column-major) or strided views
    (which the host's gemm cannot take), for narrow and wide c: BLAS gemm on the host inside a
    one_thread_blas block from GEMM_MIN_COLUMNS columns on, a product and an addition elsewhere."""
    xp = backend.xp
    host = {"a": host_data(seed, (M, K), dtype), "b": host_data(seed + 1, (K, C), dtype),
            "c": host_data(seed + 2, (M, C), dtype)}

    def laid_out(name, layout):
        if layout == "F":  # the transpose of a row-major (cols, rows) array
            return xp.matrix_transpose(backend.asarray(np.ascontiguousarray(host[name].T)))
        if layout == "strided":  # every other row of a twice as long array
            return backend.asarray(np.repeat(host[name], 2, axis=0))[::2, :]
        return backend.asarray(host[name])

    expected = host["c"].astype(np.float64) + host["a"].astype(np.float64) @ host["b"].astype(np.float64)
    a, b, c = laid_out("a", layouts[0]), laid_out("b", layouts[1]), laid_out("c", "C")
    with one_thread_blas() if in_block else contextlib.nullcontext():
        assert add_product(c, a, b) is None
    assert_same_array_kind(c, a)
    assert_close(c, expected, scale=K + 1)


def test_add_product_calls_gemm_only_inside_a_one_thread_blas_block(monkeypatch):
    """Outside refdiff's one-BLAS-thread layout add_product leaves SciPy's BLAS alone (its pool beside
    NumPy's, both on several threads, made a digits8 step 11x slower); inside it calls gemm once."""
    import refdiff.backend as B

    calls = []
    monkeypatch.setattr(B, "host_blas", lambda: calls.append(1) or scipy.linalg.blas)
    a, b = host_data(0, (5, 3), "float32"), host_data(1, (3, GEMM_MIN_COLUMNS), "float32")
    c = np.zeros((5, GEMM_MIN_COLUMNS), dtype=np.float32)
    add_product(c, a, b)
    assert calls == []
    with one_thread_blas():
        add_product(c, a, b)
    assert calls == [1]
    assert_close(c, 2 * (a.astype(np.float64) @ b.astype(np.float64)), scale=4)


def test_add_product_refuses_shapes_that_do_not_chain_naming_all_three():
    """c (M, C) += a (M, K) @ b (K, C): any other shapes raise a ValueError showing c's, a's and b's."""
    a, b = np.zeros((4, 3), np.float32), np.zeros((3, 8), np.float32)
    for c, a_, b_ in ((np.zeros((4, 7), np.float32), a, b), (np.zeros((4, 8), np.float32), a, b[:2]),
                      (np.zeros((4, 8), np.float32), a[None], b)):
        with pytest.raises(ValueError, match=r"add_product needs c \(M, C\), a \(M, K\) and b \(K, C\), got c"):
            add_product(c, a_, b_)
