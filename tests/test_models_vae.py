"""Specification of refdiff.models.vae and its coders (vae_conv for images, vae_mlp for points): the ELBO's
hand-derived gradient against finite differences (every parameter, numpy and array_api_strict, both coders), the
closed-form KL against Monte Carlo, the importance-weighted bound against the ELBO, the point likelihood against
scipy, log-mean-exp's stability, the bits/dim conversion, and the checks at the boundary."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff.backend import Generator, to_numpy
from refdiff.models import vae as V
from gradcheck import assert_gradients_match
from model_checks import init_bad_arguments
from support import assert_same_array_kind, float64_tripwire, host_data, on, random_params

seeds = st.integers(0, 2**16)
# Small enough for a gradient check in well under a second per tensor: 4x4 images, two levels (4x4, 2x2).
SMALL = V.VAEConfig(in_channels=2, image_size=4, channels=(3, 4), latent_dim=3, num_classes=None, levels=17)
SMALL_CONDITIONAL = V.VAEConfig(in_channels=1, image_size=4, channels=(3, 4), latent_dim=2, num_classes=3, levels=17)
POINTS = V.MLPVAEConfig(data_dim=2, hidden=5, latent_dim=2)
POINTS_CONDITIONAL = V.MLPVAEConfig(data_dim=3, hidden=4, latent_dim=2, num_classes=2)


def grid_images(seed, cfg, n):
    """(n, C, S, S) float64 images on cfg.levels evenly spaced values in [-1, 1] (both ends included), or (n, D)
    standard normal points for an MLPVAEConfig."""
    if isinstance(cfg, V.MLPVAEConfig):
        return host_data(seed, (n, cfg.data_dim))
    counts = np.random.default_rng(seed).integers(0, cfg.levels, (n, cfg.in_channels, cfg.image_size, cfg.image_size))
    return counts / (cfg.levels - 1) * 2 - 1


def inputs(cfg, seed, n=3):
    """(params, x, eps, y) host float64: random params (every gradient nonzero), grid images, draws, labels."""
    y = None if cfg.num_classes is None else np.random.default_rng(seed).integers(0, cfg.num_classes + 1, n)
    return (random_params(V.param_shapes(cfg), seed), grid_images(seed + 1, cfg, n),
            host_data(seed + 2, (n, cfg.latent_dim)), y)


# ------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("cfg, seed", [(SMALL, 0), (SMALL_CONDITIONAL, 1), (POINTS, 2), (POINTS_CONDITIONAL, 3)])
def test_elbo_backward_matches_finite_differences(backend, cfg, seed):
    """elbo_backward(delbo) equals the gradient of sum_n delbo_n ELBO_n(params) for every parameter (float64,
    eps held fixed: the reparameterised ELBO is a smooth function of the parameters), for the conv and the MLP
    coder, unconditional and with the label embedding; the directional probes of tests/gradcheck.py for tensors
    of more than 8 entries."""
    params, x, eps, y = inputs(cfg, seed)
    delbo = host_data(seed + 3, (x.shape[0],))
    y_b = None if y is None else backend.asarray(y)

    def run(arrays):
        return V.elbo_forward(on(backend, arrays), cfg, backend.asarray(x), backend.asarray(eps), y_b)

    def loss(arrays):
        return float(to_numpy(backend.xp.sum(run(arrays)[0].elbo * backend.asarray(delbo))))

    grads = V.elbo_backward(backend.asarray(delbo), run(params)[1])
    assert list(grads) == list(V.param_shapes(cfg))
    for key, g in grads.items():
        assert_same_array_kind(g, backend.asarray(params[key]))
    assert_gradients_match(loss, params, {k: to_numpy(v) for k, v in grads.items()})


def test_float32_elbo_and_its_gradient_create_no_float64(backend):
    """A float32 ELBO, its gradient and the IWAE bound stay float32 (docs/design.md rule 6): the tripwire on
    array_api_strict sees no float64 array, and the outputs are float32."""
    params, x, eps, y = inputs(SMALL_CONDITIONAL, 5)
    p32 = on(backend, {k: v.astype(np.float32) for k, v in params.items()})
    x32, eps32 = backend.asarray(x.astype(np.float32)), backend.asarray(eps.astype(np.float32))
    with float64_tripwire(backend):
        terms, cache = V.elbo_forward(p32, SMALL_CONDITIONAL, x32, eps32, backend.asarray(y))
        grads = V.elbo_backward(-terms.elbo / terms.elbo, cache)
        bound = V.iwae_bound(p32, SMALL_CONDITIONAL, x32, backend.xp.stack([eps32, eps32]))
    for a in (terms.elbo, terms.rec, terms.kl, bound, *grads.values()):
        assert a.dtype == backend.xp.float32


# ----------------------------------------------------------------------------------------- bounds

def test_closed_form_kl_matches_monte_carlo():
    """The ELBO's KL term, (1/2) sum (mu^2 + sigma^2 - 1 - log sigma^2), equals the Monte-Carlo mean of
    log q(z | x) - log p(z) over 20000 draws z ~ q (scipy.stats.norm's log densities), within 5 standard errors."""
    params, x, eps, y = inputs(SMALL, 7, n=4)
    terms, cache = V.elbo_forward(params, SMALL, x, eps)
    z = cache.mu + cache.sigma * np.random.default_rng(0).standard_normal((20000, *cache.mu.shape))  # (R, N, Z)
    log_ratio = np.sum(scipy.stats.norm.logpdf(z, cache.mu, cache.sigma) - scipy.stats.norm.logpdf(z), axis=2)
    se = log_ratio.std(axis=0) / math.sqrt(z.shape[0])
    assert np.all(np.abs(log_ratio.mean(axis=0) - terms.kl) < 5 * se), (log_ratio.mean(axis=0), terms.kl, se)


@given(seed=seeds, cfg=st.sampled_from([SMALL_CONDITIONAL, POINTS_CONDITIONAL]))
@settings(max_examples=5)
def test_iwae_with_one_sample_is_the_one_sample_elbo(seed, cfg):
    """L_1(eps) = log p(x | z) + log N(z; 0, I) - log N(z; mu, sigma^2) at z = mu + sigma eps: the ELBO's
    reconstruction term at the same eps minus the sampled KL (the closed form's unbiased estimate)."""
    params, x, eps, y = inputs(cfg, seed)
    terms, c = V.elbo_forward(params, cfg, x, eps, y)
    z = c.mu + c.sigma * eps
    sampled_kl = np.sum(scipy.stats.norm.logpdf(z, c.mu, c.sigma) - scipy.stats.norm.logpdf(z), axis=1)
    np.testing.assert_allclose(V.iwae_bound(params, cfg, x, eps[None], y), terms.rec - sampled_kl,
                               rtol=1e-12, atol=1e-10)


@given(seed=seeds)
@settings(max_examples=5)
def test_point_likelihood_is_the_gaussian_density(seed):
    """For the MLP coder, rec = sum_d log N(x_d; m_d, exp(log_scale_d)^2) (scipy.stats.norm) with m the decoder's
    mean at z = mu + sigma eps."""
    params, x, eps, y = inputs(POINTS_CONDITIONAL, seed)
    terms, c = V.elbo_forward(params, POINTS_CONDITIONAL, x, eps, y)
    m = V.vae_model(params, POINTS_CONDITIONAL)(c.mu + c.sigma * eps, y)
    expected = np.sum(scipy.stats.norm.logpdf(x, m, np.exp(params["dec.log_scale"])), axis=1)
    np.testing.assert_allclose(terms.rec, expected, rtol=1e-12)


@given(seed=seeds, k=st.integers(1, 6))
@settings(max_examples=5)
def test_iwae_is_at_least_the_mean_elbo_of_its_draws_and_tightens_with_more(seed, k):
    """For every set of draws (Jensen, exactly): L_k(eps_1..k) >= mean_j L_1(eps_j), and the bound of 2k draws is
    at least the mean of the bounds of its two halves, L_2k(A u B) >= (L_k(A) + L_k(B)) / 2."""
    params, x, _, y = inputs(SMALL_CONDITIONAL, seed)
    eps = host_data(seed + 5, (2 * k, x.shape[0], SMALL_CONDITIONAL.latent_dim))
    bound = lambda e: V.iwae_bound(params, SMALL_CONDITIONAL, x, e, y)  # noqa: E731
    singles = np.stack([bound(eps[j : j + 1]) for j in range(k)])
    assert np.all(bound(eps[:k]) >= singles.mean(axis=0) - 1e-10)
    assert np.all(bound(eps) >= (bound(eps[:k]) + bound(eps[k:])) / 2 - 1e-10)


def test_iwae_mean_exceeds_the_elbo_and_grows_with_k():
    """Over 200 sets of draws, per image: the mean of L_1 is the mean ELBO (closed-form KL) at the same first
    draws within 5 standard errors of their difference (which is the sampled minus the closed-form KL);
    mean L_1 <= mean L_4 <= mean L_16 (Burda et al. 2016, Theorem 1); and mean L_16 exceeds the mean ELBO by
    more than 5 standard errors of the difference."""
    params, x, _, _ = inputs(SMALL, 11, n=4)
    draws = host_data(12, (200, 16, x.shape[0], SMALL.latent_dim))
    elbo = np.stack([V.elbo_forward(params, SMALL, x, d[0])[0].elbo for d in draws])  # (200, N)
    L = {k: np.stack([V.iwae_bound(params, SMALL, x, d[:k]) for d in draws]) for k in (1, 4, 16)}  # (200, N)

    def mean_and_se(a):
        return a.mean(axis=0), a.std(axis=0) / math.sqrt(a.shape[0])

    gap1, se1 = mean_and_se(L[1] - elbo)
    gap16, se16 = mean_and_se(L[16] - elbo)
    assert np.all(np.abs(gap1) < 5 * se1) and np.all(gap16 > 5 * se16), (gap1, se1, gap16, se16)
    assert np.all(L[1].mean(axis=0) <= L[4].mean(axis=0)) and np.all(L[4].mean(axis=0) <= L[16].mean(axis=0))


def test_log_mean_exp_is_stable_and_exact(backend):
    """log_mean_exp(a) == log(mean(exp(a))) for moderate a; for a = 1000 or -1000 everywhere (where exp overflows
    or underflows) it is exactly 1000 or -1000; and log_mean_exp(a + c) == log_mean_exp(a) + c."""
    a = host_data(0, (5, 3), scale=3.0)
    lme = lambda v: to_numpy(V.log_mean_exp(backend.asarray(v), axis=0))  # noqa: E731
    np.testing.assert_allclose(lme(a), np.log(np.mean(np.exp(a), axis=0)), rtol=1e-13)
    np.testing.assert_array_equal(lme(np.full((4, 2), 1000.0)), 1000.0)
    np.testing.assert_array_equal(lme(np.full((4, 2), -1000.0)), -1000.0)
    np.testing.assert_allclose(lme(a + 700.0), lme(a) + 700.0, rtol=1e-13)


@given(seed=seeds)
@settings(max_examples=5)
def test_bounds_in_bits_per_dim_are_nonnegative_and_the_conversion_is_exact(seed):
    """bits_per_dim(b, D) == -b / (D ln 2) (so -64 ln 2 nats over 64 values is 1 bit/dim); for discrete data the
    ELBO of every draw is <= 0 (rec = log P(x | z) <= 0 as P <= 1, KL >= 0), so its bits/dim are >= 0."""
    assert V.bits_per_dim(-64 * math.log(2.0), 64) == 1.0
    params, x, eps, y = inputs(SMALL_CONDITIONAL, seed)
    terms = V.elbo_forward(params, SMALL_CONDITIONAL, x, eps, y)[0]
    assert np.all(terms.rec <= 0) and np.all(terms.kl >= 0)
    np.testing.assert_allclose(V.bits_per_dim(terms.elbo, SMALL_CONDITIONAL.dims),
                               -terms.elbo / (SMALL_CONDITIONAL.dims * math.log(2.0)), rtol=1e-15)
    assert np.all(V.bits_per_dim(terms.elbo, SMALL_CONDITIONAL.dims) >= 0)


# ---------------------------------------------------------------------------------- model, checks

def test_decoder_without_a_label_uses_the_null_label_and_labels_change_the_mean():
    """decode(z, None) == decode(z, K) (row K of the table, the null label), and a different label changes it."""
    params, _, eps, _ = inputs(SMALL_CONDITIONAL, 3)
    K = SMALL_CONDITIONAL.num_classes
    decode_mean = V.vae_model(params, SMALL_CONDITIONAL)
    np.testing.assert_array_equal(decode_mean(eps), decode_mean(eps, np.full(3, K)))
    assert not np.allclose(decode_mean(eps, np.zeros(3, np.int64)), decode_mean(eps))
    assert decode_mean(eps).shape == (3, 1, 4, 4)


def test_init_is_seeded_with_the_param_shapes_and_count():
    """init_params has param_shapes' keys, order and shapes, param_count is their total size, the same seed gives
    the same parameters, and the decoder's log-scale starts at 0 (scale 1)."""
    for cfg in (SMALL, SMALL_CONDITIONAL, V.VAEConfig(), POINTS, POINTS_CONDITIONAL):
        params = V.init_params(cfg, Generator(0), np.float64)
        assert {k: v.shape for k, v in params.items()} == V.param_shapes(cfg)
        assert V.param_count(cfg) == sum(v.size for v in params.values())
        again = V.init_params(cfg, Generator(0), np.float64)
        assert all(np.array_equal(params[k], again[k]) for k in params)
        np.testing.assert_array_equal(params["dec.log_scale"], 0.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": ()}, r"channels must have at least one entry"),
    ({"channels": (4, 0)}, "every entry of channels must be an integer >= 1, got 0"),
    ({"image_size": 6, "channels": (2, 2, 2)}, r"image_size must be a multiple of 2\^\(len\(channels\) - 1\) = 4"),
    ({"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
    ({"levels": 1}, "levels must be an integer >= 2, got 1"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
])
def test_config_bad_fields_raise(kwargs, message):
    """VAEConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        V.VAEConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"hidden": 0}, "hidden must be an integer >= 1, got 0"),
    ({"data_dim": 1.5}, "data_dim must be an integer >= 1, got 1.5"),
    ({"num_classes": -1}, "num_classes must be an integer >= 1, got -1"),
])
def test_point_config_bad_fields_raise(kwargs, message):
    """MLPVAEConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        V.MLPVAEConfig(**kwargs)


@pytest.mark.parametrize("x, message", [
    (np.zeros((3, 3)), r"x must be a real floating \(N, 2\) array of points"),
    (np.array([[0.0, np.nan]] * 3), "x must be finite"),
])
def test_point_forward_bad_inputs_raise(backend, x, message):
    """elbo_forward of the MLP coder names x of the wrong dimension or with NaN; another config type is refused."""
    params, _, eps, _ = inputs(POINTS, 0)
    with pytest.raises(ValueError, match=message):
        V.elbo_forward(on(backend, params), POINTS, backend.asarray(x), backend.asarray(eps))
    with pytest.raises(ValueError, match="cfg must be a VAEConfig or an MLPVAEConfig, got dict"):
        V.param_shapes({})


@pytest.mark.parametrize("args, message", init_bad_arguments(SMALL, "a VAEConfig"))
def test_init_bad_arguments_raise(args, message):
    """init_params rejects a non-refdiff generator, a non-floating dtype and a non-config."""
    with pytest.raises(ValueError, match=message):
        V.init_params(*args)


@pytest.mark.parametrize("change, message", [
    ({"x": np.full((3, 2, 4, 4), 1.5)}, r"x must lie in \[-1, 1\] .* got values in \[1.5, 1.5\]"),
    ({"x": np.zeros((3, 2, 8, 8))}, r"x must be \(N, 2, 4, 4\) \(cfg.image_size\)"),
    ({"x": np.zeros((3, 1, 4, 4))}, r"x must be a real floating \(N, 2, H, W\) array"),
    ({"eps": np.zeros((3, 4))}, r"eps must be an \(3, 3\) array \(N, latent_dim\)"),
    ({"eps": np.zeros((3, 3), np.float32)}, r"eps must be an \(3, 3\) array"),
    ({"params": {}}, "params must have the keys of this VAEConfig"),
])
def test_forward_bad_inputs_raise(backend, change, message):
    """elbo_forward names the bad argument: x out of [-1, 1], of the wrong size or channels, eps of the wrong
    shape or dtype, params of another config."""
    params, x, eps, _ = inputs(SMALL, 0)
    args = {"params": params, "x": x, "eps": eps, **change}
    with pytest.raises(ValueError, match=message):
        V.elbo_forward(on(backend, args["params"]), SMALL, backend.asarray(args["x"]), backend.asarray(args["eps"]))


def test_iwae_needs_k_draws_per_image():
    """iwae_bound's eps must be (k, N, Z); an (N, Z) array raises naming the shape."""
    params, x, eps, _ = inputs(SMALL, 0)
    with pytest.raises(ValueError, match=r"eps must be a \(k, N, Z\) array of k >= 1 draws"):
        V.iwae_bound(params, SMALL, x, eps)
