"""Specification of refdiff.models.unet (and .blocks, .presets): the ADM-style U-Net, forward and
hand-derived backward, on small configs (8x8 images, base 8, groups 2 or 4, two levels)."""

import dataclasses
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
from refdiff.models import unet as U
from refdiff.models.presets import PRESETS, fit_data
from support import (DTYPES, TOLERANCE, assert_close, assert_same_array_kind, float64_tripwire, host_data, on,
                     random_params)

seeds = st.integers(0, 2**16)


@st.composite
def small_configs(draw, dropout=(0.0,)):
    """Small UNetConfigs covering every switch: 8x8 images, base 8, levels (8, 4); attention at none,
    one or both levels, 1 or 2 heads, 2 or 4 groups, classes or not, learn_sigma, AdaGN or added
    embedding, both sin/cos orders, 1 or 2 input channels."""
    channels = draw(st.integers(1, 2))
    return U.UNetConfig(in_channels=channels, out_channels=channels, image_size=8, base_channels=8,
                        channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=draw(st.sampled_from([(), (4,), (8, 4)])),
                        heads=draw(st.sampled_from([1, 2])), dropout=draw(st.sampled_from(dropout)),
                        groups=draw(st.sampled_from([2, 4])), num_classes=draw(st.none() | st.just(3)),
                        learn_sigma=draw(st.booleans()), scale_shift_norm=draw(st.booleans()),
                        time_embed_dim=draw(st.sampled_from([8, 12])),
                        time_embed_order=draw(st.sampled_from(ORDERS)))


# Everything on: the config the deterministic all-parameter gradient check uses.
FULL = U.UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
                    num_res_blocks=1, attention_resolutions=(4,), heads=2, dropout=0.3, groups=4, num_classes=3,
                    learn_sigma=True, scale_shift_norm=True, time_embed_dim=12)
# The other switches: embedding added before GN2 (mnist28's mode), no labels, one head at 8x8,
# diffusers' sin/cos order, two channels, 2 groups.
FULL_ADD = U.UNetConfig(in_channels=2, out_channels=2, image_size=8, base_channels=8, channel_mult=(1, 2),
                        num_res_blocks=1, attention_resolutions=(8,), heads=1, dropout=0.3, groups=2,
                        num_classes=None, learn_sigma=False, scale_shift_norm=False, time_embed_dim=12,
                        time_embed_order="sin_cos")


@st.composite
def batches(draw, cfg, N=None):
    """(x, t, y) on the host: x (N, C, 8, 8) float64, integer steps in [0, 999], labels in [0, K] or None."""
    N = N or draw(st.integers(1, 2))
    t = np.array(draw(st.lists(st.integers(0, 999), min_size=N, max_size=N)))
    y = None
    if cfg.num_classes is not None and draw(st.booleans()):
        y = np.array(draw(st.lists(st.integers(0, cfg.num_classes), min_size=N, max_size=N)))
    return host_data(draw(seeds), (N, cfg.in_channels, 8, 8)), t, y


def forward(backend, params, cfg, x, t, y=None, **kwargs):
    """unet_forward on ``backend`` from host params and inputs; returns (out, cache)."""
    y = None if y is None else backend.asarray(y)
    return U.unet_forward(on(backend, params), cfg, backend.asarray(x), backend.asarray(t), y, **kwargs)


def check_gradients(backend, cfg, params, x, t, y, dout, seed, keys):
    """unet_backward on ``backend`` against float64 finite differences of sum(unet_forward(...) * dout)
    for the parameters ``keys`` and for x, in training mode (the same dropout masks every call).

    The oracle's forward runs on NumPy: on array_api_strict it is 10x slower, and the same check
    asserts first that this backend's forward equals NumPy's to float64 rounding, so the finite
    differences are those of the backend's own function."""
    def run(b, arrays, keep_cache=True):
        p = {k: v for k, v in arrays.items() if k != "x"}
        return forward(b, p, cfg, arrays["x"], t, y, train=True, generator=Generator(seed), keep_cache=keep_cache)

    def loss(arrays):
        return float(np.sum(U.unet_forward({k: v for k, v in arrays.items() if k != "x"}, cfg, arrays["x"], t, y,
                                           train=True, generator=Generator(seed), keep_cache=False)[0] * dout))

    arrays = dict(params, x=x)
    out, cache = run(backend, arrays)
    np.testing.assert_allclose(to_numpy(out), run(_NUMPY, arrays, keep_cache=False)[0], rtol=1e-12, atol=1e-12)
    grads, dx = U.unet_backward(backend.asarray(dout), cache, need_dx=True)
    analytic = {k: to_numpy(grads[k]) for k in keys}
    assert_gradients_match(loss, arrays, dict(analytic, x=to_numpy(dx)))


