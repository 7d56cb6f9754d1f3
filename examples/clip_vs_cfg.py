"""Classifier-free guidance against CLIP guidance on the captioned shapes (GLIDE, Sec. 3.2), scored.

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/clip_vs_cfg.py [--checkpoint TEXT_CKPT] [--clip CLIP_CKPT] [--out DIR] [--backend numpy]
                                   [--seed 0] [--quick]

1. a noised CLIP (refdiff.models.clip: the noisy classifier's encoder and GLIDE's text encoder, projected to a
   shared sphere) reads x_t and a caption; its zero-shot retrieval, caption -> image among 32, at several t
   says how much of the caption it still finds in a noisy image;
2. the same text model samples the same prompts from the same noise with DDIM, guided two ways:
   classifier-free, eps = eps(x_t | empty) + s (eps(x_t | c) - eps(x_t | empty)), at several s; and CLIP, the
   conditional model's step shifted along lambda grad_x (f(x_t, t) . g(c)), at several lambda;
3. every sample is scored against its prompt (refdiff.captions_eval: size, colour, position from the pixels,
   shape by the shipped shape classifier), and each prompt's samples for their diversity.

Without --checkpoint the example trains text16 for TEXT_TRAIN.steps = 100 steps, and without --clip a CLIP for
CLIP_TRAIN.steps = 300 steps (the whole example: 139 s at load 5 to 7 on a 2-core CPU): enough to run, not to
compare. For the comparison give trained ones: the text demo's checkpoint (`refdiff demo --task text`) and `refdiff train-clip`'s
(docs/clip.md has the measured run). Writes to DIR (default out/clip_vs_cfg) clip_vs_cfg.png (fidelity against
diversity, a curve per method) and clip_vs_cfg_samples.png (a row per setting, the first prompt's samples);
prints the retrieval and the scores as Markdown tables. --quick: 3 training steps each, 2 prompts, 2 samples
a prompt, 3 DDIM steps (for tests).
"""

import dataclasses
from pathlib import Path

import numpy as np

from refdiff.clip_train import ClipTrainConfig, load_clip, train_clip
from refdiff.data import load_captions, tokenize
from refdiff.demo import HELD_OUT_PROMPTS, SEEN_PROMPTS
from refdiff.generate import load_model
from refdiff.guidance_compare import (compare, markdown_table, plot_comparison, retrieval, retrieval_table,
                                      sample_setting, sweep)
from refdiff.models.presets import TEXT_PRESETS, shapes16_clip
from refdiff.plot import image_grid
from refdiff.train import TrainConfig, train

from _common import argument_parser, backend_and_out

# Settings
TEXT_TRAIN = TrainConfig(steps=100, batch_size=16, lr=4e-3, warmup_steps=20, weighting="min_snr")  # no --checkpoint
CLIP_TRAIN = ClipTrainConfig(steps=300, batch_size=64, warmup_steps=50)                           # no --clip
CFG_SCALES = (1.0, 3.0, 8.0)            # classifier-free s (1: the conditional model, the shared start)
CLIP_SCALES = (0.1, 0.3, 1.0)           # CLIP lambda, on the conditional model
PROMPTS = SEEN_PROMPTS[:4] + HELD_OUT_PROMPTS[:2]
PER_PROMPT = 8
SAMPLE_STEPS = 25                       # DDIM steps, the same for both methods
T_LEVELS = (0, 500, 750, 900)           # retrieval's noise levels
QUICK = dict(TRAIN_STEPS=3, PROMPTS=2, PER_PROMPT=2, SAMPLE_STEPS=3, RETRIEVAL=64)


def models(args, out: Path, backend):
    """(the text model, the CLIP): --checkpoint and --clip, or short runs trained here (the text model into
    out/train)."""
    steps = QUICK["TRAIN_STEPS"] if args.quick else None
    path = args.checkpoint
    if path is None:
        cfg = dataclasses.replace(TEXT_TRAIN, steps=steps or TEXT_TRAIN.steps, seed=args.seed, backend=backend.name,
                                  warmup_steps=min(TEXT_TRAIN.warmup_steps, (steps or TEXT_TRAIN.steps) - 1))
        x, captions, _ = load_captions(2000, seed=args.seed)
        train(cfg, TEXT_PRESETS["text16"](), x, tokenize(captions)[0], out / "train", progress=False, overwrite=True)
        path = out / "train" / "checkpoint.npz"
    loaded = load_model(str(path), backend=backend.name)
    if args.clip is not None:
        return loaded, load_clip(args.clip, backend=backend.name)
    cfg = dataclasses.replace(CLIP_TRAIN, steps=steps or CLIP_TRAIN.steps, seed=args.seed, backend=backend.name,
                              warmup_steps=min(CLIP_TRAIN.warmup_steps, (steps or CLIP_TRAIN.steps) - 1))
    x, captions, _ = load_captions(4000, seed=args.seed)
    return loaded, train_clip(cfg, shapes16_clip(), x, *tokenize(captions))


def main():
    parser = argument_parser(__doc__, "out/clip_vs_cfg", "the sampling noise and the short runs", QUICK)
    parser.add_argument("--checkpoint", default=None, help="a text16 checkpoint (default: train 100 steps here)")
    parser.add_argument("--clip", default=None, help="a CLIP checkpoint (default: train 300 steps here)")
    args = parser.parse_args()
    backend, out = backend_and_out(args)
    loaded, clip = models(args, out, backend)
    prompts = PROMPTS[:1] + PROMPTS[-1:] if args.quick else PROMPTS
    per_prompt, sample_steps = (QUICK["PER_PROMPT"], QUICK["SAMPLE_STEPS"]) if args.quick else (PER_PROMPT, SAMPLE_STEPS)

    print(retrieval_table(retrieval(clip, list(T_LEVELS), count=QUICK["RETRIEVAL"] if args.quick else 1024)))
    settings = sweep(list(CFG_SCALES), list(CLIP_SCALES))
    rows = compare(loaded, clip, settings, per_prompt, sample_steps, args.seed, prompts=prompts)
    print(markdown_table(rows))
    print(plot_comparison(rows, out / "clip_vs_cfg.png", f"DDIM {sample_steps} steps, {per_prompt} samples a prompt"))

    first = [sample_setting(loaded, clip, s, prompts[:1], per_prompt, sample_steps, args.seed) for s in settings]
    print(image_grid(np.concatenate(first), nrow=per_prompt, path=out / "clip_vs_cfg_samples.png",
                     row_labels=[f"{s.method} {s.scale:g}" for s in settings], title=prompts[0]))


if __name__ == "__main__":
    main()
