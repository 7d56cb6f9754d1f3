"""Specification of refdiff.gan_train: alternating training moves both players and is a function of its seed,
each player's step touches only its own parameters, samples follow the seed and the labels, the time budget, the
point GAN on a 2-D toy, and the checks at the boundary."""

import numpy as np
import pytest

from refdiff.backend import Generator
from refdiff.digits_eval import digit_split
from refdiff.gan_train import GANTrainConfig, TrainedGAN, _update, gan_samples, gan_step, train_gan
from refdiff.models import gan
from refdiff.models.gan import GANConfig, MLPGANConfig
from refdiff.optim import adamw_init

SMALL = GANConfig(in_channels=1, image_size=8, channels=(4, 8), latent_dim=4, num_classes=10)
QUICK = GANTrainConfig(steps=20, batch_size=16, lr_g=1e-3, lr_d=1e-3)


@pytest.fixture(scope="module")
def trained():
    """(the small conditional GAN trained for 20 steps on the digits' training split, the split)."""
    split = digit_split()
    return train_gan(QUICK, SMALL, split[0], split[2]), split


def test_training_keeps_both_curves_and_is_a_function_of_the_seed(trained):
    """20 steps log 20 finite values of L_D and of L_G; a second run with the same seed gives the same parameters
    bit for bit, and another seed different ones."""
    model, (x_train, _, y_train, _) = trained
    assert model.info["steps_done"] == 20 and len(model.d_losses) == len(model.g_losses) == 20
    assert np.all(np.isfinite(model.d_losses)) and np.all(np.isfinite(model.g_losses))
    again = train_gan(QUICK, SMALL, x_train, y_train)
    assert all(np.array_equal(model.params[k], again.params[k]) for k in model.params)
    other = train_gan(GANTrainConfig(steps=2, batch_size=16, seed=1), SMALL, x_train, y_train)
    assert not np.array_equal(other.params["gen.in.w"], model.params["gen.in.w"])


def test_each_players_update_moves_only_its_own_parameters():
    """The discriminator's update (_update with its gradients) changes every discriminator key and no generator
    key, the generator's the reverse; each AdamW state holds its own player's keys only; and one full step moves
    every parameter (the zero-initialised label tables too: D's projection learns first, then G's table)."""
    x_train, _, y_train, _ = digit_split()
    params = gan.init_params(SMALL, Generator(0), np.float64)
    d_keys, g_keys = set(gan.discriminator_keys(SMALL)), set(gan.generator_keys(SMALL))
    opts = tuple(adamw_init({k: params[k] for k in keys}) for keys in (d_keys, g_keys))
    z, y = Generator(1).normal((8, SMALL.latent_dim)), y_train[:8].astype(np.int64)
    for objective, backward, args, opt, own in ((gan.discriminator_objective, gan.discriminator_objective_backward,
                                                 (x_train[:8].astype(np.float64), z, y), opts[0], d_keys),
                                                (gan.generator_objective, gan.generator_objective_backward, (z, y),
                                                 opts[1], g_keys)):
        after = dict(params)
        opt = _update(after, backward(objective(params, SMALL, *args)[1], SMALL), opt, 1e-3, QUICK)
        assert {k for k in params if not np.array_equal(params[k], after[k])} == own
        assert {k[2:] for k in opt if k != "step"} == own
    model = TrainedGAN(dict(params), SMALL, QUICK)
    gan_step(model, opts, x_train, y_train, Generator(2), 0)
    assert all(not np.array_equal(params[k], model.params[k]) for k in params)


def test_samples_are_images_in_range_and_follow_the_seed(trained):
    """gan_samples gives (n, 1, 8, 8) images in [-1, 1], the same for the same seed, different for another."""
    model, _ = trained
    a = gan_samples(model, 10, np.arange(10), seed=1)
    assert a.shape == (10, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, gan_samples(model, 10, np.arange(10), seed=1))
    assert not np.array_equal(a, gan_samples(model, 10, np.arange(10), seed=2))


def test_a_time_budget_stops_training_early():
    """max_seconds stops the loop after the step that passes the budget: far fewer than ``steps`` steps run."""
    x_train, _, _, _ = digit_split()
    cfg = GANTrainConfig(steps=10_000, batch_size=8, max_seconds=0.05, loss="hinge")
    model = train_gan(cfg, GANConfig(channels=(2,), latent_dim=2), x_train)
    assert 1 <= model.info["steps_done"] < 10_000


def test_the_point_gan_trains_on_a_2d_toy_and_samples_points():
    """An MLPGANConfig on 8gaussians, unconditional: 30 steps run, samples are (n, 2) points (not clipped)."""
    from refdiff.data import load_toy2d

    x, _ = load_toy2d("8gaussians", 500, seed=0)
    model = train_gan(GANTrainConfig(steps=30, batch_size=64, lr_g=1e-3, lr_d=1e-3), MLPGANConfig(hidden=16), x)
    points = gan_samples(model, 50)
    assert points.shape == (50, 2) and model.info["steps_done"] == 30


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"d_steps": 0}, "d_steps must be an integer >= 1, got 0"),
    ({"lr_g": 0}, "lr_g must be a positive finite number, got 0"),
    ({"beta1": 1.0}, r"beta1 must be a number in \[0, 1\), got 1.0"),
    ({"loss": "wgan"}, "loss must be one of non_saturating, hinge, got 'wgan'"),
    ({"max_seconds": -1.0}, "max_seconds must be a positive finite number, got -1.0"),
])
def test_train_config_bad_fields_raise(kwargs, message):
    """GANTrainConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        GANTrainConfig(**kwargs)


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((4, 1, 8, 8)), None, r"y must be an \(4,\) integer array of labels in \[0, 10\)"),
    (np.zeros((4, 1, 8, 8)), np.full(4, 10), r"y must be an \(4,\) integer array of labels in \[0, 10\)"),
    (np.full((4, 1, 8, 8), 2.0), np.zeros(4, np.int64), r"x must lie in \[-1, 1\]"),
    (np.full((4, 1, 8, 8), np.nan), np.zeros(4, np.int64), "x must be finite, got 256 NaN or inf values"),
    (np.zeros((4, 1, 4, 4)), np.zeros(4, np.int64), r"x must be a floating \(N, 1, 8, 8\) host array"),
])
def test_bad_data_raises(x, y, message):
    """train_gan names the bad argument: missing or out-of-range labels of a conditional GAN, images out of
    [-1, 1], with NaN or of the wrong size."""
    with pytest.raises(ValueError, match=message):
        train_gan(QUICK, SMALL, x, y)


def test_unconditional_data_with_labels_and_bad_sample_labels_raise(trained):
    """An unconditional GAN refuses labels; gan_samples of a conditional GAN needs labels in [0, K)."""
    with pytest.raises(ValueError, match="y must be None for an unconditional GAN"):
        train_gan(QUICK, GANConfig(), np.zeros((4, 1, 8, 8)), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"labels must be \(3,\) integers in \[0, num_classes\)"):
        gan_samples(trained[0], 3, np.array([0, 1, 10]))
    with pytest.raises(ValueError, match=r"labels must be \(3,\) integers .* for a conditional GAN"):
        gan_samples(trained[0], 3)
