"""Specification of refdiff.clip_train: training the noised CLIP, retrieval, and CLIP guidance.

Oracles: float64 finite differences of f(x_t, t) . g(c) with respect to x_t (the guidance gradient); the
loss on a fixed batch before and after a few steps; the samplers' unguided runs.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff import schedules as S
from refdiff.backend import Generator, asarray, get_backend, to_numpy
from refdiff.clip_train import (ClipTrainConfig, TrainedClip, check_clip_fits, clip_gradient, clip_guidance,
                                clip_loss, load_clip, retrieval_accuracy, save_clip, train_clip)
from refdiff.checkpoint import load_checkpoint
from refdiff.classifier_train import ClassifierTrainConfig, TrainedClassifier, save_classifier
from refdiff.data.captions import load_captions, tokenize
from refdiff.diffusion import q_sample
from refdiff.models import classifier as CM
from refdiff.models import clip as M
from refdiff.samplers import ddim_loop, ddpm_loop, final
from support import assert_same_array_kind, host_data, on, random_params

seeds = st.integers(0, 2**16)
TINY = M.ClipConfig(embed_dim=4, image_size=8, base_channels=8, channel_mult=(1,), groups=4, time_embed_dim=16,
                    text_width=8, text_layers=1, text_heads=2, text_mlp_ratio=2)
CAPTIONS = ["small red circle top left", "cyan ring", "large blue square bottom right"]


def _trained(backend, seed, dtype="float64", cfg=TINY):
    """A TrainedClip of cfg with random parameters (every one nonzero) on ``backend``."""
    params = on(backend, random_params(M.param_shapes(cfg), seed, dtype))
    return TrainedClip(params, cfg, ClipTrainConfig(dtype=dtype, backend=backend.name), [])


def _fixed_batch_loss(trained, x, tokens, mask):
    """The loss at fixed t and eps (Generator(7)) on the whole batch, evaluation mode."""
    like, g = trained.like, Generator(7)
    x0 = asarray(x, like=like, dtype=like.dtype)
    t = g.integers(0, 1000, (x.shape[0],), like=like)
    xt = q_sample(S.by_name("cosine", 1000), x0, t, g.normal(tuple(x0.shape), like=x0))
    loss = clip_loss(trained.params, trained.cfg, xt, t, asarray(tokens, like=like), asarray(mask, like=like))
    return float(to_numpy(loss))


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    """30 AdamW steps on 8 captioned images (batches of 8 at uniform t) lower the loss of those 8 at fixed
    noise below its value at initialisation; the temperature stays under CLIP's cap."""
    x, captions, _ = load_captions(8, seed=3, p_keep=1.0)
    tokens, mask = tokenize(captions)
    cfg = dataclasses.replace(TINY, image_size=16)
    start = train_clip(ClipTrainConfig(steps=1, batch_size=8, lr=1e-12), cfg, x, tokens, mask)
    trained = train_clip(ClipTrainConfig(steps=30, batch_size=8, lr=3e-3, lr_decay="constant"), cfg, x, tokens, mask)
    before, after = _fixed_batch_loss(start, x, tokens, mask), _fixed_batch_loss(trained, x, tokens, mask)
    assert after < before - 1.0, (before, after)  # measured: 6.92 -> 2.09
    assert len(trained.losses) == 30 and np.all(np.isfinite(trained.losses))
    assert float(to_numpy(trained.params["logit_scale"])) <= np.log(100.0) + 1e-6


