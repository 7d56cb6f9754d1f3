"""Specification of refdiff.models.classifier: ADM's noisy classifier (the U-Net's encoder, pooled, a
linear head), forward and hand-derived backward, on small configs (8x8 images, base 8, two levels)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from model_checks import (ENCODER_FIELD_ERRORS, IMAGE_INPUT_ERRORS, assert_grads_like_params, bad_forward_arguments,
                          init_bad_arguments)
from refdiff.backend import Generator, get_backend, to_numpy
from refdiff.layers.embed import ORDERS
from refdiff.models import classifier as C
from refdiff.models import unet as U
from refdiff.models.presets import CLASSIFIER_PRESETS
from support import DTYPES, TOLERANCE, float64_tripwire, host_data, on, random_params

seeds = st.integers(0, 2**16)


@st.composite
def small_configs(draw, dropout=(0.0,)):
    """Small ClassifierConfigs covering every switch: 8x8 images, base 8, levels (8, 4); attention at none,
    one or both levels, 1 or 2 heads, 2 or 4 groups, AdaGN or added embedding, both sin/cos orders,
    1 or 2 input channels, 2 to 4 classes."""
    return C.ClassifierConfig(in_channels=draw(st.integers(1, 2)), image_size=8, base_channels=8, channel_mult=(1, 2),
                              num_res_blocks=1, attention_resolutions=draw(st.sampled_from([(), (4,), (8, 4)])),
                              heads=draw(st.sampled_from([1, 2])), groups=draw(st.sampled_from([2, 4])),
                              dropout=draw(st.sampled_from(dropout)), num_classes=draw(st.integers(2, 4)),
                              scale_shift_norm=draw(st.booleans()), time_embed_dim=draw(st.sampled_from([8, 12])),
                              time_embed_order=draw(st.sampled_from(ORDERS)))


# Every switch on one side or the other between the two: attention in the encoder and the middle with
# two heads, AdaGN, dropout (FULL); the embedding added, attention at 8x8, sin/cos, two channels (FULL_ADD).
FULL = C.ClassifierConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), heads=2, groups=4, dropout=0.3, num_classes=3,
                          scale_shift_norm=True, time_embed_dim=12)
FULL_ADD = C.ClassifierConfig(in_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=2,
                              attention_resolutions=(8,), heads=1, groups=2, dropout=0.3, num_classes=4,
                              scale_shift_norm=False, time_embed_dim=12, time_embed_order="sin_cos")


def forward(backend, params, cfg, x, t, **kwargs):
    """classifier_forward on ``backend`` from host params and inputs; returns (logits, cache)."""
    return C.classifier_forward(on(backend, params), cfg, backend.asarray(x), backend.asarray(t), **kwargs)


def check_gradients(backend, cfg, params, x, t, dlogits, seed, keys):
    """classifier_backward on ``backend`` against float64 finite differences of
    sum(classifier_forward(...) * dlogits) for the parameters ``keys`` and for x, in training mode (the
    same dropout masks every call). The oracle's forward runs on NumPy (fast); the backend's forward is
    first asserted equal to NumPy's to float64 rounding."""
    def loss(arrays):
        p = {k: v for k, v in arrays.items() if k != "x"}
        logits = C.classifier_forward(p, cfg, arrays["x"], t, train=True, generator=Generator(seed), keep_cache=False)
        return float(np.sum(logits[0] * dlogits))

    arrays = dict(params, x=x)
    logits, cache = forward(backend, params, cfg, x, t, train=True, generator=Generator(seed))
    reference = C.classifier_forward(params, cfg, x, t, train=True, generator=Generator(seed))[0]
    np.testing.assert_allclose(to_numpy(logits), reference, rtol=1e-12, atol=1e-12)
    grads, dx = C.classifier_backward(backend.asarray(dlogits), cache, need_dx=True)
    analytic = {k: to_numpy(grads[k]) for k in keys}
    assert_gradients_match(loss, arrays, dict(analytic, x=to_numpy(dx)))


def int_steps(draw_list):
    return np.array(draw_list, dtype=np.int64)


# ------------------------------------------------------------------------------------- gradients

@settings(max_examples=6)
@given(data=st.data(), cfg=small_configs(dropout=(0.0, 0.3)), seed=seeds)
def test_classifier_backward_matches_finite_differences(backend, data, cfg, seed):
    """grads, dx = classifier_backward(dlogits, need_dx=True) equal the float64 finite-difference
    gradients of sum(classifier_forward(x) * dlogits) with respect to x and to 6 parameters drawn per
    example (every parameter is checked in the deterministic test below), in training mode."""
    N = data.draw(st.integers(1, 2))
    x = host_data(seed, (N, cfg.in_channels, 8, 8))
    t = int_steps(data.draw(st.lists(st.integers(0, 999), min_size=N, max_size=N)))
    params = random_params(C.param_shapes(cfg), seed)
    keys = data.draw(st.lists(st.sampled_from(sorted(params)), min_size=6, max_size=6, unique=True))
    check_gradients(backend, cfg, params, x, t, host_data(seed + 99, (N, cfg.num_classes)), seed, keys)


