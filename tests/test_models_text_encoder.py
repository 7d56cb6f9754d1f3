"""Specification of refdiff.models.text_encoder: GLIDE's transformer text encoder, forward and hand-derived backward."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from model_checks import init_bad_arguments
from refdiff.backend import Generator, to_numpy
from refdiff.layers.masked_attention import context_attention_forward_naive
from refdiff.models import text_encoder as T
from support import DTYPES, assert_close, assert_same_array_kind, float64_tripwire, host_data, on, random_params

seeds = st.integers(0, 2**16)


@st.composite
def configs(draw, max_width=4):
    """Small TextEncoderConfigs covering every switch: both paddings, both GELU forms, 0 to 2 layers. The
    width is at least 3: with C = 2 a layer norm's output is +-1/sqrt(1 + eps/var) whatever its input,
    and every gradient before it is O(eps), below the finite differences' noise (C = 1: exactly 0)."""
    width = draw(st.integers(3, max_width))
    return T.TextEncoderConfig(vocab_size=draw(st.integers(2, 5)), context_length=draw(st.integers(1, 4)),
                               width=width, layers=draw(st.integers(0, 2)),
                               heads=draw(st.sampled_from([h for h in (1, 2, 3) if width % h == 0])),
                               mlp_ratio=draw(st.integers(1, 2)), padding=draw(st.sampled_from(T.PADDINGS)),
                               gelu=draw(st.sampled_from(("tanh", "none"))))


@st.composite
def captions(draw, cfg):
    """(tokens (N, L), mask (N, L)): L <= context_length; each row a caption of k words then padding
    (k = 0, the empty caption, included); the padding token is 0, or mask is None (no padding)."""
    N, L = draw(st.integers(1, 3)), draw(st.integers(1, cfg.context_length))
    tokens = np.array(draw(st.lists(st.integers(1, cfg.vocab_size - 1), min_size=N * L, max_size=N * L))).reshape(N, L)
    if draw(st.booleans()):
        return tokens, None
    lengths = np.array(draw(st.lists(st.integers(0, L), min_size=N, max_size=N)))
    mask = np.arange(L)[None, :] < lengths[:, None]  # (N, L): True at the first k positions
    return np.where(mask, tokens, 0), mask


def forward(backend, params, cfg, tokens, mask):
    """text_encoder_forward on ``backend`` from host params and inputs; returns (features, cache)."""
    m = None if mask is None else backend.asarray(mask)
    return T.text_encoder_forward(on(backend, params), cfg, backend.asarray(tokens), m)


# ------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("padding", T.PADDINGS)
@settings(max_examples=3)  # each example runs ~500 forwards of the encoder (2 s on array_api_strict)
@given(data=st.data(), seed=seeds)
def test_text_encoder_backward_matches_finite_differences(backend, padding, data, seed):
    """grads = text_encoder_backward(dfeatures) equal the gradients of sum(text_encoder(tokens, mask) *
    dfeatures) for every parameter (float64), with one or two blocks, empty captions included."""
    cfg = data.draw(configs().filter(lambda c: c.layers > 0).map(lambda c: dataclasses.replace(c, padding=padding)))
    tokens, mask = data.draw(captions(cfg))
    params = random_params(T.param_shapes(cfg), seed)
    dout = host_data(seed + 99, tokens.shape + (cfg.width,))

    def loss(p):
        return float(to_numpy(backend.xp.sum(forward(backend, p, cfg, tokens, mask)[0] * backend.asarray(dout))))

    grads = T.text_encoder_backward(backend.asarray(dout), forward(backend, params, cfg, tokens, mask)[1])
    assert list(grads) == list(T.param_shapes(cfg))
    assert_gradients_match(loss, params, {k: to_numpy(v) for k, v in grads.items()})


# ---------------------------------------------------------------------------------------- oracles

def host_layer_norm(x, gamma, beta, eps):
    mu, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def host_gelu(x, form):
    if form == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return x * np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))(x)


