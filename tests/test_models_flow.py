"""Specification of refdiff.models.flow and its coders (flow_conv for images, flow_mlp for points): the exact inverse,
the log-determinant against a finite-difference Jacobian, the log-likelihood's hand-derived gradient against finite
differences (every parameter, numpy and array_api_strict, both coders), the density's integral on a 2-D grid, the
dequantised bits/dim against the discrete probability, the masks and the squeeze, and the checks at the boundary."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff.backend import Generator, to_numpy
from refdiff.models import flow as F
from refdiff.models.flow_conv import mask, plan, squeeze, unsqueeze
from gradcheck import assert_gradients_match
from model_checks import init_bad_arguments
from support import assert_same_array_kind, float64_tripwire, host_data, on, random_params

seeds = st.integers(0, 2**16)
# D = 16: a checkerboard coupling at 4x4, a squeeze, a channel coupling and two checkerboard couplings at 2x2x4.
SMALL = F.FlowConfig(in_channels=1, image_size=4, hidden=3, scales=2, couplings=1)
TWO_CHANNELS = F.FlowConfig(in_channels=2, image_size=2, hidden=2, scales=1, couplings=2)  # D = 8, no squeeze
POINTS = F.MLPFlowConfig(data_dim=2, hidden=5, couplings=3)
POINTS_3D = F.MLPFlowConfig(data_dim=3, hidden=4, couplings=3)
SMALL_CONDITIONAL = F.FlowConfig(in_channels=1, image_size=4, hidden=3, scales=2, couplings=1, num_classes=3)
POINTS_CONDITIONAL = F.MLPFlowConfig(data_dim=2, hidden=4, couplings=2, num_classes=2)
CONFIGS = [SMALL, TWO_CHANNELS, POINTS, POINTS_3D, SMALL_CONDITIONAL, POINTS_CONDITIONAL]


def data(cfg, seed, n=3):
    """(n, C, S, S) images uniform in [-1, 1], or (n, D) standard normal points: host float64."""
    if isinstance(cfg, F.MLPFlowConfig):
        return host_data(seed, (n, cfg.data_dim))
    return np.random.default_rng(seed).uniform(-1, 1, (n, cfg.in_channels, cfg.image_size, cfg.image_size))


def labels(cfg, seed, n=3):
    """(n,) host labels in [0, K] (K the null label) for a conditional flow, None for an unconditional one."""
    return None if cfg.num_classes is None else np.random.default_rng(seed).integers(0, cfg.num_classes + 1, n)


def params_of(cfg, seed, scale=1.0):
    """Random host float64 parameters (the zero-initialised last layers too, so every coupling is not the
    identity), the last layers times ``scale``."""
    p = random_params(F.param_shapes(cfg), seed)
    return {k: v * (scale if ".out." in k else 1.0) for k, v in p.items()}


# ------------------------------------------------------------------------------ inverse, log-det

@pytest.mark.parametrize("cfg", CONFIGS)
@given(seed=seeds)
@settings(max_examples=5)
def test_inverse_undoes_forward(cfg, seed):
    """flow_inverse(flow_forward(x | y) | y) == x and flow_forward(flow_inverse(z | y) | y) == z to 1e-12 (float64),
    for random parameters of every coder, unconditional and with labels."""
    params, x, y = params_of(cfg, seed), data(cfg, seed + 1), labels(cfg, seed)
    z = F.flow_forward(params, cfg, x, y)[0]
    np.testing.assert_allclose(F.flow_inverse(params, cfg, z, y), x, rtol=0, atol=1e-12)
    z2 = host_data(seed + 2, (3, cfg.dims))
    np.testing.assert_allclose(F.flow_forward(params, cfg, F.flow_inverse(params, cfg, z2, y), y)[0], z2, rtol=0,
                               atol=1e-12)


def numerical_jacobian(f, x, h=1e-6):
    """The (D, D) Jacobian of f: R^D -> R^D at x (D,) by centered differences."""
    J = np.empty((f(x).size, x.size))
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        J[:, i] = (f(x + e) - f(x - e)) / (2 * h)
    return J


@pytest.mark.parametrize("cfg", CONFIGS)
@given(seed=seeds)
@settings(max_examples=3)
def test_log_determinant_equals_that_of_the_numerical_jacobian(cfg, seed):
    """flow_forward's log-determinant equals log |det J| of the finite-difference Jacobian of the whole map x -> z
    (D <= 16; numpy.linalg.slogdet), to 1e-7 (the differences' error), for every sample of a batch."""
    params, x = params_of(cfg, seed), data(cfg, seed + 1, n=2)
    _, logdet, _ = F.flow_forward(params, cfg, x)
    for n in range(x.shape[0]):
        J = numerical_jacobian(lambda v: F.flow_forward(params, cfg, v.reshape((1,) + x.shape[1:]))[0][0],
                               x[n].ravel())
        sign, expected = np.linalg.slogdet(J)
        assert sign != 0 and abs(logdet[n] - expected) < 1e-7, (logdet[n], expected)


def test_a_fresh_flow_is_the_identity_and_its_density_the_standard_normal():
    """With init_params (every s/t net's last layer 0): z = x (permuted by the squeeze), log |det| = 0, and log p(x)
    is scipy's standard normal log-density summed over the dimensions."""
    for cfg in (SMALL, POINTS):
        params, x = F.init_params(cfg, Generator(0), np.float64), data(cfg, 3)
        terms, cache = F.log_prob_forward(params, cfg, x)
        flat = x.reshape(x.shape[0], -1)  # (N, D); the squeeze only permutes the entries
        np.testing.assert_array_equal(np.sort(cache.z, axis=1), np.sort(flat, axis=1))
        np.testing.assert_array_equal(terms.logdet, 0.0)
        expected = np.sum(scipy.stats.norm.logpdf(flat), axis=1)
        np.testing.assert_allclose(terms.log_prob, expected, rtol=1e-13)


# ------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("cfg, seed", [(SMALL, 0), (TWO_CHANNELS, 1), (POINTS, 2), (POINTS_3D, 3),
                                       (SMALL_CONDITIONAL, 4), (POINTS_CONDITIONAL, 5)])