@settings(max_examples=2)
@given(seed=seeds, one_caption=st.booleans())
def test_clip_gradient_matches_finite_differences(backend, seed, one_caption):
    """clip_gradient(tokens)(x_t, t) equals the float64 finite differences of sum_n f(x_t, t)_n . g(c_n) with
    respect to x_t, for one caption per sample and for one caption shared by every sample."""
    trained = _trained(backend, seed)
    x, t = host_data(seed, (3, 3, 8, 8)), np.array([0, 400, 999])
    tokens, mask = tokenize(CAPTIONS[:1] if one_caption else CAPTIONS)
    g = to_numpy(M.clip_text_forward(trained.params, TINY, backend.asarray(tokens), backend.asarray(mask))[0])

    def loss(arrays):
        f = M.clip_image_forward(trained.params, TINY, backend.asarray(arrays["x"]), backend.asarray(t))[0]
        return float(np.sum(to_numpy(f) * g))

    dx = clip_gradient(trained, tokens, mask)(backend.asarray(x), backend.asarray(t))
    assert_same_array_kind(dx, backend.asarray(x))
    assert_gradients_match(loss, {"x": x}, {"x": to_numpy(dx)})


def test_clip_gradient_rejects_a_caption_count_that_is_not_the_batch():
    """Two captions for three samples: a ValueError naming tokens."""
    import refdiff.backend as B

    trained = _trained(B.get_backend("numpy"), 0)
    grad = clip_gradient(trained, *tokenize(CAPTIONS[:2]))
    with pytest.raises(ValueError, match=r"tokens must hold 1 caption or one per sample \(3\), got 2"):
        grad(host_data(0, (3, 3, 8, 8)), np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_every_guided_sampler_takes_clip_guidance(backend, sampler):
    """ddpm_loop and ddim_loop (the samplers with a cond_fn) run 3 respaced steps of a float32 model with
    clip_guidance as cond_fn: a sample like x that differs from the unguided one, which s = 0 (cond_fn None)
    reproduces bit for bit."""
    trained = _trained(backend, 1, dtype="float32")
    schedule = S.respace(S.by_name("cosine", 1000), np.array([0, 499, 999]))
    x = backend.asarray(host_data(2, (2, 3, 8, 8), "float32"))

    def model(xt, t, y=None):  # a tiny denoiser: eps_hat = x_t / 2
        return xt / 2

    def run(cond_fn):
        if sampler == "ddpm":
            return final(ddpm_loop(model, schedule, x, Generator(0), cond_fn=cond_fn))
        return final(ddim_loop(model, schedule, x, eta=0.0, cond_fn=cond_fn))

    tokens, mask = tokenize(["large red circle"])
    guided, unguided = run(clip_guidance(trained, tokens, mask, 3.0)), run(None)
    assert clip_guidance(trained, tokens, mask, 0.0) is None
    assert_same_array_kind(guided, x)
    assert guided.shape == x.shape and np.all(np.isfinite(to_numpy(guided)))
    assert np.max(np.abs(to_numpy(guided) - to_numpy(unguided))) > 1e-4


def test_retrieval_accuracy_counts_matching_images_and_checks_its_arguments():
    """A CLIP whose embeddings ignore the input scores at chance: with every image's label equal, every
    retrieval counts (1.0); with distinct labels, one in n or fewer; bad n and t are ValueErrors."""
    import refdiff.backend as B

    trained = _trained(B.get_backend("numpy"), 0, dtype="float32", cfg=dataclasses.replace(TINY, image_size=16))
    x, captions, _ = load_captions(8, seed=0)
    tokens, mask = tokenize(captions)
    assert retrieval_accuracy(trained, x, tokens, mask, 500, n=4, labels=np.zeros(8, dtype=np.int64)) == 1.0
    assert 0.0 <= retrieval_accuracy(trained, x, tokens, mask, 500, n=4) <= 1.0
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 8\]"):
        retrieval_accuracy(trained, x, tokens, mask, 0, n=9)
    with pytest.raises(ValueError, match=r"t must be an integer in \[0, 1000\), got 1000"):
        retrieval_accuracy(trained, x, tokens, mask, 1000, n=4)


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 1}, "batch_size must be an integer >= 2, got 1"),
    ({"warmup_steps": 5, "steps": 5}, r"warmup_steps must be an integer in \[0, steps\) = \[0, 5\), got 5"),
    ({"lr": 0.0}, "lr must be a positive finite number, got 0.0"),
    ({"lr_decay": "step"}, "lr_decay must be one of constant, cosine, linear"),
    ({"dtype": "float16"}, "dtype must be float32 or float64"),
    ({"max_seconds": 0}, "max_seconds must be a positive finite number, got 0"),
])
def test_train_config_rejects_bad_fields(change, message):
    """Each bad ClipTrainConfig field is a ValueError naming it, the value and what is allowed."""
    with pytest.raises(ValueError, match=message):
        ClipTrainConfig(**change)


