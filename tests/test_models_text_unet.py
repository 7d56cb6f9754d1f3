"""Specification of refdiff.models.text_unet: GLIDE's text-conditional U-Net (the U-Net reading a caption
through the text encoder, by its summary slot and by context keys in every attention block), forward and
hand-derived backward, on small configs (8x8 images, two levels, a one-block encoder of width 4)."""

import dataclasses

import numpy as np
import pytest

from gradcheck import assert_gradients_match
from model_checks import assert_grads_like_params
from refdiff.backend import Generator, get_backend, to_numpy
from refdiff.models import text_unet as TU
from refdiff.models.presets import TEXT_PRESETS
from refdiff.models.text_encoder import TextEncoderConfig
from refdiff.models.unet import UNetConfig
from support import TOLERANCE, assert_close, assert_same_array_kind, float64_tripwire, host_data, on, random_params

# Attention in the encoder level (4x4, decoder too) and the middle block: three blocks read the caption.
SMALL = TU.TextUNetConfig(
    unet=UNetConfig(in_channels=2, out_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2),
                    num_res_blocks=1, attention_resolutions=(4,), heads=2, dropout=0.3, groups=4,
                    learn_sigma=True, time_embed_dim=12),
    text=TextEncoderConfig(vocab_size=5, context_length=4, width=4, layers=1, heads=2, mlp_ratio=1))
# Captions of 2 words, none (the empty caption) and 3 words, padded to L = 3 < ctx = 4 (the model pads to 4).
TOKENS = np.array([[3, 1, 0], [0, 0, 0], [2, 4, 1]])
_NUMPY = get_backend("numpy")


def forward(backend, params, cfg, x, t, y, **kwargs):
    """text_unet_forward on ``backend`` from host params and inputs; returns (out, cache)."""
    y = None if y is None else backend.asarray(y)
    return TU.text_unet_forward(on(backend, params), cfg, backend.asarray(x), backend.asarray(t), y, **kwargs)


def batch(N=3, seed=0):
    return host_data(seed, (N, 2, 8, 8)), np.array([3, 500, 999][:N])


# ------------------------------------------------------------------------------------- gradients

def _reads_the_caption(key):
    """The parameters the text reaches or that read it: the encoder's, the summary's projection, the time
    embedding it is added to, and every attention block's (the rest is the U-Net's, checked in
    test_models_unet)."""
    return key.startswith("text") or key.startswith("time_embed") or ".attn" in key


@pytest.mark.parametrize("padding", ["mask", "embedding"])
def test_backward_through_both_text_paths_matches_finite_differences(backend, padding):
    """grads, dx = text_unet_backward(dout, need_dx=True) equal the float64 finite-difference gradients of
    sum(text_unet_forward(x, t, tokens) * dout) for x and every parameter that reads the caption (the
    encoder's through the summary slot and through every attention block's context keys and values),
    in training mode with dropout, an empty caption in the batch; directional probes (tests/gradcheck.py).
    The oracle's forward runs on NumPy after this backend's forward is asserted equal to it (as the
    U-Net's check does). GLIDE's padding embeddings are checked on NumPy only (no other backend code)."""
    if padding == "embedding" and backend.name != "numpy":
        pytest.skip("the padding switch is backend-independent code: checked on NumPy")
    cfg = dataclasses.replace(SMALL, text=dataclasses.replace(SMALL.text, padding=padding))
    (x, t), params = batch(), random_params(TU.param_shapes(cfg), 1)
    dout = host_data(2, (3, cfg.unet.output_channels, 8, 8))

    def run(b, arrays, keep_cache=True):
        p = {k: v for k, v in arrays.items() if k != "x"}
        return forward(b, p, cfg, arrays["x"], t, TOKENS, train=True, generator=Generator(5), keep_cache=keep_cache)

    def loss(arrays):
        return float(np.sum(run(_NUMPY, arrays, keep_cache=False)[0] * dout))

    arrays = dict(params, x=x)
    out, cache = run(backend, arrays)
    np.testing.assert_allclose(to_numpy(out), run(_NUMPY, arrays, keep_cache=False)[0], rtol=1e-12, atol=1e-12)
    grads, dx = TU.text_unet_backward(backend.asarray(dout), cache, need_dx=True)
    analytic = {k: to_numpy(v) for k, v in grads.items() if _reads_the_caption(k)}
    assert_gradients_match(loss, arrays, dict(analytic, x=to_numpy(dx)))