_NUMPY = get_backend("numpy")


# ------------------------------------------------------------------------------------- gradients

@settings(max_examples=6)
@given(data=st.data(), cfg=small_configs(dropout=(0.0, 0.3)), seed=seeds)
def test_unet_backward_matches_finite_differences(backend, data, cfg, seed):
    """grads, dx = unet_backward(dout, need_dx=True) equal the float64 finite-difference gradients of
    sum(unet_forward(x) * dout) with respect to x and to 6 parameters drawn per example (every
    parameter is checked in the deterministic test below), in training mode."""
    x, t, y = data.draw(batches(cfg))
    params = random_params(U.param_shapes(cfg), seed)
    keys = data.draw(st.lists(st.sampled_from(sorted(params)), min_size=6, max_size=6, unique=True))
    dout = host_data(seed + 99, (x.shape[0], cfg.output_channels, 8, 8))
    check_gradients(backend, cfg, params, x, t, y, dout, seed, keys)


@pytest.mark.parametrize("cfg", [FULL, FULL_ADD], ids=["adagn", "added"])
def test_unet_backward_matches_finite_differences_for_every_parameter(cfg):
    """The same identity for every one of the ~130 parameters of two configs that between them set
    every switch both ways (FULL: labels, learn_sigma, AdaGN, two-head attention at 4x4 in the
    encoder, middle and decoder; FULL_ADD: the embedding added, no labels, attention at 8x8, sin/cos
    order, two channels), with dropout, on NumPy: fixed draws, so the slow part runs twice only."""
    x, t = host_data(0, (2, cfg.in_channels, 8, 8)), np.array([3, 871])
    y = None if cfg.num_classes is None else np.array([2, 3])
    params = random_params(U.param_shapes(cfg), 1)
    dout = host_data(2, (2, cfg.output_channels, 8, 8))
    check_gradients(_NUMPY, cfg, params, x, t, y, dout, 5, sorted(params))


@settings(max_examples=5)
@given(cfg=small_configs(dropout=(0.0, 0.3)), seed=seeds)
def test_grads_have_the_params_keys_shapes_and_array_kind(backend, cfg, seed):
    """unet_backward returns one gradient per parameter: the same keys in the same order, each of its
    parameter's shape, library, device and dtype; dx is like x; without need_dx only grads."""
    params = on(backend, random_params(U.param_shapes(cfg), seed))
    x = backend.asarray(host_data(seed, (3, cfg.in_channels, 8, 8)))
    out, cache = U.unet_forward(params, cfg, x, backend.asarray(np.array([0, 5, 999])), train=True,
                                generator=Generator(seed))
    assert tuple(out.shape) == (3, cfg.output_channels, 8, 8)
    grads, dx = U.unet_backward(out, cache, need_dx=True)
    assert_grads_like_params(grads, params, U.param_shapes(cfg), dx, x)
    assert list(U.unet_backward(out, cache)) == list(params)


# --------------------------------------------------------------------------------------- forward

def forward_tolerance_scale(t):
    """Condition of a float32 forward with unit-gain layers (random_params): the embedding's argument
    t f_i is rounded with absolute error about |t| 2^-24, which cos and sin pass on (the factor
    1 + max|t| of the timestep-embedding and MLP tests). The ~20 layers in a row stay within the
    plain float32 tolerance on their own (measured: at most 0.7 of it over 80 draws)."""
    return 1.0 + float(np.max(np.abs(t)))


