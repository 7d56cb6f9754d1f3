"""Which caption words a text model reads, and at which noise levels: two probes of a checkpoint.

Run: python benchmarks/probe_text_words.py CHECKPOINT [--n 32] [--seed 0]
(CHECKPOINT: the text demo's, out/text_demo/checkpoint.npz; about a minute on a 2-core CPU)

1. Word sensitivity. For n real captioned shapes noised to x_t at t = 900, 700, 500, the RMS change of the
   model's output (its EMA weights) when one word of "large red circle top left" is swapped: a word the
   model reads moves the output, a word it ignores does not.
2. The quadrant of x0_hat. At each t, x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)
   under the prompt "large red circle <position>" for each of the four positions, read back with
   refdiff.data.captions.read_position: the fraction in the prompt's quadrant (25%: the word is ignored)
   beside the fraction in the noised image's own quadrant (how much x_t alone already tells). eps_hat is
   implied by the model's output, whatever it predicts (eps, x0 or v: refdiff.diffusion's conversions).
3. The data: how far the training images' centroids of coverage (read_position's) lie from the nearer
   midline, per size, over load_captions(6000): how much a sample may move before its quadrant changes.
"""

from __future__ import annotations

import argparse

import numpy as np

from refdiff.data.captions import POSITIONS, SIZES, _coverage, load_captions, read_position, tokenize
from refdiff.diffusion import Parameterization, _x0_and_eps
from refdiff.generate import load_model

BASE = "large red circle top left"
SWAPS = ("large red circle bottom left", "large red circle top right", "large red circle bottom right",
         "large blue circle top left", "small red circle top left", "large red square top left", "large red circle", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    loaded = load_model(args.checkpoint)
    param = Parameterization(loaded.train_cfg.get("prediction", "eps"))
    x0, _, attributes = load_captions(args.n, seed=args.seed + 5)
    rng = np.random.default_rng(args.seed)

    def noised(t):
        ab = loaded.schedule.alpha_bar[t]
        return (np.sqrt(ab) * x0 + np.sqrt(1 - ab) * rng.standard_normal(x0.shape)).astype(np.float32)

    def output(xt, t, caption):
        return loaded.model(xt, np.full(args.n, t), tokenize([caption] * args.n)[0])

    print("1. RMS change of the output when a word of", repr(BASE), "is swapped")
    print(f"{'caption':<32}" + "".join(f"{'t = ' + str(t):>10}" for t in (900, 700, 500)))
    states = {t: noised(t) for t in (900, 700, 500)}
    base = {t: output(xt, t, BASE) for t, xt in states.items()}
    for caption in SWAPS:
        cells = [np.sqrt(np.mean((output(xt, t, caption) - base[t]) ** 2)) for t, xt in states.items()]
        print(f"{caption or '(empty)':<32}" + "".join(f"{c:>10.4f}" for c in cells))
    print("\n2. x0_hat's quadrant: in the prompt's (per position) | in x_t's own image's")
    for t in (999, 900, 800, 700, 600, 500):
        xt, prompt_hits, own_hits = noised(t), [], []
        for p, position in enumerate(POSITIONS):
            out = output(xt, t, f"large red circle {position}")
            x0_hat, _ = _x0_and_eps(loaded.schedule, param, out, xt, np.full(args.n, t))
            read = read_position(np.clip(x0_hat, -1, 1))
            prompt_hits.append(np.mean(read == p))
            own_hits.append(np.mean(read == attributes["position"]))
        print(f"t = {t:>3} (SNR {loaded.schedule.snr[t]:.3f}): " + " ".join(f"{h:.2f}" for h in prompt_hits) + " | "
              + " ".join(f"{h:.2f}" for h in own_hits))

    margins()


def margins() -> None:
    """Section 3: the median and 10th percentile of the centroids' distance from the nearer midline, per size."""
    x, _, attributes = load_captions(6000)
    _, a = _coverage(x)  # (N, H, W)
    mass, S = a.sum(axis=(1, 2)), a.shape[1]
    row = (a.sum(axis=2) * (np.arange(S) + 0.5)).sum(axis=1) / mass  # (N, H) row masses -> (N,)
    col = (a.sum(axis=1) * (np.arange(S) + 0.5)).sum(axis=1) / mass  # (N, W) column masses -> (N,)
    d = np.minimum(np.abs(row - S / 2), np.abs(col - S / 2))
    print("\n3. the training images' centroid distance from the nearer midline, in pixels")
    for k, size in enumerate(SIZES):
        mine = d[attributes["size"] == k]
        print(f"{size:<6} median {np.median(mine):.2f}, 10th percentile {np.quantile(mine, 0.1):.2f}, "
              f"max {mine.max():.2f}")


if __name__ == "__main__":
    main()
