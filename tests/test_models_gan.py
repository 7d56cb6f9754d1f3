"""Specification of refdiff.models.gan and its forms (gan_conv for images, gan_mlp for points): both objectives'
hand-derived gradients against finite differences (the discriminator's w.r.t. its parameters, the generator's
w.r.t. its parameters through the discriminator; numpy and array_api_strict, both forms, both losses), the losses'
values and gradients at known logits, float32 discipline, and the checks at the boundary."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff.backend import Generator, to_numpy
from refdiff.models import gan as G
from gradcheck import assert_gradients_match
from model_checks import init_bad_arguments
from support import assert_same_array_kind, float64_tripwire, host_data, on, random_params

# Small enough for a gradient check in well under a second per tensor: 4x4 images, two levels (4x4, 2x2).
SMALL = G.GANConfig(in_channels=2, image_size=4, channels=(3, 4), latent_dim=3, num_classes=None)
SMALL_CONDITIONAL = G.GANConfig(in_channels=1, image_size=4, channels=(3, 4), latent_dim=2, num_classes=3)
POINTS = G.MLPGANConfig(data_dim=2, hidden=5, latent_dim=2)
POINTS_CONDITIONAL = G.MLPGANConfig(data_dim=3, hidden=4, latent_dim=2, num_classes=2)
# The hinge cases' seeds put some logits past the margin and none within 0.05 of it: with every logit inside, L_D
# is linear in the logits and disc.psi.b's gradient is exactly 0, which a relative error cannot check.
CASES = [(SMALL, "non_saturating", 0), (SMALL_CONDITIONAL, "non_saturating", 1), (SMALL_CONDITIONAL, "hinge", 2),
         (POINTS, "hinge", 2), (POINTS_CONDITIONAL, "non_saturating", 4)]


def inputs(cfg, seed, n=3):
    """(params, x_real, z, y) host float64: random params (every gradient nonzero), data, noise, labels."""
    rng = np.random.default_rng(seed)
    shape = (n, cfg.data_dim) if isinstance(cfg, G.MLPGANConfig) else (n, cfg.in_channels, cfg.image_size,
                                                                       cfg.image_size)
    x = np.tanh(host_data(seed + 1, shape))
    y = None if cfg.num_classes is None else rng.integers(0, cfg.num_classes, n)
    return random_params(G.param_shapes(cfg), seed), x, host_data(seed + 2, (n, cfg.latent_dim)), y


def _check(backend, cfg, loss, seed, objective, backward, keys, data):
    """assert_gradients_match for one objective over the parameters ``keys``, on ``backend``."""
    params, x, z, y = inputs(cfg, seed)
    y_b = None if y is None else backend.asarray(y)
    args = (backend.asarray(x),) if data else ()

    def run(arrays):
        return objective(on(backend, arrays), cfg, *args, backend.asarray(z), y_b, loss)

    grads = backward(run(params)[1], cfg)
    assert list(grads) == keys
    for key, g in grads.items():
        assert_same_array_kind(g, backend.asarray(params[key]))
    assert_gradients_match(lambda arrays: float(to_numpy(run(arrays)[0])), params,
                           {k: to_numpy(v) for k, v in grads.items()})


@pytest.mark.parametrize("cfg, loss, seed", CASES)
def test_discriminator_gradient_matches_finite_differences(backend, cfg, loss, seed):
    """discriminator_objective_backward equals the gradient of L_D(params) = discriminator_loss(D(x_real, y),
    D(G(z, y), y)) with respect to every discriminator parameter (float64, z fixed), for the conv and the MLP
    form, unconditional and with the projection, both losses; directional probes for tensors of > 8 entries."""
    _check(backend, cfg, loss, seed, G.discriminator_objective, G.discriminator_objective_backward,
           G.discriminator_keys(cfg), data=True)


@pytest.mark.parametrize("cfg, loss, seed", CASES)
def test_generator_gradient_through_the_discriminator_matches_finite_differences(backend, cfg, loss, seed):
    """generator_objective_backward (D's backward with need_dx, then G's backward) equals the gradient of
    L_G(params) = generator_loss(D(G(z, y), y)) with respect to every generator parameter (float64, z fixed)."""
    _check(backend, cfg, loss, seed, G.generator_objective, G.generator_objective_backward,
           G.generator_keys(cfg), data=False)


def test_float32_objectives_and_gradients_create_no_float64(backend):
    """Float32 objectives and their gradients stay float32 (docs/design.md rule 6): the tripwire on
    array_api_strict sees no float64 array, and every output is float32."""
    params, x, z, y = inputs(SMALL_CONDITIONAL, 5)
    p32 = on(backend, {k: v.astype(np.float32) for k, v in params.items()})
    x32, z32, yb = backend.asarray(x.astype(np.float32)), backend.asarray(z.astype(np.float32)), backend.asarray(y)
    with float64_tripwire(backend):
        outs = []
        for loss in G.LOSSES:
            d_value, d_cache = G.discriminator_objective(p32, SMALL_CONDITIONAL, x32, z32, yb, loss)
            g_value, g_cache = G.generator_objective(p32, SMALL_CONDITIONAL, z32, yb, loss)
            outs += [d_value, g_value, *G.discriminator_objective_backward(d_cache, SMALL_CONDITIONAL).values(),
                     *G.generator_objective_backward(g_cache, SMALL_CONDITIONAL).values()]
    assert all(a.dtype == backend.xp.float32 for a in outs)


# ------------------------------------------------------------------------------------ losses

def test_non_saturating_losses_at_logit_zero_are_log_2():
    """At logit 0 (D undecided, sigmoid = 1/2): each term of the non-saturating pair is log 2, so L_D = 2 log 2 and
    L_G = log 2, with gradients -1/(2N) for a real logit, +1/(2M) for a fake one in L_D and -1/(2M) in L_G."""
    out = G.discriminator_loss(np.zeros(4), np.zeros(2))
    assert math.isclose(out.value, 2 * math.log(2.0), rel_tol=1e-15)
    np.testing.assert_array_equal(out.d_real, -0.5 / 4)
    np.testing.assert_array_equal(out.d_fake, 0.5 / 2)
    value, d_fake = G.generator_loss(np.zeros(5))
    assert math.isclose(value, math.log(2.0), rel_tol=1e-15)
    np.testing.assert_array_equal(d_fake, -0.5 / 5)


def test_hinge_losses_at_and_inside_the_margin():
    """Hinge: at the margin (l_real = 1, l_fake = -1) L_D = 0 with zero gradient; at logit 0 L_D = 2 with gradients
    -1/N and +1/M; beyond the margin nothing changes; L_G = -mean l_fake with gradient -1/M everywhere."""
    at = G.discriminator_loss(np.ones(3), -np.ones(3), "hinge")
    assert at.value == 0.0 and not np.any(at.d_real) and not np.any(at.d_fake)
    beyond = G.discriminator_loss(np.full(3, 4.0), np.full(3, -7.0), "hinge")
    assert beyond.value == 0.0 and not np.any(beyond.d_real) and not np.any(beyond.d_fake)
    zero = G.discriminator_loss(np.zeros(4), np.zeros(2), "hinge")
    assert zero.value == 2.0
    np.testing.assert_array_equal(zero.d_real, -1 / 4)
    np.testing.assert_array_equal(zero.d_fake, 1 / 2)
    value, d = G.generator_loss(np.array([0.5, -1.5]), "hinge")
    assert value == 0.5
    np.testing.assert_array_equal(d, -0.5)


@given(seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 3.0, 30.0]))
@settings(max_examples=10)
def test_loss_gradients_match_finite_differences_of_the_logits(seed, scale):
    """Both losses' gradients with respect to the logits equal centered differences of their values (float64,
    logits drawn away from the hinge's kinks)."""
    rng = np.random.default_rng(seed)
    real, fake = scale * rng.standard_normal(4), scale * rng.standard_normal(3)
    for loss in G.LOSSES:
        if loss == "hinge" and min(np.abs(real - 1).min(), np.abs(fake + 1).min()) < 1e-3:
            continue
        out = G.discriminator_loss(real, fake, loss)
        arrays = {"real": real, "fake": fake}
        assert_gradients_match(lambda a: float(G.discriminator_loss(a["real"], a["fake"], loss).value), arrays,
                               {"real": out.d_real, "fake": out.d_fake})
        assert_gradients_match(lambda a: float(G.generator_loss(a["fake"], loss)[0]), arrays,
                               {"fake": G.generator_loss(fake, loss)[1]})


