"""Does a model learn where to put the shape from its condition? text16 trained on captions that name the
position alone ("top left", ...), against the same U-Net with the quadrant as a class label.

Run: python benchmarks/position_words.py [--condition caption|label] [--text-lr-scale S] [--layers L]
     [--steps 600] [--out out/position_words]
(about 2 minutes of training on a 2-core CPU at the text demo's settings, refdiff.demo.TEXT_DEMO_TRAIN)

The probe: 256 captioned shapes (seed 5, not trained on) noised to x_t, each given a random position as its
condition (q_sample); x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t) from the EMA weights, read back
with refdiff.data.captions.read_position. Printed per t: the fraction in the prompted quadrant (25%: the
condition is ignored) beside the fraction in the noised image's own quadrant (what x_t alone tells).
For a caption model also the encoder at its summary slot, for the four captions, at init and trained: the
size of the residual stream h (its norm, centred as the final LayerNorm centres it), how far apart the four
captions' h lie, and how far apart their features LN(h) lie (the summary's spread, what the U-Net can tell apart).
docs/glide.md, "The encoder's learning rate", has the table these runs made.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from refdiff.backend import Generator
from refdiff.checkpoint import load_checkpoint
from refdiff.data.captions import POSITIONS, load_captions, read_position, tokenize
from refdiff.demo import TEXT_DEMO_IMAGES, TEXT_DEMO_TRAIN
from refdiff.diffusion import Parameterization, _x0_and_eps, q_sample
from refdiff.generate import load_model
from refdiff.models import text_encoder, text_unet
from refdiff.models.presets import text16
from refdiff.train import train

PROBE_T = (950, 900, 850, 800, 700)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--condition", choices=("caption", "label"), default="caption")
    parser.add_argument("--text-lr-scale", type=float, default=TEXT_DEMO_TRAIN.text_lr_scale)
    parser.add_argument("--layers", type=int, default=2, help="the text encoder's blocks")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default="out/position_words")
    args = parser.parse_args()
    x, _, attributes = load_captions(**TEXT_DEMO_IMAGES)
    model_cfg = text16()
    model_cfg = dataclasses.replace(model_cfg, text=dataclasses.replace(model_cfg.text, layers=args.layers))
    condition = tokenize(np.array(POSITIONS)[attributes["position"]])[0]  # (N, ctx): "top left", ...
    if args.condition == "label":  # the same U-Net (no position table: the plain U-Net has none), a label table
        model_cfg, condition = dataclasses.replace(model_cfg.unet, num_classes=len(POSITIONS)), attributes["position"]
    cfg = dataclasses.replace(TEXT_DEMO_TRAIN, steps=args.steps, checkpoint_every=args.steps,
                              warmup_steps=min(TEXT_DEMO_TRAIN.warmup_steps, args.steps - 1),
                              text_lr_scale=args.text_lr_scale)
    start = time.perf_counter()
    train(cfg, model_cfg, x, condition, args.out, progress=True, overwrite=True)
    text = f"caption, text_lr_scale {args.text_lr_scale:g}, {args.layers} encoder blocks" if args.condition == "caption" \
        else "label"
    print(f"{text}: {args.steps} steps in {time.perf_counter() - start:.0f} s")
    for t, (prompted, own) in probe(f"{args.out}/checkpoint.npz", args.condition).items():
        print(f"t = {t}: x0_hat in the prompted quadrant {prompted:.0%}, in x_t's own {own:.0%}")
    if args.condition == "caption":
        trained = load_checkpoint(f"{args.out}/checkpoint.npz")["ema"]
        for name, params in (("init", text_unet.init_params(model_cfg, Generator(cfg.seed))), ("trained", trained)):
            norm, spread, feature_spread = summary_spread(params, model_cfg)
            print(f"summary slot, {name}: |h| {norm:.1f}, h's spread {spread:.1f}, LN(h)'s spread {feature_spread:.2f}")


def summary_spread(params: dict, cfg: text_unet.TextUNetConfig) -> tuple[float, float, float]:
    """(mean norm of the centred residual stream h at the summary slot over the four position captions,
    mean pairwise distance of their h, mean pairwise distance of their features LN(h))."""
    tokens, mask = tokenize(POSITIONS, cfg.text.context_length)  # (4, ctx)
    encoder = {k[len("text."):]: np.asarray(v, np.float64) for k, v in params.items() if k.startswith("text.")}
    f, cache = text_encoder.text_encoder_forward(encoder, cfg.text, tokens, mask)  # (4, ctx, C)
    h = cache.final.xc.reshape(f.shape)[:, -1]  # (4, C): h minus its mean over C, the final LayerNorm's input
    pairs = np.triu_indices(len(POSITIONS), 1)

    def spread(v):  # (4, C) -> the mean distance over the 6 pairs
        return float(np.mean(np.linalg.norm(v[:, None] - v[None], axis=-1)[pairs]))

    return float(np.mean(np.linalg.norm(h, axis=-1))), spread(h), spread(f[:, -1])


def probe(checkpoint: str, condition: str, n: int = 256) -> dict[int, tuple[float, float]]:
    """{t: (fraction of x0_hat in the prompted quadrant, in the noised image's own)} (module docstring)."""
    loaded = load_model(checkpoint)
    param = Parameterization(loaded.train_cfg.get("prediction", "eps"))
    x0, _, attributes = load_captions(n, seed=5)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, len(POSITIONS), n)  # (n,) a random quadrant per image
    y = prompt if condition == "label" else tokenize(np.array(POSITIONS)[prompt])[0]
    fractions = {}
    for t in PROBE_T:
        steps = np.full(n, t)
        xt = q_sample(loaded.schedule, x0, steps, rng.standard_normal(x0.shape).astype(x0.dtype))  # eq. 4
        x0_hat, _ = _x0_and_eps(loaded.schedule, param, loaded.model(xt, steps, y), xt, steps)
        read = read_position(np.clip(x0_hat, -1, 1))
        fractions[t] = (float(np.mean(read == prompt)), float(np.mean(read == attributes["position"])))
    return fractions


if __name__ == "__main__":
    main()