def test_grads_have_the_params_keys_shapes_and_array_kind(backend):
    """text_unet_backward returns one gradient per parameter, in param_shapes' order, each like its
    parameter; dx is like x; without need_dx only grads."""
    params = on(backend, random_params(TU.param_shapes(SMALL), 0))
    x, t = batch()
    out, cache = forward(backend, params, SMALL, x, t, TOKENS, train=True, generator=Generator(0))
    grads, dx = TU.text_unet_backward(out, cache, need_dx=True)
    assert_grads_like_params(grads, params, TU.param_shapes(SMALL), dx, backend.asarray(x))
    assert list(TU.text_unet_backward(out, cache)) == list(params)


# --------------------------------------------------------------------------------------- forward

def test_float32_forward_matches_float64(backend):
    """text_unet_forward in float32 == in float64 on the same (float32-rounded) params, x and tokens, to
    float32 tolerance times 1 + max t (the timestep embedding's condition, as for the U-Net)."""
    p32 = random_params(TU.param_shapes(SMALL), 3, "float32")
    x, t = batch(seed=4)
    out32, _ = forward(backend, p32, SMALL, x.astype(np.float32), t, TOKENS)
    out64, _ = forward(backend, {k: v.astype(np.float64) for k, v in p32.items()}, SMALL, x.astype(np.float32)
                       .astype(np.float64), t, TOKENS)
    assert out32.dtype == backend.xp.float32
    rtol, atol = TOLERANCE["float32"]
    scale = 1.0 + float(np.max(t))
    np.testing.assert_allclose(to_numpy(out32), to_numpy(out64), rtol=rtol * scale, atol=atol * scale)