@settings(max_examples=8)
@given(data=st.data(), cfg=small_configs(), seed=seeds)
def test_float32_forward_matches_float64(backend, data, cfg, seed):
    """unet_forward in float32 == unet_forward in float64 on the same (float32-rounded) params and x,
    to float32 tolerance times the forward's condition (forward_tolerance_scale)."""
    x, t, y = data.draw(batches(cfg))
    p32, x32 = random_params(U.param_shapes(cfg), seed, "float32"), x.astype(np.float32)
    out32, _ = forward(backend, p32, cfg, x32, t, y)
    out64, _ = forward(backend, {k: v.astype(np.float64) for k, v in p32.items()}, cfg, x32.astype(np.float64), t, y)
    assert out32.dtype == backend.xp.float32
    rtol, atol = TOLERANCE["float32"]
    scale = forward_tolerance_scale(t)
    np.testing.assert_allclose(to_numpy(out32), to_numpy(out64), rtol=rtol * scale, atol=atol * scale)


@settings(max_examples=6)
@given(data=st.data(), cfg=small_configs(), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_fresh_model_outputs_zero(backend, data, cfg, seed, dtype):
    """init_params zero-initialises the output conv (ADM's zero_module), so unet_forward(x, t, y) == 0
    exactly for every input, NCHW of shape (N, out_channels or 2 out_channels, H, W), in x's dtype."""
    x, t, y = data.draw(batches(cfg))
    params = U.init_params(cfg, Generator(seed), dtype=dtype)
    assert all(v.dtype == np.dtype(dtype) for v in params.values())
    out, _ = forward(backend, params, cfg, x.astype(dtype), t, y)
    assert out.dtype == backend.dtype(dtype) and tuple(out.shape) == (x.shape[0], cfg.output_channels, 8, 8)
    np.testing.assert_array_equal(to_numpy(out), 0.0)


def test_samples_in_a_batch_are_independent_and_the_layout_is_nchw(backend):
    """unet_forward([a, b]) == [unet_forward(a), unet_forward(b)] (no reshape mixes the batch), and an
    (N, C, H, W) input with H != W gives an (N, C_out, H, W) output (no transposed H and W)."""
    params = random_params(U.param_shapes(FULL), 3)
    x, t, y = host_data(4, (2, 1, 8, 16)), np.array([10, 500]), np.array([1, 3])
    out, _ = forward(backend, params, FULL, x, t, y)
    assert tuple(out.shape) == (2, FULL.output_channels, 8, 16)
    for n in range(2):
        one, _ = forward(backend, params, FULL, x[n : n + 1], t[n : n + 1], y[n : n + 1])
        np.testing.assert_allclose(to_numpy(out)[n : n + 1], to_numpy(one), rtol=1e-12, atol=1e-12)


@settings(max_examples=4)
@given(data=st.data(), cfg=small_configs(), seed=seeds)
def test_null_label_is_used_when_y_is_none(backend, data, cfg, seed):
    """For a class-conditional model unet_forward(x, t, None) == unet_forward(x, t, K) exactly (K = the
    null label of classifier-free guidance), and its gradient lands in row K of the label table."""
    cfg = U.UNetConfig(**{**cfg.__dict__, "num_classes": 3})
    x, t, _ = data.draw(batches(cfg))
    params = random_params(U.param_shapes(cfg), seed)
    out_none, cache = forward(backend, params, cfg, x, t, None)
    out_null, _ = forward(backend, params, cfg, x, t, np.full(len(t), 3))
    np.testing.assert_array_equal(to_numpy(out_none), to_numpy(out_null))
    dtable = to_numpy(U.unet_backward(out_none, cache)["label_embed.table"])
    np.testing.assert_array_equal(dtable[:3], 0.0)
    assert np.any(dtable[3] != 0)


def test_dropout_is_off_when_not_training(backend):
    """With train=False a model with dropout p > 0 computes exactly the model with p = 0 (and needs no
    generator); with train=True it draws masks from the generator: the same seed gives the same
    output, and it differs from evaluation mode."""
    params, x = random_params(U.param_shapes(FULL), 0), host_data(1, (2, 1, 8, 8))
    t, y = np.array([1, 2]), np.array([0, 1])
    no_dropout = U.UNetConfig(**{**FULL.__dict__, "dropout": 0.0})
    eval_out = to_numpy(forward(backend, params, FULL, x, t, y, train=False)[0])
    np.testing.assert_array_equal(eval_out, to_numpy(forward(backend, params, no_dropout, x, t, y)[0]))
    train_a = to_numpy(forward(backend, params, FULL, x, t, y, train=True, generator=Generator(7))[0])
    train_b = to_numpy(forward(backend, params, FULL, x, t, y, train=True, generator=Generator(7))[0])
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.allclose(train_a, eval_out)


def test_model_is_the_sampler_protocol_and_keeps_no_cache(backend):
    """unet_model(params, cfg)(xt, t, y) == unet_forward(params, cfg, xt, t, y, keep_cache=False)[0] in
    evaluation mode, bit for bit, an array like xt, with None for the cache; and == the forward that keeps
    its cache to float32 rounding (that one runs group norm, AdaGN and SiLU layer by layer, the sampling
    forward group_norm_silu)."""
    params = on(backend, random_params(U.param_shapes(FULL), 0, "float32"))
    xt = backend.asarray(host_data(1, (3, 1, 8, 8), "float32"))
    t, y = backend.asarray(np.array([0, 1, 999])), backend.asarray(np.array([0, 1, 3]))
    out = U.unet_model(params, FULL)(xt, t, y)
    assert_same_array_kind(out, xt)
    sampled, cache = U.unet_forward(params, FULL, xt, t, y, keep_cache=False)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(sampled))
    assert cache is None
    assert_close(out, to_numpy(U.unet_forward(params, FULL, xt, t, y)[0]), scale=10)