def test_softplus_is_stable_and_exact(backend):
    """softplus(a) = log(1 + e^a) for moderate a; softplus(1000) = 1000 and softplus(-1000) = 0 (where e^a
    overflows or the naive form loses everything), and softplus(a) - softplus(-a) = a."""
    a = host_data(0, (7,), scale=3.0)
    sp = lambda v: to_numpy(G.softplus(backend.asarray(np.asarray(v, dtype=np.float64))))  # noqa: E731
    np.testing.assert_allclose(sp(a), np.log1p(np.exp(a)), rtol=1e-14)
    np.testing.assert_array_equal(sp([1000.0, -1000.0]), [1000.0, 0.0])
    np.testing.assert_allclose(sp(a) - sp(-a), a, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------------- model, checks

def test_samples_are_images_in_range_and_labels_change_them():
    """The image generator's samples are (N, C, S, S) in [-1, 1] (tanh); another label changes them."""
    params, _, z, _ = inputs(SMALL_CONDITIONAL, 3)
    sample = G.gan_model(params, SMALL_CONDITIONAL)
    a = sample(z, np.zeros(3, np.int64))
    assert a.shape == (3, 1, 4, 4) and np.abs(a).max() <= 1
    assert not np.allclose(a, sample(z, np.ones(3, np.int64)))


def test_init_is_seeded_with_the_param_shapes_and_count():
    """init_params has param_shapes' keys, order and shapes, param_count is their total size, the same seed gives
    the same parameters; the keys split into the generator's and the discriminator's."""
    for cfg in (SMALL, SMALL_CONDITIONAL, G.GANConfig(num_classes=10), POINTS, POINTS_CONDITIONAL):
        params = G.init_params(cfg, Generator(0), np.float64)
        assert {k: v.shape for k, v in params.items()} == G.param_shapes(cfg)
        assert G.param_count(cfg) == sum(v.size for v in params.values())
        again = G.init_params(cfg, Generator(0), np.float64)
        assert all(np.array_equal(params[k], again[k]) for k in params)
        assert G.generator_keys(cfg) + G.discriminator_keys(cfg) == list(params)


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": ()}, r"channels must have at least one entry"),
    ({"channels": (4, 0)}, "every entry of channels must be an integer >= 1, got 0"),
    ({"image_size": 6, "channels": (2, 2, 2)}, r"image_size must be a multiple of 2\^\(len\(channels\) - 1\) = 4"),
    ({"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
])
def test_config_bad_fields_raise(kwargs, message):
    """GANConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        G.GANConfig(**kwargs)


def test_point_config_bad_fields_raise():
    """MLPGANConfig names the bad field and the allowed range; another config type is refused."""
    with pytest.raises(ValueError, match="hidden must be an integer >= 1, got 0"):
        G.MLPGANConfig(hidden=0)
    with pytest.raises(ValueError, match="cfg must be a GANConfig or an MLPGANConfig, got dict"):
        G.param_shapes({})


@pytest.mark.parametrize("args, message", init_bad_arguments(SMALL, "a GANConfig"))
def test_init_bad_arguments_raise(args, message):
    """init_params rejects a non-refdiff generator, a non-floating dtype and a non-config."""
    with pytest.raises(ValueError, match=message):
        G.init_params(*args)


@pytest.mark.parametrize("change, message", [
    ({"loss": "wasserstein"}, "loss must be one of non_saturating, hinge, got 'wasserstein'"),
    ({"y": None}, r"y must be given for a class-conditional GAN \(cfg.num_classes = 3\)"),
    ({"y": np.array([0, 1, 3])}, r"y must be an \(3,\) integer array of labels in \[0, 3\)"),
    ({"y": np.zeros(2, np.int64)}, r"y must be an \(3,\) integer array of labels in \[0, 3\)"),
    ({"z": np.zeros((3, 5))}, r"z must be a real floating \(N, 2\) array \(N, latent_dim\)"),
    ({"z": np.zeros((2, 2))}, r"z must be an array of x_real's library, device and dtype .* with its batch N = 3"),
    ({"x": np.zeros((3, 1, 8, 8))}, r"x must be \(N, 1, 4, 4\) \(cfg.image_size\)"),
    ({"params": {}}, "params must have the keys of this GANConfig"),
])
def test_objective_bad_inputs_raise(backend, change, message):
    """discriminator_objective names the bad argument: an unknown loss, missing or out-of-range labels, noise of
    the wrong shape or batch, images of the wrong size, params of another config."""
    params, x, z, y = inputs(SMALL_CONDITIONAL, 0)
    args = {"params": params, "x": x, "z": z, "y": y, "loss": "non_saturating", **change}
    y_b = None if args["y"] is None else backend.asarray(args["y"])
    with pytest.raises(ValueError, match=message):
        G.discriminator_objective(on(backend, args["params"]), SMALL_CONDITIONAL, backend.asarray(args["x"]),
                                  backend.asarray(args["z"]), y_b, args["loss"])


def test_unconditional_gan_refuses_labels():
    """An unconditional GAN's generator_objective refuses labels, naming y."""
    params, _, z, _ = inputs(SMALL, 0)
    with pytest.raises(ValueError, match=r"y must be None for an unconditional GAN"):
        G.generator_objective(params, SMALL, z, np.zeros(3, np.int64))
