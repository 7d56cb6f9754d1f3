"""Specification of refdiff.vae_train: training lowers the bound and is a function of its seed, the held-out
bits/dim (IWAE at most the ELBO's), samples from the prior, the time budget, the point VAE on a 2-D toy, and the
checks at the boundary."""

import numpy as np
import pytest

from refdiff.digits_eval import digit_split
from refdiff.models.vae import VAEConfig
from refdiff.vae_train import VAETrainConfig, train_vae, vae_bits_per_dim, vae_samples

SMALL = VAEConfig(in_channels=1, image_size=8, channels=(4, 8), latent_dim=4, num_classes=10, levels=17)
QUICK = VAETrainConfig(steps=40, batch_size=32, lr=5e-3)


@pytest.fixture(scope="module")
def trained():
    """(the small conditional VAE trained for 40 steps on the digits' training split, the split)."""
    split = digit_split()
    return train_vae(QUICK, SMALL, split[0], split[2]), split


def test_training_lowers_the_bound_and_is_a_function_of_the_seed(trained):
    """The -ELBO (bits/dim) of the last 10 steps averages below that of the first 10; a second run with the same
    seed gives the same parameters bit for bit."""
    model, (x_train, _, y_train, _) = trained
    assert np.mean(model.losses[-10:]) < np.mean(model.losses[:10]) and model.info["steps_done"] == 40
    again = train_vae(QUICK, SMALL, x_train, y_train)
    assert all(np.array_equal(model.params[k], again.params[k]) for k in model.params)


def test_held_out_bits_per_dim_iwae_is_at_most_the_elbo(trained):
    """On the held-out digits: both bounds are positive bits/dim (discrete data), the IWAE bound with k = 20 is at
    most the ELBO's, and the same seed gives the same numbers; without labels the null label is used."""
    model, (_, x_test, _, y_test) = trained
    bpd = vae_bits_per_dim(model, x_test, y_test, k=20)
    assert 0 < bpd["iwae"] <= bpd["elbo"] and bpd["k"] == 20
    assert vae_bits_per_dim(model, x_test, y_test, k=20) == bpd
    assert 0 < vae_bits_per_dim(model, x_test, None, k=2)["iwae"]


def test_samples_are_images_in_range_and_follow_the_seed(trained):
    """vae_samples gives (n, 1, 8, 8) images in [-1, 1], the same for the same seed, different for another."""
    model, _ = trained
    a = vae_samples(model, 10, np.arange(10), seed=1)
    assert a.shape == (10, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, vae_samples(model, 10, np.arange(10), seed=1))
    assert not np.array_equal(a, vae_samples(model, 10, np.arange(10), seed=2))


def test_a_time_budget_stops_training_early():
    """max_seconds stops the loop after the step that passes the budget: far fewer than ``steps`` steps run."""
    x_train, _, _, _ = digit_split()
    cfg = VAETrainConfig(steps=10_000, batch_size=8, max_seconds=0.05)
    model = train_vae(cfg, VAEConfig(channels=(2,), latent_dim=2), x_train)
    assert 1 <= model.info["steps_done"] < 10_000


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"label_dropout": 1.0}, r"label_dropout must be a probability in \[0, 1\), got 1.0"),
    ({"max_seconds": 0}, "max_seconds must be a positive finite number, got 0"),
    ({"lr_decay": "step"}, "lr_decay must be one of constant, cosine, linear"),
    ({"warmup_steps": 5, "steps": 5}, r"warmup_steps must be an integer in \[0, steps\) = \[0, 5\)"),
])
def test_train_config_bad_fields_raise(kwargs, message):
    """VAETrainConfig names the bad field, the value and the allowed range."""
    with pytest.raises(ValueError, match=message):
        VAETrainConfig(**kwargs)


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((4, 1, 8, 8)), None, r"y must be an \(4,\) integer array of labels in \[0, 10\)"),
    (np.zeros((4, 1, 8, 8)), np.full(4, 10), r"y must be an \(4,\) integer array of labels in \[0, 10\)"),
    (np.full((4, 1, 8, 8), 2.0), np.zeros(4, np.int64), r"x must lie in \[-1, 1\]"),
    (np.full((4, 1, 8, 8), np.nan), np.zeros(4, np.int64), "x must be finite, got 256 NaN or inf values"),
    (np.zeros((4, 1, 4, 4)), np.zeros(4, np.int64), r"x must be a floating \(N, 1, 8, 8\) host array"),
])
def test_bad_data_raises(x, y, message):
    """train_vae names the bad argument: missing or out-of-range labels of a conditional VAE, images out of
    [-1, 1] or of the wrong size."""
    with pytest.raises(ValueError, match=message):
        train_vae(QUICK, SMALL, x, y)


def test_unconditional_data_with_labels_and_bad_sample_labels_raise(trained):
    """An unconditional VAE refuses labels; vae_samples refuses labels outside [0, K) or of the wrong length."""
    with pytest.raises(ValueError, match="y must be None for an unconditional VAE"):
        train_vae(QUICK, VAEConfig(), np.zeros((4, 1, 8, 8)), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"labels must be None or \(3,\) integers in \[0, num_classes\)"):
        vae_samples(trained[0], 3, np.array([0, 1, 10]))


def test_the_point_vae_trains_on_a_2d_toy_and_samples_points():
    """An MLPVAEConfig on 8gaussians (class-conditional, the mixture's components as labels): 60 steps lower the
    -ELBO, samples are (n, 2) points (not clipped to [-1, 1]: the toy spans about [-2, 2]), and the held-out IWAE
    bound is at most the ELBO's (bits/dim of a density here)."""
    from refdiff.data import load_toy2d
    from refdiff.models.vae import MLPVAEConfig

    x, y = load_toy2d("8gaussians", 1000, seed=0)
    cfg = MLPVAEConfig(data_dim=2, hidden=16, latent_dim=2, num_classes=8)
    model = train_vae(VAETrainConfig(steps=60, batch_size=64, lr=5e-3), cfg, x, y)
    assert np.mean(model.losses[-10:]) < np.mean(model.losses[:10])
    points = vae_samples(model, 50, np.arange(50) % 8)
    assert points.shape == (50, 2) and np.abs(points).max() > 1
    x_test, y_test = load_toy2d("8gaussians", 200, seed=1)
    bpd = vae_bits_per_dim(model, x_test, y_test, k=10)
    assert bpd["iwae"] <= bpd["elbo"]
