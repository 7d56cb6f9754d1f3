"""Text to image, step by step: tokens -> encoder features -> attention over image and text -> guided sample.

Run (from the repository root, after `pip install .`; or prefix PYTHONPATH=. to use the source tree):
    python examples/text_to_image.py [--checkpoint out/text_demo/checkpoint.npz] [--prompt "..."]
                                     [--out DIR] [--backend numpy] [--seed 0] [--quick]

GLIDE's text path (Nichol et al. 2021, Sec. 2.3; docs/glide.md) in the text16 model of refdiff:

1. the prompt becomes word ids and a mask (refdiff.data.tokenize), padded to the context: the last slot is
   always padding, the *summary slot*;
2. the transformer text encoder turns them into one feature per slot, f (1, ctx, C_t); the summary slot's
   feature, projected, is added to the timestep embedding (path a);
3. every attention block of the U-Net attends over its pixels and the words: its keys and values are
   [f W_kv ; its own] (path b). Halfway through sampling with the prompt, the example reads the attention
   weights of the first attention block: how much of each pixel's attention goes to each word;
4. classifier-free guidance: eps = eps(x_t | empty) + s (eps(x_t | prompt) - eps(x_t | empty)), sampled with
   DDIM from the same noise at s = 0 (unconditional), 1 (conditional) and 3.

Without --checkpoint the example first trains text16 for TRAIN.steps = 100 steps (about a minute on a
2-core CPU): enough to run the path, not to draw the prompt. For samples that follow their prompt give the text
demo's checkpoint (`refdiff demo --task text`, about 9 minutes on a quiet machine). Writes
to DIR (default out/text_to_image) text_to_image.png, a row of samples per guidance scale, and
text_attention.png, the attention map of each word over the pixels of the first attention block (8x8 in
text16); prints their paths and each word's share of the attention.
--quick trains 3 steps and samples 2 images with 4 DDIM steps (for tests).
"""

import dataclasses
import time
from pathlib import Path

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, to_numpy
from refdiff.checkpoint import load_checkpoint
from refdiff.data import VOCAB, load_captions, tokenize
from refdiff.demo import TEXT_DEMO_TRAIN
from refdiff.models import registry
from refdiff.models import text_encoder as TE
from refdiff.models.presets import TEXT_PRESETS
from refdiff.models.text_unet import text_unet_forward
from refdiff.models.unet_plan import unet_plan
from refdiff.plot import image_grid
from refdiff.samplers import classifier_free_guidance, ddim_loop, final
from refdiff.train import TrainConfig, train

from _common import argument_parser, backend_and_out

# Settings
PROMPT = "large red circle top left"
TRAIN = TrainConfig(steps=100, batch_size=16, lr=4e-3, warmup_steps=20, weighting="min_snr",  # no --checkpoint
                    text_lr_scale=TEXT_DEMO_TRAIN.text_lr_scale)  # the text demo's encoder rate
SCALES = (0.0, 1.0, 3.0)                   # classifier-free guidance scales s
N_SAMPLES = 6                              # samples per scale, from the same noise
SAMPLE_STEPS = 25                          # DDIM steps
QUICK = dict(TRAIN_STEPS=3, N_SAMPLES=2, SAMPLE_STEPS=4)


def model_and_params(args, out: Path, backend) -> tuple:
    """(model config, EMA parameters on the backend, the run's noise schedule) of --checkpoint, or of a short
    text16 run trained into out/train."""
    path = args.checkpoint
    if path is None:
        steps = QUICK["TRAIN_STEPS"] if args.quick else TRAIN.steps
        cfg = dataclasses.replace(TRAIN, steps=steps, warmup_steps=min(TRAIN.warmup_steps, steps - 1), seed=args.seed)
        x, captions, _ = load_captions(2000, seed=args.seed)
        train(cfg, TEXT_PRESETS["text16"](), x, tokenize(captions)[0], out / "train", progress=False, overwrite=True)
        path = out / "train" / "checkpoint.npz"
    ckpt = load_checkpoint(path)
    cfg = registry.config_from_dict(ckpt["config"]["model"], "denoiser")
    params = {k: backend.asarray(v, dtype=backend.dtype("float32")) for k, v in ckpt["ema"].items()}
    return cfg, params, schedules.by_name(ckpt["config"]["train"]["schedule"], ckpt["config"]["train"]["T"])


def midway(model, schedule, x_T, y, steps: int) -> tuple:
    """x_t and the step t the model is fed halfway through DDIM sampling with the conditional model."""
    x = x_T
    for i, step in enumerate(ddim_loop(model, schedule, x_T, y, clip_x0=1.0)):
        if i == steps // 2:
            return x, step.t  # the model read x at step.t to make this update
        x = step.x
    raise ValueError(f"steps must be >= 1, got {steps}")


def attention_to_words(params: dict, cfg, xt, t, tokens) -> np.ndarray:
    """Step 3: the first attention block's weights on x_t (1, 3, H, W) at step t (1,) with the prompt's
    tokens: the share of each pixel's attention on each text slot, heads averaged, (ctx, H', W') host."""
    _, cache = text_unet_forward(params, cfg, xt, t, tokens, keep_cache=True)
    first = next(i for i, step in enumerate(unet_plan(cfg.unet)) if step.kind == "attn")
    A = to_numpy(cache.steps[first].attention.A)  # (1, heads, H' W', ctx + H' W'): the text slots' keys first
    ctx, side = cfg.text.context_length, int(round(np.sqrt(A.shape[2])))
    return A[0, :, :, :ctx].mean(axis=0).T.reshape(ctx, side, side)  # (H' W', ctx) -> (ctx, H', W')