def test_float32_creates_no_float64(backend):
    """A float32 forward (training, dropout, labels, integer t) and backward with dx, and a sampling
    forward (keep_cache=False: group_norm_silu, upsample2x_conv), return float32 and create no float64
    array on the way (tripwire on array_api_strict)."""
    params = on(backend, random_params(U.param_shapes(FULL), 0, "float32"))
    x = backend.asarray(host_data(1, (2, 1, 8, 8), "float32"))
    t, y = backend.asarray(np.array([0, 999])), backend.asarray(np.array([0, 3]))
    with float64_tripwire(backend):
        out, cache = U.unet_forward(params, FULL, x, t, y, train=True, generator=Generator(1))
        grads, dx = U.unet_backward(out + 1.0, cache, need_dx=True)
        sampled, _ = U.unet_forward(params, FULL, x, t, y, keep_cache=False)
    for a in (out, dx, sampled, *grads.values()):
        assert a.dtype == backend.xp.float32


def test_params_to_moves_and_casts(backend):
    """params_to(params, like) gives arrays of like's library, device and dtype with the same values."""
    params = U.init_params(FULL, Generator(0), dtype=np.float64)
    like = backend.asarray(np.zeros(1, dtype=np.float32))
    moved = U.params_to(params, like)
    assert list(moved) == list(params)
    for k, v in moved.items():
        assert_same_array_kind(v, like)
        np.testing.assert_array_equal(to_numpy(v), params[k].astype(np.float32))


# ---------------------------------------------------------------------------------------- presets

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_run_forward_and_backward(backend, name):
    """Every preset builds (with classes and learn_sigma), and runs forward and backward in float32 on
    a batch of 2 at its image size: output (2, 2 C, S, S), finite gradients for every parameter."""
    cfg = PRESETS[name](num_classes=10, learn_sigma=True)
    S = cfg.image_size
    params = on(backend, U.init_params(cfg, Generator(0)))
    x = backend.asarray(host_data(1, (2, cfg.in_channels, S, S), "float32"))
    out, cache = U.unet_forward(params, cfg, x, backend.asarray(np.array([1, 999])),
                                backend.asarray(np.array([3, 10])), train=True, generator=Generator(0))
    assert tuple(out.shape) == (2, 2 * cfg.in_channels, S, S)
    grads = U.unet_backward(backend.asarray(host_data(2, tuple(out.shape), "float32")), cache)
    assert list(grads) == list(params)
    assert all(np.all(np.isfinite(to_numpy(g))) for g in grads.values())


