"""Specification of refdiff.classifier_train: training a (noisy) classifier, its guidance gradient, saving
and loading. Small configs and few steps; the digit classifier's accuracy is checked in test_digits_eval."""

import numpy as np
import pytest

from gradcheck import assert_gradients_match
from oracles import GaussianMixtureDenoiser
from refdiff import schedules as S
from refdiff.backend import Generator, to_numpy
from refdiff.classifier_train import (ClassifierTrainConfig, TrainedClassifier, guidance_gradient, load_classifier,
                                      predict_logits, save_classifier, train_classifier)
from refdiff.layers.cross_entropy import log_softmax
from refdiff.models import classifier as C
from refdiff.samplers import ddim_loop, final
from refdiff.samplers.guidance import classifier_guidance
from support import assert_same_array_kind, host_data

TINY = C.ClassifierConfig(image_size=8, base_channels=8, channel_mult=(1, 2), groups=4, num_classes=2, time_embed_dim=8)

# Two classes of 1x8x8 "images": every pixel N(-0.4, 0.5^2) or N(+0.4, 0.5^2). The class of a sample is
# the sign of its mean pixel (the classes' mean pixels are 0.4 / (0.5 / 8) = 6.4 of their stds from 0).
MEANS = np.stack([np.full(64, -0.4), np.full(64, 0.4)])
STDS = np.full((2, 64), 0.5)


def two_class_data(n, seed):
    """(x (n, 1, 8, 8) float32, y (n,)) drawn from the two classes with equal weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = MEANS[y] + STDS[y] * rng.standard_normal((n, 64))
    return x.reshape(n, 1, 8, 8).astype(np.float32), y


def random_trained(backend, cfg, seed, dtype="float64"):
    """A TrainedClassifier with random (nonzero) parameters on ``backend``."""
    params = {k: backend.asarray(host_data(seed + i, v.shape, dtype, 0.3) + (1.0 if k.endswith("gamma") else 0.0))
              for i, (k, v) in enumerate(C.init_params(cfg, Generator(0), dtype=dtype).items())}
    return TrainedClassifier(params, cfg, ClassifierTrainConfig(dtype=dtype, backend=backend.name), [])


def test_guidance_gradient_is_the_gradient_of_log_softmax_at_the_label(backend):
    """guidance_gradient(trained)(xt, t, y) == grad_x sum_n log softmax(classifier(x_t, t))_{n, y_n}, by
    float64 finite differences; an array like xt."""
    trained = random_trained(backend, TINY, 3)
    xt, t, y = host_data(1, (3, 1, 8, 8)), np.array([0, 400, 999]), np.array([1, 0, 1])
    tb, yb = backend.asarray(t), backend.asarray(y)

    def log_prob(arrays):
        logits, _ = C.classifier_forward(trained.params, TINY, backend.asarray(arrays["x"]), tb)
        return float(np.sum(to_numpy(log_softmax(logits))[np.arange(3), y]))

    grad = guidance_gradient(trained)(backend.asarray(xt), tb, yb)
    assert_same_array_kind(grad, backend.asarray(xt))
    assert_gradients_match(log_prob, {"x": xt}, {"x": to_numpy(grad)})


def test_training_is_a_function_of_the_seed_and_lowers_the_loss():
    """Two runs with one seed give identical parameters and losses; another seed differs; the noisy
    classifier's mean loss over its last 20 steps is below log 2 (chance) by a margin."""
    x, y = two_class_data(256, 0)
    cfg = ClassifierTrainConfig(steps=60, batch_size=32, lr=3e-3, T=100)
    a, b = train_classifier(cfg, TINY, x, y), train_classifier(cfg, TINY, x, y)
    c = train_classifier(ClassifierTrainConfig(steps=60, batch_size=32, lr=3e-3, T=100, seed=1), TINY, x, y)
    assert a.losses == b.losses
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert a.losses != c.losses
    assert np.mean(a.losses[-20:]) < 0.6 * np.log(2)


def test_clean_training_uses_t_zero():
    """noisy=False trains on clean images at t = 0: the trained classifier separates clean held-out data
    (accuracy >= 0.95) at t = 0."""
    x, y = two_class_data(256, 0)
    trained = train_classifier(ClassifierTrainConfig(steps=40, batch_size=32, lr=3e-3, noisy=False), TINY, x, y)
    x_test, y_test = two_class_data(200, 1)
    assert np.mean(predict_logits(trained, x_test).argmax(1) == y_test) >= 0.95


