"""Specification of refdiff.inpaint: text-guided inpainting from a loaded model, by GLIDE's inpainting model or by
replacement on a plain text model, and the report that scores an edit inside and outside its region."""

import dataclasses

import numpy as np
import pytest

from refdiff import schedules
from refdiff.backend import get_backend
from refdiff.data.captions import COLOURS, load_captions, tokenize
from refdiff.generate import LoadedModel, generate
from refdiff.inpaint import check_edit, edit_report, inpaint, method
from refdiff.models import text_unet as TU
from refdiff.models.text_inpaint import inpaint_config, inpaint_params
from refdiff.train import TrainConfig
from support import random_params
from test_train import _tiny_text_config

TEXT = dataclasses.replace(_tiny_text_config(), unet=dataclasses.replace(_tiny_text_config().unet, dropout=0.0))
TRAIN = TrainConfig(T=50, steps=10, warmup_steps=1)
PROMPT = "small red circle bottom right"


def _loaded(cfg, params, dtype="float64") -> LoadedModel:
    """A LoadedModel of cfg with host params, on NumPy in dtype, trained (nominally) with TRAIN."""
    like = get_backend("numpy").asarray(np.zeros(1), dtype=np.dtype(dtype))
    params = {k: v.astype(dtype) for k, v in params.items()}
    return LoadedModel(TU.text_unet_model(params, cfg), cfg, dataclasses.asdict(TRAIN), (3, 16, 16),
                       schedules.by_name(TRAIN.schedule, TRAIN.T), like)


def _image_and_keep(n=2):
    """n captioned images (n, 3, 16, 16) and keep 0 on their bottom-right quadrant, (n, 1, 16, 16)."""
    x, _, _ = load_captions(n, seed=5)
    keep = np.ones((n, 1, 16, 16))
    keep[:, :, 8:, 8:] = 0
    return x.astype(np.float64), keep


def test_replacement_on_a_text_model_keeps_the_known_pixels_exactly():
    """A text model's checkpoint inpaints by replacement: the edits equal the image exactly where keep = 1,
    and differ from it in the region; RePaint's resampling (resample 2) keeps them exactly too."""
    loaded = _loaded(TEXT, random_params(TU.param_shapes(TEXT), 0))
    x, keep = _image_and_keep()
    assert method(loaded) == "replacement"
    for resample in (1, 2):
        edits = inpaint(loaded, x, keep, PROMPT, steps=3, resample=resample, jump_length=1)
        np.testing.assert_array_equal(np.where(keep == 1, edits, 0.0), np.where(keep == 1, x, 0.0))
        assert np.abs(edits - x)[..., 8:, 8:].max() > 0.1


def test_a_widened_text_model_inpaints_as_the_text_model_samples():
    """The inpainting model of inpaint_params(text params) ignores its conditioning channels (zero weights), so
    its edits with DDIM and guidance are the text model's samples of the same prompt and seed (generate),
    to float64 rounding: the sampler runs with the conditioning fixed, on the text model's noise."""
    params = random_params(TU.param_shapes(TEXT), 1)
    text = _loaded(TEXT, params)
    wide = _loaded(inpaint_config(TEXT), inpaint_params(params, TEXT))
    x, keep = _image_and_keep()
    assert method(wide) == "model"
    edits = inpaint(wide, x, keep, [PROMPT, "large cyan ring"], "ddim", steps=3, guidance=2.0, seed=4)
    samples = generate(text, x.shape, tokenize([PROMPT, "large cyan ring"])[0], "ddim", 3, guidance=2.0, seed=4)
    np.testing.assert_allclose(edits, samples, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("change, message", [
    (lambda x, m, p: (x[:, :2], m, p), r"image must be \(N, 3, 16, 16\) floats"),
    (lambda x, m, p: (2 * x, m, p), r"image must hold finite values in \[-1, 1\]"),
    (lambda x, m, p: (x, m[..., :8], p), r"keep must be \(2 or 1, 1, 16, 16\) \(the image's size\)"),
    (lambda x, m, p: (x, 0.5 * m, p), r"keep must hold only 0 \(repaint\) and 1 \(known\)"),
    (lambda x, m, p: (x, np.ones_like(m), p), "keep must mark a region to repaint"),
    (lambda x, m, p: (x, m, [p] * 3), "prompts must be one str or 2 .* got 3"),
])
def test_bad_edits_raise_naming_the_argument(change, message):
    """A wrong image shape or range, a keep of another size, non-binary or without a region, and a prompt count
    other than 1 or N raise ValueErrors naming the argument and what is allowed."""
    loaded = _loaded(TEXT, random_params(TU.param_shapes(TEXT), 0))
    x, keep = _image_and_keep()
    with pytest.raises(ValueError, match=message):
        check_edit(loaded, *change(x, keep, PROMPT))


def test_method_settings_are_checked():
    """Replacement runs DDPM steps only; an inpainting model takes no RePaint settings; a model that is not a
    text model cannot take a prompt."""
    params = random_params(TU.param_shapes(TEXT), 0)
    x, keep = _image_and_keep()
    with pytest.raises(ValueError, match="sampler must be 'ddpm' for replacement"):
        inpaint(_loaded(TEXT, params), x, keep, PROMPT, "ddim", steps=2)
    with pytest.raises(ValueError, match="jump_length and resample are replacement's"):
        inpaint(_loaded(inpaint_config(TEXT), inpaint_params(params, TEXT)), x, keep, PROMPT, steps=2, resample=2)
    from refdiff.models.unet import UNetConfig

    with pytest.raises(ValueError, match="needs a text model or its inpainting model"):
        method(dataclasses.replace(_loaded(TEXT, params), model_cfg=UNetConfig()))


def test_edit_report_reads_the_region_alone_and_the_mean_change_outside():
    """edit_report: a perfect edit (the image itself, its shape inside the region) reads its own colour, and
    another named colour reads wrong; outside, an edit raised by 0.1 on every known value gives a mean
    absolute change of 0.1 and a largest of 0.1, while the region's own change does not count; a pixel
    changed by more than 1/2 in one channel counts as a visibly changed pixel."""
    x, _, attributes = load_captions(200, seed=2)
    inside = (attributes["position"] == 3) & np.all(x[:, :, :8, :] == -1, axis=(1, 2, 3)) & \
        np.all(x[:, :, :, :8] == -1, axis=(1, 2, 3))  # the shape lies in the bottom-right quadrant
    x, colour = x[inside][:3].astype(np.float64), attributes["colour"][inside][:3]
    keep = np.ones((x.shape[0], 1, 16, 16))
    keep[:, :, 8:, 8:] = 0
    right = edit_report(x, x, keep, {"colour": colour})
    wrong = edit_report(x, x, keep, {"colour": (colour + 1) % len(COLOURS)})
    assert right["fidelity"]["fraction"]["colour"] == 1.0 and wrong["fidelity"]["fraction"]["colour"] == 0.0
    assert right["outside_change"] == 0.0 and right["fidelity"]["named"]["shape"] == 0
    edited = np.where(keep == 1, x + 0.1, -x)
    report = edit_report(edited, x, keep, {"colour": colour})
    assert report["outside_change"] == pytest.approx(0.1) and report["outside_max"] == pytest.approx(0.1)
    assert report["outside_pixels"] == 0 and report["known_pixels"] == 3 * 192
    edited[:, 1, 0, 0] += 0.6  # one pixel of each image changes visibly (in one channel)
    assert edit_report(np.clip(edited, -1, 1), x, keep, {"colour": colour})["outside_pixels"] == 3
