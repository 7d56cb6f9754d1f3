"""Specification of refdiff.models.mlp: the MLP denoiser for 2-D toy data, forward and hand-derived backward."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from model_checks import assert_grads_like_params, bad_forward_arguments, init_bad_arguments
from refdiff.backend import Generator, to_numpy
from refdiff.layers.embed import ORDERS
from refdiff.models import mlp as M
from support import DTYPES, TOLERANCE, assert_same_array_kind, float64_tripwire, host_data, on

seeds = st.integers(0, 2**16)


@st.composite
def small_configs(draw, dropout=(0.0,), width=4):
    """Small MLPConfigs covering every switch: classes or not, learn_sigma, depth 0 (no blocks), both
    orders; hidden and time_embed_dim up to ``width``."""
    return M.MLPConfig(data_dim=draw(st.integers(1, 3)), hidden=draw(st.integers(1, width)),
                       depth=draw(st.integers(0, 2)), time_embed_dim=draw(st.integers(1, width)),
                       num_classes=draw(st.none() | st.integers(1, 3)), learn_sigma=draw(st.booleans()),
                       dropout=draw(st.sampled_from(dropout)), time_embed_order=draw(st.sampled_from(ORDERS)))


@st.composite
def batches(draw, cfg):
    """(x, t, y): N in [1, 4] host samples' seed, integer steps in [0, 999], labels in [0, K] or None."""
    N = draw(st.integers(1, 4))
    t = np.array(draw(st.lists(st.integers(0, 999), min_size=N, max_size=N)))
    y = None
    if cfg.num_classes is not None and draw(st.booleans()):
        y = np.array(draw(st.lists(st.integers(0, cfg.num_classes), min_size=N, max_size=N)))
    return host_data(draw(seeds), (N, cfg.data_dim)), t, y


def random_params(cfg, seed, dtype="float64"):
    """Every parameter random, the output layer too (so that every gradient is nonzero): weights
    N(0, 1/C_in) so that each layer has about unit gain, biases and label rows N(0, 1/4)."""
    return {k: host_data(seed + i, shape, dtype, scale=1 / math.sqrt(shape[0]) if k.endswith(".w") else 0.5)
            for i, (k, shape) in enumerate(M.param_shapes(cfg).items())}


def forward(backend, params, cfg, x, t, y=None, **kwargs):
    """mlp_forward on ``backend`` from host params and inputs; returns (out, cache)."""
    y = None if y is None else backend.asarray(y)
    return M.mlp_forward(on(backend, params), cfg, backend.asarray(x), backend.asarray(t), y, **kwargs)


def forward_tolerance_scale(t):
    """Condition of a float32 forward with unit-gain layers (random_params): the embedding's argument
    t f_i is rounded with absolute error about |t| 2^-24, which cos and sin pass on and the layers
    carry to the output unamplified: the factor 1 + max|t| of the timestep-embedding tests."""
    return 1.0 + float(np.max(np.abs(t)))


# ------------------------------------------------------------------------------------- gradients

@given(data=st.data(), cfg=small_configs(dropout=(0.0, 0.4)), seed=seeds)
def test_mlp_backward_matches_finite_differences(backend, data, cfg, seed):
    """grads, dx = mlp_backward(dout, need_dx=True) equal the gradients of sum(mlp_forward(x) * dout)
    for every parameter and for x (float64), in training mode with the same dropout mask each time."""
    x, t, y = data.draw(batches(cfg))
    arrays = dict(random_params(cfg, seed), x=x)
    dout = host_data(seed + 99, (x.shape[0], cfg.out_dim))

    def run(arrays):
        params = {k: v for k, v in arrays.items() if k != "x"}
        return forward(backend, params, cfg, arrays["x"], t, y, train=True, generator=Generator(seed))

    def loss(arrays):
        return float(to_numpy(backend.xp.sum(run(arrays)[0] * backend.asarray(dout))))

    grads, dx = M.mlp_backward(backend.asarray(dout), run(arrays)[1], need_dx=True)
    analytic = {k: to_numpy(v) for k, v in grads.items()}
    assert_gradients_match(loss, arrays, dict(analytic, x=to_numpy(dx)))