@pytest.mark.parametrize("cfg", [FULL, FULL_ADD], ids=["adagn", "added"])
def test_classifier_backward_matches_finite_differences_for_every_parameter(cfg):
    """The same identity for every parameter of two configs that between them set every switch both
    ways, with dropout, on NumPy (the array_api_strict run of the property above covers the backend)."""
    x, t = host_data(0, (2, cfg.in_channels, 8, 8)), np.array([3, 871])
    params = random_params(C.param_shapes(cfg), 1)
    check_gradients(_NUMPY, cfg, params, x, t, host_data(2, (2, cfg.num_classes)), 5, sorted(params))


_NUMPY = get_backend("numpy")


@settings(max_examples=4)
@given(cfg=small_configs(dropout=(0.0, 0.3)), seed=seeds)
def test_grads_have_the_params_keys_shapes_and_array_kind(backend, cfg, seed):
    """classifier_backward returns one gradient per parameter: the same keys in the same order, each of
    its parameter's shape, library, device and dtype; dx is like x; without need_dx only grads."""
    params = on(backend, random_params(C.param_shapes(cfg), seed))
    x = backend.asarray(host_data(seed, (3, cfg.in_channels, 8, 8)))
    logits, cache = C.classifier_forward(params, cfg, x, backend.asarray(np.array([0, 5, 999])), train=True,
                                         generator=Generator(seed))
    assert tuple(logits.shape) == (3, cfg.num_classes)
    grads, dx = C.classifier_backward(logits, cache, need_dx=True)
    assert_grads_like_params(grads, params, C.param_shapes(cfg), dx, x)
    assert list(C.classifier_backward(logits, cache)) == list(params)


# --------------------------------------------------------------------------------------- forward

@settings(max_examples=8)
@given(data=st.data(), cfg=small_configs(), seed=seeds)
def test_float32_forward_matches_float64(backend, data, cfg, seed):
    """classifier_forward in float32 == in float64 on the same (float32-rounded) params and x, to float32
    tolerance times the forward's condition 1 + max|t| (the rounding of t f_i in the timestep embedding,
    as for the U-Net)."""
    N = data.draw(st.integers(1, 3))
    t = int_steps(data.draw(st.lists(st.integers(0, 999), min_size=N, max_size=N)))
    p32 = random_params(C.param_shapes(cfg), seed, "float32")
    x32 = host_data(seed, (N, cfg.in_channels, 8, 8), "float32")
    out32, _ = forward(backend, p32, cfg, x32, t)
    out64, _ = forward(backend, {k: v.astype(np.float64) for k, v in p32.items()}, cfg, x32.astype(np.float64), t)
    assert out32.dtype == backend.xp.float32
    rtol, atol = TOLERANCE["float32"]
    scale = 1.0 + float(np.max(t))
    np.testing.assert_allclose(to_numpy(out32), to_numpy(out64), rtol=rtol * scale, atol=atol * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fresh_classifier_outputs_zero_logits(backend, dtype):
    """init_params zero-initialises the head (ADM's zero_module), so a fresh classifier's logits are 0
    exactly (p(y | x_t) uniform), (N, K) in x's dtype; its pooled features are not 0."""
    params = on(backend, C.init_params(FULL, Generator(0), dtype=dtype))
    x = backend.asarray(host_data(1, (2, 1, 8, 8), dtype))
    t = backend.asarray(np.array([0, 500]))
    logits, _ = C.classifier_forward(params, FULL, x, t)
    assert logits.dtype == backend.dtype(dtype) and tuple(logits.shape) == (2, 3)
    np.testing.assert_array_equal(to_numpy(logits), 0.0)
    assert np.any(to_numpy(C.classifier_features(params, FULL, x, t)) != 0)


def test_time_conditioning_changes_the_logits(backend):
    """The same x at different t gives different logits (t reaches every ResBlock through the time
    embedding), and the time-embedding MLP gets a nonzero gradient."""
    params = on(backend, random_params(C.param_shapes(FULL), 0))
    x = backend.asarray(np.repeat(host_data(1, (1, 1, 8, 8)), 3, axis=0))
    logits, cache = C.classifier_forward(params, FULL, x, backend.asarray(np.array([0, 250, 999])))
    out = to_numpy(logits)
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])
    grads = C.classifier_backward(logits, cache)
    assert np.any(to_numpy(grads["time_embed.fc1.w"]) != 0)