def test_log_prob_backward_matches_finite_differences(backend, cfg, seed):
    """log_prob_backward(w) equals the gradient of sum_n w_n log p(x_n | y_n)(params) for every parameter of every
    coupling (float64), the log-determinant's term included, for the conv and the MLP coder, unconditional and with
    the label embeddings; the directional probes of tests/gradcheck.py for tensors of more than 8 entries."""
    params, x = params_of(cfg, seed, scale=0.5), data(cfg, seed + 1)
    w, y = host_data(seed + 3, (x.shape[0],)), labels(cfg, seed)
    y_b = None if y is None else backend.asarray(y)

    def run(arrays):
        return F.log_prob_forward(on(backend, arrays), cfg, backend.asarray(x), y_b)

    def loss(arrays):
        return float(to_numpy(backend.xp.sum(run(arrays)[0].log_prob * backend.asarray(w))))

    grads = F.log_prob_backward(backend.asarray(w), run(params)[1])
    assert list(grads) == list(F.param_shapes(cfg))
    for key, g in grads.items():
        assert_same_array_kind(g, backend.asarray(params[key]))
    assert_gradients_match(loss, params, {k: to_numpy(v) for k, v in grads.items()})


def test_float32_flow_and_its_gradient_create_no_float64(backend):
    """A float32 forward, inverse, log-likelihood and gradient stay float32 (docs/design.md rule 6): the tripwire
    on array_api_strict sees no float64 array, and the outputs are float32."""
    params, x = params_of(SMALL, 5), data(SMALL, 6)
    p32 = on(backend, {k: v.astype(np.float32) for k, v in params.items()})
    x32 = backend.asarray(x.astype(np.float32))
    with float64_tripwire(backend):
        terms, cache = F.log_prob_forward(p32, SMALL, x32)
        grads = F.log_prob_backward(terms.log_prob / terms.log_prob, cache)
        back = F.flow_inverse(p32, SMALL, cache.z)
        deq = F.dequantize(x32, x32 * 0.0 + 0.5, 17)
    for a in (terms.log_prob, back, deq, *grads.values()):
        assert a.dtype == backend.xp.float32


# ------------------------------------------------------------------------ density, bits/dim