@given(cfg=small_configs(dropout=(0.0, 0.4)), seed=seeds)
def test_grads_have_the_params_keys_shapes_and_array_kind(backend, cfg, seed):
    """mlp_backward returns one gradient per parameter: the same keys in the same order, each of its
    parameter's shape, library, device and dtype; dx is like x."""
    params = on(backend, random_params(cfg, seed))
    x = backend.asarray(host_data(seed, (3, cfg.data_dim)))
    out, cache = M.mlp_forward(params, cfg, x, backend.asarray(np.array([0, 5, 999])), train=True,
                               generator=Generator(seed))
    assert tuple(out.shape) == (3, cfg.out_dim)
    grads, dx = M.mlp_backward(out, cache, need_dx=True)
    assert_grads_like_params(grads, params, M.param_shapes(cfg), dx, x)


# --------------------------------------------------------------------------------------- forward

@given(data=st.data(), cfg=small_configs(width=16), seed=seeds)
def test_float32_forward_matches_float64(backend, data, cfg, seed):
    """mlp_forward in float32 == mlp_forward in float64 on the same (float32-rounded) params and x,
    to float32 tolerance times the forward's condition (forward_tolerance_scale)."""
    x, t, y = data.draw(batches(cfg))
    p32, x32 = random_params(cfg, seed, "float32"), x.astype(np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    out32, _ = forward(backend, p32, cfg, x32, t, y)
    out64, _ = forward(backend, p64, cfg, x32.astype(np.float64), t, y)
    assert out32.dtype == backend.xp.float32
    rtol, atol = TOLERANCE["float32"]
    scale = forward_tolerance_scale(t)
    np.testing.assert_allclose(to_numpy(out32), to_numpy(out64), rtol=rtol * scale, atol=atol * scale)


@given(data=st.data(), cfg=small_configs(), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_fresh_model_outputs_zero(backend, data, cfg, seed, dtype):
    """init_params zero-initialises the output layer (ADM's zero_module), so mlp_forward(x, t, y) == 0
    exactly for every input, of shape (N, D) or (N, 2D) with learn_sigma, in x's dtype."""
    x, t, y = data.draw(batches(cfg))
    params = M.init_params(cfg, Generator(seed), dtype=dtype)
    assert all(v.dtype == np.dtype(dtype) for v in params.values())
    out, _ = forward(backend, params, cfg, x.astype(dtype), t, y)
    assert out.dtype == backend.dtype(dtype) and tuple(out.shape) == (x.shape[0], cfg.out_dim)
    np.testing.assert_array_equal(to_numpy(out), 0.0)


def test_init_is_seeded_and_float32_is_the_float64_draw_rounded():
    """init_params(cfg, Generator(s)) is a function of s; its float32 params equal its float64 params
    cast to float32 (draws are made in float64); linear weights lie in [-1/sqrt(C_in), 1/sqrt(C_in)]."""
    cfg = M.MLPConfig(hidden=8, depth=2, time_embed_dim=6, num_classes=3)
    a, b = M.init_params(cfg, Generator(3)), M.init_params(cfg, Generator(3))
    c = M.init_params(cfg, Generator(3), dtype=np.float64)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k].astype(np.float32))
        if k.endswith(".w") and not k.startswith("out."):
            assert np.max(np.abs(c[k])) <= 1 / math.sqrt(c[k].shape[0])
    assert not np.array_equal(a["input.w"], M.init_params(cfg, Generator(4))["input.w"])