def test_logits_are_the_linear_head_of_the_pooled_features(backend):
    """classifier_forward's logits == classifier_features(x, t) @ W + b, and classifier_model(params,
    cfg)(x, t) == classifier_forward(..., keep_cache=False)[0] bit for bit, with None for the cache, and
    == the forward that keeps its cache to float64 rounding (that one runs the normalizations layer by
    layer, the sampling forward group_norm_silu)."""
    host = random_params(C.param_shapes(FULL), 2)
    params = on(backend, host)
    x, t = backend.asarray(host_data(3, (4, 1, 8, 8))), backend.asarray(np.array([0, 1, 2, 900]))
    logits, _ = C.classifier_forward(params, FULL, x, t)
    f = to_numpy(C.classifier_features(params, FULL, x, t))
    assert f.shape == (4, FULL.feature_channels)
    np.testing.assert_allclose(to_numpy(logits), f @ host["out.linear.w"] + host["out.linear.b"], rtol=1e-12)
    out = C.classifier_model(params, FULL)(x, t)
    sampled, cache = C.classifier_forward(params, FULL, x, t, keep_cache=False)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(sampled))
    assert cache is None
    np.testing.assert_allclose(to_numpy(out), to_numpy(logits), rtol=1e-12, atol=1e-12)


def test_samples_are_independent_and_any_multiple_of_the_downsampling_works(backend):
    """classifier_forward([a, b]) == [classifier_forward(a), classifier_forward(b)], and an (N, C, 8, 16)
    input gives (N, K) logits (the global average pool takes any H, W)."""
    params = random_params(C.param_shapes(FULL), 3)
    x, t = host_data(4, (2, 1, 8, 16)), np.array([10, 500])
    out, _ = forward(backend, params, FULL, x, t)
    assert tuple(out.shape) == (2, 3)
    for n in range(2):
        one, _ = forward(backend, params, FULL, x[n : n + 1], t[n : n + 1])
        np.testing.assert_allclose(to_numpy(out)[n : n + 1], to_numpy(one), rtol=1e-12, atol=1e-12)


def test_dropout_is_off_when_not_training(backend):
    """With train=False a classifier with dropout p > 0 computes exactly the one with p = 0; with
    train=True the same generator seed gives the same logits, different from evaluation mode."""
    params, x, t = random_params(C.param_shapes(FULL), 0), host_data(1, (2, 1, 8, 8)), np.array([1, 2])
    no_dropout = C.ClassifierConfig(**{**FULL.__dict__, "dropout": 0.0})
    eval_out = to_numpy(forward(backend, params, FULL, x, t)[0])
    np.testing.assert_array_equal(eval_out, to_numpy(forward(backend, params, no_dropout, x, t)[0]))
    a = to_numpy(forward(backend, params, FULL, x, t, train=True, generator=Generator(7))[0])
    b = to_numpy(forward(backend, params, FULL, x, t, train=True, generator=Generator(7))[0])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, eval_out)


def test_float32_creates_no_float64(backend):
    """A float32 forward (training, dropout, integer t) and backward with dx return float32 and create no
    float64 array on the way (tripwire on array_api_strict)."""
    params = on(backend, random_params(C.param_shapes(FULL), 0, "float32"))
    x = backend.asarray(host_data(1, (2, 1, 8, 8), "float32"))
    t = backend.asarray(np.array([0, 999]))
    with float64_tripwire(backend):
        logits, cache = C.classifier_forward(params, FULL, x, t, train=True, generator=Generator(1))
        grads, dx = C.classifier_backward(logits + 1.0, cache, need_dx=True)
    for a in (logits, dx, *grads.values()):
        assert a.dtype == backend.xp.float32


# ---------------------------------------------------------------------------- structure and init