def test_density_integrates_to_one_on_a_2d_grid():
    """For a random (non-identity) 2-D flow, sum over a 300 x 300 midpoint grid on [-10, 10]^2 of p(x) times the cell
    area is 1 within 1e-5: the change of variables gives a normalised density."""
    cfg = F.MLPFlowConfig(data_dim=2, hidden=8, couplings=4)
    params = params_of(cfg, 7, scale=0.7)
    g = np.linspace(-10, 10, 301)
    mid = (g[:-1] + g[1:]) / 2
    xx = np.stack(np.meshgrid(mid, mid, indexing="ij"), axis=-1).reshape(-1, 2)  # (90000, 2)
    log_p = F.log_prob_forward(params, cfg, xx)[0].log_prob
    total = np.sum(np.exp(log_p)) * (g[1] - g[0]) ** 2
    assert abs(total - 1.0) < 1e-5, total
    assert np.std(F.log_prob_forward(params, cfg, xx[::97])[0].logdet) > 0.1  # the flow is not a mere shift


def test_dequantized_bits_per_dim_bound_the_discrete_probability():
    """For data on `levels` values per coordinate, P(x) = integral of p over x's bin; on a 40 x 40 midpoint grid u of
    the bin, log P(x) ~ log mean_u p(x'(u)) (2 / levels)^2 >= mean_u log p(x'(u)) - 2 log(levels / 2) (Jensen, exact
    for the grid's mean): bits_per_dim(log p(x'), D, levels) averaged over u is at least -log2 P(x) / D."""
    cfg, levels = F.MLPFlowConfig(data_dim=2, hidden=6, couplings=3), 5
    params = params_of(cfg, 3, scale=0.7)
    k = np.array([[0, 4], [2, 2], [1, 3]])  # three data points, grid indices
    x = k * 2.0 / (levels - 1) - 1.0  # (3, 2) on the grid of [-1, 1]
    u1 = (np.arange(40) + 0.5) / 40
    u = np.stack(np.meshgrid(u1, u1, indexing="ij"), axis=-1).reshape(-1, 2)  # (1600, 2) in [0, 1)
    for x_n in x:
        xd = F.dequantize(np.broadcast_to(x_n, u.shape).copy(), u, levels)
        np.testing.assert_array_equal(F.quantize(xd, levels), np.broadcast_to(x_n, u.shape))
        log_p = F.log_prob_forward(params, cfg, xd)[0].log_prob  # (1600,)
        log_P = np.log(np.mean(np.exp(log_p))) + 2 * math.log(2.0 / levels)
        bound = np.mean(F.bits_per_dim(log_p, 2, levels))
        assert bound >= -log_P / (2 * math.log(2.0)) - 1e-12 and log_P < 0


def test_bits_per_dim_of_the_uniform_density_is_log2_levels():
    """The uniform density on [-1, 1]^D (log p = -D log 2) gives log2(levels) bits/dim, the entropy of uniform
    discrete data (4.09 for the digits' 17 levels); without levels, bits/dim = -log p / (D ln 2) exactly."""
    for D, levels in ((64, 17), (3, 256), (1, 2)):
        assert F.bits_per_dim(-D * math.log(2.0), D, levels) == pytest.approx(math.log2(levels), abs=1e-13)
    assert F.bits_per_dim(-64 * math.log(2.0), 64) == 1.0


