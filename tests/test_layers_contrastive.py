"""Specification of refdiff.layers.contrastive: L2 normalisation and CLIP's symmetric InfoNCE loss.

Oracles: float64 finite differences of the fake loss (tests/gradcheck.py) for both backward passes; the
host definition of the loss; PyTorch's autograd of the same formula (skipped without torch); exact
values at degenerate batches.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff.backend import to_numpy
from refdiff.layers.contrastive import (contrastive_backward, contrastive_forward, l2_normalize_backward,
                                        l2_normalize_forward)
from support import assert_close, float64_tripwire, host_data

seeds = st.integers(0, 2**16)


@st.composite
def embedding_pairs(draw):
    """Host float64 f, g (N, E) of unit rows and a log-scale tau in [-1, 3]. E >= 2: unit rows in one
    dimension are +-1, so f = g = a constant column is drawn often, where the gradient is 0 and a
    relative error measures only rounding."""
    N, E, seed = draw(st.integers(1, 6)), draw(st.integers(2, 5)), draw(seeds)
    f, g = host_data(seed, (N, E)), host_data(seed + 1, (N, E))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    return unit(f), unit(g), np.asarray(draw(st.floats(-1.0, 3.0)))


def host_loss(f, g, tau):
    """The definition: (CE(Z, I) + CE(Z^T, I)) / 2 with Z = exp(tau) f g^T, on the host."""
    z = math.exp(float(tau)) * f @ g.T
    ce = lambda a: -np.mean(np.diag(a) - np.log(np.sum(np.exp(a), axis=1)))  # noqa: E731
    return 0.5 * (ce(z) + ce(z.T))


@given(N=st.integers(1, 6), E=st.integers(1, 5), seed=seeds)
def test_l2_normalize_gradient_matches_finite_differences(backend, N, E, seed):
    """dv of l2_normalize_backward equals the finite differences of sum(u(v) * du)."""
    v, du = host_data(seed, (N, E)), host_data(seed + 1, (N, E))
    u, cache = l2_normalize_forward(backend.asarray(v))
    assert_close(u, v / np.linalg.norm(v, axis=1, keepdims=True))

    def loss(arrays):
        return float(np.sum(to_numpy(l2_normalize_forward(backend.asarray(arrays["v"]))[0]) * du))

    dv = l2_normalize_backward(backend.asarray(du), cache)
    assert_gradients_match(loss, {"v": v}, {"v": to_numpy(dv)})


@given(pair=embedding_pairs(), dloss=st.floats(-2.0, 2.0))
def test_contrastive_gradients_match_finite_differences(backend, pair, dloss):
    """(df, dg, dtau) of contrastive_backward(dloss) equal the finite differences of dloss * loss(f, g, tau),
    and the loss is the host definition."""
    f, g, tau = pair

    def loss(arrays):
        out = contrastive_forward(*(backend.asarray(arrays[k]) for k in ("f", "g", "tau")))[0]
        return dloss * float(to_numpy(out))

    value, cache = contrastive_forward(backend.asarray(f), backend.asarray(g), backend.asarray(tau))
    assert_close(value, host_loss(f, g, tau))
    df, dg, dtau = contrastive_backward(dloss, cache)
    assert_gradients_match(loss, {"f": f, "g": g, "tau": tau},
                           {"f": to_numpy(df), "g": to_numpy(dg), "tau": to_numpy(dtau)})


@given(N=st.integers(1, 8), E=st.integers(1, 5), seed=seeds, tau=st.floats(-2.0, 4.0))
def test_contrastive_loss_is_log_n_when_every_embedding_is_the_same(backend, N, E, seed, tau):
    """f = g = one constant row for every sample: every logit is equal, so loss = log N, and the gradient
    of the temperature is 0 (scaling equal logits changes nothing)."""
    row = host_data(seed, (1, E))
    f = np.repeat(row, N, axis=0)
    loss, cache = contrastive_forward(backend.asarray(f), backend.asarray(f), backend.asarray(np.asarray(tau)))
    assert_close(loss, math.log(N), scale=10.0)
    assert abs(float(to_numpy(contrastive_backward(1.0, cache)[2]))) < 1e-9 * max(1.0, math.exp(tau))


@given(N=st.integers(1, 6), seed=seeds)
def test_contrastive_gradient_of_a_perfectly_aligned_batch_is_small(backend, N, seed):
    """f = g = N orthonormal rows at s = exp(tau) = 100 (CLIP's cap): each caption's logit beats every
    other by 100, so the softmaxes are one-hot to exp(-100) and every gradient is below 1e-30."""
    q, _ = np.linalg.qr(host_data(seed, (N + 2, N + 2)))
    f = q[:N, :]  # (N, N + 2) orthonormal rows
    loss, cache = contrastive_forward(backend.asarray(f), backend.asarray(f), backend.asarray(np.log(100.0)))
    assert float(to_numpy(loss)) < 1e-30
    for grad in contrastive_backward(1.0, cache):
        assert np.max(np.abs(to_numpy(grad))) < 1e-30


@given(pair=embedding_pairs())
def test_contrastive_loss_is_symmetric_in_images_and_captions(backend, pair):
    """loss(f, g) == loss(g, f), and swapping the roles swaps the gradients: df(f, g) == dg(g, f)."""
    f, g, tau = (backend.asarray(a) for a in pair)
    loss_fg, cache_fg = contrastive_forward(f, g, tau)
    loss_gf, cache_gf = contrastive_forward(g, f, tau)
    assert_close(loss_fg, to_numpy(loss_gf))
    df, dg, dtau = contrastive_backward(1.0, cache_fg)
    dg_swapped, df_swapped, dtau_swapped = contrastive_backward(1.0, cache_gf)
    assert_close(df, to_numpy(df_swapped))
    assert_close(dg, to_numpy(dg_swapped))
    assert_close(dtau, to_numpy(dtau_swapped))


def test_contrastive_keeps_float32_without_upcasts(backend):
    """float32 embeddings give a float32 loss and gradients, with no float64 intermediate (rule 6)."""
    f, g = (backend.asarray(host_data(s, (4, 3), "float32")) for s in (0, 1))
    tau = backend.asarray(np.asarray(2.0, dtype=np.float32))
    with float64_tripwire(backend):
        u, ucache = l2_normalize_forward(f)
        loss, cache = contrastive_forward(u, g, tau)
        grads = (*contrastive_backward(1.0, cache), l2_normalize_backward(f, ucache))
    for out in (u, loss, *grads):
        assert out.dtype == f.dtype


@pytest.mark.parametrize("change, message", [
    ({"f": np.zeros((0, 3))}, r"f must be a real floating \(N, E\) array with N >= 1"),
    ({"g": np.zeros((4, 2))}, r"g must be an array of f's library, device and dtype .* of shape \(4, 3\)"),
    ({"logit_scale": np.zeros(1)}, r"logit_scale must be an array .* of shape \(\)"),
    ({"logit_scale": np.zeros((), dtype=np.float32)}, r"logit_scale must be an array of f's library, device and dtype"),
])
def test_contrastive_rejects_bad_arguments(backend, change, message):
    """Mismatched shapes, dtypes and an empty batch are ValueErrors naming the argument."""
    args = {"f": np.zeros((4, 3)), "g": np.zeros((4, 3)), "logit_scale": np.zeros(()), **change}
    with pytest.raises(ValueError, match=message):
        contrastive_forward(**{k: backend.asarray(v) for k, v in args.items()})


@given(pair=embedding_pairs())
def test_contrastive_matches_pytorch(pair):
    """Loss and gradients equal torch autograd of (cross_entropy(Z, arange) + cross_entropy(Z.T, arange)) / 2."""
    torch = pytest.importorskip("torch")
    f, g, tau = pair
    tf, tg, ttau = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (f, g, tau))
    z = ttau.exp() * tf @ tg.T
    labels = torch.arange(f.shape[0])
    expected = (torch.nn.functional.cross_entropy(z, labels) + torch.nn.functional.cross_entropy(z.T, labels)) / 2
    expected.backward()
    loss, cache = contrastive_forward(f, g, tau)
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-12, atol=1e-13)
    for ours, theirs in zip(contrastive_backward(1.0, cache), (tf.grad, tg.grad, ttau.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)
