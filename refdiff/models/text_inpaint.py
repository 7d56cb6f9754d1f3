"""GLIDE's text-guided inpainting model (Nichol et al. 2021, Sec. 3.3 and 4): the text-conditional U-Net of
refdiff.models.text_unet reading C + 1 more input channels, fine-tuned from a text model on random masks.

    keep   (N, 1, H, W) in {0, 1}: 1 where the pixel is known (kept), 0 in the region to repaint
    input  = [x_t ; x0 * keep ; keep]          (N, 2C + 1, H, W): GLIDE's concatenation (its
                                                 text2im_model.InpaintText2ImUNet: the known image masked
                                                 to the kept pixels, then the mask with 1 = kept)
    output = eps, x0 or v of x_t alone          (N, C, H, W): the loss is on the whole image

The mask convention is GLIDE's and refdiff.samplers.inpaint_loop's, 1 = known. A text model becomes an
inpainting model by ``inpaint_config`` (unet.in_channels C -> 2C + 1, inpaint=True) and ``inpaint_params``
(the first convolution's weights for the C + 1 new channels are zero), so that before fine-tuning the
inpainting model's output is the text model's exactly, whatever the conditioning channels hold.

Training draws a mask per image (``random_keep``): a quadrant, or a box of random size and place, to
repaint. Sampling fixes the conditioning channels of one image and mask and hands any sampler the model
``inpaint_model(model, known, keep)(x_t, t, y)``. The page beside this module: docs/glide.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from refdiff.backend import Generator, asarray, namespace
from refdiff.models.text_unet import TextUNetConfig

FIRST_CONV = "input.conv.w"  # (kh, kw, C_in, C_out): the one weight that reads the input's channels
BOX_SIDES = (0.25, 0.75)  # a random box's height and width: a fraction of the side in [1/4, 3/4] (whole pixels)


def inpaint_config(cfg: TextUNetConfig) -> TextUNetConfig:
    """The inpainting model of the text model ``cfg``: the same architecture with unet.in_channels = 2C + 1
    (x_t, x0 * keep, keep) and inpaint=True. Raises ValueError for a config that inpaints already."""
    if not isinstance(cfg, TextUNetConfig) or cfg.inpaint:
        raise ValueError(f"cfg must be a text model's TextUNetConfig (inpaint=False), got "
                         f"{getattr(cfg, 'inpaint', type(cfg).__name__)!r}")
    unet = dataclasses.replace(cfg.unet, in_channels=2 * cfg.unet.in_channels + 1)
    return dataclasses.replace(cfg, unet=unet, inpaint=True)


def inpaint_params(params: dict, cfg: TextUNetConfig) -> dict:
    """The text model's parameters (of ``cfg``, host arrays) as the inpainting model's, inpaint_config(cfg):
    every array the same but the first convolution's weight, (3, 3, C, F) -> (3, 3, 2C + 1, F) with zeros
    for the new input channels. So out_inpaint([x_t; anything], t, y) == out_text(x_t, t, y) exactly."""
    w = np.asarray(params[FIRST_CONV])
    C = cfg.unet.in_channels
    if w.ndim != 4 or w.shape[2] != C:
        raise ValueError(f"params[{FIRST_CONV!r}] must be (kh, kw, {C}, F) (cfg's text model), got shape {w.shape}")
    zeros = np.zeros((*w.shape[:2], C + 1, w.shape[3]), dtype=w.dtype)  # (kh, kw, C + 1, F)
    return {k: (np.concatenate([w, zeros], axis=2) if k == FIRST_CONV else v) for k, v in params.items()}


def conditioning(known: Any, keep: Any) -> Any:
    """The conditioning channels [x0 * keep ; keep]: known (N, C, H, W), keep (N, 1, H, W) of known's
    library, device and dtype. Returns (N, C + 1, H, W)."""
    xp = namespace(known, keep)
    return xp.concat([known * keep, keep], axis=1)  # (N, C + 1, H, W)


def random_keep(generator: Generator, n: int, size: int, like: Any) -> Any:
    """n masks to train on, keep = 0 in the region to repaint, 1 elsewhere: each, with probability 1/2, one
    of the four quadrants (uniform), else a box with height and width uniform among the whole pixels in
    [size / 4, 3 size / 4] and its corner uniform among the places where it fits.

    Draws (host, in this order): n coin flips, n quadrants, n heights, n widths, n rows, n columns (all
    drawn, used or not: the stream does not depend on the flips). Returns (n, 1, size, size) in like's
    library, device and dtype.
    """
    lo, hi = max(1, round(BOX_SIDES[0] * size)), max(1, round(BOX_SIDES[1] * size))
    quadrant = generator.uniform((n,)) < 0.5                            # (n,) host
    q = generator.integers(0, 4, (n,))                                  # refdiff.data.captions' POSITIONS order
    h, w = generator.integers(lo, hi + 1, (n,)), generator.integers(lo, hi + 1, (n,))
    top = np.floor(generator.uniform((n,)) * (size - h + 1)).astype(np.int64)
    left = np.floor(generator.uniform((n,)) * (size - w + 1)).astype(np.int64)
    half = size // 2
    top, left = np.where(quadrant, (q // 2) * half, top), np.where(quadrant, (q % 2) * half, left)
    h, w = np.where(quadrant, half, h), np.where(quadrant, half, w)  # a quadrant: size // 2 pixels a side
    rows, cols = np.arange(size)[None, :, None], np.arange(size)[None, None, :]  # (1, S, 1), (1, 1, S)
    inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None]) &
              (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))  # (n, S, S)
    return asarray((~inside)[:, None].astype(np.float64), like=like, dtype=like.dtype)  # (n, 1, S, S)


def inpaint_model(model: Callable, known: Any, keep: Any) -> Callable:
    """The sampler protocol model(x_t, t, y) of an inpainting model with its conditioning channels fixed.

    model: the inpainting model's own protocol over the 2C + 1 channels (text_unet_model); known (N, C, H, W)
    the image (read only where keep = 1), keep (N, 1, H, W) in {0, 1}, both in the sampler's library,
    device and dtype. The returned model takes x_t of k N rows for any integer k (classifier-free guidance
    doubles the batch: the conditioning channels repeat) and returns model([x_t; x0 * keep; keep], t, y).
    """
    cond = conditioning(known, keep)  # (N, C + 1, H, W)

    def conditioned(xt: Any, t: Any, y: Any = None):
        xp, n = namespace(xt), cond.shape[0]
        if xt.shape[0] % n or xt.shape[2:] != cond.shape[2:]:
            raise ValueError(f"xt must have a multiple of {n} rows and the known image's size {tuple(cond.shape[2:])}, "
                             f"got shape {tuple(xt.shape)}")
        c = xp.concat([cond] * (xt.shape[0] // n), axis=0)  # (k N, C + 1, H, W)
        return model(xp.concat([xt, c], axis=1), t, y)  # the input (k N, 2C + 1, H, W)

    return conditioned