@pytest.mark.parametrize("cfg", [FULL, FULL_ADD])
def test_encoder_is_the_unets_encoder(cfg):
    """The classifier's parameters are the U-Net's time embedding, input conv, down levels and middle
    block, with the U-Net's keys and shapes for the same fields, then the head: GN and a (C, K) linear
    layer on the C = base * channel_mult[-1] pooled channels."""
    unet = U.param_shapes(U.UNetConfig(in_channels=cfg.in_channels, out_channels=cfg.in_channels, image_size=8,
                                       base_channels=8, channel_mult=(1, 2), num_res_blocks=cfg.num_res_blocks,
                                       attention_resolutions=cfg.attention_resolutions, heads=cfg.heads,
                                       groups=cfg.groups, scale_shift_norm=cfg.scale_shift_norm, time_embed_dim=12))
    shapes = C.param_shapes(cfg)
    encoder = {k: v for k, v in shapes.items() if not k.startswith("out.")}
    assert encoder == {k: v for k, v in unet.items() if k.split(".")[0] in ("time_embed", "input", "down", "mid")}
    assert [k for k in shapes if k.startswith("out.")] == ["out.norm.gamma", "out.norm.beta", "out.linear.w",
                                                           "out.linear.b"]
    assert shapes["out.linear.w"] == (16, cfg.num_classes) and cfg.feature_channels == 16
    assert [s.name for s in C.encoder_plan(cfg)][-3:] == ["mid.res.0", "mid.attn", "mid.res.1"]


@pytest.mark.parametrize("cfg", [FULL, FULL_ADD, *(f() for f in CLASSIFIER_PRESETS.values())])
def test_param_count_is_the_number_of_scalars(cfg):
    """param_count(cfg) == the sum of the sizes of init_params(cfg)."""
    assert C.param_count(cfg) == sum(v.size for v in C.init_params(cfg, Generator(0)).values())


def test_flops_counts_every_matrix_product_of_the_encoder_and_head():
    """flops of a one-level classifier counted by hand: time MLP 4*E + E*E, conv_in 9*1*4*S, three res
    blocks (down.0.res.0, mid.res.0, mid.res.1) of 9*4*4*S + E*4 + 9*4*4*S each, the middle attention
    S*4*12 + 2 S^2 4 + S*4*4 and the head 4*K; S = 4*4 pixels. No decoder layer is counted, and every
    count but the attention scores belongs to a weight matrix of the classifier."""
    cfg = C.ClassifierConfig(image_size=4, base_channels=4, channel_mult=(1,), groups=2, num_classes=3,
                             scale_shift_norm=False, time_embed_dim=6)
    S, E, K = 16, 6, 3
    res = 9 * 4 * 4 * S + E * 4 + 9 * 4 * 4 * S
    expected = 4 * E + E * E + 9 * 4 * S + 3 * res + (S * 4 * 12 + 2 * S * S * 4 + S * 4 * 4) + 4 * K
    layers, total = C.flops(cfg)
    assert total == expected == sum(c for _, c in layers)
    weights = {k.removesuffix(".w").replace(".w_", ".") for k in C.param_shapes(cfg) if k.endswith(".w") or ".w_" in k}
    assert {name for name, _ in layers if not name.endswith(".attention")} == weights


def test_summary_reports_parameters_and_every_layer():
    """summary(cfg) (what ``refdiff info --model mnist28_classifier`` prints) names the parameter count,
    the total multiply-adds and every layer of flops(cfg)."""
    cfg = CLASSIFIER_PRESETS["mnist28_classifier"]()
    text = C.summary(cfg)
    layers, total = C.flops(cfg)
    assert f"parameters: {C.param_count(cfg):,}" in text and f"{total / 1e6:.1f} M multiply-adds" in text
    for name, count in layers:
        assert f"{count:,}" in text and name in text


def test_init_is_seeded_and_zero_where_adm_zeros():
    """init_params(cfg, Generator(s)) is a function of s; float32 params are the float64 ones rounded;
    each ResBlock's conv2, each attention output projection and the head's linear weight are zero, as
    are all biases; GN gamma = 1; the other weights have standard deviation about 1/sqrt(fan_in)."""
    cfg = CLASSIFIER_PRESETS["digits8_classifier"]()
    a, c = C.init_params(cfg, Generator(3)), C.init_params(cfg, Generator(3), dtype=np.float64)
    for k in a:
        np.testing.assert_array_equal(a[k], c[k].astype(np.float32))
        if k.endswith((".conv2.w", ".w_out", "b", "beta", "b_qkv", "b_out")) or k == "out.linear.w":
            assert not np.any(c[k]), k
        elif k.endswith("gamma"):
            np.testing.assert_array_equal(c[k], 1.0)
        elif c[k].size >= 4096:
            assert abs(np.std(c[k]) * math.sqrt(math.prod(c[k].shape[:-1])) - 1) < 0.1, k
    assert not np.array_equal(a["input.conv.w"], C.init_params(cfg, Generator(4))["input.conv.w"])