@given(cfg=small_configs())
def test_param_count_is_the_number_of_scalars(cfg):
    """param_count(cfg) == sum of the sizes of init_params(cfg) == D H + H + E H + H + H^2 + H
    + (K + 1) H + depth (H^2 + H) + H D_out + D_out."""
    D, H, E, K = cfg.data_dim, cfg.hidden, cfg.time_embed_dim, cfg.num_classes
    expected = D * H + H + E * H + H + H * H + H + (0 if K is None else (K + 1) * H) \
        + cfg.depth * (H * H + H) + H * cfg.out_dim + cfg.out_dim
    assert M.param_count(cfg) == expected == sum(v.size for v in M.init_params(cfg, Generator(0)).values())


@given(data=st.data(), cfg=small_configs(), seed=seeds)
def test_null_label_is_used_when_y_is_none(backend, data, cfg, seed):
    """For a class-conditional model mlp_forward(x, t, None) == mlp_forward(x, t, K) exactly (K = the
    null label of classifier-free guidance), and its gradient lands in row K of the label table."""
    cfg = M.MLPConfig(**{**cfg.__dict__, "num_classes": cfg.num_classes or 2})
    x, t, _ = data.draw(batches(cfg))
    params, K = random_params(cfg, seed), cfg.num_classes
    out_none, cache = forward(backend, params, cfg, x, t, None)
    out_null, _ = forward(backend, params, cfg, x, t, np.full(len(t), K))
    np.testing.assert_array_equal(to_numpy(out_none), to_numpy(out_null))
    dtable = to_numpy(M.mlp_backward(out_none, cache)["label_embed.table"])
    np.testing.assert_array_equal(dtable[:K], 0.0)


@given(data=st.data(), cfg=small_configs(dropout=(0.4,)), seed=seeds)
def test_dropout_is_off_when_not_training(backend, data, cfg, seed):
    """With train=False a model with dropout p > 0 computes exactly the model with p = 0 (and needs no
    generator); with train=True it uses the generator's masks, the same ones for the same seed."""
    x, t, y = data.draw(batches(cfg))
    params = random_params(cfg, seed)
    no_dropout = M.MLPConfig(**{**cfg.__dict__, "dropout": 0.0})
    eval_out, _ = forward(backend, params, cfg, x, t, y, train=False)
    np.testing.assert_array_equal(to_numpy(eval_out), to_numpy(forward(backend, params, no_dropout, x, t, y)[0]))
    train_a = to_numpy(forward(backend, params, cfg, x, t, y, train=True, generator=Generator(seed))[0])
    train_b = to_numpy(forward(backend, params, cfg, x, t, y, train=True, generator=Generator(seed))[0])
    np.testing.assert_array_equal(train_a, train_b)


def test_dropout_changes_the_training_output(backend):
    """train=True with p = 0.5 drops entries: the output differs from evaluation mode."""
    cfg = M.MLPConfig(hidden=16, depth=2, time_embed_dim=4, dropout=0.5)
    params, x, t = random_params(cfg, 0), host_data(1, (8, 2)), np.arange(8)
    train = forward(backend, params, cfg, x, t, train=True, generator=Generator(0))[0]
    assert not np.allclose(to_numpy(train), to_numpy(forward(backend, params, cfg, x, t)[0]))


def test_model_is_the_sampler_protocol(backend):
    """mlp_model(params, cfg)(xt, t, y) == mlp_forward(params, cfg, xt, t, y)[0] in evaluation mode,
    an array like xt."""
    cfg = M.MLPConfig(hidden=8, depth=1, time_embed_dim=4, num_classes=2, learn_sigma=True, dropout=0.3)
    params = on(backend, random_params(cfg, 0, "float32"))
    xt, t, y = (backend.asarray(a) for a in (host_data(1, (5, 2), "float32"), np.arange(5), np.array([0, 1, 2, 0, 1])))
    out = M.mlp_model(params, cfg)(xt, t, y)
    assert_same_array_kind(out, xt)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(M.mlp_forward(params, cfg, xt, t, y)[0]))