@given(seed=seeds, levels=st.integers(2, 300))
@settings(max_examples=10)
def test_dequantize_fills_each_bin_and_quantize_undoes_it(seed, levels):
    """x' = dequantize(x, u) lies in x's bin [2k / levels - 1, 2(k + 1) / levels - 1) (u = 0 at its left end) and
    quantize(x') == x, for data on every grid of levels >= 2."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, levels, (50,))
    x = k * 2.0 / (levels - 1) - 1.0
    u = rng.uniform(0, 1, (50,))
    xd = F.dequantize(x, u, levels)
    assert np.all(xd >= 2 * k / levels - 1 - 1e-12) and np.all(xd < 2 * (k + 1) / levels - 1)
    np.testing.assert_allclose(F.dequantize(x, 0 * u, levels), 2 * k / levels - 1, atol=1e-14)
    np.testing.assert_allclose(F.quantize(xd, levels), x, atol=1e-12)


# ------------------------------------------------------------------------------ masks, squeeze

def test_masks_of_opposite_parity_are_complements_and_a_coupling_keeps_its_conditioning_half():
    """The two checkerboard masks (and the two channel masks) sum to 1 with half their entries set; a coupling's
    output equals its input where the mask is 1."""
    h = host_data(0, (2, 4, 4, 4))
    for kind in ("checkerboard", "channel"):
        b0, b1 = (mask(F.flow_conv.Step(kind, "c", p, 4), h) for p in (0, 1))
        np.testing.assert_array_equal(b0 + b1, 1.0)
        assert np.mean(b0) == 0.5
    params = params_of(SMALL, 1)
    for step in plan(SMALL):
        if step.kind == "squeeze":
            continue
        x = host_data(2, (2, 2, 2, 4) if step.channels == 4 else (2, 4, 4, 1))
        y = F.coupling_forward(params, SMALL, step, x)[0]
        b = mask(step, x)
        np.testing.assert_array_equal(b * y, b * x)
        assert not np.allclose(y, x)


def test_squeeze_moves_each_2x2_block_into_channels_and_unsqueeze_inverts_it():
    """squeeze(h)[n, i, j, (2a + c) C + k] == h[n, 2i + a, 2j + c, k], and unsqueeze(squeeze(h)) == h."""
    h = host_data(1, (2, 4, 6, 3))
    s = squeeze(h)
    assert s.shape == (2, 2, 3, 12)
    for a in range(2):
        for c in range(2):
            np.testing.assert_array_equal(s[..., (2 * a + c) * 3 : (2 * a + c + 1) * 3], h[:, a::2, c::2, :])
    np.testing.assert_array_equal(unsqueeze(s), h)


# ---------------------------------------------------------------------------------- model, checks

def test_without_a_label_a_conditional_flow_uses_the_null_label_and_labels_change_the_density():
    """flow_forward(x, None) == flow_forward(x, K) (row K of every table, the null label), a different label gives
    another z and log-determinant, and flow_inverse inverts each label's map."""
    for cfg in (SMALL_CONDITIONAL, POINTS_CONDITIONAL):
        params, x, K = params_of(cfg, 2), data(cfg, 3), cfg.num_classes
        z_null, logdet_null, _ = F.flow_forward(params, cfg, x)
        z_K, logdet_K, _ = F.flow_forward(params, cfg, x, np.full(3, K))
        np.testing.assert_array_equal(z_null, z_K)
        np.testing.assert_array_equal(logdet_null, logdet_K)
        z_0, logdet_0, _ = F.flow_forward(params, cfg, x, np.zeros(3, np.int64))
        assert not np.allclose(z_0, z_null) and not np.allclose(logdet_0, logdet_null)
        np.testing.assert_allclose(F.flow_inverse(params, cfg, z_0, np.zeros(3, np.int64)), x, atol=1e-12)


def test_init_is_seeded_with_the_param_shapes_and_count():
    """init_params has param_shapes' keys, order and shapes, param_count is their total size, the same seed gives
    the same parameters, and every s/t net's last layer starts at 0."""
    for cfg in (*CONFIGS, F.FlowConfig(), F.MLPFlowConfig()):
        params = F.init_params(cfg, Generator(0), np.float64)
        assert {k: v.shape for k, v in params.items()} == F.param_shapes(cfg)
        assert F.param_count(cfg) == sum(v.size for v in params.values())
        again = F.init_params(cfg, Generator(0), np.float64)
        assert all(np.array_equal(params[k], again[k]) for k in params)
        assert all(np.all(v == 0) for k, v in params.items() if ".out." in k)


