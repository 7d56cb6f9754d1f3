"""Specification of classifier-free and classifier guidance, checked against the exact mixture denoiser.

The oracle's labels y = k < K condition on component k and y = K is the null label (the unconditional
mixture), so the conditional, unconditional and guided models, and the exact classifier gradient
grad_x log p(y | x_t) = score(x_t | y) - score(x_t), are all known in closed form.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import GaussianMixtureDenoiser
from refdiff import diffusion as D
from refdiff import schedules as S
from refdiff.backend import Generator, to_numpy
from refdiff.samplers import ddim_loop, ddim_step, ddpm_loop, ddpm_step, final
from refdiff.samplers.guidance import classifier_free_guidance, classifier_guidance
from support import assert_close, assert_same_array_kind
from oracles import MIXTURE
from support import assert_moments_match

NULL = 2  # the oracle's null label: K = 2 components


def _draw(backend, n, seed=0, dtype="float64", dims=2):
    """(n, dims) standard normal draws on the backend and (n,) int64 labels alternating 0, 1."""
    x = Generator(seed).normal((n, dims), like=backend.asarray(np.zeros(1), dtype=backend.dtype(dtype)))
    return x, backend.asarray(np.arange(n) % 2, dtype=backend.dtype("int64"))


def _labels(backend, n, k):
    return backend.asarray(np.full(n, k), dtype=backend.dtype("int64"))


@settings(max_examples=20)
@given(k=st.integers(0, 999), seed=st.integers(0, 1000), prediction=st.sampled_from(D.PREDICTIONS))
def test_cfg_with_scale_one_is_the_conditional_model_and_zero_the_unconditional(backend, k, seed, prediction):
    """classifier_free_guidance(model, 1, null)(x, t, y) == model(x, t, y) and with s = 0 it equals
    model(x, t, null), to rounding, for eps, x0 and v outputs at any step."""
    model = GaussianMixtureDenoiser(S.cosine(1000), **MIXTURE, prediction=prediction)
    x, y = _draw(backend, 8, seed)
    t = _labels(backend, 8, k)
    for scale, expected in ((1.0, model(x, t, y)), (0.0, model(x, t, _labels(backend, 8, NULL)))):
        guided = classifier_free_guidance(model, scale, NULL)(x, t, y)
        assert_close(guided, to_numpy(expected))


def test_cfg_passes_learned_variance_channels_from_the_conditional_branch(backend):
    """With a (N, 2C) output, the guided first C channels are out_u + s (out_c - out_u) and the last C
    are the conditional branch's, bit for bit."""
    mixture = GaussianMixtureDenoiser(S.cosine(100), **MIXTURE)
    xp = backend.xp

    def model(xt, t, y):  # eps in channels 0..1, a label-dependent "variance" in channels 2..3
        variance = xp.tanh(xt + xp.astype(y, xt.dtype)[:, None])
        return xp.concat([mixture(xt, t, y), variance], axis=1)

    x, y = _draw(backend, 16, seed=4)
    t = _labels(backend, 16, 37)
    out = classifier_free_guidance(model, 3.0, NULL)(x, t, y)
    cond, uncond = to_numpy(model(x, t, y)), to_numpy(model(x, t, _labels(backend, 16, NULL)))
    assert out.shape == (16, 4)
    np.testing.assert_array_equal(to_numpy(out)[:, 2:], cond[:, 2:])
    assert_close(out[:, :2], uncond[:, :2] + 3.0 * (cond[:, :2] - uncond[:, :2]))


@settings(max_examples=20)
@given(k=st.integers(1, 999), seed=st.integers(0, 1000), scale=st.floats(-2.0, 8.0))
def test_cfg_commutes_with_the_affine_eps_x0_v_conversions(backend, k, seed, scale):
    """Guiding the x0 (or v) model equals converting the guided eps: CFG(x0-model) ==
    predict_x0_from_eps(x_t, t, CFG(eps-model)), since the conversion is affine and (1 - s) + s = 1."""
    schedule = S.cosine(1000)
    x, y = _draw(backend, 8, seed)
    t = _labels(backend, 8, k)
    eps, x0, v = (classifier_free_guidance(GaussianMixtureDenoiser(schedule, **MIXTURE, prediction=p), scale, NULL)
                  (x, t, y) for p in ("eps", "x0", "v"))
    # x0 from eps divides by sqrt(alpha_bar): rounding grows like 1 / sqrt(alpha_bar) (~ 1e3 at t = 999)
    condition = (1.0 + abs(scale)) * float(schedule.sqrt_recip_alpha_bar[k])
    assert_close(x0, to_numpy(D.predict_x0_from_eps(schedule, x, t, eps)), scale=condition)
    assert_close(v, to_numpy(D.predict_v_from_eps(schedule, x, t, eps)), scale=condition)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_cfg_on_x0_or_v_outputs_gives_the_same_ddim_samples_as_on_eps(backend, prediction):
    """DDIM (eta = 0, 25 steps) with the guided x0- or v-model (s = 3) gives the samples of the guided
    eps-model, to rounding amplified along the chain."""
    full = S.cosine(1000)
    schedule = S.respace(full, S.timesteps(1000, 25, "leading"))
    x, y = _draw(backend, 256, seed=2)
    eps_model = classifier_free_guidance(GaussianMixtureDenoiser(full, **MIXTURE), 3.0, NULL)
    other = classifier_free_guidance(GaussianMixtureDenoiser(full, **MIXTURE, prediction=prediction), 3.0, NULL)
    expected = to_numpy(final(ddim_loop(eps_model, schedule, x, y=y)))
    assert_close(final(ddim_loop(other, schedule, x, y=y, param=D.Parameterization(prediction))), expected, scale=100)


