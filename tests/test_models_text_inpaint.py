"""Specification of refdiff.models.text_inpaint: GLIDE's inpainting model, the text U-Net reading [x_t; x0 * keep;
keep] (2C + 1 channels), widened from a text model with zero weights; its training masks; its sampler adapter."""

import dataclasses

import numpy as np
import pytest

from gradcheck import assert_gradients_match
from refdiff.backend import Generator, get_backend, to_numpy
from refdiff.models import registry
from refdiff.models import text_unet as TU
from refdiff.models.text_inpaint import conditioning, inpaint_config, inpaint_model, inpaint_params, random_keep
from refdiff.samplers import classifier_free_guidance
from support import TOLERANCE, assert_same_array_kind, host_data, on, random_params
from test_models_text_unet import SMALL, TOKENS

INPAINT = inpaint_config(SMALL)  # C = 2: the U-Net reads 5 channels
_NUMPY = get_backend("numpy")


def _inputs(seed=0, N=3):
    """x_t (N, 2, 8, 8), t (N,), the known image (N, 2, 8, 8) and keep (N, 1, 8, 8): box masks of seed."""
    xt, known = host_data(seed, (N, 2, 8, 8)), host_data(seed + 1, (N, 2, 8, 8))
    return xt, np.array([3, 500, 999][:N]), known, random_keep(Generator(seed), N, 8, like=xt)


def test_inpaint_config_reads_2c_plus_1_channels_and_old_configs_load():
    """inpaint_config(cfg): unet.in_channels 2C + 1, inpaint True, cfg.in_channels still the image's C; a
    checkpoint's config dict without the field (saved before it existed) loads as a text model."""
    unet = INPAINT.unet
    assert (unet.in_channels, unet.out_channels, INPAINT.in_channels, INPAINT.inpaint) == (5, 2, 2, True)
    old = registry.config_to_dict(SMALL)
    del old["inpaint"]
    assert registry.config_from_dict(old) == SMALL and not SMALL.inpaint
    assert registry.config_from_dict(registry.config_to_dict(INPAINT)) == INPAINT


def test_bad_inpaint_configs_raise():
    """inpaint=True with in_channels != 2C + 1, a non-bool, and widening an inpainting model again raise
    ValueErrors naming the field."""
    with pytest.raises(ValueError, match=r"inpaint must be a bool, and True only with unet.in_channels = .* = 5"):
        dataclasses.replace(SMALL, inpaint=True)
    with pytest.raises(ValueError, match="inpaint must be a bool"):
        dataclasses.replace(SMALL, inpaint=1)
    with pytest.raises(ValueError, match=r"cfg must be a text model's TextUNetConfig \(inpaint=False\)"):
        inpaint_config(INPAINT)


def test_widened_text_model_equals_the_text_model_whatever_the_conditioning(backend):
    """out_inpaint([x_t; x0 * keep; keep], t, y) == out_text(x_t, t, y) for the params inpaint_params(text params):
    the new channels' first-conv weights are zero (to float64 rounding: BLAS may add the zero terms in
    another order), so fine-tuning starts from the text model exactly; the same holds through inpaint_model."""
    cfg = dataclasses.replace(SMALL, unet=dataclasses.replace(SMALL.unet, dropout=0.0))
    params = random_params(TU.param_shapes(cfg), 2)
    wide = inpaint_params(params, cfg)
    assert list(wide) == list(TU.param_shapes(inpaint_config(cfg)))
    np.testing.assert_array_equal(wide["input.conv.w"][:, :, 2:], 0.0)
    xt, t, known, keep = (backend.asarray(a) for a in _inputs())
    y = backend.asarray(TOKENS)
    text = TU.text_unet_forward(on(backend, params), cfg, xt, t, y)[0]
    model = inpaint_model(TU.text_unet_model(on(backend, wide), inpaint_config(cfg)), known, keep)
    out = model(xt, t, y)
    assert_same_array_kind(out, xt)
    np.testing.assert_allclose(to_numpy(out), to_numpy(text), *TOLERANCE["float64"])