def test_real_tokens_alone_decide_the_output(backend):
    """With the key mask, a caption's output depends on its words only: the same captions padded to any
    length L <= ctx give the same output bit for bit (the model pads to the context), and the position
    embeddings of padded positions other than the summary slot (the last) change nothing."""
    params = random_params(TU.param_shapes(SMALL), 6)
    x, t = batch(2, seed=7)
    words = np.array([[3, 1], [2, 0]])  # "3 1" and "2": padded below to L = 2, 3, 4
    outs = [to_numpy(forward(backend, params, SMALL, x, t, np.pad(words, ((0, 0), (0, L - 2))))[0]) for L in (2, 3, 4)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    moved = dict(params)
    moved["text.position_embed.table"] = params["text.position_embed.table"] + np.array([[0.0], [0.0], [5.0], [0.0]])
    out, _ = forward(backend, moved, SMALL, x[:1], t[:1], words[:1])  # position 2 is padding, 3 the summary slot
    np.testing.assert_allclose(to_numpy(out), outs[0][:1], *TOLERANCE["float64"])


def test_no_caption_is_the_empty_caption(backend):
    """text_unet_forward(x, t, None) == text_unet_forward(x, t, all padding) exactly: y = None is
    classifier-free guidance's null input; a different caption gives a different output."""
    params = random_params(TU.param_shapes(SMALL), 8)
    x, t = batch()
    none = to_numpy(forward(backend, params, SMALL, x, t, None)[0])
    np.testing.assert_array_equal(none, to_numpy(forward(backend, params, SMALL, x, t, np.zeros((3, 1), int))[0]))
    assert not np.allclose(none, to_numpy(forward(backend, params, SMALL, x, t, TOKENS)[0]))


def test_fresh_model_outputs_zero_and_the_model_is_the_sampler_protocol(backend):
    """init_params zero-initialises the U-Net's output conv, so a fresh model outputs 0 exactly;
    text_unet_model(params, cfg)(xt, t, y) == text_unet_forward(..., keep_cache=False)[0] in evaluation
    mode, bit for bit, like xt, with no cache, and == the forward that keeps its cache to float32 rounding
    (group norm, AdaGN and SiLU layer by layer there, group_norm_silu in the sampling forward)."""
    cfg = dataclasses.replace(SMALL, unet=dataclasses.replace(SMALL.unet, dropout=0.0))
    x, t = batch()
    out, _ = forward(backend, TU.init_params(cfg, Generator(0), np.float32), cfg, x.astype(np.float32), t, TOKENS)
    np.testing.assert_array_equal(to_numpy(out), 0.0)
    params = on(backend, random_params(TU.param_shapes(cfg), 9, "float32"))
    xt, tt, y = backend.asarray(x.astype(np.float32)), backend.asarray(t), backend.asarray(TOKENS)
    model_out = TU.text_unet_model(params, cfg)(xt, tt, y)
    assert_same_array_kind(model_out, xt)
    sampled, cache = TU.text_unet_forward(params, cfg, xt, tt, y, keep_cache=False)
    np.testing.assert_array_equal(to_numpy(model_out), to_numpy(sampled))
    assert cache is None
    assert_close(model_out, to_numpy(TU.text_unet_forward(params, cfg, xt, tt, y)[0]), scale=10)


def test_float32_creates_no_float64(backend):
    """A float32 forward (training, dropout, tokens) and backward with dx stay float32 throughout
    (tripwire on array_api_strict)."""
    params = on(backend, random_params(TU.param_shapes(SMALL), 0, "float32"))
    x, t = batch()
    with float64_tripwire(backend):
        out, cache = TU.text_unet_forward(params, SMALL, backend.asarray(x.astype(np.float32)), backend.asarray(t),
                                          backend.asarray(TOKENS), train=True, generator=Generator(1))
        grads, dx = TU.text_unet_backward(out + 1.0, cache, need_dx=True)
    for a in (out, dx, *grads.values()):
        assert a.dtype == backend.xp.float32


# ----------------------------------------------------------------------------- config, presets

def test_text16_fits_the_captioned_shapes_and_runs():
    """text16 reads refdiff.data.captions' vocabulary and context, takes 3x16x16 images, and runs forward
    and backward on a batch of tokenize()d captions with finite gradients; summary counts its layers."""
    from refdiff.data.captions import CONTEXT, VOCAB, tokenize

    cfg = TEXT_PRESETS["text16"]()
    assert (cfg.text.vocab_size, cfg.text.context_length, cfg.pad_token) == (len(VOCAB), CONTEXT, VOCAB.index("<pad>"))
    tokens, mask = tokenize(["small red circle top left", ""])
    params = TU.init_params(cfg, Generator(0), np.float32)
    out, cache = TU.text_unet_forward(params, cfg, host_data(0, (2, 3, 16, 16), "float32"), np.array([5, 900]), tokens)
    grads = TU.text_unet_backward(np.ones_like(out), cache)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert f"parameters: {TU.param_count(cfg):,}" in TU.summary(cfg) and "mid.attn.context" in TU.summary(cfg)


def test_config_reads_dicts_of_fields_and_rejects_bad_fields():
    """TextUNetConfig(unet=dict, text=dict) == the config of those fields (a checkpoint's JSON); labels,
    a padding id outside the vocabulary and a non-config are errors naming the field."""
    d = dataclasses.asdict(SMALL)
    assert TU.TextUNetConfig(**d) == SMALL
    with pytest.raises(ValueError, match="unet.num_classes must be None .*, got 3"):
        TU.TextUNetConfig(unet=dataclasses.replace(SMALL.unet, num_classes=3), text=SMALL.text)
    with pytest.raises(ValueError, match=r"pad_token must be in \[0, text.vocab_size\) = \[0, 5\), got 5"):
        TU.TextUNetConfig(unet=SMALL.unet, text=SMALL.text, pad_token=5)
    with pytest.raises(ValueError, match="text must be a TextEncoderConfig or the dict of its fields, got int"):
        TU.TextUNetConfig(text=3)


@pytest.mark.parametrize("y, message", [
    (np.zeros((3,), int), r"y must be None or \(N, L\) integer tokens .* of shape \(3,\)"),
    (np.zeros((3, 5), int), r"1 <= L <= text.context_length = 4, got .* of shape \(3, 5\)"),
    (np.zeros((2, 2), int), r"N = 3 \(x's batch\)"),
    (np.zeros((3, 2)), r"shape \(3, 2\) and dtype .*float64"),
])
def test_forward_bad_tokens_raise(backend, y, message):
    """Tokens of the wrong rank, length, batch or dtype raise a ValueError naming y and the allowed shapes."""
    x, t = batch()
    with pytest.raises(ValueError, match=message):
        forward(backend, random_params(TU.param_shapes(SMALL), 0), SMALL, x, t, y)


# ----------------------------------------------------------------------------- position embedding

POSITIONED = dataclasses.replace(SMALL, position_embedding=True)


def test_position_table_backward_matches_finite_differences(backend):
    """With position_embedding, h = conv_in(x) + P: the gradients of P, of the input conv and of x equal
    the float64 finite-difference gradients of sum(text_unet_forward(x, t, tokens) * dout), in training
    mode with dropout (tests/gradcheck.py's directional probes; the oracle on NumPy)."""
    (x, t), params = batch(), random_params(TU.param_shapes(POSITIONED), 1)
    dout = host_data(2, (3, POSITIONED.unet.output_channels, 8, 8))

    def run(b, arrays, keep_cache=True):
        p = {k: v for k, v in arrays.items() if k != "x"}
        return forward(b, p, POSITIONED, arrays["x"], t, TOKENS, train=True, generator=Generator(5),
                       keep_cache=keep_cache)

    def loss(arrays):
        return float(np.sum(run(_NUMPY, arrays, keep_cache=False)[0] * dout))

    arrays = dict(params, x=x)
    out, cache = run(backend, arrays)
    grads, dx = TU.text_unet_backward(backend.asarray(dout), cache, need_dx=True)
    analytic = {k: to_numpy(v) for k, v in grads.items() if k.startswith("input.")}
    assert set(analytic) == {"input.conv.w", "input.conv.b", "input.position"}
    assert_gradients_match(loss, arrays, dict(analytic, x=to_numpy(dx)))


def test_position_table_is_the_2d_sinusoid_at_init_and_moves_the_output():
    """The table starts as position_sinusoid: the row's cos, sin in the first C // 2 channels, the column's
    in the rest (P[i, j, 0] = cos(i), P[i, j, C // 4] = sin(i), P[i, j, C // 2 + C // 4] = sin(j)); it is
    the only new parameter and takes no draws (the others equal the same seed's without it); it changes
    the output of a model with non-zero weights; an image of another size than image_size is an error."""
    cfg = POSITIONED
    C, S = cfg.unet.base_channels, cfg.unet.image_size
    params, plain = TU.init_params(cfg, Generator(0), np.float64), TU.init_params(SMALL, Generator(0), np.float64)
    P = params["input.position"]
    i, j = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    assert P.shape == (S, S, C) and list(params).index("input.position") == list(params).index("input.conv.b") + 1
    np.testing.assert_allclose(P[..., 0], np.cos(i), atol=1e-15)
    np.testing.assert_allclose(P[..., C // 4], np.sin(i), atol=1e-15)
    np.testing.assert_allclose(P[..., C // 2 + C // 4], np.sin(j), atol=1e-15)
    assert {k: v for k, v in params.items() if k != "input.position"}.keys() == plain.keys()
    assert all(np.array_equal(params[k], v) for k, v in plain.items())
    weights = random_params(TU.param_shapes(SMALL), 3)
    x, t = batch()
    out, _ = TU.text_unet_forward(weights, SMALL, x, t, TOKENS)
    moved, _ = TU.text_unet_forward(dict(weights, **{"input.position": P}), cfg, x, t, TOKENS)
    assert np.max(np.abs(moved - out)) > 1e-3
    with pytest.raises(ValueError, match=r"x must be \(N, 2, 8, 8\) \(cfg.image_size\), got shape \(1, 2, 16, 16\)"):
        TU.text_unet_forward(params, cfg, host_data(0, (1, 2, 16, 16)), t[:1], TOKENS[:1])
    with pytest.raises(ValueError, match="position_embedding must be True or False, got 1"):
        dataclasses.replace(SMALL, position_embedding=1)


def test_a_config_saved_without_the_position_field_loads_as_before():
    """A checkpoint's config dict from before position_embedding (no such key) is the config without the
    table: the same parameter keys as ever."""
    d = dataclasses.asdict(SMALL)
    del d["position_embedding"]
    assert TU.TextUNetConfig(**d) == SMALL and "input.position" not in TU.param_shapes(SMALL)