@pytest.mark.parametrize("name, shape", [("shapes32", (1, 64, 48)), ("digits8", (3, 12, 12)), ("mnist28", (3, 28, 28))])
def test_fit_data_keeps_the_architecture_and_moves_channels_size_and_attention(name, shape):
    """fit_data(preset, (C, H, W)): the same steps (kinds, names, levels, widths), attention at the same
    levels, C channels in and out; the forward takes (N, C, H, W) to (N, C, H, W)."""
    cfg = PRESETS[name](num_classes=2)
    fitted = fit_data(cfg, shape)
    C, H, W = shape
    assert (fitted.in_channels, fitted.out_channels, fitted.image_size) == (C, C, H)
    assert [(s.kind, s.name, s.level, s.c_out) for s in U.unet_plan(fitted)][1:-1] == \
        [(s.kind, s.name, s.level, s.c_out) for s in U.unet_plan(cfg)][1:-1]  # all but conv_in and head
    assert dataclasses.replace(fitted, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                               image_size=cfg.image_size, attention_resolutions=cfg.attention_resolutions) == cfg
    out, _ = U.unet_forward(U.init_params(fitted, Generator(0)), fitted, host_data(1, (1, *shape), "float32"),
                            np.array([5]), np.array([1]))
    assert out.shape == (1, *shape)


def test_fit_data_refuses_sizes_the_levels_cannot_halve_naming_the_shape():
    """shapes32 halves twice: H and W must be multiples of 4; 30 is refused with the shape in the message."""
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(3, 30, 32\).*multiples of 4"):
        fit_data(PRESETS["shapes32"](), (3, 30, 32))
    with pytest.raises(ValueError, match="multiples of 4"):
        fit_data(PRESETS["shapes32"](), (3, 32, 0))


def test_mnist28_is_the_issue_architecture():
    """mnist28: levels 28, 14, 7 with 32, 64, 64 channels; one ResBlock per level going down and two
    coming up, each fed a concatenated skip; the middle block is (res, attn, res) at 7x7 and the only
    attention; GroupNorm 8 groups; time MLP 32 -> 128 -> 128 added (no AdaGN); label table K + 1 rows."""
    cfg = PRESETS["mnist28"](num_classes=10)
    plan = U.unet_plan(cfg)
    down = [s for s in plan if s.name.startswith("down.") and s.kind == "res"]
    up = [s for s in plan if s.name.startswith("up.") and s.kind == "res"]
    assert [s.name for s in down] == ["down.0.res.0", "down.1.res.0", "down.2.res.0"]
    assert [s.name for s in up] == [f"up.{level}.res.{i}" for level in (2, 1, 0) for i in (0, 1)]
    assert all(s.skip > 0 for s in up)
    assert [(s.kind, s.name) for s in plan if s.name.startswith("mid.")] == \
        [("res", "mid.res.0"), ("attn", "mid.attn"), ("res", "mid.res.1")]
    assert [s.name for s in plan if s.kind == "attn"] == ["mid.attn"]
    assert [28 // 2**s.level for s in plan if s.kind == "attn"] == [7]
    assert {s.c_out for s in down} == {32, 64} and cfg.groups == 8 and not cfg.scale_shift_norm
    shapes = U.param_shapes(cfg)
    assert shapes["time_embed.fc1.w"] == (32, 128) and shapes["time_embed.fc2.w"] == (128, 128)
    assert shapes["label_embed.table"] == (11, 128) and shapes["mid.attn.w_qkv"] == (64, 192)


# ------------------------------------------------------------------------------- counts and init

@pytest.mark.parametrize("cfg", [FULL, PRESETS["digits8"](), PRESETS["shapes32"](num_classes=4)])
def test_param_count_is_the_number_of_scalars(cfg):
    """param_count(cfg) == the sum of the sizes of init_params(cfg)."""
    assert U.param_count(cfg) == sum(v.size for v in U.init_params(cfg, Generator(0)).values())


def test_flops_counts_every_matrix_product():
    """flops of a one-level U-Net (no resampling), counted by hand: conv_in 9*1*4*S, mid res blocks
    2 * (9*4*4*S + E*4), attention S*4*12 + 2 S^2 4 + S*4*4, two decoder res blocks from 8 channels
    (9*8*4*S + E*4 + 9*4*4*S + 8*4*S each), head 9*4*1*S, time MLP 4*E + E*E; S = 4*4 pixels.
    Conv layers scale by 4 and the attention scores by 16 when the image side doubles."""
    cfg = U.UNetConfig(image_size=4, base_channels=4, channel_mult=(1,), num_res_blocks=1, groups=2,
                       scale_shift_norm=False, time_embed_dim=6)
    S, E = 16, 6
    res = 9 * 4 * 4 * S + E * 4 + 9 * 4 * 4 * S
    dec = 9 * 8 * 4 * S + E * 4 + 9 * 4 * 4 * S + 8 * 4 * S
    expected = 4 * E + E * E + 9 * 4 * S + res + (S * 4 * 12 + 2 * S * S * 4 + S * 4 * 4) + res + 2 * dec + 9 * 4 * S \
        + res  # down.0.res.0
    layers, total = U.flops(cfg)
    assert total == expected == sum(c for _, c in layers)
    big = dict(U.flops(cfg, image_size=8)[0])
    for name, count in layers:
        factor = 16 if name.endswith(".attention") else 1 if name.endswith(".emb") or "time_embed" in name else 4
        assert big[name] == factor * count, name


def test_init_is_seeded_fan_in_scaled_and_zero_where_adm_zeros():
    """init_params(cfg, Generator(s)) is a function of s; float32 params are the float64 ones rounded;
    weights have standard deviation about 1/sqrt(fan_in); each ResBlock's conv2, each attention
    output projection and the output conv are zero, as are all biases; GN gamma = 1, beta = 0."""
    cfg = PRESETS["digits8"](num_classes=3)
    a, b = U.init_params(cfg, Generator(3)), U.init_params(cfg, Generator(3))
    c = U.init_params(cfg, Generator(3), dtype=np.float64)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k].astype(np.float32))
        zero = k.endswith((".conv2.w", ".w_out")) or k == "out.conv.w" or k.endswith(("b", "beta", "b_qkv", "b_out"))
        if zero:
            assert not np.any(c[k]), k
        elif k.endswith("gamma"):
            np.testing.assert_array_equal(c[k], 1.0)
        elif k != "label_embed.table" and c[k].size >= 4096:
            fan_in = math.prod(c[k].shape[:-1])
            assert abs(np.std(c[k]) * math.sqrt(fan_in) - 1) < 0.1, k
    assert not np.array_equal(a["input.conv.w"], U.init_params(cfg, Generator(4))["input.conv.w"])