def test_cfg_with_scale_one_samples_the_conditional_component(backend):
    """DDIM (eta = 0, 200 leading steps of T = 1000) with CFG at s = 1 and label 0 samples component 0
    of the mixture: its mean, std and correlation within 5 standard errors (n = 4000)."""
    full = S.cosine(1000)
    schedule = S.respace(full, S.timesteps(1000, 200, "leading"))
    x, _ = _draw(backend, 4000, seed=0)
    model = classifier_free_guidance(GaussianMixtureDenoiser(full, **MIXTURE), 1.0, NULL)
    samples = to_numpy(final(ddim_loop(model, schedule, x, y=_labels(backend, 4000, 0))))
    assert_moments_match(samples, MIXTURE["means"][0], MIXTURE["stds"][0])


def test_classifier_guidance_with_scale_zero_changes_nothing(backend):
    """classifier_guidance(grad, 0) is None (no guidance; grad is never evaluated), so DDPM and DDIM
    samples are bit-identical to unguided ones; and at the step level, ddpm_step with a zero cond_grad
    is bit-identical to ddpm_step without one (mean + var * 0 == mean)."""
    full = S.cosine(100)
    model = GaussianMixtureDenoiser(full, **MIXTURE)
    x, y = _draw(backend, 64, seed=5)

    def grad_never_called(xt, t, y):
        raise AssertionError("the classifier must not be evaluated at scale 0")

    cond_fn = classifier_guidance(grad_never_called, 0.0)
    assert cond_fn is None
    for loop in (lambda c: ddpm_loop(model, full, x, Generator(1), y=y, cond_fn=c),
                 lambda c: ddim_loop(model, full, x, y=y, eta=0.5, generator=Generator(1), cond_fn=c)):
        np.testing.assert_array_equal(to_numpy(final(loop(cond_fn))), to_numpy(final(loop(None))))
    noise, t = Generator(9).normal(x.shape, like=x), _labels(backend, 64, 50)
    for a, b in zip(ddpm_step(full, model(x, t, y), x, 50, noise, cond_grad=0.0 * x),
                    ddpm_step(full, model(x, t, y), x, 50, noise)):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@settings(max_examples=20)
@given(k=st.integers(0, 999), seed=st.integers(0, 1000), label=st.integers(0, 1))
def test_ddim_step_with_the_exact_classifier_gradient_is_the_conditional_step(backend, k, seed, label):
    """With s = 1 and the exact grad log p(y | x_t), DDIM's guided eps is the conditional eps:
    eps_u - sqrt(1 - alpha_bar) grad = -sqrt(1 - alpha_bar) (score_u + grad) = eps_c, so the guided
    step of the unconditional model equals the step of the conditional model (to rounding)."""
    full = S.cosine(1000)
    model = GaussianMixtureDenoiser(full, **MIXTURE)
    x, _ = _draw(backend, 8, seed)
    y, t = _labels(backend, 8, label), _labels(backend, 8, k)
    cond_grad = classifier_guidance(model.classifier_grad, 1.0)(x, t, y)
    guided, _ = ddim_step(full, model(x, t, None), x, k, cond_grad=cond_grad)
    conditional, _ = ddim_step(full, model(x, t, y), x, k)
    assert_close(guided, to_numpy(conditional))


def test_classifier_guidance_with_the_exact_gradient_samples_the_conditional_component(backend):
    """DDPM (500 leading steps of T = 1000) with the unconditional model and classifier guidance at s = 1
    by the exact grad log p(y = 0 | x_t) samples component 0: mean, std and correlation within 5
    standard errors (n = 3000). The mean shift var * grad is first order in the step, hence 500 steps."""
    full = S.cosine(1000)
    schedule = S.respace(full, S.timesteps(1000, 500, "leading"))
    model = GaussianMixtureDenoiser(full, **MIXTURE)
    x, _ = _draw(backend, 3000, seed=0)

    def unconditional(xt, t, y=None):  # the model ignores labels; only the classifier reads them
        return model(xt, t, None)

    cond_fn = classifier_guidance(model.classifier_grad, 1.0)
    samples = to_numpy(final(ddpm_loop(unconditional, schedule, x, Generator(1), y=_labels(backend, 3000, 0),
                                       cond_fn=cond_fn)))
    assert_moments_match(samples, MIXTURE["means"][0], MIXTURE["stds"][0])


