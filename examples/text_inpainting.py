"""Text-guided inpainting (GLIDE, Sec. 3.3): a fine-tuned inpainting model against replacement on the text model.

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/text_inpainting.py [--text CKPT] [--inpaint CKPT] [--n 64] [--out DIR] [--backend numpy]
                                       [--seed 0] [--quick]

1. The models: --text, a text model's checkpoint (without it, text16 trained TRAIN.steps here); --inpaint, its
   inpainting model (without it, fine-tuned here from the text model for FINE_TUNE.steps, as `refdiff train
   --data captions --inpaint --init TEXT_CKPT` does: the new input channels' weights start at zero).
2. The edits: held captioned images (load_captions with seed HELD_SEED, not the training draws) whose shape lies
   inside its quadrant; that quadrant is masked (keep = 0) and the prompt "small <colour> <shape> <position>"
   names another colour and another shape (a seen pair) in the same quadrant.
3. Both methods repaint the quadrant from the same seed, with classifier-free guidance GUIDANCE: the inpainting
   model with DDIM (STEPS), replacement on the text model with DDPM (STEPS) (refdiff.inpaint); and, as a
   reference, the inpainting model before fine-tuning (the text model widened with zeros: it ignores the image,
   so its "edit" is a text-to-image sample of the prompt).
4. Scored (refdiff.inpaint.edit_report): inside, the caption fidelity of the region alone (the rest blacked out)
   for size, colour and shape (the position is the mask's own quadrant, so it is not scored); "kept" counts
   regions whose colour still reads as the input's (no edit), "empty" regions with nothing drawn; outside,
   the mean and the largest absolute change from the input, and the known pixels changed by more than 1/2.
Writes to DIR (default out/text_inpainting) text_inpainting.png, one row per edit of the first STRIP: input,
mask (white: repainted), the inpainting model's edit, replacement's, the model's before fine-tuning, labelled
with the prompt; and
metrics.json; prints the table and the paths. --quick trains 3 + 3 steps and edits 3 images with 3 steps (tests).

Without --text and --inpaint the run took 2 min 14 s at load 4.5 to 4.9 (7 Dec 2026): its 100 + 300 training
steps run the path but do not follow prompts. The numbers of docs/glide.md ("Text-guided inpainting") come from
the 2400-step text model and its 1500-step fine-tune, with --n 128 (4 min 42 s at load 7.3 to 7.7).
"""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from refdiff.backend import asarray
from refdiff.checkpoint import load_checkpoint
from refdiff.data import load_captions, tokenize
from refdiff.data.captions import COLOURS, HELD_OUT, POSITIONS, SHAPES, read_colour, read_position
from refdiff.generate import LoadedModel, load_model
from refdiff.inpaint import edit_report, inpaint
from refdiff.models import registry
from refdiff.models.presets import TEXT_PRESETS
from refdiff.models.text_inpaint import inpaint_config, inpaint_params
from refdiff.models.text_unet import text_unet_model
from refdiff.plot import image_grid
from refdiff.train import TrainConfig, train

from _common import argument_parser, backend_and_out

# Settings
TRAIN = TrainConfig(steps=100, batch_size=16, lr=4e-3, warmup_steps=20, weighting="min_snr")  # no --text
FINE_TUNE = TrainConfig(steps=300, batch_size=16, lr=2e-3, warmup_steps=20, weighting="min_snr")  # no --inpaint
HELD_SEED = 2026         # load_captions' seed of the images to edit (training draws seed 0)
DRAWN = 1200             # images drawn; those whose shape lies inside its quadrant are edited, the first N
N = 32
STEPS = 50               # sampling steps of both methods
GUIDANCE = 3.0           # classifier-free guidance scale
STRIP = 8                # edits shown in the PNG
QUICK = dict(TRAIN_STEPS=3, N=3, STEPS=3, DRAWN=100)


def models(args, out: Path, quick: bool) -> tuple[str, str]:
    """Step 1: (text checkpoint, inpainting checkpoint) paths: the given ones, or trained into out/."""
    x, captions, _ = load_captions(200 if quick else 5000, seed=0)
    tokens = tokenize(captions)[0]
    text = args.text
    if text is None:
        cfg = dataclasses.replace(TRAIN, steps=QUICK["TRAIN_STEPS"], warmup_steps=1) if quick else TRAIN
        train(cfg, TEXT_PRESETS["text16"](), x, tokens, out / "text", progress=False, overwrite=True)
        text = out / "text" / "checkpoint.npz"
    if args.inpaint is not None:
        return text, args.inpaint
    ckpt = load_checkpoint(text)
    text_cfg = registry.config_from_dict(ckpt["config"]["model"], "denoiser")
    cfg = dataclasses.replace(FINE_TUNE, steps=QUICK["TRAIN_STEPS"], warmup_steps=1) if quick else FINE_TUNE
    train(cfg, inpaint_config(text_cfg), x, tokens, out / "inpaint", progress=False, overwrite=True,
          init=inpaint_params(ckpt["ema"], text_cfg))                  # the new channels' weights start at 0
    return text, out / "inpaint" / "checkpoint.npz"


def widened(text: str, backend: str) -> LoadedModel:
    """The inpainting model at step 0 of fine-tuning: the text model's weights, zeros for the new channels (it
    ignores the image and the mask: a text-to-image sample of the prompt, as a reference)."""
    loaded = load_model(text, backend=backend)
    cfg, ema = inpaint_config(loaded.model_cfg), load_checkpoint(text)["ema"]
    params = {k: asarray(v, like=loaded.like, dtype=loaded.like.dtype)
              for k, v in inpaint_params(ema, loaded.model_cfg).items()}
    return dataclasses.replace(loaded, model=text_unet_model(params, cfg), model_cfg=cfg)


