"""A class-conditional VAE on the embedded 8x8 digits: a minute of training, its held-out bits/dim, its samples scored.

    python examples/vae_digits.py --out out/vae          # about 1.5 minutes on a 2-core CPU
    python examples/vae_digits.py --quick                # a few seconds (the test's settings)

1. train the digits8_vae preset (10 classes) on the digits' training split for SECONDS of wall time;
2. bits/dim of the 180 held-out digits from the ELBO and from the IWAE bound (K_IWAE samples);
3. 10 samples per class from the prior (the decoder's mean), scored with the shipped digit classifier:
   Frechet distance, precision, recall, class fraction, Inception-Score analogue (refdiff.digits_eval);
4. write the samples as a PNG grid (one row per class) and print every number.
"""

import time

import numpy as np
from _common import argument_parser, backend_and_out

from refdiff.digits_eval import (digit_classifier, digit_sample_report, digit_split, format_precision_recall,
                                 format_sample_report)
from refdiff.models.presets import digits8_vae
from refdiff.plot import image_grid
from refdiff.vae_train import VAETrainConfig, train_vae, vae_bits_per_dim, vae_samples

SECONDS = 60.0       # training budget (wall clock)
STEPS = 3000         # the learning-rate schedule's length (the budget usually stops training first)
BATCH_SIZE = 64
K_IWAE = 100         # importance samples of the IWAE bound
PER_CLASS = 10
QUICK = {"SECONDS": 2.0, "STEPS": 20, "K_IWAE": 5}


def main():
    args = argument_parser(__doc__, "out/vae", "seeds training, the bound's draws and the samples", QUICK).parse_args()
    backend, out = backend_and_out(args)
    seconds, steps, k = (QUICK["SECONDS"], QUICK["STEPS"], QUICK["K_IWAE"]) if args.quick else (SECONDS, STEPS, K_IWAE)
    x_train, x_test, y_train, y_test = digit_split()

    # 1. train for a wall-clock budget
    train_cfg = VAETrainConfig(steps=steps, batch_size=BATCH_SIZE, max_seconds=seconds, seed=args.seed,
                               backend=backend.name)
    trained = train_vae(train_cfg, digits8_vae(num_classes=10), x_train, y_train)
    print(f"trained {trained.info['steps_done']} steps in {trained.info['train_seconds']:.1f} s; "
          f"last 50 steps' -ELBO {np.mean(trained.losses[-50:]):.3f} bits/dim")

    # 2. held-out bits/dim
    bpd = vae_bits_per_dim(trained, x_test, y_test, k=k, seed=args.seed)
    print(f"held-out bits/dim: ELBO {bpd['elbo']:.4f}, IWAE (k = {k}) {bpd['iwae']:.4f}")

    # 3. samples from the prior, scored
    labels = np.repeat(np.arange(10), PER_CLASS)
    start = time.perf_counter()
    images = vae_samples(trained, labels.size, labels, seed=args.seed)
    print(f"{labels.size} samples in {time.perf_counter() - start:.3f} s")
    report = digit_sample_report(digit_classifier(), images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=args.seed)
    print(format_sample_report(report))
    print(format_precision_recall(report))

    # 4. the sample grid
    path = image_grid(images, nrow=PER_CLASS, path=out / "vae_samples.png", title="VAE samples (decoder mean)",
                      row_labels=[str(c) for c in range(10)])
    print(path)


if __name__ == "__main__":
    main()