def encode(params: dict, cfg, prompt: str, backend) -> tuple:
    """Steps 1 and 2: the prompt's tokens (1, ctx) on the backend, its host mask and words, and the features f."""
    # 1. Tokens: word ids and the mask, padded to the context; the last slot is the summary slot (padding).
    ids, mask = tokenize(prompt, context=cfg.text.context_length)              # (1, ctx) each
    words = [VOCAB[i] for i in ids[0]]
    print(f"1. tokens of {prompt!r}: {ids[0].tolist()} = {words}; mask {mask[0].astype(int).tolist()}")
    tokens = backend.asarray(ids, dtype=backend.dtype("int64"))

    # 2. Encoder features: one per slot; the summary slot's, projected, joins the timestep embedding (path a).
    text = {k[len("text."):]: v for k, v in params.items() if k.startswith("text.")}
    f, _ = TE.text_encoder_forward(text, cfg.text, tokens, backend.asarray(mask))  # (1, ctx, C_t)
    summary = to_numpy(f[:, -1, :] @ params["text_embed.w"] + params["text_embed.b"])  # (1, E)
    print(f"2. encoder features f: {tuple(f.shape)}; the summary slot projected to the embedding: "
          f"{summary.shape}, norm {np.linalg.norm(summary):.2f}")
    return tokens, mask[0], words, f


def write_figures(out: Path, samples: np.ndarray, share: np.ndarray, mask, words, prompt: str, sample_steps: int,
                  n: int, t: int) -> None:
    """text_to_image.png (a row of samples per scale) and text_attention.png (each word's attention map,
    scaled to the largest share), their paths printed."""
    print(image_grid(samples, nrow=n, path=out / "text_to_image.png", row_labels=[f"s = {s:g}" for s in SCALES],
                     title=f"{prompt!r}: DDIM {sample_steps} steps, guidance s"))
    kept = np.flatnonzero(mask)                                                 # the words' slots
    maps = share[kept, None] / max(share.max(), 1e-12) * 2 - 1                  # (words, 1, H', W') in [-1, 1]
    print(image_grid(maps, nrow=1, path=out / "text_attention.png", row_labels=[words[j] for j in kept],
                     title=f"the pixels' attention\non each word, t = {t}"))


def main():
    parser = argument_parser(__doc__, "out/text_to_image", "seed of the training run, the noise and the samples",
                             QUICK)
    parser.add_argument("--checkpoint", default=None, help="a text model's checkpoint (default: train one briefly)")
    parser.add_argument("--prompt", default=PROMPT, help=f"the caption to draw (default: {PROMPT!r})")
    args = parser.parse_args()
    n, sample_steps = (QUICK["N_SAMPLES"], QUICK["SAMPLE_STEPS"]) if args.quick else (N_SAMPLES, SAMPLE_STEPS)
    backend, out = backend_and_out(args)
    started = time.perf_counter()
    cfg, params, schedule = model_and_params(args, out, backend)
    tokens, mask, words, f = encode(params, cfg, args.prompt, backend)          # steps 1, 2

    # 3. Attention over image and text (path b): the first attention block, halfway through sampling.
    model = registry.family(cfg, "denoiser").model(params, cfg)                   # model(x_t, t, tokens)
    respaced = schedules.respace(schedule, schedules.timesteps(schedule.T, sample_steps, "trailing"))
    x_T = Generator(args.seed).normal((n, 3, cfg.unet.image_size, cfg.unet.image_size), like=f)
    xt, t_array = midway(model, respaced, x_T[:1, ...], tokens, sample_steps)
    share, t = attention_to_words(params, cfg, xt, t_array, tokens), int(to_numpy(t_array)[0])  # (ctx, H', W')
    on_words = ", ".join(f"{words[j]!r} {share[j].mean():.3f}" for j in np.flatnonzero(mask))  # padding: none
    print(f"3. a pixel's attention at t = {t}, on average: {on_words}; on the pixels {1 - share.sum(axis=0).mean():.3f}")

    # 4. Guided samples from one noise: eps = eps(x_t | empty) + s (eps(x_t | prompt) - eps(x_t | empty)).
    y = backend.asarray(np.repeat(to_numpy(tokens), n, axis=0), dtype=backend.dtype("int64"))
    rows = []
    for s in SCALES:                                                            # GLIDE, Sec. 2.3
        guided = classifier_free_guidance(model, s, null_label=registry.null_condition(cfg))
        rows.append(to_numpy(final(ddim_loop(guided, respaced, x_T, y, clip_x0=1.0))))
    samples = np.clip(np.concatenate(rows), -1, 1)                              # (len(SCALES) n, 3, 16, 16)
    write_figures(out, samples, share, mask, words, args.prompt, sample_steps, n, t)
    print(f"done in {time.perf_counter() - started:.1f} s on {args.backend}")


if __name__ == "__main__":
    main()