def test_float32_creates_no_float64(backend):
    """A float32 forward (training, dropout, labels, integer t) and backward return float32 and create
    no float64 array on the way (tripwire on array_api_strict)."""
    cfg = M.MLPConfig(hidden=8, depth=2, time_embed_dim=5, num_classes=3, learn_sigma=True, dropout=0.2)
    params = on(backend, M.init_params(cfg, Generator(0)))
    x = backend.asarray(host_data(1, (4, 2), "float32"))
    t, y = backend.asarray(np.array([0, 10, 500, 999])), backend.asarray(np.array([0, 3, 1, 2]))
    with float64_tripwire(backend):
        out, cache = M.mlp_forward(params, cfg, x, t, y, train=True, generator=Generator(1))
        grads, dx = M.mlp_backward(out + 1.0, cache, need_dx=True)
    for a in (out, dx, *grads.values()):
        assert a.dtype == backend.xp.float32


# ------------------------------------------------------------------------------------ bad inputs

BASE = M.MLPConfig(hidden=4, depth=1, time_embed_dim=4, num_classes=2)


@pytest.mark.parametrize("change, message", [
    ({"x": np.zeros((3, 3))}, r"x must be a real floating \(N, 2\) array, got shape \(3, 3\)"),
    ({"x": np.zeros((3, 2), dtype=np.int64)}, "x must be a real floating"),
    ({"x": np.zeros(2)}, "x must be a real floating"),
    ({"t": np.zeros(2, dtype=np.int64)}, r"t must be an \(N,\) array .* N = 3"),
    ({"t": np.zeros((3, 1), dtype=np.int64)}, r"t must be an \(N,\) array"),
    ({"y": np.array([0, 1])}, r"y must be an \(N,\) array of labels"),
    ({"y": np.array([0, 1, 3])}, r"y must hold labels in \[0, 2\]"),
    ({"y": np.array([0.0, 1.0, 2.0])}, r"y must be an \(N,\) integer array"),
    ({"cfg": M.MLPConfig(hidden=4, depth=1, time_embed_dim=4), "y": np.array([0, 1, 1])},
     "y must be None for an unconditional model"),
    ({"params": {"input.w": np.zeros((2, 4))}}, r"params must have the keys of this MLPConfig: missing \["),
    ({"params.input.w": np.zeros((3, 4))}, r"params\['input.w'\] must have shape \(2, 4\), got \(3, 4\)"),
    ({"params.out.b": np.zeros(2, dtype=np.float32)},
     r"params\['out.b'\] must be an array of x's library, device and dtype \(.*float64\)"),
    ({"params": "weights"}, "params must be a dict"),
    ({"cfg": "mlp"}, "cfg must be an MLPConfig"),
    ({"train": True, "generator": None, "cfg": M.MLPConfig(hidden=4, depth=1, time_embed_dim=4, num_classes=2,
                                                          dropout=0.1)}, "generator is required"),
])
def test_forward_bad_inputs_raise(backend, change, message):
    """Wrong shapes or dtypes of x, t, y and params, labels outside [0, K], labels for an unconditional
    model, and training with dropout but no generator raise ValueError naming the argument."""
    valid = {"cfg": BASE, "x": np.zeros((3, 2)), "t": np.array([0, 1, 2]), "y": None, "train": False,
             "generator": None}
    args = bad_forward_arguments(backend, M.init_params, valid, change)
    with pytest.raises(ValueError, match=message):
        M.mlp_forward(**args)


def test_params_of_another_library_raise(backend):
    """params left on the host (NumPy) while x is on array_api_strict's device raise ValueError."""
    if backend.name == "numpy":
        pytest.skip("needs a second library")
    params = M.init_params(BASE, Generator(0), dtype=np.float64)
    with pytest.raises(ValueError, match=r"params\['input.w'\] must be an array of x's library"):
        M.mlp_forward(params, BASE, backend.asarray(np.zeros((3, 2))), backend.asarray(np.arange(3)))