@pytest.mark.parametrize("kwargs, message", [
    ({"scales": 0}, "scales must be an integer >= 1, got 0"),
    ({"image_size": 6, "scales": 3}, r"image_size must be a multiple of 2\^\(scales - 1\) = 4, got 6"),
    ({"couplings": 0}, "couplings must be an integer >= 1, got 0"),
    ({"hidden": 1.5}, "hidden must be an integer >= 1, got 1.5"),
    ({"levels": 1}, "levels must be an integer >= 2, got 1"),
    ({"s_bound": 0.0}, "s_bound must be a positive finite number, got 0.0"),
    ({"s_bound": math.inf}, "s_bound must be a positive finite number, got inf"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
])
def test_config_bad_fields_raise(kwargs, message):
    """FlowConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        F.FlowConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"data_dim": 1}, "data_dim must be an integer >= 2, got 1"),
    ({"couplings": -1}, "couplings must be an integer >= 1, got -1"),
    ({"s_bound": True}, "s_bound must be a positive finite number, got True"),
])
def test_point_config_bad_fields_raise(kwargs, message):
    """MLPFlowConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        F.MLPFlowConfig(**kwargs)


@pytest.mark.parametrize("cfg, x, message", [
    (SMALL, np.zeros((3, 1, 8, 8)), r"x must be \(N, 1, 4, 4\) \(cfg.image_size\)"),
    (SMALL, np.zeros((3, 2, 4, 4)), r"x must be a real floating \(N, 1, H, W\) array"),
    (SMALL, np.full((3, 1, 4, 4), np.nan), "x must be finite"),
    (POINTS, np.zeros((3, 3)), r"x must be a real floating \(N, 2\) array of points"),
    (POINTS, np.array([[0.0, np.inf]]), "x must be finite"),
])
def test_forward_bad_inputs_raise(backend, cfg, x, message):
    """flow_forward names x of the wrong shape, channels or size, or with NaN or inf."""
    params = on(backend, params_of(cfg, 0))
    with pytest.raises(ValueError, match=message):
        F.flow_forward(params, cfg, backend.asarray(x))


def test_bad_params_z_u_and_cfg_raise(backend):
    """params of another config, params of another dtype, z of the wrong width, labels for an unconditional flow,
    labels of the wrong length or range, u of the wrong shape or outside [0, 1), and a config of another family are
    refused, each naming the argument."""
    params, x = on(backend, params_of(SMALL, 0)), backend.asarray(data(SMALL, 1))
    with pytest.raises(ValueError, match="params must have the keys of this FlowConfig"):
        F.flow_forward(on(backend, params_of(POINTS, 0)), F.FlowConfig(image_size=4, hidden=3, couplings=2), x)
    with pytest.raises(ValueError, match=r"params\['coupling0.in.w'\] must be an array of x's library, device and "
                                         r"dtype \((array_api_strict\.)?float32\)"):
        F.flow_forward(params, SMALL, backend.asarray(data(SMALL, 1).astype(np.float32)))
    with pytest.raises(ValueError, match=r"z must be an \(N, 16\) array \(N, cfg.dims\) of params' library"):
        F.flow_inverse(params, SMALL, backend.asarray(np.zeros((3, 15))))
    with pytest.raises(ValueError, match=r"z must be an \(N, 16\) array .* got shape \(3, 16\) and dtype"):
        F.flow_inverse(params, SMALL, backend.asarray(np.zeros((3, 16), np.float32)))
    with pytest.raises(ValueError, match=r"u must be an array of x's shape \(3, 1, 4, 4\)"):
        F.dequantize(x, backend.asarray(np.zeros((3, 16))), 17)
    with pytest.raises(ValueError, match=r"u must lie in \[0, 1\), got values in \[1.0, 1.0\]"):
        F.dequantize(x, backend.asarray(np.full((3, 1, 4, 4), 1.0)), 17)
    with pytest.raises(ValueError, match=r"y must be None for an unconditional flow"):
        F.flow_forward(params, SMALL, x, backend.asarray(np.zeros(3, np.int64)))
    conditional = on(backend, params_of(SMALL_CONDITIONAL, 0))
    with pytest.raises(ValueError, match=r"y must be an \(N,\) array of labels of x's library and device with N = 3"):
        F.flow_forward(conditional, SMALL_CONDITIONAL, x, backend.asarray(np.zeros(2, np.int64)))
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\]"):
        F.flow_forward(conditional, SMALL_CONDITIONAL, x, backend.asarray(np.full(3, 4, np.int64)))
    with pytest.raises(ValueError, match="levels must be an integer >= 2, got 1"):
        F.bits_per_dim(backend.asarray(np.zeros(3)), 16, 1)
    with pytest.raises(ValueError, match="cfg must be a FlowConfig or an MLPFlowConfig, got VAEConfig"):
        from refdiff.models.vae import VAEConfig

        F.param_shapes(VAEConfig())


@pytest.mark.parametrize("args, message", init_bad_arguments(SMALL, "a FlowConfig"))
def test_init_bad_arguments_raise(args, message):
    """init_params rejects a non-refdiff generator, a non-floating dtype and a non-config."""
    with pytest.raises(ValueError, match=message):
        F.init_params(*args)