@settings(max_examples=10)
@given(scale=st.floats(-4.0, 8.0), seed=st.integers(0, 1000))
def test_guided_outputs_keep_the_input_library_device_and_dtype(backend, scale, seed):
    """The CFG model's output and the classifier cond_fn's gradient are arrays of x's library, device
    and dtype (float32 in, float32 out)."""
    model = GaussianMixtureDenoiser(S.cosine(50), **MIXTURE)
    x, y = _draw(backend, 4, seed, dtype="float32")
    t = _labels(backend, 4, 10)
    assert_same_array_kind(classifier_free_guidance(model, scale, NULL)(x, t, y), x)
    cond_fn = classifier_guidance(model.classifier_grad, scale)
    if cond_fn is not None:
        assert_same_array_kind(cond_fn(x, t, y), x)


def test_bad_arguments_raise_naming_the_argument(backend):
    """A non-finite or non-numeric scale, a negative or non-integer null label, missing labels and a
    model output of the wrong batch size are refused with the argument's name."""
    model = GaussianMixtureDenoiser(S.cosine(10), **MIXTURE)
    x, y = _draw(backend, 4)
    t = _labels(backend, 4, 3)
    cases = [
        (lambda: classifier_free_guidance(model, float("nan"), NULL), "scale must be a finite number"),
        (lambda: classifier_free_guidance(model, float("inf"), NULL), "scale must be a finite number"),
        (lambda: classifier_free_guidance(model, "2", NULL), "scale must be a finite number"),
        (lambda: classifier_guidance(model.classifier_grad, float("-inf")), "scale must be a finite number"),
        (lambda: classifier_guidance(model.classifier_grad, float("nan")), "scale must be a finite number"),
        (lambda: classifier_free_guidance(model, 2.0, -1), "null_label must be an integer >= 0"),
        (lambda: classifier_free_guidance(model, 2.0, 1.5), "null_label must be an integer >= 0"),
        (lambda: classifier_free_guidance(model, 2.0, True), "null_label must be an integer >= 0"),
        (lambda: classifier_free_guidance(model, 2.0, NULL)(x, t, None), "y must be an"),
        (lambda: classifier_free_guidance(lambda xt, t, y: xt[:4, ...], 2.0, NULL)(x, t, y), "model output"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# ------------------------------------------------------------------------- a text-conditional model

def _tiny_text_model(backend):
    """A random text-conditional U-Net (refdiff.models.text_unet) on 2x8x8 images and 3-token captions,
    float64 on the backend, as the samplers' model(xt, t, y); and its config."""
    from refdiff.models import text_unet as TU
    from refdiff.models.text_encoder import TextEncoderConfig
    from refdiff.models.unet import UNetConfig
    from support import on, random_params

    cfg = TU.TextUNetConfig(unet=UNetConfig(in_channels=2, out_channels=2, image_size=8, base_channels=8,
                                            channel_mult=(1, 2), groups=4, time_embed_dim=12),
                            text=TextEncoderConfig(vocab_size=5, context_length=4, width=4, layers=1, heads=2))
    return TU.text_unet_model(on(backend, random_params(TU.param_shapes(cfg), 0)), cfg), cfg


def test_cfg_guides_a_text_model_with_the_empty_caption_and_every_sampler_runs_it(backend):
    """For a text model the null input is the empty caption: classifier_free_guidance(model, s,
    null_condition(cfg))(x, t, tokens) == u + s (c - u) with u = model(x, t, all padding) = model(x, t,
    None); and DDIM, DDPM, Euler, Heun and DPM-Solver++(2M) run 3 steps of the guided model unchanged,
    giving finite samples like x."""
    from refdiff.models.registry import null_condition
    from refdiff.samplers import dpmpp_2m_loop, euler_loop, heun_loop, karras_grid, to_sigma_scale

    model, cfg = _tiny_text_model(backend)
    x = Generator(1).normal((3, 2, 8, 8), like=backend.asarray(np.zeros(1)))
    t, tokens = _labels(backend, 3, 400), backend.asarray(np.array([[3, 1, 0], [0, 0, 0], [2, 4, 1]]))
    guided = classifier_free_guidance(model, 3.0, null_condition(cfg))
    cond, uncond = to_numpy(model(x, t, tokens)), to_numpy(model(x, t, None))
    np.testing.assert_array_equal(uncond, to_numpy(model(x, t, backend.asarray(np.zeros((3, 3), dtype=np.int64)))))
    assert_close(guided(x, t, tokens), uncond + 3.0 * (cond - uncond), scale=10)
    full = S.cosine(100)
    respaced, sigmas = S.respace(full, S.timesteps(100, 3, "trailing")), karras_grid(full, 3)
    loops = [ddim_loop(guided, respaced, x, tokens), ddpm_loop(guided, respaced, x, Generator(2), tokens)]
    loops += [loop(guided, full, to_sigma_scale(x, float(sigmas[0])), sigmas, tokens)
              for loop in (euler_loop, heun_loop, dpmpp_2m_loop)]
    for loop in loops:
        sample = final(loop)
        assert_same_array_kind(sample, x)
        assert np.all(np.isfinite(to_numpy(sample)))