def test_backward_bad_dout_raises(backend):
    """dout of a shape or dtype other than the output's raises ValueError naming dout."""
    params = on(backend, M.init_params(BASE, Generator(0), dtype=np.float64))
    out, cache = M.mlp_forward(params, BASE, backend.asarray(np.zeros((3, 2))), backend.asarray(np.arange(3)))
    for dout in (np.zeros((3, 4)), np.zeros((2, 2)), np.zeros((3, 2), dtype=np.float32)):
        with pytest.raises(ValueError, match=r"dout must have the output's shape \(3, 2\)"):
            M.mlp_backward(backend.asarray(dout), cache)


@pytest.mark.parametrize("kwargs, message", [
    ({"data_dim": 0}, "data_dim must be an integer >= 1, got 0"),
    ({"hidden": 2.0}, "hidden must be an integer >= 1"),
    ({"depth": -1}, "depth must be an integer >= 0"),
    ({"time_embed_dim": True}, "time_embed_dim must be an integer"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1"),
    ({"learn_sigma": 1}, "learn_sigma must be a bool"),
    ({"dropout": 1.0}, r"dropout must be a drop probability in \[0, 1\), got 1.0"),
    ({"time_embed_order": "sincos"}, "time_embed_order must be one of cos_sin, sin_cos"),
])
def test_config_bad_fields_raise(kwargs, message):
    """MLPConfig validates every field on construction, naming it."""
    with pytest.raises(ValueError, match=message):
        M.MLPConfig(**kwargs)


@pytest.mark.parametrize("args, message", init_bad_arguments(BASE, "an MLPConfig") + [
    ((BASE, Generator(0), "nonsense"), "dtype must be a NumPy real floating dtype"),
])
def test_init_bad_arguments_raise(args, message):
    """init_params rejects a non-config, a non-refdiff generator and a non-floating dtype."""
    with pytest.raises(ValueError, match=message):
        M.init_params(*args)


# -------------------------------------------------------------------------------------- learning

def test_sgd_learns_the_optimal_eps_predictor_for_gaussian_data():
    """300 plain SGD steps (lr 0.1, batch 128, float32) on L = mean (eps_theta(x_t, t) - eps)^2 at a
    fixed t for x0 ~ N(mu, diag(s^2)) more than halve the loss of the fresh model (which predicts 0,
    L = E eps^2 = 1) and come within 10% of the Bayes loss of E[eps | x_t]
    = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a), x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    cfg = M.MLPConfig(hidden=32, depth=2, time_embed_dim=16)
    params = M.init_params(cfg, Generator(0))
    rng, a, t = np.random.default_rng(0), 0.5, 500
    mu, s = np.array([1.0, -0.5]), np.array([0.5, 0.3])

    def batch(n):
        x0, eps = mu + s * rng.standard_normal((n, 2)), rng.standard_normal((n, 2))
        return (math.sqrt(a) * x0 + math.sqrt(1 - a) * eps).astype(np.float32), eps.astype(np.float32)

    def loss(params, xt, eps):
        return float(np.mean((M.mlp_forward(params, cfg, xt, np.full(len(xt), t))[0] - eps) ** 2))

    x_eval, eps_eval = batch(2048)
    bayes = float(np.mean((math.sqrt(1 - a) * (x_eval - math.sqrt(a) * mu) / (a * s**2 + 1 - a) - eps_eval) ** 2))
    before = loss(params, x_eval, eps_eval)
    for _ in range(300):
        xt, eps = batch(128)
        out, cache = M.mlp_forward(params, cfg, xt, np.full(128, t))
        grads = M.mlp_backward(2.0 * (out - eps) / out.size, cache)  # d mean((out - eps)^2) / d out
        params = {k: params[k] - np.float32(0.1) * grads[k] for k in params}
    after = loss(params, x_eval, eps_eval)
    assert after < 0.5 * before and after < 1.1 * bayes, (before, after, bayes)