def test_train_clip_rejects_captions_that_do_not_match_the_images():
    """tokens for a different number of images than x: a ValueError naming tokens."""
    x, captions, _ = load_captions(4, seed=0)
    tokens, mask = tokenize(captions[:3])
    with pytest.raises(ValueError, match=r"tokens must be an \(4, L\) integer host array"):
        train_clip(ClipTrainConfig(steps=1, batch_size=2), dataclasses.replace(TINY, image_size=16), x, tokens, mask)


def test_save_and_load_round_trip_the_clip_and_refuse_another_models_checkpoint(tmp_path):
    """load_clip(save_clip(trained)) has the same parameters (bit for bit in float64; rounded once in
    float32), config, run settings, loss log and info, and gives the same guidance gradient; the checkpoint
    stores kind "ClipConfig" and steps done. A checkpoint of another kind (a classifier's) is refused naming
    the file and the kind."""
    trained = _trained(get_backend("numpy"), seed=3)
    trained.losses, trained.info = [2.0, 1.5], {"steps_done": 2, "train_seconds": 0.5}
    path = save_clip(tmp_path / "clip.npz", trained)
    stored = load_checkpoint(path, arrays=False)
    assert stored["config"]["model"]["kind"] == "ClipConfig" and stored["step"] == 2
    back = load_clip(path, dtype="float64")
    assert back.cfg == trained.cfg and back.train_cfg == trained.train_cfg
    assert back.losses == trained.losses and back.info == trained.info
    for key, value in trained.params.items():
        np.testing.assert_array_equal(back.params[key], value, err_msg=key)
    assert load_clip(path).params["logit_scale"].dtype == np.float32
    tokens, mask = tokenize(CAPTIONS[:1], context=TINY.context_length)
    xt, t = host_data(0, (2, 3, 8, 8)), np.array([3, 900])
    np.testing.assert_array_equal(clip_gradient(back, tokens, mask)(xt, t), clip_gradient(trained, tokens, mask)(xt, t))
    cfg = CM.ClassifierConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1,), groups=4, num_classes=2)
    other = TrainedClassifier(random_params(CM.param_shapes(cfg), 0), cfg, ClassifierTrainConfig(), [])
    save_classifier(tmp_path / "classifier.npz", other)
    with pytest.raises(ValueError, match=r"classifier.npz does not hold a CLIP \(model kind 'ClassifierConfig'"):
        load_clip(tmp_path / "classifier.npz")


@pytest.mark.parametrize("change, message", [
    ({"data_shape": (3, 16, 16)}, r"image shape is \(3, 8, 8\), the text model's is \(3, 16, 16\)"),
    ({"vocab_size": 20}, "vocabulary size is 19, the text model's is 20"),
    ({"context_length": 8}, "context length is 6, the text model's is 8"),
    ({"schedule": "linear"}, "noise schedule is cosine, the text model's is linear"),
    ({"T": 20}, "diffusion steps T is 1000, the text model's is 20"),
])
def test_check_clip_fits_names_what_differs(change, message):
    """A CLIP guides a text model only if it reads its images, its captions and its x_t: each mismatch is a
    ValueError naming it, the CLIP's value and the model's; a match passes."""
    trained = _trained(get_backend("numpy"), seed=0)
    fits = {"data_shape": (3, 8, 8), "vocab_size": 19, "context_length": 6, "schedule": "cosine", "T": 1000}
    check_clip_fits(trained, **fits)
    with pytest.raises(ValueError, match=message):
        check_clip_fits(trained, **{**fits, **change})
