"""A class-conditional RealNVP flow on the embedded 8x8 digits: a minute of training, its held-out bits/dim, its samples
scored.

    python examples/flow_digits.py --out out/flow        # about 1.5 minutes on a 2-core CPU
    python examples/flow_digits.py --quick               # a few seconds (small settings)

1. train the digits8_flow preset (10 classes) on the digits' training split for SECONDS of wall time, on uniformly
   dequantised digits;
2. bits/dim of the 180 held-out digits given their labels: the dequantised bound on -log2 P(x | y) / D, averaged
   over DRAWS draws of u;
3. PER_CLASS samples per class x = f^{-1}(z | y), z ~ N(0, I), quantized to the 17 grey levels, scored with the
   shipped digit classifier: Frechet distance, precision, recall, class fraction, Inception-Score analogue
   (refdiff.digits_eval);
4. write the samples as a PNG grid (one row per class) and print every number.
"""

import time

import numpy as np
from _common import argument_parser, backend_and_out

from refdiff.digits_eval import (digit_classifier, digit_sample_report, digit_split, format_precision_recall,
                                 format_sample_report)
from refdiff.flow_train import FlowTrainConfig, flow_bits_per_dim, flow_samples, train_flow
from refdiff.models.presets import digits8_flow
from refdiff.plot import image_grid

SECONDS = 60.0       # training budget (wall clock)
STEPS = 3000         # the learning-rate schedule's length (the budget usually stops training first)
BATCH_SIZE = 64
LR = 3e-3            # higher than the usual 1e-3: a minute is a few hundred steps
DRAWS = 4            # dequantisation draws of the held-out bound
PER_CLASS = 10
QUICK = {"SECONDS": 2.0, "STEPS": 20, "DRAWS": 1}


def main():
    args = argument_parser(__doc__, "out/flow", "seeds training, the bound's draws and the samples", QUICK).parse_args()
    backend, out = backend_and_out(args)
    seconds, steps, draws = (QUICK["SECONDS"], QUICK["STEPS"], QUICK["DRAWS"]) if args.quick else \
        (SECONDS, STEPS, DRAWS)
    x_train, x_test, y_train, y_test = digit_split()

    # 1. train for a wall-clock budget
    train_cfg = FlowTrainConfig(steps=steps, batch_size=BATCH_SIZE, lr=LR, max_seconds=seconds, seed=args.seed,
                                backend=backend.name)
    trained = train_flow(train_cfg, digits8_flow(num_classes=10), x_train, y_train)
    print(f"trained {trained.info['steps_done']} steps in {trained.info['train_seconds']:.1f} s; "
          f"last 50 steps' loss {np.mean(trained.losses[-50:]):.3f} bits/dim")

    # 2. held-out bits/dim (exact log-likelihood of the dequantised digits, a bound on the discrete ones)
    bpd = flow_bits_per_dim(trained, x_test, y_test, draws=draws, seed=args.seed)
    print(f"held-out bits/dim (dequantised, {draws} draws of u): {bpd['bits_per_dim']:.4f}")

    # 3. samples, scored
    labels = np.repeat(np.arange(10), PER_CLASS)
    start = time.perf_counter()
    images = flow_samples(trained, labels.size, labels, seed=args.seed)
    print(f"{labels.size} samples in {time.perf_counter() - start:.3f} s")
    report = digit_sample_report(digit_classifier(), images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=args.seed)
    print(format_sample_report(report))
    print(format_precision_recall(report))

    # 4. the sample grid
    path = image_grid(images, nrow=PER_CLASS, path=out / "flow_samples.png", title="RealNVP samples",
                      row_labels=[str(c) for c in range(10)])
    print(path)


if __name__ == "__main__":
    main()