def test_backward_through_the_conditioning_channels_matches_finite_differences(backend):
    """For the inpainting model, text_unet_backward's dx on all 2C + 1 input channels (x_t's, and the known
    image's and mask's) and the gradients of the first convolution (whose weights read the new channels)
    and of the caption's parameters equal the float64 finite-difference gradients of sum(out * dout), in
    training mode with dropout (tests/gradcheck.py); the input is [x_t; conditioning(known, keep)]."""
    xt, t, known, keep = _inputs(4)
    x = np.concatenate([xt, to_numpy(conditioning(known, keep))], axis=1)  # (3, 5, 8, 8)
    params = random_params(TU.param_shapes(INPAINT), 5)
    dout = host_data(6, (3, INPAINT.unet.output_channels, 8, 8))

    def run(b, arrays, keep_cache=True):
        p = {k: b.asarray(v) for k, v in arrays.items() if k != "x"}
        return TU.text_unet_forward(p, INPAINT, b.asarray(arrays["x"]), b.asarray(t), b.asarray(TOKENS), train=True,
                                    generator=Generator(7), keep_cache=keep_cache)

    def loss(arrays):
        return float(np.sum(run(_NUMPY, arrays, keep_cache=False)[0] * dout))

    arrays = dict(params, x=x)
    out, cache = run(backend, arrays)
    np.testing.assert_allclose(to_numpy(out), run(_NUMPY, arrays, keep_cache=False)[0], rtol=1e-12, atol=1e-12)
    grads, dx = TU.text_unet_backward(backend.asarray(dout), cache, need_dx=True)
    checked = {k: to_numpy(v) for k, v in grads.items() if k.startswith(("input.", "text_embed", "text.token"))}
    assert_gradients_match(loss, arrays, dict(checked, x=to_numpy(dx)))
    assert np.all(np.abs(to_numpy(grads["input.conv.w"])[:, :, 2:]).sum(axis=(0, 1, 3)) > 0)  # every new channel


def test_forward_of_x_t_alone_names_the_conditioning_channels(backend):
    """An inpainting model fed x_t of C channels (as `refdiff sample` would) raises a ValueError that names
    the 2C + 1 channels it reads and the adapter that adds them."""
    xt, t, _, _ = _inputs()
    with pytest.raises(ValueError, match=r"x must be \(N, 5, H, W\) for an inpainting model.*inpaint_model"):
        TU.text_unet_forward(on(backend, random_params(TU.param_shapes(INPAINT), 0)), INPAINT, backend.asarray(xt),
                             backend.asarray(t), backend.asarray(TOKENS))


@pytest.mark.parametrize("size", [8, 16])
def test_random_keep_repaints_a_quadrant_or_a_box(backend, size):
    """random_keep gives (n, 1, S, S) masks of 0 and 1 in like's kind, each 0 on one axis-aligned rectangle
    and 1 elsewhere: a quadrant (S/2 a side at a corner) or a box with sides in [S/4, 3S/4]; both kinds
    appear, and the same seed gives the same masks."""
    like = backend.asarray(np.zeros(1, dtype=np.float32))
    keep = random_keep(Generator(3), 200, size, like)
    assert_same_array_kind(keep, like)
    m = to_numpy(keep)
    assert m.shape == (200, 1, size, size) and set(np.unique(m)) == {0.0, 1.0}
    quadrants = 0
    for hole in m[:, 0] == 0:
        rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
        assert hole[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a rectangle: its bounding box is full
        h, w, half = rows.size, cols.size, size // 2
        if h == w == half and rows[0] in (0, half) and cols[0] in (0, half):
            quadrants += 1
        else:
            assert size // 4 <= min(h, w) and max(h, w) <= 3 * size // 4
    assert 60 < quadrants < 140  # half of 200, give or take boxes that happen to be quadrants
    np.testing.assert_array_equal(to_numpy(random_keep(Generator(3), 200, size, like)), m)


def test_inpaint_model_repeats_its_conditioning_for_guidance(backend):
    """classifier_free_guidance(inpaint_model(m, known, keep)) calls m on [x_t; x_t] with the conditioning
    channels repeated: it equals the guidance formula applied to m's two calls with [x_t; cond]; a batch that
    is not a multiple of the image's rows raises."""
    params = on(backend, random_params(TU.param_shapes(INPAINT), 8))
    base = TU.text_unet_model(params, INPAINT)
    xt, t, known, keep = (backend.asarray(a) for a in _inputs(9))
    y, xp = backend.asarray(TOKENS), backend.xp
    guided = classifier_free_guidance(inpaint_model(base, known, keep), 3.0, null_label=0)(xt, t, y)
    x_in = xp.concat([xt, conditioning(known, keep)], axis=1)
    cond, uncond = to_numpy(base(x_in, t, y)), to_numpy(base(x_in, t, None))
    C = INPAINT.in_channels
    expected = np.concatenate([uncond[:, :C] + 3.0 * (cond[:, :C] - uncond[:, :C]), cond[:, C:]], axis=1)
    np.testing.assert_allclose(to_numpy(guided), expected, *TOLERANCE["float64"])
    with pytest.raises(ValueError, match="xt must have a multiple of 3 rows"):
        inpaint_model(base, known, keep)(xt[:2, ...], t[:2], y[:2, ...])