def host_text_encoder(p, cfg, tokens, mask):
    """The encoder from the module docstring's equations on the host in float64, its attention the
    per-query loop of refdiff.layers.masked_attention."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    L = tokens.shape[1]
    h = p["token_embed.table"][tokens] + p["position_embed.table"][:L]
    if cfg.padding == "embedding" and mask is not None:
        h = np.where(mask[..., None], h, p["padding_embed.table"][:L])
    for i in range(cfg.layers):
        b = f"blocks.{i}."
        a = host_layer_norm(h, p[b + "ln1.gamma"], p[b + "ln1.beta"], cfg.eps)
        h = h + context_attention_forward_naive(a, *(p[b + "attn." + k] for k in ("w_qkv", "b_qkv", "w_out", "b_out")),
                                                cfg.heads, mask=mask if cfg.padding == "mask" else None)
        a = host_layer_norm(h, p[b + "ln2.gamma"], p[b + "ln2.beta"], cfg.eps)
        a = host_gelu(a @ p[b + "mlp.fc.w"] + p[b + "mlp.fc.b"], cfg.gelu)
        h = h + a @ p[b + "mlp.proj.w"] + p[b + "mlp.proj.b"]
    return host_layer_norm(h, p["final_ln.gamma"], p["final_ln.beta"], cfg.eps)


@given(data=st.data(), cfg=configs(max_width=6), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_text_encoder_equals_its_equations_on_the_host(backend, data, cfg, seed, dtype):
    """text_encoder_forward == host_text_encoder (the module docstring's equations in float64 on the host,
    attention by the per-query loop) on the same parameters, to the dtype's tolerance times 100 (a few
    chained layer norms, each dividing by a standard deviation); features keep the parameters' kind."""
    tokens, mask = data.draw(captions(cfg))
    params = random_params(T.param_shapes(cfg), seed, dtype)
    y, _ = forward(backend, params, cfg, tokens, mask)
    assert_same_array_kind(y, backend.asarray(params["final_ln.gamma"]))
    assert y.shape == tokens.shape + (cfg.width,)
    assert_close(y, host_text_encoder(params, cfg, tokens, mask), scale=100.0)