def test_classifier_guidance_moves_samples_to_the_asked_class():
    """DDIM (25 steps) with the exact unconditional denoiser of the two-class mixture: unguided, about half
    the samples land in class 1; guided toward class 1 by a noisy classifier trained for 150 steps
    (scale 1: the conditional p(x | y)), at least 90% do (the class read off the sign of the mean pixel,
    the Bayes rule here)."""
    full = S.cosine(1000)
    x, y = two_class_data(2048, 0)
    trained = train_classifier(ClassifierTrainConfig(steps=150, batch_size=64, lr=3e-3), TINY, x, y)
    model = GaussianMixtureDenoiser(full, [0.5, 0.5], MEANS, STDS, event_shape=(1, 8, 8))
    schedule = S.respace(full, S.timesteps(1000, 25, "trailing"))
    noise = Generator(5).normal((200, 1, 8, 8)).astype(np.float32)
    labels = np.ones(200, dtype=np.int64)

    def fraction(cond_fn):
        samples = final(ddim_loop(lambda xt, t, y=None: model(xt, t, None), schedule, noise, labels, cond_fn=cond_fn))
        return np.mean(np.mean(samples.reshape(200, -1), axis=1) > 0)

    unguided, guided = fraction(None), fraction(classifier_guidance(guidance_gradient(trained), 1.0))
    assert 0.3 < unguided < 0.7 and guided >= 0.9, (unguided, guided)


def test_save_and_load_round_trip(tmp_path):
    """load_classifier(save_classifier(path, trained)) gives the same config, parameters (cast to the
    asked dtype), losses and info; a U-Net checkpoint is refused."""
    x, y = two_class_data(64, 0)
    trained = train_classifier(ClassifierTrainConfig(steps=3, batch_size=8), TINY, x, y)
    trained.info["test_accuracy"] = 0.5
    path = save_classifier(tmp_path / "c.npz", trained)
    back = load_classifier(path, dtype="float64")
    assert back.cfg == TINY and back.losses == trained.losses and back.info == trained.info
    assert back.train_cfg.steps == 3 and back.train_cfg.dtype == "float64"
    for k, v in trained.params.items():
        assert back.params[k].dtype == np.float64
        np.testing.assert_array_equal(back.params[k], v.astype(np.float64))
    from refdiff.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "u.npz", {"model": {"kind": "UNetConfig"}}, 0, Generator(0).get_state(), {})
    with pytest.raises(ValueError, match="does not hold a classifier"):
        load_classifier(tmp_path / "u.npz")


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"warmup_steps": 5, "steps": 5}, r"warmup_steps must be an integer in \[0, steps\)"),
    ({"lr": 0.0}, "lr must be a positive finite number"),
    ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
    ({"lr_decay": "step"}, "lr_decay must be one of constant, cosine, linear"),
    ({"noisy": 1}, "noisy must be a bool"),
    ({"schedule": "quadratic"}, "schedule must be one of"),
    ({"dtype": "float16"}, "dtype must be float32 or float64"),
    ({"backend": "jax"}, "backend must be one of"),
])
def test_train_config_bad_fields_raise(kwargs, message):
    """ClassifierTrainConfig validates every field on construction, naming it."""
    with pytest.raises(ValueError, match=message):
        ClassifierTrainConfig(**kwargs)


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((4, 2, 8, 8), np.float32), np.zeros(4, np.int64), r"x must be a floating \(N, 1, H, W\) host array"),
    (np.full((4, 1, 8, 8), np.nan, np.float32), np.zeros(4, np.int64), "x must be finite"),
    (np.zeros((4, 1, 8, 8), np.float32), np.zeros(3, np.int64), r"y must be an \(4,\) integer array"),
    (np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 2, 0]), r"y must hold labels in \[0, 2\)"),
])
def test_train_bad_data_raise(x, y, message):
    """Data of the wrong shape, with NaN, or labels of the wrong length or range raise ValueError."""
    with pytest.raises(ValueError, match=message):
        train_classifier(ClassifierTrainConfig(steps=1), TINY, x, y)
