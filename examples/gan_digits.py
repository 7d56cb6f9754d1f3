"""A class-conditional GAN on the embedded 8x8 digits: a minute of training, its samples scored, class by class.

    python examples/gan_digits.py --out out/gan          # about 1.5 minutes on a 2-core CPU
    python examples/gan_digits.py --loss hinge           # the hinge loss instead of the non-saturating one
    python examples/gan_digits.py --quick                # a few seconds (the test's settings)

1. train the digits8_gan preset (10 classes) on the digits' training split for SECONDS of wall time, alternating
   one discriminator and one generator AdamW step (betas 0.5, 0.999);
2. PER_CLASS samples per class, scored with the shipped digit classifier: Frechet distance, precision, recall,
   class fraction, Inception-Score analogue (refdiff.digits_eval);
3. per-class coverage: for each class, the recall of its held-out digits by its own samples (k = 3, on the
   classifier's features) and the fraction of its samples classified as it: a collapsed class shows a low recall;
4. write the sample grid (one row per class) and the loss curves as PNGs, and print every number.
"""

import time

import numpy as np
from _common import argument_parser, backend_and_out

from refdiff.digits_eval import (digit_classifier, digit_sample_report, digit_split, format_precision_recall,
                                 format_sample_report, per_class_coverage)
from refdiff.gan_train import GANTrainConfig, gan_samples, train_gan
from refdiff.models.gan import LOSSES
from refdiff.models.presets import digits8_gan
from refdiff.plot import curves, image_grid

SECONDS = 60.0       # training budget (wall clock)
STEPS = 100_000      # an upper bound: the budget stops training
BATCH_SIZE = 64
LR = 2e-4            # DCGAN's, for both players
PER_CLASS = 50       # samples per class for the scores (10 of them in the grid)
SMOOTH = 50          # steps per point of the loss curves (their means)
QUICK = {"SECONDS": 2.0, "PER_CLASS": 5}


def main():
    parser = argument_parser(__doc__, "out/gan", "seeds training and the samples", QUICK)
    parser.add_argument("--loss", default="non_saturating", choices=LOSSES, help="the GAN loss")
    args = parser.parse_args()
    backend, out = backend_and_out(args)
    seconds, per_class = (QUICK["SECONDS"], QUICK["PER_CLASS"]) if args.quick else (SECONDS, PER_CLASS)
    x_train, x_test, y_train, y_test = digit_split()

    # 1. train for a wall-clock budget
    train_cfg = GANTrainConfig(steps=STEPS, batch_size=BATCH_SIZE, lr_g=LR, lr_d=LR, loss=args.loss,
                               max_seconds=seconds, seed=args.seed, backend=backend.name)
    trained = train_gan(train_cfg, digits8_gan(num_classes=10), x_train, y_train)
    print(f"trained {trained.info['steps_done']} steps in {trained.info['train_seconds']:.1f} s ({args.loss}); "
          f"last {SMOOTH} steps' L_D {np.mean(trained.d_losses[-SMOOTH:]):.3f}, "
          f"L_G {np.mean(trained.g_losses[-SMOOTH:]):.3f}")

    # 2. samples, scored
    labels = np.repeat(np.arange(10), per_class)
    start = time.perf_counter()
    images = gan_samples(trained, labels.size, labels, seed=args.seed)
    print(f"{labels.size} samples in {time.perf_counter() - start:.3f} s")
    classifier = digit_classifier()
    report = digit_sample_report(classifier, images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=args.seed)
    print(format_sample_report(report))
    print(format_precision_recall(report))

    # 3. per-class coverage
    print("class  recall of its held-out digits  classified as it")
    for c, recall, fraction in per_class_coverage(classifier, images, labels, (x_test, y_test)):
        print(f"{c:5d}  {recall:29.2f}  {fraction:16.2f}")

    # 4. the figures
    shown = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(10)])
    print(image_grid(images[shown], nrow=min(10, per_class), path=out / "gan_samples.png",
                     title=f"GAN samples ({args.loss})", row_labels=[str(c) for c in range(10)]))
    n = len(trained.g_losses) // SMOOTH * SMOOTH
    if n:
        steps = np.arange(n // SMOOTH) * SMOOTH + SMOOTH
        mean = lambda a: np.mean(np.reshape(a[:n], (n // SMOOTH, SMOOTH)), axis=1)  # noqa: E731 (steps,)
        print(curves({"L_D": (steps, mean(trained.d_losses)), "L_G": (steps, mean(trained.g_losses))},
                     out / "gan_losses.png", xlabel="step", ylabel=f"loss (mean of {SMOOTH} steps)",
                     title=f"GAN losses ({args.loss})"))


if __name__ == "__main__":
    main()