def test_cache_memory_is_affine_in_the_batch():
    """cache_nbytes(cache, params), the activation memory of a training step, grows by the same bytes
    with every image (parameters held by the caches are not counted), and what does not grow with the
    batch (the flat grid's image of zeros before and after the batch in each convolution's cache,
    refdiff.layers.conv) is less than two images' worth."""
    params = random_params(U.param_shapes(FULL), 0, "float32")
    sizes = []
    for N in (1, 2, 3):
        x, t, y = host_data(0, (N, 1, 8, 8), "float32"), np.zeros(N, dtype=np.int64), np.zeros(N, dtype=np.int64)
        _, cache = U.unet_forward(params, FULL, x, t, y, train=True, generator=Generator(0))
        sizes.append(U.cache_nbytes(cache, params))
    per_image = sizes[1] - sizes[0]
    assert per_image > 0 and sizes[2] - sizes[1] == per_image
    assert 0 <= sizes[0] - per_image < 2 * per_image


# ------------------------------------------------------------------------------------ bad inputs

BASE = U.UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), groups=4, num_classes=2, time_embed_dim=8)


@pytest.mark.parametrize("change, message", IMAGE_INPUT_ERRORS + [
    ({"x": np.zeros((3, 1, 8, 9))}, r"x's height and width must be positive multiples"),
    ({"y": np.array([0, 1])}, r"y must be an \(N,\) array of labels"),
    ({"y": np.array([0, 1, 3])}, r"y must hold labels in \[0, 2\]"),
    ({"y": np.array([-1, 1, 2])}, r"y must hold labels in \[0, 2\]"),
    ({"y": np.array([0.0, 1.0, 2.0])}, r"y must be an \(N,\) integer array"),
    ({"cfg": U.UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), groups=4, time_embed_dim=8),
      "y": np.array([0, 1, 1])}, "y must be None for an unconditional model"),
    ({"params": {"input.conv.w": np.zeros((3, 3, 1, 8))}}, r"params must have the keys of this UNetConfig: missing \["),
    ({"params.input.conv.w": np.zeros((3, 3, 2, 8))},
     r"params\['input.conv.w'\] must have shape \(3, 3, 1, 8\), got \(3, 3, 2, 8\)"),
    ({"params.out.conv.b": np.zeros(1, dtype=np.float32)},
     r"params\['out.conv.b'\] must be an array of x's library, device and dtype \(.*float64\)"),
    ({"params": "weights"}, "params must be a dict"),
    ({"cfg": "unet"}, "cfg must be a UNetConfig"),
    ({"train": True, "cfg": U.UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), groups=4,
                                         num_classes=2, time_embed_dim=8, dropout=0.1)}, "generator is required"),
])
def test_forward_bad_inputs_raise(backend, change, message):
    """Wrong shapes or dtypes of x, t, y and params, H or W not a multiple of 2^(levels - 1), labels
    outside [0, K], labels for an unconditional model, and training with dropout but no generator raise
    ValueError naming the argument."""
    valid = {"cfg": BASE, "x": np.zeros((3, 1, 8, 8)), "t": np.array([0, 1, 2]), "y": None, "train": False,
             "generator": None}
    args = bad_forward_arguments(backend, U.init_params, valid, change)
    with pytest.raises(ValueError, match=message):
        U.unet_forward(**args)


