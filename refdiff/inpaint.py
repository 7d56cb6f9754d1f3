"""Text-guided inpainting from a checkpoint (GLIDE, Nichol et al. 2021, Sec. 3.3 and 4), two ways, and how an
edit is scored.

    "model"        GLIDE's inpainting model (refdiff.models.text_inpaint: the text U-Net fine-tuned to read
                   [x_t; x0 * keep; keep]): any sampler of refdiff.generate, its conditioning channels fixed
                   to the image and the mask; the known pixels come out of the model, close to the input
    "replacement"  a plain text model with replacement (RePaint's resampling with resample > 1;
                   refdiff.samplers.inpaint_loop): after every DDPM step the known region is replaced by
                   the input noised to that level, so the known pixels come out exactly equal to the input

Which one runs follows from the checkpoint: an inpainting model's, or a text model's. Both take the
prompts' tokens and classifier-free guidance. ``edit_report`` scores edits: inside the region, the caption
fidelity of refdiff.captions_eval on the region alone; outside, the mean absolute change from the input.
The mask is ``keep``: 1 where the pixel is known (kept), 0 in the region to repaint (GLIDE's convention).
The page beside this module: docs/glide.md, "Text-guided inpainting".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, asarray, to_numpy
from refdiff.captions_eval import caption_fidelity
from refdiff.data.captions import ATTRIBUTES, tokenize
from refdiff.generate import LoadedModel, check_sampling, generate
from refdiff.models import registry
from refdiff.models.text_inpaint import inpaint_model
from refdiff.samplers import classifier_free_guidance, final, inpaint_loop
from refdiff.train import TrainConfig

METHODS = ("model", "replacement")


def method(loaded: LoadedModel) -> str:
    """"model" for an inpainting model's checkpoint, "replacement" for a text model's; else ValueError."""
    cfg = loaded.model_cfg
    if registry.family(cfg).condition != "tokens":
        raise ValueError(f"inpainting with a prompt needs a text model or its inpainting model (trained with "
                         f"--data captions), got a {type(cfg).__name__}")
    return "model" if cfg.inpaint else "replacement"


def check_edit(loaded: LoadedModel, image: Any, keep: Any, prompts: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """image (N, C, H, W) floats in [-1, 1] of the model's sample shape; keep (N, 1, H, W) (or (1, 1, H, W), for
    every image) holding only 0 and 1, with at least one 0 per image; prompts: one str, or N. Returns them as
    host float arrays of the model's dtype, keep broadcast to (N, 1, H, W), and the N prompts; ValueError naming
    the argument otherwise."""
    x, m = np.asarray(image), np.asarray(keep)
    shape = tuple(loaded.data_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape or x.shape[0] < 1 or x.dtype.kind != "f":
        raise ValueError(f"image must be (N, {', '.join(map(str, shape))}) floats (the model's samples), got shape "
                         f"{x.shape} and dtype {x.dtype}")
    if not np.all(np.abs(x) <= 1):
        raise ValueError("image must hold finite values in [-1, 1]")
    if m.ndim != 4 or m.shape[0] not in (1, x.shape[0]) or tuple(m.shape[1:]) != (1, *shape[1:]):
        raise ValueError(f"keep must be ({x.shape[0]} or 1, 1, {shape[1]}, {shape[2]}) (the image's size), got "
                         f"shape {m.shape}")
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("keep must hold only 0 (repaint) and 1 (known) values")
    m = np.broadcast_to(m, (x.shape[0], *m.shape[1:]))
    if np.any(m.reshape(m.shape[0], -1).min(axis=1) == 1):
        raise ValueError("keep must mark a region to repaint (a 0) in every image, got an image kept whole")
    listed = [prompts] * x.shape[0] if isinstance(prompts, str) else list(prompts)
    if len(listed) != x.shape[0]:
        raise ValueError(f"prompts must be one str or {x.shape[0]} (one per image), got {len(listed)}")
    dtype = to_numpy(loaded.like).dtype
    return x.astype(dtype), m.astype(dtype), listed


def inpaint(loaded: LoadedModel, image: Any, keep: Any, prompts: Any, sampler: str | None = None, steps: int = 50,
            eta: float = 0.0, guidance: float = 3.0, seed: int = 0, jump_length: int = 1,
            resample: int = 1) -> np.ndarray:
    """Repaint ``image`` where keep = 0 to match ``prompts``, by the checkpoint's method (module docstring).

    "model": generate(...) with the sampler protocol inpaint_model(model, image, keep) (x_T ~ N(0, I) from
             ``seed``; any sampler of refdiff.generate.SAMPLERS, default "ddim"; eta: DDIM's)
    "replacement": inpaint_loop on the schedule respaced to ``steps`` (trailing), x_T from ``seed``, its
             draws from seed + 1; sampler "ddpm" only (the default; its moves are DDPM steps);
             jump_length, resample: RePaint's (1, 1: plain replacement)
    Both clip the predicted x0 to [-1, 1] and guide with classifier-free guidance of scale ``guidance``.

    image, keep, prompts: as check_edit. Returns the edits as a host array like image.
    """
    x, m, listed = check_edit(loaded, image, keep, prompts)
    how = method(loaded)
    sampler = sampler or ("ddim" if how == "model" else "ddpm")
    if how == "model" and (jump_length, resample) != (1, 1):
        raise ValueError(f"jump_length and resample are replacement's (a text model's checkpoint), not an inpainting "
                         f"model's: leave them 1, got {jump_length} and {resample}")
    if how == "replacement" and sampler != "ddpm":
        raise ValueError(f"sampler must be 'ddpm' for replacement inpainting (a text model's: its moves are DDPM "
                         f"steps), got {sampler!r}")
    check_sampling(sampler, steps, guidance, loaded.schedule.T)
    tokens = tokenize(listed, context=loaded.model_cfg.text.context_length)[0]  # (N, ctx)
    known, kept = asarray(x, like=loaded.like), asarray(m, like=loaded.like)
    if how == "model":
        conditioned = dataclasses.replace(loaded, model=inpaint_model(loaded.model, known, kept))
        return generate(conditioned, x.shape, tokens, sampler, steps, eta, guidance, seed)
    model = loaded.model
    if guidance != 1.0:
        model = classifier_free_guidance(model, guidance, null_label=registry.null_condition(loaded.model_cfg))
    respaced = schedules.respace(loaded.schedule, schedules.timesteps(loaded.schedule.T, steps, "trailing"))
    x_T = Generator(seed).normal(x.shape, like=loaded.like)
    loop = inpaint_loop(model, respaced, x_T, known, kept, Generator(seed + 1), asarray(tokens, like=loaded.like),
                        jump_length, resample, TrainConfig(**loaded.train_cfg).parameterization(), clip_x0=1.0)
    return to_numpy(final(loop))


def edit_report(edits: Any, image: Any, keep: Any, named: dict, classifier: Any = None) -> dict[str, Any]:
    """How well edits of captioned shapes follow their prompts inside the region and keep the rest.

    Math: inside: caption_fidelity of x_region = edit where keep = 0, black (-1) elsewhere, against the
          attributes ``named`` (the region's shape alone is read; refdiff.captions_eval)
          outside: change = sum |edit - image| keep / (C sum keep), the mean absolute change per known
          value; the largest, max |edit - image| over the known pixels; and the count of known pixels
          where some channel changed by more than 1/2 (a quarter of the data's range: a visible change)

    edits, image: (N, 3, 16, 16) in [-1, 1] (edits clipped to it); keep: (N, 1, 16, 16) in {0, 1}; named:
    a dict of (N,) int arrays of the attributes to score, -1 (or absent) where not scored (captions_eval's
    form: score only the attributes a region can show). Returns {"fidelity": caption_fidelity's report,
    "outside_change": float, "outside_max": float, "outside_pixels": int, "known_pixels": int}.
    """
    e, x, m = (np.asarray(a, dtype=np.float64) for a in (edits, image, keep))
    region = np.where(m == 0, e, -1.0)  # (N, 3, H, W): the repainted region on black
    scored = {k: np.asarray(named.get(k, np.full(e.shape[0], -1)), dtype=np.int64) for k in ATTRIBUTES}
    change = np.abs(e - x) * m  # (N, C, H, W), zero in the region
    return {"fidelity": caption_fidelity(region, scored, classifier),
            "outside_change": float(change.sum() / (e.shape[1] * m.sum())), "outside_max": float(change.max()),
            "outside_pixels": int(np.sum(change.max(axis=1) > 0.5)), "known_pixels": int(m.sum())}
