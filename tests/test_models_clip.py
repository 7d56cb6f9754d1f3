"""Specification of refdiff.models.clip: the noised CLIP's image and text sides.

Oracles: float64 finite differences of the fake losses sum(f * df) and sum(g * dg) (tests/gradcheck.py);
the noisy classifier itself (the image side is it with E outputs, normalised); unit rows.
"""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff.backend import Generator, to_numpy
from refdiff.data.captions import tokenize
from refdiff.models import classifier as C
from refdiff.models import clip as M
from refdiff.models.presets import CLIP_PRESETS
from support import assert_close, assert_same_array_kind, host_data, on, random_params

seeds = st.integers(0, 2**16)
# The smallest CLIP that sets every part: one level at 8x8 (middle attention included), a one-block text encoder.
TINY = M.ClipConfig(embed_dim=4, image_size=8, base_channels=8, channel_mult=(1,), groups=4, time_embed_dim=16,
                    text_width=8, text_layers=1, text_heads=2, text_mlp_ratio=2)
CAPTIONS = ["small red circle top left", "", "cyan ring", "large blue square bottom right"]


def _inputs(seed, n=2):
    x = host_data(seed, (n, 3, 8, 8))
    t = np.random.default_rng(seed).integers(0, 1000, n)
    tokens, mask = tokenize(CAPTIONS[:n])
    return x, t, tokens, mask


def _image(backend, params, x, t):
    return M.clip_image_forward(on(backend, params), TINY, backend.asarray(x), backend.asarray(t))


def _text(backend, params, tokens, mask):
    return M.clip_text_forward(on(backend, params), TINY, backend.asarray(tokens), backend.asarray(mask))


@settings(max_examples=2)
@given(seed=seeds, data=st.data())
def test_clip_image_backward_matches_finite_differences(backend, seed, data):
    """grads, dx = clip_image_backward(df, need_dx=True) equal the float64 finite differences of
    sum(f(x_t, t) * df) with respect to x, the projection, the first conv and one drawn key (the
    classifier's tests check its encoder's every parameter)."""
    x, t, _, _ = _inputs(seed)
    params = {k: v for k, v in random_params(M.param_shapes(TINY), seed).items() if k.startswith(M.IMAGE)}
    df = host_data(seed + 9, (2, TINY.embed_dim))
    keys = ["image.out.linear.w", "image.input.conv.w"]
    keys.append(data.draw(st.sampled_from(sorted(set(params) - set(keys)))))

    def loss(arrays):
        return float(np.sum(to_numpy(_image(backend, dict(params, **arrays), arrays["x"], t)[0]) * df))

    grads, dx = M.clip_image_backward(backend.asarray(df), _image(backend, params, x, t)[1], need_dx=True)
    assert list(grads) == list(params)
    expected = {k: to_numpy(grads[k]) for k in keys}
    assert_gradients_match(loss, {"x": x, **{k: params[k] for k in keys}}, dict(expected, x=to_numpy(dx)))


@settings(max_examples=2)
@given(seed=seeds)
def test_clip_text_backward_matches_finite_differences(backend, seed):
    """clip_text_backward(dg) equals the float64 finite differences of sum(g(tokens) * dg) for every text
    parameter and the projection, with an empty caption in the batch."""
    _, _, tokens, mask = _inputs(seed, n=3)
    params = {k: v for k, v in random_params(M.param_shapes(TINY), seed).items()
              if k.startswith((M.TEXT, "text_proj."))}
    dg = host_data(seed + 9, (3, TINY.embed_dim))

    def loss(arrays):
        return float(np.sum(to_numpy(_text(backend, arrays, tokens, mask)[0]) * dg))

    grads = M.clip_text_backward(backend.asarray(dg), _text(backend, params, tokens, mask)[1])
    assert list(grads) == list(params)
    assert_gradients_match(loss, params, {k: to_numpy(v) for k, v in grads.items()})


@given(seed=seeds)
def test_embeddings_are_unit_rows_of_the_parameters_kind(backend, seed):
    """f and g are (N, E) rows of norm 1, of the parameters' library, device and dtype, from float32
    parameters as from float64 ones."""
    x, t, tokens, mask = _inputs(seed, n=4)
    for dtype in ("float32", "float64"):
        params = on(backend, M.init_params(TINY, Generator(seed), dtype=dtype))
        xb = backend.asarray(x.astype(dtype))
        f, _ = M.clip_image_forward(params, TINY, xb, backend.asarray(t))
        g, _ = M.clip_text_forward(params, TINY, backend.asarray(tokens), backend.asarray(mask))
        for e in (f, g):
            assert_same_array_kind(e, xb)
            assert e.shape == (4, TINY.embed_dim)
            assert_close(backend.xp.sum(e * e, axis=1), np.ones(4), scale=10.0)