@pytest.mark.parametrize("name", sorted(CLASSIFIER_PRESETS))
def test_presets_build_and_run_forward_and_backward(backend, name):
    """Every classifier preset runs forward and backward in float32 on a batch of 2 at its image size:
    logits (2, K), finite gradients for every parameter and for x."""
    cfg = CLASSIFIER_PRESETS[name]()
    S = cfg.image_size
    params = on(backend, C.init_params(cfg, Generator(0)))
    x = backend.asarray(host_data(1, (2, cfg.in_channels, S, S), "float32"))
    logits, cache = C.classifier_forward(params, cfg, x, backend.asarray(np.array([1, 999])), train=True,
                                         generator=Generator(0))
    assert tuple(logits.shape) == (2, cfg.num_classes)
    grads, dx = C.classifier_backward(backend.asarray(host_data(2, (2, cfg.num_classes), "float32")), cache,
                                      need_dx=True)
    assert all(np.all(np.isfinite(to_numpy(g))) for g in (dx, *grads.values()))


# ------------------------------------------------------------------------------------ bad inputs

BASE = C.ClassifierConfig(image_size=8, base_channels=8, channel_mult=(1, 2), groups=4, num_classes=3,
                          time_embed_dim=8)


@pytest.mark.parametrize("change, message", IMAGE_INPUT_ERRORS + [
    ({"params": {"input.conv.w": np.zeros((3, 3, 1, 8))}},
     r"params must have the keys of this ClassifierConfig: missing \["),
    ({"params.out.linear.w": np.zeros((16, 4))}, r"params\['out.linear.w'\] must have shape \(16, 3\), got \(16, 4\)"),
    ({"params.out.linear.b": np.zeros(3, dtype=np.float32)},
     r"params\['out.linear.b'\] must be an array of x's library, device and dtype \(.*float64\)"),
    ({"cfg": "classifier"}, "cfg must be a ClassifierConfig"),
    ({"train": True, "cfg": C.ClassifierConfig(image_size=8, base_channels=8, channel_mult=(1, 2), groups=4,
                                               num_classes=3, time_embed_dim=8, dropout=0.1)},
     "generator is required"),
])
def test_forward_bad_inputs_raise(backend, change, message):
    """Wrong shapes or dtypes of x, t and params, H or W not a multiple of 2^(levels - 1) and training with
    dropout but no generator raise ValueError naming the argument."""
    valid = {"cfg": BASE, "x": np.zeros((3, 1, 8, 8)), "t": np.array([0, 1, 2]), "train": False, "generator": None}
    args = bad_forward_arguments(backend, C.init_params, valid, change)
    with pytest.raises(ValueError, match=message):
        C.classifier_forward(**args)


def test_backward_bad_dlogits_raise(backend):
    """dlogits of a shape or dtype other than the logits', or a cache of keep_cache=False, raise ValueError."""
    params = on(backend, C.init_params(BASE, Generator(0), dtype=np.float64))
    x, t = backend.asarray(np.zeros((3, 1, 8, 8))), backend.asarray(np.arange(3))
    _, cache = C.classifier_forward(params, BASE, x, t)
    for dlogits in (np.zeros((3, 4)), np.zeros((2, 3)), np.zeros((3, 3), dtype=np.float32)):
        with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(3, 3\)"):
            C.classifier_backward(backend.asarray(dlogits), cache)
    with pytest.raises(ValueError, match="cache must be the ClassifierCache"):
        C.classifier_backward(backend.asarray(np.zeros((3, 3))), C.classifier_forward(params, BASE, x, t,
                                                                                     keep_cache=False)[1])


@pytest.mark.parametrize("kwargs, message", ENCODER_FIELD_ERRORS + [
    ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
    ({"num_classes": None}, "num_classes must be an integer >= 1, got None"),
    ({"scale_shift_norm": 1}, "scale_shift_norm must be a bool"),
])
def test_config_bad_fields_raise(kwargs, message):
    """ClassifierConfig validates every field on construction, naming it (the encoder's fields through the
    U-Net's checks); lists become tuples and time_embed_dim=None becomes 4 * base_channels."""
    with pytest.raises(ValueError, match=message):
        C.ClassifierConfig(**kwargs)
    cfg = C.ClassifierConfig(channel_mult=[1, 2, 2], attention_resolutions=[7])
    assert cfg.channel_mult == (1, 2, 2) and cfg.attention_resolutions == (7,) and cfg.time_embed_dim == 128
    assert hash(cfg) == hash(C.ClassifierConfig(channel_mult=(1, 2, 2), attention_resolutions=(7,)))


@pytest.mark.parametrize("args, message", init_bad_arguments(BASE, "a ClassifierConfig"))
def test_init_bad_arguments_raise(args, message):
    """init_params rejects a non-config, a non-refdiff generator and a non-floating dtype."""
    with pytest.raises(ValueError, match=message):
        C.init_params(*args)