@given(data=st.data(), cfg=configs(), seed=seeds)
def test_real_tokens_do_not_see_the_padding(backend, data, cfg, seed):
    """With padding="mask" the features at the real tokens do not depend on the padding: the same
    captions with other ids at the padded positions, or padded to the full context, give the same
    features there (float64). With padding="embedding" the ids at padded positions change nothing at all."""
    tokens, mask = data.draw(captions(cfg))
    mask = np.ones(tokens.shape, bool) if mask is None else mask
    params = random_params(T.param_shapes(cfg), seed)
    y = to_numpy(forward(backend, params, cfg, tokens, mask)[0])
    other = np.where(mask, tokens, (tokens + 1) % cfg.vocab_size)
    y_other = to_numpy(forward(backend, params, cfg, other, mask)[0])
    np.testing.assert_allclose(y_other[mask] if cfg.padding == "mask" else y_other, y[mask] if cfg.padding == "mask"
                               else y, rtol=1e-12, atol=1e-12)
    if cfg.padding == "mask":
        extra = cfg.context_length - tokens.shape[1]
        longer, longer_mask = np.pad(tokens, ((0, 0), (0, extra))), np.pad(mask, ((0, 0), (0, extra)))
        y_long = to_numpy(forward(backend, params, cfg, longer, longer_mask)[0])
        np.testing.assert_allclose(y_long[:, :tokens.shape[1]][mask], y[mask], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", T.PADDINGS)
def test_the_empty_caption_is_finite_and_the_same_for_any_ids(backend, padding):
    """An all-False mask (the empty caption of classifier-free guidance) gives finite features and
    gradients, and the same features whatever the ids: with padding="mask" every query attends to
    nothing, so the output is a function of the positions (and the padding token) only."""
    cfg = T.TextEncoderConfig(vocab_size=5, context_length=4, width=4, layers=2, heads=2, padding=padding)
    params = T.init_params(cfg, Generator(0), np.float64)
    mask = np.zeros((2, 4), bool)
    tokens = np.zeros((2, 4), np.int64)
    y, cache = forward(backend, params, cfg, tokens, mask)
    grads = T.text_encoder_backward(backend.asarray(host_data(1, (2, 4, 4))), cache)
    assert all(np.all(np.isfinite(to_numpy(a))) for a in (y, *grads.values()))
    assert_close(y[0, ...], to_numpy(y[1, ...]))


# ---------------------------------------------------------------------------------- torch parity

def torch_text_encoder(torch, tp, cfg, tokens, mask):
    """The same encoder written with torch.nn.functional: embedding, layer_norm, gelu and
    scaled_dot_product_attention (boolean mask), with refdiff's (C_in, C_out) weights."""
    F = torch.nn.functional
    N, L = tokens.shape
    C, d = cfg.width, cfg.width // cfg.heads
    h = F.embedding(torch.tensor(tokens), tp["token_embed.table"]) + tp["position_embed.table"][:L]
    keep = torch.ones(N, L, dtype=torch.bool) if mask is None else torch.tensor(mask)
    if cfg.padding == "embedding":
        h = torch.where(keep[..., None], h, tp["padding_embed.table"][:L])
    attn_mask = keep[:, None, None, :] if cfg.padding == "mask" else None
    for i in range(cfg.layers):
        p = {k[len(f"blocks.{i}."):]: v for k, v in tp.items() if k.startswith(f"blocks.{i}.")}
        a = F.layer_norm(h, (C,), p["ln1.gamma"], p["ln1.beta"], eps=cfg.eps)
        qkv = (a @ p["attn.w_qkv"] + p["attn.b_qkv"]).split(C, -1)
        q, k, v = (t.reshape(N, L, cfg.heads, d).transpose(1, 2) for t in qkv)  # (N, heads, L, d)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(N, L, C)
        h = h + o @ p["attn.w_out"] + p["attn.b_out"]
        a = F.layer_norm(h, (C,), p["ln2.gamma"], p["ln2.beta"], eps=cfg.eps)
        a = F.gelu(a @ p["mlp.fc.w"] + p["mlp.fc.b"], approximate=cfg.gelu)
        h = h + a @ p["mlp.proj.w"] + p["mlp.proj.b"]
    return F.layer_norm(h, (C,), tp["final_ln.gamma"], tp["final_ln.beta"], eps=cfg.eps)


@settings(max_examples=10)
@given(data=st.data(), cfg=configs(max_width=6), seed=seeds)
def test_text_encoder_matches_the_torch_twin(data, cfg, seed):
    """text_encoder_forward and text_encoder_backward == the torch twin and autograd's gradients of
    sum(features * dfeatures) for every parameter (float64, relative 1e-10), empty captions included."""
    torch = pytest.importorskip("torch")
    tokens, mask = data.draw(captions(cfg))
    params = random_params(T.param_shapes(cfg), seed)
    dout = host_data(seed + 99, tokens.shape + (cfg.width,))
    y, cache = T.text_encoder_forward(params, cfg, tokens, mask)
    grads = T.text_encoder_backward(dout, cache)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ty = torch_text_encoder(torch, tp, cfg, tokens, mask)
    (ty * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, tp[k].grad.numpy(), rtol=1e-10, atol=1e-11, err_msg=k)


# ------------------------------------------------------------------------------ dtype discipline

@pytest.mark.parametrize("padding", T.PADDINGS)
def test_float32_encoder_creates_no_float64_and_keeps_the_array_kind(backend, padding):
    """float32 forward and backward create no float64 array (tripwire on array_api_strict); features and
    every gradient are of the parameters' library, device and dtype."""
    cfg = T.TextEncoderConfig(vocab_size=5, context_length=4, width=4, layers=1, heads=2, padding=padding, gelu="none")
    params = on(backend, T.init_params(cfg, Generator(0), np.float32))
    tokens, mask = backend.asarray(np.array([[1, 2, 0, 0], [0, 0, 0, 0]])), backend.asarray(np.arange(4) < [[2], [0]])
    with float64_tripwire(backend):
        y, cache = T.text_encoder_forward(params, cfg, tokens, mask)
        grads = T.text_encoder_backward(y, cache)
    for key, out in [("final_ln.gamma", y), *grads.items()]:
        assert_same_array_kind(out, params[key])


@pytest.mark.parametrize("padding", T.PADDINGS)
def test_float32_features_are_the_float64_features_rounded(backend, padding):
    """init_params from one seed in float32 and float64 give parameters equal to float32 rounding, and
    features and gradients equal to the float32 tolerance times 100 (chained layer norms)."""
    cfg = T.TextEncoderConfig(vocab_size=6, context_length=5, width=8, layers=2, heads=2, padding=padding)
    p32, p64 = (T.init_params(cfg, Generator(3), dt) for dt in (np.float32, np.float64))
    for k in p64:
        np.testing.assert_array_equal(p32[k], p64[k].astype(np.float32))
    tokens, mask = np.array([[1, 2, 3, 0, 0], [4, 5, 5, 2, 1]]), np.arange(5) < np.array([[3], [5]])
    y32, c32 = forward(backend, p32, cfg, tokens, mask)
    y64, c64 = forward(backend, p64, cfg, tokens, mask)
    assert_close(y32, to_numpy(y64), scale=100.0)
    dy = host_data(0, (2, 5, 8))
    g32 = T.text_encoder_backward(backend.asarray(dy.astype(np.float32)), c32)
    g64 = T.text_encoder_backward(backend.asarray(dy), c64)
    for k in g64:
        assert_close(g32[k], to_numpy(g64[k]), scale=100.0)


# ------------------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("padding, extra", [("mask", 0), ("embedding", 5 * 8)])
def test_param_shapes_count_and_init(padding, extra):
    """param_count is the total of param_shapes (GLIDE's padding table adds ctx * C); init_params gives
    unit-variance tables, LeCun weights (std 1/sqrt(fan_in)), zero biases and betas, unit gammas."""
    cfg = T.TextEncoderConfig(vocab_size=6, context_length=5, width=8, layers=2, heads=2, mlp_ratio=4, padding=padding)
    per_block = 2 * 8 + (8 * 24 + 24) + (8 * 8 + 8) + 2 * 8 + (8 * 32 + 32) + (32 * 8 + 8)
    assert T.param_count(cfg) == 6 * 8 + 5 * 8 + extra + 2 * per_block + 2 * 8
    params = T.init_params(cfg, Generator(0), np.float64)
    assert {k: v.shape for k, v in params.items()} == T.param_shapes(cfg)
    assert all(np.all(params[k] == 1) for k in params if k.endswith("gamma"))
    assert all(np.all(params[k] == 0) for k in params if k.endswith(("beta", ".b", "b_qkv", "b_out")))
    assert 0.5 < np.std(params["token_embed.table"]) < 1.5
    assert 0.5 < np.std(params["blocks.0.mlp.proj.w"]) * math.sqrt(32) < 1.5


# ------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("kwargs, message", [
    ({"heads": 3}, "heads must divide width = 8, got 3"),
    ({"layers": -1}, "layers must be an integer >= 0, got -1"),
    ({"vocab_size": 0}, "vocab_size must be an integer >= 1, got 0"),
    ({"padding": "learned"}, "padding must be one of mask, embedding, got 'learned'"),
    ({"gelu": "erf"}, "gelu must be one of tanh, none, got 'erf'"),
    ({"eps": 0.0}, "eps must be a positive finite float, got 0.0"),
])
def test_bad_config_fields_raise_naming_the_field(kwargs, message):
    """A config with a head count not dividing the width, a negative depth, an empty vocabulary, an
    unknown padding or GELU form, or eps <= 0 raises a ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        T.TextEncoderConfig(**{"width": 8, "heads": 2, **kwargs})


CFG = T.TextEncoderConfig(vocab_size=5, context_length=4, width=4, layers=1, heads=2)


@pytest.mark.parametrize("change, message", [
    ({"tokens": np.array([[1, 5]])}, r"tokens must hold ids in \[0, 4\]"),
    ({"tokens": np.zeros((1, 5), np.int64)},
     r"tokens must be an \(N, L\) integer array .* 1 <= L <= context_length = 4"),
    ({"tokens": np.zeros((1, 2))}, r"tokens must be an \(N, L\) integer array"),
    ({"mask": np.ones((1, 3), bool)}, r"mask must be None or a bool array of tokens' shape \(1, 2\)"),
    ({"mask": np.ones((1, 2))}, "mask must be None or a bool array"),
    ({"params.final_ln.beta": np.zeros(3)}, r"params\['final_ln.beta'\] must have shape \(4,\)"),
    ({"params.final_ln.beta": np.zeros(4, np.float32)}, r"params\['final_ln.beta'\] must be an array of the library"),
    ({"cfg": T.TextEncoderConfig(vocab_size=5, context_length=4, width=4, layers=2, heads=2)},
     "params must have the keys"),
])
def test_bad_forward_arguments_raise_naming_the_argument(backend, change, message):
    """Out-of-range or mis-shaped tokens, a mask not like tokens, a parameter of the wrong shape or dtype,
    and parameters of another config raise a ValueError naming the argument."""
    params = T.init_params(CFG, Generator(0), np.float64)
    args = {"tokens": np.array([[1, 2]]), "mask": None, "cfg": CFG}
    for key, value in change.items():
        if key.startswith("params."):
            params[key[len("params."):]] = value
        else:
            args[key] = value
    mask = None if args["mask"] is None else backend.asarray(args["mask"])
    with pytest.raises(ValueError, match=message):
        T.text_encoder_forward(on(backend, params), args["cfg"], backend.asarray(args["tokens"]), mask)


def test_bad_init_and_backward_arguments_raise(backend):
    """init_params rejects a non-refdiff generator, a non-floating dtype and a non-config; the backward
    rejects dfeatures of another shape or dtype and a cache that is not the encoder's."""
    for args, message in init_bad_arguments(CFG, "a TextEncoderConfig"):
        with pytest.raises(ValueError, match=message):
            T.init_params(*args)
    y, cache = forward(backend, T.init_params(CFG, Generator(0), np.float64), CFG, np.array([[1, 2]]), None)
    with pytest.raises(ValueError, match=r"dfeatures must have the features' shape \(1, 2, 4\)"):
        T.text_encoder_backward(backend.asarray(np.zeros((1, 2, 3))), cache)
    with pytest.raises(ValueError, match="dfeatures must have"):
        T.text_encoder_backward(backend.asarray(np.zeros((1, 2, 4), np.float32)), cache)
    with pytest.raises(ValueError, match="cache must be the TextEncoderCache"):
        T.text_encoder_backward(y, cache.final)