def test_backward_bad_dout_raises(backend):
    """dout of a shape or dtype other than the output's, or a cache of keep_cache=False, raise ValueError."""
    params = on(backend, U.init_params(BASE, Generator(0), dtype=np.float64))
    x, t = backend.asarray(np.zeros((3, 1, 8, 8))), backend.asarray(np.arange(3))
    out, cache = U.unet_forward(params, BASE, x, t)
    for dout in (np.zeros((3, 1, 8, 4)), np.zeros((3, 8, 8, 1)), np.zeros((3, 1, 8, 8), dtype=np.float32)):
        with pytest.raises(ValueError, match=r"dout must have the output's shape \(3, 1, 8, 8\)"):
            U.unet_backward(backend.asarray(dout), cache)
    with pytest.raises(ValueError, match="cache must be the UNetCache"):
        U.unet_backward(out, U.unet_forward(params, BASE, x, t, keep_cache=False)[1])


@pytest.mark.parametrize("kwargs, message", ENCODER_FIELD_ERRORS + [
    ({"base_channels": 8.0}, "base_channels must be an integer >= 1"),
    ({"channel_mult": (1, 0)}, "every entry of channel_mult must be an integer >= 1"),
    ({"channel_mult": "12"}, "channel_mult must be a tuple of integers"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1"),
    ({"learn_sigma": 1}, "learn_sigma must be a bool"),
    ({"scale_shift_norm": None}, "scale_shift_norm must be a bool"),
    ({"time_embed_dim": 0}, "time_embed_dim must be an integer >= 1"),
])
def test_config_bad_fields_raise(kwargs, message):
    """UNetConfig validates every field on construction, naming it; lists become tuples and
    time_embed_dim=None becomes 4 * base_channels."""
    with pytest.raises(ValueError, match=message):
        U.UNetConfig(**kwargs)
    cfg = U.UNetConfig(channel_mult=[1, 2, 2], attention_resolutions=[7])
    assert cfg.channel_mult == (1, 2, 2) and cfg.attention_resolutions == (7,) and cfg.time_embed_dim == 128


@pytest.mark.parametrize("args, message", init_bad_arguments(BASE, "a UNetConfig"))
def test_init_bad_arguments_raise(args, message):
    """init_params rejects a non-config, a non-refdiff generator and a non-floating dtype."""
    with pytest.raises(ValueError, match=message):
        U.init_params(*args)


def test_summary_reports_parameters_and_every_layer():
    """summary(cfg) (what ``refdiff info --model NAME`` prints) names the parameter count, the total
    multiply-adds and every layer of flops(cfg)."""
    cfg = PRESETS["mnist28"](num_classes=10)
    text = U.summary(cfg)
    layers, total = U.flops(cfg)
    assert f"parameters: {U.param_count(cfg):,}" in text and f"{total / 1e6:.1f} M multiply-adds" in text
    for name, count in layers:
        assert f"{count:,}" in text and name in text
