"""Zero-shot retrieval of the noised CLIP: caption -> image among n, at several noise levels t.

Run: python benchmarks/bench_clip.py [--steps 600] [--batch-size 64] [--lr 2e-3] [--train 4000] [--test 1024]
                                     [--n 32] [--t 0 100 250 500 750 900] [--seed 0]
(about 0.5 s a step at batch 64 on a 2-core CPU: 600 steps take about 5 minutes)

Trains refdiff.models.presets.shapes16_clip on ``--train`` captioned shapes (refdiff.data.captions, the
default captions: words left out and shuffled) with refdiff.clip_train.train_clip, x_t at uniform t.
Then, on ``--test`` fresh images of the same (train) split with full captions (all four attributes,
shuffled), each caption retrieves the image of highest f(x_t, t) . g(c) among a group of ``--n``; a
retrieval counts when the image has the caption's four attributes (an image with the same four is as
good a match as the caption's own). Prints the training loss (mean of the first and last 50 steps), then
a row per t: accuracy and chance (the mean fraction of a group's images that match a caption).
"""

from __future__ import annotations

import argparse

import numpy as np

from refdiff.clip_train import ClipTrainConfig, retrieval_accuracy, train_clip
from refdiff.data.captions import load_captions, tokenize
from refdiff.guidance_compare import attribute_labels, chance
from refdiff.models.presets import shapes16_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1024)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--t", type=int, nargs="+", default=[0, 100, 250, 500, 750, 900])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, captions, _ = load_captions(args.train, seed=args.seed)  # 1. data: default captions
    tokens, mask = tokenize(captions)
    train_cfg = ClipTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                warmup_steps=min(50, args.steps // 5))
    trained = train_clip(train_cfg, shapes16_clip(), x, tokens, mask, progress=True)  # 2. train
    first, last = np.mean(trained.losses[:50]), np.mean(trained.losses[-50:])
    print(f"trained {args.steps} steps in {trained.info['train_seconds']:.0f} s; loss {first:.3f} -> {last:.3f} "
          f"(log batch = {np.log(args.batch_size):.3f}); exp(tau) = {float(np.exp(trained.params['logit_scale'])):.1f}")

    x_test, captions_test, attributes = load_captions(args.test, seed=args.seed + 1000, p_keep=1.0)  # 3. test
    tokens_test, mask_test = tokenize(captions_test)
    labels = attribute_labels(attributes)
    print(f"retrieval, caption -> image among {args.n} ({args.test // args.n} groups), full captions")
    print(f"{'t':>5} {'accuracy':>9} {'chance':>7}")
    for t in args.t:
        accuracy = retrieval_accuracy(trained, x_test, tokens_test, mask_test, t, n=args.n, labels=labels)
        print(f"{t:>5} {accuracy:>9.3f} {chance(labels, args.n):>7.3f}")


if __name__ == "__main__":
    main()