def edits(n: int, drawn: int, seed: int) -> tuple:
    """Step 2: n held images (n, 3, 16, 16) whose shape lies inside its quadrant, keep (n, 1, 16, 16) 0 on that
    quadrant, the prompts (n,) and the attributes they name (size small, another colour, another shape)."""
    x, _, attributes = load_captions(drawn, seed=HELD_SEED)
    q = attributes["position"]                                                   # (drawn,) quadrant index
    rows, cols = np.arange(16)[None, :, None], np.arange(16)[None, None, :]
    region = ((rows // 8) == (q // 2)[:, None, None]) & ((cols // 8) == (q % 2)[:, None, None])  # (drawn, 16, 16)
    inside = np.all(np.where(region[:, None], -1.0, x) == -1.0, axis=(1, 2, 3))  # nothing drawn outside it
    chosen = np.flatnonzero(inside)[:n]
    if chosen.size < n:
        raise ValueError(f"n must be at most {chosen.size} (the images of {drawn} whose shape lies in its quadrant)")
    rng = np.random.default_rng(seed)
    named = {"size": np.zeros(n, np.int64), "colour": np.empty(n, np.int64), "shape": np.empty(n, np.int64)}
    prompts = []
    for j, i in enumerate(chosen):                                                # another colour, another shape
        pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if c != attributes["colour"][i]
                 and s != attributes["shape"][i] and (COLOURS[c], SHAPES[s]) not in HELD_OUT]
        named["colour"][j], named["shape"][j] = pairs[rng.integers(len(pairs))]
        prompts.append(f"small {COLOURS[named['colour'][j]]} {SHAPES[named['shape'][j]]} {POSITIONS[q[i]]}")
    keep = (~region[chosen])[:, None].astype(np.float32)
    return x[chosen], keep, prompts, named, attributes["colour"][chosen]


def table(reports: dict, kept: dict) -> str:
    """The printed table: a row per method, the fidelity in the region and the change outside it."""
    lines = [f"{'method':<34} {'size':>7} {'colour':>7} {'shape':>7} {'all 3':>7} {'kept':>6} {'empty':>6} "
             f"{'outside':>8} {'max':>6} {'> 1/2':>10}"]
    for name, r in reports.items():
        f = r["fidelity"]["fraction"]
        lines.append(f"{name:<34} {f['size']:>7.1%} {f['colour']:>7.1%} {f['shape']:>7.1%} {f['all']:>7.1%} "
                     f"{kept[name]:>6.1%} {r['empty']:>6.1%} {r['outside_change']:>8.4f} {r['outside_max']:>6.3f} "
                     f"{r['outside_pixels']:>4} / {r['known_pixels']}")
    return "\n".join(lines)


def main():
    parser = argument_parser(__doc__, "out/text_inpainting", "seed of the prompts and the sampling noise", QUICK)
    parser.add_argument("--text", default=None, help="a text model's checkpoint (default: train one briefly)")
    parser.add_argument("--inpaint", default=None,
                        help="its inpainting model's checkpoint (default: fine-tune one from --text briefly)")
    parser.add_argument("--n", type=int, default=N, help=f"images to edit (default: {N})")
    args = parser.parse_args()
    n, steps, drawn = (QUICK["N"], QUICK["STEPS"], QUICK["DRAWN"]) if args.quick else (args.n, STEPS, DRAWN)
    backend, out = backend_and_out(args)
    started = time.perf_counter()
    text, inpainting = models(args, out, args.quick)                             # 1. the models
    x, keep, prompts, named, colour = edits(n, drawn, args.seed)                 # 2. the edits
    results, reports, kept, seconds = {}, {}, {}, {}
    methods = {f"inpainting model (DDIM {steps})": lambda: load_model(inpainting, backend=args.backend),
               f"replacement (DDPM {steps})": lambda: load_model(text, backend=args.backend),
               f"before fine-tuning (DDIM {steps})": lambda: widened(text, args.backend)}
    for name, load in methods.items():
        tic = time.perf_counter()                                                # 3. each method, one seed
        loaded = load()
        results[name] = np.clip(inpaint(loaded, x, keep, prompts, steps=steps, guidance=GUIDANCE, seed=args.seed),
                                -1, 1)
        seconds[name] = time.perf_counter() - tic
        reports[name] = edit_report(results[name], x, keep, named)               # 4. scored
        region = np.where(keep == 0, results[name], -1.0)
        kept[name] = float(np.mean(read_colour(region) == colour))
        reports[name]["empty"] = float(np.mean(read_position(region) == -1))     # nothing drawn in the region
    print(f"{n} edits of held captioned images, guidance {GUIDANCE}; inside the region (size, colour, shape named "
          f"by the prompt; position fixed by the mask), outside: mean and largest |edit - input|, pixels changed "
          f"by more than 1/2")
    print(table(reports, kept))
    k = min(STRIP, n)                                                            # 5. the strip
    mask = np.repeat(1.0 - 2.0 * keep[:k], 3, axis=1)                            # white: repainted
    strip = np.stack([x[:k], mask, *(results[name][:k] for name in results)], axis=1).reshape(-1, 3, 16, 16)
    print(image_grid(strip, nrow=2 + len(results), path=out / "text_inpainting.png", row_labels=prompts[:k],
                     title="input, mask, inpainting model, replacement, before fine-tuning"))
    metrics = {"n": n, "steps": steps, "guidance": GUIDANCE, "seconds": seconds, "kept_colour": kept,
               "reports": reports, "text": str(text), "inpaint": str(inpainting)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(out / "metrics.json")
    print(f"done in {time.perf_counter() - started:.1f} s on {args.backend}")


if __name__ == "__main__":
    main()
