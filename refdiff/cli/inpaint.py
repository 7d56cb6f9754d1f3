"""``refdiff inpaint``: repaint the white region of a mask in an image to match a prompt (refdiff.inpaint), with
GLIDE's inpainting model (a checkpoint of ``refdiff train --inpaint``) or, with a plain text model's
checkpoint, by replacement (RePaint with --resample > 1)."""

from __future__ import annotations

import argparse

from refdiff.cli.common import MAX_COUNT, _check_output_file, _check_sampling_flags


def cmd_inpaint(args: argparse.Namespace) -> int:
    """Read --image and --mask, repaint the mask's white pixels once per --prompt and --count, write --out."""
    import numpy as np

    from refdiff.data.captions import tokenize
    from refdiff.generate import load_model
    from refdiff.inpaint import inpaint, method

    if not 1 <= args.count <= MAX_COUNT:
        raise ValueError(f"--count must be an integer in [1, {MAX_COUNT}], got {args.count}")
    if not 0 <= args.eta <= 1:
        raise ValueError(f"--eta must be a number in [0, 1] (0: deterministic DDIM), got {args.eta}")
    for flag, value in (("--resample", args.resample), ("--jump-length", args.jump_length)):
        if value < 1:
            raise ValueError(f"{flag} must be an integer >= 1 (1: plain replacement), got {value}")
    if not args.out.endswith(".png"):
        raise ValueError(f"--out must end in .png, got {args.out!r}")
    _check_output_file("--out", args.out, (args.checkpoint, args.image, args.mask), args.force)
    prompts = [p.strip() for p in args.prompt or [] if p.strip()]
    if not prompts:
        raise ValueError("--prompt must give a caption of what to paint in the mask's white region")
    image = _read_png("--image", args.image, "RGB")  # (H, W, 3) uint8
    mask = _read_png("--mask", args.mask, "L")  # (H, W) uint8
    if mask.shape != image.shape[:2]:
        raise ValueError(f"--mask {args.mask} is {mask.shape[1]}x{mask.shape[0]} pixels, but --image {args.image} is "
                         f"{image.shape[1]}x{image.shape[0]}: they must be the same size")
    grey = (mask != 0) & (mask != 255)
    if grey.any():
        raise ValueError(f"--mask {args.mask} must be black (0: keep) and white (255: repaint) only, got "
                         f"{int(grey.sum())} pixels of other values, e.g. {int(mask[grey][0])}")
    if not (mask == 255).any():
        raise ValueError(f"--mask {args.mask} is all black: paint the region to repaint white")
    loaded = load_model(args.checkpoint, use_ema=not args.raw, backend=args.backend)
    try:
        how = method(loaded)
    except ValueError as err:
        raise ValueError(f"{args.checkpoint}: {err}") from None
    if image.shape[:2] != tuple(loaded.data_shape[1:]):
        raise ValueError(f"--image {args.image} is {image.shape[1]}x{image.shape[0]} pixels, but the model draws "
                         f"{loaded.data_shape[2]}x{loaded.data_shape[1]} images: resize it first")
    try:
        tokenize(prompts, context=loaded.model_cfg.text.context_length)
    except ValueError as err:
        raise ValueError(f"--prompt: {err}") from None
    if how == "model" and (args.resample, args.jump_length) != (1, 1):
        raise ValueError(f"--resample and --jump-length are replacement's (a text model's checkpoint); "
                         f"{args.checkpoint} holds an inpainting model: leave them out")
    if how == "replacement" and args.sampler not in (None, "ddpm"):
        raise ValueError(f"--sampler {args.sampler}: replacement inpainting (a text model's checkpoint) runs DDPM "
                         f"steps; leave --sampler out or give ddpm")
    _check_sampling_flags(args.sampler or "ddim", args.steps, args.guidance, loaded.schedule.T)
    n = len(prompts) * args.count
    x = np.repeat((image.transpose(2, 0, 1)[None] / 127.5 - 1.0), n, axis=0)  # (n, 3, H, W) in [-1, 1]
    keep = (mask != 255)[None, None].astype(np.float64)  # (1, 1, H, W): 1 = known, GLIDE's convention
    edits = inpaint(loaded, x, keep, list(np.repeat(prompts, args.count)), args.sampler, args.steps, args.eta,
                    args.guidance, args.seed, args.jump_length, args.resample)
    _write_edits(args.out, np.clip(edits, -1.0, 1.0), prompts, args.count)
    print(f"inpainted ({'the inpainting model' if how == 'model' else 'replacement on the text model'}): {args.out}")
    return 0


def _read_png(flag: str, path: str, mode: str):
    """The image file at path in Pillow's ``mode`` ("RGB" or "L") as a uint8 array, (H, W, 3) or (H, W)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag} {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{flag} {path}: not an image Pillow reads ({err})") from None


def _write_edits(out: str, edits, prompts: list[str], count: int) -> None:
    """One edit as a PNG of the image's own size (it can be edited again); more as a grid, a row per prompt."""
    import numpy as np

    if edits.shape[0] == 1:
        from PIL import Image

        pixels = np.round((edits[0].transpose(1, 2, 0) + 1.0) * 127.5).astype(np.uint8)  # (H, W, 3)
        Image.fromarray(pixels, "RGB").save(out)
        return
    from refdiff.plot import image_grid

    image_grid(edits, nrow=count, path=out, row_labels=prompts)


def _add_inpaint(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff inpaint``."""
    parser = subparsers.add_parser(
        "inpaint", help="repaint a masked region of an image to match a prompt",
        description="Repaint the white region of --mask in --image to match --prompt (GLIDE, Sec. 3.3): with "
                    "an inpainting model's checkpoint (`refdiff train --data captions --inpaint --init TEXT_CKPT`) "
                    "the model reads the known pixels and the mask; with a text model's, replacement inpainting "
                    "(RePaint with --resample > 1) pastes the known pixels, noised, after every step. "
                    "docs/glide.md, 'Text-guided inpainting'.")
    parser.add_argument("checkpoint", help="path to checkpoint.npz: an inpainting model's or a text model's")
    parser.add_argument("--image", required=True, help="the image to edit, an RGB image file of the model's size")
    parser.add_argument("--mask", required=True,
                        help="an image file of the same size: white (255) = repaint, black (0) = keep, nothing else")
    parser.add_argument("--prompt", action="append", default=None, required=True,
                        help="the caption of the repainted image (repeat for more edits)")
    parser.add_argument("--count", type=int, default=1, help="edits per prompt (default: 1)")
    parser.add_argument("--sampler", default=None, choices=("ddim", "ddpm", "euler", "heun", "dpmpp_2m"),
                        help="the sampler of an inpainting model (default: ddim); replacement runs ddpm steps")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default: 50)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default: 0)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default: 3)")
    parser.add_argument("--resample", type=int, default=1,
                        help="replacement: RePaint's resampling count r (default: 1, plain replacement)")
    parser.add_argument("--jump-length", type=int, default=1, help="replacement: RePaint's jump length (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"), help="(default: numpy)")
    parser.add_argument("--out", default="inpainted.png",
                        help="a .png: one edit at the image's size, or a grid with a row per prompt "
                             "(default: inpainted.png)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (default: refuse)")
    parser.set_defaults(func=cmd_inpaint)