@given(seed=seeds)
def test_image_side_is_the_noisy_classifier_normalised(backend, seed):
    """f(x_t, t) == v / ||v|| with v = classifier_forward of the "image." parameters under cfg.image_config:
    the image encoder is the noisy classifier's code, with E outputs."""
    x, t, _, _ = _inputs(seed)
    params = random_params(M.param_shapes(TINY), seed)
    f, _ = _image(backend, params, x, t)
    image = {k[len(M.IMAGE):]: v for k, v in params.items() if k.startswith(M.IMAGE)}
    v, _ = C.classifier_forward(on(backend, image), TINY.image_config, backend.asarray(x), backend.asarray(t))
    v = to_numpy(v)
    assert_close(f, v / np.linalg.norm(v, axis=1, keepdims=True))


def test_init_gives_nonzero_projections_and_clips_initial_temperature():
    """init_params: the keys of param_shapes in order, both projections nonzero (the classifier's zero head is
    replaced), tau = log(1 / 0.07), and the same draws in float32 and float64 to float32 rounding."""
    p64 = M.init_params(TINY, Generator(0), dtype=np.float64)
    p32 = M.init_params(TINY, Generator(0), dtype=np.float32)
    assert list(p64) == list(M.param_shapes(TINY))
    assert all(p64[k].shape == s for k, s in M.param_shapes(TINY).items())
    assert np.all(p64["image.out.linear.w"] != 0) and np.all(p64["text_proj.w"] != 0)
    assert float(p64["logit_scale"]) == pytest.approx(math.log(1 / 0.07))
    for k in p64:
        np.testing.assert_allclose(p32[k], p64[k], rtol=1e-6, atol=1e-7)
    assert M.param_count(TINY) == sum(v.size for v in p64.values())


@pytest.mark.parametrize("change, message", [
    ({"embed_dim": 0}, "embed_dim must be an integer >= 1, got 0"),
    ({"groups": 3}, "groups must divide"),
    ({"text_heads": 3}, "heads must divide width = 8, got 3"),
    ({"text_padding": "zeros"}, "padding must be one of mask, embedding"),
])
def test_config_rejects_bad_fields(change, message):
    """A bad field of either encoder is a ValueError naming it (the encoders' own checks)."""
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def test_backward_rejects_a_gradient_of_the_wrong_shape():
    """df and dg must have the embeddings' shape and dtype: a ValueError naming the argument."""
    x, t, tokens, mask = _inputs(0)
    params = M.init_params(TINY, Generator(0), dtype=np.float64)
    _, image = M.clip_image_forward(params, TINY, x, t)
    _, text = M.clip_text_forward(params, TINY, tokens, mask)
    with pytest.raises(ValueError, match=r"df must have the image embeddings' shape \(2, 4\)"):
        M.clip_image_backward(np.zeros((2, 5)), image)
    with pytest.raises(ValueError, match=r"dg must have the caption embeddings' shape \(2, 4\)"):
        M.clip_text_backward(np.zeros((2, 4), dtype=np.float32), text)


def test_presets_build_and_read_the_captioned_shapes():
    """Every CLIP preset reads 3x16x16 images and the captions' tokenizer (vocabulary, context length)."""
    from refdiff.data.captions import CONTEXT, VOCAB

    for name, preset in CLIP_PRESETS.items():
        cfg = preset()
        expected = (3, 16, len(VOCAB), CONTEXT)
        assert (cfg.in_channels, cfg.image_size, cfg.vocab_size, cfg.context_length) == expected, name


def test_float32_forward_and_backward_make_no_float64(backend):
    """Both sides, forward and backward, in float32 create no float64 array (docs/design.md rule 6) and give
    float32 embeddings, gradients and dx."""
    from support import float64_tripwire

    x, t, tokens, mask = _inputs(0)
    params = on(backend, M.init_params(TINY, Generator(0), dtype=np.float32))
    xb = backend.asarray(x.astype(np.float32))
    with float64_tripwire(backend):
        f, image = M.clip_image_forward(params, TINY, xb, backend.asarray(t))
        g, text = M.clip_text_forward(params, TINY, backend.asarray(tokens), backend.asarray(mask))
        grads, dx = M.clip_image_backward(g, image, need_dx=True)
        grads.update(M.clip_text_backward(f, text))
    assert all(v.dtype == xb.dtype for v in (f, g, dx, *grads.values()))
